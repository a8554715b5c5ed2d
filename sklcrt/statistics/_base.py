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

from sklcrt._validation import check_binary_treatment, check_has_both_arms, check_same_length

__all__ = ["BaseStatistic"]

# Bytes of one block's dense pieces (cells x responses x values per response) when
# ``block_size=None`` picks the block size.
_BLOCK_BYTES = 256 * 2**20
# Bytes of one block's B x width output; small enough to stay in cache while cells stream past.
_OUTPUT_BYTES = 32 * 2**20
# Resample sets touching fewer than this fraction of the cells get their pieces built (or copied)
# for the touched cells only.
_COMPACT_FRACTION = 0.5


class _Resamples:
    """A validated resample matrix, ready for the gather.

    Attributes
    ----------
    csc : scipy.sparse.csc_matrix of shape (B, n_rows)
        The resamples, restricted to ``rows`` when ``rows`` is not None.
    rows : ndarray of int or None
        The cells the resamples touch (sorted), or None for all cells.
    n_resamples : int
    n_in_row : ndarray of shape (B,)
        Treated cells per resample (``x^T x``).
    """

    __slots__ = ("csc", "rows", "n_resamples", "n_in_row")

    def __init__(self, csc, rows, n_resamples, n_in_row):
        self.csc = csc
        self.rows = rows
        self.n_resamples = n_resamples
        self.n_in_row = n_in_row


def _check_resamples(R, n_cells: int, *, name: str = "R") -> _Resamples:
    """Validate a (B, n_cells) 0/1 resample matrix and convert it for the gather."""
    if sp.issparse(R):
        R = sp.csr_matrix(R)
    else:
        arr = np.asarray(R)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2:
            raise ValueError(
                f"{name} must be a 2-D (n_resamples, n_cells) 0/1 matrix, got shape {arr.shape}."
            )
        R = sp.csr_matrix(arr.astype(np.float64, copy=False))
    if R.ndim != 2 or R.shape[1] != n_cells:
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
    if data.size and not np.all((data == 1.0) | (data == 0.0)):
        raise ValueError(
            f"{name} must hold 0/1 treatment indicators; found values other than 0 and 1."
        )
    if data.size and not np.all(data == 1.0):
        R = R.copy()
        R.eliminate_zeros()
    n_resamples = R.shape[0]
    n_in_row = np.diff(R.indptr).astype(np.float64)
    csc = R.tocsc()
    counts = np.diff(csc.indptr)
    rows = None
    n_touched = int(np.count_nonzero(counts))
    if n_touched < _COMPACT_FRACTION * n_cells:
        rows = np.flatnonzero(counts)
        indptr = np.append(csc.indptr[rows], csc.indptr[-1])
        csc = sp.csc_matrix((csc.data, csc.indices, indptr), shape=(n_resamples, rows.size))
    return _Resamples(csc, rows, n_resamples, n_in_row)


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


def _dense_block(Y, block, rows=None) -> np.ndarray:
    """Dense float64 (n_rows, len(block)) slice of a dense array or CSC matrix."""
    if sp.issparse(Y):
        sub = Y[:, block]
        if rows is not None:
            sub = sub[rows]
        return sub.toarray()
    if rows is None:
        return np.ascontiguousarray(Y[:, block])
    return Y[np.ix_(rows, block)]


def _is_full_range(block: np.ndarray, n: int) -> bool:
    """True when ``block`` is exactly ``0..n-1`` in order."""
    return block.size == n and (n == 0 or (block[0] == 0 and bool(np.all(np.diff(block) == 1))))


