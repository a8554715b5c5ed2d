"""Tests for sklcrt.pvalues: empirical, skew-normal and two-stage p-values.

Statistical checks use fixed seeds and tolerances from binomial / sampling error: a proportion
``k / n`` is checked with an exact binomial test at level ``_ALPHA_CHECK`` (or a one-sided bound for
validity), a mean of ``G`` independent estimates within ``4`` standard errors.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

import sklcrt.pvalues as pv
from sklcrt.pvalues import (
    ALTERNATIVES,
    adaptive_second_stage_mask,
    combine_two_stage_pvalues,
    compute_pvalues,
    empirical_pvalues,
    fit_skew_normal,
    skew_normal_pvalues,
)

# Significance level of every statistical assertion (each is one test of a true hypothesis).
_ALPHA_CHECK = 1e-3


def _assert_proportion(k: int, n: int, p: float) -> None:
    """``k`` successes out of ``n`` are compatible with probability ``p`` (exact binomial)."""
    res = stats.binomtest(k, n, p)
    assert res.pvalue > _ALPHA_CHECK, f"{k}/{n} = {k / n:.4f} is not compatible with p = {p}"


def _assert_at_most(k: int, n: int, p: float) -> None:
    """``k`` successes out of ``n`` are compatible with a probability of at most ``p``."""
    res = stats.binomtest(k, n, p, alternative="greater")
    assert res.pvalue > _ALPHA_CHECK, f"{k}/{n} = {k / n:.4f} exceeds {p} beyond binomial error"


# --------------------------------------------------------------------------- empirical, by hand


def test_empirical_small_case_by_hand():
    null = np.array([[1.0], [2.0], [3.0], [4.0]])
    # T = 3: #{T* >= 3} = 2, #{T* <= 3} = 3, B = 4.
    assert empirical_pvalues([3.0], null, "greater") == pytest.approx([3 / 5])
    assert empirical_pvalues([3.0], null, "less") == pytest.approx([4 / 5])
    assert empirical_pvalues([3.0], null, "two-sided") == pytest.approx([1.0])
    # T = 10: nothing as large, everything smaller.
    assert empirical_pvalues([10.0], null, "greater") == pytest.approx([1 / 5])
    assert empirical_pvalues([10.0], null, "less") == pytest.approx([1.0])
    assert empirical_pvalues([10.0], null, "two-sided") == pytest.approx([2 / 5])


def test_empirical_vectorised_over_responses_and_ties():
    null = np.array(
        [
            [0.0, 1.0, 5.0],
            [1.0, 1.0, 5.0],
            [2.0, 1.0, 5.0],
            [3.0, 2.0, 5.0],
        ]
    )
    t = np.array([2.0, 1.0, -1.0])
    # column 0: >= 2: 2, <= 2: 3; column 1 (ties count): >= 1: 4, <= 1: 3;
    # column 2: >= -1: 4, <= -1: 0
    np.testing.assert_allclose(empirical_pvalues(t, null, "greater"), [3 / 5, 5 / 5, 5 / 5])
    np.testing.assert_allclose(empirical_pvalues(t, null, "less"), [4 / 5, 4 / 5, 1 / 5])
    np.testing.assert_allclose(empirical_pvalues(t, null, "two-sided"), [1.0, 1.0, 2 / 5])
    # Same as one response at a time.
    for g in range(3):
        for alt in ALTERNATIVES:
            assert empirical_pvalues(t[g], null[:, g], alt)[0] == pytest.approx(
                empirical_pvalues(t, null, alt)[g]
            )


def test_empirical_nan_handling():
    null = np.array([[1.0, 1.0], [np.nan, 2.0], [3.0, 3.0], [np.nan, 4.0]])
    # column 0: the two NaN resamples are dropped, B = 2.
    p = empirical_pvalues([2.0, np.nan], null, "greater")
    assert p[0] == pytest.approx((1 + 1) / 3)
    assert np.isnan(p[1])


def test_empirical_blocks_match_single_pass(monkeypatch):
    rng = np.random.default_rng(0)
    null = rng.normal(size=(50, 37))
    t = rng.normal(size=37)
    expected = {alt: empirical_pvalues(t, null, alt) for alt in ALTERNATIVES}
    monkeypatch.setattr(pv, "_BLOCK_ELEMENTS", 120)  # 2 columns per block
    for alt in ALTERNATIVES:
        np.testing.assert_array_equal(empirical_pvalues(t, null, alt), expected[alt])


@pytest.mark.parametrize("func", [empirical_pvalues, skew_normal_pvalues, compute_pvalues])
def test_bad_alternative_lists_valid_ones(func):
    with pytest.raises(ValueError, match="alternative") as err:
        func([0.0], np.zeros((10, 1)), alternative="two_sided")
    for name in ALTERNATIVES:
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("statistic", "null", "match"),
    [
        (np.zeros(3), np.zeros((10, 2)), "columns"),
        (np.zeros(3), np.zeros(10), "1-D"),
        (np.zeros((3, 2)), np.zeros((10, 3)), "statistic"),
        (np.zeros(3), np.zeros((10, 3, 1)), r"\(B, G\)"),
        (np.zeros(3), np.zeros((0, 3)), "no rows"),
    ],
)
def test_shape_errors(statistic, null, match):
    with pytest.raises(ValueError, match=match):
        empirical_pvalues(statistic, null)


def test_compute_pvalues_argument_errors():
    with pytest.raises(ValueError, match="method must be one of"):
        compute_pvalues([0.0], np.zeros((10, 1)), method="normal")
    with pytest.raises(ValueError, match="skew_normal_threshold"):
        compute_pvalues([0.0], np.zeros((10, 1)), method="skew_normal", skew_normal_threshold=2)


# ------------------------------------------------------------------ empirical, exchangeable null


@pytest.mark.parametrize("alternative", ALTERNATIVES)
def test_empirical_uniform_under_exchangeable_null(alternative):
    """T and its B resamples i.i.d.: one-sided p-values are discrete uniform on k / (B + 1)."""
    rng = np.random.default_rng(11)
    n_responses, n_resamples = 4000, 199
    t = rng.normal(size=n_responses)
    null = rng.normal(size=(n_resamples, n_responses))
    p = empirical_pvalues(t, null, alternative)
    assert p.shape == (n_responses,)
    assert p.min() >= 1 / (n_resamples + 1) and p.max() <= 1
    # P(p <= 0.05) is exactly 10/200 for every alternative (two-sided: 2 * 5/200).
    _assert_proportion(int(np.sum(p <= 0.05)), n_responses, 0.05)
    if alternative == "two-sided":
        # Valid, uniform up to discreteness: no excess anywhere (one-sided KS).
        assert stats.kstest(p, "uniform", alternative="greater").pvalue > _ALPHA_CHECK
    else:
        # Randomising within the 1/(B+1) step makes a one-sided p-value exactly U(0, 1).
        p_rand = p - rng.random(n_responses) / (n_resamples + 1)
        assert stats.kstest(p_rand, "uniform").pvalue > _ALPHA_CHECK


def test_empirical_valid_with_ties():
    """A discrete statistic (many ties) gives conservative p-values."""
    rng = np.random.default_rng(12)
    n_responses, n_resamples = 4000, 99
    t = rng.poisson(2.0, size=n_responses).astype(float)
    null = rng.poisson(2.0, size=(n_resamples, n_responses)).astype(float)
    for alternative in ALTERNATIVES:
        p = empirical_pvalues(t, null, alternative)
        for a in (0.05, 0.2, 0.5):
            _assert_at_most(int(np.sum(p <= a)), n_responses, a)


# --------------------------------------------------------------------------- skew-normal fit


@pytest.mark.parametrize(("alpha", "loc", "scale"), [(3.0, 1.0, 2.0), (-2.0, -0.5, 0.7)])
def test_fit_skew_normal_recovers_parameters(alpha, loc, scale):
    """Over G independent nulls, the mean estimate is within 4 standard errors of the truth."""
    n_resamples, n_responses = 20_000, 200
    null = stats.skewnorm.rvs(
        alpha, loc=loc, scale=scale, size=(n_resamples, n_responses), random_state=21
    )
    estimates = fit_skew_normal(null)
    for est, truth in zip(estimates, (loc, scale, alpha), strict=True):
        assert est.shape == (n_responses,)
        se = est.std(ddof=1) / np.sqrt(n_responses)
        assert abs(est.mean() - truth) <= 4 * se, (est.mean(), truth, se)


def test_fit_skew_normal_moments_match():
    """The fitted skew-normal has exactly the sample mean, sd and (unclipped) skewness."""
    rng = np.random.default_rng(22)
    null = rng.gamma(30.0, size=(500, 4))
    xi, omega, alpha = fit_skew_normal(null)
    for g in range(4):
        dist = stats.skewnorm(alpha[g], loc=xi[g], scale=omega[g])
        mean, var, skew = dist.stats(moments="mvs")
        assert mean == pytest.approx(null[:, g].mean())
        assert np.sqrt(var) == pytest.approx(null[:, g].std(ddof=1))
        assert skew == pytest.approx(stats.skew(null[:, g], bias=False))


def test_fit_skew_normal_degenerate_columns():
    null = np.column_stack([np.full(100, 3.0), np.r_[np.arange(99.0), np.inf], np.arange(100.0)])
    xi, omega, alpha = fit_skew_normal(null)
    assert omega[0] == 0 and xi[0] == pytest.approx(3.0)
    assert np.isnan(xi[1]) and np.isnan(omega[1]) and np.isnan(alpha[1])
    assert np.isfinite([xi[2], omega[2], alpha[2]]).all()
    # 1-D input is one response.
    assert fit_skew_normal(np.arange(100.0))[0].shape == (1,)
    # Skewness beyond the skew-normal's range is clipped: finite parameters.
    xi, omega, alpha = fit_skew_normal(np.random.default_rng(0).exponential(size=(1000, 1)))
    assert np.isfinite([xi[0], omega[0], alpha[0]]).all() and alpha[0] > 10


# ---------------------------------------------------------------------- skew-normal p-values


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
@pytest.mark.parametrize("alpha", [4.0, -3.0])
def test_skew_normal_pvalues_match_true_tail(alpha, alternative):
    """On skew-normal nulls the fitted tail at p = 1e-5 (far beyond 1/(B+1)) is accurate.

    By design (see skew_normal_pvalues' Notes) each tail is evaluated with the skewness moved half
    a standard error towards thickening it, so the estimator targets that slightly conservative
    tail of the true distribution; it must hit it without bias, and the target must stay close
    to the truth.
    """
    n_resamples, n_responses, p_true = 4999, 200, 1e-5
    dist = stats.skewnorm(alpha, loc=2.0, scale=3.0)
    null = dist.rvs(size=(n_resamples, n_responses), random_state=31)
    side = "greater" if alternative == "two-sided" else alternative
    t = dist.isf(p_true) if side == "greater" else dist.ppf(p_true)
    factor = 2 if alternative == "two-sided" else 1
    mean, var, skew = (np.array([float(v)]) for v in dist.stats(moments="mvs"))
    shift = pv._SKEWNESS_SHIFT * pv._skewness_se(n_resamples) * (1 if side == "greater" else -1)
    fit = pv._skew_normal_from_moments(mean, np.sqrt(var), skew + shift)
    target = factor * pv._skew_normal_tail(np.array([t]), *fit, upper=side == "greater")[0]
    assert 1.0 <= target / (factor * p_true) < 10**0.3  # conservative, by less than 2x
    p, ok = skew_normal_pvalues(np.full(n_responses, t), null, alternative)
    _assert_at_most(int(np.sum(~ok)), n_responses, 0.05)  # the guard accepts good fits
    log_ratio = np.log10(p[ok] / target)
    # No bias beyond sampling error (median: SE ~ 1.2533 sd / sqrt(n)).
    se = 1.2533 * log_ratio.std(ddof=1) / np.sqrt(log_ratio.size)
    assert abs(np.median(log_ratio)) <= 4 * se
    expected = factor * p_true
    log_ratio = np.log10(p[ok] / expected)
    # More precise than the empirical p-value, which cannot go below 1 / (B + 1) = 2e-4 (a log10
    # error of at least 1.3 here), in at least 90% of responses.
    p_emp = empirical_pvalues(np.full(n_responses, t), null, alternative)
    emp_error = np.abs(np.log10(p_emp[ok] / expected))
    assert emp_error.min() > 1.3
    assert np.mean(np.abs(log_ratio) < emp_error) >= 0.9
    # And compute_pvalues uses it there.
    p_final, methods = compute_pvalues(np.full(n_responses, t), null, alternative, "skew_normal")
    assert np.all(methods[ok] == "skew_normal")
    np.testing.assert_allclose(p_final[ok], p[ok])


def test_skew_normal_pvalues_far_thin_tail_is_accurate():
    """The thin tail (opposite the skew) keeps relative accuracy far below Phi's cancellation."""
    xi, omega, alpha = np.zeros(3), np.ones(3), np.full(3, 3.0)
    t = np.array([-2.0, -3.0, 5.0])
    left = pv._skew_normal_tail(t, xi, omega, alpha, upper=False)
    right = pv._skew_normal_tail(t, xi, omega, alpha, upper=True)
    np.testing.assert_allclose(left, stats.skewnorm.cdf(t, 3.0), rtol=1e-6)
    np.testing.assert_allclose(right, stats.skewnorm.sf(t, 3.0), rtol=1e-6)
    assert 0 < left[1] < 1e-20


def _null_library(rng, n_resamples, n_responses):
    """Nulls that no skew-normal describes."""
    shape = (n_resamples, n_responses)
    bimodal = rng.normal(size=shape) + 4.0 * np.sign(rng.uniform(-1, 1, size=shape))
    outlier = rng.normal(size=shape)
    outlier[0] = 25.0  # one resample far out in every response
    discrete = rng.poisson(3.0, size=shape).astype(float)
    constant = np.full(shape, 1.5)
    exponential = rng.exponential(size=shape)
    return {
        "bimodal": bimodal,
        "outlier": outlier,
        "discrete": discrete,
        "constant": constant,
        "exponential": exponential,
    }


@pytest.mark.parametrize("kind", ["bimodal", "outlier", "discrete", "constant", "exponential"])
def test_skew_normal_falls_back_to_empirical(kind):
    rng = np.random.default_rng(41)
    null = _null_library(rng, 999, 50)[kind]
    t = np.full(50, 30.0)  # far in the upper tail: empirical p-value 1/1000, small
    for alternative in ALTERNATIVES:
        _, ok = skew_normal_pvalues(t, null, alternative)
        assert not ok.any(), kind
        p, methods = compute_pvalues(t, null, alternative, method="skew_normal")
        assert np.all(methods == "empirical")
        np.testing.assert_array_equal(p, empirical_pvalues(t, null, alternative))


def test_skew_normal_guard_rejects_small_or_nonfinite_nulls():
    rng = np.random.default_rng(42)
    _, ok = skew_normal_pvalues(np.zeros(3), rng.normal(size=(30, 3)))  # B < 50
    assert not ok.any()
    null = rng.normal(size=(500, 2))
    null[3, 0] = np.nan
    null[4, 1] = np.inf
    p, ok = skew_normal_pvalues(np.zeros(2), null)
    assert not ok.any() and np.isnan(p).all()
    p, methods = compute_pvalues(np.array([5.0, 5.0]), null, method="skew_normal")
    assert np.all(methods == "empirical")
    assert p[0] == pytest.approx(2 / 500)  # 499 defined resamples, none as extreme


def test_compute_pvalues_threshold_rule():
    """The skew-normal p-value replaces the empirical one only where the latter is small."""
    rng = np.random.default_rng(43)
    null = rng.normal(size=(999, 4))
    t = np.array([0.3, 2.2, 3.2, 7.0])  # two-sided empirical p ~ 0.76, ~0.03, ~0.002, 0.002
    p_emp = empirical_pvalues(t, null)
    assert 0.01 < p_emp[1] <= 0.05 and p_emp[2] <= 0.01
    p, methods = compute_pvalues(t, null, method="skew_normal")
    assert methods.dtype == object
    # Default threshold min(0.05, 10 / (B + 1)) = 0.01.
    assert methods.tolist() == ["empirical", "empirical", "skew_normal", "skew_normal"]
    np.testing.assert_array_equal(p[:2], p_emp[:2])
    assert p[3] < 1e-6  # the normal tail at 7 sd is ~3e-12; empirically at least 2e-3
    p, methods = compute_pvalues(t, null, method="skew_normal", skew_normal_threshold=0.05)
    assert methods.tolist() == ["empirical", "skew_normal", "skew_normal", "skew_normal"]
    p, methods = compute_pvalues(t, null, method="skew_normal", skew_normal_threshold=1.0)
    assert np.all(methods == "skew_normal")
    p, methods = compute_pvalues(t, null, method="skew_normal", skew_normal_threshold=0.0)
    assert np.all(methods == "empirical")
    p, methods = compute_pvalues(t, null)  # default: empirical
    assert np.all(methods == "empirical")
    np.testing.assert_array_equal(p, p_emp)


def test_compute_pvalues_nan_statistic():
    null = np.random.default_rng(44).normal(size=(500, 2))
    for method in pv.PVALUE_METHODS:
        p, methods = compute_pvalues([np.nan, 0.1], null, method=method)
        assert np.isnan(p[0]) and np.isfinite(p[1])
        assert methods[0] == "empirical"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("null_kind", "alternative"),
    [
        ("skewnorm", "two-sided"),
        ("skewnorm", "greater"),
        ("skewnorm", "less"),
        ("normal", "two-sided"),
        ("gamma", "two-sided"),
    ],
)
def test_compute_pvalues_skew_normal_valid_under_null(null_kind, alternative):
    """T and the null drawn from the same distribution: p-values uniform (or conservative)."""
    rng = np.random.default_rng(51)
    n_responses, n_resamples = 4000, 999
    shape = (n_resamples + 1, n_responses)
    if null_kind == "skewnorm":
        draws = stats.skewnorm.rvs(4.0, size=shape, random_state=rng)
    elif null_kind == "normal":
        draws = rng.normal(size=shape)
    else:
        draws = rng.gamma(20.0, size=shape)  # skewed, close to but not a skew-normal
    t, null = draws[0], draws[1:]
    p, methods = compute_pvalues(t, null, alternative, method="skew_normal")
    assert np.mean(methods == "skew_normal") > 0.005  # used below p = 10 / (B + 1)
    for a in (0.001, 0.01, 0.05):
        _assert_at_most(int(np.sum(p <= a)), n_responses, a)
    _assert_proportion(int(np.sum(p <= 0.05)), n_responses, 0.05)
    # Pure skew-normal p-values where the guard accepts: uniform (KS).
    p_sn, ok = skew_normal_pvalues(t, null, alternative)
    assert ok.mean() > 0.8
    assert stats.kstest(p_sn[ok], "uniform").pvalue > _ALPHA_CHECK


