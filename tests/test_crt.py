"""CRTTest: composition, the scikit-learn object model, errors, calibration and power."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import ParameterGrid

from sklcrt.crt import CRTTest
from sklcrt.propensity import NewtonLogisticRegression, fit_propensity
from sklcrt.samplers import (
    BaseSampler,
    BernoulliSampler,
    PermutationSampler,
    StratifiedPermutationSampler,
)
from sklcrt.statistics import NBScoreStatistic, OLSStatistic
from sklcrt.strata import StratumEncoder


def _confounded_null(n=3000, g=50, seed=0, counts=False):
    """Covariates (batch, burden, library size) drive both the treatment and the responses."""
    rng = np.random.default_rng(seed)
    batch = rng.integers(0, 2, n)
    burden = np.log1p(rng.poisson(3 + 3 * batch, n))
    loglib = rng.normal(0, 0.4, n) + 0.3 * batch
    C = np.column_stack([np.ones(n), batch, burden, loglib])
    if counts:
        coef = rng.normal(0, 0.3, size=(4, g))
        coef[0] = rng.uniform(-0.5, 1.5, g)
        mu = np.exp(C @ coef)
        theta = 5.0
        Y = rng.negative_binomial(theta, theta / (theta + mu)).astype(float)
    else:
        Y = C @ rng.normal(0, 1, size=(4, g)) + rng.normal(size=(n, g))
    return C, batch, burden, Y, rng


def _unit(C, rng, strength=1.0):
    eta = -2.5 + strength * (0.8 * C[:, 2] + 0.5 * C[:, 1] + 0.5 * C[:, 3])
    return rng.random(C.shape[0]) < 1 / (1 + np.exp(-eta))


def test_fit_attributes_and_frame():
    C, batch, burden, Y, rng = _confounded_null(n=800, g=5)
    x = _unit(C, rng)
    test = CRTTest(n_resamples=99, n_resamples_adaptive=0, store_null=True, random_state=0)
    test.fit(C, x, responses=Y, batch=batch)
    for name in ("statistic_", "effect_", "effect_se_", "pvalues_", "n_resamples_"):
        assert getattr(test, name).shape == (5,)
    assert test.propensity_.shape == (800,)
    assert test.null_distribution_.shape == (99, 5)
    assert test.n_treated_ == int(x.sum())
    assert np.all((test.pvalue_ > 0) & (test.pvalue_ <= 1))
    frame = test.to_frame(response_names=list("abcde"))
    assert list(frame["response"]) == list("abcde")
    assert (frame["n_resamples"] == 99).all()


def test_string_api_equals_objects():
    C, batch, burden, Y, rng = _confounded_null(n=1000, g=4)
    x = _unit(C, rng)
    kwargs = dict(
        n_bins=5,
        stratify_by_batch=True,
        batch_key="batch",
        burden_key="b",
        n_burden_bins=4,
        burden_bin_method="quantile",
    )
    by_string = CRTTest(
        resampling_method="stratified_perm",
        resampling_kwargs=kwargs,
        n_resamples=99,
        n_resamples_adaptive=0,
        random_state=3,
    )
    by_objects = CRTTest(
        sampler=StratifiedPermutationSampler(),
        encoder=StratumEncoder(
            n_bins=5, stratify_by_batch=True, n_burden_bins=4, burden_bin_method="quantile"
        ),
        n_resamples=99,
        n_resamples_adaptive=0,
        random_state=3,
    )
    a = by_string.fit(C, x, responses=Y, batch=batch, burden=burden)
    b = by_objects.fit(C, x, responses=Y, batch=batch, burden=burden)
    np.testing.assert_array_equal(a.pvalue_, b.pvalue_)
    np.testing.assert_array_equal(a.strata_, b.strata_)
    assert a.diagnostics_["n_strata"] == b.diagnostics_["n_strata"]


def test_nested_params_clone_and_grid():
    test = CRTTest(
        encoder=StratumEncoder(),
        sampler=StratifiedPermutationSampler(),
        statistic=OLSStatistic(),
        random_state=0,
    )
    params = test.get_params(deep=True)
    assert params["encoder__n_burden_bins"] == 8
    test.set_params(encoder__n_burden_bins=4)
    assert test.encoder.n_burden_bins == 4
    cloned = clone(test)
    assert cloned.encoder is not test.encoder and cloned.encoder.n_burden_bins == 4
    grid = ParameterGrid(
        {
            "encoder__n_burden_bins": [1, 8],
            "sampler": [StratifiedPermutationSampler(), PermutationSampler()],
        }
    )
    configured = [clone(test).set_params(**p) for p in grid]
    assert len(configured) == 4
    assert {type(t.sampler).__name__ for t in configured} == {
        "StratifiedPermutationSampler",
        "PermutationSampler",
    }


def test_reproducible_and_seed_sensitive():
    C, batch, burden, Y, rng = _confounded_null(n=600, g=3)
    x = _unit(C, rng)

    def fit(seed):
        test = CRTTest(n_resamples=49, n_resamples_adaptive=0, store_null=True, random_state=seed)
        return test.fit(C, x, responses=Y).null_distribution_

    np.testing.assert_array_equal(fit(1), fit(1))
    assert not np.array_equal(fit(1), fit(2))


def test_prefitted_statistic_is_reused():
    C, batch, burden, Y, rng = _confounded_null(n=600, g=3)
    x = _unit(C, rng)
    stat = OLSStatistic().fit(Y, C)
    a = CRTTest(statistic=stat, n_resamples=49, n_resamples_adaptive=0, random_state=0)
    a.fit(C, x)
    b = CRTTest(n_resamples=49, n_resamples_adaptive=0, random_state=0).fit(C, x, responses=Y)
    assert a.statistic_estimator_ is stat
    np.testing.assert_allclose(a.pvalue_, b.pvalue_)
    sub = CRTTest(statistic=stat, n_resamples=49, n_resamples_adaptive=0, random_state=0)
    sub.fit(C, x, columns=[2, 0])
    np.testing.assert_allclose(sub.statistic_, a.statistic_[[2, 0]])


def test_custom_propensity_classifier():
    C, batch, burden, Y, rng = _confounded_null(n=800, g=2)
    x = _unit(C, rng)
    ours = CRTTest(n_resamples=19, n_resamples_adaptive=0, random_state=0).fit(C, x, responses=Y)
    sk = CRTTest(
        propensity=LogisticRegression(max_iter=1000, tol=1e-10),
        n_resamples=19,
        n_resamples_adaptive=0,
        random_state=0,
    ).fit(C, x, responses=Y)
    np.testing.assert_allclose(ours.propensity_, sk.propensity_, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(y=np.r_[np.ones(10), np.zeros(10)] * 2), "binary"),
        (dict(y=np.zeros(20)), "no treated"),
        (dict(y=np.ones(20)), "no control"),
        (dict(y=np.r_[np.ones(5), np.zeros(14)]), "length mismatch"),
    ],
)
def test_bad_treatment(kwargs, match):
    rng = np.random.default_rng(0)
    C, Y = rng.normal(size=(20, 2)), rng.normal(size=(20, 2))
    with pytest.raises(ValueError, match=match):
        CRTTest(n_resamples=9).fit(C, kwargs["y"], responses=Y)


def test_bad_inputs():
    rng = np.random.default_rng(0)
    C, Y = rng.normal(size=(30, 2)), rng.normal(size=(30, 2))
    x = np.r_[np.ones(10), np.zeros(20)]
    C_nan = C.copy()
    C_nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        CRTTest(n_resamples=9).fit(C_nan, x, responses=Y)
    Y_nan = Y.copy()
    Y_nan[1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN|finite"):
        CRTTest(n_resamples=9).fit(C, x, responses=Y_nan)
    with pytest.raises(ValueError, match="negative"):
        CRTTest(statistic=NBScoreStatistic(), n_resamples=9).fit(C, x, responses=-np.ones((30, 2)))
    with pytest.raises(ValueError, match="not both"):
        CRTTest(sampler=PermutationSampler(), resampling_method="perm").fit(C, x, responses=Y)
    with pytest.raises(ValueError, match="burden_key"):
        CRTTest(
            resampling_method="stratified_perm",
            resampling_kwargs={"burden_key": "b"},
            n_resamples=9,
        ).fit(C, x, responses=Y)
    with pytest.raises(ValueError, match="n_resamples"):
        CRTTest(n_resamples=0).fit(C, x, responses=Y)
    with pytest.raises(ValueError, match="alternative"):
        CRTTest(alternative="both").fit(C, x, responses=Y)


def _null_pvalues(sampler, statistic, counts, n_units=40, g=50, B=199, seed=0, **extra):
    C, batch, burden, Y, rng = _confounded_null(n=2500, g=g, seed=seed, counts=counts)
    stat = statistic.fit(Y, C)
    pvals = []
    for u in range(n_units):
        strength = 0.0 if isinstance(sampler, PermutationSampler) else 1.0
        x = _unit(C, rng, strength=strength)
        test = CRTTest(
            statistic=stat,
            sampler=sampler,
            n_resamples=B,
            n_resamples_adaptive=0,
            random_state=u,
            **extra,
        )
        test.fit(C, x, batch=batch, burden=burden if "encoder" in extra else None)
        pvals.append(test.pvalue_)
    return np.concatenate(pvals)


SAMPLERS = {
    "bernoulli": (BernoulliSampler(), {}),
    "stratified": (
        StratifiedPermutationSampler(),
        {"encoder": StratumEncoder(n_bins=10, n_burden_bins=4)},
    ),
    "perm": (PermutationSampler(), {}),
}


@pytest.mark.slow
@pytest.mark.parametrize("sampler_name", list(SAMPLERS))
@pytest.mark.parametrize("counts", [False, True], ids=["ols", "nb"])
def test_calibration_under_confounded_null(sampler_name, counts):
    sampler, extra = SAMPLERS[sampler_name]
    statistic = NBScoreStatistic() if counts else OLSStatistic()
    p = _null_pvalues(sampler, statistic, counts, **extra)
    n = p.size
    assert n >= 2000
    # Binomial bound on the fraction below 0.05 (4 standard errors: 12 pairings are tested).
    se = np.sqrt(0.05 * 0.95 / n)
    assert abs(np.mean(p <= 0.05) - 0.05) < 4 * se
    # p-values are discrete on the grid k / (B + 1): compare with a uniform on that grid.
    assert stats.kstest(p, "uniform").pvalue > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("counts", [False, True], ids=["ols", "nb"])
def test_power_under_effect(counts):
    C, batch, burden, Y, rng = _confounded_null(n=2000, g=20, seed=5, counts=counts)
    x = _unit(C, rng)
    Y = Y.copy()
    if counts:
        Y[x, :10] = rng.binomial(Y[x, :10].astype(int), 0.4)  # knock-down: 60% fewer counts
    else:
        Y[x, :10] -= 0.6
    stat = NBScoreStatistic() if counts else OLSStatistic()
    test = CRTTest(statistic=stat, n_resamples=499, n_resamples_adaptive=0, random_state=0).fit(
        C, x, responses=Y
    )
    assert np.all(test.pvalue_[:10] <= 0.01)
    assert np.all(test.effect_[:10] < 0)
    assert np.mean(test.pvalue_[10:] <= 0.05) <= 0.3


def test_adaptive_second_stage_only_where_small():
    C, batch, burden, Y, rng = _confounded_null(n=1500, g=10, seed=2)
    x = _unit(C, rng)
    Y = Y.copy()
    Y[x, :3] += 1.0
    test = CRTTest(n_resamples=99, n_resamples_adaptive=999, random_state=0).fit(C, x, responses=Y)
    assert np.all(test.n_resamples_[:3] == 999)
    assert np.all(test.pvalue_[:3] <= 2 / 1000)
    big = test.pvalue_ > 0.02
    assert np.all(test.n_resamples_[big] == 99)
    assert test.diagnostics_["n_stage2"] == int(np.sum(test.n_resamples_ == 999))


def test_newton_propensity_is_default():
    C, batch, burden, Y, rng = _confounded_null(n=500, g=2)
    x = _unit(C, rng)
    test = CRTTest(n_resamples=9, n_resamples_adaptive=0, random_state=0).fit(C, x, responses=Y)
    assert isinstance(test.propensity_model_, NewtonLogisticRegression)
    perm = CRTTest(
        sampler=PermutationSampler(), n_resamples=9, n_resamples_adaptive=0, random_state=0
    ).fit(C, x, responses=Y)
    assert perm.propensity_ is None and perm.strata_ is None


# ---------------------------------------------------------------------- eligible cells
class _RecordingOLS(OLSStatistic):
    """OLS statistic that keeps every resample matrix it evaluates."""

    def evaluate(self, R, columns=None):
        self.seen_ = [*getattr(self, "seen_", []), R]
        return super().evaluate(R, columns)


ELIGIBLE_CONFIGS = {
    "bernoulli": dict(),
    "stratified": dict(
        resampling_method="stratified_perm",
        resampling_kwargs=dict(n_bins=4, burden_key="b", n_burden_bins=3),
    ),
    "perm": dict(resampling_method="perm"),
}


@pytest.mark.parametrize("name", list(ELIGIBLE_CONFIGS))
def test_eligible_none_or_all_true_is_unchanged(name):
    C, batch, burden, Y, rng = _confounded_null(n=900, g=6, seed=3)
    x = _unit(C, rng)
    config = ELIGIBLE_CONFIGS[name]
    kwargs = dict(batch=batch, burden=burden if "resampling_kwargs" in config else None)

    def fit(**extra):
        test = CRTTest(
            n_resamples=99, n_resamples_adaptive=199, adaptive_threshold=0.5, random_state=4,
            store_null=True, **config,
        )  # fmt: skip
        return test.fit(C, x, responses=Y, **kwargs, **extra)

    base = fit()
    for other in (fit(eligible=None), fit(eligible=np.ones(x.size, dtype=bool))):
        np.testing.assert_array_equal(other.pvalue_, base.pvalue_)
        np.testing.assert_array_equal(other.null_distribution_, base.null_distribution_)
        np.testing.assert_array_equal(other.n_resamples_, base.n_resamples_)
        assert other.diagnostics_["n_eligible"] == x.size
    assert base.diagnostics_["n_stage2"] > 0  # the second stage ran too


@pytest.mark.parametrize("name", list(ELIGIBLE_CONFIGS))
def test_resamples_treat_eligible_cells_only(name):
    C, batch, burden, Y, rng = _confounded_null(n=1500, g=3, seed=4)
    x = _unit(C, rng)
    eligible = x | (rng.random(x.size) < 0.4)
    config = ELIGIBLE_CONFIGS[name]
    stat = _RecordingOLS().fit(Y, C)
    test = CRTTest(
        statistic=stat, n_resamples=200, n_resamples_adaptive=0, random_state=0, **config
    )
    burden_arg = burden if "resampling_kwargs" in config else None
    test.fit(C, x, batch=batch, burden=burden_arg, eligible=eligible)
    (R,) = [r for r in stat.seen_ if r.shape[0] == 200]  # (observed() may evaluate x too)
    assert R.shape == (200, x.size) and R.has_sorted_indices
    assert np.all(np.diff(R.indices[R.indptr[0] : R.indptr[1]]) > 0)
    assert R[:, ~eligible].nnz == 0  # an ineligible cell is never treated
    assert R[:, eligible].nnz > 0
    assert test.diagnostics_["n_eligible"] == int(eligible.sum())
    if name == "bernoulli":
        # propensity fitted on the eligible rows only, 0 elsewhere
        p_e = fit_propensity(NewtonLogisticRegression(), C[eligible], x[eligible])
        np.testing.assert_allclose(test.propensity_[eligible], p_e)
        assert np.all(test.propensity_[~eligible] == 0)
        # every eligible cell is drawn at about its propensity: the draws follow p_hat
        freq = np.asarray(R[:, eligible].mean(axis=0)).ravel()
        assert abs(freq.sum() - p_e.sum()) < 5 * np.sqrt(p_e.sum() / 200)
    else:
        # exactly the observed treated count in every stratum of the eligible cells
        strata = test.strata_ if test.strata_ is not None else np.where(eligible, 0, -1)
        assert np.all(strata[~eligible] == -1) and np.all(strata[eligible] >= 0)
        n_strata = strata.max() + 1
        onehot = np.zeros((x.size, n_strata))
        onehot[eligible, strata[eligible]] = 1
        per_stratum = R @ onehot
        observed = np.bincount(strata[x], minlength=n_strata)
        np.testing.assert_array_equal(per_stratum, np.broadcast_to(observed, per_stratum.shape))
        if test.strata_ is not None:
            assert test.diagnostics_["n_strata"] > 1


def test_eligible_errors():
    C, batch, burden, Y, rng = _confounded_null(n=300, g=2, seed=1)
    x = _unit(C, rng)
    eligible = x | (rng.random(x.size) < 0.5)
    outside = eligible.copy()
    outside[np.flatnonzero(x)[0]] = False
    test = CRTTest(n_resamples=9, n_resamples_adaptive=0)
    with pytest.raises(ValueError, match="1 treated cell.*not eligible"):
        test.fit(C, x, responses=Y, eligible=outside)
    with pytest.raises(ValueError, match="eligible marks no control cell"):
        test.fit(C, x, responses=Y, eligible=x)
    with pytest.raises(ValueError, match="length mismatch.*eligible"):
        test.fit(C, x, responses=Y, eligible=eligible[:-1])
    with pytest.raises(ValueError, match="eligible must be"):
        test.fit(C, x, responses=Y, eligible=np.where(eligible, 2, 0))


def _low_moi_screen(rng, n=3000, g=40, counts=False):
    """Low MOI: 40 % NTC cells, 10 % cells of a null unit, 50 % knock-outs of other targets that
    shift every response (a strong trans effect). Returns C, the unit, the NTC cells and Y."""
    group = rng.choice(3, size=n, p=[0.4, 0.1, 0.5])  # 0 NTC, 1 the null unit, 2 knock-outs
    loglib = rng.normal(0, 0.3, n)
    C = np.column_stack([np.ones(n), loglib])
    shift = rng.normal(0, 0.6, g) * (group == 2)[:, None]  # trans effects of the knock-outs
    if counts:
        mu = np.exp(1.0 + loglib[:, None] + shift)
        Y = rng.negative_binomial(5.0, 5.0 / (5.0 + mu)).astype(float)
    else:
        Y = 0.5 * loglib[:, None] + shift + rng.normal(size=(n, g))
    return C, group == 1, group == 0, Y


@pytest.mark.slow
@pytest.mark.parametrize("counts", [False, True], ids=["ols", "nb"])
def test_eligible_ntc_controls_calibrate_low_moi(counts):
    rng = np.random.default_rng(11)
    p_nt, p_all = [], []
    for rep in range(15):
        C, x, ntc, Y = _low_moi_screen(rng, counts=counts)
        stat = (NBScoreStatistic() if counts else OLSStatistic()).fit(Y, C)
        test = CRTTest(
            statistic=stat, resampling_method="perm", n_resamples=199, n_resamples_adaptive=0,
            random_state=rep,
        )  # fmt: skip
        p_nt.append(test.fit(C, x, eligible=x | ntc).pvalue_)
        p_all.append(test.fit(C, x).pvalue_)
    p_nt, p_all = np.concatenate(p_nt), np.concatenate(p_all)
    assert p_nt.size == 600
    se = np.sqrt(0.05 * 0.95 / p_nt.size)
    # NTC cells as controls: calibrated (4 binomial standard errors, KS on the p-value grid)
    assert abs(np.mean(p_nt <= 0.05) - 0.05) < 4 * se, np.mean(p_nt <= 0.05)
    assert stats.kstest(p_nt, "uniform").pvalue > 1e-3
    # every other cell as controls: the knock-outs' trans effects make the null unit "significant"
    assert np.mean(p_all <= 0.05) > 0.05 + 20 * se, np.mean(p_all <= 0.05)
    assert stats.kstest(p_all, "uniform").pvalue < 1e-10


# ---------------------------------------------------------------------------- one owner
def _burden_screen(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    burden = rng.poisson(4, n).astype(float)
    C = np.column_stack([rng.normal(size=n), burden / 4])
    x = rng.random(n) < 0.05 + 0.02 * burden
    Y = rng.normal(size=(n, 4)) + 0.3 * burden[:, None]
    batch = np.where(rng.random(n) < 0.5, "b1", "b2")
    return C, x, Y, batch, burden


def test_object_template_and_string_api_give_identical_results_burden_included():
    C, x, Y, batch, burden = _burden_screen()
    kwargs = dict(n_bins=5, n_burden_bins=4, burden_key="burden", min_stratum_size=3)
    by_string = CRTTest(
        resampling_method="stratified_perm",
        resampling_kwargs=kwargs,
        n_resamples=99,
        n_resamples_adaptive=199,
        adaptive_threshold=0.2,
        random_state=3,
    )
    by_objects = CRTTest(
        sampler=StratifiedPermutationSampler(),
        encoder=StratumEncoder(n_bins=5, n_burden_bins=4, burden_key="burden", min_stratum_size=3),
        n_resamples=99,
        n_resamples_adaptive=199,
        adaptive_threshold=0.2,
        random_state=3,
    )
    a = by_string.fit(C, x, responses=Y, batch=batch, burden=burden)
    b = by_objects.fit(C, x, responses=Y, batch=batch, burden=burden)
    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame(), check_exact=True)
    assert a.diagnostics_["n_strata"] == b.diagnostics_["n_strata"] > 10
    assert a.covariate_columns() == b.covariate_columns() == {"batch": "batch", "burden": "burden"}


def test_default_components_expose_their_nested_parameters():
    params = CRTTest().get_params(deep=True)
    for key in ("encoder__n_burden_bins", "encoder__burden_key", "propensity__C"):
        assert any(k.startswith(key) for k in params), key
    test = CRTTest().set_params(encoder__n_burden_bins=4, sampler=StratifiedPermutationSampler())
    assert isinstance(test.encoder, StratumEncoder) and test.encoder.n_burden_bins == 4
    assert CRTTest().encoder is None  # the default instance is never shared or mutated
    # the string API builds its own sampler and encoder: their defaults are not shown
    assert not any(
        k.startswith("encoder__") for k in CRTTest(resampling_method="perm").get_params()
    )


def test_parameter_grid_over_samplers_encoders_and_statistics_without_hand_built_objects():
    from sklearn.model_selection import ParameterGrid

    C, x, Y, batch, burden = _burden_screen(n=1500)
    grid = ParameterGrid(
        [
            {"sampler": [BernoulliSampler()], "statistic": [OLSStatistic()]},
            {
                "sampler": [StratifiedPermutationSampler()],
                "encoder__n_burden_bins": [1, 8],
                "encoder__burden_key": ["burden"],
            },
        ]
    )
    strata = {}
    for params in grid:
        test = clone(CRTTest(n_resamples=49, n_resamples_adaptive=0, random_state=0))
        test.set_params(**params)
        needs_burden = "encoder__burden_key" in params
        test.fit(C, x, responses=Y, batch=batch, burden=burden if needs_burden else None)
        strata[params.get("encoder__n_burden_bins")] = test.diagnostics_["n_strata"]
    assert strata[8] > strata[1] > 1 and strata[None] == 1


def test_burden_is_required_exactly_when_the_test_bins_it():
    C, x, Y, batch, burden = _burden_screen(n=800)
    stratified = CRTTest(sampler=StratifiedPermutationSampler(), n_resamples=9)
    with pytest.raises(ValueError, match=r"encoder\.burden_key='log1p_non_ntc_guides_per_cell'"):
        stratified.fit(C, x, responses=Y)  # the encoder bins burden by default: say so
    off = stratified.set_params(encoder__burden_key=None)
    with pytest.raises(ValueError, match="burden bins off"):
        off.fit(C, x, responses=Y, burden=burden)
    with pytest.raises(ValueError, match="uses no strata"):
        CRTTest(n_resamples=9).fit(C, x, responses=Y, burden=burden)
    with pytest.warns(UserWarning, match="ignored by resampling_method='bernoulli_index'"):
        CRTTest(
            resampling_method="bernoulli_index", resampling_kwargs={"burden_key": "b"}
        ).check_params()


class _HalfSampler(BaseSampler):
    """A user's sampler, written plainly: permutes the treatment within strata, which it
    receives because it declares them (CRTTest uses no isinstance)."""

    _required_inputs = frozenset({"strata"})

    def _fit(self, x, strata, p_hat):
        self.x_, self.codes_ = x, np.unique(strata, return_inverse=True)[1]

    def _sample_keys(self, n_resamples, rng):
        n = self.x_.size
        keys = [
            row * n
            + rng.permutation(np.flatnonzero(self.codes_ == s))[
                : int(self.x_[self.codes_ == s].sum())
            ]
            for row in range(n_resamples)
            for s in np.unique(self.codes_)
        ]
        return np.sort(np.concatenate(keys)).astype(np.int64)

    def inclusion_probabilities(self):
        return np.full(self.x_.size, self.x_.mean())


def test_a_user_sampler_is_one_class_and_receives_strata():
    C, x, Y, batch, burden = _burden_screen(n=600)
    test = CRTTest(sampler=_HalfSampler(), n_resamples=19, n_resamples_adaptive=0, random_state=0)
    test.fit(C, x, responses=Y, batch=batch, burden=burden)
    assert test.strata_ is not None and test.diagnostics_["n_strata"] > 1
    assert test.resampling_method_ == "_HalfSampler"
    with pytest.raises(ValueError, match="law is known exactly"):
        clone(test).set_params(pvalue_method="saddlepoint").fit(
            C, x, responses=Y, batch=batch, burden=burden
        )


def test_crttest_ends_a_pipeline_with_metadata_routing():
    import sklearn
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    C, x, Y, batch, burden = _burden_screen(n=800)
    with sklearn.config_context(enable_metadata_routing=True):
        test = CRTTest(n_resamples=19, n_resamples_adaptive=0, random_state=0)
        test.set_fit_request(responses=True)
        pipe = make_pipeline(StandardScaler(), test).fit(C, x, responses=Y)
    direct = CRTTest(n_resamples=19, n_resamples_adaptive=0, random_state=0).fit(
        StandardScaler().fit_transform(C), x, responses=Y
    )
    np.testing.assert_array_equal(pipe[-1].pvalue_, direct.pvalue_)


def test_result_is_shaped_like_scipys_and_old_names_warn():
    C, x, Y, _, _ = _burden_screen(n=500)
    test = CRTTest(n_resamples=19, n_resamples_adaptive=0, store_null=True, random_state=0)
    test.fit(C, x, responses=Y)
    result = test.result_
    assert result.null_distribution.shape == (19, 4)
    np.testing.assert_array_equal(result.pvalue, test.pvalue_)
    with pytest.warns(FutureWarning, match="pvalue_"):
        np.testing.assert_array_equal(test.pvalues_, result.pvalue)
    with pytest.warns(FutureWarning, match="responses="):
        CRTTest(n_resamples=19, n_resamples_adaptive=0, random_state=0).fit(C, x, Y=Y)
    with pytest.raises(ValueError, match="n_resamples=1000000000"):
        CRTTest(n_resamples=10**9).check_params()


@pytest.mark.parametrize("method", ["bernoulli_index", "stratified_perm"])
@pytest.mark.parametrize("statistic", ["ols", "nb"])
def test_results_do_not_depend_on_the_memory_budget(monkeypatch, method, statistic):
    # Resamples are drawn in calls whose size depends on the treated count only; the budget
    # only sets how many of a call's resamples are evaluated at once. With calls of about 12
    # resamples (a small stream budget), budgets that evaluate 1, 3 or every resample of a
    # call at once give the same null statistics, stage-2 draws and p-values.
    import sklcrt.crt as crt_module

    C, batch, burden, Y, rng = _confounded_null(n=600, g=4, seed=3, counts=statistic == "nb")
    x = _unit(C, rng)
    n_treated = int(x.sum())
    per_row = crt_module._BYTES_PER_TREATED_ENTRY * n_treated
    monkeypatch.setattr(crt_module, "_DEFAULT_BUDGET_MB", 4 * 12 * per_row / 2**20)
    assert crt_module._rows_per_call(n_treated) == 12
    results = []
    for rows in (1, 3, 12, 1000):
        budget = 4 * rows * per_row / 2**20
        test = CRTTest(
            statistic=OLSStatistic() if statistic == "ols" else NBScoreStatistic(),
            resampling_method=method,
            n_resamples=59,
            n_resamples_adaptive=199,
            adaptive_threshold=0.5,
            store_null=True,
            memory_budget_mb=max(budget, 8 * 199 * 4 / 2**20),
            random_state=7,
        )
        test.fit(C, x, responses=Y, batch=batch)
        results.append(test)
    first = results[0]
    assert first.diagnostics_["n_blocks"] > results[-1].diagnostics_["n_blocks"]
    assert (first.n_resamples_ == 199).any()  # some responses went to the second stage
    for other in results[1:]:
        np.testing.assert_array_equal(other.null_distribution_, first.null_distribution_)
        np.testing.assert_array_equal(other.pvalue_, first.pvalue_)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_covariates_are_rejected(bad):
    C, batch, burden, Y, rng = _confounded_null(n=300, g=2)
    x = _unit(C, rng)
    C = C.copy()
    C[7, 2] = bad
    with pytest.raises(ValueError, match="X \\(covariates\\) contains NaN or infinite"):
        CRTTest(n_resamples=19, n_resamples_adaptive=0).fit(C, x, responses=Y)


def test_finite_covariates_whose_sum_overflows_pass_the_check():
    # The check sums the covariates first; an overflowing sum falls back to the elementwise test.
    from sklcrt.crt import _check_covariates

    C = np.array([[1.0, 1e308], [1.0, 1e308], [1.0, -1.0]])
    assert _check_covariates(C) is C
    with pytest.raises(ValueError, match="NaN or infinite"):
        _check_covariates(np.array([[1.0, 1e308], [1.0, np.inf]]))
