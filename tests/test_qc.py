"""Tests for sklcrt.qc: SCEPTRE's cellwise QC rules, kept as a mask."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sklcrt.assignment import assign_guides
from sklcrt.qc import QC_RULES, CellwiseQCResult, cellwise_qc


def _screen(n=1000, seed=0, n_guides=4, with_p_mito=True):
    rng = np.random.default_rng(seed)
    X = sp.csr_matrix(rng.poisson(rng.gamma(2.0, 1.0, size=(n, 1)) * 0.5, size=(n, 40)))
    adata = ad.AnnData(X.astype(np.float32))
    adata.obs_names = [f"cell_{i + 1}" for i in range(n)]
    n_umis = np.asarray(X.sum(axis=1)).ravel()
    covar = pd.DataFrame(
        {
            "batch": pd.Categorical(np.where(np.arange(n) % 2, "b2", "b1")),
            "response_n_umis": n_umis,
            "response_n_nonzero": X.getnnz(axis=1),
        },
        index=adata.obs_names,
    )
    if with_p_mito:
        covar["response_p_mito"] = rng.beta(1, 12, n)
    adata.obsm["covar"] = covar
    # 0, 1 or 2 guides per cell
    k = rng.choice(3, size=n, p=[0.2, 0.6, 0.2])
    G = np.zeros((n, n_guides), dtype=np.int8)
    for i in range(n):
        G[i, rng.choice(n_guides, size=k[i], replace=False)] = 1
    adata.obsm["guide_assignment"] = sp.csr_matrix(G)
    adata.uns["guide_names"] = np.array([f"g{j}" for j in range(n_guides)])
    return adata, k


def test_each_rule_matches_its_definition():
    adata, k = _screen()
    covar = adata.obsm["covar"]
    res = cellwise_qc(adata, moi="low", additional_cells_to_remove=["cell_5", "cell_9"])
    assert isinstance(res, CellwiseQCResult)
    cells = res.cells
    assert list(cells.columns) == [*QC_RULES, "pass_qc"]
    assert cells.index.equals(adata.obs_names) and all(d.kind == "b" for d in cells.dtypes)
    u = covar["response_n_umis"].to_numpy()
    lo, hi = np.quantile(u, [0.01, 0.99])
    np.testing.assert_array_equal(cells["response_n_umis"], (u < lo) | (u > hi))
    z = covar["response_n_nonzero"].to_numpy()
    lo, hi = np.quantile(z, [0.01, 0.99])
    np.testing.assert_array_equal(cells["response_n_nonzero"], (z < lo) | (z > hi))
    np.testing.assert_array_equal(cells["p_mito"], covar["response_p_mito"] > 0.2)
    np.testing.assert_array_equal(cells["zero_grnas"], k == 0)
    np.testing.assert_array_equal(cells["twoplus_grnas"], k == 2)
    assert cells["user_specified"].sum() == 2 and cells.loc["cell_5", "user_specified"]
    expected_pass = ~cells[list(QC_RULES)].any(axis=1)
    np.testing.assert_array_equal(cells["pass_qc"], expected_pass)
    # the quantile rules remove about 1 % on each side (ties make it fewer), p_mito a few
    assert 0 < cells["response_n_umis"].sum() <= 0.03 * adata.n_obs
    assert 0 < cells["p_mito"].sum() < 0.1 * adata.n_obs
    s = res.summary
    assert list(s.index) == [*QC_RULES, "any"]
    assert s.loc["any", "n_removed"] == int((~expected_pass).sum())
    assert s["n_removed"].drop("any").tolist() == [int(cells[r].sum()) for r in QC_RULES]
    assert res.n_pass == int(expected_pass.sum()) and res.mask.dtype == bool


def test_nothing_deleted_and_results_stored():
    adata, _ = _screen()
    before = adata.copy()
    res = cellwise_qc(adata, moi="high")
    assert adata.n_obs == before.n_obs and (adata.X != before.X).nnz == 0
    np.testing.assert_array_equal(adata.obs["pass_cellwise_qc"], res.mask)
    assert adata.obsm["cellwise_qc"].equals(res.cells)
    assert adata.uns["cellwise_qc"]["params"]["remove_cells_w_zero_or_twoplus_grnas"] is False
    assert set(adata.uns["cellwise_qc"]["summary"]["rule"]) == {*QC_RULES, "any"}
    # high MOI: the gRNA rules are off, as in SCEPTRE, and say so
    assert not res.summary.loc["zero_grnas", "applied"] and res.cells["zero_grnas"].sum() == 0
    assert "moi='high'" in res.summary.loc["zero_grnas", "note"]
    other = cellwise_qc(adata, moi="high", key_added=None)
    assert "pass_None" not in adata.obs and other.cells.equals(res.cells)


def test_p_mito_from_obs_and_skipped_with_a_note():
    adata, _ = _screen(with_p_mito=False)
    res = cellwise_qc(adata, moi="high")
    assert (
        not res.summary.loc["p_mito", "applied"] and "skipped" in res.summary.loc["p_mito", "note"]
    )
    assert res.cells["p_mito"].sum() == 0
    adata.obs["response_p_mito"] = np.where(np.arange(adata.n_obs) < 10, 0.3, 0.1)
    res = cellwise_qc(adata, moi="high", p_mito_threshold=0.25)
    assert res.cells["p_mito"].sum() == 10 and res.summary.loc["p_mito", "note"].startswith(
        "adata.obs"
    )


def test_counts_computed_from_x_when_columns_are_missing():
    adata, _ = _screen()
    ref = cellwise_qc(adata, moi="high", key_added=None)
    adata.obsm["covar"] = adata.obsm["covar"][["batch", "response_p_mito"]]
    res = cellwise_qc(adata, moi="high", key_added=None)
    assert res.cells.equals(ref.cells)
    assert "computed from adata.X" in res.summary.loc["response_n_umis", "note"]


def test_ranges_and_user_cells_forms():
    adata, _ = _screen()
    none = cellwise_qc(
        adata,
        moi="high",
        response_n_umis_range=(0, 1),
        response_n_nonzero_range=(0, 1),
        p_mito_threshold=1.0,
        key_added=None,
    )
    assert none.n_pass == adata.n_obs
    by_pos = cellwise_qc(adata, moi="high", additional_cells_to_remove=[0, 3], key_added=None)
    mask = np.zeros(adata.n_obs, dtype=bool)
    mask[[0, 3]] = True
    by_mask = cellwise_qc(adata, moi="high", additional_cells_to_remove=mask, key_added=None)
    by_name = cellwise_qc(
        adata, moi="high", additional_cells_to_remove=["cell_1", "cell_4"], key_added=None
    )
    for res in (by_pos, by_mask, by_name):
        np.testing.assert_array_equal(res.cells["user_specified"], mask)


def test_after_maximum_assignment_low_moi_removes_unassigned_and_ambiguous():
    counts = np.array([[9, 0], [5, 5], [0, 0], [2, 1], [0, 12], [12, 1]])
    adata = ad.AnnData(np.ones((6, 3), dtype=np.float32))
    adata.obsm["grna_counts"] = sp.csr_matrix(counts)
    adata.uns["grna_ids"] = np.array(["g1", "g2"])
    adata.uns["grna_target"] = np.array(["A", "non-targeting"])
    assign_guides(adata, method="maximum")
    res = cellwise_qc(
        adata, moi="low", response_n_umis_range=(0, 1), response_n_nonzero_range=(0, 1)
    )
    status = adata.obs["guide_assignment_status"].astype(str).to_numpy()
    np.testing.assert_array_equal(res.mask, status == "assigned")
    assert res.mask.tolist() == [True, False, False, False, True, True]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "needs moi='high' or moi='low'"),
        ({"moi": "medium"}, "moi must be one of"),
        ({"moi": "low", "response_n_umis_range": (0.5, 0.1)}, "response_n_umis_range must be"),
        ({"moi": "low", "response_n_nonzero_range": 0.1}, "response_n_nonzero_range must be"),
        ({"moi": "low", "p_mito_threshold": 20}, "p_mito_threshold must be a fraction"),
        ({"moi": "low", "remove_cells_w_zero_or_twoplus_grnas": "yes"}, "must be True, False"),
        ({"moi": "low", "additional_cells_to_remove": ["nope"]}, "not in adata.obs_names"),
        ({"moi": "low", "additional_cells_to_remove": [5000]}, "outside 0..999"),
        ({"moi": "low", "additional_cells_to_remove": np.ones(3, bool)}, "one value per cell"),
        ({"moi": "low", "guide_key": "other"}, r"adata.obsm\['other'\] not found.*assign_guides"),
    ],
)
def test_bad_inputs_name_the_argument(kwargs, match):
    adata, _ = _screen(n=1000)
    with pytest.raises(ValueError, match=match):
        cellwise_qc(adata, **kwargs)


def test_percent_mito_nan_and_all_removed_are_errors():
    adata, _ = _screen()
    adata.obsm["covar"]["response_p_mito"] *= 100
    with pytest.raises(ValueError, match="divide percentages by 100"):
        cellwise_qc(adata, moi="high")
    adata.obsm["covar"]["response_p_mito"] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cellwise_qc(adata, moi="high")
    adata, _ = _screen()
    with pytest.raises(ValueError, match="removes all 1000 cells"):
        cellwise_qc(adata, moi="high", additional_cells_to_remove=np.ones(1000, dtype=bool))


@pytest.mark.realdata
def test_papalexi_low_moi_qc(real_screen):
    adata = real_screen("papalexi2021_lowmoi")
    assign_guides(adata, method="maximum")
    res = cellwise_qc(adata, moi="low")
    s = res.summary["n_removed"]
    status = adata.obs["guide_assignment_status"].astype(str).to_numpy()
    # the maximum rule leaves 4,537 cells without a guide (issue #13): low-MOI QC removes them
    assert s["zero_grnas"] == int(np.sum(status != "assigned")) > 4000
    assert s["twoplus_grnas"] == 0
    assert res.summary.loc["p_mito", "applied"] and s["p_mito"] > 0  # from adata.obs
    n = adata.n_obs
    for rule in ("response_n_umis", "response_n_nonzero"):
        assert 0.005 * n < s[rule] <= 0.021 * n
    assert 0.6 * n < res.n_pass < 0.8 * n
