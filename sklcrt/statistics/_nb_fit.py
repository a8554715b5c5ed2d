"""The negative binomial null-model solver behind :class:`NBScoreStatistic` (private).

Batched Newton fits of Poisson / NB GLMs across many responses sharing one design, with the
helpers they need (weighted Gram matrices, stacked solves, whiteners, count tables).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.special import gammaln, polygamma, psi

# exp() argument cap: keeps mu finite on divergent fits (counts never get near e^700).
_ETA_MAX = 700.0
_ETA_MAX_SINGLE = 80.0  # the same in float32 (exp overflows above 88.7)
# Bytes of the largest precomputed table of pairwise products of design columns
# (cells x p(p+1)/2).
_PAIR_BYTES = 256 * 2**20
_MAX_HALVINGS = 30
# _fit_nb evaluates its first point in float32 (:func:`_nb_point`'s ``single``), and the next
# ones as long as every step so far is larger than this: a float32 point's Newton step is
# accurate to about 1e-4 of its size, which does not matter for such steps; the points near the
# optimum are double. (Gasperini, full-data passes per gene, float32 + double: 1.96 + 2.21 at
# 0.1, 2.58 + 1.68 at 0.03, 3.00 + 1.43 at 0.01; with float32 passes at 0.46x of a double one,
# 0.03 costs 7 % less than 0.1.)
_SINGLE_ABOVE = 0.03
# Relative slack of the line search where a float32 log-likelihood is compared (its error is
# about 1e-6 relative; the double one compares within 1e-12).
_SINGLE_LL_SLACK = 1e-5
# One pass of the NB fit takes the cells a run at a time: about this many bytes per
# (responses x run) temporary (cache-resident), and at least this many cells.
_PASS_BYTES = 2**18
_PASS_MIN_CELLS = 256
# The Poisson fit on more than _SUB_FACTOR * _SUB_MIN_CELLS cells starts from the fit on every
# _SUB_FACTOR-th cell (for responses with at least _SUB_MIN_NONZERO nonzero counts there).
_SUB_FACTOR = 8
_SUB_MIN_CELLS = 4096
_SUB_MIN_NONZERO = 25
# ... and the NB fit on every _SUB_FACTOR-th cell starts the NB fit for responses with at least
# this many nonzero counts there (enough for θ; sparser ones start from the Poisson fit).
_SUB_MIN_NB_NONZERO = 50


# ==================================================================== batched GLM machinery
# Arrays are response-major: Y, eta, mu have shape (k responses, n cells), coefficients (k, p).


class _Gram:
    """Weighted Gram matrices ``Xᵀ diag(w_g) X`` for many weight vectors ``w_g`` at once.

    With ``X`` of shape (n, p) the pairwise products ``X[:, a] * X[:, b]`` (a <= b) are
    precomputed once, so that all Gram matrices come from one GEMM ``W @ pairs``. When that
    table would be too large, each Gram matrix is computed on its own.

    ``dtype=np.float32`` computes them in single precision, twice as fast: the Newton solvers
    use them only for the direction of a step, whose score is exact, so they converge to the
    same optimum (an inexact Hessian only slows Newton's quadratic convergence by a factor of
    its relative error, about 1e-6 here). Information matrices that are results are double.
    """

    def __init__(self, X: np.ndarray, dtype=np.float64):
        self.X = X
        n, p = X.shape
        self.p = p
        self.dtype = np.dtype(dtype)
        self.iu = np.triu_indices(p)
        self.pairs = None
        if n * self.iu[0].size * self.dtype.itemsize <= _PAIR_BYTES:
            pairs = X[:, self.iu[0]] * X[:, self.iu[1]]
            self.pairs = np.ascontiguousarray(pairs, dtype=self.dtype)

    def __call__(self, W: np.ndarray) -> np.ndarray:
        """Gram matrices (k, p, p), in double precision, for the weights ``W`` (k, n)."""
        return self.expand(self.partial(W, slice(None)))

    def partial(self, W: np.ndarray, cells: slice) -> np.ndarray:
        """The upper triangles (k, p(p+1)/2) of the Gram matrices of the rows ``cells`` of
        ``X`` for their weights ``W`` (k, len(cells)), in double precision."""
        if self.pairs is None:
            X = self.X[cells]
            return np.stack([((X.T * w) @ X)[self.iu] for w in W]).reshape(W.shape[0], -1)
        flat = W.astype(self.dtype, copy=False) @ self.pairs[cells]
        return flat.astype(np.float64, copy=False)

    def expand(self, flat: np.ndarray) -> np.ndarray:
        """Symmetric (k, p, p) matrices from their upper triangles (k, p(p+1)/2)."""
        H = np.empty((flat.shape[0], self.p, self.p))
        H[:, self.iu[0], self.iu[1]] = flat
        H[:, self.iu[1], self.iu[0]] = flat
        return H


def _solve(H: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve the stacked systems ``H[g] s[g] = b[g]`` (pseudo-inverse where singular)."""
    try:
        return np.linalg.solve(H, b[..., None])[..., 0]
    except np.linalg.LinAlgError:
        return np.einsum("gij,gj->gi", np.linalg.pinv(H, hermitian=True), b)


