"""Shared test fixtures."""

from pathlib import Path

import pytest

#: The real screens live next to the repository and are never committed.
DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def real_screen():
    """``real_screen(name)`` reads ``../shared/data/<name>.h5ad``, or skips the test without it."""
    import anndata as ad

    def read(name: str):
        path = DATA_DIR / f"{name}.h5ad"
        if not path.is_file():
            pytest.skip(f"real screen {path} not found (../shared/data is absent)")
        return ad.read_h5ad(path)

    return read


#: SCEPTRE's default low-MOI formula: log(response_n_nonzero) + log(response_n_umis) + bio_rep.
PAPALEXI_COVARIATES = ["bio_rep", "log1p_response_n_umis", "log1p_response_n_nonzero"]


@pytest.fixture(scope="session")
def gasperini_screen(real_screen):
    """Gasperini 2019 as the real-data tests analyse it: gRNAs assigned by thresholding
    (>= 5 UMIs), burden covariates, SCEPTRE's high-MOI covariates, and the NB null model fitted
    once: ``(adata, inputs, statistic)``. Shared by every test; none changes it."""
    from sklcrt.assignment import add_burden_covariates, assign_guides
    from sklcrt.inputs import SCEPTRE_HIGH_MOI_COVARIATES, prepare_crt_inputs
    from sklcrt.runners import fit_null_model

    adata = real_screen("gasperini2019_highmoi")
    assign_guides(adata, method="threshold", threshold=5)
    add_burden_covariates(adata)
    inputs = prepare_crt_inputs(adata, response="counts", covariates=SCEPTRE_HIGH_MOI_COVARIATES)
    return adata, inputs, fit_null_model(inputs)


@pytest.fixture(scope="session")
def papalexi_screen(real_screen):
    """Papalexi 2021 with gRNAs assigned by the maximum rule, the cells without a clear top gRNA
    dropped, burden covariates and SCEPTRE's low-MOI covariates: ``(adata, inputs)``."""
    from sklcrt.assignment import add_burden_covariates, assign_guides
    from sklcrt.inputs import prepare_crt_inputs

    adata = real_screen("papalexi2021_lowmoi")
    assign_guides(adata, method="maximum", min_fraction=0.8, min_umis=5)
    adata = adata[adata.obs["guide_assignment_status"] == "assigned"].copy()  # clear top gRNA
    add_burden_covariates(adata)
    inputs = prepare_crt_inputs(
        adata, response="counts", covariates=PAPALEXI_COVARIATES, batch_key="bio_rep"
    )
    return adata, inputs


def _design_effect(inputs) -> float:
    """``1 + (m - 1) * mean |corr|`` of the genes' log-normalised expression residualised on the
    covariates: pairs that share an NTC group are correlated by it."""
    import numpy as np

    Y = inputs["Y"].toarray().astype(np.float64)
    Y = np.log1p(Y / np.maximum(Y.sum(axis=1, keepdims=True), 1) * 1e4)
    C = inputs["C"]
    resid = Y - C @ np.linalg.lstsq(C, Y, rcond=None)[0]
    keep = resid.std(axis=0) > 0
    r = np.corrcoef(resid[:, keep].T)
    m = r.shape[0]
    return 1.0 + (m - 1) * np.abs(r[~np.eye(m, dtype=bool)]).mean()


@pytest.fixture(scope="session")
def ntc_interval():
    """``ntc_interval(n_pairs, inputs, confidence)`` -> ``(n_eff, low, high)``: the effective
    number of NTC pairs and the central interval of ``Binomial(n_eff, 0.01) / n_eff``."""
    from scipy import stats

    def interval(n_pairs: int, inputs, confidence: float):
        n_eff = n_pairs / _design_effect(inputs)
        n = int(n_eff)
        tail = (1 - confidence) / 2
        return n_eff, stats.binom.ppf(tail, n, 0.01) / n, stats.binom.isf(tail, n, 0.01) / n

    return interval
