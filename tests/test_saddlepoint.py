"""Tests of sklcrt.saddlepoint (and the statistics' score_pieces it consumes).

References: exact distributions (dynamic programmes / convolutions over integer score pieces),
exponentially tilted importance sampling (Bernoulli, exact likelihood ratio), and brute-force
resampling with the library's own samplers, with tolerances from binomial error.
"""

import numpy as np
import pytest
from scipy import special, stats

from sklcrt.saddlepoint import FALLBACK, saddlepoint_pvalues
from sklcrt.samplers import BernoulliSampler, StratifiedPermutationSampler
from sklcrt.statistics import NBScoreStatistic, OLSStatistic

# ---------------------------------------------------------------- exact references


def _exact_stratum(vals, m):
    """P(sum of m of the non-negative integers ``vals`` drawn without replacement = v)."""
    vals = np.asarray(vals, dtype=np.int64)
    top = int(np.sort(vals)[::-1][:m].sum())
    N = np.zeros((m + 1, top + 1))
    N[0, 0] = 1.0
    for v in vals:  # test reference: a loop over cells is fine here
        shifted = np.zeros_like(N[:-1])
        shifted[:, v:] = N[:-1, : top + 1 - v]
        N[1:] += shifted
    return N[m] / special.comb(len(vals), m)


def _exact_conditional(a, codes, x):
    """Exact law of S = x* @ a, counts per stratum fixed: (probabilities, value of index 0)."""
    dist, offset = np.ones(1), 0
    for s in np.unique(codes[codes >= 0]):
        cells = codes == s
        m = int(x[cells].sum())
        if m == 0:
            continue
        v = np.rint(a[cells]).astype(np.int64)
        offset += v.min() * m
        dist = np.convolve(dist, _exact_stratum(v - v.min(), m))
    return dist, offset


def _exact_bernoulli(a, p):
    """Exact law of S = Σ x_i a_i, x_i ~ Bernoulli(p_i), integer a."""
    a = np.rint(a).astype(np.int64)
    offset = int(a[a < 0].sum())
    dist = np.ones(1)
    for ai, pi in zip(a, p, strict=True):
        d = abs(int(ai))
        new = np.zeros(dist.size + d)
        lo, hi = (1 - pi, pi) if ai >= 0 else (pi, 1 - pi)
        new[: dist.size] += lo * dist
        new[d:] += hi * dist
        dist = new
    return dist, offset


def _tails(dist, offset, s):
    """(P(S >= s), P(S <= s)) for the exact law."""
    k = int(np.ceil(s - offset - 1e-9))
    up = dist[max(k, 0) :].sum()
    k = int(np.floor(s - offset + 1e-9))
    lo = dist[: max(k + 1, 0)].sum()
    return up, lo


def _moments(dist, offset):
    v = np.arange(dist.size) + offset
    mean = dist @ v
    return mean, np.sqrt(dist @ (v - mean) ** 2)


def _stratified_design(rng, sizes, m_of):
    codes = np.repeat(np.arange(len(sizes)), sizes)
    x = np.zeros(codes.size)
    for s, n_s in enumerate(sizes):
        cells = np.flatnonzero(codes == s)
        x[rng.choice(cells, m_of(n_s), replace=False)] = 1
    return codes, x


def _check_tail_grid(a, dist, offset, rel_tol, floor=1e-12, **kw):
    """Saddlepoint vs exact at observed values 1..8 sd from the mean, both sides, while
    the exact tail is >= floor. Returns the number of points checked."""
    mean, sd = _moments(dist, offset)
    checked = 0
    for side in (1, -1):
        for z in np.linspace(0.5, 8, 10):
            s = np.rint(mean + side * z * sd)
            up, lo = _tails(dist, offset, s)
            exact = up if side > 0 else lo
            if exact < floor:
                continue
            alt = "greater" if side > 0 else "less"
            p, methods = saddlepoint_pvalues(a, [s], alternative=alt, **kw)
            assert methods[0] == "saddlepoint", (s, methods[0])
            assert abs(p[0] / exact - 1) < rel_tol, (side, z, exact, p[0])
            checked += 1
    return checked


# ---------------------------------------------------------------- score pieces


