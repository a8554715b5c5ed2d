"""Guide assignment from gRNA UMI counts, and burden covariates from the assignment (AnnData).

:func:`assign_guides` turns gRNA UMI counts (``adata.obsm["grna_counts"]``) into the 0/1 guide
matrix of the data contract; :func:`add_burden_covariates` derives per-cell burden columns from it
and adds them to ``adata.obsm["covar"]``. Both modify ``adata`` in place and return ``None``, as
scanpy functions do.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import expit, gammaln

from sklcrt._random import as_generator
from sklcrt._validation import check_aligned, check_int, covariate_frame, missing_key_error, ntc_set
from sklcrt.moi import moi_choices
from sklcrt.preprocessing import encode_covariates

__all__ = [
    "DEFAULT_NTC_LABELS",
    "MIXTURE_COUNT_COVARIATES",
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

ASSIGNMENT_METHODS = ("threshold", "maximum", "mixture")

#: Per-cell count covariates of the mixture's Poisson GLM by default (SCEPTRE's assignment formula
#: ``log(response_n_nonzero) + log(response_n_umis) + log(grna_n_nonzero + 1) +
#: log(grna_n_umis + 1)``, plus every categorical column of the covariate frame, e.g. the batch).
#: The ``grna_`` columns are computed from the gRNA counts when the frame lacks them.
MIXTURE_COUNT_COVARIATES = (
    "log1p_response_n_umis",
    "log1p_response_n_nonzero",
    "log1p_grna_n_umis",
    "log1p_grna_n_nonzero",
)


def is_ntc_target(target, ntc_labels: Iterable[str] = DEFAULT_NTC_LABELS) -> bool:
    """Whether ``target`` is one of ``ntc_labels`` (case-insensitive, surrounding spaces ignored).

    Examples
    --------
    >>> from sklcrt.assignment import is_ntc_target
    >>> is_ntc_target("Non-Targeting"), is_ntc_target("MYC")
    (True, False)
    """
    return str(target).strip().lower() in ntc_set(ntc_labels)


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
    method: str | None = None,
    moi: str | None = None,
    threshold: float = 5,
    min_fraction: float = 0.8,
    min_umis: float = 5,
    probability_threshold: float = 0.8,
    covar_key: str = "covar",
    covariates: Sequence[str] | None = None,
    n_em_starts: int = 5,
    n_nonzero_cells_cutoff: int = 10,
    random_state=0,
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
    method : {"threshold", "maximum", "mixture"}, default=None
        ``None``: the choice of ``moi`` (``"mixture"`` at high MOI, ``"maximum"`` at low MOI,
        SCEPTRE's defaults), else ``"threshold"``.
        ``"threshold"`` (high MOI, SCEPTRE's thresholding): a cell carries every gRNA with at
        least ``threshold`` UMIs, so a cell may carry many gRNAs.
        ``"maximum"`` (low MOI, SCEPTRE's maximum / crispat's ratio rule): a cell carries at most
        one gRNA, its most abundant one, and only when (a) that gRNA is the unique maximum, (b) it
        holds more than ``min_fraction`` of the cell's gRNA UMIs and (c) the cell has at least
        ``min_umis`` gRNA UMIs in total. Other cells get no gRNA.
        ``"mixture"`` (SCEPTRE's default at high MOI): per gRNA, a two-component Poisson
        mixture, ``Poisson(mu_i)`` (background, ``log mu_i`` linear in the cell covariates) and
        ``Poisson(mu_i + lambda)`` (the cell carries the gRNA), is fitted by maximum likelihood
        (EM from ``n_em_starts`` starts); a cell carries the gRNA when its posterior probability
        reaches ``probability_threshold``. See Notes.
    moi : {"high", "low"}, default=None
        Picks ``method`` when it is not given (see :mod:`sklcrt.moi`).
    threshold : float, default=5
        UMI threshold (``count >= threshold``), > 0, of ``method="threshold"``, and of the backup
        rule of ``method="mixture"`` (gRNAs whose mixture cannot be fitted).
    min_fraction : float, default=0.8
        For ``method="maximum"``: the top gRNA must hold more than this fraction, in ``[0, 1)``,
        of the cell's gRNA UMIs (SCEPTRE's ``umi_fraction_threshold``: a cell whose top gRNA
        holds exactly 0.8 is not assigned).
    min_umis : float, default=5
        For ``method="maximum"``: the fewest gRNA UMIs, over all gRNAs, a cell needs to be assigned
        (SCEPTRE's ``min_grna_n_umis_threshold`` default), >= 0.
    probability_threshold : float, default=0.8
        For ``method="mixture"``: the posterior probability, in ``(0, 1)``, that assigns a cell.
    covar_key : str, default="covar"
        For ``method="mixture"``: ``adata.obsm`` key of the raw covariate DataFrame. When it is
        absent, the GLM uses the gRNA count covariates alone (with a warning).
    covariates : sequence of str, default=None
        For ``method="mixture"``: columns of the covariate frame in the GLM (encoded with
        :func:`~sklcrt.preprocessing.encode_covariates`; an intercept is always added).
        ``None`` is SCEPTRE's assignment formula: :data:`MIXTURE_COUNT_COVARIATES` (the
        ``grna_`` ones computed from the counts when the frame lacks them) and every categorical
        column of the frame (e.g. ``batch``).
    n_em_starts : int, default=5
        For ``method="mixture"``: EM starts. The first comes from the threshold rule (the
        background GLM of the counts below ``threshold``, the mixing proportion the fraction of
        cells at or above it, ``lambda`` their mean count); the others are drawn from
        ``random_state`` (mixing proportion uniform in ``[1e-3, 0.5]``, ``lambda`` log-uniform in
        ``[2, 200]`` UMIs, the background GLM of all cells). The converged start with the largest
        likelihood is kept.
    n_nonzero_cells_cutoff : int, default=10
        For ``method="mixture"``: a gRNA seen (>= 1 UMI) in fewer cells uses the backup rule.
    random_state : int, SeedSequence or None, default=0
        For ``method="mixture"``: seeds the EM starts.
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
        holding more than ``min_fraction`` of the UMIs); ``adata.uns[key_added + "_params"]``
        with the method and its parameters; for the mixture,
        ``adata.uns[key_added + "_mixture_fits"]``, a DataFrame with one row per gRNA
        (``grna_id``, ``n_nonzero``, ``rule`` = ``"mixture"`` or ``"backup"``,
        ``backup_reason``, ``converged``, ``log_lik``, ``pi``, ``lambda``, ``n_assigned``).

    Raises
    ------
    ValueError
        For an unknown ``method``, out-of-range parameters (named), missing keys (listing those
        present), negative or non-finite counts, or covariates that are not in the frame.

    Notes
    -----
    With the maximum rule, SCEPTRE removes the unassigned and ambiguous cells in its cell-wise QC
    (they are neither clearly perturbed nor clearly unperturbed). Here they stay in ``adata`` with
    no gRNA; :func:`sklcrt.qc.cellwise_qc` with ``moi="low"`` flags them (rule ``zero_guides``).

    The mixture is SCEPTRE's model, ``g_i ~ (1 - pi) Poisson(mu_i) + pi Poisson(mu_i + lambda)``
    with ``log mu_i = x_i' beta`` on the covariates, fitted by maximum likelihood of all of
    ``(pi, lambda, beta)``. Each EM step is an E-step (posteriors ``t_i``) and two conditional
    maximisations of the expected complete-data log-likelihood (an AECM algorithm: the likelihood
    never decreases): ``pi`` is the mean posterior and ``lambda`` maximises the concave
    ``sum_i t_i (g_i log(mu_i + lambda) - lambda)`` by Newton steps, which need the gRNA's
    nonzero cells only (a cell with no UMI adds ``-t_0 lambda``, and all such cells share the
    posterior ``t_0``); then, the split of a carrier's UMIs into background and gRNA UMIs also
    missing, ``beta`` takes a Newton step (with step halving) of the Poisson GLM of the expected
    background UMIs ``g_i (1 - t_i + t_i mu_i / (mu_i + lambda))``, on all cells. Every start
    runs 20 steps, then only each gRNA's best start goes on; a start converges when the
    log-likelihood changes by less than 1e-9 relative (within 1,000 steps). All gRNAs and starts
    run as one vectorised EM, in blocks of gRNAs.

    This differs from SCEPTRE (and pysceptre) on purpose. SCEPTRE fits the background GLM once,
    on all cells, so at high penetrance the carriers' UMIs inflate ``mu_i``, and it updates
    ``lambda`` as ``log(sum_i t_i g_i / sum_i t_i mu_i)`` (the M-step of a multiplicative effect,
    ``mu_i e^lambda``) but adds it to the mean on the count scale: not the model's maximum
    likelihood. It is accurate at penetrances of a few per cent but misses many carriers at
    10-20 % (on ``simulate_screen(..., moi=6)``, 59 % of the carriers found, against > 99 %
    here). On the Gasperini screen the assignments stay close to pysceptre's (per-gRNA Jaccard
    index about 0.96; see ``benchmarks/bench_assignment_vs_pysceptre.py``), with a higher
    likelihood for every gRNA. Other differences from SCEPTRE: the starts (see ``n_em_starts``),
    no label swap (the carrier component is the one with ``lambda > 0``, so ``pi`` may exceed
    1/2), a cell with no UMI of a gRNA is never assigned it (a gRNA whose zero-count cells would
    be is put on the backup rule, reason ``"degenerate"``), and likelihoods are computed in log
    space (no ``1e-100`` floor). gRNAs seen in fewer than ``n_nonzero_cells_cutoff`` cells, and
    those with no converged start (reason ``"em"``), use the backup rule ``count >= threshold``.

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

    The mixture on simulated counts: 10 % of 2,000 cells carry the gRNA (about 20 UMIs), the
    others have ambient UMIs that grow with the cell's size.

    >>> rng = np.random.default_rng(0)
    >>> size = rng.normal(0, 0.5, 2000)
    >>> carries = rng.random(2000) < 0.1
    >>> g = rng.poisson(0.2 * np.exp(size) + 20 * carries)
    >>> b = ad.AnnData(np.zeros((2000, 1)))
    >>> b.obsm["grna_counts"] = sp.csr_matrix(g[:, None])
    >>> b.obsm["covar"] = pd.DataFrame({"size": size}, index=b.obs_names)
    >>> b.uns["grna_ids"], b.uns["grna_target"] = np.array(["g1"]), np.array(["MYC"])
    >>> assign_guides(b, method="mixture", covariates=["size"])
    >>> assigned = b.obsm["guide_assignment"].toarray().ravel() == 1
    >>> bool(np.mean(assigned == carries) > 0.99)
    True
    """
    if method is None:
        method = moi_choices(moi).get("assignment", {}).get("method", "threshold")
    if method not in ASSIGNMENT_METHODS:
        raise ValueError(f"method must be one of {list(ASSIGNMENT_METHODS)}, got {method!r}.")
    if method in ("threshold", "mixture"):
        threshold = _check_number(threshold, "threshold", low=0, low_inclusive=False)
    if method == "maximum":
        min_fraction = _check_number(min_fraction, "min_fraction", low=0, high=1)
        if min_fraction >= 1:
            raise ValueError(
                f"min_fraction must be < 1 (the top gRNA must hold more than it), got "
                f"{min_fraction!r}."
            )
        min_umis = _check_number(min_umis, "min_umis", low=0)
    if method == "mixture":
        probability_threshold = _check_number(
            probability_threshold, "probability_threshold", low=0, high=1, low_inclusive=False
        )
        if probability_threshold >= 1:
            raise ValueError(f"probability_threshold must be < 1, got {probability_threshold!r}.")
        n_em_starts = check_int(n_em_starts, "n_em_starts", min_value=1)
        n_nonzero_cells_cutoff = check_int(
            n_nonzero_cells_cutoff, "n_nonzero_cells_cutoff", min_value=1
        )
    if counts_key not in adata.obsm:
        raise missing_key_error(
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
    fits = None
    if method == "threshold":
        assigned = _threshold_rule(counts, threshold)
        status[np.diff(assigned.indptr) > 0] = "assigned"
        params = {"method": method, "threshold": threshold}
    elif method == "maximum":
        assigned, is_ambiguous = _maximum_rule(counts, min_fraction, min_umis)
        status[is_ambiguous] = "ambiguous"
        status[np.diff(assigned.indptr) > 0] = "assigned"
        params = {"method": method, "min_fraction": min_fraction, "min_umis": min_umis}
    else:
        C, C_names = _mixture_design(adata, counts, covar_key, covariates)
        rng = as_generator(random_state, key="mixture_starts")
        # start 0 comes from the threshold rule; the others are random draws
        pi_starts = rng.uniform(1e-3, 0.5, size=n_em_starts - 1)
        lambda_starts = np.exp(rng.uniform(np.log(2.0), np.log(200.0), size=n_em_starts - 1))
        assigned, fits = _mixture_rule(
            counts,
            C,
            probability_threshold=probability_threshold,
            backup_threshold=threshold,
            n_nonzero_cells_cutoff=n_nonzero_cells_cutoff,
            pi_starts=pi_starts,
            lambda_starts=lambda_starts,
        )
        fits.insert(0, "grna_id", np.asarray(ids, dtype=str))
        status[np.diff(assigned.indptr) > 0] = "assigned"
        params = {
            "method": method,
            "probability_threshold": probability_threshold,
            "threshold": threshold,
            "covar_key": covar_key,
            "covariates": list(C_names),
            "n_em_starts": n_em_starts,
            "n_nonzero_cells_cutoff": n_nonzero_cells_cutoff,
            "random_state": None if random_state is None else str(random_state),
        }
    params["counts_key"] = counts_key

    adata.obsm[key_added] = assigned
    adata.uns[names_key_added] = np.asarray(ids, dtype=str)
    adata.uns[guide2gene_key_added] = {str(g): str(t) for g, t in zip(ids, targets, strict=True)}
    adata.uns[f"{key_added}_params"] = params
    if fits is not None:
        adata.uns[f"{key_added}_mixture_fits"] = fits
    levels = ["assigned", "unassigned"] + (["ambiguous"] if method == "maximum" else [])
    adata.obs[f"{key_added}_status"] = pd.Categorical(status, categories=levels)


def _threshold_rule(counts: sp.csr_matrix, threshold: float) -> sp.csr_matrix:
    """0/1 CSR of the stored entries with ``count >= threshold``."""
    keep = counts.data >= threshold
    return sp.csr_matrix(
        (
            np.ones(int(keep.sum()), dtype=np.int8),
            counts.indices[keep],
            _kept_indptr(counts, keep),
        ),
        shape=counts.shape,
    )


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
    # compare the ratio itself (SCEPTRE's rule: the top share must exceed min_fraction)
    top_fraction = np.divide(row_max, total, out=np.zeros(n_cells), where=total > 0)
    clear_top = (n_top == 1) & (top_fraction > min_fraction)
    ok = enough_umis & clear_top
    rows = np.flatnonzero(ok)
    assigned = sp.csr_matrix(
        (np.ones(rows.size, dtype=np.int8), (rows, top_col[rows])), shape=counts.shape
    )
    assigned.sort_indices()
    return assigned, enough_umis & ~clear_top


# ------------------------------------------------------------------------------ mixture rule


def _grna_count_covariates(counts: sp.csr_matrix) -> dict[str, np.ndarray]:
    n_umis = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()
    n_nonzero = counts.getnnz(axis=1).astype(np.float64)
    return {"log1p_grna_n_umis": np.log1p(n_umis), "log1p_grna_n_nonzero": np.log1p(n_nonzero)}


def _mixture_design(adata, counts, covar_key, covariates) -> tuple[np.ndarray, list[str]]:
    """The encoded design (intercept first) of the mixture's per-gRNA Poisson GLM."""
    from_counts = _grna_count_covariates(counts)
    if covar_key in adata.obsm:
        covar = covariate_frame(adata, covar_key)
    elif covariates is not None:
        raise missing_key_error(
            "obsm", covar_key, adata.obsm.keys(), "Pass covar_key=... or covariates=None."
        )
    else:
        covar = pd.DataFrame(index=adata.obs_names.copy())
    if covariates is None:
        frame = {}
        missing = []
        for name in MIXTURE_COUNT_COVARIATES:
            if name in covar.columns:
                frame[name] = covar[name].to_numpy()
            elif name in from_counts:
                frame[name] = from_counts[name]
            else:
                missing.append(name)
        if missing:
            warnings.warn(
                f"the mixture's GLM omits {missing}: adata.obsm[{covar_key!r}] has no such "
                "column (SCEPTRE's formula adjusts for them; add log1p response UMI and "
                "nonzero counts per cell, or pass covariates=[...]).",
                UserWarning,
                stacklevel=3,
            )
        for name in covar.columns:
            dtype = covar[name].dtype
            if isinstance(dtype, pd.CategoricalDtype) or dtype.kind in "bOU":
                frame[name] = covar[name].to_numpy()
        frame = pd.DataFrame(frame, index=covar.index)
    else:
        if isinstance(covariates, str):
            covariates = [covariates]
        covariates = [str(c) for c in covariates]
        absent = [c for c in covariates if c not in covar.columns]
        if absent:
            raise ValueError(
                f"covariates {absent} are not columns of adata.obsm[{covar_key!r}] (columns: "
                f"{list(map(str, covar.columns))})."
            )
        frame = covar[covariates]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # constant columns dropped: same model
        C, names = encode_covariates(frame)
    return np.ascontiguousarray(C, dtype=np.float64), names


#: EM settings of the mixture: relative log-likelihood tolerance, step counts, the short run
#: after which only each gRNA's best start goes on, and the Newton steps on lambda per M-step.
_EM_TOL = 1e-9
_EM_MIN_STEPS = 3
_EM_MAX_STEPS = 1000
_EM_SCREEN_STEPS = 20
_LAMBDA_NEWTON_STEPS = 8
_LAMBDA_FLOOR = 1e-8
#: Cells x chains entries of one block's dense means (bounds the memory of a block).
_BLOCK_ENTRIES = 1 << 22


def _glm_step(C, outer, CtY, beta, mu, q):
    """One Newton step, with step halving, of Poisson GLMs (log link) from ``(C' y, beta)``.

    Columns of ``beta`` (p x c) are separate GLMs with ``C' y`` in the rows of ``CtY`` (c x p),
    ``mu = exp(C beta)`` (n x c) and objective ``q = C'y . beta - sum(mu)``; returns the new
    ``(beta, mu, q)``, never with a smaller ``q``.
    """
    p = C.shape[1]
    H = (outer.T @ mu).T.reshape(-1, p, p) + 1e-10 * np.eye(p)[None]
    grad = CtY - (C.T @ mu).T
    step = np.linalg.solve(H, grad[:, :, None])[:, :, 0].T  # p x c
    scale = np.ones(step.shape[1])
    for _half in range(30):
        b_new = beta + step * scale
        with np.errstate(over="ignore", invalid="ignore"):
            mu_new = np.exp(C @ b_new)
            q_new = np.einsum("cp,pc->c", CtY, b_new) - mu_new.sum(axis=0)
        bad = ~(q_new >= q - 1e-12 * np.abs(q))
        if not bad.any():
            break
        scale[bad] *= 0.5
    bad = ~(q_new >= q - 1e-12 * np.abs(q))  # no ascent in 30 halvings: keep the old fit
    b_new[:, bad] = beta[:, bad]
    mu_new[:, bad] = mu[:, bad]
    q_new[bad] = q[bad]
    return b_new, mu_new, q_new


def _poisson_glm_fit(C, outer, CtY, ybar, *, max_iter=30, tol=1e-10):
    """Poisson GLMs (log link) of several responses on ``C`` (intercept first) by batched Newton.

    ``CtY`` (k x p): ``C' y`` of each response; ``ybar``: their means (the intercept's start).
    Returns ``beta`` (p x k) and ``mu = exp(C beta)`` (n x k).
    """
    n, p = C.shape
    if p == 0 or not np.all(C[:, 0] == 1.0):  # pragma: no cover - encode_covariates adds it
        raise ValueError("the design must start with an intercept column")
    k = CtY.shape[0]
    beta = np.zeros((p, k))
    beta[0] = np.log(np.maximum(ybar, 1e-8))
    mu = np.exp(C @ beta)
    q = np.einsum("kp,pk->k", CtY, beta) - mu.sum(axis=0)
    active = np.ones(k, dtype=bool)
    for _ in range(max_iter):
        if not active.any():
            break
        idx = np.flatnonzero(active)
        b, m, q_new = _glm_step(C, outer, CtY[idx], beta[:, idx], mu[:, idx], q[idx])
        active[idx] = np.abs(q_new - q[idx]) > tol * (np.abs(q_new) + 0.1)
        beta[:, idx], mu[:, idx], q[idx] = b, m, q_new
    return beta, mu


def _mixture_em(C, outer, Y, threshold, pi_starts, lambda_starts):
    """EM of the two-component Poisson mixture of the gRNAs (columns of ``Y``), all at once.

    Per gRNA: ``g_i ~ (1 - pi) Poisson(mu_i) + pi Poisson(mu_i + lambda)``, ``log mu_i = C_i
    beta``. Each step is an E-step and two conditional maximisations of the expected complete-data
    log-likelihood (an AECM algorithm, so the likelihood never decreases): (1) with the cells'
    labels missing, ``pi`` in closed form and ``lambda`` by Newton steps on its concave part
    ``sum_i t_i (g_i log(mu_i + lambda) - lambda)``, which needs the nonzero cells only (a cell
    with no UMI adds ``-t_0 lambda``); (2) with the labels and the split of a carrier's UMIs into
    background and guide UMIs missing, ``beta`` by a Newton step of the Poisson GLM of the
    expected background UMIs ``g_i (1 - t_i + t_i mu_i / (mu_i + lambda))``.

    Starts (chain = start * k + gRNA): start 0 from the threshold rule (``beta`` of the GLM of
    the counts below ``threshold``, ``pi`` the fraction of cells at or above it, ``lambda`` their
    mean count), the others at ``(pi_starts[s], lambda_starts[s])`` with the GLM of all cells.
    Every start runs ``_EM_SCREEN_STEPS`` steps; then only each gRNA's best one goes on to
    convergence (relative change of the log-likelihood below ``_EM_TOL`` within
    ``_EM_MAX_STEPS`` steps).

    Returns a dict of per-gRNA arrays: ``t`` posteriors at the stored entries of ``Y`` (CSC
    order), ``t_zero`` (shared by the zero-count cells), ``converged``, ``log_lik``, ``pi``,
    ``lambda``.
    """
    n, p = C.shape
    k = Y.shape[1]
    n_starts = 1 + pi_starts.size
    rows = Y.indices
    seg = np.repeat(np.arange(k), np.diff(Y.indptr))
    g1 = Y.data

    # the GLM of all cells, and that of the counts below the threshold (start 0)
    CtY = np.asarray(Y.T @ C, dtype=np.float64)
    beta_all, mu_all = _poisson_glm_fit(C, outer, CtY, CtY[:, 0] / n)
    low = sp.csc_matrix((np.where(g1 < threshold, g1, 0.0), rows, Y.indptr), shape=Y.shape)
    CtY_low = np.asarray(low.T @ C, dtype=np.float64)
    beta_low, mu_low = _poisson_glm_fit(C, outer, CtY_low, CtY_low[:, 0] / n)
    high = g1 >= threshold
    n_high = np.bincount(seg, weights=high.astype(np.float64), minlength=k)
    sum_high = np.bincount(seg, weights=np.where(high, g1, 0.0), minlength=k)
    pi0 = np.clip(n_high / n, 1.0 / n, 0.5)
    lam0 = np.where(n_high > 0, sum_high / np.maximum(n_high, 1), np.maximum(g1.max(initial=1), 1))

    n_chain = n_starts * k
    beta = np.concatenate([beta_low] + [beta_all] * (n_starts - 1), axis=1)
    mu = np.concatenate([mu_low] + [mu_all] * (n_starts - 1), axis=1)
    pi = np.concatenate([pi0, np.repeat(pi_starts, k)]).astype(np.float64)
    lam = np.concatenate([lam0, np.repeat(lambda_starts, k)]).astype(np.float64)
    grna = np.tile(np.arange(k), n_starts)
    # entries of every chain, chain-major: chain c holds the entries of gRNA c % k
    e_start = Y.indptr[grna]
    e_len = np.diff(Y.indptr)[grna]
    entry = (np.repeat(e_start - np.cumsum(e_len) + e_len, e_len) + np.arange(e_len.sum())).astype(
        np.int64
    )
    indptr = np.concatenate(([0], np.cumsum(e_len)))
    gg = g1[entry]
    rr = rows[entry]
    ch = np.repeat(np.arange(n_chain), e_len)
    lgf = gammaln(gg + 1.0)
    lgf_sum = np.bincount(ch, weights=lgf, minlength=n_chain)
    n_zero = (n - e_len).astype(np.float64)

    done = np.zeros(n_chain, dtype=bool)
    converged = np.zeros(n_chain, dtype=bool)
    ll = np.full(n_chain, -np.inf)
    prev_ll = np.full(n_chain, -np.inf)
    t = np.zeros(gg.size)
    t_zero = np.zeros(n_chain)
    steps = np.zeros(n_chain, dtype=np.int64)

    def csum(values, m):
        return np.bincount(ch, weights=values, minlength=m)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        while not done.all():
            act = np.flatnonzero(~done)
            if act.size < n_chain:  # compact: only the running chains stay in the arrays
                keep_e = np.repeat(~done, e_len)
                # map old chain ids to new
                new_id = np.cumsum(~done) - 1
                ch_act = new_id[ch[keep_e]]
            else:
                keep_e = None
                ch_act = ch
            m = act.size
            if keep_e is None:
                g_a, r_a, t_a = gg, rr, t
            else:
                g_a, r_a, t_a = gg[keep_e], rr[keep_e], t[keep_e]
            beta_a, mu_a = beta[:, act], mu[:, act]
            pi_a, lam_a, nz_a = pi[act], lam[act], n_zero[act]

            def s(values, _ch=ch_act, _m=m):
                return np.bincount(_ch, weights=values, minlength=_m)

            mu_e = mu_a[r_a, ch_act]
            mu_zero_sum = mu_a.sum(axis=0) - s(mu_e)
            # E-step and log-likelihood at the current parameters
            log_pi, log_1mpi = np.log(pi_a), np.log1p(-pi_a)
            lp0 = log_1mpi[ch_act] + g_a * np.log(mu_e) - mu_e
            lp1 = log_pi[ch_act] + g_a * np.log(mu_e + lam_a[ch_act]) - mu_e - lam_a[ch_act]
            ll_a = s(np.logaddexp(lp0, lp1)) - lgf_sum[act]
            ll_a += nz_a * np.logaddexp(log_1mpi, log_pi - lam_a) - mu_zero_sum
            t_a = expit(lp1 - lp0)
            tz_a = expit(log_pi - log_1mpi - lam_a)
            bad = ~np.isfinite(ll_a) | ~np.all(np.isfinite(beta_a), axis=0)
            bad |= s((~np.isfinite(t_a)).astype(np.float64)) > 0
            alive = (s((t_a > 1e-100).astype(np.float64)) > 0) | ((nz_a > 0) & (tz_a > 1e-100))
            bad |= ~alive
            rel = np.abs(ll_a - prev_ll[act]) / (np.abs(ll_a) + 1.0)
            st = steps[act] + 1
            conv = ~bad & np.isfinite(prev_ll[act]) & (rel < _EM_TOL) & (st >= _EM_MIN_STEPS)
            ll[act] = np.where(bad, -np.inf, ll_a)
            if keep_e is None:
                t = t_a
            else:
                t[keep_e] = t_a
            t_zero[act] = tz_a
            converged[act] = conv
            steps[act] = st
            stop = bad | conv | (st >= _EM_MAX_STEPS)
            done[act] = stop
            prev_ll[act] = ll_a
            if np.any(st == _EM_SCREEN_STEPS):
                # the short runs are over: each gRNA keeps its best running start
                ll_now = np.where(done, -np.inf, ll).reshape(n_starts, k)
                best = np.argmax(ll_now, axis=0)
                loser = np.ones((n_starts, k), dtype=bool)
                loser[best, np.arange(k)] = False
                drop = loser.ravel() & ~done
                done |= drop
                stop = done[act]
            go = ~stop
            if not go.any():
                continue
            # M-step (1): pi, then lambda by Newton on its concave part (nonzero cells only)
            ta_sum = s(t_a) + nz_a * tz_a
            pi_new = np.clip(ta_sum / n, 1e-12, 1.0 - 1e-12)
            tg = t_a * g_a
            lam_new = lam_a.copy()
            for _ in range(_LAMBDA_NEWTON_STEPS):
                inv = 1.0 / (mu_e + lam_new[ch_act])
                d1 = s(tg * inv) - ta_sum
                d2 = -s(tg * inv * inv)
                cand = lam_new - d1 / np.where(d2 < 0, d2, -1.0)
                # f' is convex and decreasing: a step past 0 restarts from lambda / 10, and from
                # there Newton climbs monotonically to the root
                lam_new = np.where(np.isfinite(cand) & (cand > 0), cand, lam_new / 10.0)
            lam_new = np.maximum(lam_new, _LAMBDA_FLOOR)
            # M-step (2): beta, after the E-step at the new (pi, lambda)
            lp0 = np.log1p(-pi_new)[ch_act] + g_a * np.log(mu_e) - mu_e
            lp1 = np.log(pi_new)[ch_act] + g_a * np.log(mu_e + lam_new[ch_act]) - lam_new[ch_act]
            lp1 -= mu_e
            t2 = expit(lp1 - lp0)
            y_bg = g_a * (1.0 - t2 + t2 * mu_e / (mu_e + lam_new[ch_act]))
            sel = np.flatnonzero(go)
            pick = go[ch_act]
            remap = np.cumsum(go) - 1
            ch_sel = remap[ch_act[pick]]
            ysp = sp.csr_matrix(
                (y_bg[pick], (ch_sel, r_a[pick])), shape=(sel.size, n)
            )  # chains x cells
            CtY_b = np.asarray(ysp @ C, dtype=np.float64)
            b_old, m_old = beta_a[:, sel], mu_a[:, sel]
            q_old = np.einsum("cp,pc->c", CtY_b, b_old) - m_old.sum(axis=0)
            b_new, m_new, _ = _glm_step(C, outer, CtY_b, b_old, m_old, q_old)
            idx = act[sel]
            beta[:, idx], mu[:, idx] = b_new, m_new
            pi[idx], lam[idx] = pi_new[sel], lam_new[sel]

    ll_mat = np.where(converged, ll, -np.inf).reshape(n_starts, k)
    best = np.argmax(ll_mat, axis=0)  # first start on ties
    best_chain = best * k + np.arange(k)
    ok = np.isfinite(ll_mat[best, np.arange(k)])
    # the best chain's entries, in the order of Y's entries
    t_best = np.concatenate([t[indptr[c] : indptr[c + 1]] for c in best_chain]) if k else t[:0]
    return {
        "t": t_best,
        "t_zero": t_zero[best_chain],
        "converged": ok,
        "log_lik": np.where(ok, ll[best_chain], np.nan),
        "pi": np.where(ok, pi[best_chain], np.nan),
        "lambda": np.where(ok, lam[best_chain], np.nan),
    }


def _mixture_rule(
    counts: sp.csr_matrix,
    C: np.ndarray,
    *,
    probability_threshold: float,
    backup_threshold: float,
    n_nonzero_cells_cutoff: int,
    pi_starts: np.ndarray,
    lambda_starts: np.ndarray,
) -> tuple[sp.csr_matrix, pd.DataFrame]:
    """Assign every gRNA by the mixture (backup threshold where it cannot be fitted)."""
    n_cells, n_guides = counts.shape
    Y = sp.csc_matrix(counts, dtype=np.float64)
    Y.sort_indices()
    n_nonzero = np.diff(Y.indptr)
    on_mixture = np.flatnonzero(n_nonzero >= n_nonzero_cells_cutoff)
    reason = np.where(n_nonzero >= n_nonzero_cells_cutoff, "", "n_nonzero").astype(object)
    keep = np.zeros(Y.nnz, dtype=bool)
    out = {
        "converged": np.zeros(n_guides, dtype=bool),
        "log_lik": np.full(n_guides, np.nan),
        "pi": np.full(n_guides, np.nan),
        "lambda": np.full(n_guides, np.nan),
    }
    pi_starts = np.asarray(pi_starts, dtype=np.float64)
    lambda_starts = np.asarray(lambda_starts, dtype=np.float64)
    p = C.shape[1]
    outer = (C[:, :, None] * C[:, None, :]).reshape(n_cells, p * p)
    block = max(1, _BLOCK_ENTRIES // max(1, n_cells * (1 + pi_starts.size)))
    for lo in range(0, on_mixture.size, block):
        cols = on_mixture[lo : lo + block]
        sub = Y[:, cols]
        sub.sort_indices()
        em = _mixture_em(C, outer, sub, backup_threshold, pi_starts, lambda_starts)
        seg = np.repeat(np.arange(cols.size), np.diff(sub.indptr))
        degenerate = em["converged"] & (em["t_zero"] >= probability_threshold)
        good = em["converged"] & ~degenerate
        reason[cols[~em["converged"]]] = "em"
        reason[cols[degenerate]] = "degenerate"
        for name in out:
            out[name][cols] = em[name]
        # entries of the gRNAs kept on the mixture: assigned where the posterior passes
        positions = (
            np.concatenate([np.arange(Y.indptr[c], Y.indptr[c + 1]) for c in cols])
            if cols.size
            else np.zeros(0, dtype=np.int64)
        )
        keep[positions] = good[seg] & (em["t"] >= probability_threshold)
    backup = reason != ""
    entry_col = np.repeat(np.arange(n_guides), n_nonzero)
    keep |= backup[entry_col] & (Y.data >= backup_threshold)
    assigned = sp.csc_matrix(
        (np.ones(int(keep.sum()), dtype=np.int8), Y.indices[keep], _kept_indptr(Y, keep)),
        shape=Y.shape,
    ).tocsr()
    assigned.sort_indices()
    fits = pd.DataFrame(
        {
            "n_nonzero": n_nonzero.astype(np.int64),
            "rule": np.where(backup, "backup", "mixture"),
            "backup_reason": reason.astype(str),
            "converged": out["converged"],
            "log_lik": out["log_lik"],
            "pi": out["pi"],
            "lambda": out["lambda"],
            "n_assigned": np.asarray(assigned.getnnz(axis=0), dtype=np.int64),
        }
    )
    return assigned, fits


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
    ntc = ntc_set(ntc_labels)
    is_ntc = np.array([str(guide2gene[g]).strip().lower() in ntc for g in names], dtype=bool)
    n_all = guides.getnnz(axis=1).astype(np.int64)
    n_non_ntc = guides[:, np.flatnonzero(~is_ntc)].getnnz(axis=1).astype(np.int64)

    if covar_key in adata.obsm:
        covar = covariate_frame(adata, covar_key).copy()
    else:
        covar = pd.DataFrame(index=adata.obs_names.copy())
    covar["non_ntc_guides_per_cell"] = n_non_ntc
    covar["grna_n_nonzero_assign"] = n_all
    covar["log1p_non_ntc_guides_per_cell"] = np.log1p(n_non_ntc.astype(np.float64))
    covar["log1p_grna_n_nonzero_assign"] = np.log1p(n_all.astype(np.float64))
    adata.obsm[covar_key] = covar


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
        raise missing_key_error(
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
        check_aligned(obj.index, adata.obs_names, what)
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
        raise missing_key_error(
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
