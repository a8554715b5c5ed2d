"""Negative binomial GLM score statistic with exact covariate adjustment (SCEPTRE's statistic)."""

from __future__ import annotations

import copy
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
from joblib import Parallel, delayed
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from sklcrt._threads import single_threaded_blas
from sklcrt.statistics._base import (
    BaseStatistic,
    cells_mask,
    check_fit_cells,
    check_rank_on,
    dense_block,
    take_block,
)
from sklcrt.statistics._nb_fit import (  # noqa: F401  (_CountTable, _nb_terms: tests)
    _MAX_HALVINGS,
    _CountTable,
    _fit_glm,
    _fit_nb,
    _fit_nb_start,
    _glm_loglik,
    _Gram,
    _linear_predictor,
    _mean,
    _nb_terms,
    _response_rows,
    _solve,
    _whitener,
)

__all__ = ["NBScoreStatistic"]

_LN2 = np.log(2.0)
# Bytes of one dense (responses x cells) array while fitting; a few such arrays are alive.
_FIT_BLOCK_BYTES = 4 * 2**20
# Bytes of the per-cell Gram terms of one block of linearized effect fits (treated cells only).
_EFFECT_BLOCK_BYTES = 16 * 2**20
# Bytes of one run of cells (all responses) while the cached pieces are built.
_CACHE_ROWS_BYTES = 1 * 2**20
_PIECE_ROWS_BYTES = 2**16  # a run of rows of one temporary of _build_pieces
# A resample whose covariate-adjusted information is below this fraction of its raw
# information (sum of weights) lies (numerically) in the span of the covariates: NaN.
_COLLINEAR_TOL = 1e-10
# Bound on the treatment coefficient (natural log scale) in the effect fits: where one arm has
# no counts its maximum-likelihood estimate is infinite; the fit stops at ±20 (about ±28.9 log2).
_GAMMA_MAX = 20.0
# The linearized effect fit is trusted while it moves no control cell's linear predictor by more
# than this (bounded by max_i ‖q_i‖ · ‖δ‖); beyond it the full fit is used for that response.
_LINEARIZED_MAX_SHIFT = 0.25
# Relative step at which the Poisson fit that starts the NB fit stops.
_START_TOL = 1e-3


def check_theta_bounds(bounds) -> tuple[float, float]:
    """``theta_bounds`` as ``(low, high)`` with ``0 < low < high < inf``, or a ValueError."""
    if not (
        len(bounds) == 2
        and all(isinstance(b, Real) for b in bounds)
        and 0 < bounds[0] < bounds[1] < np.inf
    ):
        raise ValueError(
            f"theta_bounds must be (low, high) with 0 < low < high < inf, got {bounds!r}."
        )
    return float(bounds[0]), float(bounds[1])


