"""MuData and Cell Ranger input into the data contract's layout; results stored with the data."""

import warnings

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sklcrt.assignment import assign_guides
from sklcrt.datasets import simulate_screen
from sklcrt.io import (
    count_covariates,
    load_results,
    read_10x_h5,
    read_mudata,
    store_results,
    to_mudata,
    write_h5mu,
)

COVARIATES = [
    "response_n_umis",
    "response_n_nonzero",
    "grna_n_umis",
    "grna_n_nonzero",
    "log1p_response_n_umis",
    "log1p_response_n_nonzero",
    "log1p_grna_n_umis",
    "log1p_grna_n_nonzero",
]


@pytest.fixture
def mudata():
    md = pytest.importorskip("mudata")
    with md.set_options(pull_on_update=False):
        yield md


def _toy(seed=0, n_cells=40, n_genes=6):
    rng = np.random.default_rng(seed)
    rna = rng.poisson(2.0, size=(n_cells, n_genes))
    grna = rng.poisson(0.5, size=(n_cells, 3))
    grna[:, 0] += 6 * (rng.uniform(size=n_cells) < 0.3)
    cells = [f"cell_{i}" for i in range(n_cells)]
    return rna, grna, cells


def test_count_covariates_match_the_data_readme():
    rna = np.array([[3, 0, 1], [0, 0, 0], [2, 2, 2]])
    grna = np.array([[0, 5], [1, 0], [0, 0]])
    cov = count_covariates(sp.csr_matrix(rna), grna, pd.Index(["a", "b", "c"]))
    assert list(cov.columns) == COVARIATES
    assert cov["response_n_umis"].tolist() == [4, 0, 6]
    assert cov["response_n_nonzero"].tolist() == [2, 0, 3]
    assert cov["grna_n_umis"].tolist() == [5, 1, 0]
    assert cov["grna_n_nonzero"].tolist() == [1, 1, 0]  # every gRNA with >= 1 UMI
    np.testing.assert_allclose(cov["log1p_grna_n_umis"], np.log1p([5, 1, 0]))


