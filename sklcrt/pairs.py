"""The pairs of a screen analysis: cis, trans, positive controls and the calibration set.

Pure functions on pandas/numpy inputs (only :func:`gene_symbols` reads an AnnData). A pairs table
has the columns ``grna_target`` and ``response_id``, the columns the runners'
``pairs=`` option reads.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from sklcrt._random import as_generator
from sklcrt._validation import ntc_set
from sklcrt.assignment import DEFAULT_NTC_LABELS

__all__ = [
    "construct_cis_pairs",
    "construct_positive_control_pairs",
    "construct_trans_pairs",
    "draw_calibration_pairs",
    "gene_symbols",
]

PAIR_COLUMNS = ["grna_target", "response_id"]


def _normalise_chr(values) -> np.ndarray:
    """Chromosome labels compared without a leading ``chr`` and case: ``chr1`` == ``1``."""
    return np.asarray(
        [re.sub(r"^chr", "", str(v).strip(), flags=re.IGNORECASE).upper() for v in values],
        dtype=object,
    )


def _require_columns(frame, name: str, columns: Sequence[str], hint: str = "") -> pd.DataFrame:
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"{name} must be a pandas DataFrame, got {type(frame).__name__}.")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{name} needs column(s) {missing}; it has {list(map(str, frame.columns))}."
            + (f" {hint}" if hint else "")
        )
    return frame


def _positions(frame: pd.DataFrame, name: str, id_col: str) -> np.ndarray:
    """A position per row: ``position``, or the midpoint of ``start`` and ``end``."""
    if "position" in frame.columns:
        pos = pd.to_numeric(frame["position"], errors="coerce").to_numpy(dtype=np.float64)
        what = "position"
    elif {"start", "end"} <= set(frame.columns):
        start = pd.to_numeric(frame["start"], errors="coerce").to_numpy(dtype=np.float64)
        end = pd.to_numeric(frame["end"], errors="coerce").to_numpy(dtype=np.float64)
        pos = (start + end) / 2.0
        what = "start/end"
    else:
        raise ValueError(
            f"{name} needs a 'position' column or 'start' and 'end' columns; it has "
            f"{list(map(str, frame.columns))}."
        )
    bad = ~np.isfinite(pos) | frame["chr"].isna().to_numpy()
    if bad.any():
        ids = frame[id_col].astype(str).to_numpy()[bad]
        raise ValueError(
            f"{name} has {int(bad.sum())} row(s) with a missing or non-numeric {what} or chr, "
            f"e.g. {ids[:5].tolist()}; every row needs a position."
        )
    return pos


def construct_cis_pairs(
    targets_positions: pd.DataFrame,
    gene_positions: pd.DataFrame,
    *,
    distance: float = 500_000,
    targets: Iterable[str] | None = None,
    response_names: Iterable[str] | None = None,
    exclude_targets: Iterable[str] = (),
    ntc_labels: Iterable[str] = DEFAULT_NTC_LABELS,
) -> pd.DataFrame:
    """Pair every target with the responses within ``distance`` of its genomic position.

    Parameters
    ----------
    targets_positions : DataFrame
        Columns ``grna_target``, ``chr`` and either ``position`` or ``start`` and ``end`` (e.g.
        SCEPTRE's gRNA target data frame, one row per gRNA). A target's position is the
        midpoint of the span of its rows (``min(start)`` to ``max(end)``, or of its positions).
        Rows of non-targeting targets (``ntc_labels``) are ignored.
    gene_positions : DataFrame
        Columns ``response_id``, ``chr`` and ``position`` (e.g. the transcription start site) or
        ``start`` and ``end`` (their midpoint), one row per response.
    distance : float, default=500_000
        Largest distance in base pairs, inclusive (SCEPTRE's ``distance_threshold``).
    targets : iterable of str, default=None
        The screen's targets (e.g. the targeting targets of ``guide2gene``): each needs a
        position. ``None`` pairs every target of ``targets_positions``.
    response_names : iterable of str, default=None
        The measured responses (e.g. ``adata.var_names``): genes of ``gene_positions`` that are
        not measured are left out. ``None`` keeps every gene of the table.
    exclude_targets : iterable of str, default=()
        Targets left out (e.g. positive-control targets, as SCEPTRE does).
    ntc_labels : iterable of str, default=DEFAULT_NTC_LABELS
        Targets marking non-targeting guides (case-insensitive).

    Returns
    -------
    DataFrame
        Columns ``grna_target``, ``response_id``, ``chr`` (as in ``gene_positions``) and
        ``distance`` (absolute, base pairs), one row per pair, sorted by target then distance.
        Chromosomes match without a leading ``"chr"`` and case (``"chr1"`` == ``"1"``).

    Raises
    ------
    ValueError
        Missing columns or positions, a target of ``targets`` with no position, a duplicated
        response in ``gene_positions``, no measured response with a position (ids of another
        kind, e.g. symbols vs Ensembl ids), a negative distance, or no pair at all.

    Examples
    --------
    >>> import pandas as pd
    >>> from sklcrt.pairs import construct_cis_pairs
    >>> t = pd.DataFrame({"grna_target": ["enh1", "enh1", "enh2"], "chr": ["chr1", "chr1", "2"],
    ...                   "start": [1000, 1500, 50], "end": [1100, 1600, 90]})
    >>> g = pd.DataFrame({"response_id": ["A", "B", "C"], "chr": ["1", "1", "chr2"],
    ...                   "position": [2000, 900_000, 1000]})
    >>> construct_cis_pairs(t, g, distance=10_000)
      grna_target response_id   chr  distance
    0        enh1           A     1     700.0
    1        enh2           C  chr2     930.0
    """
    if isinstance(distance, bool) or not isinstance(distance, numbers.Real) or distance < 0:
        raise ValueError(f"distance must be a number >= 0 (base pairs), got {distance!r}.")
    _require_columns(targets_positions, "targets_positions", ["grna_target", "chr"])
    _require_columns(
        gene_positions,
        "gene_positions",
        ["response_id", "chr"],
        "It needs one row per response with its chromosome and position.",
    )
    ntc = ntc_set(ntc_labels)
    tp = targets_positions.copy()
    tp["grna_target"] = tp["grna_target"].astype(str)
    tp = tp[~tp["grna_target"].str.strip().str.lower().isin(ntc)]
    tpos = _positions(tp, "targets_positions", "grna_target")
    tp = pd.DataFrame(
        {"grna_target": tp["grna_target"].to_numpy(), "chr": _normalise_chr(tp["chr"])}
    )
    tp["lo"] = tpos
    tp["hi"] = tpos
    if {"start", "end"} <= set(targets_positions.columns) and "position" not in targets_positions:
        sub = targets_positions.loc[
            ~targets_positions["grna_target"].astype(str).str.strip().str.lower().isin(ntc)
        ]
        tp["lo"] = pd.to_numeric(sub["start"]).to_numpy(dtype=np.float64)
        tp["hi"] = pd.to_numeric(sub["end"]).to_numpy(dtype=np.float64)
    per_target = tp.groupby("grna_target", sort=True).agg(
        chr=("chr", "unique"), lo=("lo", "min"), hi=("hi", "max")
    )
    multi = per_target.index[per_target["chr"].map(len) > 1]
    if len(multi):
        raise ValueError(
            f"target(s) {list(multi[:5])} have rows on more than one chromosome in "
            "targets_positions; a target needs one position."
        )
    per_target["chr"] = per_target["chr"].map(lambda v: v[0])
    per_target["mid"] = (per_target["lo"] + per_target["hi"]) / 2.0

    if targets is not None:
        wanted = [str(t) for t in targets if str(t).strip().lower() not in ntc]
        absent = sorted(set(wanted) - set(per_target.index))
        if absent:
            raise ValueError(
                f"{len(absent)} target(s) have no position in targets_positions, e.g. "
                f"{absent[:5]}; add their chr and start/end (or position)."
            )
        per_target = per_target.loc[sorted(set(wanted))]
    excluded = {str(t) for t in exclude_targets}
    per_target = per_target.loc[[t for t in per_target.index if t not in excluded]]
    if per_target.empty:
        raise ValueError("no target left to pair (all non-targeting or excluded).")

    gp = gene_positions.copy()
    gp["response_id"] = gp["response_id"].astype(str)
    dup = gp["response_id"][gp["response_id"].duplicated()].unique()
    if dup.size:
        raise ValueError(
            f"gene_positions lists response(s) {dup[:5].tolist()} more than once; keep one "
            "position per response."
        )
    if response_names is not None:
        measured = {str(r) for r in response_names}
        gp = gp[gp["response_id"].isin(measured)]
        if gp.empty:
            sample = sorted(measured)[:3]
            raise ValueError(
                "no measured response has a row in gene_positions (response_names start with "
                f"{sample}, gene_positions' response_id with "
                f"{gene_positions['response_id'].astype(str).head(3).tolist()}); use the same "
                "kind of id (e.g. Ensembl ids or symbols) in both."
            )
    gpos = _positions(gp, "gene_positions", "response_id")
    gchr = _normalise_chr(gp["chr"])
    gchr_raw = gp["chr"].astype(str).to_numpy()
    gid = gp["response_id"].to_numpy()

    frames = []
    for chrom, tgroup in per_target.groupby("chr", sort=False):
        on_chr = np.flatnonzero(gchr == chrom)
        if on_chr.size == 0:
            continue
        order = on_chr[np.argsort(gpos[on_chr], kind="stable")]
        sorted_pos = gpos[order]
        mids = tgroup["mid"].to_numpy()
        lo = np.searchsorted(sorted_pos, mids - distance, side="left")
        hi = np.searchsorted(sorted_pos, mids + distance, side="right")
        n_each = hi - lo
        if n_each.sum() == 0:
            continue
        t_idx = np.repeat(np.arange(mids.size), n_each)
        offsets = np.arange(n_each.sum()) - np.repeat(np.cumsum(n_each) - n_each, n_each)
        g_idx = order[np.repeat(lo, n_each) + offsets]
        frames.append(
            pd.DataFrame(
                {
                    "grna_target": tgroup.index.to_numpy()[t_idx],
                    "response_id": gid[g_idx],
                    "chr": gchr_raw[g_idx],
                    "distance": np.abs(gpos[g_idx] - mids[t_idx]),
                }
            )
        )
    if not frames:
        raise ValueError(
            f"no response lies within {distance:g} bp of any target; check that both tables use "
            "the same genome build and chromosome names, or raise distance."
        )
    out = pd.concat(frames, ignore_index=True)
    return out.sort_values(["grna_target", "distance", "response_id"], ignore_index=True)


def _pairs_table(pairs, name: str) -> pd.DataFrame:
    if pairs is None:
        return pd.DataFrame(columns=PAIR_COLUMNS)
    frame = _require_columns(pd.DataFrame(pairs), name, PAIR_COLUMNS)
    return frame[PAIR_COLUMNS].astype(str)


def construct_trans_pairs(
    targets: Iterable[str],
    responses: Iterable[str],
    *,
    exclude: pd.DataFrame | None = None,
    exclude_targets: Iterable[str] = (),
    ntc_labels: Iterable[str] = DEFAULT_NTC_LABELS,
) -> pd.DataFrame:
    """Every target against every response, minus excluded pairs (SCEPTRE's trans pairs).

    Parameters
    ----------
    targets : iterable of str
        The targets (e.g. ``set(adata.uns["guide2gene"].values())``); non-targeting labels
        (``ntc_labels``) are left out, duplicates dropped.
    responses : iterable of str
        The response ids (e.g. ``adata.var_names``).
    exclude : DataFrame, default=None
        Pairs (``grna_target``, ``response_id``) to leave out, e.g. the positive controls.
    exclude_targets : iterable of str, default=()
        Targets whose pairs are all left out (SCEPTRE's ``"pairs_containing_pc_targets"``).
    ntc_labels : iterable of str, default=DEFAULT_NTC_LABELS

    Returns
    -------
    DataFrame
        Columns ``grna_target``, ``response_id``; targets sorted, responses in the given order.

    Raises
    ------
    ValueError
        Empty targets or responses, or nothing left after the exclusions.

    Examples
    --------
    >>> from sklcrt.pairs import construct_trans_pairs
    >>> pc = pd.DataFrame({"grna_target": ["MYC"], "response_id": ["MYC"]})
    >>> construct_trans_pairs(["MYC", "non-targeting"], ["MYC", "GATA1"], exclude=pc)
      grna_target response_id
    0         MYC       GATA1
    """
    ntc = ntc_set(ntc_labels)
    tlist = sorted({str(t) for t in targets if str(t).strip().lower() not in ntc})
    rlist = list(dict.fromkeys(str(r) for r in responses))
    if not tlist:
        raise ValueError("targets is empty (or only non-targeting); pass the screen's targets.")
    if not rlist:
        raise ValueError("responses is empty; pass the response ids, e.g. adata.var_names.")
    excluded_t = {str(t) for t in exclude_targets}
    tlist = [t for t in tlist if t not in excluded_t]
    out = pd.DataFrame(
        {
            "grna_target": np.repeat(np.asarray(tlist, dtype=object), len(rlist)),
            "response_id": np.tile(np.asarray(rlist, dtype=object), len(tlist)),
        }
    )
    ex = _pairs_table(exclude, "exclude")
    if len(ex):
        key = out["grna_target"] + "\x00" + out["response_id"]
        out = out[~key.isin(set(ex["grna_target"] + "\x00" + ex["response_id"]))]
    if out.empty:
        raise ValueError("no trans pair is left after the exclusions.")
    return out.reset_index(drop=True)


def construct_positive_control_pairs(
    targets: Iterable[str] | Mapping[str, str],
    responses: Iterable[str],
    *,
    symbols: Mapping[str, str] | pd.Series | None = None,
    suffixes: Sequence[str] = (),
    ntc_labels: Iterable[str] = DEFAULT_NTC_LABELS,
) -> pd.DataFrame:
    """Pairs of a target with the response it is named after (e.g. a TSS-targeting guide).

    Parameters
    ----------
    targets : iterable of str or dict
        The targets, or ``guide2gene`` (its values are used).
    responses : iterable of str
        The response ids.
    symbols : dict or Series, default=None
        Response id -> gene symbol (e.g. :func:`gene_symbols`); a target matches a response
        whose id or symbol equals its name. ``None`` matches ids only.
    suffixes : sequence of str, default=()
        Endings removed from a target name before matching, e.g. ``("_TSS",)`` so that
        ``"MYC_TSS"`` matches ``MYC``.
    ntc_labels : iterable of str, default=DEFAULT_NTC_LABELS

    Returns
    -------
    DataFrame
        Columns ``grna_target``, ``response_id``, sorted by target.

    Raises
    ------
    ValueError
        When no target names a response (the message suggests ``symbols`` or ``suffixes``).

    Examples
    --------
    >>> from sklcrt.pairs import construct_positive_control_pairs
    >>> construct_positive_control_pairs(
    ...     ["MYC_TSS", "enh1"], ["ENSG01", "ENSG02"], symbols={"ENSG01": "MYC"},
    ...     suffixes=("_TSS",))
      grna_target response_id
    0     MYC_TSS      ENSG01
    """
    if isinstance(targets, Mapping):
        targets = targets.values()
    ntc = ntc_set(ntc_labels)
    tlist = sorted({str(t) for t in targets if str(t).strip().lower() not in ntc})
    rlist = [str(r) for r in responses]
    by_name: dict[str, list[str]] = {}
    for r in rlist:
        by_name.setdefault(r, []).append(r)
    if symbols is not None:
        sym = symbols.to_dict() if isinstance(symbols, pd.Series) else dict(symbols)
        for r in rlist:
            s = sym.get(r)
            if s is not None and not (isinstance(s, float) and np.isnan(s)) and str(s) != r:
                by_name.setdefault(str(s), []).append(r)
    rows = []
    for t in tlist:
        name = t
        for suffix in suffixes:
            if suffix and name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        for r in dict.fromkeys(by_name.get(name, [])):
            rows.append((t, r))
    if not rows:
        raise ValueError(
            f"no target names a response (targets start with {tlist[:3]}, responses with "
            f"{rlist[:3]}); pass symbols=gene_symbols(adata) when responses are Ensembl ids, "
            "or suffixes=('_TSS',) when targets carry a suffix."
        )
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def draw_calibration_pairs(
    ntc_guides: Sequence[str],
    *,
    group_size: int,
    responses: Sequence[str],
    n_pairs: int | None = None,
    random_state=0,
    target_label: str = "non-targeting",
) -> pd.DataFrame:
    """Draw the NTC pairs of the calibration check, sized like the discovery set (SCEPTRE).

    The non-targeting guides are split at random into units of ``group_size`` guides (leftover
    guides are unused); then ``n_pairs`` distinct (unit, response) pairs are drawn uniformly
    from the units crossed with the distinct ``responses``.

    Parameters
    ----------
    ntc_guides : sequence of str
        The non-targeting guides.
    group_size : int
        Guides per NTC unit: the size of a typical target (SCEPTRE: the median number of guides
        per discovery target), >= 1.
    responses : sequence of str
        The responses of the discovery pairs that pass QC (repeats allowed; the distinct ones
        are used): the calibration pairs use only these.
    n_pairs : int, default=None
        Pairs to draw; ``None``: ``len(responses)``, i.e. as many as the passing discovery
        pairs when ``responses`` lists one response per pair.
    random_state : int, SeedSequence or None, default=0
        Seeds the grouping and the draw (stable streams keyed by name).
    target_label : str, default="non-targeting"
        Written to ``grna_target``.

    Returns
    -------
    DataFrame
        Columns ``unit`` (``"NTC_1"``, ...), ``grna_target``, ``guides`` (tuple of guide
        names), ``response_id``; ``n_pairs`` rows sorted by unit then response. Pairwise QC of
        the drawn pairs is left to the runner.

    Raises
    ------
    ValueError
        Fewer NTC guides than ``group_size``, no responses, or more pairs asked than there are
        (unit, response) pairs.

    Examples
    --------
    >>> from sklcrt.pairs import draw_calibration_pairs
    >>> ntc = [f"ntc{i}" for i in range(6)]
    >>> cal = draw_calibration_pairs(ntc, group_size=2, responses=["A", "B", "C", "D"])
    >>> len(cal), sorted(cal["unit"].unique()) <= ["NTC_1", "NTC_2", "NTC_3"]
    (4, True)
    >>> all(len(g) == 2 for g in cal["guides"])
    True
    """
    from sklcrt._validation import check_int

    group_size = check_int(group_size, "group_size", min_value=1)
    guides = sorted({str(g) for g in ntc_guides})
    if len(guides) < group_size:
        raise ValueError(
            f"only {len(guides)} non-targeting guide(s), fewer than group_size={group_size}; "
            "lower group_size."
        )
    resp = sorted({str(r) for r in responses})
    if not resp:
        raise ValueError(
            "responses is empty: pass the responses of the discovery pairs that pass QC."
        )
    n_pairs = (
        len(list(responses)) if n_pairs is None else check_int(n_pairs, "n_pairs", min_value=1)
    )
    order = as_generator(random_state, key="calibration_groups").permutation(len(guides))
    n_units = len(guides) // group_size
    units = [
        tuple(guides[i] for i in sorted(order[j * group_size : (j + 1) * group_size]))
        for j in range(n_units)
    ]
    total = n_units * len(resp)
    if n_pairs > total:
        raise ValueError(
            f"n_pairs={n_pairs} exceeds the {total} NTC pairs available ({n_units} unit(s) of "
            f"{group_size} guides x {len(resp)} response(s)); lower group_size or n_pairs."
        )
    rng = as_generator(random_state, key="calibration_pairs")
    chosen = np.sort(rng.choice(total, size=n_pairs, replace=False))
    u_idx, r_idx = np.divmod(chosen, len(resp))
    return pd.DataFrame(
        {
            "unit": [f"NTC_{u + 1}" for u in u_idx],
            "grna_target": target_label,
            "guides": [units[u] for u in u_idx],
            "response_id": [resp[r] for r in r_idx],
        }
    )


def gene_symbols(
    adata, response_names: Iterable[str] | None = None, *, key: str = "gene_name"
) -> pd.Series | None:
    """The gene symbol of each response, from ``adata.var[key]``.

    Parameters
    ----------
    adata : AnnData
        The screen.
    response_names : iterable of str, default=None
        Response ids (e.g. a results table's ``response`` column); ``None``: ``var_names``.
    key : str, default="gene_name"
        Column of ``adata.var`` with the symbols.

    Returns
    -------
    Series or None
        Indexed by ``response_names`` (in order, repeats kept), the symbol of each (``None``
        for a name that is not a var name, e.g. a program); ``None`` when ``adata.var`` has no
        column ``key``, so a caller adds a ``response_name`` column only where symbols exist.

    Examples
    --------
    >>> import anndata as ad, numpy as np, pandas as pd
    >>> from sklcrt.pairs import gene_symbols
    >>> a = ad.AnnData(np.zeros((1, 2)), var=pd.DataFrame(
    ...     {"gene_name": ["MYC", "GATA1"]}, index=["ENSG01", "ENSG02"]))
    >>> gene_symbols(a, ["ENSG02", "ENSG01", "program_1"]).tolist()
    ['GATA1', 'MYC', None]
    """
    if key not in adata.var.columns:
        return None
    table = pd.Series(adata.var[key].astype(object).to_numpy(), index=adata.var_names.astype(str))
    names = (
        list(adata.var_names.astype(str))
        if response_names is None
        else [str(r) for r in response_names]
    )
    values = [table.get(n) if n in table.index else None for n in names]
    values = [
        None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values
    ]
    return pd.Series(values, index=pd.Index(names, name="response_id"), name=key, dtype=object)
