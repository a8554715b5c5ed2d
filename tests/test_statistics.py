"""Tests of sklcrt.statistics: OLS t statistic and NB GLM score statistic."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from scipy import stats
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

import sklcrt.statistics._base as base_module
import sklcrt.statistics.nb_score as nb_module
from sklcrt.statistics import BaseStatistic, NBScoreStatistic, OLSStatistic
from sklcrt.statistics.nb_score import _CountTable, _nb_terms

sm = pytest.importorskip("statsmodels.api")

LN2 = np.log(2.0)


# --------------------------------------------------------------------------- helpers
def _covariates(rng, n):
    """Numeric covariates plus a one-hot batch (full encoding: collinear with the intercept)."""
    batch = rng.integers(0, 3, n)
    onehot = np.eye(3)[batch]
    return np.column_stack([rng.normal(size=n), rng.normal(size=n), onehot])


def _treatment(rng, n, m):
    x = np.zeros(n)
    x[rng.choice(n, m, replace=False)] = 1.0
    return x


def _resamples(rng, x, n_resamples):
    rows = np.stack([rng.permutation(x) for _ in range(n_resamples)])
    return sp.csr_matrix(rows)


def _ols_reference(Y, C, x):
    """beta, se, t of x in y ~ 1 + C + x by numpy lstsq (pseudo-inverse for collinear C)."""
    X = np.column_stack([np.ones(len(x)), C, x])
    coef, *_ = np.linalg.lstsq(X, Y, rcond=None)
    resid = Y - X @ coef
    rank = np.linalg.matrix_rank(X)
    sigma2 = (resid**2).sum(axis=0) / (len(x) - rank)
    var = np.linalg.pinv(X.T @ X)[-1, -1]
    se = np.sqrt(sigma2 * var)
    return coef[-1], se, coef[-1] / se


def _nb_data(rng, n=400, g=6, theta=3.0, effect=0.4, m=50):
    C = _covariates(rng, n)
    x = _treatment(rng, n, m)
    eta = 1.0 + 0.3 * C[:, :1] - 0.2 * C[:, 2:3] + effect * x[:, None] + rng.normal(0, 0.3, g)
    mu = np.exp(eta)
    Y = rng.negative_binomial(theta, theta / (theta + mu)).astype(float)
    return Y, C, x


def _nb_dense_score(stat, Y, C, x_rows):
    """Score statistic from explicit matrices: the design [1, C], W, a and a pseudo-inverse."""
    X0 = np.column_stack([np.ones(Y.shape[0]), C])
    eta = stat.basis_ @ stat.coef_.T
    mu = np.exp(eta)
    out = np.empty((x_rows.shape[0], Y.shape[1]))
    for g in range(Y.shape[1]):
        th = stat.theta_[g]
        w = mu[:, g] / (1 + mu[:, g] / th)
        a = (Y[:, g] - mu[:, g]) / (1 + mu[:, g] / th)
        H = X0.T @ (w[:, None] * X0)
        Hinv = np.linalg.pinv(H)
        for b, x in enumerate(x_rows):
            v = X0.T @ (w * x)
            info = x @ (w * x) - v @ Hinv @ v
            out[b, g] = (x @ a) / np.sqrt(info)
    return out


# --------------------------------------------------------------------------- OLS
@pytest.mark.parametrize("with_intercept", [False, True])
def test_ols_matches_lstsq(with_intercept):
    rng = np.random.default_rng(0)
    n, g = 300, 5
    C = rng.normal(size=(n, 3))
    if with_intercept:
        C = np.column_stack([np.ones(n), C, C[:, 0] + C[:, 1]])  # intercept and a collinear column
    x = _treatment(rng, n, 40)
    Y = rng.normal(size=(n, g)) + C[:, -3:] @ rng.normal(size=(3, g)) + 0.5 * x[:, None]
    stat = OLSStatistic().fit(Y, C)
    assert stat.rank_ == 4

    obs = stat.observed(x)
    beta, se, t = _ols_reference(Y, C, x)
    np.testing.assert_allclose(obs["effect"], beta, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(obs["effect_se"], se, rtol=1e-8)
    np.testing.assert_allclose(obs["statistic"], t, rtol=1e-8)
    assert obs["n_treated"] == 40

    R = _resamples(rng, x, 8)
    null = stat.evaluate(R)
    assert null.shape == (8, g)
    for b in range(R.shape[0]):
        _, _, t_b = _ols_reference(Y, C, R[b].toarray().ravel())
        np.testing.assert_allclose(null[b], t_b, rtol=1e-8)


def test_ols_matches_statsmodels():
    rng = np.random.default_rng(1)
    n = 200
    C = rng.normal(size=(n, 2))
    x = _treatment(rng, n, 30)
    y = 1 + C @ [0.5, -0.2] + 0.3 * x + rng.normal(size=n)
    res = sm.OLS(y, np.column_stack([np.ones(n), C, x])).fit()
    obs = OLSStatistic().fit(y[:, None], C).observed(x)
    np.testing.assert_allclose(obs["effect"], res.params[-1], rtol=1e-8)
    np.testing.assert_allclose(obs["effect_se"], res.bse[-1], rtol=1e-8)
    np.testing.assert_allclose(obs["statistic"], res.tvalues[-1], rtol=1e-8)


def test_ols_residuals_layout_and_sparse_input():
    rng = np.random.default_rng(2)
    n = 150
    C = rng.normal(size=(n, 2))
    Y = rng.poisson(2.0, size=(n, 4)).astype(float)
    dense = OLSStatistic().fit(Y, C)
    assert dense.residuals_.flags.c_contiguous and dense.residuals_.dtype == np.float64
    # The residuals are orthogonal to the intercept and the covariates.
    np.testing.assert_allclose(np.column_stack([np.ones(n), C]).T @ dense.residuals_, 0, atol=1e-10)
    sparse = OLSStatistic().fit(sp.csr_matrix(Y), C)
    np.testing.assert_allclose(sparse.residuals_, dense.residuals_, atol=1e-12)
    R = _resamples(rng, _treatment(rng, n, 20), 5)
    np.testing.assert_allclose(sparse.evaluate(R), dense.evaluate(R), rtol=1e-12)


def test_ols_intercept_only_and_collinear_treatment():
    rng = np.random.default_rng(3)
    n = 120
    batch = (np.arange(n) < 30).astype(float)
    Y = rng.normal(size=(n, 3))
    stat = OLSStatistic().fit(Y)  # C=None: intercept only
    assert stat.rank_ == 1
    x = batch.copy()
    beta, _, t = _ols_reference(Y, np.empty((n, 0)), x)
    np.testing.assert_allclose(stat.observed(x)["statistic"], t, rtol=1e-8)
    # x equal to a covariate: the statistic is undefined.
    stat = OLSStatistic().fit(Y, batch[:, None])
    obs = stat.observed(x)
    assert np.all(np.isnan(obs["statistic"])) and np.all(np.isnan(obs["effect"]))


# --------------------------------------------------------------------------- NB score
def test_nb_score_matches_dense_computation():
    rng = np.random.default_rng(4)
    Y, C, x = _nb_data(rng)
    R = _resamples(rng, x, 6)
    x_rows = np.vstack([x, R.toarray()])
    results = []
    for cache_bytes in (0, 2**30):
        stat = NBScoreStatistic(cache_bytes=cache_bytes).fit(Y, C)
        assert stat.pieces_cached_ == (cache_bytes > 0)
        assert stat.converged_.all()
        expected = _nb_dense_score(stat, Y, C, x_rows)
        observed = stat.observed(x)["statistic"]
        np.testing.assert_allclose(observed, expected[0], rtol=1e-8)
        results.append((observed, stat.evaluate(R), stat.evaluate(R, [3, 1])))
        np.testing.assert_allclose(results[-1][1], expected[1:], rtol=1e-8)
        assert (stat._cache is not None) == (cache_bytes > 0)  # built by evaluate(R)
    # Pieces built per block for the touched cells equal those of the cache, bit for bit.
    for with_cache, without in zip(results[1], results[0], strict=True):
        np.testing.assert_array_equal(with_cache, without)


def test_nb_score_matches_statsmodels():
    rng = np.random.default_rng(5)
    Y, C, x = _nb_data(rng, n=300, g=3, m=40)
    stat = NBScoreStatistic(effect_fit="full").fit(Y, C)
    obs = stat.observed(x)
    lin = clone(stat).set_params(effect_fit="linearized").fit(Y, C).observed(x)
    X0 = np.column_stack([np.ones(len(x)), C[:, :4]])  # drop one level of the one-hot batch
    for g in range(Y.shape[1]):
        family = sm.families.NegativeBinomial(alpha=1.0 / stat.theta_[g])
        null = sm.GLM(Y[:, g], X0, family=family).fit(tol=1e-12)
        chi2 = np.asarray(null.score_test(exog_extra=x[:, None], observed=False)[0]).item()
        np.testing.assert_allclose(obs["statistic"][g] ** 2, chi2, rtol=1e-6)
        full = sm.GLM(Y[:, g], np.column_stack([X0, x]), family=family).fit(tol=1e-12)
        np.testing.assert_allclose(obs["effect"][g] * LN2, full.params[-1], rtol=1e-6)
        np.testing.assert_allclose(obs["effect_se"][g] * LN2, full.bse[-1], rtol=1e-5)
        # The linearized fit differs from the full one by far less than the standard error.
        assert abs(lin["effect"][g] - obs["effect"][g]) < 0.1 * obs["effect_se"][g]
        np.testing.assert_allclose(lin["effect_se"][g], obs["effect_se"][g], rtol=0.05)


def test_nb_linearized_effect_is_close_to_the_full_fit():
    rng = np.random.default_rng(16)
    Y, C, x = _nb_data(rng, n=3000, g=5, m=80, effect=0.5)
    lin = NBScoreStatistic().fit(Y, C)
    full = clone(lin).set_params(effect_fit="full").fit(Y, C)
    a, b = lin.observed(x), full.observed(x)
    np.testing.assert_array_equal(a["statistic"], b["statistic"])
    # Second order in n_treated / n_cells: a tiny fraction of the standard error.
    assert np.all(np.abs(a["effect"] - b["effect"]) < 0.02 * b["effect_se"])
    assert not np.array_equal(a["effect"], b["effect"])  # the linearized path was used
    np.testing.assert_allclose(a["effect_se"], b["effect_se"], rtol=0.01)


@pytest.mark.parametrize("effect_fit", ["linearized", "full"])
def test_nb_effect_without_treated_counts_is_capped(effect_fit):
    rng = np.random.default_rng(17)
    Y, C, x = _nb_data(rng, n=400, g=3, m=40)
    Y[x == 1, 1] = 0.0  # no counts in the treated cells: the MLE of the effect is -inf
    stat = NBScoreStatistic(effect_fit=effect_fit).fit(Y, C)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        obs = stat.observed(x)
    assert obs["statistic"][1] < -3
    assert obs["effect"][1] == pytest.approx(-20.0 / LN2, rel=1e-6)
    assert obs["effect_se"][1] > 100
    assert np.all(np.isfinite(obs["effect"])) and np.all(np.abs(obs["effect"][[0, 2]]) < 3)


def test_nb_theta_is_the_maximum_likelihood_estimate():
    rng = np.random.default_rng(6)
    n = 4000
    thetas = np.array([0.5, 1.0, 2.0, 5.0, 10.0, 20.0])
    C = _covariates(rng, n)
    mu = np.exp(0.5 + 0.4 * C[:, :1] - 0.3 * C[:, 2:3] + rng.normal(0, 0.5, thetas.size))
    Y = rng.negative_binomial(thetas, thetas / (thetas + mu)).astype(float)
    stat = NBScoreStatistic().fit(Y, C)
    # Close to the truth within sampling error: |theta_hat - theta| < 4 SE, the SE from the
    # observed information of the profile likelihood at the estimate.
    eta_hat = stat.coef_ @ stat.basis_.T
    mu_hat = np.exp(eta_hat)
    Yt = np.ascontiguousarray(Y.T)
    _, grad, hess, _, _ = _nb_terms(Yt, eta_hat, mu_hat, stat.theta_, _CountTable(Yt))
    se = 1.0 / np.sqrt(-hess)
    assert np.all(np.abs(stat.theta_ - thetas) < 4 * se)
    np.testing.assert_allclose(grad * stat.theta_, 0, atol=1e-6)  # at the maximum
    # The joint maximum-likelihood estimate of statsmodels' NB2 regression.
    X0 = np.column_stack([np.ones(n), C[:, :4]])  # drop one level of the one-hot batch
    for g in (0, 3):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = sm.NegativeBinomial(Y[:, g], X0).fit(disp=0, method="newton", tol=1e-12)
        np.testing.assert_allclose(stat.theta_[g], 1.0 / res.params[-1], rtol=1e-6)
        np.testing.assert_allclose(
            stat.basis_ @ stat.coef_[g], X0 @ res.params[:-1], rtol=1e-6, atol=1e-8
        )
    # The coefficients are at the maximum too: the score X'(y - mu) / (1 + mu/theta) is ~0.
    score = ((Yt - mu_hat) / (1 + mu_hat / stat.theta_[:, None])) @ stat.basis_
    assert np.abs(score).max() < 1e-6 * np.abs(Yt).sum(axis=1).max()
    assert stat.converged_.all()


def test_nb_terms_are_the_likelihood_and_its_derivatives():
    # The log-likelihood moves with θ and η as the NB log pmf does (it drops terms free of
    # both); d/dθ and d²/dθ² match central differences; the score factor and the Newton
    # weights match their closed forms.
    rng = np.random.default_rng(12)
    n, thetas = 500, np.array([0.7, 3.0, 40.0])
    th = thetas[:, None]
    eta = rng.normal(0.5, 0.8, size=(thetas.size, n))
    Y = rng.negative_binomial(th, th / (th + np.exp(eta))).astype(float)
    table = _CountTable(Y)

    def loglik(theta, eta):
        return _nb_terms(Y, eta, np.exp(eta), theta, table)[0]

    def logpmf(theta, eta):
        t = theta[:, None]
        return stats.nbinom.logpmf(Y, t, t / (t + np.exp(eta))).sum(axis=1)

    ll, g, h, u, weights = _nb_terms(Y, eta, np.exp(eta), thetas, table)
    step = 1e-4 * thetas
    shifted = eta + 0.1 * rng.normal(size=eta.shape)
    for theta2, eta2 in ((thetas + step, eta), (thetas, shifted), (1.5 * thetas, shifted)):
        np.testing.assert_allclose(
            loglik(theta2, eta2) - ll, logpmf(theta2, eta2) - logpmf(thetas, eta), rtol=1e-6
        )
    up, down = loglik(thetas + step, eta), loglik(thetas - step, eta)
    np.testing.assert_allclose(g, (up - down) / (2 * step), rtol=1e-5)
    np.testing.assert_allclose(h, (up - 2 * ll + down) / step**2, rtol=1e-3)
    mu = np.exp(eta)
    np.testing.assert_allclose(u, 1.0 / (1.0 + mu / th))
    np.testing.assert_allclose(weights, mu * (1.0 + Y / th) / (1.0 + mu / th) ** 2)


@pytest.mark.parametrize("cols", [[7], [3, 1], [0, 2, 5, 6, 9], list(range(10)), [9, 0, 4, 4]])
def test_take_block_is_the_ix_block(cols):
    # Element by element for a few columns, rows first for many: the same values either way,
    # in the order asked (repeats included), C-contiguous.
    values = np.random.default_rng(0).normal(size=(50, 10))
    rows, cols = np.array([49, 0, 7, 7, 3]), np.array(cols)
    got = base_module.take_block(values, rows, cols)
    np.testing.assert_array_equal(got, values[np.ix_(rows, cols)])
    assert got.flags["C_CONTIGUOUS"]


def test_nb_point_in_runs_of_cells_equals_whole_rows(monkeypatch):
    # One pass of the NB fit takes the cells a run at a time: its sums equal those of the terms
    # of whole rows (the oracle), with runs that split the cells unevenly, and with or without
    # the table of pairwise products behind the Gram matrices.
    import sklcrt.statistics._nb_fit as fit_module

    rng = np.random.default_rng(21)
    n, thetas = 1000, np.array([0.7, 3.0, 40.0])
    X = np.column_stack([np.ones(n), rng.normal(size=(n, 2))])
    XT = np.ascontiguousarray(X.T)
    beta = np.array([[0.2, 0.3, -0.1], [1.0, -0.2, 0.1], [-0.5, 0.1, 0.4]])
    eta = beta @ XT
    th = thetas[:, None]
    Y = rng.negative_binomial(th, th / (th + np.exp(eta))).astype(float)
    table = _CountTable(Y)
    mu = np.exp(eta)
    ll, g, h, u, weights = _nb_terms(Y, eta, mu, thetas, table)
    resid = (Y - mu) * u
    score, cross = resid @ X, (resid * (1.0 - u)) @ X
    H = np.einsum("gi,ia,ib->gab", weights, X, X)
    monkeypatch.setattr(fit_module, "_PASS_MIN_CELLS", 1)
    for pass_bytes in (2**30, 8 * 3 * 300):  # one run; runs of 300 cells (the last 100)
        monkeypatch.setattr(fit_module, "_PASS_BYTES", pass_bytes)
        for pair_bytes in (2**30, 0):
            monkeypatch.setattr(fit_module, "_PAIR_BYTES", pair_bytes)
            gram = fit_module._Gram(X)
            assert (gram.pairs is None) == (pair_bytes == 0)
            got = fit_module._nb_point(XT, gram, Y, beta, thetas, table)
            for a, b in zip(got, (ll, g, h, score, cross, H), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-9)


def test_nb_point_in_single_precision_is_close():
    # The float32 pass that takes Newton's first steps: the same sums within float32 rounding
    # (about 1e-6 relative on 3,000 cells), far closer than the steps it is used for (> 0.1).
    import sklcrt.statistics._nb_fit as fit_module

    rng = np.random.default_rng(22)
    n, thetas = 3000, np.array([0.7, 3.0, 40.0])
    X = np.column_stack([np.ones(n), rng.normal(size=(n, 2))])
    XT = np.ascontiguousarray(X.T)
    beta = np.array([[0.2, 0.3, -0.1], [1.0, -0.2, 0.1], [-0.5, 0.1, 0.4]])
    th = thetas[:, None]
    mu = np.exp(beta @ XT)
    Y = rng.negative_binomial(th, th / (th + mu)).astype(float)
    table = _CountTable(Y)
    gram = fit_module._Gram(X, np.float32)
    double = fit_module._nb_point(XT, gram, Y, beta, thetas, table)
    single = fit_module._nb_point(
        XT.astype(np.float32), gram, Y.astype(np.float32), beta, thetas, table, single=True
    )
    for a, b in zip(single, double, strict=True):
        assert a.dtype == np.float64
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * np.abs(b).max())


def test_nb_fit_from_float32_steps_is_the_double_fit(monkeypatch):
    # Newton's first steps from float32 passes (large steps), its last from double ones: the
    # same optimum as an all-double fit, also for near-Poisson responses (a flat likelihood
    # in θ, where float32 noise could otherwise steer the steps; once Newton's points are
    # double they stay double).
    import sklcrt.statistics._nb_fit as fit_module

    rng = np.random.default_rng(23)
    thetas = np.array([0.5, 2.0, 10.0, 1e6])
    C = _covariates(rng, 5000)
    mu = np.exp(0.5 + 0.4 * C[:, :1] - 0.3 * C[:, 2:3] + rng.normal(0, 0.5, thetas.size))
    Y = rng.negative_binomial(thetas, thetas / (thetas + mu)).astype(float)
    # Underdispersed counts (binomial): θ's likelihood rises to the upper bound, flat there.
    Y = np.column_stack([Y, rng.binomial(4, np.clip(mu / 8, 0, 1)).astype(float)])
    passes = []
    point = fit_module._nb_point

    def recorded(XT, gram, Yb, beta, theta, table, single=False):
        if XT.shape[1] == Y.shape[0] and Yb.shape[0] == 1:  # the full data, one response
            passes.append(single)
        return point(XT, gram, Yb, beta, theta, table, single)

    monkeypatch.setattr(fit_module, "_nb_point", recorded)
    for g in range(Y.shape[1]):  # one response at a time: its passes in order
        passes.clear()
        alone = NBScoreStatistic().fit(Y[:, [g]], C)
        assert alone.converged_.all() and passes[0] and not passes[-1]
        assert passes == sorted(passes, reverse=True)  # float32, then double only
    monkeypatch.setattr(fit_module, "_nb_point", point)
    mixed = NBScoreStatistic().fit(Y, C)
    monkeypatch.setattr(fit_module, "_SINGLE_ABOVE", np.inf)  # every pass double
    double = NBScoreStatistic().fit(Y, C)
    assert mixed.converged_.all() and double.converged_.all()
    assert double.theta_[-2] > 100 and np.isclose(double.theta_[-1], 1e3)  # near Poisson; bound
    np.testing.assert_allclose(mixed.theta_, double.theta_, rtol=1e-7)
    np.testing.assert_allclose(mixed.coef_, double.coef_, rtol=1e-7, atol=1e-9)


def test_nb_fit_of_a_response_does_not_depend_on_the_others(monkeypatch):
    # Each response converges on its own, so fitting it alone, in a smaller block, with other
    # responses or in parallel threads gives the same null model.
    rng = np.random.default_rng(9)
    thetas = np.array([0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 1.5])
    C = _covariates(rng, 3000)
    mu = np.exp(0.5 + 0.4 * C[:, :1] - 0.3 * C[:, 2:3] + rng.normal(0, 0.5, thetas.size))
    Y = rng.negative_binomial(thetas, thetas / (thetas + mu)).astype(float)
    full = NBScoreStatistic().fit(Y, C)
    monkeypatch.setattr(nb_module, "_FIT_BLOCK_BYTES", 8 * 3000 * 3)  # blocks of 3 responses
    blocks = NBScoreStatistic().fit(Y, C)
    threads = NBScoreStatistic(n_jobs=2).fit(Y, C)  # blocks fitted in parallel threads
    for attr in ("theta_", "coef_", "null_info_", "whitener_", "converged_"):
        np.testing.assert_array_equal(getattr(threads, attr), getattr(blocks, attr))
    for g in (0, 4, 7):
        alone = NBScoreStatistic().fit(Y[:, [g]], C)
        for other in (blocks, alone):
            j = g if other is blocks else 0
            np.testing.assert_allclose(other.theta_[j], full.theta_[g], rtol=1e-12)
            np.testing.assert_allclose(other.coef_[j], full.coef_[g], rtol=1e-12, atol=1e-14)


def test_nb_theta_bounds_and_fixed_theta():
    rng = np.random.default_rng(7)
    n = 500
    C = rng.normal(size=(n, 1))
    Y = np.column_stack(
        [
            rng.poisson(3.0, n),  # no overdispersion: theta runs to the upper bound
            rng.binomial(6, 0.5, n),  # underdispersed
            rng.negative_binomial(0.05, 0.05 / 2.05, n),  # very overdispersed
        ]
    ).astype(float)
    stat = NBScoreStatistic(theta_bounds=(0.1, 100.0)).fit(Y, C)
    assert np.all((stat.theta_ >= 0.1) & (stat.theta_ <= 100.0))
    assert stat.theta_[0] > 20
    assert stat.theta_[1] == pytest.approx(100.0) and stat.theta_[2] == pytest.approx(0.1)
    fixed = NBScoreStatistic(theta=2.5).fit(Y, C)
    np.testing.assert_array_equal(fixed.theta_, 2.5)
    x = _treatment(rng, n, 60)
    R = _resamples(rng, x, 4)
    expected = _nb_dense_score(fixed, Y, C, R.toarray())
    np.testing.assert_allclose(fixed.evaluate(R), expected, rtol=1e-8)


def test_nb_sparse_counts_and_zero_response():
    rng = np.random.default_rng(8)
    Y, C, x = _nb_data(rng, g=4)
    Y[:, 2] = 0.0
    dense = NBScoreStatistic().fit(Y, C)
    sparse = NBScoreStatistic().fit(sp.csr_matrix(Y), C)
    assert dense.no_counts_.tolist() == [False, False, True, False]
    R = _resamples(rng, x, 5)
    z_dense, z_sparse = dense.evaluate(R), sparse.evaluate(R)
    np.testing.assert_allclose(z_sparse, z_dense, rtol=1e-10, equal_nan=True)
    assert np.all(np.isnan(z_dense[:, 2])) and np.all(np.isfinite(z_dense[:, [0, 1, 3]]))
    obs = dense.observed(x)
    assert np.isnan(obs["effect"][2]) and np.all(np.isfinite(obs["effect"][[0, 1, 3]]))


def test_nb_statistic_sign_follows_effect():
    rng = np.random.default_rng(9)
    Y_up, C, x = _nb_data(rng, n=600, g=3, effect=1.0, m=80)
    Y_down = _nb_data(np.random.default_rng(9), n=600, g=3, effect=-1.0, m=80)[0]
    up = NBScoreStatistic().fit(Y_up, C).observed(x)
    down = NBScoreStatistic().fit(Y_down, C).observed(x)
    assert np.all(up["statistic"] > 3) and np.all(up["effect"] > 0)
    assert np.all(down["statistic"] < -3) and np.all(down["effect"] < 0)
    assert np.all(np.abs(up["effect"] - 1.0 / LN2) < 4 * up["effect_se"])


# --------------------------------------------------------------------------- shared behaviour
def _fitted(kind, rng, n=300, g=7):
    Y, C, x = _nb_data(rng, n=n, g=g)
    if kind == "ols":
        return OLSStatistic().fit(np.log1p(Y), C), x
    return NBScoreStatistic().fit(Y, C), x


@pytest.mark.parametrize("kind", ["ols", "nb"])
def test_columns_subset_equals_slicing(kind):
    rng = np.random.default_rng(10)
    stat, x = _fitted(kind, rng)
    R = _resamples(rng, x, 6)
    full = stat.evaluate(R)
    for cols in ([3], [6, 0, 2], [1, 1, 4], np.arange(7)[::-1], [0, 1, 2, 3, 4, 6]):
        np.testing.assert_allclose(stat.evaluate(R, np.asarray(cols)), full[:, cols], rtol=1e-12)
    mask = np.zeros(7, dtype=bool)
    mask[[2, 5]] = True
    np.testing.assert_allclose(stat.evaluate(R, mask), full[:, [2, 5]], rtol=1e-12)
    assert stat.evaluate(R, np.array([], dtype=int)).shape == (6, 0)
    obs = stat.observed(x)
    sub = stat.observed(x, columns=[5, 1])
    for key in ("statistic", "effect", "effect_se"):
        np.testing.assert_allclose(sub[key], obs[key][[5, 1]], rtol=1e-10)


@pytest.mark.parametrize("kind", ["ols", "nb"])
def test_block_size_and_chunking_do_not_change_results(kind, monkeypatch):
    rng = np.random.default_rng(11)
    stat, x = _fitted(kind, rng)
    R = _resamples(rng, x, 9)
    reference = stat.evaluate(R)
    for block_size in (1, 2, 3, 7, 100):
        stat.set_params(block_size=block_size)
        np.testing.assert_allclose(stat.evaluate(R), reference, rtol=1e-12)
        np.testing.assert_allclose(stat.evaluate(R, [4, 2]), reference[:, [4, 2]], rtol=1e-12)
    stat.set_params(block_size=None)
    monkeypatch.setattr(base_module, "_OUTPUT_BYTES", 64)  # one resample per chunk
    np.testing.assert_allclose(stat.evaluate(R), reference, rtol=1e-12)


@pytest.mark.parametrize("kind", ["ols", "nb"])
def test_touched_cells_path_and_observed_agree_with_evaluate(kind):
    rng = np.random.default_rng(12)
    stat, x = _fitted(kind, rng, n=400)
    R = _resamples(rng, x, 40)  # touches most cells: all-cells path
    few = R[[3, 17]]  # touches few cells: restricted to the touched cells
    assert few.getnnz(axis=0).astype(bool).sum() < 0.5 * stat.n_cells_
    np.testing.assert_allclose(stat.evaluate(few), stat.evaluate(R)[[3, 17]], rtol=1e-10)
    np.testing.assert_allclose(
        stat.observed(x)["statistic"], stat.evaluate(x[None, :])[0], rtol=1e-12
    )


@pytest.mark.parametrize("kind", ["ols", "nb"])
def test_blocks_of_resamples_reuse_pieces_exactly(kind, monkeypatch):
    """Blocks evaluated with a shared memo (pieces built once, for all cells) give evaluate's
    numbers bit for bit, in CSR and in CSC, for blocks touching few or most cells."""
    rng = np.random.default_rng(14)
    stat, x = _fitted(kind, rng, n=400)
    R = _resamples(rng, x, 40)
    blocks = [R[[3, 17]], R[5:30], R[30:]]
    for fmt in ("csr", "csc"):
        memo: dict = {}
        for cols in (None, [4, 2, 4]):
            memo = {}
            for part in blocks:
                part = part.asformat(fmt)
                got = stat._evaluate_blocks(part, cols, memo)
                np.testing.assert_array_equal(got, stat.evaluate(part, cols))
        assert "pieces" in memo
    calls = []
    build = type(stat)._pieces
    monkeypatch.setattr(type(stat), "_pieces", lambda *a: calls.append(1) or build(*a))
    memo = {}
    for part in blocks:
        stat._evaluate_blocks(part, [1, 3], memo)
    assert len(calls) == 1


@pytest.mark.parametrize("kind", ["ols", "nb"])
def test_resample_formats(kind):
    rng = np.random.default_rng(13)
    stat, x = _fitted(kind, rng)
    R = _resamples(rng, x, 4)
    reference = stat.evaluate(R)
    np.testing.assert_allclose(stat.evaluate(R.toarray()), reference, rtol=1e-12)
    np.testing.assert_allclose(stat.evaluate(R.tocsc()), reference, rtol=1e-12)
    np.testing.assert_allclose(stat.evaluate(R.astype(bool)), reference, rtol=1e-12)
    with_zeros = R.copy()
    with_zeros.data[:3] = 0.0  # explicit zeros are dropped, not counted as treated
    dense = with_zeros.toarray()
    np.testing.assert_allclose(stat.evaluate(with_zeros), stat.evaluate(dense), rtol=1e-12)


@pytest.mark.parametrize("cls", [OLSStatistic, NBScoreStatistic])
def test_input_errors(cls):
    rng = np.random.default_rng(14)
    n = 60
    Y = rng.poisson(2.0, size=(n, 3)).astype(float)
    C = rng.normal(size=(n, 2))
    with pytest.raises(NotFittedError):
        cls().evaluate(sp.csr_matrix((2, n)))
    bad = Y.copy()
    bad[4, 1] = np.nan
    with pytest.raises(ValueError, match="Y contains 1 NaN"):
        cls().fit(bad, C)
    badC = C.copy()
    badC[0, 0] = np.inf
    with pytest.raises(ValueError, match="C contains 1 NaN or infinite"):
        cls().fit(Y, badC)
    with pytest.raises(ValueError, match="C must be numeric"):
        cls().fit(Y, np.array([["a", "b"]] * n))
    with pytest.raises(ValueError, match="length mismatch"):
        cls().fit(Y, C[:-1])
    with pytest.raises(ValueError, match="block_size"):
        cls(block_size=0).fit(Y, C)

    stat = cls().fit(Y, C)
    x = _treatment(rng, n, 10)
    with pytest.raises(ValueError, match="R must have one column per cell"):
        stat.evaluate(sp.csr_matrix((3, n + 1)))
    R = sp.csr_matrix(np.stack([x, x]) * 2)
    with pytest.raises(ValueError, match="R must hold 0/1"):
        stat.evaluate(R)
    duplicated = sp.csr_matrix((np.ones(2), np.array([5, 5]), np.array([0, 2])), shape=(1, n))
    with pytest.raises(ValueError, match="R must hold 0/1"):
        stat.evaluate(duplicated)
    with pytest.raises(ValueError, match="columns must be response indices"):
        stat.evaluate(sp.csr_matrix(x[None, :]), columns=[0, 3])
    with pytest.raises(ValueError, match="columns must be a 1-D"):
        stat.evaluate(sp.csr_matrix(x[None, :]), columns=[0.5])
    with pytest.raises(ValueError, match="x has 59 cells"):
        stat.observed(x[:-1])
    with pytest.raises(ValueError, match="x has no treated cells"):
        stat.observed(np.zeros(n))
    with pytest.raises(ValueError, match="x must be binary"):
        stat.observed(x * 3)


def test_nb_count_errors():
    rng = np.random.default_rng(15)
    Y = rng.poisson(2.0, size=(50, 2)).astype(float)
    Y[3, 0] = -1.0
    with pytest.raises(ValueError, match="Y must hold non-negative counts"):
        NBScoreStatistic().fit(Y)
    with pytest.raises(ValueError, match="Y must hold non-negative counts"):
        NBScoreStatistic().fit(sp.csr_matrix(Y))
    OLSStatistic().fit(Y)  # negative values are fine for OLS
    with pytest.raises(ValueError, match="theta_bounds"):
        NBScoreStatistic(theta_bounds=(10.0, 1.0)).fit(np.abs(Y))
    with pytest.raises(ValueError, match="theta"):
        NBScoreStatistic(theta=-1.0).fit(np.abs(Y))
    with pytest.raises(ValueError, match="effect_fit"):
        NBScoreStatistic(effect_fit="exact").fit(np.abs(Y))


def test_estimator_protocol():
    stat = NBScoreStatistic(theta=2.0, block_size=8)
    assert isinstance(stat, BaseStatistic)
    params = clone(stat).get_params()
    assert params["theta"] == 2.0 and params["block_size"] == 8
    assert OLSStatistic().get_params() == {"block_size": None}


# --------------------------------------------------------------------------- fit_cells
def _fit_cells_data(seed=0, n=600, g=5, n_fit=300):
    rng = np.random.default_rng(seed)
    Y, C, _ = _nb_data(rng, n=n, g=g, m=1, effect=0.0)
    fit = np.zeros(n, dtype=bool)
    fit[rng.choice(n, n_fit, replace=False)] = True
    return rng, Y, C, fit


def _dense_parts(stat, Y, C):
    """μ, a, w of every cell and the design [1, C] from a fitted NB statistic."""
    X0 = np.column_stack([np.ones(Y.shape[0]), C])
    mu = np.exp(stat.basis_ @ stat.coef_.T)
    den = 1.0 + mu / stat.theta_
    return X0, mu, (Y - mu) / den, mu / den


def test_fit_cells_none_or_all_is_bit_identical():
    rng = np.random.default_rng(3)
    Y, C, x = _nb_data(rng)
    R = _resamples(rng, x, 20)
    plain = NBScoreStatistic().fit(Y, C)
    for mask in (None, np.ones(Y.shape[0], dtype=bool)):
        stat = NBScoreStatistic().fit(Y, C, fit_cells=mask)
        assert stat.fit_cells_ is None and stat.n_fit_cells_ == Y.shape[0]
        np.testing.assert_array_equal(stat.coef_, plain.coef_)
        np.testing.assert_array_equal(stat.theta_, plain.theta_)
        np.testing.assert_array_equal(stat.evaluate(R), plain.evaluate(R))
        a, b = stat.observed(x), plain.observed(x)
        for key in ("statistic", "effect", "effect_se"):
            np.testing.assert_array_equal(a[key], b[key])
    ols = OLSStatistic().fit(Y, C, fit_cells=np.ones(Y.shape[0], dtype=bool))
    np.testing.assert_array_equal(ols.evaluate(R), OLSStatistic().fit(Y, C).evaluate(R))


def test_fit_cells_null_fit_equals_fit_on_the_rows_alone():
    _, Y, C, fit = _fit_cells_data()
    sub = NBScoreStatistic().fit(Y, C, fit_cells=fit)
    alone = NBScoreStatistic().fit(Y[fit], C[fit])
    mu_sub = np.exp(sub.basis_[fit] @ sub.coef_.T)
    mu_alone = np.exp(alone.basis_ @ alone.coef_.T)
    np.testing.assert_allclose(mu_sub, mu_alone, rtol=1e-6)
    np.testing.assert_allclose(sub.theta_, alone.theta_, rtol=1e-5)
    np.testing.assert_array_equal(sub.fit_cells_, fit)
    assert sub.n_fit_cells_ == fit.sum() and sub.n_cells_ == Y.shape[0]
    # a treatment inside the fit cells: the same statistic as the fit on those rows alone
    x = np.zeros(Y.shape[0])
    x[np.flatnonzero(fit)[:40]] = 1.0
    np.testing.assert_allclose(
        sub.observed(x)["statistic"], alone.observed(x[fit])["statistic"], rtol=1e-5
    )


def test_fit_cells_variance_outside_and_mixed():
    """Σ_x a / sqrt(Σ_x w - ‖Σ_in D‖² + ‖Σ_out D‖²), from explicit matrices, both plans."""
    rng, Y, C, fit = _fit_cells_data(1)
    stat = NBScoreStatistic().fit(Y, C, fit_cells=fit)
    X0, mu, a, w = _dense_parts(stat, Y, C)
    out_cells, in_cells = np.flatnonzero(~fit), np.flatnonzero(fit)
    rows = []
    for n_out, n_in in ((30, 0), (20, 15), (0, 30)):
        x = np.zeros(Y.shape[0])
        x[rng.choice(out_cells, n_out, replace=False)] = 1.0
        x[rng.choice(in_cells, n_in, replace=False)] = 1.0
        rows.append(x)
    rows = np.array(rows)
    expected = np.empty((len(rows), Y.shape[1]))
    for g in range(Y.shape[1]):
        H = X0[fit].T @ (w[fit, g, None] * X0[fit])
        Hinv = np.linalg.pinv(H)
        for b, x in enumerate(rows):
            v_in = X0.T @ (w[:, g] * x * fit)
            v_out = X0.T @ (w[:, g] * x * ~fit)
            info = x @ w[:, g] - v_in @ Hinv @ v_in + v_out @ Hinv @ v_out
            expected[b, g] = (x @ a[:, g]) / np.sqrt(info)
    np.testing.assert_allclose(stat.evaluate(sp.csr_matrix(rows)), expected, rtol=1e-8)
    for b, x in enumerate(rows):  # one resample at a time: the other gather plan
        np.testing.assert_allclose(stat.observed(x)["statistic"], expected[b], rtol=1e-8)
    # the stored pieces of all cells (stacked plan) give the same values
    many = sp.csr_matrix(np.repeat(rows, 200, axis=0))
    np.testing.assert_allclose(stat.evaluate(many)[::200], expected, rtol=1e-8)


def test_fit_cells_prediction_variance_is_calibrated():
    """Treated cells outside the fit: z over fresh null data has mean 0 and variance 1."""
    rng = np.random.default_rng(7)
    n, g = 800, 400
    C = rng.normal(size=(n, 1))
    mu = np.exp(1.0 + 0.5 * C)
    Y = rng.negative_binomial(5.0, 5.0 / (5.0 + mu), size=(n, g)).astype(float)
    fit = np.ones(n, dtype=bool)
    fit[:150] = False  # 150 outside cells, all treated
    x = (~fit).astype(float)
    z = NBScoreStatistic().fit(Y, C, fit_cells=fit).observed(x)["statistic"]
    assert abs(z.mean()) < 0.2 and 0.8 < z.var() < 1.2, (z.mean(), z.var())


def test_fit_cells_effect_against_the_fit_cells():
    """Intercept only: the effect of outside treated cells is log2(mean_T / mean_fit)."""
    rng = np.random.default_rng(2)
    n = 500
    fit = np.zeros(n, dtype=bool)
    fit[:300] = True
    x = np.zeros(n)
    x[400:460] = 1.0
    mu = np.where(x == 1, 8.0, 4.0)
    Y = rng.negative_binomial(4.0, 4.0 / (4.0 + mu[:, None]), size=(n, 3)).astype(float)
    Y[300:400] *= 5  # other cells: not in the comparison
    expected = np.log2(Y[x == 1].mean(axis=0) / Y[fit].mean(axis=0))
    full = NBScoreStatistic(effect_fit="full").fit(Y, None, fit_cells=fit).observed(x)
    np.testing.assert_allclose(full["effect"], expected, rtol=1e-6)
    lin = NBScoreStatistic().fit(Y, None, fit_cells=fit).observed(x)
    np.testing.assert_allclose(lin["effect"], expected, atol=0.02)
    assert np.all(np.isfinite(lin["effect_se"])) and np.all(lin["effect_se"] > 0)


def test_refit_on_the_unit_and_fit_cells():
    rng, Y, C, fit = _fit_cells_data(4)
    stat = NBScoreStatistic().fit(Y, C, fit_cells=fit)
    x = np.zeros(Y.shape[0])
    x[rng.choice(np.flatnonzero(~fit), 40, replace=False)] = 1.0
    both = fit | (x == 1)
    unit = stat.refit(both)
    assert unit is not stat and stat.fit_cells_ is not None and unit.converged_.all()
    np.testing.assert_array_equal(unit.theta_, stat.theta_)
    np.testing.assert_array_equal(unit.fit_cells_, both)
    # the refit's score equations hold on its cells: Σ q (y - μ)/(1 + μ/θ) = 0
    X0, mu, a, w = _dense_parts(unit, Y, C)
    score = X0[both].T @ a[both]
    assert np.abs(score).max() < 1e-6 * np.abs(Y).sum()
    # the unit's statistic is the in-sample score test on its cells
    x_rows = x[None, both]
    X0b = X0[both]
    for g in range(Y.shape[1]):
        H = X0b.T @ (w[both, g, None] * X0b)
        v = X0b.T @ (w[both, g] * x_rows[0])
        info = x_rows[0] @ w[both, g] - v @ np.linalg.pinv(H) @ v
        z = (x_rows[0] @ a[both, g]) / np.sqrt(info)
        np.testing.assert_allclose(unit.observed(x)["statistic"][g], z, rtol=1e-8)
    assert stat.refit(fit) is stat  # the same cells: the same statistic


def test_fit_cells_bad_input():
    rng, Y, C, fit = _fit_cells_data(5, n=200, n_fit=100)
    with pytest.raises(ValueError, match="one entry per cell"):
        NBScoreStatistic().fit(Y, C, fit_cells=fit[:-1])
    with pytest.raises(ValueError, match="boolean mask"):
        NBScoreStatistic().fit(Y, C, fit_cells=np.flatnonzero(fit) + 2.5)
    few = np.zeros(Y.shape[0], dtype=bool)
    few[:3] = True
    with pytest.raises(ValueError, match="fit cells but the covariates have rank"):
        NBScoreStatistic().fit(Y, C, fit_cells=few)
    # a batch without fit cells: the null model cannot predict it
    no_batch = fit & (C[:, 2] == 0)
    with pytest.raises(ValueError, match="only .* on the"):
        NBScoreStatistic().fit(Y, C, fit_cells=no_batch)
    with pytest.raises(NotImplementedError, match="fit_cells"):
        OLSStatistic().fit(Y, C, fit_cells=fit)
    with pytest.raises(ValueError, match="one entry per cell"):
        NBScoreStatistic().fit(Y, C, fit_cells=fit).refit(fit[:10])


def test_progress_bar_does_not_change_the_fit(capsys):
    rng = np.random.default_rng(0)
    Y, C, _ = _nb_data(rng)
    quiet = NBScoreStatistic().fit(Y, C)
    loud = NBScoreStatistic(progress=True).fit(Y, C)
    np.testing.assert_array_equal(quiet.coef_, loud.coef_)
    assert NBScoreStatistic().get_params()["progress"] is False


@pytest.mark.parametrize("dtype, ulps", [(np.float32, 4), (np.float64, 2)])
def test_log1p_from_log_is_within_a_few_ulps(dtype, ulps):
    # The float32 passes' log1p (np.log with Goldberg's correction) against np.log1p in double.
    from sklcrt.statistics._nb_fit import _log1p

    rng = np.random.default_rng(0)
    u = np.concatenate(
        [10.0 ** rng.uniform(-30, 6, 20_000), rng.uniform(-0.999, 0.0, 2_000), [0.0, 1e-300]]
    ).astype(dtype)
    got = _log1p(u)
    assert got.dtype == dtype
    ref = np.log1p(u.astype(np.float64))
    err = np.abs(got.astype(np.float64) - ref) / np.spacing(np.abs(ref).astype(dtype))
    assert np.max(err[ref != 0]) <= ulps
    assert np.all(got[ref == 0] == 0)