def _solve_pair(H: np.ndarray, b: np.ndarray, c: np.ndarray):
    """``H[g]⁻¹ b[g]`` and ``H[g]⁻¹ c[g]`` from one factorisation per system."""
    rhs = np.stack([b, c], axis=-1)
    try:
        both = np.linalg.solve(H, rhs)
    except np.linalg.LinAlgError:
        both = np.linalg.pinv(H, hermitian=True) @ rhs
    return both[..., 0], both[..., 1]


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


def _by_design(A: np.ndarray, XT: np.ndarray) -> np.ndarray:
    """``A @ XT.T`` (rows of ``A`` against the design's columns), as ``(XT @ A.T).T``: with
    few responses and many cells BLAS runs that orientation 1.3-1.8x faster."""
    return (XT @ A.T).T


def _rowdot(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``(A * B).sum(axis=1)`` as a stack of BLAS dot products: 2-2.5x faster than einsum's
    ``"ij,ij->i"`` on (responses x cells) blocks."""
    return (A[:, None, :] @ B[:, :, None])[:, 0, 0]


def _mean(eta: np.ndarray, out=None) -> np.ndarray:
    """``exp(min(eta, _ETA_MAX))`` (into ``out``, which may be ``eta``)."""
    # The cap is rarely needed: a max (one read) is cheaper than clamping every element.
    cap = _ETA_MAX if eta.dtype == np.float64 else _ETA_MAX_SINGLE
    if eta.size and eta.max() > cap:
        eta = np.minimum(eta, cap, out=out)
    return np.exp(eta, out=out)


def _linear_predictor(Q: np.ndarray, coef: np.ndarray, out=None, term=None):
    """``Q @ coef.T`` (cells x responses), added up one basis column at a time.

    Every element is the same sum in the same order whichever rows and responses are computed
    (a BLAS product may round differently for different shapes), so the pieces of a few touched
    cells equal the rows of the pieces of all cells, bit for bit.
    """
    out = np.multiply(Q[:, :1], coef[:, 0], out=out)
    term = np.empty_like(out) if term is None else term
    for j in range(1, Q.shape[1]):
        out += np.multiply(Q[:, j : j + 1], coef[:, j], out=term)
    return out


def _log1p(u: np.ndarray, out=None) -> np.ndarray:
    """``log(1 + u)`` for ``u > -1``, to a few ulps, from numpy's vectorised ``log``.

    ``np.log1p`` has no SIMD loop: in single precision it costs about 5x ``np.log`` (and
    ``_nb_point``'s float32 passes 22 % more on Gasperini). With ``w = 1 + u`` (rounded),
    ``log1p(u) = log(w) - ((w - 1) - u) / w`` to first order in the rounding error of ``w``
    (Goldberg's correction; it returns ``u`` where ``w == 1``): within 3 float32 ulps of
    ``log1p`` and 1 ulp in double.
    """
    w = u + 1.0
    out = np.log(w, out=out)
    rounding = w - 1.0
    rounding -= u
    rounding /= w
    out -= rounding
    return out


def _glm_loglik(Y, eta, mu, theta) -> np.ndarray:
    """NB (Poisson where ``theta`` is inf) log-likelihood per response, up to terms free of mu.

    ``theta`` has shape (k, 1) and is either all finite or all infinite.
    """
    if np.isinf(theta).all():
        return _rowdot(Y, eta) - mu.sum(axis=1)
    return _rowdot(Y, eta) - ((Y + theta) * np.log1p(mu / theta)).sum(axis=1)


def _fit_glm(XT, gram, Y, beta, theta, *, max_iter, tol, cap_last=None):
    """Batched Newton's method for ``log E[y] = X beta``, y ~ NB(theta) (Poisson: theta=inf).

    Each response's step is halved until its log-likelihood does not decrease; responses are
    dropped from the iteration once their step is below ``tol`` (relative).

    Parameters
    ----------
    XT : ndarray (p, n), the transposed design
    gram : _Gram of the design
    Y : ndarray (k, n)
    beta : ndarray (k, p), start
    theta : ndarray (k,)
    cap_last : float or None
        Bound ``|beta[:, -1]| <= cap_last`` (a treatment coefficient whose MLE is infinite).

    Returns
    -------
    beta : ndarray (k, p)
    converged : ndarray (k,) of bool
    """
    theta = np.asarray(theta, dtype=np.float64)[:, None]
    poisson = bool(np.isinf(theta).all())
    if poisson and cap_last is None:
        return _fit_poisson(XT, gram, Y, beta, max_iter=max_iter, tol=tol)
    beta = beta.copy()
    converged = np.zeros(Y.shape[0], dtype=bool)
    active = np.arange(Y.shape[0])
    Ya, tha = Y, theta
    eta = beta @ XT
    mu = _mean(eta)
    ll = _glm_loglik(Ya, eta, mu, tha)
    for _ in range(max_iter):
        denom = 1.0 + mu / tha
        score = _by_design((Ya - mu) / denom, XT)  # (ka, p)
        # Newton steps: the observed information's weights mu (1 + y/theta) / (1 + mu/theta)^2
        # are positive for the NB2 log link, so it converges quadratically where Fisher
        # scoring (weights mu / (1 + mu/theta)) is only linear. Poisson: both are mu.
        weights = mu / denom if poisson else mu * (1.0 + Ya / tha) / (denom * denom)
        step = _solve(gram(weights), score)  # (ka, p)
        b = beta[active]
        if cap_last is not None:
            # Shorten the step so that the capped coefficient stays within its bound.
            target = np.clip(b[:, -1] + step[:, -1], -cap_last, cap_last)
            with np.errstate(invalid="ignore", divide="ignore"):
                shrink = np.where(step[:, -1] != 0, (target - b[:, -1]) / step[:, -1], 1.0)
            step = step * np.clip(shrink, 0.0, 1.0)[:, None]
        new_b = b + step
        new_eta = new_b @ XT
        new_mu = _mean(new_eta)
        new_ll = _glm_loglik(Ya, new_eta, new_mu, tha)
        bad = np.flatnonzero(~(new_ll >= ll - 1e-12 * np.abs(ll)) & np.isfinite(ll))
        t = np.ones(active.size)
        for _ in range(_MAX_HALVINGS):
            if bad.size == 0:
                break
            t[bad] *= 0.5
            cand_b = b[bad] + t[bad, None] * step[bad]
            cand_eta = cand_b @ XT
            cand_mu = _mean(cand_eta)
            cand_ll = _glm_loglik(Ya[bad], cand_eta, cand_mu, tha[bad])
            ok = cand_ll >= ll[bad] - 1e-12 * np.abs(ll[bad])
            acc = bad[ok]
            new_b[acc], new_eta[acc], new_mu[acc], new_ll[acc] = (
                cand_b[ok],
                cand_eta[ok],
                cand_mu[ok],
                cand_ll[ok],
            )
            bad = bad[~ok]
        # Where no step improves the likelihood the fit is at its (numerical) optimum.
        new_b[bad], new_eta[bad], new_mu[bad], new_ll[bad] = b[bad], eta[bad], mu[bad], ll[bad]
        # Converged when the full Newton step is small (a step shortened by the line search
        # says nothing about the distance to the optimum), or when no step improves.
        moved = np.abs(step).max(axis=1)
        moved[bad] = 0.0
        beta[active] = new_b
        done = moved <= tol * (1.0 + np.abs(new_b).max(axis=1))
        converged[active[done]] = True
        keep = ~done
        if not keep.any():
            break
        if done.any():
            active = active[keep]
            Ya, tha = Ya[keep], tha[keep]
            new_eta, new_mu, new_ll = new_eta[keep], new_mu[keep], new_ll[keep]
        eta, mu, ll = new_eta, new_mu, new_ll
    return beta, converged


def _subsample(XT, Y, gram):
    """``(XT, gram, Y)`` on every ``_SUB_FACTOR``-th cell, or None for fewer cells than
    ``_SUB_FACTOR * _SUB_MIN_CELLS`` (a fit there estimates the same coefficients, so it starts
    the fit on all cells at a fraction of the cost)."""
    n = XT.shape[1]
    if n < _SUB_FACTOR * _SUB_MIN_CELLS:
        return None
    sub = slice(0, n, _SUB_FACTOR)
    XTs = np.ascontiguousarray(XT[:, sub])
    return XTs, _Gram(np.ascontiguousarray(XTs.T), gram.dtype), np.ascontiguousarray(Y[:, sub])


def _fit_nb_start(XT, gram, Y, beta, bounds, *, max_iter, tol):
    """A start for :func:`_fit_nb`: the Poisson fit for β and the moments estimate of θ.

    On many cells, responses with at least ``_SUB_MIN_NB_NONZERO`` nonzero counts on every
    ``_SUB_FACTOR``-th cell start from the joint NB fit there instead, within sampling error
    of the fit on all cells, so that the fit on all cells needs only Newton's last few
    (quadratically converging) steps. ``tol`` is the (loose) tolerance of these start fits.
    """
    k = Y.shape[0]
    theta = np.empty(k)
    todo = np.ones(k, dtype=bool)
    sub = _subsample(XT, Y, gram)
    if sub is not None:
        XTs, gs, Ys = sub
        rich = np.flatnonzero(np.count_nonzero(Ys, axis=1) >= _SUB_MIN_NB_NONZERO)
        if rich.size:
            Yr = Ys[rich]
            b, _ = _fit_glm(
                XTs, gs, Yr, beta[rich], np.full(rich.size, np.inf), max_iter=max_iter, tol=tol
            )
            th = _moments_theta(Yr, _mean(b @ XTs), bounds)
            b, th, ok = _fit_nb(
                XTs, gs, Yr, b, th, bounds, _CountTable(Yr), max_iter=max_iter, tol=tol
            )
            use = rich[ok]
            beta = beta.copy()
            beta[use], theta[use] = b[ok], th[ok]
            todo[use] = False
    rest = np.flatnonzero(todo)
    if rest.size:
        Yr = Y[rest]
        b, _ = _fit_glm(
            XT, gram, Yr, beta[rest], np.full(rest.size, np.inf), max_iter=max_iter, tol=tol
        )
        beta = beta.copy()
        beta[rest], theta[rest] = b, _moments_theta(Yr, _mean(b @ XT), bounds)
    return beta, theta


def _fit_poisson(XT, gram, Y, beta, *, max_iter, tol):
    """:func:`_fit_glm` for the Poisson GLM, from the sufficient statistics ``c = Y Xᵀ``.

    The log-likelihood ``βᵀc - Σ μ`` and the score ``c - Σ μ x`` touch the counts only
    through ``c`` (computed once), so an iteration costs the means, their sums and two products
    with the design. Newton steps (weights ``μ``) halved until the log-likelihood does not
    decrease; a response stops once its full step is below ``tol`` (relative).
    """
    beta = beta.copy()
    sub = _subsample(XT, Y, gram)
    if sub is not None:
        # Start from the fit on every _SUB_FACTOR-th cell (it estimates the same β).
        XTs, gs, Ys = sub
        fit, ok = _fit_poisson(XTs, gs, Ys, beta, max_iter=max_iter, tol=tol)
        use = ok & (np.count_nonzero(Ys, axis=1) >= _SUB_MIN_NONZERO)
        beta[use] = fit[use]
    c = _by_design(Y, XT)  # (k, p)
    converged = np.zeros(Y.shape[0], dtype=bool)
    active = np.arange(Y.shape[0])
    ca = c
    mu = _mean(beta @ XT)
    ll = np.einsum("ij,ij->i", beta, c) - mu.sum(axis=1)
    for _ in range(max_iter):
        score = ca - _by_design(mu, XT)
        step = _solve(gram(mu), score)
        b = beta[active]
        new_b = b + step
        new_mu = _mean(new_b @ XT)
        new_ll = np.einsum("ij,ij->i", new_b, ca) - new_mu.sum(axis=1)
        bad = np.flatnonzero(~(new_ll >= ll - 1e-12 * np.abs(ll)) & np.isfinite(ll))
        t = np.ones(active.size)
        for _ in range(_MAX_HALVINGS):
            if bad.size == 0:
                break
            t[bad] *= 0.5
            cand_b = b[bad] + t[bad, None] * step[bad]
            cand_mu = _mean(cand_b @ XT)
            cand_ll = np.einsum("ij,ij->i", cand_b, ca[bad]) - cand_mu.sum(axis=1)
            ok = cand_ll >= ll[bad] - 1e-12 * np.abs(ll[bad])
            acc = bad[ok]
            new_b[acc], new_mu[acc], new_ll[acc] = cand_b[ok], cand_mu[ok], cand_ll[ok]
            bad = bad[~ok]
        # Where no step improves the likelihood the fit is at its (numerical) optimum.
        new_b[bad], new_mu[bad], new_ll[bad] = b[bad], mu[bad], ll[bad]
        moved = np.abs(step).max(axis=1)
        moved[bad] = 0.0
        beta[active] = new_b
        done = moved <= tol * (1.0 + np.abs(new_b).max(axis=1))
        converged[active[done]] = True
        keep = ~done
        if not keep.any():
            break
        if done.any():
            active = active[keep]
            ca, new_mu, new_ll = ca[keep], new_mu[keep], new_ll[keep]
        mu, ll = new_mu, new_ll
    return beta, converged


class _CountTable:
    """Distinct nonzero counts of each response and how often they occur.

    The gamma-function terms of the NB likelihood in theta vanish for ``y = 0`` and depend on
    ``y`` only through its value, so they are summed over this (small) table, not over cells.
    """

    def __init__(self, Y: np.ndarray):
        resp, cell = np.nonzero(Y)
        self._tabulate(resp, Y[resp, cell], Y.shape[0])

    @classmethod
    def from_columns(cls, S) -> _CountTable:
        """The table of the columns of the sparse (cells x k) matrix ``S`` (no dense pass)."""
        S = sp.csc_matrix(S)
        S.sum_duplicates()
        keep = S.data != 0
        k = S.shape[1]
        resp = np.repeat(np.arange(k), np.diff(S.indptr))[keep]
        table = object.__new__(cls)
        table._tabulate(resp, S.data[keep], k)
        return table

    def _tabulate(self, resp, values, k):
        top = values.max() if values.size else 0.0
        if values.size and np.all(values == np.round(values)) and k * (top + 1) <= 5e7:
            base = int(top) + 1
            counts = np.bincount(resp * base + values.astype(np.int64), minlength=k * base)
            key = np.flatnonzero(counts)
            self.resp, self.value = key // base, (key % base).astype(np.float64)
            self.weight = counts[key].astype(np.float64)
        else:
            order = np.lexsort((values, resp))
            resp, values = resp[order], values[order]
            first = np.ones(values.size, dtype=bool)
            first[1:] = (resp[1:] != resp[:-1]) | (values[1:] != values[:-1])
            starts = np.flatnonzero(first)
            self.resp, self.value = resp[starts], values[starts]
            self.weight = np.diff(np.append(starts, values.size)).astype(np.float64)
        self.k = k

    def sum(self, terms: np.ndarray) -> np.ndarray:
        return np.bincount(self.resp, self.weight * terms, minlength=self.k)

    def subset(self, rows: np.ndarray) -> _CountTable:
        """The table of the responses ``rows`` (increasing), renumbered 0..len(rows)-1."""
        sub = object.__new__(_CountTable)
        position = np.full(self.k, -1, dtype=np.int64)
        position[rows] = np.arange(rows.size)
        new_resp = position[self.resp]
        keep = new_resp >= 0
        sub.resp, sub.value, sub.weight = new_resp[keep], self.value[keep], self.weight[keep]
        sub.k = int(rows.size)
        return sub


def _moments_theta(Y, mu, bounds):
    """Method-of-moments start: ``Var(y) = μ + μ²/θ``."""
    excess = ((Y - mu) ** 2 - mu).sum(axis=1)
    mu2 = (mu * mu).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        theta = np.where(excess > 0, mu2 / excess, bounds[1])
    return np.clip(np.nan_to_num(theta, nan=bounds[1]), bounds[0], bounds[1])


def _nb_terms(Y, eta, mu, theta, table):
    """Everything one Newton iteration of :func:`_fit_nb` needs, from the means of one point.

    With ``r = μ/θ``, ``u = 1 / (1 + r)`` and ``s = r u = 1 - u`` (per cell):

    - ``ll = Σ y η - Σ (y + θ) log1p(r) + T(θ)``, the NB log-likelihood up to terms free of β
      and θ,
    - ``dll/dθ = -Σ log1p(r) + Σ (y + θ) s / θ + T'(θ)``,
    - ``d²ll/dθ² = 2 Σ s / θ - Σ (2 + r) (y + θ) s u / θ² + T''(θ)``, where
      ``(2 + r) u = 1 + u``,
    - ``u``, which turns ``y - μ`` into the score of β, and ``(y + θ) s u = μ (1 + y/θ) /
      (1 + μ/θ)²``, the weights of its observed information,

    where ``T`` sums the gamma-function terms over the table of distinct nonzero counts (they
    vanish for ``y = 0``): :func:`_table_terms`. The sums over cells are
    :func:`_cell_terms`'s.
    """
    ll, g, h, u, weights = _cell_terms(Y, eta, mu, theta)
    t_ll, t_g, t_h = _table_terms(theta, table)
    return ll + t_ll, g + t_g, h + t_h, u, weights


def _cell_terms(Y, eta, mu, theta):
    """The sums over cells of :func:`_nb_terms` (``ll``, ``g``, ``h`` without ``T``), ``u``
    and the weights. Sums of ``y`` times a term are taken apart from ``θ`` times the term's
    sum, so that few (responses x cells) temporaries pass through memory."""
    thc = theta[:, None]
    u = np.divide(mu, thc)
    # (float32 passes: np.log1p has no SIMD loop and costs 5x np.log there; in double the
    # means are mostly small, where the two cost about the same.)
    l1p = _log1p(u) if u.dtype == np.float32 else np.log1p(u)
    u += 1.0
    np.reciprocal(u, out=u)
    s = np.subtract(1.0, u)
    sum_l1p, sum_s = l1p.sum(axis=1), s.sum(axis=1)
    y_s = _rowdot(Y, s)
    ll = _rowdot(Y, eta) - _rowdot(Y, l1p) - theta * sum_l1p
    g = (y_s + theta * sum_s) / theta - sum_l1p
    weights = np.add(Y, thc, out=l1p)  # l1p is spent
    weights *= s
    a_s = y_s + theta * sum_s  # Σ (y + θ) s
    weights *= u
    h = 2.0 * sum_s / theta - (weights.sum(axis=1) + a_s) / theta**2
    return ll, g, h, u, weights


def _table_terms(theta, table):
    """``T(θ)``, ``T'(θ)`` and ``T''(θ)``: the gamma-function terms, summed over the table."""
    y = table.value
    t = theta[table.resp]
    return (
        table.sum(gammaln(y + t) - gammaln(t) - y * np.log(t)),
        table.sum(psi(y + t) - psi(t) - y / t),
        table.sum(polygamma(1, y + t) - polygamma(1, t) + y / t**2),
    )


def _nb_point(XT, gram, Y, beta, theta, table, single=False):
    """The NB log-likelihood, its derivatives in θ, the score and cross derivative of β, and
    the Gram matrices of the observed information, at ``(beta, theta)``: one pass.

    The cells are taken a cache-sized run at a time (linear predictor, means, the terms of
    :func:`_cell_terms`, their products with the design and their Gram matrices in one go),
    so no (responses x cells) temporary leaves the cache: about twice as fast as whole-row
    passes on 40,000 cells. Returns ``ll, g, h`` (k,), ``score, cross`` (k, p), ``H`` (k, p, p).

    ``single``: ``XT`` and ``Y`` are float32, and the terms of every cell are computed in single
    precision (a pass costs about 0.63x of a double one; the sums over runs and the count
    table's terms stay double).
    Accurate to about 1e-6 relative: enough for Newton's first steps, not for its last
    (:func:`_fit_nb`).
    """
    k, n = Y.shape
    p = XT.shape[0]
    ll, g, h = np.zeros(k), np.zeros(k), np.zeros(k)
    products = np.zeros((2 * k, p))
    flat = None
    dtype = np.float32 if single else np.float64
    step = max(_PASS_MIN_CELLS, _PASS_BYTES // (np.dtype(dtype).itemsize * max(k, 1)))
    beta_c, theta_c = beta.astype(dtype, copy=False), theta.astype(dtype, copy=False)
    resid = np.empty((2 * k, min(step, n)), dtype=dtype)
    for c0 in range(0, n, step):
        cells = slice(c0, min(n, c0 + step))
        XTc, Yc = XT[:, cells], Y[:, cells]
        eta = beta_c @ XTc
        mu = _mean(eta)
        l_c, g_c, h_c, u, weights = _cell_terms(Yc, eta, mu, theta_c)
        ll += l_c
        g += g_c
        h += h_c
        # The score (y - μ) u and, for d²ll/dβdφ = Σ q (y - μ) r u² = Σ q (y - μ) u (1 - u)
        # (as s = r u = 1 - u), the cross derivative, in one product with the design.
        r = resid[:, : mu.shape[1]]
        np.subtract(Yc, mu, out=r[:k])
        r[:k] *= u
        np.multiply(r[:k], u, out=r[k:])
        np.subtract(r[:k], r[k:], out=r[k:])
        products += _by_design(r, XTc)
        part = gram.partial(weights, cells)
        flat = part if flat is None else flat + part
    t_ll, t_g, t_h = _table_terms(theta, table)
    score, cross = products.reshape(2, k, p)
    return ll + t_ll, g + t_g, h + t_h, score, cross, gram.expand(flat)


def _fit_nb(XT, gram, Y, beta, theta, bounds, table, *, max_iter, tol):
    """Joint maximum likelihood of ``(beta, theta)`` per response, by simultaneous Newton steps.

    Every iteration takes, from the same means, the joint Newton step in ``(beta, α = 1/θ)``, or
    in ``(beta, φ = log θ)`` where the first is not defined. The observed information's weights
    ``mu (1 + y/θ) / (1 + mu/θ)²`` of ``beta``'s block are positive for the NB2 log link, and the
    cross derivative ``Σ q (y - μ) μθ / (θ + μ)²`` couples the two; the step is solved by
    eliminating ``beta`` (two right-hand sides per Gram matrix), with the step in φ capped at 2
    (a factor e² in θ). Where neither joint Hessian is negative definite (their Schur
    complements in α and φ are not positive), the step is the Newton step in ``beta`` for the
    current θ and an ascent step of 1 in φ in the gradient's direction. Both are halved until the
    log-likelihood does not decrease. θ is clamped to ``bounds`` (a response without
    overdispersion runs to the upper bound, i.e. near-Poisson). The joint step converges
    quadratically (separate steps, which ignore the cross derivative, only linearly near the
    optimum). A response stops once both steps are below ``tol`` (``beta``: relative), so its
    fit does not depend on the other responses of the block.

    Returns
    -------
    beta : ndarray (k, p)
    theta : ndarray (k,), within ``bounds``
    converged : ndarray (k,) of bool
    """
    lo, hi = np.log(bounds[0]), np.log(bounds[1])
    beta = beta.copy()
    phi = np.clip(np.log(theta), lo, hi)
    converged = np.zeros(Y.shape[0], dtype=bool)
    active = np.arange(Y.shape[0])
    XT32 = XT.astype(np.float32)
    # The active responses' counts and table; the float32 counts only while some point is.
    Ya, Ya32, ta = Y, Y.astype(np.float32), table

    def point(rows, b, p, single):
        """``_nb_point`` at ``(b, e^p)`` of the active responses ``rows`` (None: all of them),
        in float32 where ``single``, else in double: one call per precision."""
        parts = []
        for flag in (True, False):
            i = np.flatnonzero(single == flag)
            if i.size == 0:
                continue
            whole = rows is None and i.size == single.size  # no copy of the counts
            r = i if rows is None else rows[i]
            counts = Ya32 if flag else Ya
            part = _nb_point(
                XT32 if flag else XT,
                gram,
                counts if whole else counts[r],
                b[i],
                np.exp(p[i]),
                ta if whole else ta.subset(r),
                single=flag,
            )
            if i.size == single.size:
                return list(part)
            parts.append((i, part))
        out = [np.empty((single.size,) + v.shape[1:]) for v in parts[0][1]]
        for i, part in parts:
            for o, v in zip(out, part, strict=True):
                o[i] = v
        return out

    # The first point in float32 (a start from the subsample or the Poisson fit is 0.05-0.5
    # off in φ, so Newton's first step is large); the points from the first step of at most
    # _SINGLE_ABOVE on are double, and a response stops only from a double point.
    single = np.ones(Y.shape[0], dtype=bool)
    ll, g, h, score, cross, H = point(None, beta, phi, single)
    previous = np.full(Y.shape[0], np.inf)  # size of each response's last full step
    for _ in range(max_iter):
        b, p = beta[active], phi[active]
        th = np.exp(p)
        step_b, z = _solve_pair(H, score, cross)
        g_phi = th * g
        h_phi = th * th * h + g_phi
        # The joint Newton step where the Hessian is negative definite: quadratic convergence.
        # In (β, α = 1/θ) where its Schur complement in α is positive and the step keeps α > 0,
        # else in (β, φ) where that one's, -h_φ - cᵀH⁻¹c, is. Most genes of a screen have θ well
        # above their means, where the likelihood is close to quadratic in α and Newton in φ
        # undershoots (Gasperini: 4.7 -> 4.1 passes over the cells per gene). In α = e^{-φ}:
        # g_α = -θ g_φ, h_α = θ² (h_φ + g_φ), c_α = -θ c, so with d = g_φ + cᵀH⁻¹s the step is
        # Δα/α = -ρ, ρ = d / (schur_φ - g_φ), i.e. Δφ = -log(1 - ρ), and Δβ = H⁻¹s + ρ H⁻¹c.
        # Elsewhere the step in β for the current θ and an ascent step of 1 in φ.
        schur = -h_phi - np.einsum("ij,ij->i", cross, z)
        d = g_phi + np.einsum("ij,ij->i", cross, step_b)
        schur_a = schur - g_phi
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = d / schur_a
        in_alpha = (schur_a > 0) & (rho < 1.0)
        joint = in_alpha | (schur > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            step_p = np.where(
                in_alpha,
                -np.log1p(-np.where(in_alpha, rho, 0.0)),
                np.where(joint, d / np.where(joint, schur, 1.0), np.sign(g_phi)),
            )
        step_p = np.clip(step_p, -2.0, 2.0)
        # β's part of the joint step, for the (capped) step in φ: ρ = 1 - e^{-Δφ} in α.
        coupled = np.where(in_alpha, -np.expm1(-step_p), np.where(joint, step_p, 0.0))
        step_b = step_b + coupled[:, None] * z

        new_b = b + step_b
        new_p = np.clip(p + step_p, lo, hi)
        # Converged when the full Newton steps are small (a step shortened by the line search
        # says nothing about the distance to the optimum): that step is the last, taken
        # without evaluating the new point (no line search can matter at that scale).
        size = np.maximum(
            np.abs(step_b).max(axis=1) / (1.0 + np.abs(new_b).max(axis=1)), np.abs(new_p - p)
        )
        # Newton's quadratic convergence: with steps shrinking as size ≈ c · previous², the
        # next one would be c · size². Below tol / 10, this step is the last.
        with np.errstate(divide="ignore", invalid="ignore"):
            rate = size / previous[active] ** 2
        last = (size <= tol) | (joint & (rate * size**2 <= 0.1 * tol) & (size <= np.sqrt(tol)))
        last &= ~single  # a float32 point's step is too inexact to be the last
        if last.any():
            beta[active[last]], phi[active[last]] = new_b[last], new_p[last]
            converged[active[last]] = True
            go = np.flatnonzero(~last)
            if go.size == 0:
                break
            active, ta, Ya = active[go], ta.subset(go), Ya[go]
            Ya32 = None if Ya32 is None else Ya32[go]
            b, p, step_b, step_p, new_b, new_p, ll, size, single = (
                v[go] for v in (b, p, step_b, step_p, new_b, new_p, ll, size, single)
            )
        # ll, g, h, score, cross, H
        new_single = single & (size > _SINGLE_ABOVE)  # once double, always double
        new = point(None, new_b, new_p, new_single)
        new_ll = new[0]
        slack = np.where(single, _SINGLE_LL_SLACK, 1e-12) * np.abs(ll)
        bad = np.flatnonzero(~(new_ll >= ll - slack) & np.isfinite(ll))
        t = np.ones(active.size)
        for _ in range(_MAX_HALVINGS):
            if bad.size == 0:
                break
            t[bad] *= 0.5
            cand_b = b[bad] + t[bad, None] * step_b[bad]
            cand_p = np.clip(p[bad] + t[bad] * step_p[bad], lo, hi)
            cand = point(bad, cand_b, cand_p, new_single[bad])
            ok = cand[0] >= ll[bad] - slack[bad]
            acc = bad[ok]
            new_b[acc], new_p[acc] = cand_b[ok], cand_p[ok]
            for part, cand_part in zip(new, cand, strict=True):
                part[acc] = cand_part[ok]
            bad = bad[~ok]
        # Where no step improves the likelihood the fit is at its (numerical) optimum; from a
        # float32 point that says too little, so the point is evaluated in double and kept on.
        redo, bad = bad[single[bad]], bad[~single[bad]]
        if redo.size:
            again = point(redo, b[redo], p[redo], np.zeros(redo.size, dtype=bool))
            for part, v in zip(new, again, strict=True):
                part[redo] = v
            new_b[redo], new_p[redo], new_single[redo], t[redo] = b[redo], p[redo], False, 0.0
        new_b[bad], new_p[bad] = b[bad], p[bad]
        beta[active], phi[active] = new_b, new_p
        single = new_single
        if not single.any():
            Ya32 = None  # every later point is double
        # A shortened step says nothing of the contraction: 0 makes the next rate infinite
        # (no prediction), so that step is the last only if it is below tol.
        previous[active] = np.where(t == 1.0, size, 0.0)
        # Also converged where no step improves the likelihood.
        converged[active[bad]] = True
        keep = np.ones(active.size, dtype=bool)
        keep[bad] = False
        keep = np.flatnonzero(keep)
        if keep.size == 0:
            break
        if keep.size < active.size:
            active, ta, single, Ya = active[keep], ta.subset(keep), single[keep], Ya[keep]
            Ya32 = None if Ya32 is None else Ya32[keep]
        else:
            keep = slice(None)
        ll, g, h, score, cross, H = (part[keep] for part in new)
    return beta, np.clip(np.exp(phi), bounds[0], bounds[1]), converged


def _response_rows(Y, block, rows=None) -> np.ndarray:
    """Responses ``block`` of ``Y`` as a dense (len(block), n_rows) response-major array."""
    if sp.issparse(Y):
        sub = Y[:, block]
        if rows is not None:
            sub = sub[rows]
        return sub.T.toarray()
    if rows is None:
        return np.ascontiguousarray(Y[:, block].T)
    return np.ascontiguousarray(Y[np.ix_(rows, block)].T)