class BaseStatistic(BaseEstimator):
    """Base class of the test statistics: a null model fitted once, evaluated on many resamples.

    Subclasses implement ``_fit(Y, Q)``, ``_values_per_response``, ``_prepare(res)``,
    ``_evaluate_block(res, shared, block)`` and ``_effects(x, columns)``; this class validates inputs, builds the covariate basis and
    splits the responses into blocks.

    Parameters
    ----------
    block_size : int or None, default=None
        Responses evaluated per sparse @ dense product. ``None`` picks it from a memory budget
        (about 256 MB of dense pieces per block and a ``B`` x block output that stays in cache).

    Attributes
    ----------
    n_cells_ : int
        Number of cells the null model was fitted on.
    n_responses_ : int
        Number of responses ``G``.
    basis_ : ndarray of shape (n_cells, rank_)
        Orthonormal basis of ``[1, C]``.
    rank_ : int
        Rank of ``[1, C]`` (intercept included).

    Notes
    -----
    The statistic is signed like the effect: larger means a more positive effect of the
    treatment.
    """

    _parameter_constraints: dict = {
        "block_size": [Interval(Integral, 1, None, closed="left"), None],
    }

    # Set by subclasses.
    _counts_only = False

    def __init__(self, block_size=None):
        self.block_size = block_size

    # ---------------------------------------------------------------- public protocol
    def fit(self, Y, C=None):
        """Fit the null model of every response on the covariates.

        Parameters
        ----------
        Y : array-like or sparse matrix of shape (n_cells, n_responses)
            Responses; sparse input is densified one block of responses at a time.
        C : array-like of shape (n_cells, n_covariates), default=None
            Encoded covariates. An intercept is always added and collinear columns are dropped,
            so ``C`` may or may not contain an intercept column. ``None`` means intercept only.

        Returns
        -------
        self : BaseStatistic
            The fitted statistic.
        """
        self._validate_params()
        Y = _check_responses(Y, counts=self._counts_only)
        C = _check_covariates(C, Y.shape[0])
        check_same_length(Y=Y, C=C)
        Q = _orthonormal_basis(C)
        if Y.shape[0] <= Q.shape[1] + 1:
            raise ValueError(
                f"Y has {Y.shape[0]} cells but the covariates have rank {Q.shape[1]} (with the "
                "intercept); a test needs more cells than covariates + 2."
            )
        self.n_cells_ = int(Y.shape[0])
        self.n_responses_ = int(Y.shape[1])
        self.basis_ = Q
        self.rank_ = int(Q.shape[1])
        self._fit(Y, Q)
        return self

    def evaluate(self, R, columns=None) -> np.ndarray:
        """Test statistic of every resample and selected response.

        Parameters
        ----------
        R : sparse matrix of shape (n_resamples, n_cells)
            Resampled treatment vectors, one 0/1 row per resample (CSR as the samplers return
            it; other sparse formats and dense arrays are converted).
        columns : array-like of int or bool of shape (n_responses,), default=None
            Responses to evaluate (indices into the fitted responses, or a boolean mask);
            None means all.

        Returns
        -------
        ndarray of shape (n_resamples, n_selected)
            Statistics; NaN where the statistic is undefined (e.g. a resample lying in the span
            of the covariates, or a response with no counts).
        """
        check_is_fitted(self, "n_responses_")
        cols = self._check_columns(columns)
        res = _check_resamples(R, self.n_cells_)
        out = np.empty((res.n_resamples, cols.size))
        if cols.size == 0:
            return out
        shared = self._prepare(res)
        for start, block in self._blocks(cols, res):
            out[:, start : start + block.size] = self._evaluate_block(res, shared, block)
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
        R = sp.csr_matrix(x.astype(np.float64)[None, :])
        statistic = self.evaluate(R, cols)[0]
        effect, effect_se = self._effects(x, cols)
        return {
            "statistic": statistic,
            "effect": effect,
            "effect_se": effect_se,
            "n_treated": int(np.count_nonzero(x)),
        }

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

    def _block_length(self, n_selected: int, res: _Resamples) -> int:
        if self.block_size is not None:
            return int(self.block_size)
        width = self._values_per_response
        n_rows = self.n_cells_ if res.rows is None else res.rows.size
        by_pieces = _BLOCK_BYTES // max(1, n_rows * width * 8)
        by_output = _OUTPUT_BYTES // max(1, res.n_resamples * width * 8)
        return int(max(1, min(n_selected, by_pieces, by_output)))

    def _blocks(self, cols: np.ndarray, res: _Resamples):
        if cols.size == 0:
            return
        if self.block_size is None and res.rows is None and self._zero_copy(cols):
            # Everything already sits in memory as one contiguous array: no blocking needed.
            yield 0, cols
            return
        k = self._block_length(cols.size, res)
        for start in range(0, cols.size, k):
            yield start, cols[start : start + k]

    def _zero_copy(self, cols: np.ndarray) -> bool:
        """True when all responses can be gathered from stored pieces without a copy."""
        return False

    # ---------------------------------------------------------------- subclass hooks
    _values_per_response = 1

    def _fit(self, Y, Q):  # pragma: no cover - abstract
        raise NotImplementedError

    def _prepare(self, res: _Resamples):
        """Per-resample quantities shared by all responses (e.g. ``Qᵀx``); None by default."""
        return None

    def _evaluate_block(self, res: _Resamples, shared, block: np.ndarray) -> np.ndarray:
        raise NotImplementedError  # pragma: no cover - abstract

    def _effects(self, x: np.ndarray, cols: np.ndarray):
        raise NotImplementedError  # pragma: no cover - abstract
