"""Tests for sklcrt.inputs: prepare_crt_inputs and unit_treatment."""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sklcrt.inputs import prepare_crt_inputs, unit_treatment
from sklcrt.preprocessing import clr_transform, encode_covariates

GUIDES = np.array(["gA1", "gA2", "gB1", "ntc1", "ntc2", "ntc3"])
GUIDE2GENE = {
    "gA1": "A",
    "gA2": "A",
    "gB1": "B",
    "ntc1": "non-targeting",
    "ntc2": "NTC",
    "ntc3": "non-targeting",
}


def _screen(n=80, g=7, k=4, seed=0):
    """A small screen in the data contract, built without any other sklcrt module."""
    rng = np.random.default_rng(seed)
    counts = sp.random(n, g, density=0.4, format="csr", random_state=seed, dtype=np.float64)
    counts.data = np.ceil(counts.data * 20)
    adata = ad.AnnData(counts.astype(np.int32))
    adata.obs_names = [f"cell_{i + 1}" for i in range(n)]
    adata.var_names = [f"gene_{j}" for j in range(g)]
    adata.layers["raw"] = counts.copy()
    adata.obsm["covar"] = pd.DataFrame(
        {
            "batch": pd.Categorical(rng.choice(["b2", "b1"], size=n)),
            "response_n_umis": rng.poisson(500, size=n),
            "log1p_response_n_umis": rng.normal(6, 0.3, size=n),
        },
        index=adata.obs_names,
    )
    usage = rng.dirichlet(np.ones(k), size=n)
    usage[rng.random((n, k)) < 0.1] = 0.0
    adata.obsm["cnmf_usage"] = pd.DataFrame(
        usage, index=adata.obs_names, columns=[f"prog{j}" for j in range(k)]
    )
    assignment = (rng.random((n, GUIDES.size)) < 0.2).astype(np.int8)
    adata.obsm["guide_assignment"] = sp.csr_matrix(assignment)
    adata.uns["guide_names"] = GUIDES.copy()
    adata.uns["guide2gene"] = dict(GUIDE2GENE)
    return adata


def test_counts_inputs_follow_the_contract():
    adata = _screen()
    inputs = prepare_crt_inputs(adata)
    expected_keys = {
        "Y",
        "response_names",
        "C",
        "C_names",
        "covar_df_raw",
        "batch_raw",
        "guides",
        "guide_names",
        "guide2gene",
        "units",
        "ntc_guides",
        "cell_names",
        "response_kind",
    }
    assert set(inputs) == expected_keys
    Y = inputs["Y"]
    assert sp.issparse(Y) and Y.format == "csr" and Y.shape == adata.shape
    assert (Y != adata.X).nnz == 0
    assert inputs["response_kind"] == "counts"
    assert list(inputs["response_names"]) == list(adata.var_names)
    C_ref, names_ref = encode_covariates(adata.obsm["covar"])
    np.testing.assert_allclose(inputs["C"], C_ref)
    assert (
        inputs["C_names"]
        == names_ref
        == [
            "intercept",
            "batch_b2",
            "response_n_umis",
            "log1p_response_n_umis",
        ]
    )
    pd.testing.assert_frame_equal(inputs["covar_df_raw"], adata.obsm["covar"])
    assert inputs["covar_df_raw"] is not adata.obsm["covar"]
    np.testing.assert_array_equal(inputs["batch_raw"], adata.obsm["covar"]["batch"].to_numpy())
    G = inputs["guides"]
    assert G.format == "csr" and G.dtype == np.int8 and G.shape == (adata.n_obs, GUIDES.size)
    assert list(inputs["guide_names"]) == list(GUIDES)
    assert inputs["guide2gene"] == GUIDE2GENE
    assert inputs["units"] == {"A": ["gA1", "gA2"], "B": ["gB1"]}
    assert inputs["ntc_guides"] == ["ntc1", "ntc2", "ntc3"]
    assert list(inputs["cell_names"]) == list(adata.obs_names)


