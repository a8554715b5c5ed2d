"""Real screen: Gasperini et al. 2019 (high MOI, CRISPRi), SCEPTRE's downsampled example data.

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

Needs ``../shared/data`` next to the repository (skipped with a reason otherwise); about 15 s on
2 cores, most of it the NB null fit of 366 genes on 40,002 cells.
"""

from pathlib import Path

import numpy as np
import pytest
from scipy import stats

DATA_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
GASPERINI = DATA_DIR / "gasperini2019_highmoi.h5ad"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.slow,
    pytest.mark.skipif(
        not GASPERINI.is_file(),
        reason=f"real screens not found: {GASPERINI} is absent (they live in ../shared/data next "
        "to the repository and are never committed)",
    ),
]

# SCEPTRE's default high-MOI formula: log(response_n_nonzero) + log(response_n_umis) +
# log(grna_n_nonzero + 1) + log(grna_n_umis + 1) + batch
COVARIATES = [
    "batch",
    "log1p_response_n_umis",
    "log1p_response_n_nonzero",
    "log1p_grna_n_umis",
    "log1p_grna_n_nonzero",
]
RESAMPLING = dict(
    resampling_method="stratified_perm",
    resampling_kwargs=dict(
        n_bins=20,
        stratify_by_batch=True,
        batch_key="batch",
        burden_key="log1p_non_ntc_guides_per_cell",
        n_burden_bins=8,
        burden_bin_method="quantile",
    ),
)
CONFIDENCE = 0.999


@pytest.fixture(scope="module")
def gasperini():
    ad = pytest.importorskip("anndata")
    from sklcrt.assignment import add_burden_covariates, assign_guides
    from sklcrt.inputs import prepare_crt_inputs
    from sklcrt.runners import fit_null_model

    adata = ad.read_h5ad(GASPERINI)
    assign_guides(adata, method="threshold", threshold=5)
    add_burden_covariates(adata)
    inputs = prepare_crt_inputs(adata, response="counts", covariates=COVARIATES)
    statistic = fit_null_model(inputs)  # NB score, fitted once for every analysis
    return adata, inputs, statistic


def _design_effect(inputs) -> float:
    Y = inputs["Y"].toarray().astype(np.float64)
    Y = np.log1p(Y / np.maximum(Y.sum(axis=1, keepdims=True), 1) * 1e4)
    C = inputs["C"]
    resid = Y - C @ np.linalg.lstsq(C, Y, rcond=None)[0]
    keep = resid.std(axis=0) > 0
    r = np.corrcoef(resid[:, keep].T)
    m = r.shape[0]
    return 1.0 + (m - 1) * np.abs(r[~np.eye(m, dtype=bool)]).mean()


def test_ntc_groups_are_calibrated(gasperini):
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
    assert res.loc[res["pass_qc"], "p_value"].notna().all()
    assert (res["n_strata"] > 40).all()  # batch x propensity x burden bins

    summary = calibration_summary(res)
    n_eff = summary["n_pairs"] / _design_effect(inputs)
    n = int(n_eff)
    tail = (1 - CONFIDENCE) / 2
    low = stats.binom.ppf(tail, n, 0.01) / n
    high = stats.binom.isf(tail, n, 0.01) / n
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
    found = (res["p_value"] < 1e-3) & (res["effect"] < 0)
    assert found.sum() >= 8, res[["unit", "n_treated", "effect", "p_value", "n_resamples"]]
