"""Saddlepoint p-values of score-sum statistics under the CRT and stratified permutations.

The resampling distributions that sklcrt draws from are known exactly, so for a statistic linear
in the treatment, ``S(x) = Σ_i x_i a_i`` (``a`` from :meth:`BaseStatistic.score_pieces`), the
p-value ``P(S* >= S_obs)`` can be approximated from the cumulant generating function (CGF) of
``S*`` without drawing a single resample.

Bernoulli CRT (:class:`~sklcrt.samplers.BernoulliSampler`)
    ``x*_i ~ Bernoulli(p_i)`` independently, so ``K(t) = Σ_i log(1 - p_i + p_i e^{t a_i})``, and
    the Lugannani-Rice formula on ``K`` gives the tail.

Fixed treated count per stratum (:class:`~sklcrt.samplers.StratifiedPermutationSampler`,
:class:`~sklcrt.samplers.PermutationSampler` with one stratum)
    The uniform choice of ``m_s`` of the ``n_s`` cells of stratum ``s`` is the law of independent
    Bernoulli draws conditioned on the counts ``M_s = m_s``. Skovgaard's double saddlepoint
    approximation of ``P(S >= s | M = m)`` uses the joint CGF
    ``K(t, λ) = Σ_s Σ_{i∈s} log(1 + e^{λ_s + t a_i})``: for each ``t`` the nuisance ``λ_s``
    solves ``Σ_{i∈s} expit(λ_s + t a_i) = m_s``; the Hessian in ``(t, λ)`` is an arrowhead, so
    Newton's steps and the determinant ratio are sums over strata (segment sums, no loop).
    The double saddlepoint is asymptotic in the size of each stratum (with many tiny strata it
    is a Neyman-Scott problem), so strata where it would be poor enter with their *exact* CGF
    ``log(e_k(e^{t a}) / C(n_s, k))`` instead (``e_k`` the elementary symmetric polynomial):
    every stratum with ``min(m_s, n_s - m_s) = 1`` (a log-mean-exp), and every stratum with at
    most ``_SMALL_STRATUM`` cells (a short dynamic programme over its cells' positions,
    vectorised over strata and responses).

Robustness: cells that cannot change (``p_i`` in {0, 1}, strata with no or every cell treated,
stratum code -1) add a constant and are dropped; a null with no variance gives the exact p-value;
the Bernoulli statistic at the edge of its support gets the exact probability of that edge;
near the mean (``|s - E S| < 0.01 sd``) a one-term Edgeworth expansion (the Lugannani-Rice limit)
replaces the 0/0 of the formula; lattice statistics (all the differences that the resampling can
make are integer multiples of a span ``h``) get Daniels' second continuity correction. Where the
approximation cannot be trusted the response's method says why (``"saddlepoint_fallback: ..."``)
and the caller should resample it.
"""

from __future__ import annotations

import numbers

import numpy as np
import scipy.sparse as sp
from scipy import special

from sklcrt.pvalues import ALTERNATIVES

__all__ = ["FALLBACK", "saddlepoint_pvalues"]

FALLBACK = "saddlepoint_fallback"
"""Prefix of the method of every response whose saddlepoint p-value should not be used."""

# Strata with at most this many cells enter with their exact CGF (dynamic programme over cell
# positions: cost ~ this x min(m_s, n_s - m_s) vector operations per evaluation).
_SMALL_STRATUM = 16
# |s - E S| / sd below which the one-term Edgeworth expansion replaces Lugannani-Rice.
_NEAR_MEAN = 1e-2
# Newton: converged when the Newton decrement (≈ 2 (F - min F)) is below this.
_DECREMENT_TOL = 1e-13
_MAX_ITER = 80
_MAX_HALVINGS = 40
# The start is clipped so that |t| max|a| <= this (the quadratic start overshoots far tails).
_START_SCALE = 4.0
# Responses per block: about this many bytes per dense (cells x block) temporary.
_BLOCK_BYTES = 8 * 2**20
# A CGF evaluation takes whole strata about this many bytes (and cells) at a time, so that
# its temporaries stay in cache.
_RUN_BYTES = 2**18
_RUN_MIN_CELLS = 256
# Relative tolerances: lattice detection, support edge, zero variance.
_LATTICE_TOL = 1e-7
_EDGE_TOL = 1e-9
# Screening (see _screen): chunk size, trusted Edgeworth error and range, cancellation guard.
_SCREEN_BYTES = 2**20
_SCREEN_REL_ERR = 1e-2
_SCREEN_Z_MAX = 3.0
_SCREEN_CANCEL = 1e-8
# Lattice detection looks at the first cells first; denominators tried on them.
_LATTICE_SAMPLE = 256
_LATTICE_DENOMINATOR = 12
_LATTICE_PROBE = 8
_LOG_SQRT_2PI = 0.5 * np.log(2.0 * np.pi)
_EXP_SAFE = 700.0  # exp(z) is finite below 709.78
_CRAMER_K = 1.086435  # Cramér's bound on Hermite functions (see _edgeworth2_error)
# |t| max|a| beyond which the support edges are checked (see _tails_at).
_RUNAWAY = 20.0