def test_score_pieces_are_the_numerators():
    rng = np.random.default_rng(0)
    C = rng.normal(size=(400, 2))
    Y = rng.poisson(np.exp(0.5 + 0.4 * C[:, :1]), size=(400, 5))
    Y[:, 4] = 0
    X = (rng.random((6, 400)) < 0.1).astype(float)
    ols = OLSStatistic().fit(Y, C)
    a = ols.score_pieces([0, 2])
    Q = ols.basis_
    for x in X:
        d = x.sum() - np.sum((Q.T @ x) ** 2)
        np.testing.assert_allclose(x @ a, ols.observed(x, [0, 2])["effect"] * d, rtol=1e-10)
    nb = NBScoreStatistic().fit(Y, C)
    a = nb.score_pieces()
    mu = np.exp(nb.basis_ @ nb.coef_[:4].T)
    manual = (Y[:, :4] - mu) / (1 + mu / nb.theta_[:4])
    np.testing.assert_allclose(a[:, :4], manual, rtol=1e-8, atol=1e-12)
    assert np.all(np.isnan(a[:, 4]))  # no counts: undefined, like the statistic
    z = nb.evaluate(X)
    assert np.all(np.sign(X @ a[:, :4]) == np.sign(z[:, :4]))
    # the same pieces once the cache of all responses exists
    nb.evaluate(np.ones((1, 400)))
    np.testing.assert_array_equal(nb.score_pieces([1]), a[:, [1]])


def test_score_pieces_of_some_cells():
    rng = np.random.default_rng(1)
    C = rng.normal(size=(300, 2))
    Y = rng.poisson(np.exp(0.3 + 0.4 * C[:, :1]), size=(300, 4))
    cells = np.array([5, 0, 299, 17, 17])
    for stat in (OLSStatistic().fit(Y, C), NBScoreStatistic().fit(Y, C)):
        full = stat.score_pieces([3, 1])
        np.testing.assert_allclose(stat.score_pieces([3, 1], cells=cells), full[cells], rtol=1e-12)
        with pytest.raises(ValueError, match="cells"):
            stat.score_pieces(cells=[300])
        with pytest.raises(ValueError, match="cells"):
            stat.score_pieces(cells=[[1]])
    stat.evaluate(np.ones((1, 300)))  # NB: from the cache of all responses
    np.testing.assert_allclose(stat.score_pieces(cells=cells), stat.score_pieces()[cells])


# ---------------------------------------------------------------- far tail vs exact


def test_hypergeometric_one_stratum():
    # a in {0, 1}: S is hypergeometric (a lattice statistic: the continuity correction).
    n, K, m = 500, 40, 25
    a = np.r_[np.ones(K), np.zeros(n - K)]
    x = np.zeros(n)
    x[:m] = 1
    hyper = stats.hypergeom(n, K, m)
    ks = np.arange(2, 26)
    p, methods = saddlepoint_pvalues(
        np.tile(a[:, None], ks.size), ks.astype(float), x=x, alternative="greater"
    )
    exact = hyper.sf(ks - 1)
    keep = exact > 1e-12
    assert np.all(methods == "saddlepoint")
    assert np.max(np.abs(p[keep] / exact[keep] - 1)) < 0.1
    p_lo, _ = saddlepoint_pvalues(np.tile(a[:, None], 3), [0.0, 1.0, 2.0], x=x, alternative="less")
    np.testing.assert_allclose(p_lo, hyper.cdf([0, 1, 2]), rtol=0.1)


