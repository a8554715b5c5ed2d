"""gRNA integration: per-guide results combined into one row per (target, response).

SCEPTRE's strategies are ``"union"`` (a target's guides pooled into one unit: the runners' default),
``"singleton"`` (every guide on its own: ``run_gene_loop(per_guide=True)``) and
``"bonferroni"``, which :func:`combine_guides_bonferroni` computes from the singleton table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["combine_guides_bonferroni"]

#: Columns of the per-guide table that :func:`combine_guides_bonferroni` needs.
REQUIRED_COLUMNS = ("unit", "grna_target", "response", "pvalue")


def combine_guides_bonferroni(
    results: pd.DataFrame,
    *,
    unit_col: str = "unit",
    target_col: str = "grna_target",
    response_col: str = "response",
    p_col: str = "pvalue",
    pass_col: str = "pass_qc",
    reason_col: str = "qc_reason",
) -> pd.DataFrame:
    """Combine per-guide tests into one test per (target, response) by Bonferroni.

    For a pair, the guides *tested* are its rows that pass QC (``pass_col`` True, when the
    column exists) with a finite p-value; with ``k`` of them, the pair's p-value is
    ``min(1, k * min p)`` (SCEPTRE's ``grna_integration_strategy="bonferroni"``). Untested
    guides do not count in ``k``. The effect, statistic and other per-guide columns reported
    are those of the guide with the smallest p-value (the first in table order on ties),
    named in ``best_guide``. A pair with no tested guide keeps one row with ``pass_qc=False``,
    a missing p-value and a reason.

    Parameters
    ----------
    results : DataFrame
        One row per (guide, response): the table of ``run_gene_loop(per_guide=True)``, whose
        ``unit`` is the guide.
    unit_col, target_col, response_col, p_col : str
        Column names of the guide, its target, the response and the p-value.
    pass_col, reason_col : str, default="pass_qc", "qc_reason"
        Pairwise-QC columns; when ``pass_col`` is absent every row with a finite p-value is
        tested.

    Returns
    -------
    DataFrame
        One row per (target, response), in order of first appearance, with: ``unit`` (the
        target), ``grna_target``, ``response``, ``pvalue`` (Bonferroni), ``best_guide``,
        ``pvalue_best_guide`` (its own p-value), ``n_guides`` (rows of the pair),
        ``n_guides_tested`` (``k``), ``guides_tested`` (``";"``-joined names), every other
        column of ``results`` taken from the best guide (e.g. ``effect``, ``effect_se``,
        ``statistic``, ``n_treated``), ``pass_qc`` and ``qc_reason``. BH adjustment is left to
        the caller (e.g. :func:`sklcrt.runners.add_bh`).

    Raises
    ------
    ValueError
        When a required column is missing, the table is empty, or a p-value lies outside
        ``[0, 1]``.

    Examples
    --------
    >>> import pandas as pd
    >>> from sklcrt.integration import combine_guides_bonferroni
    >>> per_guide = pd.DataFrame({
    ...     "unit": ["g1", "g2", "g3", "g4"], "grna_target": ["A", "A", "B", "B"],
    ...     "response": ["X", "X", "X", "X"], "pvalue": [0.01, 0.2, float("nan"), 0.5],
    ...     "effect": [-1.0, -0.2, float("nan"), 0.1],
    ...     "pass_qc": [True, True, False, True], "qc_reason": ["", "", "few cells", ""]})
    >>> out = combine_guides_bonferroni(per_guide)
    >>> out[["grna_target", "pvalue", "best_guide", "effect", "n_guides_tested"]]
      grna_target  pvalue best_guide  effect  n_guides_tested
    0           A    0.02         g1    -1.0                2
    1           B    0.50         g4     0.1                1
    """
    if not isinstance(results, pd.DataFrame):
        raise ValueError(f"results must be a pandas DataFrame, got {type(results).__name__}.")
    cols = (unit_col, target_col, response_col, p_col)
    missing = [c for c in cols if c not in results.columns]
    if missing:
        raise ValueError(
            f"results needs column(s) {missing} (the per-guide table of "
            f"run_gene_loop(per_guide=True)); it has {list(map(str, results.columns))}."
        )
    if results.empty:
        raise ValueError("results is empty; there is nothing to combine.")
    frame = results.reset_index(drop=True)
    p = pd.to_numeric(frame[p_col], errors="coerce").to_numpy(dtype=np.float64)
    finite = np.isfinite(p)
    if np.any((p[finite] < 0) | (p[finite] > 1)):
        raise ValueError(f"results[{p_col!r}] has p-value(s) outside [0, 1].")
    tested = finite.copy()
    if pass_col in frame.columns:
        tested &= frame[pass_col].fillna(False).to_numpy(dtype=bool)

    key = pd.MultiIndex.from_arrays(
        [frame[target_col].astype(str), frame[response_col].astype(str)]
    )
    codes, uniques = pd.factorize(key, sort=False)
    n_pairs = len(uniques)
    n_guides = np.bincount(codes, minlength=n_pairs)
    n_tested = np.bincount(codes, weights=tested.astype(np.float64), minlength=n_pairs).astype(
        np.int64
    )
    # best tested row per pair: smallest p, first in table order on ties
    p_rank = np.where(tested, p, np.inf)
    order = np.lexsort((np.arange(len(frame)), p_rank, codes))
    first = np.ones(order.size, dtype=bool)
    first[1:] = codes[order][1:] != codes[order][:-1]
    best_row = order[first]  # one row per pair, in code order
    best = frame.iloc[best_row].reset_index(drop=True)
    has_test = n_tested > 0
    p_best = p[best_row]
    combined = np.where(has_test, np.minimum(1.0, p_best * n_tested), np.nan)

    names = frame[unit_col].astype(str).to_numpy()
    guides_tested = [""] * n_pairs
    for code, name in zip(codes[tested], names[tested], strict=True):
        guides_tested[code] = name if not guides_tested[code] else f"{guides_tested[code]};{name}"

    reasons = np.full(n_pairs, "", dtype=object)
    if (~has_test).any():
        for code in np.flatnonzero(~has_test):
            rows = np.flatnonzero(codes == code)
            detail = ""
            if reason_col in frame.columns:
                found = sorted({str(r) for r in frame[reason_col].iloc[rows] if str(r)})
                detail = f": {'; '.join(found)}" if found else ""
            reasons[code] = f"no guide tested ({rows.size} guide(s) failed QC){detail}"

    out = best.drop(columns=[c for c in (unit_col, p_col) if c in best.columns])
    float_cols = [
        c for c in out.columns if c not in (target_col, response_col) and out[c].dtype.kind == "f"
    ]
    out.loc[~has_test, float_cols] = np.nan  # an untested pair reports no effect
    out.insert(0, unit_col, out[target_col].astype(str))
    loc = list(out.columns).index(response_col) + 1
    out.insert(loc, p_col, combined)
    out.insert(loc + 1, "best_guide", np.where(has_test, names[best_row], None))
    out.insert(loc + 2, "pvalue_best_guide", np.where(has_test, p_best, np.nan))
    out.insert(loc + 3, "n_guides", n_guides.astype(np.int64))
    out.insert(loc + 4, "n_guides_tested", n_tested)
    out.insert(loc + 5, "guides_tested", guides_tested)
    out[pass_col] = has_test
    out[reason_col] = reasons
    return out