# ==================================================================== public API
def saddlepoint_pvalues(
    a,
    observed=None,
    *,
    p_hat=None,
    strata=None,
    x=None,
    alternative: str = "two-sided",
    lattice="auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Saddlepoint p-values of ``S = Σ_i x_i a_i`` under the CRT or a stratified permutation.

    Parameters
    ----------
    a : array-like of shape (n_cells,) or (n_cells, n_responses)
        Per-cell score pieces: the statistic of a treatment ``x`` is ``x @ a`` (e.g.
        :meth:`sklcrt.statistics.OLSStatistic.score_pieces`).
    observed : array-like of shape (n_responses,), default=None
        The observed ``S``; ``None`` computes ``x @ a`` (needs ``x``).
    p_hat : array-like of shape (n_cells,), default=None
        Propensities in ``[0, 1]``: the null is independent ``Bernoulli(p_hat_i)`` treatments
        (the CRT of :class:`~sklcrt.samplers.BernoulliSampler`).
    strata : array-like of int of shape (n_cells,), default=None
        Stratum codes ``>= 0``; ``-1`` marks cells that are never treated (ineligible). With
        ``x`` and without ``p_hat``: the null treats ``m_s = Σ_{i∈s} x_i`` cells of each stratum,
        uniformly (:class:`~sklcrt.samplers.StratifiedPermutationSampler`). ``None`` with ``x``
        is one stratum (:class:`~sklcrt.samplers.PermutationSampler`).
    x : array-like of shape (n_cells,), default=None
        The observed 0/1 treatment (fixes the counts per stratum). Not used with ``p_hat``.
    alternative : {"two-sided", "less", "greater"}, default="two-sided"
        ``"greater"``: ``P(S* >= S)``; ``"less"``: ``P(S* <= S)``; ``"two-sided"``:
        ``min(1, 2 min(less, greater))``, the rule of :func:`sklcrt.pvalues.empirical_pvalues`.
    lattice : "auto", None or float, default="auto"
        Span ``h`` of a lattice statistic, for the continuity correction. ``"auto"`` detects it
        per response (the differences the resampling can make are integers, or integer
        multiples of the smallest one); ``None`` never corrects; a number is the span of every
        response.

    Returns
    -------
    pvalues : ndarray of shape (n_responses,)
        NaN where the input is not finite.
    methods : ndarray of object, shape (n_responses,)
        ``"saddlepoint"``; ``"exact"`` where the p-value is exact (a null with no variance, or a
        Bernoulli statistic at the edge of its support); or a string starting with
        :data:`FALLBACK` that says why the approximation is not to be trusted (non-finite
        input, solver failure at the edge of the support): resample those responses.

    Notes
    -----
    The tail is Lugannani-Rice's ``1 - Φ(w) + φ(w) (1/u - 1/w)``; for the conditional null ``w``
    and ``u`` are Skovgaard's (the profile CGF in ``t`` and the determinant ratio of the nuisance
    block in ``u``). Relative errors are small far into the tail (see the benchmark in
    ``benchmarks/bench_saddlepoint.py``); p-values below about 1e-300 underflow to 0.

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import stats
    >>> from sklcrt.saddlepoint import saddlepoint_pvalues
    >>> a = np.r_[np.ones(10), np.zeros(90)]  # S = treated cells among the first 10
    >>> x = np.r_[np.ones(6), np.zeros(94)]  # 6 treated, all of them among the first 10
    >>> p, methods = saddlepoint_pvalues(a, x=x, alternative="greater")
    >>> exact = stats.hypergeom(100, 10, 6).sf(5)
    >>> bool(abs(p[0] / exact - 1) < 0.1), methods.tolist()
    (True, ['saddlepoint'])
    """
    return _saddlepoint_pvalues(
        a, observed, p_hat=p_hat, strata=strata, x=x, alternative=alternative, lattice=lattice
    )


def _saddlepoint_pvalues(
    a,
    observed,
    *,
    p_hat=None,
    strata=None,
    x=None,
    alternative="two-sided",
    lattice="auto",
    compact_setup=None,
):
    """:func:`saddlepoint_pvalues`; ``compact_setup``: the second value of
    ``_compact(_law_setup(p_hat, strata, x))`` where ``a`` and the laws are already in the
    reading order (its first value), so that a caller which needed that order does not make
    the setup twice."""
    A, s_obs, kind, codes, p, lattice = _check_inputs(
        a, observed, p_hat, strata, x, lattice, alternative
    )
    G = A.shape[1]
    pvalues = np.full(G, np.nan)
    methods = np.full(G, "saddlepoint", dtype=object)
    cols = np.arange(G)
    model_cls = _Bernoulli if kind == "bernoulli" else _Conditional
    if compact_setup is None:
        setup = _bernoulli_setup(p) if kind == "bernoulli" else _conditional_setup(codes, x)
        # Only the cells that can change, or that add a constant, are read again: one gather.
        rows, setup = _compact(setup)
    else:
        rows, setup = np.arange(A.shape[0]), compact_setup
    if not (rows.size == A.shape[0] and isinstance(_consecutive(rows), slice)):
        A = A[rows]  # else the pieces are already in this order: no copy
    # One pass over the cells for every response: exact null cumulants, lattice spans and the
    # two-term Edgeworth tails where the bound on their next terms allows (most null pairs);
    # the others get the saddlepoint.
    screen = _screen(kind, setup, A, s_obs, lattice)
    easy = cols[screen["easy"]]
    pvalues[easy] = _two_sided(screen["upper"], screen["lower"], alternative)[screen["easy"]]
    spans = np.zeros(G)
    spans[cols] = screen["span"]
    cols = cols[~screen["easy"]]
    n_used = setup["n_cells"]
    k = max(1, _BLOCK_BYTES // (8 * max(n_used, 1)))
    for start in range(0, cols.size, k):
        block = cols[start : start + k]
        # Response-major (responses x cells): a response's cells are contiguous, so the
        # columns still being solved are a cheap row gather and every sum runs along a row.
        Ab = np.ascontiguousarray(A[:, block].T)
        finite = np.all(np.isfinite(Ab), axis=1) & np.isfinite(s_obs[block])
        methods[block[~finite]] = f"{FALLBACK}: non-finite score pieces or observed statistic"
        if not finite.all():
            block, Ab = block[finite], Ab[finite]
            if block.size == 0:
                continue
        model = model_cls(setup, Ab)
        pv, me = _tails(model, s_obs[block] - model.mean, spans[block], alternative)
        pvalues[block], methods[block] = pv, me
    return pvalues, methods


# ==================================================================== validation
def _check_inputs(a, observed, p_hat, strata, x, lattice, alternative):
    if not isinstance(alternative, str) or alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {list(ALTERNATIVES)}, got {alternative!r}.")
    A = np.asarray(a, dtype=np.float64)
    if A.ndim == 1:
        A = A[:, None]
    if A.ndim != 2 or A.shape[0] == 0 or A.shape[1] == 0:
        raise ValueError(f"a must be a non-empty (n_cells, n_responses) array, got {A.shape}.")
    n = A.shape[0]

    def vector(v, name, dtype=np.float64):
        arr = np.asarray(v)
        if arr.ndim != 1 or arr.size != n:
            raise ValueError(f"{name} must have shape ({n},) like the rows of a, got {arr.shape}.")
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}.")
        return arr.astype(dtype)

    if p_hat is not None:
        if strata is not None or x is not None:
            raise ValueError(
                "pass either p_hat (Bernoulli CRT) or x with optional strata (fixed treated "
                "counts per stratum), not both."
            )
        p = vector(p_hat, "p_hat")
        if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
            raise ValueError("p_hat must hold finite propensities in [0, 1].")
        kind, codes, xv = "bernoulli", None, None
    else:
        if x is None:
            raise ValueError(
                "saddlepoint_pvalues needs p_hat (Bernoulli CRT) or the observed treatment x "
                "(stratified or plain permutation)."
            )
        xv = vector(x, "x")
        if not np.all((xv == 0) | (xv == 1)):
            raise ValueError("x must be a 0/1 treatment vector.")
        if strata is None:
            codes = np.zeros(n, dtype=np.int64)
        else:
            codes = vector(strata, "strata")
            if not np.all(codes == np.round(codes)) or codes.min() < -1:
                raise ValueError("strata must hold integer codes >= 0 (or -1: never treated).")
            codes = codes.astype(np.int64)
        if np.any((codes < 0) & (xv == 1)):
            raise ValueError("a treated cell has stratum -1 (never treated); fix the strata.")
        kind, p = "conditional", None
    if observed is None:
        if xv is None:
            raise ValueError("observed is required with p_hat (the observed S = x @ a).")
        s_obs = xv @ A
    else:
        s_obs = np.atleast_1d(np.asarray(observed, dtype=np.float64))
        if s_obs.shape != (A.shape[1],):
            raise ValueError(
                f"observed must have shape ({A.shape[1]},), one per column of a; got {s_obs.shape}."
            )
    if not (lattice == "auto" or lattice is None):
        if (
            isinstance(lattice, bool)
            or not isinstance(lattice, numbers.Real)
            or not np.isfinite(lattice)
            or lattice < 0
        ):
            raise ValueError(f"lattice must be 'auto', None or a span >= 0, got {lattice!r}.")
        lattice = float(lattice)
    return A, s_obs, kind, codes, p, lattice


# ==================================================================== numerics
def _logistic_parts(z, out=None):
    """``softplus(z)``, ``expit(z)`` and ``expit(z) (1 - expit(z))`` from one exp.

    ``out``: a scratch array like ``z`` (overwritten, returned as ``softplus``). From
    ``e = exp(z)``: ``expit = e / (1 + e)``, its derivative ``expit / (1 + e)`` and
    ``softplus = log1p(e)``, each to a few ulp (``e`` underflowing to 0 gives the limits);
    only where ``e`` could overflow (``z > _EXP_SAFE``, a saddlepoint running off to an edge)
    the softplus is written as ``z + log1p(e^-z)``.
    """
    if z.size and z.max() > _EXP_SAFE:
        e = np.abs(z, out=out)
        np.negative(e, out=e)
        np.exp(e, out=e)  # exp(-|z|)
        inv = e + 1.0
        np.reciprocal(inv, out=inv)
        pi = e * inv  # expit(-|z|)
        v = pi * inv
        np.copyto(pi, inv, where=z >= 0)
        sp = np.log1p(e, out=e)
        sp += np.maximum(z, 0.0, out=inv)
        return sp, pi, v
    e = np.exp(z, out=out)
    inv = e + 1.0
    np.reciprocal(inv, out=inv)
    pi = e * inv
    v = np.multiply(pi, inv, out=inv)
    return np.log1p(e, out=e), pi, v


def _segment_sum(values, starts):
    """Sums over consecutive segments (rows ``starts[j]:starts[j + 1]``); no empty segment."""
    return np.add.reduceat(values, starts, axis=0)


def _gcd_span(d):
    """Per column: the lattice span of the values ``d`` (integers, or integer multiples of the
    smallest nonzero |d|), 0 where they are not on a lattice (or all zero)."""
    span = np.zeros(d.shape[1])
    if d.shape[0] == 0:
        return span
    absd = np.abs(d)
    top = absd.max(axis=0)
    for scale_by_min in (False, True):
        todo = span == 0
        if not todo.any():
            break
        dd = d[:, todo]
        if scale_by_min:
            nz = np.where(np.abs(dd) > _LATTICE_TOL * top[todo], np.abs(dd), np.inf)
            h0 = nz.min(axis=0)
            h0[~np.isfinite(h0)] = 0.0
            with np.errstate(invalid="ignore", divide="ignore"):
                dd = dd / np.where(h0 > 0, h0, 1.0)
        else:
            h0 = np.ones(dd.shape[1])
        r = np.rint(dd)
        ok = np.all(np.abs(dd - r) <= _LATTICE_TOL * np.maximum(1.0, np.abs(dd)), axis=0)
        ok &= np.all(np.abs(r) < 2.0**40, axis=0) & (h0 > 0)
        g = np.gcd.reduce(np.where(ok, r, 0.0).astype(np.int64), axis=0).astype(np.float64)
        idx = np.flatnonzero(todo)
        span[idx] = np.where(ok, g * h0, 0.0)
    return span


def _two_sided(upper, lower, alternative):
    if alternative == "greater":
        return upper
    if alternative == "less":
        return lower
    return np.minimum(1.0, 2.0 * np.minimum(upper, lower))


def _consecutive(idx):
    """``idx`` as a slice where it is a consecutive increasing range (indexing by it is then a
    view, not a copy), else ``idx`` itself."""
    if idx.size and idx[-1] - idx[0] + 1 == idx.size and np.all(np.diff(idx) == 1):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return idx


def _chunks(rows, n_cols):
    """``(r0, r1, index)``: positions ``r0:r1`` of ``rows`` and the index of their rows (a
    slice where ``rows`` is consecutive), about ``_SCREEN_BYTES`` per (rows x n_cols) chunk
    (cache-resident)."""
    step = max(16, _SCREEN_BYTES // (8 * max(n_cols, 1)))
    whole = _consecutive(rows)
    out = []
    for r0 in range(0, rows.size, step):
        r1 = min(r0 + step, rows.size)
        if isinstance(whole, slice):
            out.append((r0, r1, slice(whole.start + r0, whole.start + r1)))
        else:
            out.append((r0, r1, rows[r0:r1]))
    return out


def _screen(kind, setup, A, s_obs, lattice):
    """Exact null cumulants, lattice spans and trusted Edgeworth tails of every column.

    One chunked pass over the cells that can change (power sums per stratum, or weighted
    sums for the CRT): the exact mean and second to fourth cumulants of ``S*`` (for draws
    without replacement from the inclusion probabilities, see :func:`_srs_kappa4_weights`),
    and a bound on ``|κ₅|``. The two-term Edgeworth expansion (with the
    continuity correction on a lattice) is used (``easy``) where the size of its next terms
    (:func:`_edgeworth2_error`) is below ``_SCREEN_REL_ERR`` of the smaller tail and
    ``|z| <= _SCREEN_Z_MAX``. Everything else (and any column the pass cannot
    vouch for: non-finite, cancelling sums, no variance) is left to the saddlepoint solver.
    """
    k = A.shape[1]
    if kind == "bernoulli":
        rows = setup["free"]
        pf = setup["p"]
        q = pf * (1.0 - pf)
        w3 = q * (1.0 - 2.0 * pf)
        w4 = q * (1.0 - 6.0 * q)
        mean = A[setup["ones"]].sum(axis=0)
        var, kappa3, kappa4, abs5 = np.zeros(k), np.zeros(k), np.zeros(k), np.zeros(k)
        for r0, r1, index in _chunks(rows, k):
            X = A[index]
            mean += pf[r0:r1] @ X
            X2 = X * X
            var += q[r0:r1] @ X2
            X3 = X2 * X
            kappa3 += w3[r0:r1] @ X3
            X2 *= X2
            kappa4 += w4[r0:r1] @ X2
            X3 = np.abs(X, out=X3)
            X3 *= X2
            abs5 += q[r0:r1] @ X3  # bounds |κ₅|: |κ₅(Bernoulli)| <= q
        gross = var
        sample = A[rows[:_LATTICE_SAMPLE]]
    else:
        act = setup["active"]
        rows, codes = act["cells"], act["codes"]
        n = np.bincount(codes).astype(np.float64)
        m = act["m"].astype(np.float64)
        S = n.size
        P1, P2, P3 = np.zeros((S, k)), np.zeros((S, k)), np.zeros((S, k))
        P4 = np.zeros((S, k))
        Pabs = np.zeros((S, k))
        segments = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])  # strata's first cells
        chunks = _chunks(rows, k)
        buf2, buf3 = (np.empty((chunks[0][1] if chunks else 0, k)) for _ in range(2))
        for r0, r1, index in chunks:
            X = A[index]
            lo, hi = np.searchsorted(segments, [r0 + 1, r1])  # the strata starting inside
            starts = np.concatenate(([0], segments[lo:hi] - r0))
            ids = codes[r0 + starts]
            # Sums over each stratum's rows as a product with their 0/1 indicator matrix:
            # 3-4x faster than np.add.reduceat along the rows (the same sums, added in order).
            one = sp.csr_matrix(
                (np.ones(r1 - r0), np.arange(r1 - r0), np.append(starts, r1 - r0)),
                shape=(starts.size, r1 - r0),
            )
            X2 = np.multiply(X, X, out=buf2[: r1 - r0])
            P1[ids] += one @ X
            P2[ids] += one @ X2
            X3 = np.multiply(X2, X, out=buf3[: r1 - r0])
            P3[ids] += one @ X3
            X2 *= X2
            P4[ids] += one @ X2
            X3 = np.abs(X, out=X3)
            Pabs[ids] = np.maximum(Pabs[ids], np.maximum.reduceat(X3, starts, axis=0))
        mean = A[setup["full_cells"]].sum(axis=0)
        if S:
            abar = P1 / n[:, None]
            mean = mean + m @ abar
            c2 = m * (n - m) / (n * (n - 1.0))
            with np.errstate(invalid="ignore", divide="ignore"):
                c3 = np.where(n > 2, m * (n - m) * (n - 2.0 * m) / (n * (n - 1.0) * (n - 2.0)), 0)
            p2c = P2 - P1 * abar
            var = c2 @ p2c
            kappa3 = c3 @ (P3 - 3.0 * abar * P2 + 2.0 * n[:, None] * abar**3)
            p4c = P4 - 4.0 * abar * P3 + 6.0 * abar**2 * P2 - 3.0 * n[:, None] * abar**4
            c4a, c4b = _srs_kappa4_weights(n, m)
            kappa4 = c4a @ p4c + c4b @ (p2c * p2c)
            gross = c2 @ P2
            # Σ_s f_s (1 - f_s) d_s Σ_{i∈s} d_i⁴, with d_s = max |a| + |ā_s| at least the
            # stratum's largest centred piece, bounds the same sum of |d|⁵ (the Bernoulli
            # bound with f_s = m_s / n_s)
            d_s = Pabs + np.abs(abar)
            abs5 = np.einsum("s,sk,sk->k", m * (n - m) / (n * n), d_s, p4c)
        else:
            var = kappa3 = kappa4 = gross = abs5 = np.zeros(k)
        sample = A[rows[:_LATTICE_SAMPLE]]
        c = codes[:_LATTICE_SAMPLE]
        starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
        sample = sample - np.repeat(sample[starts], np.diff(np.r_[starts, c.size]), axis=0)
    span = _screen_spans(A, rows, codes if kind != "bernoulli" else None, sample, lattice)

    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        sd = np.sqrt(var)
        s_c = s_obs - mean
        gamma = kappa3 / (var * sd)
        excess = kappa4 / (var * var)
        kappa5_bound = abs5 / (var * var * sd)  # >= |κ₅| / σ⁵
        lat2 = (span / sd) ** 2
        z_up = (s_c - 0.5 * span) / sd  # continuity correction (span 0: none)
        z_lo = (s_c + 0.5 * span) / sd
        upper = _edgeworth2_upper(z_up, gamma, excess)
        lower = _edgeworth2_upper(-z_lo, -gamma, excess)
        err = np.maximum(
            _edgeworth2_error(z_up, gamma, excess, kappa5_bound, lat2),
            _edgeworth2_error(z_lo, gamma, excess, kappa5_bound, lat2),
        )
        easy = (
            np.isfinite(err)
            & np.isfinite(mean)
            & np.isfinite(s_c)
            & (var > _SCREEN_CANCEL * gross)
            & (np.maximum(np.abs(z_up), np.abs(z_lo)) <= _SCREEN_Z_MAX)
            & (err <= _SCREEN_REL_ERR * np.minimum(upper, lower))
        )
    return {"easy": easy, "upper": upper, "lower": lower, "span": span}


def _srs_kappa4_weights(n, m):
    """``κ₄`` of the sum of ``m`` of ``n`` centred values ``d`` drawn without replacement is
    ``a Σ d⁴ + b (Σ d²)²`` (per stratum); returns ``(a, b)``.

    With ``π_r = m^(r) / n^(r)`` (falling factorials; 0 where ``r > n``), the probability that
    ``r`` given cells are all drawn, and ``Σ d = 0``, the fourth moment is
    ``(π₁ - 7π₂ + 12π₃ - 6π₄) Σd⁴ + 3(π₂ - 2π₃ + π₄) (Σd²)²`` and the variance
    ``(π₁ - π₂) Σd²``; with ``n`` large, ``π_r -> f^r`` and ``a`` is the Bernoulli ``κ₄``.
    """
    pi = [np.ones_like(n)]
    for r in range(4):
        with np.errstate(invalid="ignore", divide="ignore"):
            pi.append(np.where(n > r, pi[-1] * np.maximum(m - r, 0.0) / (n - r), 0.0))
    _, p1, p2, p3, p4 = pi
    a = p1 - 7.0 * p2 + 12.0 * p3 - 6.0 * p4
    b = 3.0 * (p2 - 2.0 * p3 + p4) - 3.0 * (p1 - p2) ** 2
    return a, b


def _edgeworth2_upper(z, gamma, excess):
    """Two-term Edgeworth ``P(S >= s)``, ``z = (s - E S) / sd``, with the exact standardised
    third and fourth cumulants ``gamma`` and ``excess``."""
    z2 = z * z
    he2, he3, he5 = z2 - 1.0, z * (z2 - 3.0), z * (z2 * z2 - 10.0 * z2 + 15.0)
    phi = np.exp(-0.5 * z2 - _LOG_SQRT_2PI)
    return special.ndtr(-z) + phi * (
        gamma / 6.0 * he2 + excess / 24.0 * he3 + gamma * gamma / 72.0 * he5
    )


def _edgeworth2_error(z, gamma, excess, kappa5, lat2):
    """The size of the terms after the two-term Edgeworth expansion.

    ``ρ₅/120 |He₄ φ| + |γ κ₄|/144 |He₆ φ| + |γ|³/1296 |He₈ φ| + φ(z) (h/σ)²/24 (1 + |z|)``
    at ``z``, with ``ρ₅ >= |κ₅| / σ⁵`` a bound on the standardised fifth cumulant (``Σ q |a|⁵
    / σ⁵`` for independent Bernoulli terms; the same form with ``q = f (1 - f)`` per stratum
    for draws without replacement) and ``|He_n(z) φ(z)|`` bounded without credit for the zeros
    of ``He_n``: by the absolute coefficients, or by Cramér's inequality ``|He_n(z)| <=
    k √(n!) e^{z²/4}`` (``k = 1.086435``, Abramowitz & Stegun 22.14.17), whichever is smaller.
    """
    az = np.abs(z)
    z2 = az * az
    phi = np.exp(-0.5 * z2 - _LOG_SQRT_2PI)
    cramer = _CRAMER_K * np.exp(-0.25 * z2 - _LOG_SQRT_2PI)
    he4 = np.minimum(phi * (z2 * z2 + 6.0 * z2 + 3.0), cramer * np.sqrt(24.0))
    he6 = np.minimum(phi * (z2**3 + 15.0 * z2 * z2 + 45.0 * z2 + 15.0), cramer * np.sqrt(720.0))
    he8 = np.minimum(
        phi * (z2**4 + 28.0 * z2**3 + 210.0 * z2 * z2 + 420.0 * z2 + 105.0),
        cramer * np.sqrt(40320.0),
    )
    ag = np.abs(gamma)
    return (
        kappa5 / 120.0 * he4
        + ag * np.abs(excess) / 144.0 * he6
        + ag**3 / 1296.0 * he8
        + phi * lat2 / 24.0 * (1.0 + az)
    )


def _screen_spans(A, rows, codes, sample, lattice):
    """Lattice spans per column: a cheap check on the first cells, the full one where the first
    cells could be on a lattice (integers, or integer multiples of the smallest difference
    over up to ``_LATTICE_DENOMINATOR``)."""
    k = A.shape[1]
    if lattice is None:
        return np.zeros(k)
    if lattice != "auto":
        return np.full(k, float(lattice))
    span = np.zeros(k)
    maybe = _maybe_lattice(sample)
    if maybe.any() and rows.size:
        full = A[np.ix_(rows, np.flatnonzero(maybe))]
        if codes is not None:
            starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
            full = full - np.repeat(full[starts], np.diff(np.r_[starts, codes.size]), axis=0)
        span[maybe] = _gcd_span(full)
    return span


def _maybe_lattice(d):
    """Per column: could values containing ``d`` lie on a lattice? (False: certainly not.)"""
    if d.shape[0] == 0:
        return np.ones(d.shape[1], dtype=bool)
    absd = np.abs(d)
    top = absd.max(axis=0)
    h0 = np.where(absd > _LATTICE_TOL * top, absd, np.inf).min(axis=0)  # smallest nonzero
    # The same grids on the first rows first: continuous values fail there.
    maybe = _on_a_grid(d[:_LATTICE_PROBE], h0)
    if maybe.any():
        maybe[maybe] = _on_a_grid(d[:, maybe], h0[maybe])
    return maybe


def _on_a_grid(d, h0):
    """Per column: are all values integers, or integer multiples of ``h0 / den`` for some
    ``den <= _LATTICE_DENOMINATOR``?"""

    def on_grid(dd, axis):
        r = np.rint(dd)
        return np.all(np.abs(dd - r) <= _LATTICE_TOL * np.maximum(1.0, np.abs(dd)), axis=axis)

    ok = on_grid(d, 0)
    idx = np.flatnonzero(~ok & np.isfinite(h0))
    if idx.size and d.shape[0] <= _LATTICE_PROBE:  # a few rows: every grid at once
        scale = np.arange(1.0, _LATTICE_DENOMINATOR + 1.0)[:, None] / h0[idx]
        ok[idx] = on_grid(d[:, idx] * scale[:, None, :], 1).any(axis=0)
        return ok
    for den in range(1, _LATTICE_DENOMINATOR + 1):
        if idx.size == 0:
            break
        on = on_grid(d[:, idx] * (den / h0[idx]), 0)
        ok[idx[on]] = True
        idx = idx[~on]
    return ok


class _Bernoulli:
    """CGF of ``Σ x_i a_i``, ``x_i ~ Bernoulli(p_i)`` independent (free cells only)."""

    n_nuisance = 0

    def __init__(self, setup, AT):
        # AT: response-major pieces (responses x cells); self.A likewise, free cells only.
        free, self.theta, pf = setup["free"], setup["theta"], setup["p"]
        self.A = np.ascontiguousarray(_take_cells(AT, free))
        self.sp0 = setup["sp0"]
        self.pf = pf
        offset = _take_cells(AT, setup["ones"]).sum(axis=1)
        pa = self.A @ pf
        self.mean = offset + pa
        q = pf * (1.0 - pf)
        self.var = (self.A * self.A) @ q
        self.kappa3 = self.A**3 @ (q * (1.0 - 2.0 * pf))
        self.scale = np.abs(self.A).max(axis=1, initial=0.0)
        self.magnitude = np.maximum(self.scale, np.abs(AT).max(axis=1, initial=0.0))
        self.n_cells = self.A.shape[1]
        # Support: S - E S ranges over [Σ min(a, 0) - Σ p a, Σ max(a, 0) - Σ p a].
        self.upper_edge = np.maximum(self.A, 0.0).sum(axis=1) - pa
        self.lower_edge = np.minimum(self.A, 0.0).sum(axis=1) - pa

    def support_edges(self, cols):
        return self.lower_edge[cols], self.upper_edge[cols]

    def start(self, s_c):
        return np.zeros((0, s_c.size))

    def evaluate(self, t, lam, cols=None):
        A = self.A if cols is None else self.A[cols]
        z = A * t[:, None]
        zt = z.copy()  # t a
        z += self.theta
        sp, pi, v = _logistic_parts(z)
        # K(t) - t E S as a sum of non-negative Bregman terms (no cancellation of large sums).
        sp -= self.sp0
        zt *= self.pf
        sp -= zt
        Av = np.multiply(A, v, out=v)
        return {
            "K": sp.sum(axis=1),
            "gt": np.einsum("ij,ij->i", A, pi) - A @ self.pf,
            "D": np.einsum("ij,ij->i", Av, A),
            "log_ratio": np.zeros(t.size),
        }

    def edge_logp(self, side):
        """log P(S = upper edge) (side=+1) or P(S = lower edge) (side=-1), per column."""
        A = side * self.A
        lp = np.log(np.where(self.pf > 0, self.pf, 1.0))
        lq = np.log1p(-np.where(self.pf < 1, self.pf, 0.0))
        return np.where(A > 0, lp, 0.0).sum(1) + np.where(A < 0, lq, 0.0).sum(1)


def _bernoulli_setup(p):
    free = np.flatnonzero((p > 0) & (p < 1))
    pf = p[free]
    theta = np.log(pf) - np.log1p(-pf)
    sp0 = -np.log1p(-pf)  # softplus(logit p)
    return {
        "free": free,
        "ones": np.flatnonzero(p == 1),
        "p": pf,
        "theta": theta,
        "sp0": sp0,
        "n_cells": int(free.size),
    }


def _conditional_setup(codes, x):
    n_strata = int(codes.max()) + 1 if codes.size and codes.max() >= 0 else 0
    inside = codes >= 0
    sizes = np.bincount(codes[inside], minlength=n_strata)
    treated = np.bincount(codes[inside], weights=x[inside], minlength=n_strata).astype(np.int64)
    full = np.flatnonzero((treated == sizes) & (sizes > 0))
    active = (treated > 0) & (treated < sizes)
    k_min = np.minimum(treated, sizes - treated)
    # Three classes of active strata: exact log-mean-exp (k = 1), exact DP (small), Skovgaard.
    cls = np.full(max(n_strata, 1), -1)
    cls[active & (k_min == 1)] = 0
    cls[active & (k_min > 1) & (sizes <= _SMALL_STRATUM)] = 1
    cls[active & (k_min > 1) & (sizes > _SMALL_STRATUM)] = 2
    cell_cls = np.where(inside, cls[np.where(inside, codes, 0)], -1)
    out = {"full_cells": np.flatnonzero(np.isin(codes, full) & inside)}
    # Stable sorts of 16-bit codes are radix sorts (O(n)); the same order as of the codes.
    sort_codes = codes.astype(np.int16) if n_strata <= np.iinfo(np.int16).max else codes
    n_used = 0
    for c, name in ((0, "one"), (1, "dp"), (2, "big")):
        strata_c = np.flatnonzero(cls == c)
        cells = np.flatnonzero(cell_cls == c)
        cells = cells[np.argsort(sort_codes[cells], kind="stable")]
        n_s, m_s = sizes[strata_c], treated[strata_c]
        out[name] = {
            "cells": cells,
            "starts": np.concatenate(([0], np.cumsum(n_s)[:-1])).astype(np.int64),
            "n": n_s.astype(np.float64),
            "m": m_s.astype(np.float64),
            "count": int(strata_c.size),
        }
        n_used += cells.size
    out["n_cells"] = n_used
    # The active cells in the order of the parts (each stratum's cells contiguous), which
    # _compact places first: the screen reads them as slices.
    act = np.concatenate([out[name]["cells"] for name in ("one", "dp", "big")])
    # np.unique(codes[act], return_inverse=True) without its sort (the codes are small).
    present = np.zeros(max(n_strata, 1), dtype=bool)
    present[codes[act]] = True
    rank = np.cumsum(present) - 1
    out["active"] = {"cells": act, "codes": rank[codes[act]], "m": treated[present]}
    return out


def _law_setup(p_hat=None, strata=None, x=None) -> dict:
    """The setup :func:`saddlepoint_pvalues` makes of these laws (unchecked).

    ``_compact(setup)[0]`` are the rows it reads, in the order it reads them: pieces (and laws)
    given in this order and restricted to these rows are read in place, with no copy.
    """
    if p_hat is not None:
        return _bernoulli_setup(np.asarray(p_hat, dtype=np.float64))
    x = np.asarray(x, dtype=np.float64)
    codes = np.zeros(x.size, np.int64) if strata is None else np.asarray(strata, np.int64)
    return _conditional_setup(codes, x)


def _compact(setup):
    """The rows a setup reads, and the setup re-indexed on them (positions in ``rows``).

    The rows are the disjoint cell sets of the setup one after the other (CRT: the free cells,
    then those always treated; permutation: the cells of each class of active strata, then
    those of the strata where every cell is treated), so that each set is a contiguous range
    of positions (a slice, no gather, in the models).
    """
    if "free" in setup:
        order = [("free",), ("ones",)]
        others = []
    else:
        order = [(name, "cells") for name in ("one", "dp", "big")] + [("full_cells",)]
        others = [("active", "cells")]

    def get(path):
        d = setup
        for key in path[:-1]:
            d = d[key]
        return d[path[-1]]

    rows = np.concatenate([get(path) for path in order]).astype(np.int64)
    inverse = np.full(int(rows.max()) + 1 if rows.size else 0, -1, dtype=np.int64)
    inverse[rows] = np.arange(rows.size)
    out = {key: (dict(val) if isinstance(val, dict) else val) for key, val in setup.items()}
    for path in order + others:
        d = out
        for key in path[:-1]:
            d = d[key]
        d[path[-1]] = inverse[get(path)]
    return rows, out


def _take_cells(AT, idx):
    """``AT[:, idx]``, a view where ``idx`` is a contiguous increasing range."""
    return AT[:, _consecutive(idx)]


class _Conditional:
    """Joint CGF of ``(S, M)`` with exact strata folded in (see the module docstring)."""

    def __init__(self, setup, AT):
        # AT: response-major pieces (responses x cells); every part is kept response-major.
        self.offset = _take_cells(AT, setup["full_cells"]).sum(axis=1)
        k = AT.shape[0]
        self.magnitude = np.abs(AT).max(axis=1, initial=0.0)
        self.n_cells = setup["n_cells"]
        self.mean = self.offset.copy()
        self.var = np.zeros(k)
        self.kappa3 = np.zeros(k)
        self.scale = np.zeros(k)
        self.parts = {}
        for name in ("one", "dp", "big"):
            info = setup[name]
            if info["count"] == 0:
                continue
            Ab = _take_cells(AT, info["cells"])
            n, m, starts = info["n"], info["m"], info["starts"]
            abar = np.add.reduceat(Ab, starts, axis=1) / n  # (responses, strata)
            centred = Ab - np.repeat(abar, n.astype(np.int64), axis=1)
            self.mean += abar @ m
            fm, fn = m * (n - m), n
            c2 = fm / (fn * (fn - 1.0))
            with np.errstate(invalid="ignore", divide="ignore"):
                c3 = np.where(n > 2, fm * (n - 2.0 * m) / (fn * (fn - 1.0) * (fn - 2.0)), 0.0)
            sq = centred * centred
            self.var += np.add.reduceat(sq, starts, axis=1) @ c2
            sq *= centred
            self.kappa3 += np.add.reduceat(sq, starts, axis=1) @ c3
            self.scale = np.maximum(self.scale, np.abs(centred).max(axis=1))
            self.parts[name] = self._part(name, centred, n, m, starts)
        big = self.parts.get("big")
        self.n_nuisance = 0 if big is None else big["n"].size
        self.upper_edge = self.lower_edge = None
        self._active = setup["active"]
        self._AT = AT

    def support_edges(self, cols):
        """Smallest and largest ``S - E S`` that the resampling can make, for columns ``cols``.

        The sums of the ``m_s`` smallest and largest pieces of every stratum (a sort per
        column: called only for the few columns whose saddlepoint runs off to the edge).
        """
        codes, m = self._active["codes"], self._active["m"]
        n_s = np.bincount(codes)
        # Ranks within each stratum once the cells are sorted by stratum (then by value).
        by_stratum = np.sort(codes)
        starts = np.concatenate(([0], np.cumsum(n_s)[:-1]))
        rank = np.arange(codes.size) - starts[by_stratum]
        low, high = rank < m[by_stratum], rank >= (n_s - m)[by_stratum]
        lower, upper = np.zeros(cols.size), np.zeros(cols.size)
        for j, c in enumerate(cols):  # loop over the flagged columns, not over cells
            vals = self._AT[c, self._active["cells"]]
            sorted_vals = vals[np.lexsort((vals, codes))]  # by stratum, then increasing value
            lower[j] = sorted_vals[low].sum()
            upper[j] = sorted_vals[high].sum()
        mean_active = self.mean[cols] - self.offset[cols]
        return lower - mean_active, upper - mean_active

    @staticmethod
    def _part(name, centred, n, m, starts):
        # centred: response-major (responses x cells of the part)
        if name == "one":
            # Choosing one cell (or leaving one out, values negated): log-mean-exp.
            sign = np.where(m == 1, 1.0, -1.0)
            vals = centred * np.repeat(sign, n.astype(np.int64))
            return {"vals": vals, "starts": starts, "logn": np.log(n), "n": n}
        if name == "dp":
            # Padded (responses, strata, positions) values of the k = min(m, n - m) chosen cells.
            ni = n.astype(np.int64)
            kk = np.minimum(m, n - m).astype(np.int64)
            sign = np.where(m <= n - m, 1.0, -1.0)
            n_pos = int(ni.max())
            pos = np.arange(ni.sum()) - np.repeat(starts, ni)
            strat = np.repeat(np.arange(ni.size), ni)
            vals = np.zeros((centred.shape[0], ni.size, n_pos))
            vals[:, strat, pos] = centred * sign[strat]
            mask = np.zeros((ni.size, n_pos), dtype=bool)
            mask[strat, pos] = True
            log_binom = (
                special.gammaln(n + 1) - special.gammaln(kk + 1) - special.gammaln(n - kk + 1)
            )
            return {"vals": vals, "mask": mask, "k": kk, "log_binom": log_binom}
        pi0 = m / n
        lam0 = np.log(pi0) - np.log1p(-pi0)
        return {
            "A": centred,
            "sumA": np.add.reduceat(centred, starts, axis=1),  # 0 up to rounding
            "starts": starts,
            "n": n,
            "ni": n.astype(np.int64),
            "m": m,
            "pi0": pi0,
            "lam0": lam0,
            "sp0": np.logaddexp(0.0, lam0),
            "logV0": np.log(n * pi0 * (1.0 - pi0)),
        }

    def start(self, s_c):
        big = self.parts.get("big")
        if big is None:
            return np.zeros((0, s_c.size))
        return np.repeat(big["lam0"][:, None], s_c.size, axis=1)

    def evaluate(self, t, lam, cols=None):
        k = t.size
        out = {"K": np.zeros(k), "gt": np.zeros(k), "D": np.zeros(k), "log_ratio": np.zeros(k)}

        def sub(values):  # responses are the first axis: a row gather
            return values if cols is None else values[cols]

        tc = t[:, None]
        one = self.parts.get("one")
        if one is not None:
            vals = sub(one["vals"])
            ni = one["n"].astype(np.int64)
            z = vals * tc
            zmax = np.maximum.reduceat(z, one["starts"], axis=1)
            z -= np.repeat(zmax, ni, axis=1)
            e = np.exp(z, out=z)
            s0 = np.add.reduceat(e, one["starts"], axis=1)
            e *= vals
            s1 = np.add.reduceat(e, one["starts"], axis=1)
            e *= vals
            s2 = np.add.reduceat(e, one["starts"], axis=1)
            mean = s1 / s0
            out["K"] += (np.log(s0) + zmax - one["logn"]).sum(1)
            out["gt"] += mean.sum(1)
            out["D"] += (s2 / s0 - mean * mean).sum(1)
        dp = self.parts.get("dp")
        if dp is not None:
            vals = np.moveaxis(sub(dp["vals"]), 0, -1)  # (strata, positions, responses)
            K, g, h = _dp_cgf(dict(dp, vals=vals), t)
            out["K"] += K
            out["gt"] += g
            out["D"] += h
        big = self.parts.get("big")
        if big is not None:
            lamT = lam.T  # (responses, strata)
            S = lamT.shape[1]
            sp_s, pi_s, V, C = (np.empty((k, S)) for _ in range(4))
            gt, D = np.zeros(k), np.zeros(k)
            # Whole strata a cache-sized run of cells at a time: every per-stratum sum is the
            # same as over all cells at once; only the totals over strata are added up by run.
            for c0, c1, s0, s1, starts in _runs(big["starts"], big["A"].shape[1], k):
                Ab = big["A"][:, c0:c1] if cols is None else big["A"][cols, c0:c1]
                z = np.repeat(lamT[:, s0:s1], big["ni"][s0:s1], axis=1)
                ta = Ab * tc
                z += ta
                sp, pi, v = _logistic_parts(z, out=ta)
                sp_s[:, s0:s1] = np.add.reduceat(sp, starts, axis=1)
                gt += np.einsum("ij,ij->i", Ab, pi)
                pi_s[:, s0:s1] = np.add.reduceat(pi, starts, axis=1)
                V[:, s0:s1] = np.add.reduceat(v, starts, axis=1)
                Av = np.multiply(Ab, v, out=v)
                D += np.einsum("ij,ij->i", Av, Ab)
                C[:, s0:s1] = np.add.reduceat(Av, starts, axis=1)
            # K(t, λ) - K(0, λ0) - t·0 - m·(λ - λ0), per stratum from the sum of softplus:
            # Σ_i z_i = n λ + t Σ_i a_i (the pieces are centred in each stratum).
            sp_s -= big["n"] * big["sp0"]
            sp_s -= big["m"] * (lamT - big["lam0"])
            sp_s -= big["pi0"] * sub(big["sumA"]) * tc
            out["K"] += sp_s.sum(1)
            out["gt"] += gt
            out["gl"] = (pi_s - big["m"]).T
            out["D"] += D
            out["C"] = C.T
            out["V"] = V.T
            with np.errstate(divide="ignore"):
                out["log_ratio"] += (np.log(V) - big["logV0"]).sum(1)
        return out


def _runs(stratum_starts, n_cells, k):
    """Runs of whole consecutive strata, about ``_RUN_BYTES`` per (k x cells) temporary:
    ``(c0, c1, s0, s1, starts)`` with cells ``c0:c1``, strata ``s0:s1`` and the strata's
    starts within the run (a stratum larger than a run is a run of its own)."""
    step = max(_RUN_MIN_CELLS, _RUN_BYTES // (8 * max(k, 1)))
    ends = np.append(stratum_starts[1:], n_cells)
    out, s0 = [], 0
    n_strata = stratum_starts.size
    while s0 < n_strata:
        c0 = int(stratum_starts[s0])
        # the last stratum that ends within the run (at least one)
        s1 = max(s0 + 1, int(np.searchsorted(ends, c0 + step, side="right")))
        c1 = int(ends[s1 - 1])
        out.append((c0, c1, s0, s1, stratum_starts[s0:s1] - c0))
        s0 = s1
    return out


def _dp_cgf(dp, t):
    """Exact CGF (and its t-derivatives) of the small strata: ``log e_k(e^{t b}) / C(n, k)``.

    The recursion ``E_j <- E_j + r E_{j-1}`` runs over the cell positions (at most
    ``_SMALL_STRATUM``), vectorised over strata and responses, with ``r = e^{t b - c}`` scaled
    by the stratum's largest exponent ``c``; ``E'`` and ``E''`` carry the derivatives in ``t``.
    """
    vals, mask, kk = dp["vals"], dp["mask"], dp["k"]
    z = vals * t
    z = np.where(mask[:, :, None], z, -np.inf)
    c = z.max(axis=1)  # (strata, k)
    r = np.exp(z - c[:, None, :])
    kmax = int(kk.max())
    shape = (kmax + 1,) + c.shape
    E, E1, E2 = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    E[0] = 1.0
    for p in range(vals.shape[1]):
        rp, bp = r[:, p], vals[:, p]
        for j in range(kmax, 0, -1):
            E2[j] += rp * (E2[j - 1] + 2.0 * bp * E1[j - 1] + bp * bp * E[j - 1])
            E1[j] += rp * (E1[j - 1] + bp * E[j - 1])
            E[j] += rp * E[j - 1]
    idx = np.arange(kk.size)
    Ek, E1k, E2k = E[kk, idx], E1[kk, idx], E2[kk, idx]
    with np.errstate(divide="ignore", invalid="ignore"):
        g = E1k / Ek
        h = E2k / Ek - g * g
        K = np.log(Ek) + kk[:, None] * c - dp["log_binom"][:, None]
    return K.sum(0), g.sum(0), np.maximum(h, 0.0).sum(0)


# ==================================================================== the solver
def _newton_step(ev):
    """Newton step for ``min F(t, λ) = K(t, λ) - t s - λ·m`` with the arrowhead Hessian."""
    gt, D = ev["gt_res"], ev["D"]
    if "V" not in ev:
        H = D
        with np.errstate(divide="ignore", invalid="ignore"):
            dt = -gt / H
        return dt, None, -gt * dt, H
    C, V, gl = ev["C"], ev["V"], ev["gl"]
    with np.errstate(divide="ignore", invalid="ignore"):
        Vs = np.maximum(V, 1e-300)
        H = D - (C * C / Vs).sum(0)
        dt = (-gt + (C * gl / Vs).sum(0)) / H
        dl = (-gl - C * dt) / Vs
    dec = -(gt * dt + (gl * dl).sum(0))
    return dt, dl, dec, H


def _solve(model, s_c):
    """Saddlepoint ``t̂`` (and nuisance) of ``S - E S = s_c``, per column.

    Returns ``t``, ``w²/2 = t s_c - (K(t) - K(0))`` (profile), the Schur complement ``H`` and
    the log determinant ratio of the nuisance block, and a convergence flag.
    """
    k = s_c.size
    var = np.maximum(model.var, 1e-300)
    # Start: the root of the third-cumulant approximation K'(t) ≈ σ² t + κ₃ t²/2 = s_c (the
    # normal approximation's s_c/σ² where the discriminant is negative).
    disc = var * var + 2.0 * model.kappa3 * s_c
    with np.errstate(invalid="ignore"):
        t = np.where(disc > 0, 2.0 * s_c / (var + np.sqrt(np.maximum(disc, 0.0))), s_c / var)
    cap = _START_SCALE / np.maximum(model.scale, 1e-300)
    t = np.clip(t, -cap, cap)
    lam = model.start(s_c)

    def evaluate(t, lam, idx=None):
        ev = model.evaluate(t, lam, idx)
        s = s_c if idx is None else s_c[idx]
        ev["gt_res"] = ev["gt"] - s
        ev["F"] = ev["K"] - t * s
        return ev

    # Newton with a backtracking line search on the convex F = K - t s (- λ·m), evaluated only
    # on the columns still moving (most converge in a few steps from the start above).
    ev = evaluate(t, lam)
    converged = np.zeros(k, dtype=bool)
    failed = np.zeros(k, dtype=bool)
    for _ in range(_MAX_ITER):
        dt, dl, dec, H = _newton_step(ev)
        bad = ~(np.isfinite(dt) & np.isfinite(dec) & (H > 0))
        failed |= bad & ~converged
        converged |= (dec <= _DECREMENT_TOL) & ~failed
        idx = np.flatnonzero(~(converged | failed))
        if idx.size == 0:
            break
        step = np.ones(idx.size)
        todo = np.arange(idx.size)  # positions in idx not accepted yet
        for _ in range(_MAX_HALVINGS):
            cols = idx[todo]
            t_c = t[cols] + step[todo] * dt[cols]
            lam_c = lam[:, cols] if dl is None else lam[:, cols] + step[todo] * dl[:, cols]
            cand = evaluate(t_c, lam_c, cols)
            with np.errstate(invalid="ignore"):
                ok = cand["F"] <= ev["F"][cols] - 1e-4 * step[todo] * dec[cols] + 1e-12 * (
                    1 + np.abs(ev["F"][cols])
                )
            ok &= np.isfinite(cand["F"])
            acc = cols[ok]
            t[acc] = t_c[ok]
            if dl is not None:
                lam[:, acc] = lam_c[:, ok]
            for key, val in cand.items():
                ev[key][..., acc] = val[..., ok]
            todo = todo[~ok]
            if todo.size == 0:
                break
            step[todo] *= 0.5
        failed[idx[todo]] = True
    else:
        dt, dl, dec, H = _newton_step(ev)
        converged |= (dec <= 1e3 * _DECREMENT_TOL) & ~failed
    half_w2 = t * s_c - ev["K"]
    return t, half_w2, H, ev["log_ratio"], converged & ~failed


def _lr_upper(w, u_log, u_sign):
    """Lugannani-Rice ``P(S >= s)`` from ``w`` and ``u = u_sign exp(u_log)``.

    Written as ``φ(w) (M(w) + 1/u - 1/w)`` with the Mills ratio ``M`` for ``w > 0`` (no
    underflow of the pieces before the sum), ``1 - Φ(w) + φ(w) (1/u - 1/w)`` otherwise.
    """
    out = np.empty(w.shape)
    pos = w > 0
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        inv_u = u_sign * np.exp(-u_log)
        wp = w[pos]
        mills = 0.5 * special.erfcx(wp / np.sqrt(2.0)) * np.sqrt(2.0 * np.pi)
        bracket = mills + inv_u[pos] - 1.0 / wp
        out[pos] = np.exp(-0.5 * wp * wp - _LOG_SQRT_2PI) * bracket
        wn = w[~pos]
        out[~pos] = special.ndtr(-wn) + np.exp(-0.5 * wn * wn - _LOG_SQRT_2PI) * (
            inv_u[~pos] - 1.0 / wn
        )
    return out


def _edgeworth_upper(z, gamma):
    """One-term Edgeworth ``P(S >= s)``, ``z = (s - E S) / sd`` (the LR limit at the mean)."""
    return special.ndtr(-z) + np.exp(-0.5 * z * z - _LOG_SQRT_2PI) * gamma / 6.0 * (z * z - 1.0)


def _tails_at(model, s_eval, span):
    """Approximate ``P(S - E S >= e)`` and ``P(S - E S <= e)`` at ``e = s_eval``, per column.

    One solve gives both tails (Lugannani-Rice at ``(w, u)`` and ``(-w, -u)``); ``span > 0``
    puts the lattice ``u`` (Daniels' second continuity correction: evaluate the upper tail at
    ``s - h/2`` and the lower one at ``s + h/2``). Returns the tails and a reason string per
    column (``""``: fine).
    """
    k = s_eval.size
    sd = np.sqrt(np.maximum(model.var, 0.0))
    upper = np.full(k, np.nan)
    lower = np.full(k, np.nan)
    reason = np.full(k, "", dtype=object)
    near = np.abs(s_eval) <= _NEAR_MEAN * sd
    if near.any():
        z, gamma = s_eval[near] / sd[near], model.kappa3[near] / sd[near] ** 3
        upper[near] = _edgeworth_upper(z, gamma)
        lower[near] = _edgeworth_upper(-z, -gamma)
    far = ~near
    if far.any():
        t, half_w2, H, log_ratio, ok = _solve(_Sub(model, far), s_eval[far])
        w = np.sign(t) * np.sqrt(2.0 * np.maximum(half_w2, 0.0))
        h = span[far]
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            t_eff = np.where(h > 0, 2.0 * np.sinh(0.5 * t * h) / np.where(h > 0, h, 1.0), t)
            u_log = np.log(np.abs(t_eff)) + 0.5 * np.log(H) + 0.5 * log_ratio
        up = _lr_upper(w, u_log, np.sign(t))
        lo = _lr_upper(-w, u_log, -np.sign(t))
        ok &= np.isfinite(up) & np.isfinite(lo)
        ok &= half_w2 > -1e-9 * (1.0 + np.abs(t * s_eval[far]))
        # A saddlepoint far out (tilted weights e^{|t| a} spanning e^{_RUNAWAY}) may be the
        # solver creeping towards an edge of the support, where there is no solution.
        runaway = np.flatnonzero(ok & (np.abs(t) * model.scale[far] > _RUNAWAY))
        if runaway.size:
            lo_edge, up_edge = model.support_edges(np.flatnonzero(far)[runaway])
            e = s_eval[far][runaway]
            tol = _EDGE_TOL * model.magnitude[far][runaway] * np.sqrt(max(model.n_cells, 1))
            ok[runaway] = (e < up_edge - tol) & (e > lo_edge + tol)
        upper[far] = np.clip(up, 0.0, 1.0)
        lower[far] = np.clip(lo, 0.0, 1.0)
        r = np.full(ok.size, "", dtype=object)
        r[~ok] = (
            f"{FALLBACK}: the saddlepoint equation has no solution (observed at or beyond "
            "the edge of the support, or the solver did not converge)"
        )
        reason[far] = r
    return upper, lower, reason


class _Sub:
    """A model restricted to some columns (the others need no solve)."""

    def __init__(self, model, cols):
        self._model, self._idx = model, np.flatnonzero(cols)
        self.var, self.scale, self.kappa3 = model.var[cols], model.scale[cols], model.kappa3[cols]
        self.magnitude, self.n_cells = model.magnitude[cols], model.n_cells

    def start(self, s_c):
        return self._model.start(s_c)

    def support_edges(self, idx):
        return self._model.support_edges(self._idx[idx])

    def evaluate(self, t, lam, cols=None):
        return self._model.evaluate(t, lam, self._idx if cols is None else self._idx[cols])


def _tails(model, s_c, span, alternative):
    """P-values and methods of one block (``s_c``: observed minus the null mean)."""
    k = s_c.size
    methods = np.full(k, "saddlepoint", dtype=object)
    sd = np.sqrt(np.maximum(model.var, 0.0))
    tol = _EDGE_TOL * model.magnitude * np.sqrt(max(model.n_cells, 1))
    upper = np.full(k, np.nan)
    lower = np.full(k, np.nan)
    # A null with no variance: S* is E S exactly.
    constant = sd <= tol
    upper[constant] = np.where(s_c <= tol, 1.0, 0.0)[constant]
    lower[constant] = np.where(s_c >= -tol, 1.0, 0.0)[constant]
    methods[constant] = "exact"
    todo = ~constant
    # Bernoulli: at (or beyond) an edge of the support the tail is exact.
    if model.upper_edge is not None:
        edge_up = todo & (s_c >= model.upper_edge - tol)
        edge_lo = todo & (s_c <= model.lower_edge + tol)
        beyond_up = s_c > model.upper_edge + tol
        beyond_lo = s_c < model.lower_edge - tol
        upper[edge_up] = np.where(beyond_up, 0.0, np.exp(model.edge_logp(1)))[edge_up]
        lower[edge_up] = 1.0
        lower[edge_lo] = np.where(beyond_lo, 0.0, np.exp(model.edge_logp(-1)))[edge_lo]
        upper[edge_lo] = 1.0
        methods[edge_up | edge_lo] = "exact"
        todo &= ~(edge_up | edge_lo)
    reasons = np.full(k, "", dtype=object)
    if todo.any():
        sub = _Sub(model, todo)
        st, hl = s_c[todo], span[todo]
        need_upper = alternative != "less"
        need_lower = alternative != "greater"
        if not hl.any():
            up, lo, r = _tails_at(sub, st, hl)
        else:
            up = lo = np.full(st.size, np.nan)
            r = np.full(st.size, "", dtype=object)
            if need_upper:
                up, _, r = _tails_at(sub, st - 0.5 * hl, hl)
            if need_lower:
                _, lo, r_lo = _tails_at(sub, st + 0.5 * hl, hl)
                r = np.where(r != "", r, r_lo)
        upper[todo], lower[todo], reasons[todo] = up, lo, r
    pvalues = _two_sided(upper, lower, alternative)
    failed = reasons != ""
    methods[failed] = reasons[failed]
    return pvalues, methods