@pytest.mark.parametrize(
    ("sizes", "m_of", "vmax"),
    [
        ([2] * 300, lambda n: 1, 30),  # 300 pairs (the nuisance-heavy extreme)
        (list(np.random.default_rng(5).integers(3, 9, 200)), lambda n: n // 2, 30),
        ([20] * 50, lambda n: 3, 30),  # Skovgaard strata, few treated each
        ([120] * 40, lambda n: 2, 30),
        ([300] * 10, lambda n: 1, 60),  # one treated per stratum
        ([400], lambda n: 60, 40),  # one stratum (PermutationSampler)
        ([3000], lambda n: 5, 200),  # treated count 5
        ([40, 300, 800, 6], lambda n: max(1, n // 30), 50),
    ],
)
def test_stratified_far_tail_exact(sizes, m_of, vmax):
    rng = np.random.default_rng(len(sizes) * 7 + vmax)
    codes, x = _stratified_design(rng, sizes, m_of)
    a = rng.integers(0, vmax + 1, size=codes.size).astype(float)
    a[rng.random(codes.size) < 0.3] = 0.0  # ties
    dist, offset = _exact_conditional(a, codes, x)
    assert _check_tail_grid(a, dist, offset, 0.1, x=x, strata=codes) >= 8


def test_stratified_non_lattice_path_exact():
    # a = integers + a tiny jitter (no lattice): P(S >= k + 1/2) is exactly the integer law's
    # P(S >= k + 1) because the jitter of any treated set sums to < 1/2.
    rng = np.random.default_rng(11)
    codes, x = _stratified_design(rng, [150] * 20, lambda n: 4)
    base = rng.integers(0, 80, size=codes.size).astype(float)
    a = base + 1e-4 * rng.random(codes.size)
    dist, offset = _exact_conditional(base, codes, x)
    mean, sd = _moments(dist, offset)
    for z in (1.0, 3.0, 5.0, 7.0):
        k = np.rint(mean + z * sd)
        p, methods = saddlepoint_pvalues(a, [k + 0.5], x=x, strata=codes, alternative="greater")
        exact, _ = _tails(dist, offset, k + 1)
        assert methods[0] == "saddlepoint"
        assert abs(p[0] / exact - 1) < 0.1, (z, exact, p[0])


def test_bernoulli_far_tail_exact():
    rng = np.random.default_rng(3)
    n = 400
    a = rng.integers(-15, 16, n).astype(float)
    p = rng.uniform(0.005, 0.3, n)
    p[:6], p[6:12] = 0.0, 1.0  # never / always treated: constants
    dist, offset = _exact_bernoulli(a[12:], p[12:])
    offset += int(a[6:12].sum())
    assert _check_tail_grid(a, dist, offset, 0.1, p_hat=p) >= 14


@pytest.mark.slow
def test_bernoulli_continuous_vs_tilted_importance_sampling():
    # Exponential tilting: draw x ~ Bernoulli(expit(logit p + t a)), weight exp(K(t) - t S);
    # at t near the saddlepoint the estimate has a small relative error.
    rng = np.random.default_rng(4)
    n, B = 600, 40_000
    a = rng.gamma(0.5, 1.0, n) - 0.3  # skewed, continuous
    p = rng.uniform(0.01, 0.15, n)
    theta = np.log(p / (1 - p))
    mean, sd = p @ a, np.sqrt((p * (1 - p)) @ a**2)
    for z in (4.0, 8.0, 10.0):
        s = mean + z * sd
        p_sp, methods = saddlepoint_pvalues(a, [s], p_hat=p, alternative="greater")
        # tilt: solve K'(t) = s by bisection (reference code, independent of the solver)
        lo, hi = 0.0, 50.0
        for _ in range(100):
            t = 0.5 * (lo + hi)
            lo, hi = (t, hi) if special.expit(theta + t * a) @ a < s else (lo, t)
        q = special.expit(theta + t * a)
        K = np.sum(np.log1p(-p + p * np.exp(t * a)))
        S = (rng.random((B, n)) < q) @ a
        w = np.where(S >= s, np.exp(K - t * S), 0.0)
        est, se = w.mean(), w.std() / np.sqrt(B)
        assert se < 0.02 * est
        assert methods[0] == "saddlepoint"
        assert abs(p_sp[0] / est - 1) < 0.1, (z, est, p_sp[0])
    assert est < 1e-12  # the last one is beyond 1e-12


# ---------------------------------------------------------------- vs brute-force resampling


def _nb_pieces(rng, n, mean, G):
    C = rng.normal(size=(n, 2))
    Y = rng.negative_binomial(2, 2 / (2 + mean * np.exp(0.3 * C[:, :1])), size=(n, G))
    return NBScoreStatistic().fit(Y, C).score_pieces(), C


@pytest.mark.slow
@pytest.mark.parametrize("mean", [3.0, 0.3])  # dense and sparse counts
@pytest.mark.parametrize("kind", ["stratified", "bernoulli"])
def test_matches_resampling(mean, kind):
    rng = np.random.default_rng(int(mean * 10) + len(kind))
    n, G, B = 3000, 8, 200_000
    a, C = _nb_pieces(rng, n, mean, G)
    p_hat = special.expit(-3.0 + 0.8 * C[:, 0])
    x = (rng.random(n) < p_hat).astype(float)
    if kind == "stratified":
        codes = np.digitize(p_hat, np.quantile(p_hat, np.linspace(0, 1, 21)[1:-1]))
        sampler = StratifiedPermutationSampler().fit(x, strata=codes)
        kw = {"x": x, "strata": codes}
    else:
        sampler = BernoulliSampler().fit(x, p_hat=p_hat)
        kw = {"p_hat": p_hat}
    null = np.asarray(sampler.sample(B, random_state=0) @ a)
    # observed values spread over the null's upper tail: its quantiles 0.5 .. 1 - 2e-5
    levels = np.array([0.5, 0.8, 0.95, 0.99, 0.999, 0.9999, 0.99998, 0.9])
    s = np.quantile(null, levels[:G], axis=0).diagonal()
    p_sp, methods = saddlepoint_pvalues(a, s, alternative="greater", **kw)
    p_mc = (null >= s).mean(axis=0)
    assert np.all(methods == "saddlepoint")
    se = np.sqrt(p_sp * (1 - p_sp) / B)
    # Monte Carlo error (4.5 sd) plus 5% relative approximation error.
    assert np.all(np.abs(p_mc - p_sp) <= 4.5 * se + 0.05 * p_sp), np.c_[p_mc, p_sp]


# ---------------------------------------------------------------- the Edgeworth screen


@pytest.mark.parametrize("n, m", [(4, 2), (5, 4), (7, 3), (8, 1), (9, 4), (12, 6), (3, 1)])
def test_fourth_cumulant_without_replacement_is_exact(n, m):
    from itertools import combinations

    from sklcrt.saddlepoint import _srs_kappa4_weights

    rng = np.random.default_rng(n * 10 + m)
    d = rng.normal(size=n) ** 3
    d -= d.mean()
    sums = np.array([d[list(c)].sum() for c in combinations(range(n), m)])
    c = sums - sums.mean()
    exact = (c**4).mean() - 3.0 * (c**2).mean() ** 2
    a, b = _srs_kappa4_weights(np.array([float(n)]), np.array([float(m)]))
    got = a[0] * (d**4).sum() + b[0] * (d**2).sum() ** 2
    assert got == pytest.approx(exact, rel=1e-9, abs=1e-12 * (d**2).sum() ** 2)


def test_edgeworth_error_bounds_the_hermite_terms():
    # The next terms' size bounds |He_n(z) φ(z)| everywhere (no credit for the zeros of He_n),
    # and Cramér's inequality makes it tighter than the absolute coefficients at 1 <= |z| <= 2.5.
    from numpy.polynomial import hermite_e

    from sklcrt.saddlepoint import _edgeworth2_error

    z = np.linspace(-12, 12, 4801)
    phi = np.exp(-0.5 * z * z) / np.sqrt(2 * np.pi)
    zero = np.zeros_like(z)
    for n, args in [(4, (zero, zero, 120.0 * np.ones_like(z))), (8, (np.ones_like(z), zero, zero))]:
        hermite = np.abs(hermite_e.hermeval(z, np.eye(n + 1)[n])) * phi
        scale = 1.0 if n == 4 else 1296.0
        bound = scale * _edgeworth2_error(z, *args, zero)
        assert np.all(bound >= hermite * (1 - 1e-12)), z[bound < hermite][:5]
        coefficients = np.abs(hermite_e.herme2poly(np.eye(n + 1)[n]))
        by_coefficients = np.polynomial.polynomial.polyval(np.abs(z), coefficients) * phi
        near = (np.abs(z) >= 1) & (np.abs(z) <= 2.5)
        assert np.all(bound <= by_coefficients * (1 + 1e-12))
        assert np.all(bound[near] < 0.8 * by_coefficients[near])


@pytest.mark.parametrize("mean", [3.0, 0.3])  # dense and sparse counts
@pytest.mark.parametrize("kind", ["stratified", "bernoulli"])
def test_screened_pvalues_match_the_saddlepoint(mean, kind, monkeypatch):
    # Near the centre the two-term Edgeworth expansion (exact cumulants to the fourth) stands
    # in for Lugannani-Rice where its error bound allows: the two agree to well under 1 %.
    import sklcrt.saddlepoint as sp_mod

    rng = np.random.default_rng(int(mean * 10) + len(kind) + 50)
    n, G = 3000, 60
    a, C = _nb_pieces(rng, n, mean, G)
    p_hat = special.expit(-3.0 + 0.8 * C[:, 0])
    x = (rng.random(n) < p_hat).astype(float)
    if kind == "stratified":
        codes = np.digitize(p_hat, np.quantile(p_hat, np.linspace(0, 1, 21)[1:-1]))
        kw = {"x": x, "strata": codes}
    else:
        kw = {"p_hat": p_hat}
    centre = (x @ a) if kind == "stratified" else p_hat @ a
    sd = np.sqrt((p_hat * (1 - p_hat)) @ a**2)
    s = centre + np.linspace(-3, 3, G) * sd
    p, methods = saddlepoint_pvalues(a, s, **kw)
    monkeypatch.setattr(sp_mod, "_SCREEN_REL_ERR", -1.0)  # screen off: every column solved
    p_lr, methods_lr = saddlepoint_pvalues(a, s, **kw)
    assert np.all(methods == "saddlepoint") and np.all(methods_lr == "saddlepoint")
    differ = p != p_lr
    assert differ.sum() >= 5  # the screen took some columns
    assert np.all(np.abs(p / p_lr - 1) < 0.01), np.c_[p, p_lr][differ]


def test_cgf_in_runs_of_strata_equals_one_run(monkeypatch):
    # The conditional CGF is evaluated on whole strata a run of cells at a time: runs of a few
    # strata, and runs smaller than a stratum (a stratum is then a run of its own), give the
    # p-values of a single run to rounding.
    import sklcrt.saddlepoint as sp_mod

    rng = np.random.default_rng(61)
    n, G = 3000, 12
    a, C = _nb_pieces(rng, n, 0.5, G)
    p_hat = special.expit(-2.5 + 0.8 * C[:, 0])
    x = (rng.random(n) < p_hat).astype(float)
    codes = np.digitize(p_hat, np.quantile(p_hat, np.linspace(0, 1, 31)[1:-1]))
    s = x @ a + np.linspace(-4, 4, G) * np.sqrt((p_hat * (1 - p_hat)) @ a**2)
    monkeypatch.setattr(sp_mod, "_SCREEN_REL_ERR", -1.0)  # every column solved
    one, methods = saddlepoint_pvalues(a, s, x=x, strata=codes)
    assert np.all(methods == "saddlepoint")
    monkeypatch.setattr(sp_mod, "_RUN_MIN_CELLS", 1)
    for run_bytes in (8 * G * 300, 8 * G * 20):  # a few strata per run; runs below a stratum
        monkeypatch.setattr(sp_mod, "_RUN_BYTES", run_bytes)
        runs = sp_mod._runs(np.arange(0, 3000, 100), 3000, G)
        assert 1 < len(runs) and runs[-1][1] == 3000
        p, _ = saddlepoint_pvalues(a, s, x=x, strata=codes)
        # (near the mean Lugannani-Rice's 1/u - 1/w amplifies rounding: 1e-11 there)
        np.testing.assert_allclose(p, one, rtol=1e-9)


# ---------------------------------------------------------------- calibration


@pytest.mark.parametrize("kind", ["stratified", "bernoulli"])
def test_calibrated_under_the_null(kind):
    rng = np.random.default_rng(9 if kind == "stratified" else 10)
    n, G = 2000, 3000
    a = np.where(rng.random((n, G)) < 0.5, rng.exponential(size=(n, G)), rng.normal(size=(n, G)))
    p_hat = rng.uniform(0.01, 0.1, n)
    if kind == "stratified":
        codes = rng.integers(-1, 30, n)
        x = np.zeros(n)
        x[rng.choice(np.flatnonzero(codes >= 0), 100, replace=False)] = 1
        # y exchangeable given x, so p-values over responses are the null's.
        p, methods = saddlepoint_pvalues(a, x=x, strata=codes)
    else:
        X = rng.random((G, n)) < p_hat  # a fresh null treatment per response
        observed = np.einsum("gi,ig->g", X, a)
        p, methods = saddlepoint_pvalues(a, observed, p_hat=p_hat)
    assert np.all(np.char.startswith(methods.astype(str), "saddlepoint"))
    for alpha in (0.001, 0.01, 0.05, 0.25):
        frac = np.mean(p <= alpha)
        assert abs(frac - alpha) <= 4 * np.sqrt(alpha * (1 - alpha) / G) + 1 / G, (alpha, frac)


# ---------------------------------------------------------------- edge cases


def test_constant_strata_and_ineligible_cells_are_dropped():
    rng = np.random.default_rng(12)
    n = 600
    a = rng.normal(size=(n, 3))
    codes = np.repeat(np.arange(6), 100)
    x = np.zeros(n)
    x[rng.choice(200, 12, replace=False)] = 1
    x[200:300] = 1  # stratum 2: every cell treated (a constant)
    codes[500:] = -1  # ineligible
    p, m = saddlepoint_pvalues(a, x=x, strata=codes)
    keep = np.flatnonzero((codes == 0) | (codes == 1))
    s_ref = x[keep] @ a[keep]
    p_ref, _ = saddlepoint_pvalues(a[keep], s_ref, x=x[keep], strata=codes[keep])
    np.testing.assert_allclose(p, p_ref, rtol=1e-10)
    assert np.all(m == "saddlepoint")


def test_bernoulli_p_at_zero_and_one_are_constants():
    rng = np.random.default_rng(13)
    a = rng.normal(size=(300, 2))
    p = rng.uniform(0.02, 0.2, 300)
    p[:20], p[20:40] = 0.0, 1.0
    s = np.array([3.0, -2.0])
    full, _ = saddlepoint_pvalues(a, s + a[20:40].sum(0), p_hat=p)
    part, _ = saddlepoint_pvalues(a[40:], s, p_hat=p[40:])
    np.testing.assert_allclose(full, part, rtol=1e-10)


def test_observed_at_and_near_the_mean():
    rng = np.random.default_rng(14)
    a = rng.exponential(size=(500, 1))
    codes = rng.integers(0, 5, 500)
    x = np.zeros(500)
    x[:40] = 1
    n_s = np.bincount(codes, minlength=5)
    m_s = np.bincount(codes, weights=x, minlength=5)
    abar = np.bincount(codes, weights=a[:, 0], minlength=5) / n_s
    mean = m_s @ abar
    sd = 1.0
    offsets = np.array([0.0, 1e-12, 1e-6, 5e-3, 2e-2, 0.1, -1e-6, -2e-2]) * sd
    A = np.repeat(a, offsets.size, axis=1)
    p_up, m1 = saddlepoint_pvalues(A, mean + offsets, x=x, strata=codes, alternative="greater")
    p_two, m2 = saddlepoint_pvalues(A, mean + offsets, x=x, strata=codes)
    assert np.all(m1 == "saddlepoint") and np.all(m2 == "saddlepoint")
    assert np.all(np.isfinite(p_up)) and np.all(np.abs(p_up - 0.5) < 0.05)
    assert np.all(p_two > 0.9) and np.all(p_two <= 1.0)
    # monotone in the observed value across the near-mean switch
    order = np.argsort(offsets)
    assert np.all(np.diff(p_up[order]) <= 1e-3)


def test_constant_null_and_non_finite_columns():
    a = np.ones((50, 3))
    a[:, 2] = np.nan
    x = np.r_[np.ones(5), np.zeros(45)]
    p, m = saddlepoint_pvalues(a, x=x)  # every treated set sums to 5: no variance
    assert p[:2].tolist() == [1.0, 1.0] and m[:2].tolist() == ["exact", "exact"]
    assert np.isnan(p[2]) and m[2].startswith(FALLBACK)


def test_support_edges():
    # Bernoulli at the edge: the exact probability of the extreme configuration.
    a = np.array([1.0, 2.0, -1.0, 0.5])
    p = np.array([0.5, 0.2, 0.3, 0.9])
    up, m = saddlepoint_pvalues(a, [3.5], p_hat=p, alternative="greater")
    assert m[0] == "exact" and up[0] == pytest.approx(0.5 * 0.2 * 0.7 * 0.9)
    lo, _ = saddlepoint_pvalues(a, [-1.0], p_hat=p, alternative="less")
    assert lo[0] == pytest.approx(0.5 * 0.8 * 0.3 * 0.1)
    beyond, _ = saddlepoint_pvalues(a, [4.0], p_hat=p, alternative="greater")
    assert beyond[0] == 0.0
    # Permutation, continuous pieces, the treated cells are the top ones: no saddlepoint.
    rng = np.random.default_rng(15)
    a = rng.normal(size=200)
    x = np.zeros(200)
    x[np.argsort(a)[-4:]] = 1
    p, m = saddlepoint_pvalues(a, x=x, alternative="greater")
    assert m[0].startswith(FALLBACK)


def test_two_sided_rule_and_columns_independent():
    rng = np.random.default_rng(16)
    a = rng.gamma(0.3, size=(800, 6))
    codes = rng.integers(0, 8, 800)
    x = (rng.random(800) < 0.05).astype(float)
    s = x @ a + np.linspace(-3, 3, 6)
    kw = {"x": x, "strata": codes}
    two, _ = saddlepoint_pvalues(a, s, **kw)
    up, _ = saddlepoint_pvalues(a, s, alternative="greater", **kw)
    lo, _ = saddlepoint_pvalues(a, s, alternative="less", **kw)
    np.testing.assert_allclose(two, np.minimum(1, 2 * np.minimum(up, lo)))
    np.testing.assert_allclose(up + lo, 1.0, atol=1e-12)  # continuous: the LR tails add to 1
    single = [saddlepoint_pvalues(a[:, j], [s[j]], **kw)[0][0] for j in range(6)]
    np.testing.assert_allclose(two, single, rtol=1e-9)


def test_invalid_inputs():
    a = np.ones((10, 2))
    x = np.r_[np.ones(3), np.zeros(7)]
    with pytest.raises(ValueError, match="p_hat .* or the observed treatment x"):
        saddlepoint_pvalues(a, [1.0, 1.0])
    with pytest.raises(ValueError, match="not both"):
        saddlepoint_pvalues(a, [1.0, 1.0], p_hat=np.full(10, 0.3), x=x)
    with pytest.raises(ValueError, match="observed must have shape"):
        saddlepoint_pvalues(a, [1.0], x=x)
    with pytest.raises(ValueError, match="alternative"):
        saddlepoint_pvalues(a, x=x, alternative="both")
    with pytest.raises(ValueError, match="stratum -1"):
        saddlepoint_pvalues(a, x=x, strata=np.r_[-1, np.zeros(9)])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        saddlepoint_pvalues(a, [1.0, 1.0], p_hat=np.full(10, 1.3))
    with pytest.raises(ValueError, match="lattice"):
        saddlepoint_pvalues(a, x=x, lattice=-1.0)


def _mixed_strata(rng, n_cells=900):
    """Interleaved strata of every class: one treated cell, one left out, small (exact DP),
    large (Skovgaard), every cell treated, none treated, and never-treated cells (-1)."""
    sizes = [40, 35, 8, 6, 300, 250, 12, 30]
    m = [1, 34, 3, 2, 60, 100, 12, 0]
    codes = np.repeat(np.arange(len(sizes)), sizes)
    x = np.concatenate([np.r_[np.ones(k), np.zeros(n - k)] for n, k in zip(sizes, m, strict=True)])
    codes = np.r_[codes, np.full(n_cells - codes.size, -1)]
    x = np.r_[x, np.zeros(n_cells - x.size)]
    order = rng.permutation(n_cells)
    return codes[order], x[order]


def test_pieces_in_the_reading_order_give_the_same_pvalues():
    from sklcrt.saddlepoint import _compact, _law_setup

    def _reading_order(**laws):
        return _compact(_law_setup(**laws))[0]

    rng = np.random.default_rng(21)
    codes, x = _mixed_strata(rng)
    a = rng.gamma(0.5, size=(codes.size, 5))
    s = x @ a + np.linspace(-4, 4, 5)
    p, m = saddlepoint_pvalues(a, s, x=x, strata=codes)
    order = _reading_order(x=x, strata=codes)
    assert np.all(codes[order] >= 0) and np.unique(order).size == order.size
    # The cells it leaves out (never treated, or strata none of whose cells are treated)
    # add nothing to S.
    left_out = np.setdiff1d(np.arange(codes.size), order)
    assert np.all(x[left_out] == 0)
    p2, m2 = saddlepoint_pvalues(a[order], s, x=x[order], strata=codes[order])
    assert m2.tolist() == m.tolist()
    np.testing.assert_allclose(p2, p, rtol=1e-10)
    # The CRT reads the cells with 0 < p_hat < 1, then those always treated.
    p_hat = rng.uniform(0.01, 0.3, codes.size)
    p_hat[:20], p_hat[20:30] = 0.0, 1.0
    order = _reading_order(p_hat=p_hat)
    assert np.array_equal(order, np.r_[np.arange(30, codes.size), np.arange(20, 30)])


def test_the_setup_of_the_reading_order_is_reused_exactly():
    # CRTTest makes each unit's setup once: re-indexed on the reading order, it is the setup of
    # the reordered laws, so the p-values are those of a fresh call, bit for bit.
    from sklcrt.saddlepoint import _compact, _law_setup, _saddlepoint_pvalues

    rng = np.random.default_rng(23)
    codes, x = _mixed_strata(rng)
    a = rng.gamma(0.5, size=(codes.size, 6))
    p_hat = rng.uniform(0.01, 0.3, codes.size)
    p_hat[:20], p_hat[20:30] = 0.0, 1.0
    for laws in ({"x": x, "strata": codes}, {"x": x}, {"p_hat": p_hat}):
        order, compact = _compact(_law_setup(**laws))
        ordered = {key: value[order] for key, value in laws.items()}
        A = a[order]
        s = (x[order] @ A) + np.linspace(-5, 5, A.shape[1])
        p, m = saddlepoint_pvalues(A, s, **ordered)
        p2, m2 = _saddlepoint_pvalues(A, s, compact_setup=compact, **ordered)
        assert m2.tolist() == m.tolist()
        assert np.array_equal(p2, p, equal_nan=True)


def test_support_edges_of_interleaved_strata():
    from sklcrt.saddlepoint import _compact, _Conditional, _conditional_setup

    rng = np.random.default_rng(22)
    codes, x = _mixed_strata(rng)
    a = rng.normal(size=(codes.size, 3))
    rows, setup = _compact(_conditional_setup(codes, x))
    model = _Conditional(setup, np.ascontiguousarray(a[rows].T))
    lower, upper = model.support_edges(np.arange(3))
    low_ref, high_ref = np.zeros(3), np.zeros(3)
    for s in np.unique(codes[codes >= 0]):
        cells = codes == s
        n_s, m_s = int(cells.sum()), int(x[cells].sum())
        if 0 < m_s < n_s:
            vals = np.sort(a[cells], axis=0)
            low_ref += vals[:m_s].sum(axis=0)
            high_ref += vals[n_s - m_s :].sum(axis=0)
    active_mean = model.mean - model.offset
    np.testing.assert_allclose(lower, low_ref - active_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(upper, high_ref - active_mean, rtol=1e-12, atol=1e-12)


def test_lattice_detection_per_column():
    # Integers, multiples of a step (the smallest difference over a small denominator), and
    # values off any grid, including a column on a grid in its first rows only.
    from sklcrt.saddlepoint import _LATTICE_PROBE, _maybe_lattice

    rng = np.random.default_rng(83)
    n = 256
    ints = rng.integers(-20, 21, n).astype(float)
    ints[0] = 1.0
    steps = rng.integers(-9, 10, n) * 0.37
    steps[:2] = 0.37 * np.array([3.0, 1.0])
    # smallest nonzero |d| is 2 steps and odd multiples occur: the grid is that over 2
    thirds = rng.choice([-5.0, -3.0, -2.0, 0.0, 2.0, 3.0, 5.0], n) * (0.37 / 3)
    late = ints.copy()
    late[_LATTICE_PROBE + 5] += 0.5e-3  # on the integers in the first rows only
    d = np.column_stack([ints, steps, thirds, rng.normal(size=n), late, np.zeros(n)])
    expected = [True, True, True, False, False, True]
    assert _maybe_lattice(d).tolist() == expected
    # the same columns in any order, alone or together
    order = rng.permutation(d.shape[1])
    assert _maybe_lattice(d[:, order]).tolist() == [expected[i] for i in order]
    assert [bool(_maybe_lattice(d[:, [j]])[0]) for j in range(d.shape[1])] == expected
