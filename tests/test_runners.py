"""Runners on AnnData: one row per pair, QC, reproducibility across n_jobs/order/dask, resume."""

import os

import numpy as np
import pandas as pd
import pytest

from sklcrt import execution
from sklcrt.crt import CRTTest
from sklcrt.datasets import simulate_screen
from sklcrt.inputs import prepare_crt_inputs
from sklcrt.runners import (
    calibration_summary,
    discovery_analysis,
    power_check,
    run_gene_loop,
    run_ntc_ensemble,
    run_ntc_groups,
    run_unit,
)

STRAT = dict(
    resampling_method="stratified_perm",
    resampling_kwargs=dict(
        n_bins=5,
        stratify_by_batch=True,
        batch_key="batch",
        burden_key="log1p_non_ntc_guides_per_cell",
        n_burden_bins=4,
    ),
    n_resamples=99,
    n_resamples_adaptive=0,
    progress=False,
)


def _pairs(adata, key):
    table = adata.uns[key]
    return table[table["response_kind"] == "gene"].reset_index(drop=True)


@pytest.fixture(scope="module")
def adata():
    return simulate_screen(n_cells=3000, n_genes=30, n_targets=6, n_ntc_guides=8, random_state=1)


@pytest.fixture(scope="module")
def inputs(adata):
    return prepare_crt_inputs(adata, response="counts")


def test_every_requested_pair_gets_a_row(adata, inputs):
    pairs = _pairs(adata, "discovery_pairs")
    res = run_gene_loop(inputs, pairs=pairs, **STRAT)
    assert len(res) == len(pairs.drop_duplicates())
    got = set(zip(res["grna_target"], res["response"], strict=True))
    assert got == set(zip(pairs["grna_target"], pairs["response_id"], strict=True))
    tested = res["pass_qc"]
    assert res.loc[tested, "pvalue"].between(0, 1).all()
    assert res.loc[~tested, "pvalue"].isna().all()
    assert (res.loc[~tested, "qc_reason"] != "").all()
    for col in (
        "unit",
        "response",
        "n_treated",
        "statistic",
        "effect",
        "effect_se",
        "pvalue",
        "pvalue_method",
        "n_resamples",
        "n_strata",
        "pass_qc",
        "p_adj",
        "significant",
    ):
        assert col in res.columns


def test_qc_keeps_failing_pairs(inputs):
    res = run_gene_loop(inputs, targets=list(inputs["units"])[:2], min_nonzero=10**6, **STRAT)
    assert len(res) == 2 * len(inputs["response_names"])
    assert (~res["pass_qc"]).all()
    assert res["qc_reason"].str.contains("nonzero").all()


def test_reproducible_across_n_jobs_and_order(adata, inputs):
    pairs = _pairs(adata, "discovery_pairs")
    a = run_gene_loop(inputs, pairs=pairs, n_jobs=1, random_state=7, **STRAT)
    b = run_gene_loop(inputs, pairs=pairs.iloc[::-1], n_jobs=2, random_state=7, **STRAT)
    key = ["grna_target", "response"]
    a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(
        a.drop(columns=["p_adj", "significant"]), b.drop(columns=["p_adj", "significant"])
    )
    c = run_gene_loop(inputs, pairs=pairs, n_jobs=1, random_state=8, **STRAT)
    assert not np.array_equal(a["pvalue"].to_numpy(), c.sort_values(key)["pvalue"].to_numpy())


@pytest.mark.slow
def test_dask_backend_gives_identical_results(inputs):
    distributed = pytest.importorskip("distributed")
    from joblib import parallel_config

    targets = list(inputs["units"])[:3]
    local = run_gene_loop(inputs, targets=targets, n_jobs=1, random_state=3, **STRAT)
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster),
    ):
        with parallel_config(backend="dask"):
            remote = run_gene_loop(inputs, targets=targets, n_jobs=2, random_state=3, **STRAT)
    pd.testing.assert_frame_equal(local, remote)


