"""Negative binomial GLM score statistic with exact covariate adjustment (SCEPTRE's statistic)."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from scipy.special import gammaln, polygamma, psi
from sklearn.utils._param_validation import Interval

from sklcrt.statistics._base import BaseStatistic, _dense_block, _is_full_range, _Resamples

__all__ = ["NBScoreStatistic"]

_LN2 = np.log(2.0)
# exp() argument cap: keeps mu finite on divergent fits (counts never get near e^700).
_ETA_MAX = 700.0
# Bytes of dense (cells x responses) temporaries per block while fitting.
_FIT_BLOCK_BYTES = 32 * 2**20
# Largest precomputed table of pairwise products of design columns (cells x p(p+1)/2).
_PAIR_BYTES = 256 * 2**20
# A resample whose covariate-adjusted information is below this fraction of its raw
# information (sum of weights) lies (numerically) in the span of the covariates: NaN.
_COLLINEAR_TOL = 1e-10
_MAX_HALVINGS = 30


class _Gram:
    """Weighted Gram matrices ``Xᵀ diag(w_g) X`` for many weight vectors ``w_g`` at once.

    With ``X`` of shape (n, p), the pairwise products ``X[:, a] * X[:, b]`` (a <= b) are
    precomputed once so that all Gram matrices come from one GEMM, ``pairsᵀ @ W``. When that
    table would be too large, each response's Gram matrix is computed on its own.
    """

    def __init__(self, X: np.ndarray):
        self.X = X
        n, p = X.shape
        self.p = p
        self.iu = np.triu_indices(p)
        self.pairs = None
        if n * self.iu[0].size * 8 <= _PAIR_BYTES:
            self.pairs = np.ascontiguousarray(X[:, self.iu[0]] * X[:, self.iu[1]])

    def __call__(self, W: np.ndarray) -> np.ndarray:
        k = W.shape[1]
        p = self.p
        if self.pairs is None:
            H = np.empty((k, p, p))
            for g in range(k):
                H[g] = (self.X * W[:, g, None]).T @ self.X
            return H
        flat = (self.pairs.T @ W).T  # (k, P)
        H = np.empty((k, p, p))
        H[:, self.iu[0], self.iu[1]] = flat
        H[:, self.iu[1], self.iu[0]] = flat
        return H


def _solve(H: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve the stacked systems ``H[g] s[g] = b[g]`` (pseudo-inverse where singular)."""
    try:
        return np.linalg.solve(H, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return np.einsum("gij,gj->gi", np.linalg.pinv(H, hermitian=True), b)


def _whitener(H: np.ndarray) -> np.ndarray:
    """Stacked ``M[g]`` with ``M[g]ᵀ M[g] = pinv(H[g])`` (H symmetric positive semi-definite).

    ``‖M v‖² = vᵀ H⁻¹ v``, so ``M`` plays the role of ``L⁻¹`` for the Cholesky factor ``L`` of
    ``H``; the eigen-decomposition also copes with a (numerically) singular ``H``.
    """
    lam, V = np.linalg.eigh(H)
    top = np.maximum(lam[:, -1:], 0.0)
    keep = lam > top * H.shape[-1] * np.finfo(np.float64).eps * 10
    scale = np.where(keep, 1.0 / np.sqrt(np.where(keep, lam, 1.0)), 0.0)
    return scale[:, :, None] * np.swapaxes(V, 1, 2)


def _mean(eta: np.ndarray) -> np.ndarray:
    return np.exp(np.minimum(eta, _ETA_MAX))


def _glm_loglik(Y, eta, mu, theta) -> np.ndarray:
    """NB (or Poisson, ``theta=inf``) log-likelihood per response, up to terms free of ``mu``."""
    if np.all(np.isinf(theta)):
        return np.einsum("ij,ij->j", Y, eta) - mu.sum(axis=0)
    return np.einsum("ij,ij->j", Y, eta) - ((Y + theta) * np.log1p(mu / theta)).sum(axis=0)


def _fit_glm(X, gram, Y, beta, theta, *, max_iter, tol):
    """Batched Fisher scoring for ``log E[y] = X beta`` with NB(theta) (``inf``: Poisson).

    Each response's step is halved until its log-likelihood does not decrease.

    Parameters
    ----------
    X : ndarray (n, p)
    gram : _Gram of X
    Y : ndarray (n, k)
    beta : ndarray (p, k), start
    theta : ndarray (k,)

    Returns
    -------
    beta : ndarray (p, k)
    converged : ndarray (k,) of bool
    """
    beta = beta.copy()
    eta = X @ beta
    mu = _mean(eta)
    ll = _glm_loglik(Y, eta, mu, theta)
    converged = np.zeros(Y.shape[1], dtype=bool)
    active = np.arange(Y.shape[1])
    for _ in range(max_iter):
        if active.size == 0:
            break
        Ya, mua, tha = Y[:, active], mu[:, active], theta[active]
        denom = 1.0 + mua / tha
        score = X.T @ ((Ya - mua) / denom)  # (p, ka)
        step = _solve(gram(mua / denom), score.T).T  # (p, ka)
        t = np.ones(active.size)
        todo = np.arange(active.size)
        new_beta = beta[:, active].copy()
        new_eta = eta[:, active].copy()
        new_mu = mua.copy()
        new_ll = ll[active].copy()
        for _ in range(_MAX_HALVINGS):
            cand_beta = beta[:, active[todo]] + t[todo] * step[:, todo]
            cand_eta = X @ cand_beta
            cand_mu = _mean(cand_eta)
            cand_ll = _glm_loglik(Ya[:, todo], cand_eta, cand_mu, tha[todo])
            ok = cand_ll >= ll[active[todo]] - 1e-12 * np.abs(ll[active[todo]])
            ok |= ~np.isfinite(ll[active[todo]])
            acc = todo[ok]
            new_beta[:, acc] = cand_beta[:, ok]
            new_eta[:, acc] = cand_eta[:, ok]
            new_mu[:, acc] = cand_mu[:, ok]
            new_ll[acc] = cand_ll[ok]
            todo = todo[~ok]
            if todo.size == 0:
                break
            t[todo] *= 0.5
        # Responses whose step could not improve the likelihood are at a (numerical) optimum.
        moved = t * step
        moved[:, todo] = 0.0
        beta[:, active] = new_beta
        eta[:, active] = new_eta
        mu[:, active] = new_mu
        ll[active] = new_ll
        size = np.max(np.abs(moved), axis=0)
        done = size <= tol * (1.0 + np.max(np.abs(new_beta), axis=0))
        converged[active[done]] = True
        active = active[~done]
    return beta, converged


def _theta_loglik(th, Y, mu, nz_col, nz_y, *, derivatives: bool):
    """Profile NB log-likelihood in theta for fixed mu (and d/dtheta, d2/dtheta2), per response.

    Uses ``θ log θ - (y+θ) log(θ+μ) = -y log θ - (y+θ) log1p(μ/θ)``; the gamma-function terms
    vanish for ``y = 0`` and are summed over the nonzero counts only.
    """
    k = th.size
    ratio = mu / th
    l1p = np.log1p(ratio)
    ll = -((Y + th) * l1p).sum(axis=0)
    thz = th[nz_col]
    ll += np.bincount(
        nz_col, gammaln(nz_y + thz) - gammaln(thz) - nz_y * np.log(thz), minlength=k
    )
    if not derivatives:
        return ll
    tpm = th + mu
    g = -(l1p - (Y + th) * mu / (th * tpm)).sum(axis=0)
    h = (2.0 * mu / (th * tpm) - (Y + th) * mu * (2.0 * th + mu) / (th * tpm) ** 2).sum(axis=0)
    g += np.bincount(nz_col, psi(nz_y + thz) - psi(thz) - nz_y / thz, minlength=k)
    h += np.bincount(
        nz_col, polygamma(1, nz_y + thz) - polygamma(1, thz) + nz_y / thz**2, minlength=k
    )
    return ll, g, h


def _theta_mle(Y, mu, theta0, bounds, *, max_iter, tol):
    """Maximum-likelihood theta per response for fixed means, by safeguarded Newton in log theta.

    The Newton step in ``φ = log θ`` is capped at 2 (a factor e² in θ); where the profile is not
    concave an ascent step of 1 in the gradient's direction is used; steps are halved until the
    likelihood does not decrease, and ``θ`` is clamped to ``bounds`` (a response with no
    overdispersion runs to the upper bound, i.e. near-Poisson).
    """
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    nz_row, nz_col = np.nonzero(Y)
    nz_y = Y[nz_row, nz_col]
    phi = np.clip(np.log(theta0), lo, hi)
    ll, g, h = _theta_loglik(np.exp(phi), Y, mu, nz_col, nz_y, derivatives=True)
    done = np.zeros(phi.size, dtype=bool)
    for _ in range(max_iter):
        th = np.exp(phi)
        g_phi = th * g
        h_phi = th * th * h + g_phi
        step = np.where(h_phi < 0, -g_phi / np.where(h_phi < 0, h_phi, -1.0), np.sign(g_phi))
        step = np.clip(step, -2.0, 2.0)
        step[done] = 0.0
        new_phi = np.clip(phi + step, lo, hi)
        for _ in range(_MAX_HALVINGS):
            new_ll = _theta_loglik(np.exp(new_phi), Y, mu, nz_col, nz_y, derivatives=False)
            worse = new_ll < ll - 1e-12 * np.abs(ll)
            if not worse.any():
                break
            step[worse] *= 0.5
            new_phi = np.where(worse, np.clip(phi + step, lo, hi), new_phi)
        worse = new_ll < ll - 1e-12 * np.abs(ll)
        new_phi[worse] = phi[worse]
        moved = np.abs(new_phi - phi)
        phi = new_phi
        ll, g, h = _theta_loglik(np.exp(phi), Y, mu, nz_col, nz_y, derivatives=True)
        done |= (moved <= tol) | worse
        if done.all():
            break
    theta = np.exp(phi)
    # Observed information in theta (for diagnostics / standard errors).
    return theta, -h


def _moments_theta(Y, mu, bounds):
    """Method-of-moments start: ``Var(y) = μ + μ²/θ``."""
    excess = ((Y - mu) ** 2 - mu).sum(axis=0)
    mu2 = (mu * mu).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        theta = np.where(excess > 0, mu2 / excess, bounds[1])
    return np.clip(np.nan_to_num(theta, nan=bounds[1]), bounds[0], bounds[1])


class NBScoreStatistic(BaseStatistic):
    """Negative binomial GLM score statistic with exact covariate adjustment.

    The null model ``log E[y] = [1, C] β`` with ``y ~ NB(μ, θ)`` (``Var = μ + μ²/θ``) is fitted
    once per response, vectorised over responses: Poisson Fisher scoring, then ``θ`` by maximum
    likelihood (Newton on the profile likelihood from a method-of-moments start, clamped to
    ``theta_bounds``), alternated with NB Fisher scoring until ``θ`` settles. For a treatment
    ``x`` the score statistic of adding ``x`` to the model is

    ``z(x) = Σ_{i∈x} a_i / sqrt(Σ_{i∈x} W_i - ‖Σ_{i∈x} D_i‖²)``,

    with ``W_i = μ_i / (1 + μ_i/θ)``, ``a_i = (y_i - μ_i) / (1 + μ_i/θ)`` and
    ``D_i = W_i M q_i`` (``q_i`` the row of the orthonormal covariate basis, ``MᵀM`` the inverse of
    ``Qᵀ W Q``): the exact covariate-adjusted score test (expected information). All resamples
    are evaluated as ``R @ [a | W | D]``, block by block of responses.

    Parameters
    ----------
    theta : float or None, default=None
        Fixed NB size ``θ`` for every response; ``None`` estimates it per response.
    theta_bounds : tuple of (float, float), default=(1e-2, 1e3)
        Clamp for the estimated ``θ``; the upper bound is effectively Poisson.
    max_iter : int, default=50
        Iteration cap of each Fisher scoring / Newton solve.
    tol : float, default=1e-8
        Convergence tolerance (relative step size) of the solves.
    block_size : int or None, default=None
        Responses per sparse @ dense product; ``None`` picks it from a memory budget.
    cache_bytes : int, default=512 * 2**20
        When the pieces ``[a | W | D]`` of all responses fit in this many bytes they are built
        once in :meth:`fit` and reused by every :meth:`evaluate` call; otherwise they are rebuilt
        per block (for the touched cells only when the resamples touch few cells). 0 disables.

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
        NB size per response (estimated or the fixed ``theta``).
    converged_ : ndarray of shape (n_responses,) of bool
        Whether the null fit converged.
    no_counts_ : ndarray of shape (n_responses,) of bool
        Responses that are zero in every cell; their statistics and effects are NaN.
    whitener_ : ndarray of shape (n_responses, rank_, rank_)
        ``M`` with ``MᵀM = (Qᵀ W Q)⁻¹`` at the null fit.
    pieces_cached_ : bool
        Whether the pieces are cached (see ``cache_bytes``).

    See Also
    --------
    OLSStatistic : exact OLS t statistic for continuous responses.

    Notes
    -----
    The effect reported by :meth:`observed` is the log2 fold change of the treatment: the NB GLM
    ``log μ = Q β + γ x`` with ``θ`` fixed at the null estimate is fitted by Fisher scoring from
    the null fit, ``effect = γ / ln 2`` and ``effect_se`` is its standard error (inverse expected
    information) on the log2 scale.

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
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="neither")],
        "cache_bytes": [Interval(Integral, 0, None, closed="left")],
    }
    _counts_only = True

    def __init__(
        self,
        theta=None,
        *,
        theta_bounds=(1e-2, 1e3),
        max_iter=50,
        tol=1e-8,
        block_size=None,
        cache_bytes=512 * 2**20,
    ):
        super().__init__(block_size=block_size)
        self.theta = theta
        self.theta_bounds = theta_bounds
        self.max_iter = max_iter
        self.tol = tol
        self.cache_bytes = cache_bytes

    @property
    def _values_per_response(self):
        return getattr(self, "rank_", 1) + 2

    # ---------------------------------------------------------------- fit
    def _fit(self, Y, Q):
        bounds = self.theta_bounds
        if not (
            len(bounds) == 2
            and all(isinstance(b, Real) for b in bounds)
            and 0 < bounds[0] < bounds[1] < np.inf
        ):
            raise ValueError(
                f"theta_bounds must be (low, high) with 0 < low < high < inf, got {bounds!r}."
            )
        n_cells, G = Y.shape
        r = Q.shape[1]
        self._Y = Y
        self.coef_ = np.full((G, r), np.nan)
        self.theta_ = np.full(G, np.nan)
        self.converged_ = np.zeros(G, dtype=bool)
        self.whitener_ = np.full((G, r, r), np.nan)
        totals = np.asarray(Y.sum(axis=0)).ravel()
        self.no_counts_ = totals <= 0
        if self.theta is not None:
            self.theta_[:] = float(self.theta)

        gram = _Gram(Q)
        ones_coef = Q.sum(axis=0)  # Q ones_coef = 1 because 1 is in the span of Q
        fitted = np.flatnonzero(~self.no_counts_)
        k = max(1, _FIT_BLOCK_BYTES // (8 * n_cells))
        for start in range(0, fitted.size, k):
            block = fitted[start : start + k]
            Yb = _dense_block(Y, block)
            beta = np.outer(ones_coef, np.log(totals[block] / n_cells))
            beta, conv = self._fit_block(Q, gram, Yb, beta, block, bounds)
            mu = _mean(Q @ beta)
            th = self.theta_[block]
            H = gram(mu / (1.0 + mu / th))
            self.coef_[block] = beta.T
            self.converged_[block] = conv
            self.whitener_[block] = _whitener(H)

        piece_bytes = 8 * n_cells * G * (r + 2)
        self.pieces_cached_ = bool(piece_bytes <= self.cache_bytes)
        self._pieces = None
        if self.pieces_cached_:
            cache = np.empty((n_cells, G, r + 2))
            k = max(1, _FIT_BLOCK_BYTES // (8 * n_cells * (r + 2)))
            for start in range(0, G, k):
                block = np.arange(start, min(G, start + k))
                cache[:, block, :] = self._build_pieces(None, block)
            self._pieces = cache

    def _fit_block(self, Q, gram, Yb, beta, block, bounds):
        kw = {"max_iter": self.max_iter, "tol": self.tol}
        if self.theta is not None:
            return _fit_glm(Q, gram, Yb, beta, self.theta_[block], **kw)
        beta, conv = _fit_glm(Q, gram, Yb, beta, np.full(block.size, np.inf), **kw)
        mu = _mean(Q @ beta)
        theta = _moments_theta(Yb, mu, bounds)
        # Alternate theta | mu and beta | theta (glm.nb style). For NB2 the two are orthogonal
        # in the information, so this settles in a few rounds.
        for _ in range(10):
            new_theta, _ = _theta_mle(Yb, mu, theta, bounds, **kw)
            beta, conv = _fit_glm(Q, gram, Yb, beta, new_theta, **kw)
            mu = _mean(Q @ beta)
            change = np.max(np.abs(np.log(new_theta) - np.log(theta)))
            theta = new_theta
            if change <= 1e-7:
                break
        self.theta_[block] = theta
        return beta, conv

    # ---------------------------------------------------------------- evaluate
    def _build_pieces(self, rows, block) -> np.ndarray:
        """Dense ``[a | W | D]`` of shape (n_rows, len(block), rank + 2)."""
        Q = self.basis_ if rows is None else self.basis_[rows]
        r = Q.shape[1]
        mu = _mean(Q @ self.coef_[block].T)
        y = _dense_block(self._Y, block, rows)
        denom = 1.0 + mu / self.theta_[block]
        W = mu / denom
        k = block.size
        P = np.empty((Q.shape[0], k, r + 2))
        P[:, :, 0] = (y - mu) / denom
        P[:, :, 1] = W
        T = self.whitener_[block].transpose(2, 0, 1).reshape(r, k * r)
        np.multiply((Q @ T).reshape(-1, k, r), W[:, :, None], out=P[:, :, 2:])
        return P

    def _zero_copy(self, cols):
        return self._pieces is not None and _is_full_range(cols, self.n_responses_)

    def _evaluate_block(self, res: _Resamples, shared, block):
        r = self.rank_
        n_rows = self.n_cells_ if res.rows is None else res.rows.size
        if self._pieces is None:
            pieces = self._build_pieces(res.rows, block)
        elif res.rows is None and _is_full_range(block, self.n_responses_):
            pieces = self._pieces
        elif res.rows is None:
            pieces = np.take(self._pieces, block, axis=1)
        else:
            pieces = self._pieces[np.ix_(res.rows, block)]
        sums = np.asarray(res.csc @ pieces.reshape(n_rows, -1)).reshape(-1, block.size, r + 2)
        s_w = sums[:, :, 1]
        info = s_w - np.einsum("bgj,bgj->bg", sums[:, :, 2:], sums[:, :, 2:])
        with np.errstate(invalid="ignore", divide="ignore"):
            z = sums[:, :, 0] / np.sqrt(info)
        z[~(info > _COLLINEAR_TOL * s_w)] = np.nan
        return z

    # ---------------------------------------------------------------- effect
    def _effects(self, x, cols):
        effect = np.full(cols.size, np.nan)
        se = np.full(cols.size, np.nan)
        ok = np.flatnonzero(~self.no_counts_[cols])
        if ok.size == 0:
            return effect, se
        Q = self.basis_
        xf = x.astype(np.float64)
        X = np.column_stack([Q, xf])
        gram = _Gram(X)
        treated = np.flatnonzero(x)
        k = max(1, _FIT_BLOCK_BYTES // (8 * self.n_cells_))
        for start in range(0, ok.size, k):
            pos = ok[start : start + k]
            block = cols[pos]
            Yb = _dense_block(self._Y, block)
            theta = self.theta_[block]
            beta0 = self.coef_[block].T
            # Start gamma at the fold change of treated counts against the null expectation.
            mu0 = _mean(Q[treated] @ beta0)
            ratio = Yb[treated].sum(axis=0) / mu0.sum(axis=0)
            gamma0 = np.clip(np.log(np.maximum(ratio, 1e-8)), -10.0, 10.0)
            beta, _ = _fit_glm(
                X, gram, Yb, np.vstack([beta0, gamma0]), theta,
                max_iter=self.max_iter, tol=self.tol,
            )
            mu = _mean(X @ beta)
            H = gram(mu / (1.0 + mu / theta))
            e_last = np.zeros(X.shape[1])
            e_last[-1] = 1.0
            var = _solve(H, np.broadcast_to(e_last, (block.size, X.shape[1])))[:, -1]
            effect[pos] = beta[-1] / _LN2
            with np.errstate(invalid="ignore"):
                se[pos] = np.sqrt(var) / _LN2
        return effect, se