# ---------------------------------------------------------------------- MuData
def _mdata(md, *, guide_name="guide", target_col="target", drop_guide_cells=0):
    rna, grna, cells = _toy()
    obs = pd.DataFrame({"lane": pd.Categorical(["L1", "L2"] * (len(cells) // 2))}, index=cells)
    rna_ad = ad.AnnData(sp.csr_matrix(rna.astype(np.float32)), obs=obs,
                        var=pd.DataFrame(index=[f"G{j}" for j in range(rna.shape[1])]))  # fmt: skip
    keep = slice(drop_guide_cells, None)
    guide_ad = ad.AnnData(
        sp.csr_matrix(grna[keep]),
        obs=pd.DataFrame(index=cells[keep]),
        var=pd.DataFrame({target_col: ["MYC", "GATA1", "non-targeting"]}, index=["g1", "g2", "g3"]),
    )
    return md.MuData({"rna": rna_ad, guide_name: guide_ad}), rna, grna, cells


def test_read_mudata_makes_the_data_contract_layout(mudata):
    mdata, rna, grna, cells = _mdata(mudata)
    adata = read_mudata(mdata, batch_key="lane")
    assert adata.obs_names.tolist() == cells
    assert sp.issparse(adata.X) and adata.X.dtype == np.int32  # integer floats -> int32
    np.testing.assert_array_equal(adata.X.toarray(), rna)
    np.testing.assert_array_equal(adata.obsm["grna_counts"].toarray(), grna)
    assert adata.uns["grna_ids"].tolist() == ["g1", "g2", "g3"]
    assert adata.uns["grna_target"].tolist() == ["MYC", "GATA1", "non-targeting"]
    frame = adata.uns["grna_target_data_frame"]
    assert frame["is_ntc"].tolist() == [False, False, True]
    covar = adata.obsm["covar"]
    assert list(covar.columns) == ["batch", *COVARIATES]
    assert covar.index.equals(adata.obs_names)
    assert covar["batch"].tolist() == ["L1", "L2"] * 20
    np.testing.assert_array_equal(covar["grna_n_umis"], grna.sum(axis=1))
    np.testing.assert_array_equal(covar["response_n_nonzero"], (rna > 0).sum(axis=1))
    # the next steps of the analysis read it
    assign_guides(adata, threshold=5)
    assert adata.uns["guide2gene"] == {"g1": "MYC", "g2": "GATA1", "g3": "non-targeting"}


def test_read_mudata_finds_the_crispr_modality_and_missing_cells(mudata):
    mdata, _, grna, _ = _mdata(mudata, guide_name="crispr", target_col="target_gene_name",
                               drop_guide_cells=4)  # fmt: skip
    with pytest.warns(UserWarning, match="4 of 40 cells"):
        adata = read_mudata(mdata)
    counts = adata.obsm["grna_counts"].toarray()
    assert np.all(counts[:4] == 0)
    np.testing.assert_array_equal(counts[4:], grna[4:])
    assert "batch" not in adata.obsm["covar"]


def test_read_mudata_errors_name_the_fix(mudata):
    mdata, *_ = _mdata(mudata, guide_name="hto", target_col="feature")
    with pytest.raises(ValueError, match="no guide modality.*guide="):
        read_mudata(mdata)
    with pytest.raises(ValueError, match="target_key"):
        read_mudata(mdata, guide="hto")
    adata = read_mudata(mdata, guide="hto", target_key="feature")
    assert adata.uns["grna_target"].tolist() == ["MYC", "GATA1", "non-targeting"]
    adata = read_mudata(mdata, guide="hto", grna_target={"g1": "A", "g2": "B", "g3": "NTC"})
    assert adata.uns["grna_target_data_frame"]["is_ntc"].tolist() == [False, False, True]
    with pytest.raises(ValueError, match="modality 'RNA' not found"):
        read_mudata(mdata, rna="RNA")
    with pytest.raises(ValueError, match="batch_key"):
        read_mudata(mdata, guide="hto", target_key="feature", batch_key="nope")
    with pytest.raises(TypeError, match="MuData"):
        read_mudata(np.zeros(3))


def test_read_mudata_without_mudata_says_how_to_install(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "mudata", None)
    with pytest.raises(ImportError, match="pip install mudata"):
        read_mudata(tmp_path / "screen.h5mu")


# ---------------------------------------------------------------------- Cell Ranger
def _write_10x(path, rna, grna, barcodes, *, with_targets=True):
    """A Cell Ranger v3 feature-barcode matrix: CSC (features x barcodes), genes then gRNAs."""
    full = sp.csc_matrix(np.hstack([rna, grna]).T.astype(np.int32))
    n_genes, n_guides = rna.shape[1], grna.shape[1]
    with h5py.File(path, "w") as f:
        m = f.create_group("matrix")
        m["data"], m["indices"], m["indptr"] = full.data, full.indices, full.indptr
        m["shape"] = np.array(full.shape, dtype=np.int32)
        m["barcodes"] = np.array(barcodes, dtype="S")
        ft = m.create_group("features")
        ft["id"] = np.array([f"ENSG{j:05d}" for j in range(n_genes)] + ["g1", "g2", "g3"],
                            dtype="S")  # fmt: skip
        ft["name"] = np.array([f"GENE{j}" for j in range(n_genes)] + ["g1", "g2", "g3"], dtype="S")
        ft["feature_type"] = np.array(
            ["Gene Expression"] * n_genes + ["CRISPR Guide Capture"] * n_guides, dtype="S"
        )
        ft["genome"] = np.array(["GRCh38"] * (n_genes + n_guides), dtype="S")
        keys = ["genome"]
        if with_targets:
            ft["target_gene_name"] = np.array([""] * n_genes + ["MYC", "GATA1", "Non-Targeting"],
                                              dtype="S")  # fmt: skip
            keys.append("target_gene_name")
        ft["_all_tag_keys"] = np.array(keys, dtype="S")


def test_read_10x_h5_splits_genes_and_guides(tmp_path):
    rna, grna, _ = _toy(seed=3)
    barcodes = [f"AAAC{i:04d}-{1 + (i >= 20)}" for i in range(40)]
    path = tmp_path / "filtered_feature_bc_matrix.h5"
    _write_10x(path, rna, grna, barcodes)
    adata = read_10x_h5(path)
    assert adata.obs_names.tolist() == barcodes
    assert adata.var_names.tolist() == [f"GENE{j}" for j in range(rna.shape[1])]
    assert adata.var["gene_ids"].iloc[0] == "ENSG00000"
    np.testing.assert_array_equal(adata.X.toarray(), rna)
    np.testing.assert_array_equal(adata.obsm["grna_counts"].toarray(), grna)
    assert adata.uns["grna_target"].tolist() == ["MYC", "GATA1", "Non-Targeting"]
    assert adata.uns["grna_target_data_frame"]["is_ntc"].tolist() == [False, False, True]
    covar = adata.obsm["covar"]
    assert covar["batch"].tolist() == ["1"] * 20 + ["2"] * 20  # the aggr gem groups
    assert list(covar.columns) == ["batch", *COVARIATES]
    assert read_10x_h5(path, var_names="gene_ids").var_names[0] == "ENSG00000"
    assert "batch" not in read_10x_h5(path, batch=None).obsm["covar"]


def test_read_10x_h5_targets_from_a_table_and_errors(tmp_path):
    rna, grna, _ = _toy(seed=4)
    path = tmp_path / "m.h5"
    _write_10x(path, rna, grna, [f"B{i}-1" for i in range(40)], with_targets=False)
    with pytest.raises(ValueError, match="grna_target"):
        read_10x_h5(path)
    table = pd.DataFrame({"grna_id": ["g1", "g2", "g3"], "grna_target": ["A", "B", "NTC"]})
    adata = read_10x_h5(path, grna_target=table)
    assert adata.uns["grna_target"].tolist() == ["A", "B", "NTC"]
    assert "batch" not in adata.obsm["covar"]  # one gem group
    with pytest.raises(ValueError, match="no 'Antibody Capture'"):
        read_10x_h5(path, guide_feature_type="Antibody Capture", grna_target=table)
    with pytest.raises(ValueError, match="var_names"):
        read_10x_h5(path, var_names="symbols")
    bad = tmp_path / "v2.h5"
    with h5py.File(bad, "w") as f:
        f.create_group("GRCh38")
    with pytest.raises(ValueError, match="v3"):
        read_10x_h5(bad)


# ---------------------------------------------------------------------- results with the data
def _results_with_failed_qc():
    return pd.DataFrame(
        {
            "unit": ["T1", "T1", "T2"],
            "grna_target": ["T1", "T1", "T2"],
            "response": ["G1", "G2", "G1"],
            "n_treated": [30, 30, 2],
            "effect": [-1.2, 0.1, np.nan],
            "pvalue": [1e-8, 0.4, np.nan],
            "pvalue_method": ["skew_normal", "empirical", None],  # None: failed QC
            "n_resamples": [4999, 499, 0],
            "pass_qc": [True, True, False],
            "qc_reason": ["", "", "n_nonzero_treated < 7"],
            "p_adj": [2e-8, 0.4, np.nan],
            "significant": [True, False, False],
        }
    )


PARAMS = {
    "resampling_method": "stratified_perm",
    "resampling_kwargs": {"n_bins": 5, "burden_clip_quantiles": (0.0, 0.99), "burden_key": None},
    "n_resamples": np.int64(499),
    "alpha": 0.1,
    "statistic": object(),
}


def _check_round_trip(results, params):
    expected = _results_with_failed_qc()
    pd.testing.assert_frame_equal(results, expected)
    assert params["resampling_kwargs"] == {
        "n_bins": 5,
        "burden_clip_quantiles": [0.0, 0.99],
        "burden_key": None,
    }
    assert params["n_resamples"] == 499 and params["alpha"] == 0.1
    assert params["statistic"].startswith("<object object")


def test_store_results_round_trips_through_h5ad(tmp_path):
    adata = simulate_screen(n_cells=100, n_genes=8, n_targets=3, n_ntc_guides=3)
    table = _results_with_failed_qc()
    with pytest.raises(TypeError, match="non-string"):  # why the conversion is needed
        bare = adata.copy()
        bare.uns["raw"] = table
        bare.write_h5ad(tmp_path / "bare.h5ad")
    store_results(adata, "sklcrt_discovery", table, PARAMS)
    assert table["pvalue_method"].tolist()[-1] is None  # the caller's table is untouched
    _check_round_trip(*load_results(adata, "sklcrt_discovery"))
    adata.write_h5ad(tmp_path / "screen.h5ad")
    back = ad.read_h5ad(tmp_path / "screen.h5ad")
    _check_round_trip(*load_results(back, "sklcrt_discovery"))


def test_write_h5mu_round_trips_the_screen_and_results(tmp_path, mudata):
    adata = simulate_screen(n_cells=150, n_genes=8, n_targets=3, n_ntc_guides=3, random_state=1)
    assign_guides(adata, threshold=5)
    store_results(adata, "sklcrt_discovery", _results_with_failed_qc(), PARAMS)
    mdata = to_mudata(adata)
    assert sorted(mdata.mod) == ["guide", "rna"]
    assert mdata["guide"].var["grna_target"].tolist() == list(adata.uns["grna_target"])
    assert "assignment" in mdata["guide"].layers
    path = write_h5mu(adata, tmp_path / "screen.h5mu")
    back = read_mudata(path)
    np.testing.assert_array_equal(back.X.toarray(), adata.X.toarray())
    np.testing.assert_array_equal(
        back.obsm["grna_counts"].toarray(), adata.obsm["grna_counts"].toarray()
    )
    assert back.uns["grna_ids"].tolist() == list(adata.uns["grna_ids"])
    # the screen's covariates are kept, the gRNA count covariates added
    covar = back.obsm["covar"]
    pd.testing.assert_frame_equal(covar[list(adata.obsm["covar"].columns)], adata.obsm["covar"])
    np.testing.assert_array_equal(
        covar["grna_n_umis"], np.asarray(adata.obsm["grna_counts"].sum(axis=1)).ravel()
    )
    np.testing.assert_array_equal(
        back.obsm["guide_assignment"].toarray(), adata.obsm["guide_assignment"].toarray()
    )
    assert back.uns["guide2gene"] == adata.uns["guide2gene"]
    _check_round_trip(*load_results(back, "sklcrt_discovery"))
    # results written into a MuData directly round-trip too
    store_results(mdata, "sklcrt_power", _results_with_failed_qc(), PARAMS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        mdata.write(tmp_path / "m.h5mu")
        again = mudata.read_h5mu(tmp_path / "m.h5mu")
    _check_round_trip(*load_results(again, "sklcrt_power"))


def test_load_results_errors_and_bare_tables():
    adata = ad.AnnData(np.zeros((2, 1)))
    with pytest.raises(KeyError, match="no results"):
        load_results(adata, "missing")
    adata.uns["bare"] = pd.DataFrame({"pvalue": [0.5]})
    frame, params = load_results(adata, "bare")
    assert params == {} and frame["pvalue"].tolist() == [0.5]
    adata.uns["odd"] = {"x": 1}
    with pytest.raises(ValueError, match="not a stored result"):
        load_results(adata, "odd")
    with pytest.raises(TypeError, match="DataFrame"):
        store_results(adata, "k", [1, 2])
