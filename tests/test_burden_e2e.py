"""Burden bins, end to end: the NTC calibration check on a simulated high-MOI screen.

Issue 5. In :func:`sklcrt.datasets.simulate_screen` a cell's guide load drives both which guides it
carries (a cell with more guides is more likely to carry any given NTC guide) and, through the
number of targeting guides (a step-like "toxicity" term), every response. Non-targeting guides are
true nulls *given* batch and burden. The propensity here is fitted on batch and library size only,
as an analyst would without burden covariates, so batch x propensity strata do not absorb the
confounding and ``stratified_perm`` is anti-conservative; adding bins of
``log1p_non_ntc_guides_per_cell`` restores calibration. Both directions are asserted through the
public runners, for program usages (OLS) and for counts (NB score).

The bound
---------
Under the null, the number of NTC pairs with ``p < 0.01`` is binomial(n, 0.01) for independent
pairs. Pairs that share an NTC group share the treatment vector and the resamples, so they are
correlated through the correlation of the responses. We use the design effect of clustered
sampling, ``deff = 1 + (m - 1) * rho``, with ``m`` responses per group and ``rho`` the mean
absolute off-diagonal correlation of the responses after regressing out the covariates (log-
normalised expression for counts). ``|corr|`` of the statistics bounds the correlation of the
two-sided tail indicators ``p < 0.01`` (which is of order ``corr**2``), and residualising on the
covariates only (not on burden) overstates the within-stratum correlation, so the effective number
of pairs ``n_eff = n_pairs / deff`` is conservative (programs: 600 pairs, deff ~ 2.9, n_eff ~ 210;
counts: 3,000 pairs, deff ~ 6.3, n_eff ~ 480). Different NTC groups hold disjoint guides and are
treated as independent given the strata. The accepted range is the central 99.9 % binomial
interval of ``Binomial(n_eff, 0.01) / n_eff``.

Size and speed: 8,000 cells, 60 NTC guides (30 groups of 2, the median guides per target),
20 programs and 100 genes, 499 resamples, no adaptive stage; about 12 s on 2 cores.
"""

import numpy as np
import pytest
from scipy import stats

from sklcrt.datasets import simulate_screen
from sklcrt.inputs import prepare_crt_inputs
from sklcrt.runners import calibration_summary, fit_null_model, run_ntc_groups

BURDEN_KEY = "log1p_non_ntc_guides_per_cell"
PROPENSITY_COVARIATES = ["batch", "log1p_response_n_umis"]  # batch + library size, no burden
PLAIN = dict(n_bins=20, stratify_by_batch=True, batch_key="batch", burden_bin_method="quantile")
WITH_BURDEN = dict(PLAIN, burden_key=BURDEN_KEY, n_burden_bins=8)
N_RESAMPLES = 499
CONFIDENCE = 0.999


@pytest.fixture(scope="module")
def screen():
    return simulate_screen(
        n_cells=8000,
        n_genes=100,
        n_programs=20,
        n_targets=20,
        n_ntc_guides=60,
        moi=8.0,
        response="both",
        random_state=0,
    )


def _design_effect(inputs) -> float:
    """``1 + (m - 1) * mean |corr|`` of the responses residualised on the covariates."""
    Y = inputs["Y"]
    if inputs["response_kind"] == "counts":
        Y = Y.toarray()
        Y = np.log1p(Y / np.maximum(Y.sum(axis=1, keepdims=True), 1) * 1e4)
    C = inputs["C"]
    resid = Y - C @ np.linalg.lstsq(C, Y, rcond=None)[0]
    r = np.corrcoef(resid.T)
    m = r.shape[0]
    rho = np.abs(r[~np.eye(m, dtype=bool)]).mean()
    return 1.0 + (m - 1) * rho


def _binomial_range(n_eff: float, level: float = 0.01) -> tuple[float, float]:
    n = max(int(np.floor(n_eff)), 1)
    tail = (1 - CONFIDENCE) / 2
    low = stats.binom.ppf(tail, n, level) / n
    high = stats.binom.isf(tail, n, level) / n
    return float(low), float(high)


def test_ntc_groups_depend_on_burden_within_batch(screen):
    """Precondition: within each batch, NTC groups are much more frequent at high burden."""
    inputs = prepare_crt_inputs(screen, response="programs", covariates=PROPENSITY_COVARIATES)
    burden = inputs["covar_df_raw"][BURDEN_KEY].to_numpy()
    batch = inputs["batch_raw"]
    guides = inputs["guides"]
    ntc_cols = np.flatnonzero(np.isin(inputs["guide_names"], inputs["ntc_guides"]))
    x_any = guides[:, ntc_cols[:2]].getnnz(axis=1) > 0  # one NTC group of two guides
    for b in np.unique(batch):
        in_b = batch == b
        lo, hi = np.quantile(burden[in_b], [0.25, 0.75])
        rate_low = x_any[in_b & (burden <= lo)].mean()
        rate_high = x_any[in_b & (burden >= hi)].mean()
        assert rate_high > 2 * rate_low, (b, rate_low, rate_high)


@pytest.mark.slow
@pytest.mark.parametrize("response", ["programs", "counts"])
def test_burden_bins_restore_ntc_calibration(screen, response):
    inputs = prepare_crt_inputs(screen, response=response, covariates=PROPENSITY_COVARIATES)
    assert inputs["C_names"] == ["intercept", "batch_batch1", "log1p_response_n_umis"]
    statistic = fit_null_model(inputs)  # OLS for programs, NB score for counts; fitted once
    common = dict(
        statistic=statistic,
        resampling_method="stratified_perm",
        n_resamples=N_RESAMPLES,
        n_resamples_adaptive=0,
        random_state=0,
        progress=False,
    )
    plain = run_ntc_groups(inputs, resampling_kwargs=PLAIN, **common)
    burden = run_ntc_groups(inputs, resampling_kwargs=WITH_BURDEN, **common)

    n_groups = len(inputs["ntc_guides"]) // 2
    n_responses = len(inputs["response_names"])
    for res in (plain, burden):
        assert len(res) == n_groups * n_responses
        assert res["pass_qc"].all()
    # burden bins really split the strata
    assert burden["n_strata"].min() > 2 * plain["n_strata"].max()

    s_plain, s_burden = calibration_summary(plain), calibration_summary(burden)
    n_pairs = s_burden["n_pairs"]
    n_eff = n_pairs / _design_effect(inputs)
    low, high = _binomial_range(n_eff)
    msg = (
        f"{response}: {n_pairs} NTC pairs, n_eff={n_eff:.0f}, accepted frac(p<0.01) in "
        f"[{low:.4f}, {high:.4f}]; without burden bins {s_plain['frac_below_0.01']:.4f}, with "
        f"{s_burden['frac_below_0.01']:.4f}"
    )
    # anti-conservative without burden bins: far above the calibrated range
    assert s_plain["frac_below_0.01"] > max(high, 0.1), msg
    assert s_plain["n_bh_discoveries"] > 0, msg
    # calibrated with burden bins
    assert low <= s_burden["frac_below_0.01"] <= high, msg
    low5, high5 = _binomial_range(n_eff, 0.05)
    assert low5 <= s_burden["frac_below_0.05"] <= high5, msg
    assert s_burden["n_bh_discoveries"] == 0, msg