def test_counts_from_layer_and_dense_x():
    adata = _screen()
    inputs = prepare_crt_inputs(adata, layer="raw")
    assert (inputs["Y"] != adata.layers["raw"]).nnz == 0
    adata.X = adata.X.toarray()
    inputs = prepare_crt_inputs(adata)
    assert isinstance(inputs["Y"], np.ndarray)
    np.testing.assert_array_equal(inputs["Y"], adata.X)


def test_programs_are_clr_transformed():
    adata = _screen()
    inputs = prepare_crt_inputs(adata, response="programs", clr_floor_quantile=0.05)
    np.testing.assert_allclose(
        inputs["Y"], clr_transform(adata.obsm["cnmf_usage"], floor_quantile=0.05)
    )
    assert list(inputs["response_names"]) == ["prog0", "prog1", "prog2", "prog3"]
    assert inputs["response_kind"] == "programs"
    adata.obsm["cnmf_usage"] = adata.obsm["cnmf_usage"].to_numpy()
    inputs = prepare_crt_inputs(adata, response="programs")
    assert list(inputs["response_names"]) == [f"program_{k}" for k in range(4)]


def test_covariate_subset_and_missing_batch_column():
    adata = _screen()
    inputs = prepare_crt_inputs(adata, covariates=["log1p_response_n_umis"], batch_key="batch")
    assert inputs["C_names"] == ["intercept", "log1p_response_n_umis"]
    assert inputs["batch_raw"] is not None  # batch read raw even when not encoded
    assert "response_n_umis" in inputs["covar_df_raw"]  # the whole raw frame is kept
    inputs = prepare_crt_inputs(adata, batch_key="lane")
    assert inputs["batch_raw"] is None
    inputs = prepare_crt_inputs(adata, batch_key=None)
    assert inputs["batch_raw"] is None
    with pytest.raises(ValueError, match=r"\['lane'\] not found.*available columns"):
        prepare_crt_inputs(adata, covariates=["lane"])


def test_dataframe_guide_assignment_uses_its_columns():
    adata = _screen()
    G = adata.obsm["guide_assignment"].toarray()
    del adata.uns["guide_names"]
    adata.obsm["guide_assignment"] = pd.DataFrame(
        G.astype(bool), index=adata.obs_names, columns=GUIDES
    )
    inputs = prepare_crt_inputs(adata)
    assert list(inputs["guide_names"]) == list(GUIDES)
    np.testing.assert_array_equal(inputs["guides"].toarray(), G)


def test_custom_ntc_labels():
    adata = _screen()
    inputs = prepare_crt_inputs(adata, ntc_labels=("non-targeting",))
    assert inputs["ntc_guides"] == ["ntc1", "ntc3"]
    assert inputs["units"]["NTC"] == ["ntc2"]


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"response": "expression"}, "response must be one of"),
        ({"response": "programs", "layer": "raw"}, "layer is only used with response='counts'"),
        ({"layer": "counts"}, r"layers\['counts'\] not found.*\['raw'\]"),
        ({"response": "programs", "usage_key": "nmf"}, r"obsm\['nmf'\] not found.*'cnmf_usage'"),
        ({"covar_key": "covariates"}, r"obsm\['covariates'\] not found.*'covar'"),
        ({"guide_key": "ga"}, r"obsm\['ga'\] not found.*'guide_assignment'"),
        ({"guide2gene_key": "g2g"}, r"uns\['g2g'\] not found.*'guide2gene'"),
    ],
)
def test_bad_keys_and_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        prepare_crt_inputs(_screen(), **kwargs)


