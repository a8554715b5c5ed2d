"""Tests for sklcrt.datasets.simulate_screen: the data contract and its burden confounding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

from sklcrt.datasets import NTC_LABEL, simulate_screen

SMALL = dict(n_cells=800, n_genes=40, n_programs=6, n_targets=8, n_ntc_guides=6)

BURDEN_COLUMNS = [
    "non_ntc_guides_per_cell",
    "grna_n_nonzero_assign",
    "log1p_non_ntc_guides_per_cell",
    "log1p_grna_n_nonzero_assign",
]


@pytest.fixture(scope="module")
def small():
    return simulate_screen(**SMALL, random_state=3)


# ---------------------------------------------------------------------------------- contract


def test_contract_keys_shapes_dtypes(small):
    adata = small
    n_cells, n_genes = SMALL["n_cells"], SMALL["n_genes"]
    n_guides = SMALL["n_targets"] * 2 + SMALL["n_ntc_guides"]
    assert adata.shape == (n_cells, n_genes)

    X = adata.X
    assert sp.issparse(X) and X.format == "csr"
    assert np.all(X.data >= 0) and np.all(X.data == np.round(X.data))

    usage = adata.obsm["cnmf_usage"]
    assert isinstance(usage, pd.DataFrame)
    assert usage.shape == (n_cells, SMALL["n_programs"])
    assert usage.index.equals(adata.obs_names)
    assert list(usage.columns) == adata.uns["program_names"]
    assert np.all(usage.to_numpy() > 0)
    np.testing.assert_allclose(usage.sum(axis=1), 1.0, rtol=0, atol=1e-12)

    covar = adata.obsm["covar"]
    assert isinstance(covar, pd.DataFrame)
    assert covar.index.equals(adata.obs_names)
    assert isinstance(covar["batch"].dtype, pd.CategoricalDtype)
    assert list(covar["batch"].cat.categories) == ["batch0", "batch1"]
    for col in ["response_n_umis", "log1p_response_n_umis", *BURDEN_COLUMNS]:
        assert pd.api.types.is_numeric_dtype(covar[col]), col
        assert np.all(np.isfinite(covar[col])), col
    np.testing.assert_array_equal(covar["response_n_umis"], np.asarray(X.sum(axis=1)).ravel())
    np.testing.assert_allclose(covar["log1p_response_n_umis"], np.log1p(covar["response_n_umis"]))

    G = adata.obsm["guide_assignment"]
    assert sp.issparse(G) and G.format == "csr" and G.shape == (n_cells, n_guides)
    assert set(np.unique(G.data)) <= {1}
    counts = adata.obsm["grna_counts"]
    assert sp.issparse(counts) and counts.format == "csr" and counts.shape == G.shape
    assert len(adata.uns["guide_names"]) == n_guides
    assert set(adata.uns["guide2gene"]) == set(adata.uns["guide_names"])
    # raw gRNA metadata for an assignment step: same order as the columns of grna_counts
    assert adata.uns["grna_ids"] == adata.uns["guide_names"]
    assert adata.uns["grna_target"] == [adata.uns["guide2gene"][g] for g in adata.uns["grna_ids"]]


def test_burden_covariates_follow_the_assignment(small):
    adata = small
    G = adata.obsm["guide_assignment"].toarray().astype(bool)
    is_ntc = np.array([adata.uns["guide2gene"][g] == NTC_LABEL for g in adata.uns["guide_names"]])
    covar = adata.obsm["covar"]
    np.testing.assert_array_equal(covar["grna_n_nonzero_assign"], G.sum(axis=1))
    np.testing.assert_array_equal(covar["non_ntc_guides_per_cell"], G[:, ~is_ntc].sum(axis=1))
    for col in ("non_ntc_guides_per_cell", "grna_n_nonzero_assign"):
        np.testing.assert_allclose(covar[f"log1p_{col}"], np.log1p(covar[col]))


def test_grna_counts_threshold_recovers_assignment(small):
    counts = small.obsm["grna_counts"].toarray()
    G = small.obsm["guide_assignment"].toarray()
    np.testing.assert_array_equal(counts >= 5, G == 1)
    ambient = counts[(G == 0) & (counts > 0)]
    assert ambient.size > 0 and np.all(ambient <= 4)


def test_ntc_mapping_and_targets(small):
    g2g = small.uns["guide2gene"]
    names = small.uns["guide_names"]
    ntc = [g for g in names if g2g[g] == NTC_LABEL]
    assert len(ntc) == SMALL["n_ntc_guides"]
    targets = {g2g[g] for g in names} - {NTC_LABEL}
    assert len(targets) == SMALL["n_targets"]
    assert targets <= set(small.var_names)  # each target is one of the genes
    assert all(sum(g2g[g] == t for g in names) == 2 for t in targets)
    assert small.var.loc[sorted(targets), "is_target"].all()


def test_true_effects_and_pairs(small):
    truth = small.uns["true_effects"]
    assert list(truth.columns) == ["grna_target", "response_id", "effect", "response_kind"]
    n_effect = round(0.5 * SMALL["n_targets"])
    genes = truth[truth.response_kind == "gene"]
    progs = truth[truth.response_kind == "program"]
    assert len(genes) == n_effect and len(progs) == n_effect
    assert (genes.grna_target == genes.response_id).all()  # knockdown of its own gene
    assert np.all(genes.effect < 0) and np.all(np.abs(genes.effect) <= 1.5)
    assert set(progs.response_id) <= set(small.uns["program_names"])
    clr_factor = 1 - 1 / SMALL["n_programs"]
    np.testing.assert_allclose(progs.effect.to_numpy(), clr_factor * np.log(2) * genes.effect)

    pos = small.uns["positive_control_pairs"]
    assert list(pos.columns[:2]) == ["response_id", "grna_target"]
    assert set(zip(pos.grna_target, pos.response_id, strict=True)) == set(
        zip(genes.grna_target, genes.response_id, strict=True)
    )
    disc = small.uns["discovery_pairs"]
    assert list(disc.columns[:2]) == ["response_id", "grna_target"]
    assert not disc.duplicated().any()
    assert set(disc.grna_target) == {t for t in small.uns["guide2gene"].values() if t != NTC_LABEL}
    disc_genes = disc[disc.response_kind == "gene"]
    assert set(disc_genes.response_id) <= set(small.var_names)
    assert set(zip(pos.grna_target, pos.response_id, strict=True)) <= set(
        zip(disc_genes.grna_target, disc_genes.response_id, strict=True)
    )


def test_true_effects_are_visible_in_counts():
    adata = simulate_screen(n_cells=3000, burden_effect=0.0, random_state=5)
    X = adata.X.toarray()
    norm = X / X.sum(axis=1, keepdims=True)
    G = adata.obsm["guide_assignment"].toarray().astype(bool)
    names = np.array(adata.uns["guide_names"])
    g2g = adata.uns["guide2gene"]
    truth = adata.uns["true_effects"].query("response_kind == 'gene'")
    for target, effect in zip(truth.grna_target, truth.effect, strict=True):
        x = G[:, [g2g[n] == target for n in names]].any(axis=1)
        col = adata.var_names.get_loc(target)
        lfc = np.log2(norm[x, col].mean() / norm[~x, col].mean())
        assert abs(lfc - effect) < 0.25, (target, lfc, effect)


def test_response_kinds():
    counts = simulate_screen(**SMALL, response="counts")
    assert "cnmf_usage" not in counts.obsm and counts.X is not None
    assert set(counts.uns["true_effects"].response_kind) == {"gene"}
    programs = simulate_screen(**SMALL, response="programs")
    assert programs.X is None and programs.n_vars == 0
    assert set(programs.uns["discovery_pairs"].response_kind) == {"program"}
    pos = programs.uns["positive_control_pairs"]
    assert len(pos) == round(0.5 * SMALL["n_targets"])
    assert set(pos.response_id) <= set(programs.uns["program_names"])


def test_reproducible_and_streams_independent():
    a = simulate_screen(**SMALL, random_state=11)
    b = simulate_screen(**SMALL, random_state=11)
    c = simulate_screen(**SMALL, random_state=12)
    d = simulate_screen(**SMALL, random_state=11, response="counts")
    assert (a.X != b.X).nnz == 0
    assert (a.obsm["guide_assignment"] != b.obsm["guide_assignment"]).nnz == 0
    pd.testing.assert_frame_equal(a.obsm["cnmf_usage"], b.obsm["cnmf_usage"])
    pd.testing.assert_frame_equal(a.obsm["covar"], b.obsm["covar"])
    pd.testing.assert_frame_equal(a.uns["true_effects"], b.uns["true_effects"])
    assert (a.obsm["guide_assignment"] != c.obsm["guide_assignment"]).nnz > 0
    # the response kinds stored do not change the guides or the counts
    assert (a.obsm["guide_assignment"] != d.obsm["guide_assignment"]).nnz == 0
    assert (a.X != d.X).nnz == 0
    e = simulate_screen(**SMALL, random_state=np.random.SeedSequence(11))
    assert (a.X != e.X).nnz == 0


@pytest.mark.parametrize("moi", [2.0, 8.0, 15.0])
def test_guides_per_cell_follow_moi(moi):
    adata = simulate_screen(n_cells=4000, n_genes=20, n_targets=20, moi=moi, random_state=2)
    covar = adata.obsm["covar"]
    n = covar["grna_n_nonzero_assign"].to_numpy()
    se = n.std() / np.sqrt(n.size)
    assert abs(n.mean() - moi) < 4 * se + 0.01 * moi  # + cap at the library size (60 guides)
    # later batches have the higher MOI (+/-15 % around moi)
    by_batch = covar.groupby("batch", observed=True)["grna_n_nonzero_assign"].mean()
    assert by_batch["batch1"] > by_batch["batch0"]
    # burden varies between cells more than a Poisson would (latent guide load)
    assert n.var() > 1.5 * n.mean()


def test_more_guides_more_likely_to_carry_an_ntc():
    adata = simulate_screen(n_cells=4000, n_genes=20, random_state=1)
    G = adata.obsm["guide_assignment"].toarray().astype(bool)
    is_ntc = np.array([adata.uns["guide2gene"][g] == NTC_LABEL for g in adata.uns["guide_names"]])
    burden = adata.obsm["covar"]["non_ntc_guides_per_cell"].to_numpy()
    carries = G[:, is_ntc].any(axis=1)
    low, high = burden <= np.quantile(burden, 0.25), burden >= np.quantile(burden, 0.75)
    assert carries[high].mean() > carries[low].mean() + 0.2


def test_parameter_errors():
    with pytest.raises(ValueError, match="n_targets"):
        simulate_screen(n_genes=5, n_targets=6)
    with pytest.raises(ValueError, match="response"):
        simulate_screen(response="genes")
    with pytest.raises(ValueError, match="burden_shape"):
        simulate_screen(burden_shape="cubic")
    with pytest.raises(ValueError, match="moi"):
        simulate_screen(moi=0)
    with pytest.raises(ValueError, match="frac_targets_with_effect"):
        simulate_screen(frac_targets_with_effect=1.5)
    with pytest.raises(ValueError, match="n_cells"):
        simulate_screen(n_cells=2.5)


@pytest.mark.parametrize("shape", ["threshold", "quadratic", "linear"])
def test_burden_shapes_and_edge_sizes(shape):
    adata = simulate_screen(n_cells=200, n_genes=10, n_targets=0, burden_shape=shape)
    assert adata.uns["true_effects"].empty and adata.uns["discovery_pairs"].empty
    adata = simulate_screen(n_cells=200, n_genes=10, n_targets=3, n_ntc_guides=0, n_batches=1)
    assert adata.obsm["guide_assignment"].shape == (200, 6)


def test_h5ad_roundtrip(small, tmp_path):
    import anndata as ad

    path = tmp_path / "screen.h5ad"
    small.write_h5ad(path)
    back = ad.read_h5ad(path)
    pd.testing.assert_frame_equal(back.uns["true_effects"], small.uns["true_effects"])
    assert back.uns["guide2gene"] == small.uns["guide2gene"]


def test_generation_is_fast():
    import time

    start = time.perf_counter()
    simulate_screen()
    assert time.perf_counter() - start < 2.0


# ------------------------------------------------------------ the burden confounding property


def _quantile_bins(values, n_bins):
    """Quantile bins as sklcrt.binning does: percentile edges, ties collapsed, right-closed."""
    edges = np.unique(np.percentile(values, np.linspace(0, 100, n_bins + 1)))
    return np.searchsorted(edges[1:-1], values, side="right")


def _ntc_pvalues(adata, *, burden_bins, n_resamples=200, seed=0):
    """Two-sided p-values of NTC groups (pairs of NTC guides) on every gene and program.

    Statistic: difference in means of log-normalised counts and CLR usages between treated and
    control cells. Null: permutations of x within strata = batch x 10 quantile bins of a logistic
    propensity on batch + log library size (burden NOT in it), optionally x 8 quantile bins of
    log1p_non_ntc_guides_per_cell.
    """
    covar = adata.obsm["covar"]
    batch = covar["batch"].cat.codes.to_numpy()
    lib = covar["log1p_response_n_umis"].to_numpy()
    C = np.column_stack([batch == b for b in range(1, batch.max() + 1)] + [lib - lib.mean()])
    counts = adata.X.toarray()
    log_usage = np.log(adata.obsm["cnmf_usage"].to_numpy())
    Y = np.column_stack(
        [
            np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4),
            log_usage - log_usage.mean(axis=1, keepdims=True),
        ]
    )
    guides = adata.obsm["guide_assignment"].toarray().astype(bool)
    ntc = np.flatnonzero(
        [adata.uns["guide2gene"][g] == NTC_LABEL for g in adata.uns["guide_names"]]
    )
    burden_bin = _quantile_bins(covar["log1p_non_ntc_guides_per_cell"].to_numpy(), 8)
    rng = np.random.default_rng(seed)
    n_cells = Y.shape[0]
    total = Y.sum(axis=0)
    pvalues = []
    for group in (ntc[i : i + 2] for i in range(0, ntc.size - 1, 2)):
        x = guides[:, group].any(axis=1)
        p_hat = LogisticRegression().fit(C, x).predict_proba(C)[:, 1]
        strata = batch * 10 + _quantile_bins(p_hat, 10)
        if burden_bins:
            strata = strata * 8 + burden_bin
        # within-stratum permutation: sort cells by (stratum, random key) and hand them the treated
        # labels of the cells sorted by stratum, so each stratum keeps its treated count
        order = np.argsort(strata[None, :] + rng.random((n_resamples, n_cells)), axis=1)
        x_sorted = x[np.argsort(strata, kind="stable")].astype(np.float64)
        perm = np.zeros((n_resamples, n_cells))
        np.put_along_axis(perm, order, np.broadcast_to(x_sorted, perm.shape), axis=1)
        m = x.sum()

        def diff(sums, m=m):
            return sums / m - (total - sums) / (n_cells - m)

        observed = diff(x.astype(np.float64) @ Y)
        null = diff(perm @ Y)
        left = (1 + (null <= observed).sum(axis=0)) / (n_resamples + 1)
        right = (1 + (null >= observed).sum(axis=0)) / (n_resamples + 1)
        pvalues.append(np.minimum(1.0, 2 * np.minimum(left, right)))
    return np.concatenate(pvalues)


def test_ntc_calibration_needs_burden_bins():
    """NTC groups: anti-conservative under batch x propensity strata, calibrated with burden bins.

    Default screen (6,000 cells, 100 genes + 10 programs, 10 NTC groups: 1,100 NTC pairs).
    Bound: pairs sharing an NTC group are correlated, so the binomial SE uses n_eff = n_pairs / 4;
    with burden bins the fraction below 0.05 must lie within 0.05 +/- 3 SE (about 0.05 +/- 0.04),
    without them it must exceed 0.3 (observed about 0.64).
    """
    adata = simulate_screen(random_state=0)
    p_plain = _ntc_pvalues(adata, burden_bins=False)
    p_burden = _ntc_pvalues(adata, burden_bins=True)
    n_eff = p_plain.size / 4
    bound = 3 * np.sqrt(0.05 * 0.95 / n_eff)
    frac_plain, frac_burden = np.mean(p_plain < 0.05), np.mean(p_burden < 0.05)
    assert frac_plain > 0.3, frac_plain
    assert abs(frac_burden - 0.05) < bound, (frac_burden, bound)
    assert np.mean(p_burden < 0.01) < 0.01 + 3 * np.sqrt(0.01 * 0.99 / n_eff)


def test_ntc_check_is_calibrated_without_confounding():
    """Control for the check itself: with no burden effect and no targeting effects, the plain
    batch x propensity strata are calibrated, so the inflation above comes from burden."""
    adata = simulate_screen(burden_effect=0.0, frac_targets_with_effect=0.0, random_state=0)
    p_plain = _ntc_pvalues(adata, burden_bins=False)
    bound = 3 * np.sqrt(0.05 * 0.95 / (p_plain.size / 4))
    assert abs(np.mean(p_plain < 0.05) - 0.05) < bound