@pytest.mark.slow
@pytest.mark.parametrize("alternative", ["greater", "less"])
@pytest.mark.parametrize("alpha", [0.0, 4.0])
def test_skew_normal_pvalues_valid_in_the_far_tail(alpha, alternative):
    """P(p <= a) <= a for a = 1e-3 and 1e-4, on the heavy and the thin side of the null.

    T is drawn from the null's tail beyond level u_max = 0.01 (its true tail probability u is
    uniform on (0, u_max)), so P(p <= a) = u_max * P(p <= a | u <= u_max) when no T with
    u > u_max can get p <= a << u_max: a direct check of the deep tail with few responses.
    """
    rng = np.random.default_rng(71)
    n_responses, n_resamples, u_max = 4000, 999, 0.01
    dist = stats.skewnorm(alpha)
    null = dist.rvs(size=(n_resamples, n_responses), random_state=rng)
    u = rng.uniform(0, u_max, size=n_responses)
    t = dist.isf(u) if alternative == "greater" else dist.ppf(u)
    p, methods = compute_pvalues(t, null, alternative, method="skew_normal")
    assert np.mean(methods == "skew_normal") > 0.5
    for a in (1e-3, 1e-4):
        _assert_at_most(int(np.sum(p <= a)), n_responses, a / u_max)