# ==================================================================== the estimator
class NBScoreStatistic(BaseStatistic):
    """Negative binomial GLM score statistic with exact covariate adjustment.

    The null model ``log E[y] = [1, C] β`` with ``y ~ NB(μ, θ)`` (``Var = μ + μ²/θ``) is fitted
    once per response, vectorised over responses: a Poisson fit and a method-of-moments ``θ``
    start the joint maximum-likelihood fit of ``(β, θ)``, by simultaneous Newton steps in ``β``
    and ``log θ`` with step halving (``θ`` clamped to ``theta_bounds``); each response converges
    on its own, so its fit does not depend on which other responses are fitted with it. For a
    treatment ``x`` the score statistic of adding ``x`` to the model is

    ``z(x) = Σ_{i∈x} a_i / sqrt(Σ_{i∈x} W_i - ‖Σ_{i∈x} D_i‖²)``,

    with ``W_i = μ_i / (1 + μ_i/θ)``, ``a_i = (y_i - μ_i) / (1 + μ_i/θ)`` and ``D_i = W_i M q_i``
    (``q_i`` the row of the orthonormal covariate basis, ``MᵀM = (Qᵀ W Q)⁻¹``): the exact
    covariate-adjusted score test with the expected information. All resamples are evaluated as
    ``R @ [a | W | D]``, block by block of responses.

    Parameters
    ----------
    theta : float or None, default=None
        Fixed NB size ``θ`` for every response; ``None`` estimates it per response.
    theta_bounds : tuple of (float, float), default=(1e-2, 1e3)
        Clamp for the estimated ``θ``; the upper bound is effectively Poisson.
    effect_fit : {"linearized", "full"}, default="linearized"
        How :meth:`observed` fits the model with the treatment added (see Notes). ``"full"``
        refits the NB GLM on all cells; ``"linearized"`` touches only the treated cells.
    max_iter : int, default=50
        Iteration cap of each Newton solve.
    tol : float, default=1e-8
        Convergence tolerance (relative step size) of the solves.
    block_size : int or None, default=None
        Responses per sparse @ dense product; ``None`` picks it from a memory budget.
    cache_bytes : int, default=512 * 2**20
        When the pieces ``[a | W]`` of all responses fit in this many bytes they are built once,
        by the first :meth:`evaluate` call that gathers most responses over most cells, and
        reused by every later call; otherwise (and for evaluations of a few responses or of
        resamples that touch few cells) they are built per block, for the touched cells only.
        The values are the same either way. 0 disables.
    n_jobs : int or None, default=None
        Threads fitting the null model, a block of responses each (joblib's convention: None is
        1, -1 every core). The fit is the same whatever ``n_jobs``.
    progress : bool, default=False
        Show a tqdm progress bar over the null fit's blocks of responses (it appears once the
        fit has run for a second).

    Attributes
    ----------
    n_cells_ : int
        Number of cells.
    n_responses_ : int
        Number of responses.
    basis_ : ndarray of shape (n_cells, rank_)
        Orthonormal basis ``Q`` of ``[1, C]`` (the null model's design).
    rank_ : int
        Rank of ``[1, C]``.
    coef_ : ndarray of shape (n_responses, rank_)
        Null coefficients in the basis ``Q`` (``log μ = Q coef``); NaN for responses with no
        counts.
    theta_ : ndarray of shape (n_responses,)
        NB size per response (estimated or the fixed ``theta``); NaN for responses with no
        counts.
    converged_ : ndarray of shape (n_responses,) of bool
        Whether the null fit converged.
    no_counts_ : ndarray of shape (n_responses,) of bool
        Responses that are zero in every cell; their statistics and effects are NaN.
    null_info_ : ndarray of shape (n_responses, rank_, rank_)
        ``Qᵀ W Q``, the Fisher information of the null coefficients.
    whitener_ : ndarray of shape (n_responses, rank_, rank_)
        ``M`` with ``MᵀM = (Qᵀ W Q)⁻¹``.
    pieces_cached_ : bool
        Whether the pieces of all responses fit in ``cache_bytes``, so that they are kept once
        built (on the first evaluation that gathers most responses over most cells).

    See Also
    --------
    OLSStatistic : exact OLS t statistic for continuous responses.

    Notes
    -----
    The effect reported by :meth:`observed` is the log2 fold change of the treatment in the NB
    GLM ``log μ = Q β + γ x`` with ``θ`` fixed at the null estimate: ``effect = γ / ln 2`` and
    ``effect_se`` its standard error (inverse expected information) on the log2 scale. Both fits
    start from the null fit and run Newton's method with step halving:

    - ``"full"`` is the maximum-likelihood fit on all cells (what ``statsmodels``' GLM gives);
      it costs a pass over all cells per iteration and response.
    - ``"linearized"`` keeps the treated cells' likelihood exact and replaces the control cells'
      by its quadratic expansion around the null fit (their score and information follow from
      the stored null information), so it only touches the treated cells. It differs from the
      full fit by terms of second order in the shift of β, which is of order
      ``n_treated / n_cells``; it is the default because a screen calls :meth:`observed` once
      per unit. Where the shift could move a control cell's linear predictor by more than 0.25
      (so the expansion is not to be trusted), that response gets the full fit instead.

    **Fit cells** (``fit(Y, C, fit_cells=mask)``, e.g. SCEPTRE's low-MOI NT cells): the null
    model is fitted on the fit cells only and predicts every cell from its coefficients and
    ``θ``. A treated cell outside the fit cells has a residual that also carries the fit's own
    estimation error (independent of the cell), so the variance of ``Σ_{i∈x} a_i`` is
    ``Σ_{i∈x} W_i - ‖Σ_{i∈x, in} D_i‖² + ‖Σ_{i∈x, out} D_i‖²`` (first order; no cross term): cells
    inside the fit subtract, as in SCEPTRE's in-sample score test, cells outside add. The effect
    is the log2 fold change of the treated cells against the fit cells (the model with the
    treatment is fitted on the fit cells and the treated cells). SCEPTRE itself refits every
    pair's null model on the unit's cells and the NT cells, and its resamples move the
    treatment among those cells; :meth:`refit` gives exactly that model, warm-started from the
    shared fit, so the resampling test is an exact permutation test of a statistic computed in
    sample, as SCEPTRE's (a statistic fitted on the NT cells alone is centred on the NT cells
    only, so its permutation null is shifted towards a real effect and loses power).

    Where one arm has no counts the maximum-likelihood ``γ`` is infinite; the fits stop at
    ``|γ| = 20`` (about 28.9 in log2) and the standard error there is huge. Responses with no
    counts at all get NaN.

    Examples
    --------
    >>> import numpy as np
    >>> from sklcrt.statistics import NBScoreStatistic
    >>> rng = np.random.default_rng(0)
    >>> C = rng.normal(size=(300, 1))
    >>> Y = rng.poisson(np.exp(1.0 + 0.3 * C), size=(300, 4))
    >>> x = np.zeros(300)
    >>> x[:30] = 1
    >>> stat = NBScoreStatistic().fit(Y, C)
    >>> res = stat.observed(x)
    >>> res["statistic"].shape, res["effect"].shape
    ((4,), (4,))
    """

    _parameter_constraints: dict = {
        **BaseStatistic._parameter_constraints,
        "theta": [Interval(Real, 0, None, closed="neither"), None],
        "theta_bounds": [tuple],
        "effect_fit": [StrOptions({"linearized", "full"})],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="neither")],
        "cache_bytes": [Interval(Integral, 0, None, closed="left")],
        "n_jobs": [Integral, None],
        "progress": ["boolean"],
    }
    _counts_only = True

    def __init__(
        self,
        theta=None,
        *,
        theta_bounds=(1e-2, 1e3),
        effect_fit="linearized",
        max_iter=50,
        tol=1e-8,
        block_size=None,
        cache_bytes=512 * 2**20,
        n_jobs=None,
        progress=False,
    ):
        super().__init__(block_size=block_size)
        self.theta = theta
        self.theta_bounds = theta_bounds
        self.effect_fit = effect_fit
        self.max_iter = max_iter
        self.tol = tol
        self.cache_bytes = cache_bytes
        self.n_jobs = n_jobs
        self.progress = progress

    _stored_per_response = 2  # a and W

    @property
    def _gathered_per_response(self):
        return self._n_sums + 2  # Σa, ΣW and ΣW q (inside and outside the fit cells)

    @property
    def _n_sums(self) -> int:
        """Gathered ``ΣW q`` values per resample and response: r, or 2r with fit cells."""
        r = getattr(self, "rank_", 1)
        return r if getattr(self, "_outside", None) is None else 2 * r

    def _sum_basis(self, cells) -> np.ndarray:
        """The basis rows whose W-weighted sums the statistic needs, (n_rows, _n_sums).

        ``Q`` without fit cells; with them ``[Q * inside, Q * outside]``, so that one gather
        gives ``ΣW q`` over the treated cells inside and outside the fit cells apart.
        """
        Q = self.basis_ if cells is None else self.basis_[cells]
        if self._outside is None:
            return Q
        out = (self._outside if cells is None else self._outside[cells])[:, None]
        return np.hstack([np.where(out, 0.0, Q), np.where(out, Q, 0.0)])

    # ---------------------------------------------------------------- fit
    def _fit(self, Y, Q):
        bounds = check_theta_bounds(self.theta_bounds)
        n_cells, G = Y.shape
        r = Q.shape[1]
        self._Y = Y
        self.coef_ = np.full((G, r), np.nan)
        self.theta_ = np.full(G, np.nan)
        self.converged_ = np.zeros(G, dtype=bool)
        self.null_info_ = np.full((G, r, r), np.nan)
        self.whitener_ = np.full((G, r, r), np.nan)
        # The null model is fitted on the fit cells' rows (all cells by default); the basis Q
        # stays the one of all cells, so the fitted coefficients predict every cell.
        rows = self._fit_rows
        Qf = Q if rows is None else np.ascontiguousarray(Q[rows])
        n_fit = Qf.shape[0]
        Yf = Y if rows is None else Y[rows]
        totals = np.asarray(Yf.sum(axis=0)).ravel()
        self.no_counts_ = totals <= 0
        # Cells outside the fit (None: none); the statistic's variance treats them apart.
        self._outside = None if rows is None else ~self.fit_cells_

        QT = np.ascontiguousarray(Qf.T)
        self._max_leverage = float(np.sqrt(np.max(np.einsum("ij,ij->i", Qf, Qf))))
        step_gram, info_gram = _Gram(Qf, np.float32), _Gram(Qf)
        ones_coef = Q.sum(axis=0)  # Q @ ones_coef = 1, as 1 is in the span of Q
        fitted = np.flatnonzero(~self.no_counts_)
        k = max(1, _FIT_BLOCK_BYTES // (8 * n_fit))

        def fit_block(block):
            table = None
            if sp.issparse(Yf):  # the count table from the sparse columns: no dense pass
                S = Yf[:, block]
                Yb, table = S.T.toarray(), _CountTable.from_columns(S)
            else:
                Yb = _response_rows(Yf, block)
            beta = np.outer(np.log(totals[block] / n_fit), ones_coef)
            beta, theta, conv = self._fit_block(QT, step_gram, Yb, beta, bounds, table)
            mu = _mean(beta @ QT)
            return block, beta, theta, conv, info_gram(mu / (1.0 + mu / theta[:, None]))

        # Each response converges on its own, so blocks fitted in parallel threads give the
        # same fit (numpy releases the GIL in these passes over whole blocks). Threads, whatever
        # joblib backend is configured for the units: the blocks share Y and the design.
        starts = range(0, fitted.size, k)
        blocks = (fitted[start : start + k] for start in starts)
        with single_threaded_blas():
            fits = Parallel(n_jobs=self.n_jobs, backend="threading", return_as="generator")(
                delayed(fit_block)(block) for block in blocks
            )
            if self.progress:
                from tqdm.auto import tqdm

                # Shown only once the fit has run a second (small fits stay quiet).
                fits = tqdm(fits, total=len(starts), desc="NB null fit", unit="block", delay=1.0)
            for block, beta, theta, conv, H in fits:
                self.coef_[block] = beta
                self.theta_[block] = theta
                self.converged_[block] = conv
                self.null_info_[block] = H
                self.whitener_[block] = _whitener(H)

        # The pieces of all responses are built on first use (evaluations of most responses on
        # most cells) and kept: analyses of pairs build small pieces per block instead.
        self.pieces_cached_ = bool(8 * n_cells * G * 2 <= self.cache_bytes)
        self._cache = None
        self._Y_rows = None  # a row-major copy of the counts, made on first use (_treated_counts)

    def refit(self, fit_cells):
        """The same null model refitted on other cells, warm-started from this fit.

        For SCEPTRE's low-MOI test of one unit: with the null model fitted once on the NT cells
        (``fit(Y, C, fit_cells=nt_cells)``), ``refit(treated | nt_cells)`` refits every
        response's coefficients on the unit's cells and the NT cells, as SCEPTRE does for each
        pair, by Newton's method started from the NT-cell fit (a few iterations on those cells
        only), with ``θ`` kept at this fit's estimate. The resamples of the unit then move the
        treatment among cells the null model was fitted on, so its statistic is invariant to how
        the treatment is permuted among them (an exact permutation test), and the effect is the
        log2 fold change against the other fit cells (the NT cells).

        Parameters
        ----------
        fit_cells : array-like of bool of shape (n_cells,)
            The cells of the refit (None or every cell: all cells).

        Returns
        -------
        NBScoreStatistic
            A new fitted statistic sharing the responses and the basis with this one (which is
            left unchanged); ``converged_`` reports the refit.
        """
        check_is_fitted(self, "n_responses_")
        rows = check_fit_cells(fit_cells, self.n_cells_)
        mask = None if rows is None else cells_mask(rows, self.n_cells_)
        current = self.fit_cells_
        if (mask is None and current is None) or (
            mask is not None and current is not None and np.array_equal(mask, current)
        ):
            return self
        Q = self.basis_
        n_fit = self.n_cells_ if rows is None else rows.size
        if n_fit <= self.rank_ + 1:
            raise ValueError(
                f"fit_cells marks {n_fit} cells but the covariates have rank {self.rank_} (with "
                "the intercept); a test needs at least rank + 2 cells."
            )
        if rows is not None:
            check_rank_on(Q, rows)
        new = copy.copy(self)
        new.fit_cells_, new.n_fit_cells_, new._fit_rows = mask, int(n_fit), rows
        new._outside = None if rows is None else ~mask
        Qf = Q if rows is None else np.ascontiguousarray(Q[rows])
        Yf = self._Y if rows is None else self._Y[rows]
        new.no_counts_ = np.asarray(Yf.sum(axis=0)).ravel() <= 0
        new.coef_ = np.full_like(self.coef_, np.nan)
        new.converged_ = np.zeros(self.n_responses_, dtype=bool)
        new.null_info_ = np.full_like(self.null_info_, np.nan)
        new.whitener_ = np.full_like(self.whitener_, np.nan)
        new._max_leverage = float(np.sqrt(np.max(np.einsum("ij,ij->i", Qf, Qf))))
        new._cache = None
        new.theta_ = self.theta_.copy()
        QT = np.ascontiguousarray(Qf.T)
        step_gram, info_gram = _Gram(Qf, np.float32), _Gram(Qf)
        ones_coef = Q.sum(axis=0)
        totals = np.asarray(Yf.sum(axis=0)).ravel()
        fitted = np.flatnonzero(~new.no_counts_)
        k = max(1, _FIT_BLOCK_BYTES // (8 * n_fit))
        with single_threaded_blas():
            for start in range(0, fitted.size, k):
                block = fitted[start : start + k]
                beta = self.coef_[block].copy()
                # Responses without counts on this fit's cells had no fit: start at the mean.
                bad = ~np.isfinite(beta).all(axis=1)
                if bad.any():
                    beta[bad] = np.outer(np.log(totals[block[bad]] / n_fit), ones_coef)
                theta = self.theta_[block]
                theta = np.where(np.isfinite(theta), theta, self.theta_bounds[1])
                beta, conv = _fit_glm(
                    QT,
                    step_gram,
                    _response_rows(Yf, block),
                    beta,
                    theta,
                    max_iter=self.max_iter,
                    tol=self.tol,
                )
                mu = _mean(beta @ QT)
                H = info_gram(mu / (1.0 + mu / theta[:, None]))
                new.coef_[block], new.converged_[block] = beta, conv
                new.theta_[block] = theta
                new.null_info_[block], new.whitener_[block] = H, _whitener(H)
        return new

    def _build_cache(self):
        """``_build_pieces`` of all responses and cells, with small temporaries.

        The linear predictor is computed as in ``_build_pieces`` (so the values are the same),
        into ``W``; the rest is done a run of contiguous cells (rows) at a time, so that every
        elementwise pass streams through memory.
        """
        G = self.n_responses_
        a, W = np.empty((self.n_cells_, G)), np.empty((self.n_cells_, G))
        _linear_predictor(self.basis_, self.coef_, out=W)
        Y = self._Y.tocsr() if sp.issparse(self._Y) else self._Y
        inv_theta = 1.0 / self.theta_
        step = max(1, _CACHE_ROWS_BYTES // (8 * G))
        for start in range(0, self.n_cells_, step):
            rows = slice(start, min(self.n_cells_, start + step))
            mu = _mean(W[rows])
            inv = mu * inv_theta
            inv += 1.0
            np.reciprocal(inv, out=inv)  # 1 / (1 + mu/theta)
            np.multiply(mu, inv, out=W[rows])
            np.subtract(Y[rows].toarray() if sp.issparse(Y) else Y[rows], mu, out=a[rows])
            a[rows] *= inv
        return a, W

    def _fit_block(self, QT, gram, Yb, beta, bounds, table=None):
        kw = {"max_iter": self.max_iter, "tol": self.tol}
        k = Yb.shape[0]
        if self.theta is not None:
            theta = np.full(k, float(self.theta))
            beta, conv = _fit_glm(QT, gram, Yb, beta, theta, **kw)
            return beta, theta, conv
        # The Poisson fit only gives the joint fit a start (means for the moments estimate of
        # theta), so a loose tolerance is enough: the joint fit converges to ``tol`` anyway.
        start = dict(kw, tol=max(self.tol, _START_TOL))
        beta, theta = _fit_nb_start(QT, gram, Yb, beta, bounds, **start)
        table = _CountTable(Yb) if table is None else table
        beta, theta, conv = _fit_nb(QT, gram, Yb, beta, theta, bounds, table, **kw)
        return beta, theta, conv

    # ---------------------------------------------------------------- evaluate
    # The pieces of a block of k responses are two dense (cells x k) arrays, a and W; the
    # statistic needs Σ_{i∈x} a_i, Σ_{i∈x} W_i and Σ_{i∈x} W_i q_i per resample. Two plans:
    #
    # - "direct": the pieces are [a, W, W q_1, ..., W q_r] per cell ((r + 2) k values), built
    #   per block, and one gather gives all sums. Costs (r + 2) values per cell and response.
    # - "stacked": the resample matrix is stacked with copies of itself whose entries are the
    #   cells' basis values ([R; R diag(q_1); ...], built once per chunk of resamples and shared
    #   by all responses), so that one gather of W gives ΣW and ΣWq. Used with the stored pieces
    #   of all responses (no copy), or where building W q for every response would cost more
    #   than stacking the resamples.
    #
    # Both add the same products in the same (cell) order, so they give the same sums.
    def _plan(self, n_rows, nnz, n_targets, stored):
        r = self._n_sums
        if stored or n_rows * n_targets * r > 4 * nnz * (r + 1):
            return "stacked", 2
        return "direct", r + 2

    def _build_pieces(self, cells, block, a=None, W=None, products=None):
        """Dense ``a`` and ``W`` of shape (n_rows, len(block)), cell-major.

        Computed a run of contiguous cells (rows) at a time, small enough to stay in cache, so
        the elementwise passes do not stream through memory; every element is computed the same
        way whatever the runs (``_linear_predictor``'s order per element, ``exp`` of a
        contiguous array). ``products``: ``(Qs, P)`` to also fill ``P[:, j] = W * Qs[:, j]``
        (the direct plan's sums of ``W q``) in the same pass.
        """
        Q = self.basis_ if cells is None else self.basis_[cells]
        n, k = Q.shape[0], block.size
        a = np.empty((n, k)) if a is None else a
        W = np.empty((n, k)) if W is None else W
        coef = self.coef_[block]
        inv_theta = 1.0 / self.theta_[block]
        Y = dense_block(self._Y, block, cells)
        step = min(n, max(16, _PIECE_ROWS_BYTES // (8 * max(k, 1))))
        buf = np.empty((3, step * k))
        for r0 in range(0, n, step):
            r1 = min(n, r0 + step)
            m = (r1 - r0) * k
            mu = buf[0, :m].reshape(r1 - r0, k)
            inv = buf[1, :m].reshape(r1 - r0, k)
            _linear_predictor(Q[r0:r1], coef, out=mu, term=buf[2, :m].reshape(r1 - r0, k))
            _mean(mu, out=mu)
            np.multiply(mu, inv_theta, out=inv)
            inv += 1.0
            np.reciprocal(inv, out=inv)  # 1 / (1 + mu/theta)
            w = W[r0:r1]
            np.multiply(mu, inv, out=w)
            part = a[r0:r1]
            np.subtract(Y[r0:r1], mu, out=part)
            part *= inv
            if products is not None:
                Qs, P = products
                np.multiply(w[:, None, :], Qs[r0:r1, :, None], out=P[r0:r1])
        return a, W

    def _score_pieces(self, cols, cells=None):
        """``a_i = (y_i - μ_i) / (1 + μ_i/θ)``: ``Σ_{i∈x} a_i`` is the numerator of ``z(x)``, the
        score of the treatment coefficient at the null fit (rows ``cells``, or all)."""
        cache = self._stored_pieces()  # built once, then shared by every unit
        if cache is not None:
            if cells is None:
                return np.take(cache[0], cols, axis=1)
            return take_block(cache[0], cells, cols)
        return self._build_pieces(cells, cols)[0]

    def _stored_pieces(self):
        if self._cache is None and self.pieces_cached_:
            self._cache = self._build_cache()
        return self._cache

    def _pieces(self, cells, block, scratch):
        n = self.n_cells_ if cells is None else cells.size
        k = block.size
        if scratch.get("plan") == "direct":
            width = (self._n_sums + 2) * k
            buf = scratch.get("direct")
            if buf is None or buf.size < n * width:
                buf = scratch["direct"] = np.empty(n * width)
            P = buf[: n * width].reshape(n, self._n_sums + 2, k)
            Q = self._sum_basis(cells)
            if self._cache is None:
                self._build_pieces(cells, block, P[:, 0], P[:, 1], (Q, P[:, 2:]))
            else:
                P[:, 0], P[:, 1] = self._cached_pieces(cells, block)
                np.multiply(P[:, 1, None, :], Q[:, :, None], out=P[:, 2:])
            return P.reshape(n, width)
        if self._cache is None:
            size = n * k
            buf = scratch.get("pieces")
            if buf is None or buf.shape[1] < size:
                buf = scratch["pieces"] = np.empty((2, size))
            shape = (n, k)
            return self._build_pieces(
                cells, block, buf[0, :size].reshape(shape), buf[1, :size].reshape(shape)
            )
        return self._cached_pieces(cells, block)

    def _cached_pieces(self, cells, block):
        if cells is None:
            return tuple(np.take(part, block, axis=1) for part in self._cache)
        return tuple(take_block(part, cells, block) for part in self._cache)

    def _prepare(self, chunk):
        """``[R; R diag(q_1); ...; R diag(q_r)]`` as CSC: one gather of W gives ΣW and ΣWq.

        Built straight in CSC order: each entry of ``R`` becomes r + 1 consecutive entries of
        its column (the gather does not need sorted row indices). None for the direct plan.
        """
        if chunk.plan == "direct":
            return None
        R = chunk.csc
        Q = self._sum_basis(chunk.cells)
        r, (b, n) = Q.shape[1], R.shape
        col = np.repeat(np.arange(n), np.diff(R.indptr))
        data = np.empty((R.nnz, r + 1))
        data[:, 0] = 1.0
        data[:, 1:] = Q[col]
        big = max((r + 1) * b, (r + 1) * R.nnz) >= np.iinfo(np.int32).max
        itype = np.int64 if big else np.int32
        indices = (R.indices.astype(itype)[:, None] + np.arange(r + 1, dtype=itype) * b).ravel()
        indptr = R.indptr.astype(itype) * (r + 1)
        return sp.csc_matrix((data.ravel(), indices, indptr), shape=((r + 1) * b, n))

    def _gather(self, chunk, stacked, pieces):
        if stacked is None:
            sums = chunk.gather(pieces).reshape(chunk.n_resamples, self._n_sums + 2, -1)
            return sums[:, 0], sums[:, 1:].transpose(1, 0, 2)
        a, W = pieces
        s_a = np.asarray(chunk.csc @ a)
        s_w = np.asarray(stacked @ W).reshape(self._n_sums + 1, s_a.shape[0], -1)
        return s_a, s_w

    def _finish(self, sums, shared, block):
        s_a, s_w = sums
        # ‖M_g Σ W q‖² for every resample b and response g.
        M = self.whitener_[block]
        r = self.rank_
        s_d = np.einsum("gcd,dbg->bgc", M, s_w[1 : r + 1])
        info = s_w[0] - np.einsum("bgc,bgc->bg", s_d, s_d)
        if self._outside is not None:
            # Treated cells outside the fit cells: their residuals carry the null fit's own
            # estimation error, which adds ‖M Σ_out W q‖² (see the class Notes).
            s_d = np.einsum("gcd,dbg->bgc", M, s_w[r + 1 :])
            info += np.einsum("bgc,bgc->bg", s_d, s_d)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = s_a / np.sqrt(info)
        z[~(info > _COLLINEAR_TOL * s_w[0])] = np.nan
        return z

    # ---------------------------------------------------------------- effect
    def _treated_counts(self, treated):
        """Rows ``treated`` of the counts, all responses, as a CSC matrix; None where each
        block of responses should take its own columns' treated rows instead.

        From a row-major copy of the counts, made once and kept where the pieces of all
        responses are kept anyway (it is smaller than they are): a unit then reads its treated
        cells' counts, not every response's column. Without that copy (dense counts, or more
        than ``cache_bytes`` of pieces) the rows of the unit's own columns are taken block by
        block: taking the rows of every column of a CSC matrix reads all of its entries (0.29 s
        per unit on W3's 100,000 x 1,000 counts, for the 1 to 10 genes of a unit)."""
        if not sp.issparse(self._Y) or not self.pieces_cached_:
            return None
        if getattr(self, "_Y_rows", None) is None:
            self._Y_rows = self._Y.tocsr()
        return self._Y_rows[treated].tocsc()

    def _effects(self, x, cols):
        effect = np.full(cols.size, np.nan)
        var = np.full(cols.size, np.nan)
        ok = np.flatnonzero(~self.no_counts_[cols])
        treated = np.flatnonzero(x)
        y_treated = self._treated_counts(treated)
        full_k = max(1, _FIT_BLOCK_BYTES // (8 * self.n_cells_))
        if self.effect_fit == "full":
            redo = ok
        else:
            k = max(1, _EFFECT_BLOCK_BYTES // (8 * treated.size * (self.rank_ + 2) ** 2))
            redo = []
            for start in range(0, ok.size, k):
                pos = ok[start : start + k]
                gamma, v, shift = self._effect_linearized(treated, cols[pos], y_treated)
                effect[pos], var[pos] = gamma, v
                redo.append(pos[~(shift <= _LINEARIZED_MAX_SHIFT)])
            redo = np.concatenate(redo) if redo else ok[:0]
        for start in range(0, redo.size, full_k):
            pos = redo[start : start + full_k]
            effect[pos], var[pos] = self._effect_full(x, treated, cols[pos])
        return effect / _LN2, np.sqrt(var) / _LN2

    def _gamma_start(self, y_t, mu_t):
        """Start for γ: log of treated counts over their null expectation (clipped)."""
        ratio = y_t.sum(axis=1) / mu_t.sum(axis=1)
        return np.clip(np.log(np.maximum(ratio, 1e-8)), -10.0, 10.0)

    def _effect_full(self, x, treated, block):
        """γ and Var(γ) from the NB GLM ``log μ = Qβ + γx`` refitted on all cells (with fit
        cells: on the fit cells and the treated cells)."""
        Q = self.basis_
        xf = x.astype(np.float64)
        Yb = _response_rows(self._Y, block)
        theta = self.theta_[block]
        beta0 = self.coef_[block]
        mu_t = _mean(beta0 @ Q[treated].T)
        y_t = Yb[:, treated]
        if self._outside is not None:
            rows = np.flatnonzero(~self._outside | (x != 0))
            Q, xf, Yb = Q[rows], xf[rows], np.ascontiguousarray(Yb[:, rows])
        X = np.column_stack([Q, xf])
        XT = np.ascontiguousarray(X.T)
        gram = _Gram(X)
        start = np.column_stack([beta0, self._gamma_start(y_t, mu_t)])
        beta, _ = _fit_glm(
            XT, gram, Yb, start, theta, max_iter=self.max_iter, tol=self.tol, cap_last=_GAMMA_MAX
        )
        mu = _mean(beta @ XT)
        info = gram(mu / (1.0 + mu / theta[:, None]))
        return beta[:, -1], self._inverse_last(info)

    def _effect_linearized(self, treated, block, y_treated=None):
        """γ, Var(γ) and the control shift bound, with the controls expanded around the null fit.

        Maximises ``F(δ, γ) = ℓ_T(β₀ + δ, γ) + s_Cᵀδ - ½ δᵀ H_C δ`` over (δ, γ): ``ℓ_T`` is the
        treated cells' NB log-likelihood, ``s_C = -Σ_T q_i a_i(β₀)`` the controls' score at the
        null fit (the full score vanishes there) and ``H_C = Qᵀ W Q - Σ_T W_i q_i q_iᵀ`` their
        information. With fit cells the controls are the fit cells that are not treated: the
        sums over ``T`` run over the treated fit cells only (none when the treated cells lie
        outside the fit cells, so ``s_C = 0`` and ``H_C`` is the null information).
        """
        Qt = self.basis_[treated]  # (m, r)
        QtT = np.ascontiguousarray(Qt.T)
        r = Qt.shape[1]
        if y_treated is None:
            y = _response_rows(self._Y, block, treated)  # (k, m)
        else:  # the treated rows of every response, taken once per unit
            y = _response_rows(y_treated, block)
        theta = self.theta_[block][:, None]
        eta0 = self.coef_[block] @ QtT
        mu0 = _mean(eta0)
        denom0 = 1.0 + mu0 / theta
        gram_t = _Gram(Qt)
        if self._outside is None:
            s_c = -((y - mu0) / denom0) @ Qt  # (k, r)
            h_c = self.null_info_[block] - gram_t(mu0 / denom0)
        else:
            inside = (~self._outside[treated]).astype(np.float64)  # treated fit cells
            s_c = -(((y - mu0) / denom0) * inside) @ Qt
            h_c = self.null_info_[block] - gram_t(mu0 / denom0 * inside)

        def objective(delta, gamma):
            eta = eta0 + delta @ QtT + gamma[:, None]
            mu = _mean(eta)
            quad = np.einsum("ka,ka->k", delta, s_c) - 0.5 * np.einsum(
                "ka,kab,kb->k", delta, h_c, delta
            )
            return _glm_loglik(y, eta, mu, theta) + quad, mu

        k = block.size
        delta = np.zeros((k, r))
        gamma = self._gamma_start(y, mu0)
        value, mu = objective(delta, gamma)
        active = np.ones(k, dtype=bool)
        for _ in range(self.max_iter):
            denom = 1.0 + mu / theta
            a, w = (y - mu) / denom, mu / denom
            info = self._joint_info(h_c, gram_t(w), w @ Qt, w.sum(axis=1))
            score = np.column_stack(
                [s_c - np.einsum("kab,kb->ka", h_c, delta) + a @ Qt, a.sum(axis=1)]
            )
            step = _solve(info, score)
            step[~active] = 0.0
            target = np.clip(gamma + step[:, r], -_GAMMA_MAX, _GAMMA_MAX)
            with np.errstate(invalid="ignore", divide="ignore"):
                shrink = np.where(step[:, r] != 0, (target - gamma) / step[:, r], 1.0)
            step *= np.clip(shrink, 0.0, 1.0)[:, None]
            t = np.ones(k)
            for _ in range(_MAX_HALVINGS):
                new_value, new_mu = objective(
                    delta + t[:, None] * step[:, :r], gamma + t * step[:, r]
                )
                worse = ~(new_value >= value - 1e-12 * np.abs(value)) & active
                if not worse.any():
                    break
                t[worse] *= 0.5
            t[worse] = 0.0
            delta = delta + t[:, None] * step[:, :r]
            gamma = gamma + t * step[:, r]
            value = np.where(worse, value, new_value)
            mu = np.where(worse[:, None], mu, new_mu)
            size = np.abs(t[:, None] * step).max(axis=1)
            active &= size > self.tol * (1.0 + np.abs(gamma))
            if not active.any():
                break
        denom = 1.0 + mu / theta
        w = mu / denom
        info = self._joint_info(h_c, gram_t(w), w @ Qt, w.sum(axis=1))
        shift = self._max_leverage * np.sqrt(np.einsum("ka,ka->k", delta, delta))
        return gamma, self._inverse_last(info), shift

    @staticmethod
    def _joint_info(h_c, h_t, cross, w_sum):
        """Fisher information (k, r+1, r+1) of (β, γ) from control and treated parts."""
        k, r = cross.shape
        info = np.empty((k, r + 1, r + 1))
        info[:, :r, :r] = h_c + h_t
        info[:, :r, r] = cross
        info[:, r, :r] = cross
        info[:, r, r] = w_sum
        return info

    @staticmethod
    def _inverse_last(info):
        """Var of γ: the last diagonal element of each inverse information matrix.

        Computed as the inverse Schur complement ``1 / (I_γγ - I_γβ I_ββ⁻¹ I_βγ)``; infinite
        where that complement vanishes (no information about γ, e.g. all treated means ~0).
        """
        h_bb, cross, h_gg = info[:, :-1, :-1], info[:, :-1, -1], info[:, -1, -1]
        schur = h_gg - np.einsum("ka,ka->k", cross, _solve(h_bb, cross))
        ok = (schur > 1e-12 * np.abs(h_gg)) & (h_gg > 0)
        return np.where(ok, 1.0 / np.where(ok, schur, 1.0), np.inf)
