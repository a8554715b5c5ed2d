"""Guide assignment from gRNA UMI counts, and burden covariates from the assignment (AnnData).

:func:`assign_guides` turns gRNA UMI counts (``adata.obsm["grna_counts"]``) into the 0/1 guide
matrix of the data contract; :func:`add_burden_covariates` derives per-cell burden columns from it
and adds them to ``adata.obsm["covar"]``. Both modify ``adata`` in place and return ``None``, as
scanpy functions do.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = [
    "DEFAULT_NTC_LABELS",
    "add_burden_covariates",
    "assign_guides",
    "is_ntc_target",
    "read_guide2gene",
    "read_guide_matrix",
]

#: Target labels that mark non-targeting guides (compared case-insensitively). Safe-targeting
#: guides are *not* included: they cut the genome, so they add to a cell's burden; pass
#: ``ntc_labels=(*DEFAULT_NTC_LABELS, "safe-targeting")`` to treat them as controls.
DEFAULT_NTC_LABELS = ("non-targeting", "non_targeting", "nontargeting", "NTC")

ASSIGNMENT_METHODS = ("threshold", "maximum")


def _ntc_set(ntc_labels) -> frozenset:
    if isinstance(ntc_labels, str):
        ntc_labels = (ntc_labels,)
    if ntc_labels is None:
        ntc_labels = ()
    return frozenset(str(label).strip().lower() for label in ntc_labels)


def is_ntc_target(target, ntc_labels: Iterable[str] = DEFAULT_NTC_LABELS) -> bool:
    """Whether ``target`` is one of ``ntc_labels`` (case-insensitive, surrounding spaces ignored).

    Examples
    --------
    >>> from sklcrt.assignment import is_ntc_target
    >>> is_ntc_target("Non-Targeting"), is_ntc_target("MYC")
    (True, False)
    """
    return str(target).strip().lower() in _ntc_set(ntc_labels)


def _missing_key_error(container: str, key, available, hint: str = "") -> ValueError:
    """The error for a key missing from ``adata.<container>``, listing the keys there."""
    keys = sorted(map(str, available))
    return ValueError(
        f"adata.{container}[{key!r}] not found; adata.{container} has keys {keys}."
        + (f" {hint}" if hint else "")
    )


def _as_csr(matrix, name: str) -> sp.csr_matrix:
    """A canonical CSR copy (sorted indices, no duplicates, no explicit zeros) of a 2-D matrix."""
    if isinstance(matrix, pd.DataFrame):
        matrix = matrix.to_numpy()
    if sp.issparse(matrix):
        out = sp.csr_matrix(matrix, copy=True)
    else:
        arr = np.asarray(matrix)
        if arr.ndim != 2:
            raise ValueError(f"{name} must be 2-D (cells x guides), got shape {arr.shape}.")
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}.")
        out = sp.csr_matrix(arr)
    if out.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {out.dtype}.")
    out.sum_duplicates()
    out.eliminate_zeros()
    return out


def _column_names(adata, obj, what: str, guide_names_key: str, n_columns: int, noun: str):
    """Names of the columns of ``obj`` (``what`` and ``noun``, the kind of name, in messages).

    A DataFrame's columns (which must agree with ``adata.uns[guide_names_key]`` when that is
    stored too), else ``adata.uns[guide_names_key]``, one name per column.
    """
    if isinstance(obj, pd.DataFrame):
        names = np.asarray(obj.columns.astype(str), dtype=object)
        if guide_names_key in adata.uns:
            from_uns = np.asarray(adata.uns[guide_names_key]).astype(str)
            if from_uns.shape != names.shape or np.any(from_uns != names):
                raise ValueError(
                    f"{what} is a DataFrame whose columns differ from "
                    f"adata.uns[{guide_names_key!r}]; make them agree or drop one of them."
                )
        return names
    if guide_names_key not in adata.uns:
        raise ValueError(
            f"{noun}s not found: adata.uns[{guide_names_key!r}] is missing and {what} has no "
            f"column names; adata.uns has keys {sorted(map(str, adata.uns.keys()))}. Pass "
            "guide_names_key=... or store them."
        )
    names = np.asarray(adata.uns[guide_names_key]).astype(str).astype(object)
    if names.ndim != 1 or names.size != n_columns:
        raise ValueError(
            f"adata.uns[{guide_names_key!r}] has {names.size} {noun}(s) but {what} has "
            f"{n_columns} column(s); they must match one to one."
        )
    return names


def _check_unique(names: np.ndarray, what: str) -> None:
    uniq, counts = np.unique(names, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(f"{what} must be unique; duplicated: {uniq[counts > 1][:5].tolist()}.")


def _targets_from_uns(adata, ids, target_key, target_frame_key) -> np.ndarray:
    if target_key is not None and target_key in adata.uns:
        targets = np.asarray(adata.uns[target_key])
        if targets.ndim != 1 or targets.size != ids.size:
            raise ValueError(
                f"adata.uns[{target_key!r}] has {targets.size} target(s) for {ids.size} gRNA(s); "
                "it needs one target per gRNA, in the order of the gRNA ids."
            )
        targets = targets.astype(object)
    elif target_frame_key is not None and target_frame_key in adata.uns:
        frame = adata.uns[target_frame_key]
        if not isinstance(frame, pd.DataFrame) or not {"grna_id", "grna_target"} <= set(
            frame.columns
        ):
            raise ValueError(
                f"adata.uns[{target_frame_key!r}] must be a DataFrame with columns 'grna_id' and "
                "'grna_target'."
            )
        mapping = pd.Series(frame["grna_target"].to_numpy(), index=frame["grna_id"].astype(str))
        if mapping.index.duplicated().any():
            dup = mapping.index[mapping.index.duplicated()].unique()[:5].tolist()
            raise ValueError(f"adata.uns[{target_frame_key!r}] lists gRNA id(s) {dup} twice.")
        absent = [g for g in ids if g not in mapping.index]
        if absent:
            raise ValueError(
                f"{len(absent)} gRNA id(s) have no row in adata.uns[{target_frame_key!r}], "
                f"e.g. {absent[:5]}."
            )
        targets = mapping.loc[list(ids)].to_numpy().astype(object)
    else:
        raise ValueError(
            f"gRNA targets not found: neither adata.uns[{target_key!r}] nor "
            f"adata.uns[{target_frame_key!r}] exists; adata.uns has keys "
            f"{sorted(map(str, adata.uns.keys()))}. Pass target_key=... or target_frame_key=...."
        )
    bad = [str(ids[i]) for i, t in enumerate(targets) if t is None or pd.isna(t) or str(t) == ""]
    if bad:
        raise ValueError(
            f"{len(bad)} gRNA(s) have no target, e.g. {bad[:5]}; every gRNA needs one."
        )
    return np.asarray([str(t) for t in targets], dtype=object)


def _check_number(value, name, *, low, high=None, low_inclusive=True):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    ok = value >= low if low_inclusive else value > low
    if high is not None:
        ok = ok and value <= high
    if not ok:
        bound = f"{'>=' if low_inclusive else '>'} {low}"
        if high is not None:
            bound += f" and <= {high}"
        raise ValueError(f"{name} must be {bound}, got {value!r}.")
    return float(value)


def assign_guides(
    adata,
    *,
    counts_key: str = "grna_counts",
    method: str = "threshold",
    threshold: float = 5,
    min_fraction: float = 0.8,
    min_umis: float = 5,
    guide_names_key: str = "grna_ids",
    target_key: str | None = "grna_target",
    target_frame_key: str | None = "grna_target_data_frame",
    key_added: str = "guide_assignment",
    names_key_added: str = "guide_names",
    guide2gene_key_added: str = "guide2gene",
) -> None:
    """Assign gRNAs to cells from gRNA UMI counts, writing the data contract's guide keys.

    Parameters
    ----------
    adata : AnnData
        The screen; modified in place.
    counts_key : str, default="grna_counts"
        ``adata.obsm`` key of the gRNA UMI counts (cells x gRNAs; sparse, array or DataFrame).
    method : {"threshold", "maximum"}, default="threshold"
        ``"threshold"`` (high MOI, SCEPTRE's thresholding): a cell carries every gRNA with at
        least ``threshold`` UMIs, so a cell may carry many gRNAs.
        ``"maximum"`` (low MOI, SCEPTRE's maximum / crispat's ratio rule): a cell carries at most
        one gRNA, its most abundant one, and only when (a) that gRNA is the unique maximum, (b) it
        holds at least ``min_fraction`` of the cell's gRNA UMIs and (c) the cell has at least
        ``min_umis`` gRNA UMIs in total. Other cells get no gRNA.
    threshold : float, default=5
        UMI threshold of ``method="threshold"`` (``count >= threshold``), > 0.
    min_fraction : float, default=0.8
        For ``method="maximum"``: the fraction, in ``[0, 1]``, of the cell's gRNA UMIs that its top
        gRNA must hold (SCEPTRE's ``umi_fraction_threshold`` default).
    min_umis : float, default=5
        For ``method="maximum"``: the fewest gRNA UMIs, over all gRNAs, a cell needs to be assigned
        (SCEPTRE's ``min_grna_n_umis_threshold`` default), >= 0.
    guide_names_key : str, default="grna_ids"
        ``adata.uns`` key of the gRNA ids, one per column of the counts (not needed when the
        counts are a DataFrame: its columns are the ids).
    target_key : str or None, default="grna_target"
        ``adata.uns`` key of each gRNA's target, aligned with the ids. When absent, the targets
        are read from ``adata.uns[target_frame_key]``.
    target_frame_key : str or None, default="grna_target_data_frame"
        ``adata.uns`` key of a DataFrame with columns ``grna_id`` and ``grna_target`` (SCEPTRE's
        gRNA target data frame), used when ``target_key`` is absent.
    key_added : str, default="guide_assignment"
        ``adata.obsm`` key written: a CSR matrix (cells x gRNAs, int8 0/1) in the order of the ids.
    names_key_added : str, default="guide_names"
        ``adata.uns`` key written with the gRNA ids (ndarray of str).
    guide2gene_key_added : str, default="guide2gene"
        ``adata.uns`` key written with the dict gRNA id -> target.

    Returns
    -------
    None
        Also written: ``adata.obs[key_added + "_status"]``, a categorical with ``"assigned"``
        (>= 1 gRNA), ``"unassigned"`` (no gRNA reaches the threshold, or fewer than ``min_umis``
        UMIs) and, for the maximum rule, ``"ambiguous"`` (the top gRNA is not a unique maximum
        holding ``min_fraction`` of the UMIs); and ``adata.uns[key_added + "_params"]`` with the
        method and its parameters.

    Notes
    -----
    With the maximum rule, SCEPTRE removes the unassigned and ambiguous cells in its cell-wise QC
    (they are neither clearly perturbed nor clearly unperturbed). Here they stay in ``adata`` with
    no gRNA, i.e. they would act as controls; subset them away with the status column, e.g.
    ``adata = adata[adata.obs["guide_assignment_status"] == "assigned"].copy()``, when that matters.

    Examples
    --------
    >>> import anndata as ad, numpy as np, scipy.sparse as sp
    >>> from sklcrt.assignment import assign_guides
    >>> a = ad.AnnData(np.zeros((3, 2)))
    >>> a.obsm["grna_counts"] = sp.csr_matrix(np.array([[7, 0], [1, 9], [0, 2]]))
    >>> a.uns["grna_ids"] = np.array(["g1", "g2"])
    >>> a.uns["grna_target"] = np.array(["MYC", "non-targeting"])
    >>> assign_guides(a, threshold=5)
    >>> a.obsm["guide_assignment"].toarray().tolist()
    [[1, 0], [0, 1], [0, 0]]
    >>> a.uns["guide2gene"]
    {'g1': 'MYC', 'g2': 'non-targeting'}
    """
    if method not in ASSIGNMENT_METHODS:
        raise ValueError(f"method must be one of {list(ASSIGNMENT_METHODS)}, got {method!r}.")
    if method == "threshold":
        threshold = _check_number(threshold, "threshold", low=0, low_inclusive=False)
    else:
        min_fraction = _check_number(min_fraction, "min_fraction", low=0, high=1)
        min_umis = _check_number(min_umis, "min_umis", low=0)
    if counts_key not in adata.obsm:
        raise _missing_key_error(
            "obsm", counts_key, adata.obsm.keys(), "Pass counts_key=... naming the gRNA UMI counts."
        )
    counts_obj = adata.obsm[counts_key]
    counts = _as_csr(counts_obj, f"adata.obsm[{counts_key!r}]")
    n_cells, n_guides = counts.shape
    if counts.nnz and counts.data.min() < 0:
        raise ValueError(
            f"adata.obsm[{counts_key!r}] has negative value(s); gRNA UMI counts must be >= 0."
        )
    if counts.nnz and not np.all(np.isfinite(counts.data)):
        raise ValueError(f"adata.obsm[{counts_key!r}] has NaN or infinite value(s).")
    what = f"adata.obsm[{counts_key!r}]"
    ids = _column_names(adata, counts_obj, what, guide_names_key, n_guides, "gRNA id")
    _check_unique(ids, "gRNA ids")
    targets = _targets_from_uns(adata, ids, target_key, target_frame_key)

    status = np.full(n_cells, "unassigned", dtype=object)
    if method == "threshold":
        keep = counts.data >= threshold
        assigned = sp.csr_matrix(
            (
                np.ones(int(keep.sum()), dtype=np.int8),
                counts.indices[keep],
                _kept_indptr(counts, keep),
            ),
            shape=counts.shape,
        )
        status[np.diff(assigned.indptr) > 0] = "assigned"
        params = {"method": method, "threshold": threshold}
    else:
        assigned, is_ambiguous = _maximum_rule(counts, min_fraction, min_umis)
        status[is_ambiguous] = "ambiguous"
        status[np.diff(assigned.indptr) > 0] = "assigned"
        params = {"method": method, "min_fraction": min_fraction, "min_umis": min_umis}
    params["counts_key"] = counts_key

    adata.obsm[key_added] = assigned
    adata.uns[names_key_added] = np.asarray(ids, dtype=str)
    adata.uns[guide2gene_key_added] = {str(g): str(t) for g, t in zip(ids, targets, strict=True)}
    adata.uns[f"{key_added}_params"] = params
    levels = ["assigned", "unassigned"] + (["ambiguous"] if method == "maximum" else [])
    adata.obs[f"{key_added}_status"] = pd.Categorical(status, categories=levels)


def _kept_indptr(matrix: sp.csr_matrix, keep: np.ndarray) -> np.ndarray:
    """indptr of the CSR matrix that keeps only the stored entries flagged in ``keep``."""
    csum = np.concatenate(([0], np.cumsum(keep, dtype=np.int64)))
    return csum[matrix.indptr]


def _maximum_rule(counts: sp.csr_matrix, min_fraction: float, min_umis: float):
    """Assign each cell its unique top gRNA when it holds enough of enough UMIs (vectorised)."""
    n_cells = counts.shape[0]
    row_of = np.repeat(np.arange(n_cells), np.diff(counts.indptr))
    data = counts.data.astype(np.float64)
    total = np.bincount(row_of, weights=data, minlength=n_cells)
    row_max = counts.max(axis=1).toarray().ravel().astype(np.float64)
    is_top = data == row_max[row_of]
    n_top = np.bincount(row_of[is_top], minlength=n_cells)
    # first stored entry equal to the row maximum (indices are sorted, so the smallest column)
    top_rows, first = np.unique(row_of[is_top], return_index=True)
    top_col = np.full(n_cells, -1, dtype=np.int64)
    top_col[top_rows] = counts.indices[np.flatnonzero(is_top)[first]]

    enough_umis = (total >= min_umis) & (total > 0)
    # compare the ratio itself (7/10 >= 0.7 holds; 7 >= 0.7 * 10 does not in floating point)
    top_fraction = np.divide(row_max, total, out=np.zeros(n_cells), where=total > 0)
    clear_top = (n_top == 1) & (top_fraction >= min_fraction)
    ok = enough_umis & clear_top
    rows = np.flatnonzero(ok)
    assigned = sp.csr_matrix(
        (np.ones(rows.size, dtype=np.int8), (rows, top_col[rows])), shape=counts.shape
    )
    assigned.sort_indices()
    return assigned, enough_umis & ~clear_top


def add_burden_covariates(
    adata,
    *,
    guide_key: str = "guide_assignment",
    covar_key: str = "covar",
    guide_names_key: str = "guide_names",
    guide2gene_key: str = "guide2gene",
    ntc_labels: Iterable[str] = DEFAULT_NTC_LABELS,
) -> None:
    """Add per-cell burden covariates derived from the guide assignment to ``obsm[covar_key]``.

    Parameters
    ----------
    adata : AnnData
        The screen, with a guide assignment; modified in place.
    guide_key : str, default="guide_assignment"
        ``adata.obsm`` key of the 0/1 guide matrix (cells x guides).
    covar_key : str, default="covar"
        ``adata.obsm`` key of the raw covariate DataFrame; created (indexed by ``obs_names``) when
        missing. Existing columns of the same names are replaced.
    guide_names_key : str, default="guide_names"
        ``adata.uns`` key of the guide names (used when the guide matrix has no column names).
    guide2gene_key : str, default="guide2gene"
        ``adata.uns`` key of the dict guide -> target.
    ntc_labels : iterable of str, default=DEFAULT_NTC_LABELS
        Targets that mark non-targeting guides (case-insensitive).

    Returns
    -------
    None
        Adds the columns ``non_ntc_guides_per_cell`` (assigned guides whose target is not
        non-targeting), ``grna_n_nonzero_assign`` (all assigned guides), both int64, and their
        ``log1p_`` versions (float64).

    Examples
    --------
    >>> import anndata as ad, numpy as np, scipy.sparse as sp
    >>> from sklcrt.assignment import add_burden_covariates
    >>> a = ad.AnnData(np.zeros((2, 1)))
    >>> a.obsm["guide_assignment"] = sp.csr_matrix(np.array([[1, 1], [0, 1]]))
    >>> a.uns["guide_names"] = np.array(["g1", "g2"])
    >>> a.uns["guide2gene"] = {"g1": "MYC", "g2": "non-targeting"}
    >>> add_burden_covariates(a)
    >>> a.obsm["covar"]["non_ntc_guides_per_cell"].tolist()
    [1, 0]
    """
    guides, names = read_guide_matrix(adata, guide_key=guide_key, guide_names_key=guide_names_key)
    guide2gene = read_guide2gene(adata, names, guide2gene_key=guide2gene_key)
    ntc = _ntc_set(ntc_labels)
    is_ntc = np.array([str(guide2gene[g]).strip().lower() in ntc for g in names], dtype=bool)
    n_all = guides.getnnz(axis=1).astype(np.int64)
    n_non_ntc = guides[:, np.flatnonzero(~is_ntc)].getnnz(axis=1).astype(np.int64)

    if covar_key in adata.obsm:
        covar = adata.obsm[covar_key]
        if not isinstance(covar, pd.DataFrame):
            raise ValueError(
                f"adata.obsm[{covar_key!r}] must be a pandas DataFrame to add burden columns, got "
                f"{type(covar).__name__}."
            )
        _check_aligned(covar.index, adata.obs_names, f"adata.obsm[{covar_key!r}]")
        covar = covar.copy()
    else:
        covar = pd.DataFrame(index=adata.obs_names.copy())
    covar["non_ntc_guides_per_cell"] = n_non_ntc
    covar["grna_n_nonzero_assign"] = n_all
    covar["log1p_non_ntc_guides_per_cell"] = np.log1p(n_non_ntc.astype(np.float64))
    covar["log1p_grna_n_nonzero_assign"] = np.log1p(n_all.astype(np.float64))
    adata.obsm[covar_key] = covar


def _check_aligned(index: pd.Index, obs_names: pd.Index, what: str) -> None:
    if index.equals(obs_names):
        return
    if len(index) != len(obs_names):
        raise ValueError(f"{what} has {len(index)} rows but adata has {len(obs_names)} cells.")
    if set(map(str, index)) == set(map(str, obs_names)):
        raise ValueError(
            f"{what} has the cells of adata.obs_names in another order; reorder it with "
            f".loc[adata.obs_names]."
        )
    n_diff = int(np.sum(np.asarray(index.astype(str)) != np.asarray(obs_names.astype(str))))
    raise ValueError(
        f"{what} is not indexed by adata.obs_names ({n_diff} label(s) differ, e.g. "
        f"{index[0]!r} vs {obs_names[0]!r}); set its index to adata.obs_names."
    )


def read_guide_matrix(
    adata, *, guide_key: str = "guide_assignment", guide_names_key: str = "guide_names"
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Read and check the 0/1 guide matrix and its guide names from ``adata``.

    Returns ``(guides, names)``: a canonical CSR int8 matrix (cells x guides, stored entries all 1)
    and an object array of guide names (the DataFrame's columns when the matrix is a DataFrame,
    which must then agree with ``adata.uns[guide_names_key]`` if that is stored too, else
    ``adata.uns[guide_names_key]``).
    """
    if guide_key not in adata.obsm:
        raise _missing_key_error(
            "obsm",
            guide_key,
            adata.obsm.keys(),
            "Run sklcrt.assignment.assign_guides on the gRNA counts or pass guide_key=....",
        )
    obj = adata.obsm[guide_key]
    what = f"adata.obsm[{guide_key!r}]"
    matrix = _as_csr(obj, what)
    if matrix.shape[0] != adata.n_obs:
        raise ValueError(f"{what} has {matrix.shape[0]} rows but adata has {adata.n_obs} cells.")
    if matrix.nnz and not np.all(matrix.data == 1):
        bad = np.unique(matrix.data[matrix.data != 1])[:5].tolist()
        raise ValueError(
            f"{what} must be 0/1, found value(s) {bad}; it looks like gRNA counts, assign guides "
            "with sklcrt.assignment.assign_guides first."
        )
    if isinstance(obj, pd.DataFrame):
        _check_aligned(obj.index, adata.obs_names, what)
    names = _column_names(adata, obj, what, guide_names_key, matrix.shape[1], "name")
    _check_unique(names, "guide names")
    return sp.csr_matrix(matrix, dtype=np.int8), names


def read_guide2gene(
    adata, guide_names: Iterable[str], *, guide2gene_key: str = "guide2gene"
) -> dict[str, str]:
    """Read ``adata.uns[guide2gene_key]`` (dict, Series or DataFrame) as a dict guide -> target.

    Every guide in ``guide_names`` must have a target.
    """
    if guide2gene_key not in adata.uns:
        raise _missing_key_error(
            "uns",
            guide2gene_key,
            adata.uns.keys(),
            "Run sklcrt.assignment.assign_guides or store a dict guide -> target.",
        )
    raw = adata.uns[guide2gene_key]
    if isinstance(raw, pd.DataFrame):
        cols = [c for c in ("grna_id", "guide") if c in raw.columns]
        tcols = [c for c in ("grna_target", "target", "gene") if c in raw.columns]
        if not cols or not tcols:
            raise ValueError(
                f"adata.uns[{guide2gene_key!r}] is a DataFrame without guide/target columns "
                "('grna_id'/'guide' and 'grna_target'/'target'/'gene')."
            )
        raw = dict(zip(raw[cols[0]].astype(str), raw[tcols[0]], strict=True))
    elif isinstance(raw, pd.Series):
        raw = dict(zip(raw.index.astype(str), raw.to_numpy(), strict=True))
    elif not isinstance(raw, Mapping):
        raise ValueError(
            f"adata.uns[{guide2gene_key!r}] must be a dict guide -> target, got "
            f"{type(raw).__name__}."
        )
    mapping = {str(k): v for k, v in raw.items()}
    names = [str(g) for g in guide_names]
    missing = [g for g in names if g not in mapping]
    if missing:
        raise ValueError(
            f"{len(missing)} guide(s) have no target in adata.uns[{guide2gene_key!r}], e.g. "
            f"{missing[:5]}."
        )
    out = {}
    for g in names:
        t = mapping[g]
        if t is None or (not isinstance(t, str) and pd.isna(t)) or str(t) == "":
            raise ValueError(f"guide {g!r} has an empty target in adata.uns[{guide2gene_key!r}].")
        out[g] = str(t)
    return out