def test_negative_or_nan_counts_rejected():
    adata = _screen()
    adata.X = adata.X.astype(np.float64)
    adata.X.data[0] = -1.0
    with pytest.raises(ValueError, match=r"adata.X has negative"):
        prepare_crt_inputs(adata)
    adata.X.data[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        prepare_crt_inputs(adata)


def test_non_integer_counts_warn():
    adata = _screen()
    adata.X = adata.X.astype(np.float64) * 0.5
    with pytest.warns(UserWarning, match="non-integer"):
        prepare_crt_inputs(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepare_crt_inputs(_screen())


def test_negative_usage_rejected_naming_key():
    adata = _screen()
    adata.obsm["cnmf_usage"].iloc[0, 0] = -0.1
    with pytest.raises(ValueError, match=r"obsm\['cnmf_usage'\].*non-negative"):
        prepare_crt_inputs(adata, response="programs")


def test_guide_matrix_problems():
    adata = _screen()
    adata.uns["guide_names"] = GUIDES[:5]
    with pytest.raises(ValueError, match=r"5 name\(s\) but.*6 column"):
        prepare_crt_inputs(adata)
    adata = _screen()
    adata.obsm["guide_assignment"] = adata.obsm["guide_assignment"] * 3
    with pytest.raises(ValueError, match="must be 0/1"):
        prepare_crt_inputs(adata)
    adata = _screen()
    del adata.uns["guide2gene"]["gB1"]
    with pytest.raises(ValueError, match=r"have no target.*gB1"):
        prepare_crt_inputs(adata)


def test_covar_must_be_a_dataframe():
    adata = _screen()
    adata.obsm["covar"] = np.ones((adata.n_obs, 2))
    with pytest.raises(ValueError, match="must be a pandas DataFrame"):
        prepare_crt_inputs(adata)


def test_misaligned_covar_index_is_reported():
    # anndata refuses misaligned obsm frames itself; a duck-typed container exercises the guard
    adata = _screen()

    class _Screen:
        X = adata.X
        layers = {}
        var_names = adata.var_names
        obs_names = adata.obs_names
        n_obs = adata.n_obs
        uns = adata.uns
        obsm = {
            "covar": adata.obsm["covar"].iloc[::-1],
            "guide_assignment": adata.obsm["guide_assignment"],
        }

    with pytest.raises(ValueError, match=r"obsm\['covar'\] has the cells.*another order"):
        prepare_crt_inputs(_Screen())


# ------------------------------------------------------------------------- unit_treatment


def test_unit_treatment_is_any_of_the_guides():
    adata = _screen()
    inputs = prepare_crt_inputs(adata)
    G = adata.obsm["guide_assignment"].toarray().astype(bool)
    x = unit_treatment(inputs, inputs["units"]["A"])
    assert x.dtype == bool and x.shape == (adata.n_obs,)
    np.testing.assert_array_equal(x, G[:, 0] | G[:, 1])
    np.testing.assert_array_equal(unit_treatment(inputs, "gB1"), G[:, 2])
    np.testing.assert_array_equal(
        unit_treatment(inputs, inputs["ntc_guides"]), G[:, 3:].any(axis=1)
    )
    dense = dict(inputs, guides=inputs["guides"].toarray())
    np.testing.assert_array_equal(unit_treatment(dense, ["gA1", "gA2"]), x)


def test_unit_treatment_errors():
    inputs = prepare_crt_inputs(_screen())
    with pytest.raises(ValueError, match=r"unknown guide\(s\) \['gZ'\]"):
        unit_treatment(inputs, ["gA1", "gZ"])
    with pytest.raises(ValueError, match="empty"):
        unit_treatment(inputs, [])


# ----------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_gasperini_inputs_shapes(real_screen):
    from sklcrt.assignment import add_burden_covariates, assign_guides

    adata = real_screen("gasperini2019_highmoi")
    assign_guides(adata, method="threshold", threshold=5)
    add_burden_covariates(adata)
    inputs = prepare_crt_inputs(adata)
    n = 40002
    assert inputs["Y"].shape == (n, 366) and inputs["Y"].format == "csr"
    assert inputs["C"].shape[0] == n and inputs["C_names"][:2] == ["intercept", "batch_b2"]
    assert inputs["guides"].shape == (n, 79)
    assert len(inputs["units"]) == 27 and all(len(g) == 2 for g in inputs["units"].values())
    assert len(inputs["ntc_guides"]) == 25
    assert set(inputs["batch_raw"]) == {"b1", "b2"}
    assert "log1p_non_ntc_guides_per_cell" in inputs["covar_df_raw"]
    treated = [unit_treatment(inputs, g).sum() for g in inputs["units"].values()]
    assert min(treated) > 50  # every target has cells to test


@pytest.mark.realdata
def test_papalexi_inputs_with_maximum_rule(real_screen):
    from sklcrt.assignment import assign_guides

    adata = real_screen("papalexi2021_lowmoi")
    assign_guides(adata, method="maximum")
    inputs = prepare_crt_inputs(adata, batch_key="bio_rep")
    assert inputs["Y"].shape == (20729, 299)
    assert inputs["C_names"][:3] == ["intercept", "bio_rep_rep_2", "bio_rep_rep_3"]
    assert len(inputs["units"]) == 26 and len(inputs["ntc_guides"]) == 9
    assert inputs["guides"].getnnz(axis=1).max() == 1
    # low MOI: the units partition the assigned cells
    per_unit = [unit_treatment(inputs, g) for g in inputs["units"].values()]
    per_unit.append(unit_treatment(inputs, inputs["ntc_guides"]))
    assert np.sum(per_unit) == inputs["guides"].nnz


@pytest.mark.parametrize("dense", [False, True])
def test_backed_anndata_is_read_into_memory(tmp_path, dense):
    adata = _screen()
    if dense:
        adata.X = adata.X.toarray()
    path = tmp_path / "screen.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        got = prepare_crt_inputs(backed)
        want = prepare_crt_inputs(adata)
        assert sp.issparse(got["Y"]) == (not dense)
        Y = got["Y"].toarray() if sp.issparse(got["Y"]) else got["Y"]
        W = want["Y"].toarray() if sp.issparse(want["Y"]) else want["Y"]
        np.testing.assert_array_equal(Y, W)
        np.testing.assert_array_equal(got["C"], want["C"])
        layer = prepare_crt_inputs(backed, layer="raw")["Y"]
        np.testing.assert_array_equal(layer.toarray(), adata.layers["raw"].toarray())
    finally:
        backed.file.close()


def test_backed_anndata_runs_like_one_in_memory(tmp_path):
    from sklcrt.datasets import simulate_screen
    from sklcrt.runners import run_gene_loop

    adata = simulate_screen(n_cells=600, n_genes=8, n_targets=2, n_ntc_guides=4, random_state=0)
    adata.write_h5ad(tmp_path / "s.h5ad")
    backed = ad.read_h5ad(tmp_path / "s.h5ad", backed="r")
    options = dict(n_resamples=19, n_resamples_adaptive=0, random_state=0, progress=False)
    try:
        pd.testing.assert_frame_equal(
            run_gene_loop(backed, **options), run_gene_loop(adata, **options), check_exact=True
        )
    finally:
        backed.file.close()


def test_lazy_layer_is_computed():
    da = pytest.importorskip("dask.array")
    adata = _screen()
    dense = adata.layers["raw"].toarray()
    adata.layers["lazy"] = da.from_array(dense, chunks=(20, 7))
    np.testing.assert_array_equal(prepare_crt_inputs(adata, layer="lazy")["Y"], dense)


def test_matrix_that_cannot_be_read_says_to_load_it():
    from sklcrt.inputs import _in_memory

    class Broken:
        def to_memory(self):
            raise OSError("file closed")

    with pytest.raises(ValueError, match=r"adata.X is a Broken that could not.*to_memory\(\)"):
        _in_memory(Broken(), "adata.X")
    with pytest.raises(ValueError, match=r"adata.X is a list, not a numeric.*load the data"):
        _in_memory([[object()]], "adata.X")