def test_checkpoint_resume_after_interruption(inputs, tmp_path, monkeypatch):
    targets = list(inputs["units"])[:4]
    full = run_gene_loop(inputs, targets=targets, random_state=5, **STRAT)

    calls = {"n": 0}
    original = execution._test_unit

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return original(*args, **kwargs)

    ckpt = tmp_path / "ckpt"
    monkeypatch.setattr(execution, "_test_unit", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_gene_loop(inputs, targets=targets, random_state=5, checkpoint_dir=str(ckpt), **STRAT)
    written = [f for f in os.listdir(ckpt) if f.startswith("unit_")]
    assert len(written) == 2

    monkeypatch.setattr(execution, "_test_unit", original)
    seen = {"n": 0}

    def counting(*args, **kwargs):
        seen["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(execution, "_test_unit", counting)
    resumed = run_gene_loop(
        inputs, targets=targets, random_state=5, checkpoint_dir=str(ckpt), **STRAT
    )
    assert seen["n"] == 2  # only the two unfinished units were computed
    pd.testing.assert_frame_equal(full, resumed)
    with pytest.raises(ValueError, match="other arguments"):
        run_gene_loop(inputs, targets=targets, random_state=6, checkpoint_dir=str(ckpt), **STRAT)


def test_burden_key_errors(inputs):
    bad = dict(STRAT, resampling_kwargs=dict(STRAT["resampling_kwargs"], burden_key="nope"))
    with pytest.raises(ValueError, match="nope.*numeric columns"):
        run_gene_loop(inputs, targets=list(inputs["units"])[:1], **bad)
    bad = dict(STRAT, resampling_kwargs=dict(STRAT["resampling_kwargs"], burden_key="batch"))
    with pytest.raises(ValueError, match="numeric"):
        run_gene_loop(inputs, targets=list(inputs["units"])[:1], **bad)
    bad = dict(STRAT, resampling_kwargs=dict(STRAT["resampling_kwargs"], n_burdn_bins=3))
    with pytest.raises(ValueError, match="n_burdn_bins"):
        run_gene_loop(inputs, targets=list(inputs["units"])[:1], **bad)


def test_burden_read_raw_not_encoded(inputs, monkeypatch):
    seen = {}
    original = execution._test_unit

    def spy(template, inputs_, statistic, unit, target, guides, columns, batch, burden, *rest):
        seen["burden"] = burden
        seen["template"] = template
        return original(
            template, inputs_, statistic, unit, target, guides, columns, batch, burden, *rest
        )

    monkeypatch.setattr(execution, "_test_unit", spy)
    run_unit(inputs, list(inputs["units"])[0], **STRAT)
    raw = inputs["covar_df_raw"]["log1p_non_ntc_guides_per_cell"].to_numpy(dtype=float)
    np.testing.assert_array_equal(seen["burden"], raw)
    # resampling options reach the estimator unchanged
    assert seen["template"].resampling_method == "stratified_perm"
    assert seen["template"].resampling_kwargs == STRAT["resampling_kwargs"]


def test_ntc_groups_and_summary(inputs):
    res = run_ntc_groups(inputs, **STRAT)
    n_groups = len(inputs["ntc_guides"]) // 2
    assert res["unit"].nunique() == n_groups
    assert len(res) == n_groups * len(inputs["response_names"])
    summary = calibration_summary(res)
    for key in (
        "n_pairs",
        "frac_below_0.01",
        "frac_below_0.05",
        "quantile_0.01",
        "n_bh_discoveries",
        "ks_distance",
        "mean_effect",
    ):
        assert key in summary
    sub = run_ntc_groups(inputs, n_pairs=25, **STRAT)
    assert len(sub) == 25
    ens = run_ntc_ensemble(inputs, n_ensemble=2, n_pairs=10, **STRAT)
    assert sorted(ens["ensemble"].unique()) == [0, 1]
    assert len(ens) == 20


def test_calibration_summary_adjusts_within_ensemble_groupings():
    # Grouping 0 has one small p-value among 4 (BH: 0.001 * 4 <= 0.1); pooled with grouping 1's
    # 100 large p-values it is no discovery (0.001 * 104 > 0.1).
    p = np.r_[0.001, 0.5, 0.6, 0.7, np.full(100, 0.9)]
    res = pd.DataFrame({"pvalue": p, "effect": 0.0, "ensemble": np.r_[[0] * 4, [1] * 100]})
    assert calibration_summary(res)["n_bh_discoveries"] == 1
    assert calibration_summary(res.drop(columns="ensemble"))["n_bh_discoveries"] == 0
    res.loc[1, "pvalue"] = np.nan  # untested pairs are left out within their grouping too
    assert calibration_summary(res)["n_bh_discoveries"] == 1
    assert calibration_summary(res)["n_pairs"] == 103


def test_discovery_and_per_guide(adata, inputs):
    pos = _pairs(adata, "positive_control_pairs")
    res = discovery_analysis(inputs, pos, alpha=0.1, **STRAT)
    assert res["significant"].dtype == bool
    per_guide = run_gene_loop(inputs, pairs=pos, per_guide=True, **STRAT)
    n_guides = sum(len(inputs["units"][t]) for t in pos["grna_target"])
    assert len(per_guide) == n_guides


def test_results_stored_with_the_data_round_trip_h5ad_and_h5mu(tmp_path):
    """Every analysis is stored under its default key with its parameters, pairs that failed QC
    included, and the object saves to h5ad and h5mu and reads back equal."""
    import anndata as ad

    from sklcrt.io import load_results

    adata = simulate_screen(n_cells=1500, n_genes=15, n_targets=4, n_ntc_guides=6, random_state=4)
    adata.var["gene_name"] = [f"SYM{i}" for i in range(adata.n_vars)]
    X = adata.X.tolil()
    X[:, 0] = 0  # gene_000 is never expressed: its pairs fail QC
    adata.X = X.tocsr()
    pairs = _pairs(adata, "discovery_pairs")
    options = dict(STRAT, response="counts")
    ntc = run_ntc_groups(adata, n_pairs=20, **options)
    power = power_check(adata, _pairs(adata, "positive_control_pairs"), **options)
    disc = discovery_analysis(adata, pairs, **options)
    assert not disc["pass_qc"].all(), "the test needs pairs that fail QC"
    assert (
        disc["response_name"] == "SYM" + disc["response"].str[-3:].astype(int).astype(str)
    ).all()
    keys = {"sklcrt_calibration": ntc, "sklcrt_power": power, "sklcrt_discovery": disc}
    for key, table in keys.items():
        stored, params = load_results(adata, key)
        pd.testing.assert_frame_equal(stored, table)
        assert params["test"]["resampling_method"] == "stratified_perm"
        assert params["min_nonzero"] == 7 and params["random_state"] == 0
    adata.write_h5ad(tmp_path / "screen.h5ad")
    back = ad.read_h5ad(tmp_path / "screen.h5ad")
    mudata = pytest.importorskip("mudata")
    mdata = mudata.MuData({"rna": adata.copy()})
    mdata.uns.update(adata.uns)
    mdata.write(tmp_path / "screen.h5mu")
    back_mu = mudata.read_h5mu(tmp_path / "screen.h5mu")
    for key, table in keys.items():
        for container in (back, back_mu):
            stored, params = load_results(container, key)
            pd.testing.assert_frame_equal(stored, table, check_dtype=False, check_index_type=False)
    res = run_unit(inputs_of(adata), "gene_000", key_added="x", **STRAT)  # a dict: nothing stored
    assert "x" not in adata.uns and len(res)


def inputs_of(adata):
    return prepare_crt_inputs(adata, response="counts")


def test_unknown_pairs_error(inputs):
    with pytest.raises(ValueError, match="unknown targets"):
        run_gene_loop(
            inputs, pairs=pd.DataFrame({"response_id": ["x"], "grna_target": ["y"]}), **STRAT
        )


# ---------------------------------------------------------------------- control_group="nt_cells"
@pytest.fixture(scope="module")
def low_moi_inputs():
    adata = simulate_screen(
        n_cells=3000, n_genes=30, n_targets=6, n_ntc_guides=8, moi=1.0, random_state=2
    )
    return prepare_crt_inputs(adata, response="counts")


def _ntc_only_by_hand(inputs):
    guides = inputs["guides"].toarray() != 0
    is_ntc = np.isin(inputs["guide_names"], inputs["ntc_guides"])
    return guides.any(axis=1) & ~guides[:, ~is_ntc].any(axis=1)


def test_nt_cells_reproducible_across_n_jobs(low_moi_inputs):
    targets = list(low_moi_inputs["units"])[:4]
    a = run_gene_loop(
        low_moi_inputs, targets=targets, control_group="nt_cells", n_jobs=1, random_state=3,
        **STRAT,
    )  # fmt: skip
    b = run_gene_loop(
        low_moi_inputs, targets=targets[::-1], control_group="nt_cells", n_jobs=2,
        random_state=3, **STRAT,
    )  # fmt: skip
    key = ["grna_target", "response"]
    pd.testing.assert_frame_equal(
        a.sort_values(key).reset_index(drop=True).drop(columns=["p_adj", "significant"]),
        b.sort_values(key).reset_index(drop=True).drop(columns=["p_adj", "significant"]),
    )
    assert a["pass_qc"].any()
    complement = run_gene_loop(low_moi_inputs, targets=targets, random_state=3, **STRAT)
    tested = a["pass_qc"] & complement["pass_qc"]
    assert tested.sum() > 10
    # same null model and observed statistic, another reference distribution
    np.testing.assert_array_equal(a.loc[tested, "statistic"], complement.loc[tested, "statistic"])
    assert not np.array_equal(a.loc[tested, "pvalue"], complement.loc[tested, "pvalue"])


def test_nt_cells_controls_are_ntc_only_cells(low_moi_inputs, monkeypatch):
    inputs = low_moi_inputs
    ntc_only = _ntc_only_by_hand(inputs)
    assert 0 < ntc_only.sum() < ntc_only.size
    seen = []
    original = CRTTest.fit

    def spy(self, X, y, **kwargs):
        seen.append((np.asarray(y, dtype=bool), kwargs["eligible"]))
        return original(self, X, y, **kwargs)

    monkeypatch.setattr(CRTTest, "fit", spy)
    target = list(inputs["units"])[0]
    res = run_unit(
        inputs, target, control_group="nt_cells", resampling_method="perm", n_resamples=49,
        n_resamples_adaptive=0, progress=False,
    )  # fmt: skip
    ntc = run_ntc_groups(
        inputs, control_group="nt_cells", resampling_method="perm", n_resamples=49,
        n_resamples_adaptive=0, progress=False,
    )  # fmt: skip
    assert len(seen) == 1 + ntc["unit"].nunique()
    for x, eligible in seen:
        np.testing.assert_array_equal(eligible, x | ntc_only)
    # an NTC group's controls are the other NTC-only cells
    x_group, eligible_group = seen[1]
    assert np.all(ntc_only[eligible_group & ~x_group])
    # QC counts the control cells among the eligible controls only
    x = seen[0][0]
    controls = ntc_only & ~x
    Y = inputs["Y"]
    names = list(inputs["response_names"])
    for _, row in res.head(5).iterrows():
        col = np.asarray(Y[:, names.index(row["response"])].todense()).ravel() != 0
        assert row["n_nonzero_control"] == int(np.sum(col & controls))
        assert row["n_nonzero_treated"] == int(np.sum(col & x))


def test_control_group_errors(low_moi_inputs, tmp_path):
    targets = list(low_moi_inputs["units"])[:1]
    with pytest.raises(ValueError, match=r"control_group must be one of \['complement', 'nt_c"):
        run_gene_loop(low_moi_inputs, targets=targets, control_group="ntc", **STRAT)
    with pytest.raises(ValueError, match="control_group must be one of"):
        run_ntc_ensemble(low_moi_inputs, n_ensemble=2, control_group="all", **STRAT)
    no_ntc = dict(low_moi_inputs, ntc_guides=[])
    with pytest.raises(ValueError, match="control_group='nt_cells' needs cells that carry only"):
        run_gene_loop(no_ntc, targets=targets, control_group="nt_cells", **STRAT)
    # resuming a checkpoint with another control group is refused
    ckpt = str(tmp_path / "ckpt")
    run_gene_loop(low_moi_inputs, targets=targets, checkpoint_dir=ckpt, **STRAT)
    with pytest.raises(ValueError, match="other arguments"):
        run_gene_loop(
            low_moi_inputs, targets=targets, checkpoint_dir=ckpt, control_group="nt_cells",
            **STRAT,
        )  # fmt: skip


def test_object_template_gets_the_burden_the_string_api_gets(inputs):
    """The issue's reproduction: a stratified template with burden bins reads the burden column
    (the encoder's burden_key) and gives the string API's strata and p-values exactly."""
    from sklcrt import StratifiedPermutationSampler, StratumEncoder

    kwargs = dict(n_bins=5, n_burden_bins=4, burden_key="log1p_non_ntc_guides_per_cell")
    template = CRTTest(
        sampler=StratifiedPermutationSampler(),
        encoder=StratumEncoder(**kwargs),
        n_resamples=99,
        n_resamples_adaptive=0,
    )
    common = dict(n_pairs=40, progress=False, random_state=2)
    by_template = run_ntc_groups(inputs, test=template, **common)
    by_string = run_ntc_groups(
        inputs,
        resampling_method="stratified_perm",
        resampling_kwargs=kwargs,
        n_resamples=99,
        n_resamples_adaptive=0,
        **common,
    )
    pd.testing.assert_frame_equal(by_template, by_string, check_exact=True)
    no_burden = run_ntc_groups(inputs, test=template.set_params(encoder__burden_key=None), **common)
    assert by_template["n_strata"].min() > no_burden["n_strata"].max()
    missing = CRTTest(sampler=StratifiedPermutationSampler(), encoder=StratumEncoder())
    inputs_without = dict(
        inputs, covar_df_raw=inputs["covar_df_raw"].drop(columns=["log1p_non_ntc_guides_per_cell"])
    )
    with pytest.raises(ValueError, match="burden_key=None to turn burden bins off"):
        run_ntc_groups(inputs_without, test=missing, **common)


def test_unknown_option_names_the_closest_valid_one(inputs):
    with pytest.raises(TypeError, match="did you mean 'n_resamples'"):
        run_gene_loop(inputs, n_resample=99)


def test_low_moi_defaults_and_warning():
    adata = simulate_screen(
        n_cells=1500, n_genes=10, n_targets=4, n_ntc_guides=6, moi=0.6, random_state=3
    )
    inputs = prepare_crt_inputs(adata, response="counts")
    guides = inputs["guides"].tocsr()
    keep = np.diff(guides.indptr) == 1  # a low-MOI screen: one guide per cell
    low = prepare_crt_inputs(adata[keep].copy(), response="counts")
    options = dict(n_pairs=10, n_resamples=19, n_resamples_adaptive=0, progress=False)
    with pytest.warns(UserWarning, match="moi='low'"):
        run_ntc_groups(low, **options)
    res = run_ntc_groups(low, moi="low", **options)
    stored = res[res["pass_qc"]]
    assert len(stored) and (stored["n_strata"] == 1).all()  # permutations
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_ntc_groups(low, moi="high", **options)


def test_calibration_pairs_drawn_among_pairs_that_pass_qc(inputs):
    """SCEPTRE's calibration check: every drawn NTC pair passes the pairwise QC."""
    options = dict(n_resamples=19, n_resamples_adaptive=0, progress=False, min_nonzero=1100)
    plain = run_ntc_groups(inputs, n_pairs=40, **options)
    assert not plain["pass_qc"].all(), "the test needs pairs that fail QC"
    matched = run_ntc_groups(inputs, n_pairs=40, pairs_pass_qc=True, **options)
    assert len(matched) == 40 and matched["pass_qc"].all()
    with pytest.raises(ValueError, match="pass the pairwise QC"):
        run_ntc_groups(inputs, n_pairs=10**6, pairs_pass_qc=True, **options)


@pytest.mark.parametrize("min_nonzero", [0, 1])
def test_untestable_pairs_get_a_truthful_row_whatever_the_threshold(min_nonzero):
    """An all-zero gene or one expressed in a single cell is untestable: pass_qc=False with a
    reason, never a NaN p-value that passed QC or an absurd log2 fold change."""
    adata = simulate_screen(n_cells=800, n_genes=6, n_targets=2, n_ntc_guides=4, random_state=2)
    X = adata.X.tolil()
    X[:, 0] = 0  # never expressed
    X[:, 1] = 0
    X[0, 1] = 5  # expressed in one cell
    adata.X = X.tocsr()
    inputs = prepare_crt_inputs(adata, response="counts")
    res = run_gene_loop(
        inputs, min_nonzero=min_nonzero, n_resamples=19, n_resamples_adaptive=0, progress=False
    )
    for gene in ("gene_000", "gene_001"):
        rows = res[res["response"] == gene]
        assert not rows["pass_qc"].any() and (rows["qc_reason"] != "").all()
        assert rows["pvalue"].isna().all() and rows["effect"].isna().all()
    tested = res[res["pass_qc"]]
    assert len(tested) and tested["pvalue"].between(0, 1).all()
    assert (tested["effect"].abs() < 10).all()


def test_pairwise_qc_matches_the_runners_qc(adata, inputs):
    from sklcrt.runners import pairwise_qc

    pairs = _pairs(adata, "discovery_pairs")
    options = dict(min_nonzero=1100)
    qc = pairwise_qc(inputs, pairs, **options)
    res = run_gene_loop(inputs, pairs=pairs, **options, **STRAT)
    key = ["grna_target", "response"]
    merged = qc.merge(res, on=key, suffixes=("", "_run"))
    assert len(merged) == len(pairs) and 0 < qc["pass_qc"].sum() < len(qc)
    assert (merged["pass_qc"] == merged["pass_qc_run"]).all()
    assert (merged["n_nonzero_treated"] == merged["n_nonzero_treated_run"]).all()


@pytest.mark.parametrize("alpha", [0, 1.5, True])
def test_bad_alpha_is_an_error_before_any_work(inputs, alpha):
    with pytest.raises(ValueError, match="alpha must be a number in"):
        run_gene_loop(inputs, alpha=alpha, **STRAT)
