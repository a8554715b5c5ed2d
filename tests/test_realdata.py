"""Real screens: Gasperini et al. 2019 (high MOI, CRISPRi) and Papalexi et al. 2021 (low MOI,
CRISPRko), SCEPTRE's example data.

Gasperini 2019, high MOI, SCEPTRE's downsampled example data.

Issue 4's check on real data, through the public API an analyst uses: assign gRNAs from UMI counts
by thresholding (>= 5 UMIs), add the burden covariates, fit SCEPTRE's NB null model once per gene
(covariates: SCEPTRE's default high-MOI formula), and test with ``stratified_perm`` stratified by
batch, 20 propensity bins and 8 quantile bins of ``log1p_non_ntc_guides_per_cell``.

- NTC calibration: every group of 2 non-targeting gRNAs (12 groups) against every gene, 499
  resamples. No Benjamini-Hochberg discovery at 0.1, and the fraction of p-values below 0.01 inside
  the central 99.9 % interval of ``Binomial(n_eff, 0.01) / n_eff``, where ``n_eff`` is the number
  of tested pairs divided by the design effect ``1 + (m - 1) * mean |corr|`` of the genes'
  log-normalised expression residualised on the covariates (pairs that share an NTC group are
  correlated; see ``tests/test_burden_e2e.py`` for why this is conservative).
- Power: at least 8 of the 10 positive controls (TSS-targeting guides -> their own gene) have
  p < 1e-3 with a negative log2 fold change; 499 first-stage resamples and an adaptive second
  stage of 4,999 (smallest two-sided p-value 2/5000 = 4e-4).

Papalexi 2021, low MOI (``papalexi2021_lowmoi.h5ad``), as ``examples/papalexi_lowmoi.py`` runs
it: gRNAs assigned by the maximum rule, cells without a clear top gRNA dropped, SCEPTRE's default
low-MOI formula, NB score, ``perm`` resampling with 499 resamples.

- NTC calibration with ``control_group="nt_cells"`` (SCEPTRE's low-MOI default: the other cells
  with only non-targeting gRNAs are the controls): 3 random groupings of the 9 NTC gRNAs into
  groups of 4 against every gene; the fraction of p-values below 0.01 inside the same 99.9 %
  binomial interval and no Benjamini-Hochberg discovery at 0.1 (within each grouping). With the
  complement (every other cell: mostly knock-outs with trans effects) the same check rejects far
  more often, which is why low-MOI screens use the NTC cells as controls.

Needs ``../shared/data`` next to the repository (skipped with a reason otherwise); about 15 s on
2 cores for Gasperini, most of it the NB null fit of 366 genes on 40,002 cells, and about 15 s for
Papalexi.
"""

import pytest

from sklcrt.resampling import RECOMMENDED_HIGH_MOI_KWARGS

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


RESAMPLING = dict(
    resampling_method="stratified_perm",
    resampling_kwargs=dict(RECOMMENDED_HIGH_MOI_KWARGS, batch_key="batch"),
)
CONFIDENCE = 0.999


@pytest.fixture(scope="module")
def gasperini(gasperini_screen):
    return gasperini_screen


def _binomial_interval(n_pairs: int, inputs, ntc_interval) -> tuple[float, float, float]:
    """``n_eff`` and the central ``CONFIDENCE`` interval of ``Binomial(n_eff, 0.01) / n_eff``."""
    return ntc_interval(n_pairs, inputs, CONFIDENCE)


def test_ntc_groups_are_calibrated(gasperini, ntc_interval):
    from sklcrt.runners import calibration_summary, run_ntc_groups

    _, inputs, statistic = gasperini
    res = run_ntc_groups(
        inputs,
        statistic=statistic,
        n_resamples=499,
        n_resamples_adaptive=0,
        random_state=0,
        progress=False,
        **RESAMPLING,
    )
    assert len(res) == (len(inputs["ntc_guides"]) // 2) * len(inputs["response_names"])
    assert res.loc[res["pass_qc"], "pvalue"].notna().all()
    assert (res["n_strata"] > 40).all()  # batch x propensity x burden bins

    summary = calibration_summary(res)
    n_eff, low, high = _binomial_interval(summary["n_pairs"], inputs, ntc_interval)
    msg = f"{summary}; n_eff={n_eff:.0f}, accepted frac(p<0.01) in [{low:.4f}, {high:.4f}]"
    assert summary["n_pairs"] > 3000, msg
    assert summary["n_bh_discoveries"] == 0, msg
    assert low <= summary["frac_below_0.01"] <= high, msg


def test_positive_controls_are_found(gasperini):
    from sklcrt.runners import power_check

    adata, inputs, statistic = gasperini
    pairs = adata.uns["positive_control_pairs"]
    res = power_check(
        inputs,
        pairs,
        statistic=statistic,
        n_resamples=499,
        n_resamples_adaptive=4999,
        random_state=0,
        progress=False,
        **RESAMPLING,
    )
    assert len(res) == 10
    found = (res["pvalue"] < 1e-3) & (res["effect"] < 0)
    assert found.sum() >= 8, res[["unit", "n_treated", "effect", "pvalue", "n_resamples"]]


# ---------------------------------------------------------------------- Papalexi 2021, low MOI
# SCEPTRE's default low-MOI formula: log(response_n_nonzero) + log(response_n_umis) + bio_rep
@pytest.fixture(scope="module")
def papalexi(papalexi_screen):
    from sklcrt.runners import fit_null_model

    _, inputs = papalexi_screen
    return inputs, fit_null_model(inputs)


def _ntc_check(inputs, statistic, control_group):
    from sklcrt.runners import calibration_summary, run_ntc_ensemble

    res = run_ntc_ensemble(
        inputs,
        n_ensemble=3,
        group_size=4,  # the median number of gRNAs per target
        control_group=control_group,
        # the complement reuses the all-cells null model; the NT cells' own (SCEPTRE's low-MOI
        # test) is fitted by the runner
        statistic=statistic if control_group == "complement" else None,
        resampling_method="perm",
        n_resamples=499,
        n_resamples_adaptive=0,
        random_state=0,
        progress=False,
    )
    return res, calibration_summary(res)  # BH within each grouping


def test_low_moi_ntc_calibrated_with_nt_cells_controls(papalexi, ntc_interval):
    inputs, statistic = papalexi
    res, summary = _ntc_check(inputs, statistic, "nt_cells")
    _, complement = _ntc_check(inputs, statistic, "complement")
    n_eff, low, high = _binomial_interval(summary["n_pairs"], inputs, ntc_interval)
    msg = (
        f"nt_cells: {summary}; complement: {complement}; n_eff={n_eff:.0f}, accepted "
        f"frac(p<0.01) in [{low:.4f}, {high:.4f}]"
    )
    assert len(res) == 3 * 2 * len(inputs["response_names"]), msg
    assert summary["n_pairs"] > 1500, msg
    assert summary["n_bh_discoveries"] == 0, msg
    assert low <= summary["frac_below_0.01"] <= high, msg
    # every other cell as controls: the knock-outs' trans effects reject far more often
    assert complement["frac_below_0.01"] > high, msg
    assert complement["n_bh_discoveries"] > 10, msg
