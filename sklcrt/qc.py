"""Cellwise quality control of a screen, with SCEPTRE's rules (AnnData).

:func:`cellwise_qc` flags cells by each rule and keeps them all: the result is a boolean mask
(``adata.obs["pass_cellwise_qc"]``) and a per-cell, per-rule frame, never a subset of the user's
object. Analyse the cells that pass with ``adata[result.mask].copy()`` (the command line does
this after its ``[qc]`` step); the user's object keeps every cell.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sklcrt._validation import covariate_frame, missing_key_error
from sklcrt.assignment import read_guide_matrix

__all__ = ["QC_RULES", "CellwiseQCResult", "cellwise_qc"]

#: The rules of :func:`cellwise_qc`, in the order they are reported (columns of ``cells``).
QC_RULES = (
    "response_n_umis",
    "response_n_nonzero",
    "p_mito",
    "zero_grnas",
    "twoplus_grnas",
    "user_specified",
)

MOI_VALUES = ("high", "low")


@dataclass
class CellwiseQCResult:
    """What :func:`cellwise_qc` returns.

    Attributes
    ----------
    cells : DataFrame of shape (n_cells, 7)
        Indexed like ``adata.obs_names``; one bool column per rule of :data:`QC_RULES`
        (True = the rule removes the cell; all False for a rule not applied) and ``pass_qc``
        (True = no rule removes the cell). A cell may be removed by several rules.
    summary : DataFrame
        One row per rule (index: the rule's name, then ``"any"``), columns ``applied`` (bool),
        ``n_removed`` (cells the rule removes, counted on its own), ``threshold`` (a readable
        description of the cut) and ``note`` (why a rule was not applied, or where its values
        came from).
    params : dict
        The parameters the QC ran with.
    """

    cells: pd.DataFrame
    summary: pd.DataFrame
    params: dict = field(default_factory=dict)

    @property
    def n_pass(self) -> int:
        """Cells that pass every rule."""
        return int(self.cells["pass_qc"].sum())

    @property
    def mask(self) -> np.ndarray:
        """``cells["pass_qc"]`` as a numpy bool array."""
        return self.cells["pass_qc"].to_numpy(dtype=bool)


def _check_range(value, name: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a pair (low, high) of quantiles in [0, 1], got {value!r}."
        ) from None
    if not (0.0 <= lo <= hi <= 1.0):
        raise ValueError(
            f"{name} must be a pair (low, high) with 0 <= low <= high <= 1, got {value!r}."
        )
    return lo, hi


def _find_column(adata, covar, name: str, covar_key: str):
    """``(values, where)`` of a per-cell column from the covariate frame or ``adata.obs``."""
    if covar is not None and name in covar.columns:
        return covar[name].to_numpy(), f"adata.obsm[{covar_key!r}][{name!r}]"
    if name in adata.obs.columns:
        return adata.obs[name].to_numpy(), f"adata.obs[{name!r}]"
    return None, None


def _numeric(values, where: str) -> np.ndarray:
    try:
        out = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be numeric.") from None
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{where} has NaN or infinite value(s); QC needs a value for every cell.")
    return out


def _response_counts(adata, layer):
    matrix = adata.X if layer is None else adata.layers[layer]
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    if matrix is None:
        raise ValueError("adata.X is empty; pass layer=... or store response_n_umis.")
    if sp.issparse(matrix):
        m = sp.csr_matrix(matrix)
        n_umis = np.asarray(m.sum(axis=1), dtype=np.float64).ravel()
        n_nonzero = (m != 0).getnnz(axis=1).astype(np.float64)
    else:
        m = np.asarray(matrix)
        n_umis = m.sum(axis=1).astype(np.float64)
        n_nonzero = (m != 0).sum(axis=1).astype(np.float64)
    return n_umis, n_nonzero, where


def _user_cells(additional, obs_names: pd.Index) -> np.ndarray:
    n = len(obs_names)
    out = np.zeros(n, dtype=bool)
    if additional is None:
        return out
    if isinstance(additional, str):
        additional = [additional]
    items = list(additional) if not isinstance(additional, np.ndarray) else additional
    if isinstance(items, np.ndarray) and items.dtype == bool:
        if items.shape != (n,):
            raise ValueError(
                f"additional_cells_to_remove is a boolean mask of shape {items.shape}; it needs "
                f"one value per cell ({n})."
            )
        return items.copy()
    items = list(items)
    if not items:
        return out
    if all(isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in items):
        pos = np.asarray(items, dtype=np.int64)
        bad = pos[(pos < 0) | (pos >= n)]
        if bad.size:
            raise ValueError(
                f"additional_cells_to_remove has position(s) {bad[:5].tolist()} outside "
                f"0..{n - 1}; pass obs names or 0-based positions."
            )
        out[pos] = True
        return out
    names = pd.Index([str(i) for i in items])
    where = obs_names.astype(str).get_indexer(names)
    unknown = names[where < 0]
    if unknown.size:
        raise ValueError(
            f"additional_cells_to_remove names {unknown.size} cell(s) not in adata.obs_names, "
            f"e.g. {unknown[:5].tolist()}."
        )
    out[where] = True
    return out


def cellwise_qc(
    adata,
    *,
    moi: str | None = None,
    response_n_umis_range: Sequence[float] = (0.01, 0.99),
    response_n_nonzero_range: Sequence[float] = (0.01, 0.99),
    p_mito_threshold: float = 0.2,
    remove_cells_w_zero_or_twoplus_grnas: bool | None = None,
    additional_cells_to_remove: Iterable = (),
    covar_key: str = "covar",
    guide_key: str = "guide_assignment",
    guide_names_key: str = "guide_names",
    n_umis_key: str = "response_n_umis",
    n_nonzero_key: str = "response_n_nonzero",
    p_mito_key: str = "response_p_mito",
    layer: str | None = None,
    key_added: str | None = "cellwise_qc",
) -> CellwiseQCResult:
    """Flag low-quality cells with SCEPTRE's cellwise QC rules; keep every cell.

    Rules (each applied to all cells on its own; a cell passes when no rule removes it):

    - ``response_n_umis``: the cell's response UMI count lies outside the
      ``response_n_umis_range`` quantiles of all cells (``v < q_low`` or ``v > q_high``, linear
      quantiles as R's default);
    - ``response_n_nonzero``: likewise for the number of responses with nonzero expression;
    - ``p_mito``: the fraction of mitochondrial UMIs exceeds ``p_mito_threshold`` (skipped, with
      a note, where no such column exists);
    - ``zero_grnas`` / ``twoplus_grnas``: the cell carries no gRNA / two or more gRNAs in the
      assignment (SCEPTRE's low-MOI rule; after the maximum rule these are its unassigned and
      ambiguous cells);
    - ``user_specified``: ``additional_cells_to_remove``.

    Parameters
    ----------
    adata : AnnData
        The screen. Not subset; ``adata.obs``, ``obsm`` and ``uns`` get the results when
        ``key_added`` is not None.
    moi : {"high", "low"}, default=None
        The screen's multiplicity of infection; decides the default of
        ``remove_cells_w_zero_or_twoplus_grnas`` (on at low MOI, off at high MOI, as SCEPTRE).
        Required unless that option is given.
    response_n_umis_range, response_n_nonzero_range : pair of float, default=(0.01, 0.99)
        Quantiles ``(low, high)``, ``0 <= low <= high <= 1``; ``(0, 1)`` removes nothing.
    p_mito_threshold : float, default=0.2
        Largest fraction (in ``[0, 1]``) of mitochondrial UMIs kept.
    remove_cells_w_zero_or_twoplus_grnas : bool, default=None
        Apply the ``zero_grnas`` and ``twoplus_grnas`` rules; ``None``: ``moi == "low"``.
    additional_cells_to_remove : iterable, default=()
        Cells to remove: obs names, 0-based positions, or a boolean mask over the cells.
    covar_key : str, default="covar"
        ``adata.obsm`` key of the raw covariate frame, searched first for the per-cell columns
        (then ``adata.obs``).
    guide_key, guide_names_key : str, default="guide_assignment", "guide_names"
        The 0/1 guide matrix, read only when the gRNA rules apply.
    n_umis_key, n_nonzero_key, p_mito_key : str
        Column names of the per-cell values. When ``n_umis_key`` or ``n_nonzero_key`` is in
        neither place, it is computed from ``adata.X`` (or ``layer``) and the summary says so.
    layer : str, default=None
        Layer with the response counts, used only when those columns are missing.
    key_added : str or None, default="cellwise_qc"
        Writes ``adata.obs["pass_" + key_added]`` (bool), ``adata.obsm[key_added]`` (the
        per-rule frame ``cells``) and ``adata.uns[key_added]`` (``{"summary": ..., "params":
        ...}``). ``None`` writes nothing.

    Returns
    -------
    CellwiseQCResult
        ``cells``: DataFrame (n_cells x 7: the rules of :data:`QC_RULES` then ``pass_qc``);
        ``summary``: DataFrame, one row per rule and ``"any"``, with ``applied``,
        ``n_removed``, ``threshold``, ``note``; ``params``; ``n_pass`` and ``mask``.

    Raises
    ------
    ValueError
        For a missing ``moi`` (when the gRNA rules' default depends on it), bad ranges or
        thresholds (named), p_mito values above 1 (percentages), NaN covariates, unknown
        ``additional_cells_to_remove``, a missing guide matrix when the gRNA rules apply, or when
        every cell would be removed.

    Examples
    --------
    >>> import anndata as ad, numpy as np, pandas as pd, scipy.sparse as sp
    >>> from sklcrt.qc import cellwise_qc
    >>> rng = np.random.default_rng(0)
    >>> a = ad.AnnData(sp.csr_matrix(rng.poisson(2.0, size=(200, 30))))
    >>> a.obs["response_p_mito"] = np.where(np.arange(200) == 0, 0.5, 0.05)
    >>> a.obsm["guide_assignment"] = sp.csr_matrix(np.eye(200, 4, dtype=np.int8))
    >>> a.uns["guide_names"] = np.array(["g1", "g2", "g3", "g4"])
    >>> res = cellwise_qc(a, moi="low", response_n_umis_range=(0, 1),
    ...                   response_n_nonzero_range=(0, 1))
    >>> res.summary["n_removed"].to_dict()  # doctest: +NORMALIZE_WHITESPACE
    {'response_n_umis': 0, 'response_n_nonzero': 0, 'p_mito': 1, 'zero_grnas': 196,
     'twoplus_grnas': 0, 'user_specified': 0, 'any': 197}
    >>> int(a.obs["pass_cellwise_qc"].sum())
    3
    """
    if moi is not None and moi not in MOI_VALUES:
        raise ValueError(f"moi must be one of {list(MOI_VALUES)} or None, got {moi!r}.")
    if remove_cells_w_zero_or_twoplus_grnas is None:
        if moi is None:
            raise ValueError(
                "cellwise_qc needs moi='high' or moi='low' (it decides whether cells with zero "
                "or two or more gRNAs are removed, as in SCEPTRE), or an explicit "
                "remove_cells_w_zero_or_twoplus_grnas=True/False."
            )
        remove_cells_w_zero_or_twoplus_grnas = moi == "low"
    if not isinstance(remove_cells_w_zero_or_twoplus_grnas, (bool, np.bool_)):
        raise ValueError(
            "remove_cells_w_zero_or_twoplus_grnas must be True, False or None, got "
            f"{remove_cells_w_zero_or_twoplus_grnas!r}."
        )
    umi_range = _check_range(response_n_umis_range, "response_n_umis_range")
    nz_range = _check_range(response_n_nonzero_range, "response_n_nonzero_range")
    if (
        isinstance(p_mito_threshold, bool)
        or not isinstance(p_mito_threshold, numbers.Real)
        or not 0.0 <= p_mito_threshold <= 1.0
    ):
        raise ValueError(
            f"p_mito_threshold must be a fraction in [0, 1], got {p_mito_threshold!r}."
        )

    n = adata.n_obs
    if n == 0:
        raise ValueError("adata has no cells.")
    covar = None
    if covar_key is not None and covar_key in adata.obsm:
        covar = covariate_frame(adata, covar_key)

    flags: dict[str, np.ndarray] = {}
    rows: dict[str, dict] = {}
    computed = None
    for rule, key, (lo, hi) in (
        ("response_n_umis", n_umis_key, umi_range),
        ("response_n_nonzero", n_nonzero_key, nz_range),
    ):
        values, where = _find_column(adata, covar, key, covar_key)
        if values is None:
            if computed is None:
                computed = _response_counts(adata, layer)
            values = computed[0] if rule == "response_n_umis" else computed[1]
            where = f"computed from {computed[2]}"
        values = _numeric(values, where)
        q_lo, q_hi = np.quantile(values, [lo, hi])
        flags[rule] = (values < q_lo) | (values > q_hi)
        rows[rule] = {
            "applied": True,
            "threshold": f"outside quantiles [{lo:g}, {hi:g}] = [{q_lo:g}, {q_hi:g}]",
            "note": where,
        }

    values, where = _find_column(adata, covar, p_mito_key, covar_key)
    if values is None:
        flags["p_mito"] = np.zeros(n, dtype=bool)
        rows["p_mito"] = {
            "applied": False,
            "threshold": f"> {p_mito_threshold:g}",
            "note": f"skipped: no column {p_mito_key!r} in adata.obsm[{covar_key!r}] or adata.obs",
        }
    else:
        values = _numeric(values, where)
        if values.max() > 1.0:
            raise ValueError(
                f"{where} has values up to {values.max():g}; it must be a fraction in [0, 1] "
                "(divide percentages by 100)."
            )
        flags["p_mito"] = values > p_mito_threshold
        rows["p_mito"] = {"applied": True, "threshold": f"> {p_mito_threshold:g}", "note": where}

    if remove_cells_w_zero_or_twoplus_grnas:
        if guide_key not in adata.obsm:
            raise missing_key_error(
                "obsm",
                guide_key,
                adata.obsm.keys(),
                "The gRNA rules need the guide assignment: run sklcrt.assignment.assign_guides "
                "first, pass guide_key=..., or remove_cells_w_zero_or_twoplus_grnas=False.",
            )
        guides, _ = read_guide_matrix(adata, guide_key=guide_key, guide_names_key=guide_names_key)
        per_cell = guides.getnnz(axis=1)
        flags["zero_grnas"] = per_cell == 0
        flags["twoplus_grnas"] = per_cell >= 2
        note = f"adata.obsm[{guide_key!r}]"
        rows["zero_grnas"] = {"applied": True, "threshold": "0 gRNAs", "note": note}
        rows["twoplus_grnas"] = {"applied": True, "threshold": ">= 2 gRNAs", "note": note}
    else:
        why = f"off (moi={moi!r})" if moi is not None else "off"
        for rule, cut in (("zero_grnas", "0 gRNAs"), ("twoplus_grnas", ">= 2 gRNAs")):
            flags[rule] = np.zeros(n, dtype=bool)
            rows[rule] = {"applied": False, "threshold": cut, "note": why}

    flags["user_specified"] = _user_cells(additional_cells_to_remove, adata.obs_names)
    rows["user_specified"] = {
        "applied": True,
        "threshold": "additional_cells_to_remove",
        "note": "",
    }

    cells = pd.DataFrame({rule: flags[rule] for rule in QC_RULES}, index=adata.obs_names.copy())
    removed = cells.to_numpy().any(axis=1)
    cells["pass_qc"] = ~removed
    summary = pd.DataFrame.from_dict(rows, orient="index").loc[list(QC_RULES)]
    summary["n_removed"] = [int(flags[r].sum()) for r in QC_RULES]
    summary.loc["any"] = {
        "applied": True,
        "threshold": "any rule",
        "note": f"{int((~removed).sum())} of {n} cells pass",
        "n_removed": int(removed.sum()),
    }
    summary = summary[["applied", "n_removed", "threshold", "note"]]
    summary["applied"] = summary["applied"].astype(bool)
    summary["n_removed"] = summary["n_removed"].astype(np.int64)
    summary.index.name = "rule"
    if not (~removed).any():
        counts = ", ".join(f"{r}: {int(flags[r].sum())}" for r in QC_RULES)
        raise ValueError(
            f"cellwise QC removes all {n} cells ({counts}); loosen the ranges or thresholds, or "
            "check the guide assignment."
        )
    params = {
        "moi": moi,
        "response_n_umis_range": list(umi_range),
        "response_n_nonzero_range": list(nz_range),
        "p_mito_threshold": float(p_mito_threshold),
        "remove_cells_w_zero_or_twoplus_grnas": bool(remove_cells_w_zero_or_twoplus_grnas),
        "n_additional_cells_to_remove": int(flags["user_specified"].sum()),
        "covar_key": covar_key,
        "guide_key": guide_key,
    }
    result = CellwiseQCResult(cells=cells, summary=summary, params=params)
    if key_added is not None:
        adata.obs[f"pass_{key_added}"] = cells["pass_qc"].to_numpy()
        adata.obsm[key_added] = cells
        adata.uns[key_added] = {"summary": summary.reset_index(), "params": params}
    return result