# ------------------------------------------------------------------------------- two stages


def test_adaptive_second_stage_mask_basics():
    mask = adaptive_second_stage_mask([0.001, 0.05, 0.0500001, np.nan, 1.0], 0.05)
    assert mask.tolist() == [True, True, False, False, False]
    for bad in (0, -0.1, 1.5, True, "0.1", None):
        with pytest.raises(ValueError, match="threshold"):
            adaptive_second_stage_mask([0.1], bad)
    with pytest.raises(ValueError, match="1-D"):
        adaptive_second_stage_mask(np.zeros((2, 2)), 0.1)


def test_combine_two_stage_pvalues_shapes():
    p1 = np.array([0.01, 0.5, 0.02])
    mask = np.array([True, False, True])
    np.testing.assert_array_equal(
        combine_two_stage_pvalues(p1, [0.001, 0.03], mask), [0.001, 0.5, 0.03]
    )
    np.testing.assert_array_equal(
        combine_two_stage_pvalues(p1, [0.001, 9.0, 0.03], mask), [0.001, 0.5, 0.03]
    )
    with pytest.raises(ValueError, match="pvalues_stage2"):
        combine_two_stage_pvalues(p1, [0.1], mask)
    with pytest.raises(ValueError, match="mask"):
        combine_two_stage_pvalues(p1, [0.1, 0.2], [1, 0, 1])


