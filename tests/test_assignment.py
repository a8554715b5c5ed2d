"""Tests for sklcrt.assignment: guide assignment from gRNA counts and burden covariates."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sklcrt.assignment import (
    DEFAULT_NTC_LABELS,
    _check_aligned,
    add_burden_covariates,
    assign_guides,
    is_ntc_target,
    read_guide2gene,
    read_guide_matrix,
)

IDS = np.array(["gA1", "gA2", "gB1", "gB2", "ntc1", "ntc2"])
TARGETS = np.array(["A", "A", "B", "B", "non-targeting", "non-targeting"])


def _screen(counts, *, ids=IDS, targets=TARGETS, with_covar=True):
    counts = np.asarray(counts)
    n = counts.shape[0]
    adata = ad.AnnData(np.zeros((n, 2), dtype=np.float32))
    adata.obs_names = [f"cell_{i + 1}" for i in range(n)]
    adata.obsm["grna_counts"] = sp.csr_matrix(counts.astype(np.int32))
    adata.uns["grna_ids"] = np.asarray(ids)
    adata.uns["grna_target"] = np.asarray(targets)
    if with_covar:
        adata.obsm["covar"] = pd.DataFrame(
            {"batch": pd.Categorical(np.arange(n) % 2).rename_categories(["b1", "b2"])},
            index=adata.obs_names,
        )
    return adata


def _random_counts(seed=0, n=300, k=6):
    rng = np.random.default_rng(seed)
    counts = rng.poisson(0.7, size=(n, k))
    strong = rng.random((n, k)) < 0.15
    counts[strong] += rng.poisson(20, size=int(strong.sum()))
    return counts


# ------------------------------------------------------------------------- threshold rule


def test_threshold_matches_dense_rule_and_writes_contract_keys():
    counts = _random_counts()
    adata = _screen(counts)
    assign_guides(adata, threshold=5)
    G = adata.obsm["guide_assignment"]
    assert sp.issparse(G) and G.format == "csr" and G.dtype == np.int8
    np.testing.assert_array_equal(G.toarray(), (counts >= 5).astype(np.int8))
    assert set(np.unique(G.data)) <= {1}
    np.testing.assert_array_equal(adata.uns["guide_names"], IDS)
    assert adata.uns["guide2gene"] == dict(zip(IDS, TARGETS, strict=True))
    status = adata.obs["guide_assignment_status"]
    np.testing.assert_array_equal(status == "assigned", (counts >= 5).any(axis=1))
    assert adata.uns["guide_assignment_params"]["threshold"] == 5


def test_threshold_boundary_and_custom_keys():
    counts = np.array([[4, 5, 0, 0, 0, 0], [0, 0, 6, 0, 0, 3], [0, 0, 0, 0, 0, 0]])
    adata = _screen(counts)
    assign_guides(
        adata, threshold=5, key_added="ga", names_key_added="gn", guide2gene_key_added="g2g"
    )
    np.testing.assert_array_equal(
        adata.obsm["ga"].toarray(), [[0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0] * 6]
    )
    assert "gn" in adata.uns and "g2g" in adata.uns
    assert adata.obs["ga_status"].tolist() == ["assigned", "assigned", "unassigned"]


def test_targets_from_target_data_frame_in_any_row_order():
    counts = _random_counts(1)
    adata = _screen(counts)
    del adata.uns["grna_target"]
    order = [3, 0, 5, 1, 4, 2]
    adata.uns["grna_target_data_frame"] = pd.DataFrame(
        {"grna_id": IDS[order], "grna_target": TARGETS[order], "is_ntc": TARGETS[order] == "x"}
    )
    assign_guides(adata)
    assert adata.uns["guide2gene"] == dict(zip(IDS, TARGETS, strict=True))


def test_counts_dataframe_columns_are_the_ids():
    counts = _random_counts(2)
    adata = _screen(counts)
    del adata.uns["grna_ids"]
    adata.obsm["grna_counts"] = pd.DataFrame(counts, index=adata.obs_names, columns=IDS)
    assign_guides(adata)
    np.testing.assert_array_equal(adata.uns["guide_names"], IDS)
    np.testing.assert_array_equal(adata.obsm["guide_assignment"].toarray(), counts >= 5)


def test_dense_counts_and_float_threshold():
    counts = _random_counts(3)
    adata = _screen(counts)
    adata.obsm["grna_counts"] = counts.astype(np.float64)
    assign_guides(adata, threshold=2.5)
    np.testing.assert_array_equal(adata.obsm["guide_assignment"].toarray(), counts >= 2.5)


# --------------------------------------------------------------------------- maximum rule


def _maximum_brute_force(counts, min_fraction, min_umis):
    n, k = counts.shape
    out = np.zeros((n, k), dtype=np.int8)
    status = []
    for i in range(n):
        row = counts[i]
        total = row.sum()
        if total < min_umis or total == 0:
            status.append("unassigned")
            continue
        top = row.max()
        if np.sum(row == top) == 1 and top / total >= min_fraction:
            out[i, np.argmax(row)] = 1
            status.append("assigned")
        else:
            status.append("ambiguous")
    return out, status


@pytest.mark.parametrize(("min_fraction", "min_umis"), [(0.8, 5), (0.5, 0), (0.3, 10), (0.7, 1)])
def test_maximum_matches_brute_force(min_fraction, min_umis):
    counts = _random_counts(4)
    counts[:5] = 0  # cells with no gRNA UMI
    counts[5, :2] = 9  # a tie
    adata = _screen(counts)
    assign_guides(adata, method="maximum", min_fraction=min_fraction, min_umis=min_umis)
    expected, status = _maximum_brute_force(counts, min_fraction, min_umis)
    G = adata.obsm["guide_assignment"]
    assert G.format == "csr" and G.has_sorted_indices
    np.testing.assert_array_equal(G.toarray(), expected)
    assert G.getnnz(axis=1).max() <= 1
    assert adata.obs["guide_assignment_status"].tolist() == status


def test_maximum_fraction_boundary_is_inclusive():
    counts = np.zeros((2, 6), dtype=int)
    counts[0, :2] = [7, 3]  # exactly 0.7
    counts[1, :2] = [69, 31]  # just below 0.7
    adata = _screen(counts)
    assign_guides(adata, method="maximum", min_fraction=0.7)
    assert adata.obs["guide_assignment_status"].tolist() == ["assigned", "ambiguous"]


def test_maximum_small_example():
    counts = np.array(
        [
            [10, 1, 0, 0, 0, 0],  # 10/11 >= 0.8 -> gA1
            [5, 5, 0, 0, 0, 0],  # tie -> ambiguous
            [6, 4, 0, 0, 0, 0],  # 0.6 < 0.8 -> ambiguous
            [0, 0, 0, 0, 4, 0],  # 4 UMIs < 5 -> unassigned
            [0, 0, 0, 0, 0, 0],  # nothing -> unassigned
            [0, 0, 0, 1, 0, 40],  # ntc2
        ]
    )
    adata = _screen(counts)
    assign_guides(adata, method="maximum")
    G = adata.obsm["guide_assignment"].toarray()
    assert G[0].tolist() == [1, 0, 0, 0, 0, 0] and G[5].tolist() == [0, 0, 0, 0, 0, 1]
    assert G[1:5].sum() == 0
    assert adata.obs["guide_assignment_status"].tolist() == [
        "assigned",
        "ambiguous",
        "ambiguous",
        "unassigned",
        "unassigned",
        "assigned",
    ]
    params = adata.uns["guide_assignment_params"]
    assert params["method"] == "maximum" and params["min_fraction"] == 0.8


# ------------------------------------------------------------------------------ errors


def test_missing_counts_key_lists_existing_keys():
    adata = _screen(_random_counts())
    with pytest.raises(ValueError, match=r"obsm\['nope'\] not found.*'covar', 'grna_counts'"):
        assign_guides(adata, counts_key="nope")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "mixture"}, "method must be one of"),
        ({"threshold": 0}, "threshold must be > 0"),
        ({"threshold": "5"}, "threshold must be a finite number"),
        ({"method": "maximum", "min_fraction": 1.5}, "min_fraction must be >= 0 and <= 1"),
        ({"method": "maximum", "min_umis": -1}, "min_umis must be >= 0"),
    ],
)
def test_bad_parameters(kwargs, match):
    adata = _screen(_random_counts())
    with pytest.raises(ValueError, match=match):
        assign_guides(adata, **kwargs)


def test_negative_counts_rejected():
    counts = _random_counts()
    counts[0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        assign_guides(_screen(counts))


def test_ids_and_targets_must_match_columns():
    adata = _screen(_random_counts())
    adata.uns["grna_ids"] = IDS[:5]
    with pytest.raises(ValueError, match="5 gRNA id"):
        assign_guides(adata)
    adata = _screen(_random_counts())
    adata.uns["grna_target"] = TARGETS[:4]
    with pytest.raises(ValueError, match="4 target"):
        assign_guides(adata)
    adata = _screen(_random_counts())
    adata.uns["grna_ids"] = np.array(["g"] * 6)
    with pytest.raises(ValueError, match="unique"):
        assign_guides(adata)


def test_missing_ids_or_targets_list_uns_keys():
    adata = _screen(_random_counts())
    del adata.uns["grna_ids"]
    with pytest.raises(ValueError, match=r"gRNA ids not found.*'grna_target'"):
        assign_guides(adata)
    adata = _screen(_random_counts())
    del adata.uns["grna_target"]
    with pytest.raises(ValueError, match=r"gRNA targets not found.*'grna_ids'"):
        assign_guides(adata)


def test_target_frame_missing_a_guide():
    adata = _screen(_random_counts())
    del adata.uns["grna_target"]
    adata.uns["grna_target_data_frame"] = pd.DataFrame(
        {"grna_id": IDS[:5], "grna_target": TARGETS[:5]}
    )
    with pytest.raises(ValueError, match=r"1 gRNA id\(s\) have no row.*ntc2"):
        assign_guides(adata)


# --------------------------------------------------------------------- burden covariates


def test_burden_covariates_counts_and_logs():
    counts = _random_counts(5)
    adata = _screen(counts)
    assign_guides(adata)
    add_burden_covariates(adata)
    covar = adata.obsm["covar"]
    hit = counts >= 5
    is_ntc = TARGETS == "non-targeting"
    np.testing.assert_array_equal(covar["grna_n_nonzero_assign"], hit.sum(axis=1))
    np.testing.assert_array_equal(covar["non_ntc_guides_per_cell"], hit[:, ~is_ntc].sum(axis=1))
    np.testing.assert_allclose(
        covar["log1p_non_ntc_guides_per_cell"], np.log1p(hit[:, ~is_ntc].sum(axis=1))
    )
    np.testing.assert_allclose(covar["log1p_grna_n_nonzero_assign"], np.log1p(hit.sum(axis=1)))
    assert covar["grna_n_nonzero_assign"].dtype == np.int64
    assert list(covar.columns[:1]) == ["batch"]  # existing columns kept
    assert covar.index.equals(adata.obs_names)


def test_burden_creates_covar_and_replaces_columns():
    adata = _screen(_random_counts(6), with_covar=False)
    assign_guides(adata)
    add_burden_covariates(adata)
    assert adata.obsm["covar"].index.equals(adata.obs_names)
    first = adata.obsm["covar"].copy()
    assign_guides(adata, threshold=1000)  # nothing assigned now
    add_burden_covariates(adata)
    assert adata.obsm["covar"].shape == first.shape
    assert adata.obsm["covar"]["grna_n_nonzero_assign"].sum() == 0


def test_burden_custom_ntc_labels_case_insensitive():
    targets = np.array(["A", "A", "B", "B", "NTC", "Safe-Targeting"])
    counts = _random_counts(7)
    adata = _screen(counts, targets=targets)
    assign_guides(adata)
    add_burden_covariates(adata)
    hit = counts >= 5
    np.testing.assert_array_equal(
        adata.obsm["covar"]["non_ntc_guides_per_cell"], hit[:, [0, 1, 2, 3, 5]].sum(axis=1)
    )
    add_burden_covariates(adata, ntc_labels=("ntc", "safe-targeting"))
    np.testing.assert_array_equal(
        adata.obsm["covar"]["non_ntc_guides_per_cell"], hit[:, :4].sum(axis=1)
    )


def test_burden_rejects_counts_as_assignment():
    counts = _random_counts(8)
    adata = _screen(counts)
    adata.obsm["guide_assignment"] = adata.obsm["grna_counts"]
    adata.uns["guide_names"] = IDS
    adata.uns["guide2gene"] = dict(zip(IDS, TARGETS, strict=True))
    with pytest.raises(ValueError, match="must be 0/1.*assign_guides"):
        add_burden_covariates(adata)


def test_check_aligned_says_which_problem():
    # anndata >= 0.10 already refuses misaligned obsm frames; this guard covers other containers
    obs_names = pd.Index(["c1", "c2", "c3"])
    _check_aligned(pd.Index(["c1", "c2", "c3"]), obs_names, "covar")
    with pytest.raises(ValueError, match="covar has 2 rows but adata has 3 cells"):
        _check_aligned(pd.Index(["c1", "c2"]), obs_names, "covar")
    with pytest.raises(ValueError, match=r"another order.*\.loc\[adata.obs_names\]"):
        _check_aligned(pd.Index(["c3", "c1", "c2"]), obs_names, "covar")
    with pytest.raises(ValueError, match="not indexed by adata.obs_names"):
        _check_aligned(pd.RangeIndex(3), obs_names, "covar")


def test_readers_errors():
    adata = _screen(_random_counts(9))
    with pytest.raises(ValueError, match=r"obsm\['guide_assignment'\] not found.*assign_guides"):
        read_guide_matrix(adata)
    assign_guides(adata)
    adata.uns["guide2gene"] = {g: t for g, t in zip(IDS[:5], TARGETS[:5], strict=True)}
    with pytest.raises(ValueError, match=r"1 guide\(s\) have no target.*ntc2"):
        read_guide2gene(adata, IDS)
    adata.uns["guide2gene"] = pd.Series(TARGETS, index=IDS)
    assert read_guide2gene(adata, IDS)["gB1"] == "B"
    del adata.uns["guide2gene"]
    with pytest.raises(ValueError, match=r"uns\['guide2gene'\] not found"):
        read_guide2gene(adata, IDS)


def test_is_ntc_target():
    assert is_ntc_target(" non-targeting ") and is_ntc_target("ntc")
    assert not is_ntc_target("safe-targeting")
    assert is_ntc_target("safe-targeting", ntc_labels=(*DEFAULT_NTC_LABELS, "safe-targeting"))
    assert is_ntc_target("X", ntc_labels="x")


def test_h5ad_round_trip(tmp_path):
    adata = _screen(_random_counts(10))
    assign_guides(adata)
    add_burden_covariates(adata)
    path = tmp_path / "screen.h5ad"
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    G, names = read_guide_matrix(back)
    np.testing.assert_array_equal(G.toarray(), adata.obsm["guide_assignment"].toarray())
    assert read_guide2gene(back, names) == adata.uns["guide2gene"]
    pd.testing.assert_frame_equal(back.obsm["covar"], adata.obsm["covar"])


# ----------------------------------------------------------------------------- real data


@pytest.mark.realdata
def test_gasperini_threshold_assignment_and_burden(real_screen):
    adata = real_screen("gasperini2019_highmoi")
    assign_guides(adata, method="threshold", threshold=5)
    add_burden_covariates(adata)
    G = adata.obsm["guide_assignment"]
    counts = adata.obsm["grna_counts"]
    assert G.shape == (40002, 79)
    assert (G != (counts >= 5)).nnz == 0
    n_guides = G.getnnz(axis=1)
    # about a fifth of the cells carry one of the 79 surviving gRNAs; high MOI: some carry several
    assert 5_000 < np.sum(n_guides > 0) < 12_000
    assert n_guides.max() >= 3
    targets = pd.Series(adata.uns["guide2gene"])
    assert (targets == "non-targeting").sum() == 25 and targets.nunique() == 28
    covar = adata.obsm["covar"]
    is_ntc = (targets == "non-targeting").to_numpy()
    np.testing.assert_array_equal(covar["grna_n_nonzero_assign"], n_guides)
    np.testing.assert_array_equal(covar["non_ntc_guides_per_cell"], G[:, ~is_ntc].getnnz(axis=1))
    assert np.all(covar["grna_n_nonzero_assign"] <= covar["grna_n_nonzero"])


@pytest.mark.realdata
def test_papalexi_maximum_rule_agrees_with_stored_max_feature(real_screen):
    adata = real_screen("papalexi2021_lowmoi")
    assign_guides(adata, method="maximum")
    G = adata.obsm["guide_assignment"]
    assert G.shape == (20729, 110) and G.getnnz(axis=1).max() == 1
    status = adata.obs["guide_assignment_status"].to_numpy()
    frac = adata.obs["grna_frac_umis_max_feature"].to_numpy()
    # every cell in the file has >= 5 gRNA UMIs, so "assigned" is exactly "top gRNA holds >= 80 %"
    # (up to ties, which cannot happen above one half)
    np.testing.assert_array_equal(status == "assigned", frac >= 0.8)
    rows = np.flatnonzero(status == "assigned")
    assigned_name = np.asarray(adata.uns["guide_names"])[G.indices]
    stored = adata.obs["grna_feature_w_max_expression"].astype(str).to_numpy()[rows]
    assert np.mean(assigned_name == stored) == 1.0
