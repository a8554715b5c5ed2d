"""OLS t statistic of the treatment in ``y ~ x + C``, exact for every resample."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from sklcrt.statistics._base import BaseStatistic, take_block

__all__ = ["OLSStatistic"]

# A resample whose part outside the span of the covariates has squared norm below this fraction
# of x^T x is (numerically) collinear with them: its statistic is undefined (NaN).
_COLLINEAR_TOL = 1e-10


class OLSStatistic(BaseStatistic):
    """t statistic of the treatment ``x`` in the linear model ``y ~ x + C``.

    The residual ``ỹ = y - Q Qᵀ y`` of every response on the covariates (``Q`` an orthonormal
    basis of ``[1, C]``) is computed once in :meth:`fit`. For a treatment vector ``x``,
    ``s = xᵀỹ`` and ``d = xᵀx - ‖Qᵀx‖²`` give the exact least-squares fit of ``y ~ x + C``:

    - ``beta = s / d``,
    - ``RSS = ‖ỹ‖² - s² / d`` and ``sigma² = RSS / (n_cells - rank - 1)``,
    - ``t = beta / sqrt(sigma² / d)``.

    So every resample costs one sparse gather of ``ỹ`` over its treated cells, and ``d`` one
    gather of ``Q`` shared by all responses.

    Parameters
    ----------
    block_size : int or None, default=None
        Responses per sparse @ dense product. ``None`` gathers straight from the stored
        residuals of all responses (no copy) when ``columns`` selects at least half of them,
        and otherwise picks the block from a memory budget.

    Attributes
    ----------
    n_cells_ : int
        Number of cells.
    n_responses_ : int
        Number of responses.
    basis_ : ndarray of shape (n_cells, rank_)
        Orthonormal basis of ``[1, C]``.
    rank_ : int
        Rank of ``[1, C]``.
    residuals_ : ndarray of shape (n_cells, n_responses)
        ``ỹ``, C-contiguous float64 (rows stream during the gather).
    rss_null_ : ndarray of shape (n_responses,)
        ``‖ỹ‖²``, the residual sum of squares of the null model.
    df_resid_ : int
        Residual degrees of freedom of ``y ~ x + C``: ``n_cells - rank_ - 1``.

    See Also
    --------
    NBScoreStatistic : NB GLM score statistic for raw counts.

    Notes
    -----
    The effect is ``beta`` (in the units of ``y``, e.g. centred log-ratio usage) and
    ``effect_se`` its usual OLS standard error ``sqrt(sigma² / d)``. A treatment vector lying in
    the span of the covariates gets NaN.

    Examples
    --------
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> from sklcrt.statistics import OLSStatistic
    >>> rng = np.random.default_rng(0)
    >>> C = rng.normal(size=(200, 2))
    >>> Y = rng.normal(size=(200, 3))
    >>> x = np.zeros(200)
    >>> x[:20] = 1
    >>> stat = OLSStatistic().fit(Y, C)
    >>> stat.observed(x)["statistic"].shape
    (3,)
    >>> R = sp.csr_matrix(np.stack([rng.permutation(x) for _ in range(5)]))
    >>> stat.evaluate(R).shape
    (5, 3)
    """

    def __init__(self, block_size=None):
        super().__init__(block_size=block_size)

    def _fit(self, Y, Q):
        if self._fit_rows is not None:
            raise NotImplementedError(
                "OLSStatistic does not support fit_cells yet (the null model is fitted on all "
                "cells); pass fit_cells=None, or use NBScoreStatistic for counts."
            )
        n_cells, G = Y.shape
        # coef = Qᵀ Y in one pass, then ỹ = Y - Q coef a chunk of contiguous rows at a time.
        if sp.issparse(Y):
            Y = Y.tocsr()
            coef = np.asarray((Y.T @ Q).T)
        else:
            coef = Q.T @ Y
        resid = np.empty((n_cells, G), dtype=np.float64)  # C-contiguous
        step = max(1, (8 * 2**20) // (8 * G))
        for start in range(0, n_cells, step):
            rows = slice(start, min(n_cells, start + step))
            Yr = Y[rows].toarray() if sp.issparse(Y) else Y[rows]
            np.subtract(Yr, Q[rows] @ coef, out=resid[rows])
        self.residuals_ = resid
        self.rss_null_ = np.einsum("ij,ij->j", resid, resid)
        self.df_resid_ = int(n_cells - Q.shape[1] - 1)

    def _stored_pieces(self):
        return self.residuals_

    def _pieces(self, cells, block, scratch):
        if cells is None:
            return np.take(self.residuals_, block, axis=1)
        return take_block(self.residuals_, cells, block)

    def _score_pieces(self, cols, cells=None):
        """``ỹ``: ``xᵀỹ = β(x) d(x)``, the numerator of β and of the t statistic."""
        if cells is None:
            return np.take(self.residuals_, cols, axis=1)
        return take_block(self.residuals_, cells, cols)

    def _prepare(self, chunk):
        """``d = xᵀx - ‖Qᵀx‖²`` of every resample (shared by all responses); NaN if collinear."""
        Q = self.basis_ if chunk.cells is None else self.basis_[chunk.cells]
        Qx = np.asarray(chunk.csc @ Q)
        xtx = chunk.n_in_row
        d = xtx - np.einsum("ij,ij->i", Qx, Qx)
        d[~(d > _COLLINEAR_TOL * np.maximum(xtx, 1.0))] = np.nan
        return d

    def _finish(self, sums, d, block):
        return self._t_from_sums(sums, d[:, None], self.rss_null_[block])

    def _t_from_sums(self, s, d, rss_null):
        with np.errstate(invalid="ignore", divide="ignore"):
            rss = np.maximum(rss_null - s * s / d, 0.0)
            sigma2 = rss / self.df_resid_
            return s / np.sqrt(sigma2 * d)

    def _effects(self, x, cols):
        xf = x.astype(np.float64)
        Qx = self.basis_.T @ xf
        xtx = float(xf.sum())
        d = xtx - float(Qx @ Qx)
        if not d > _COLLINEAR_TOL * max(xtx, 1.0):
            nan = np.full(cols.size, np.nan)
            return nan, nan.copy()
        s = take_block(self.residuals_, np.flatnonzero(x), cols).sum(axis=0)
        beta = s / d
        with np.errstate(invalid="ignore", divide="ignore"):
            rss = np.maximum(self.rss_null_[cols] - s * s / d, 0.0)
            se = np.sqrt(rss / self.df_resid_ / d)
        return beta, se
