"""The statistic protocol: fit a null model once, evaluate it on many treatment vectors at once.

A statistic is fitted on the responses ``Y`` (cells x responses) and the encoded covariates ``C``.
Every later call reuses that null model: :meth:`BaseStatistic.evaluate` takes all ``B`` resamples
of a unit as one sparse 0/1 matrix ``R`` (``B`` x cells) and returns the ``B`` x responses test
statistics from one sparse @ dense product per block of responses, and
:meth:`BaseStatistic.observed` reports the statistic, effect and standard error for the observed
treatment.

The gather kernel is ``R.tocsc() @ pieces``: scipy's compressed-column product walks the cells in
order, reads each cell's row of ``pieces`` once (a sequential stream through memory) and adds it
to the few resample rows that contain the cell, so the ``B`` x block output stays in cache. This is
about three times faster than the row-wise ``csr @ dense`` product, whose reads jump through
``pieces`` once per treated cell of every resample.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from sklcrt._binary import binary_tocsc
from sklcrt._fingerprint import content_fingerprint
from sklcrt._threads import single_threaded_blas
from sklcrt._validation import check_binary_treatment, check_has_both_arms, check_same_length

__all__ = ["BaseStatistic"]

# Bytes of one block's dense pieces (cells x responses x stored values per response) when
# ``block_size=None`` picks the block size.
_BLOCK_BYTES = 64 * 2**20
# Bytes of one resample chunk's output (resamples x block width): small enough to stay in cache
# while the cells stream past.
_OUTPUT_BYTES = 4 * 2**20
# Resample sets touching fewer than this fraction of the cells get their pieces built (or copied)
# for the touched cells only.
_COMPACT_FRACTION = 0.5
# A selection of at least this fraction of the responses is gathered from the stored pieces of
# all responses (no copy) and subset afterwards.
_FULL_FRACTION = 0.5
# Pieces up to this size are gathered from the CSR resamples (they stay in cache, so the
# row-wise product's scattered reads are cheap and the CSR -> CSC conversion is saved).
_CACHED_PIECES_BYTES = 1 * 2**20


class _Chunk:
    """A run of resamples, converted for the gather.

    Attributes
    ----------
    rows : slice
        The resamples (rows of ``R``) in this chunk.
    csr, csc : scipy.sparse matrices of shape (n_in_chunk, n_cells or len(cells))
        The chunk's resamples (each converted from the other on first use); their columns are
        ``cells`` when the evaluation is restricted to the touched cells.
    n_in_row : ndarray of shape (n_in_chunk,)
        Treated cells per resample (``xᵀx``).
    cells : ndarray of int or None
        The cells the columns stand for (None: all cells).
    """

    __slots__ = ("rows", "_csr", "_csc", "_n_in_row", "cells", "plan")

    def __init__(self, rows, csr, cells, plan=None, csc=None):
        self.rows = rows
        self._csr = csr
        self._csc = csc
        self._n_in_row = None
        self.cells = cells
        self.plan = plan

    @property
    def n_resamples(self) -> int:
        """Resamples in the chunk."""
        return (self._csr if self._csr is not None else self._csc).shape[0]

    @property
    def n_in_row(self) -> np.ndarray:
        """Treated cells per resample (computed on first use)."""
        if self._n_in_row is None:
            if self._csr is not None:
                counts = np.diff(self._csr.indptr)
            else:
                counts = np.bincount(self._csc.indices, minlength=self._csc.shape[0])
            self._n_in_row = counts.astype(np.float64)
        return self._n_in_row

    @property
    def csr(self):
        """The chunk as canonical CSR (converted on first use)."""
        if self._csr is None:
            self._csr = self._csc.tocsr()
            self._csr.has_sorted_indices = True
        return self._csr

    @property
    def csc(self):
        """The chunk as CSC (converted on first use)."""
        if self._csc is None:
            self._csc = binary_tocsc(self._csr)
        return self._csc

    def gather(self, pieces: np.ndarray) -> np.ndarray:
        """``R_chunk @ pieces`` with the kernel that suits the size of ``pieces``.

        Pieces that fit in cache are gathered row by row from the CSR matrix (no conversion);
        larger ones, or any held as CSC only, column by column from the CSC matrix, which
        streams through them. Both add each output element's terms in increasing cell order
        (the indices are sorted), so the sums are the same.
        """
        small = pieces.shape[0] * pieces.shape[1] * pieces.itemsize <= _CACHED_PIECES_BYTES
        if small and self._csr is not None:
            return np.asarray(self._csr @ pieces)
        return np.asarray(self.csc @ pieces)


def _check_resamples(R, n_cells: int, *, name: str = "R"):
    """Validate a (B, n_cells) 0/1 resample matrix; return it as canonical float64 CSR (or CSC,
    when given as CSC: the gather reads it cell by cell)."""
    if sp.issparse(R):
        if type(R) not in (sp.csr_matrix, sp.csc_matrix):  # (re-wrapping drops the flags)
            R = sp.csc_matrix(R) if R.format == "csc" else sp.csr_matrix(R)
    else:
        arr = np.asarray(R)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.dtype.kind not in "biuf":
            raise ValueError(
                f"{name} must be a 2-D (n_resamples, n_cells) 0/1 matrix, got shape {arr.shape} "
                f"and dtype {arr.dtype}."
            )
        R = sp.csr_matrix(arr.astype(np.float64, copy=False))
    if R.shape[1] != n_cells:
        raise ValueError(
            f"{name} must have one column per cell: expected shape (n_resamples, {n_cells}), got "
            f"{R.shape}. Sample the resamples from the treatment vector of the fitted cells."
        )
    if not R.has_canonical_format:
        R = R.copy()
        R.sum_duplicates()
    if R.dtype != np.float64:
        R = R.astype(np.float64)
    data = R.data
    if data.size and not np.all(data == 1.0):
        if not np.all((data == 0.0) | (data == 1.0)):
            raise ValueError(
                f"{name} must hold 0/1 treatment indicators; found values other than 0 and 1."
            )
        R = R.copy()
        R.eliminate_zeros()
    return R


def _check_covariates(C, n_cells: int | None) -> np.ndarray:
    """Return ``C`` as a finite float64 (n_cells, p) array (p may be 0 when ``C`` is None)."""
    if C is None:
        if n_cells is None:
            raise ValueError("C is None and the number of cells is unknown.")
        return np.empty((n_cells, 0))
    if sp.issparse(C):
        C = C.toarray()
    if hasattr(C, "to_numpy"):
        C = C.to_numpy()
    arr = np.asarray(C)
    if arr.dtype.kind not in "biuf":
        raise ValueError(
            f"C must be numeric, got dtype {arr.dtype}; encode the covariates first "
            "(sklcrt.preprocessing.encode_covariates)."
        )
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"C must be 2-D (n_cells, n_covariates), got shape {arr.shape}.")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        n_bad = int(np.sum(~np.isfinite(arr)))
        raise ValueError(
            f"C contains {n_bad} NaN or infinite value(s); remove or fill them first "
            "(sklcrt never imputes)."
        )
    return arr


def _check_responses(Y, *, counts: bool):
    """Return ``Y`` as a float64 2-D dense array or CSC matrix, checking finiteness (and counts)."""
    if sp.issparse(Y):
        Y = sp.csc_matrix(Y, dtype=np.float64)
        if not Y.has_canonical_format:
            Y = Y.copy()
            Y.sum_duplicates()
        values = Y.data
    else:
        if hasattr(Y, "to_numpy"):
            Y = Y.to_numpy()
        Y = np.asarray(Y)
        if Y.dtype.kind not in "biuf":
            raise ValueError(f"Y must be numeric, got dtype {Y.dtype}.")
        if Y.ndim == 1:
            Y = Y[:, None]
        Y = np.asarray(Y, dtype=np.float64)
        values = Y
    if Y.ndim != 2:
        raise ValueError(f"Y must be 2-D (n_cells, n_responses), got shape {Y.shape}.")
    if Y.shape[1] == 0:
        raise ValueError("Y has no responses (0 columns); pass at least one response.")
    if not np.all(np.isfinite(values)):
        n_bad = int(np.sum(~np.isfinite(values)))
        raise ValueError(
            f"Y contains {n_bad} NaN or infinite value(s); remove or fill them first "
            "(sklcrt never imputes)."
        )
    if counts and values.size and values.min() < 0:
        n_bad = int(np.sum(values < 0))
        raise ValueError(
            f"Y must hold non-negative counts for the count statistic, found {n_bad} negative "
            "value(s); pass raw UMI counts (or use OLSStatistic for transformed responses)."
        )
    return Y


def _orthonormal_basis(C: np.ndarray) -> np.ndarray:
    """Orthonormal basis Q (n_cells, rank) of the span of ``[1, C]``.

    Columns are scaled to unit norm before a thin SVD, and directions with singular values below
    ``max(shape) * eps * largest`` are dropped, so an intercept already in ``C``, duplicated or
    collinear columns (e.g. a full one-hot encoding) and constant columns are handled.
    """
    n_cells = C.shape[0]
    A = np.column_stack([np.ones(n_cells), C])
    norms = np.sqrt(np.einsum("ij,ij->j", A, A))
    A = A[:, norms > 0] / norms[norms > 0]
    U, s, _ = np.linalg.svd(A, full_matrices=False)
    tol = s[0] * max(A.shape) * np.finfo(np.float64).eps
    rank = int(np.count_nonzero(s > tol))
    return np.ascontiguousarray(U[:, :rank])


def cells_mask(rows: np.ndarray, n_cells: int) -> np.ndarray:
    mask = np.zeros(n_cells, dtype=bool)
    mask[rows] = True
    return mask


def check_fit_cells(fit_cells, n_cells: int) -> np.ndarray | None:
    """``fit_cells`` as increasing row indices, or None for all cells (or no mask)."""
    if fit_cells is None:
        return None
    if sp.issparse(fit_cells):
        fit_cells = fit_cells.toarray()
    if hasattr(fit_cells, "to_numpy"):
        fit_cells = fit_cells.to_numpy()
    mask = np.asarray(fit_cells)
    if mask.dtype != bool:
        if mask.dtype.kind in "biuf" and mask.size and np.all((mask == 0) | (mask == 1)):
            mask = mask.astype(bool)
        else:
            raise ValueError(
                "fit_cells must be a boolean mask over the cells (True: the null model is fitted "
                f"on the cell), got dtype {mask.dtype}."
            )
    if mask.ndim != 1 or mask.size != n_cells:
        raise ValueError(
            f"fit_cells must be a boolean mask with one entry per cell, shape ({n_cells},); got "
            f"shape {mask.shape}."
        )
    if mask.all():
        return None  # all cells: exactly the plain fit
    return np.flatnonzero(mask)


def check_rank_on(Q: np.ndarray, rows: np.ndarray) -> None:
    """Refuse fit cells on which the covariates are not estimable (rank below the basis')."""
    sub = Q[rows]
    s = np.linalg.svd(sub, compute_uv=False)
    tol = max(sub.shape) * np.finfo(np.float64).eps * (s[0] if s.size else 0.0)
    rank = int(np.count_nonzero(s > tol * 10))
    if rank < Q.shape[1]:
        raise ValueError(
            f"the covariates have rank {Q.shape[1]} on all cells but only {rank} on the "
            f"{rows.size} fit cells (e.g. a batch or level with no fit cell), so the null model "
            "cannot predict the other cells; drop those covariate columns or cells, or fit on "
            "all cells (fit_cells=None)."
        )


def take_block(values: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``values[np.ix_(rows, cols)]`` of a C-contiguous 2-D array, by the faster of two copies.

    Few columns: element by element (``np.ix_``), which touches only the selected entries.
    Many: the rows first (contiguous runs), then the columns; when ``cols`` is every column in
    order, the row copy is the answer. Either way the values are the same.
    """
    if 3 * cols.size <= values.shape[1]:
        return values[np.ix_(rows, cols)]
    sub = np.take(values, rows, axis=0)
    if cols.size == values.shape[1] and np.array_equal(cols, np.arange(cols.size)):
        return sub
    return np.take(sub, cols, axis=1)


def dense_block(Y, block, rows=None) -> np.ndarray:
    """Dense float64 (n_rows, len(block)) slice of a dense array or CSC matrix."""
    if sp.issparse(Y):
        sub = Y[:, block]
        if rows is not None:
            sub = sub[rows]
        return sub.toarray()
    if rows is None:
        return np.ascontiguousarray(Y[:, block])
    return Y[np.ix_(rows, block)]


class BaseStatistic(BaseEstimator):
    """Base class of the test statistics: a null model fitted once, evaluated on many resamples.

    Subclasses implement the null fit (``_fit``), the dense per-cell pieces of a block of
    responses (``_pieces``), their sums over each resample's treated cells (``_gather``, by
    default ``R @ pieces``), the statistic from those sums (``_finish``, with per-resample terms
    from ``_prepare``) and the observed effect (``_effects``). This class validates inputs, builds
    the covariate basis, and schedules the gather: responses in blocks, resamples in chunks
    whose output stays in cache, cells restricted to the touched ones when that is cheaper.

    Parameters
    ----------
    block_size : int or None, default=None
        Responses evaluated per sparse @ dense product. ``None`` picks it from a memory budget
        (about 64 MB of dense pieces per block), and gathers from the stored pieces without a
        copy where the statistic keeps them for all responses.

    Attributes
    ----------
    n_cells_ : int
        Number of cells (the fitted model is evaluated on every cell).
    n_responses_ : int
        Number of responses ``G``.
    basis_ : ndarray of shape (n_cells, rank_)
        Orthonormal basis of ``[1, C]``.
    rank_ : int
        Rank of ``[1, C]`` (intercept included).
    fit_cells_ : ndarray of bool of shape (n_cells,) or None
        The cells the null model was fitted on (``fit(fit_cells=...)``); None: all cells.
    n_fit_cells_ : int
        Number of cells the null model was fitted on.

    Notes
    -----
    The statistic is signed like the effect: larger means a more positive effect of the
    treatment.
    """

    _parameter_constraints: dict = {
        "block_size": [Interval(Integral, 1, None, closed="left"), None],
    }

    # Set by subclasses: whether Y must hold non-negative counts.
    _counts_only = False

    def __init__(self, block_size=None):
        self.block_size = block_size

    # ---------------------------------------------------------------- public protocol
    def fit(self, Y, C=None, *, fit_cells=None):
        """Fit the null model of every response on the covariates.

        Parameters
        ----------
        Y : array-like or sparse matrix of shape (n_cells, n_responses)
            Responses; sparse input is densified one block at a time.
        C : array-like of shape (n_cells, n_covariates), default=None
            Encoded covariates. An intercept is always added and collinear columns are dropped,
            so ``C`` may or may not contain an intercept column. ``None`` means intercept only.
        fit_cells : array-like of bool of shape (n_cells,), default=None
            The cells the null model is fitted on (e.g. SCEPTRE's low-MOI control group, the
            cells that carry only non-targeting guides). The fitted model is then evaluated on
            every cell: treatment vectors may treat cells inside or outside the fit cells (see
            the subclass's Notes for how the statistic accounts for them). ``None`` (or a mask
            of every cell) fits on all cells, exactly as without the argument.

        Returns
        -------
        self : BaseStatistic
            The fitted statistic.
        """
        self._validate_params()
        Y = _check_responses(Y, counts=self._counts_only)
        C = _check_covariates(C, Y.shape[0])
        # What the null model was fitted on, so it is refused on other data.
        self.responses_fingerprint_ = content_fingerprint(Y)
        self.covariates_fingerprint_ = content_fingerprint(C)
        check_same_length(Y=Y, C=C)
        rows = check_fit_cells(fit_cells, Y.shape[0])
        Q = _orthonormal_basis(C)
        n_fit = Y.shape[0] if rows is None else rows.size
        if n_fit <= Q.shape[1] + 1:
            where = "" if rows is None else " fit"
            raise ValueError(
                f"Y has {n_fit}{where} cells but the covariates have rank {Q.shape[1]} (with the "
                "intercept); a test needs at least rank + 2 cells."
            )
        if rows is not None:
            check_rank_on(Q, rows)
        self.n_cells_ = int(Y.shape[0])
        self.n_responses_ = int(Y.shape[1])
        self.basis_ = Q
        self.rank_ = int(Q.shape[1])
        self.fit_cells_ = None if rows is None else cells_mask(rows, Y.shape[0])
        self.n_fit_cells_ = int(n_fit)
        self._fit_rows = rows
        self._fit(Y, Q)
        return self

    def evaluate(self, R, columns=None) -> np.ndarray:
        """Test statistic of every resample and selected response.

        Parameters
        ----------
        R : sparse matrix of shape (n_resamples, n_cells)
            Resampled treatment vectors, one 0/1 row per resample (CSR as the samplers return
            it, or CSC, which the gather reads without a conversion; other sparse formats and
            dense arrays are converted).
        columns : array-like of int or bool of shape (n_responses,), default=None
            Responses to evaluate (indices into the fitted responses, or a boolean mask);
            None means all.

        Returns
        -------
        ndarray of shape (n_resamples, n_selected)
            Statistics; NaN where the statistic is undefined (e.g. a resample lying in the span
            of the covariates, or a response with no counts).
        """
        return self._evaluate_blocks(R, columns, None)

    def _evaluate_blocks(self, R, columns, memo: dict | None) -> np.ndarray:
        """:meth:`evaluate` for one of several blocks of resamples of the same responses.

        ``memo`` (a dict, empty for the first block, then passed again unchanged) keeps the
        pieces of all cells between the calls when one block of responses holds them all, so
        they are built once rather than for every block's touched cells; ``None`` (a single
        call) builds the pieces of the touched cells only. The statistics are the same either
        way: pieces of all cells equal those of a few cells row for row, and both plans add the
        same products in the same order.
        """
        check_is_fitted(self, "n_responses_")
        cols = self._check_columns(columns)
        R = _check_resamples(R, self.n_cells_)
        out = np.empty((R.shape[0], cols.size))
        if cols.size == 0 or R.shape[0] == 0:
            return out
        with single_threaded_blas():
            return self._evaluate(R, cols, out, memo)

    def _evaluate(self, R, cols, out, memo=None):
        """Schedule the gather: blocks of responses x chunks of resamples, into ``out``."""
        G = self.n_responses_
        n_cells = self.n_cells_
        if R.format == "csr" and self._chunk_rows(G) >= R.shape[0]:
            # Every block of responses (at most G wide) gathers all resamples in one chunk, from
            # the CSC form: convert now, and the touched cells are its nonempty columns (no
            # scatter over the entries to find them). Its values are 1 (checked): only the pattern
            # is converted.
            R = binary_tocsc(R)
        if memo is not None:
            cells = None  # pieces of all cells, to serve every block of resamples
        elif R.format == "csc":
            touched = np.diff(R.indptr) > 0
        else:
            touched = np.zeros(n_cells, dtype=bool)
            touched[R.indices] = True
        if memo is None:
            n_touched = int(np.count_nonzero(touched))
            cells = np.flatnonzero(touched) if n_touched < _COMPACT_FRACTION * n_cells else None

        # Work on the distinct selected responses in increasing order (cheaper column copies);
        # gather from the stored pieces of all responses without a copy (then pick the
        # selected ones) when they exist and the selection covers most of them.
        targets, inverse = np.unique(cols, return_inverse=True)
        stored = None
        if cells is None and self.block_size is None and targets.size >= _FULL_FRACTION * G:
            stored = self._stored_pieces()  # may build them (once): ask only when they serve
        if stored is not None:
            targets = np.arange(G)
            inverse = cols

        n_rows = n_cells if cells is None else cells.size
        if memo is not None and "plan" in memo:
            plan, per_response = memo["plan"]  # the plan of the memo's pieces
        else:
            plan, per_response = self._plan(n_rows, R.nnz, targets.size, stored is not None)
        if stored is not None:
            k = G
        elif self.block_size is not None:
            k = int(self.block_size)
        else:
            k = max(1, _BLOCK_BYTES // (n_rows * per_response * 8))
        k = min(k, targets.size)
        chunks = self._chunks(R, cells, self._chunk_rows(k), plan)
        if k < targets.size:
            # Several blocks reuse the prepared chunks; a single block prepares them lazily, so
            # only one chunk's per-resample terms are alive at a time.
            chunks = list(chunks)

        identity = targets.size == cols.size and np.array_equal(targets, cols)
        dest = out if identity else np.empty((R.shape[0], targets.size))
        scratch: dict = {"plan": plan}
        reuse = memo is not None and stored is None and k >= targets.size
        for start in range(0, targets.size, k):
            block = targets[start : start + k]
            if stored is not None:
                pieces = stored
            elif reuse and "pieces" in memo:
                pieces = memo["pieces"]
            else:
                pieces = self._pieces(cells, block, scratch)
                if reuse:
                    memo["plan"], memo["pieces"] = (plan, per_response), pieces
            for chunk, shared in chunks:
                sums = self._gather(chunk, shared, pieces)
                dest[chunk.rows, start : start + block.size] = self._finish(sums, shared, block)
        if not identity:
            np.take(dest, inverse, axis=1, out=out)
        return out

    def observed(self, x, columns=None) -> dict:
        """Statistic, effect and standard error for the observed treatment.

        Parameters
        ----------
        x : array-like of shape (n_cells,)
            Observed 0/1 treatment vector.
        columns : array-like of int or bool, default=None
            Responses to report (as in :meth:`evaluate`); None means all.

        Returns
        -------
        dict
            ``statistic``, ``effect``, ``effect_se`` (ndarrays of shape (n_selected,)) and
            ``n_treated`` (int).
        """
        check_is_fitted(self, "n_responses_")
        x = check_binary_treatment(x, "x")
        if x.size != self.n_cells_:
            raise ValueError(
                f"x has {x.size} cells but the statistic was fitted on {self.n_cells_}; pass the "
                "treatment of the fitted cells."
            )
        check_has_both_arms(x, "x")
        cols = self._check_columns(columns)
        statistic = self.evaluate(sp.csr_matrix(x.astype(np.float64)[None, :]), cols)[0]
        with single_threaded_blas():
            effect, effect_se = self._effects(x, cols)
        return {
            "statistic": statistic,
            "effect": effect,
            "effect_se": effect_se,
            "n_treated": int(np.count_nonzero(x)),
        }

    def score_pieces(self, columns=None, *, cells=None) -> np.ndarray:
        """Per-cell pieces ``a`` of the score sum: ``x @ a`` is the statistic's numerator.

        For any treatment ``x``, ``S(x) = Σ_i x_i a_i`` is the part of the statistic that is
        linear in ``x`` (the numerator before the ``x``-dependent standardisation), signed like
        the effect. Its null distribution under the CRT or a stratified permutation has a
        closed-form cumulant generating function, which
        :func:`sklcrt.saddlepoint.saddlepoint_pvalues` uses.

        Parameters
        ----------
        columns : array-like of int or bool, default=None
            Responses (as in :meth:`evaluate`); None means all.
        cells : array-like of int, default=None
            Rows (cell indices in ``[0, n_cells)``) to return, in this order; None means all.
            The pieces of these rows only are built, e.g. the cells whose treatment can change
            under the null (the others add a constant to ``S``).

        Returns
        -------
        ndarray of shape (n_cells or len(cells), n_selected)
            Dense float64 pieces; NaN for responses whose statistic is undefined.
        """
        check_is_fitted(self, "n_responses_")
        if cells is not None:
            cells = np.asarray(cells)
            if cells.ndim != 1 or (cells.size and cells.dtype.kind not in "iu"):
                raise ValueError(
                    f"cells must be a 1-D array of cell indices, got dtype {cells.dtype} and "
                    f"shape {cells.shape}."
                )
            cells = cells.astype(np.intp, copy=False)
            if cells.size and (cells.min() < 0 or cells.max() >= self.n_cells_):
                raise ValueError(f"cells must be indices in [0, {self.n_cells_}).")
        return self._score_pieces(self._check_columns(columns), cells)

    def _score_pieces(self, cols: np.ndarray, cells=None) -> np.ndarray:
        raise NotImplementedError(
            f"{type(self).__name__} has no linear score pieces (no saddlepoint p-values)."
        )

    # ---------------------------------------------------------------- helpers
    def _check_columns(self, columns) -> np.ndarray:
        G = self.n_responses_
        if columns is None:
            return np.arange(G)
        cols = np.asarray(columns)
        if cols.dtype == bool:
            if cols.shape != (G,):
                raise ValueError(
                    f"columns as a boolean mask must have shape ({G},), got {cols.shape}."
                )
            return np.flatnonzero(cols)
        if cols.ndim != 1 or (cols.size and cols.dtype.kind not in "iu"):
            raise ValueError(
                f"columns must be a 1-D array of response indices in [0, {G}), got dtype "
                f"{cols.dtype} and shape {cols.shape}."
            )
        cols = cols.astype(np.intp, copy=False)
        if cols.size and (cols.min() < 0 or cols.max() >= G):
            raise ValueError(
                f"columns must be response indices in [0, {G}); got values from {cols.min()} "
                f"to {cols.max()}."
            )
        return cols

    def _chunk_rows(self, k: int) -> int:
        """Resamples per chunk for a block of ``k`` responses: the output stays in cache."""
        return _OUTPUT_BYTES // (k * self._gathered_per_response * 8)

    def _chunks(self, R: sp.csr_matrix, cells, chunk_rows: int, plan=None):
        """Split the resamples into runs whose gather output stays in cache (a generator)."""
        chunk_rows = max(1, int(chunk_rows))
        if R.format == "csc":
            if chunk_rows >= R.shape[0]:
                # One chunk, gathered as given; the touched cells' columns are the nonempty
                # ones, so restricting to them only drops the empty columns from indptr.
                part = R
                if cells is not None:
                    indptr = np.concatenate((R.indptr[:1], R.indptr[cells + 1]))
                    part = sp.csc_matrix(
                        (R.data, R.indices, indptr), shape=(R.shape[0], cells.size)
                    )
                    part.has_sorted_indices = True
                chunk = _Chunk(slice(0, R.shape[0]), None, cells, plan, csc=part)
                yield chunk, self._prepare(chunk)
                return
            R = R.tocsr()  # runs of rows: cut from CSR (each converted back for the gather)
            R.has_sorted_indices = True
        if cells is not None:
            position = np.empty(self.n_cells_, dtype=R.indices.dtype)
            position[cells] = np.arange(cells.size, dtype=R.indices.dtype)
        for start in range(0, R.shape[0], chunk_rows):
            rows = slice(start, min(R.shape[0], start + chunk_rows))
            part = R if chunk_rows >= R.shape[0] else R[rows]
            if cells is not None:
                part = sp.csr_matrix(
                    (part.data, position[part.indices], part.indptr),
                    shape=(part.shape[0], cells.size),
                )
            chunk = _Chunk(rows, part, cells, plan)
            yield chunk, self._prepare(chunk)

    # ---------------------------------------------------------------- subclass hooks
    # Dense values per cell and response in the pieces, and gathered sums per resample and
    # response (they size the blocks of responses and the chunks of resamples).
    _stored_per_response = 1
    _gathered_per_response = 1

    def _fit(self, Y, Q):  # pragma: no cover - abstract
        raise NotImplementedError

    def _plan(self, n_rows: int, nnz: int, n_targets: int, stored: bool):
        """How one :meth:`evaluate` call gathers, and the dense values per cell and response.

        ``n_rows`` cells, ``nnz`` treated cells over all resamples, ``n_targets`` distinct
        responses, ``stored``: whether the stored pieces of all responses are gathered. The plan
        is passed to :meth:`_prepare` (as ``chunk.plan``) and :meth:`_pieces` (as
        ``scratch["plan"]``).
        """
        return None, self._stored_per_response

    def _stored_pieces(self):
        """Pieces of all responses and cells, (n_cells, n_responses * width), or None."""
        return None

    def _pieces(self, cells, block: np.ndarray, scratch: dict) -> np.ndarray:
        """C-contiguous (n_cells or len(cells), len(block) * width) pieces to gather.

        ``scratch`` is a dict kept for one :meth:`evaluate` call, for buffers reused by blocks.
        """
        raise NotImplementedError  # pragma: no cover - abstract

    def _prepare(self, chunk: _Chunk):
        """Per-resample quantities shared by all responses (e.g. ``Qᵀx``); None by default."""
        return None

    def _gather(self, chunk: _Chunk, shared, pieces):
        """Sums of the pieces over each resample's treated cells: ``R @ pieces``."""
        return chunk.gather(pieces)

    def _finish(self, sums, shared, block: np.ndarray) -> np.ndarray:
        """Statistics (n_in_chunk, len(block)) from the gathered sums of the pieces."""
        raise NotImplementedError  # pragma: no cover - abstract

    def _effects(self, x: np.ndarray, cols: np.ndarray):
        raise NotImplementedError  # pragma: no cover - abstract