@pytest.mark.slow
def test_two_stage_procedure_is_valid():
    """Stage 1 (B1 resamples) for all, stage 2 (fresh B2) where p1 <= threshold: still valid.

    The same simulation shows the check has power: reporting min(p1, p2) is anti-conservative.
    """
    rng = np.random.default_rng(61)
    n_responses, b1, b2, threshold = 20_000, 49, 199, 0.1
    t = rng.normal(size=n_responses)
    null1 = rng.normal(size=(b1, n_responses))
    p1 = empirical_pvalues(t, null1, "greater")
    mask = adaptive_second_stage_mask(p1, threshold)
    assert 0.05 < mask.mean() < 0.15
    null2 = rng.normal(size=(b2, int(mask.sum())))
    p2 = empirical_pvalues(t[mask], null2, "greater")
    p_fresh = combine_two_stage_pvalues(p1, p2, mask)
    p2_pooled = empirical_pvalues(t[mask], np.vstack([null1[:, mask], null2]), "greater")
    p_pooled = combine_two_stage_pvalues(p1, p2_pooled, mask)
    for p in (p_fresh, p_pooled):
        for a in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5):
            _assert_at_most(int(np.sum(p <= a)), n_responses, a)
        assert stats.kstest(p, "uniform", alternative="greater").pvalue > _ALPHA_CHECK
    # Negative control: the invalid min(p1, p2) is caught by the same check.
    p_min = p_fresh.copy()
    p_min[mask] = np.minimum(p1[mask], p2)
    k = int(np.sum(p_min <= 0.02))
    assert stats.binomtest(k, n_responses, 0.02, alternative="greater").pvalue < _ALPHA_CHECK


@pytest.mark.slow
def test_two_stage_with_skew_normal_second_stage_is_valid():
    """Stage 2 with skew-normal p-values (the SCEPTRE-like default) stays valid on a skewed null."""
    rng = np.random.default_rng(62)
    n_responses, b1, b2, threshold = 4000, 99, 999, 0.05
    draws = stats.skewnorm.rvs(-3.0, size=(1 + b1, n_responses), random_state=rng)
    t, null1 = draws[0], draws[1:]
    p1 = empirical_pvalues(t, null1)
    mask = adaptive_second_stage_mask(p1, threshold)
    null2 = stats.skewnorm.rvs(-3.0, size=(b2, int(mask.sum())), random_state=rng)
    p2, _ = compute_pvalues(t[mask], null2, method="skew_normal")
    p = combine_two_stage_pvalues(p1, p2, mask)
    for a in (0.001, 0.01, 0.05, 0.2):
        _assert_at_most(int(np.sum(p <= a)), n_responses, a)
