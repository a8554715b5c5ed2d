"""The ``sklcrt`` command line: demo, config runs, config errors and help."""

import copy
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sklcrt import cli
from sklcrt import config as cli_config
from sklcrt.cli import CONFIG_SCHEMA, DEMO_CONFIG, load_config, main, validate_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
GASPERINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "gasperini2019_highmoi.h5ad"

# A small simulated screen keeps each run to a few seconds.
SMALL_SCREEN = dict(n_cells=800, n_genes=20, n_targets=4, n_ntc_guides=6, response="counts")
FAST = dict(n_resamples=49, n_resamples_adaptive=0)


@pytest.fixture(scope="module")
def screen_path(tmp_path_factory):
    """A simulated screen saved to .h5ad, without the stored assignment (made from counts)."""
    from sklcrt.datasets import simulate_screen

    adata = simulate_screen(**SMALL_SCREEN, random_state=3)
    for key in ("guide_assignment",):
        del adata.obsm[key]
    # what assign_guides reads by default, as in the real screens
    adata.uns["grna_ids"] = list(adata.uns.pop("guide_names"))
    guide2gene = adata.uns.pop("guide2gene")
    adata.uns["grna_target"] = [guide2gene[g] for g in adata.uns["grna_ids"]]
    path = tmp_path_factory.mktemp("screen") / "screen.h5ad"
    adata.write_h5ad(path)
    return path


def _write_config(folder: Path, text: str, name: str = "config.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


BASE_CONFIG = """
input = "screen.h5ad"
output_dir = "out"
response = "counts"
covariates = ["batch", "log1p_response_n_umis"]
resampling_method = "stratified_perm"
n_resamples = 49
n_resamples_adaptive = 0
random_state = 1

[assignment]
counts_key = "grna_counts"
method = "threshold"
threshold = 5

[resampling_kwargs]
n_bins = 4
burden_key = "log1p_non_ntc_guides_per_cell"
n_burden_bins = 3

[calibration]
compare_without_burden = true
"""


@pytest.fixture
def config_dir(tmp_path, screen_path):
    shutil.copy(screen_path, tmp_path / "screen.h5ad")
    (tmp_path / "bad_pairs.csv").write_text("response_id,grna_target\ngene_000,NOPE\n")
    (tmp_path / "empty.csv").write_text("")
    return tmp_path


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------- demo
@pytest.fixture
def small_demo(monkeypatch):
    """The demo's code path on a smaller simulated screen."""
    config = copy.deepcopy(DEMO_CONFIG)
    config["simulate"].update(n_cells=1500, n_genes=25, n_targets=6, n_ntc_guides=8)
    config.update(FAST)
    monkeypatch.setattr(cli, "DEMO_CONFIG", config)


def test_demo_writes_tables_plot_and_summary(tmp_path, capsys, small_demo):
    out = tmp_path / "demo"
    code, stdout, err = _run(["demo", "--out", str(out), "--quiet", "--seed", "2"], capsys)
    assert code == 0, err
    for name in (
        "calibration.csv",
        "power.csv",
        "discovery.csv",
        "calibration.png",
        "summary.json",
        "summary.txt",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["calibration"]) == {"stratified_perm", "stratified_perm + burden bins"}
    assert summary["config"]["random_state"] == 2
    assert summary["config"]["simulate"]["random_state"] == 2
    assert [row["method"] for row in summary["table"]] == list(summary["calibration"])
    calib = pd.read_csv(out / "calibration.csv")
    assert (calib["grna_target"] == "non-targeting").all()
    assert set(calib["method"]) == set(summary["calibration"])
    with_burden = calib[calib["method"] == "stratified_perm + burden bins"]
    assert (
        len(with_burden) == summary["calibration"]["stratified_perm + burden bins"]["n_requested"]
    )
    for figure in ("assignment.png", "calibration.png", "power.png", "volcano.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
    assert {"numpy", "scikit-learn", "anndata"} <= set(summary["versions"])
    discovery = pd.read_csv(out / "discovery.csv")
    assert {"pvalue", "p_adj", "significant", "effect"} <= set(discovery.columns)
    # the printed table, and nothing else with --quiet
    assert "frac p<0.01" in stdout and "stratified_perm + burden bins" in stdout
    assert "[sklcrt]" not in stdout


def test_demo_rerun_replaces_its_folder_and_refuses_another_runs(tmp_path, capsys, small_demo):
    out = tmp_path / "demo"
    assert _run(["demo", "--out", str(out), "--quiet"], capsys)[0] == 0
    (out / "stale.csv").write_text("x\n1\n")
    assert _run(["demo", "--out", str(out), "--quiet"], capsys)[0] == 0  # same run: replaced
    assert not (out / "stale.csv").exists()
    code, _, err = _run(["demo", "--out", str(out), "--quiet", "--seed", "5"], capsys)
    assert code == 2 and "another run" in err and "--overwrite" in err
    assert json.loads((out / "summary.json").read_text())["config"]["random_state"] == 0
    code, _, err = _run(
        ["demo", "--out", str(out), "--quiet", "--seed", "5", "--overwrite"], capsys
    )
    assert code == 0, err


@pytest.mark.slow
def test_full_demo_is_calibrated_with_burden_bins(tmp_path, capsys):
    """The real demo: burden bins fix the NTC calibration the plain strata miss."""
    code, stdout, err = _run(["demo", "--out", str(tmp_path), "--quiet"], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "summary.json").read_text())
    plain = summary["calibration"]["stratified_perm"]
    burden = summary["calibration"]["stratified_perm + burden bins"]
    # 1000 NTC pairs: binomial sd of the fraction below 0.01 is about 0.003
    assert burden["frac_below_0.01"] < 0.025
    assert plain["frac_below_0.01"] > 0.05
    assert summary["power"]["n_significant"] >= summary["power"]["n_pairs"] - 1


def test_demo_config_file_is_the_demo():
    from_file = load_config(EXAMPLES / "config_demo.toml")
    built_in = validate_config(copy.deepcopy(DEMO_CONFIG), base_dir=EXAMPLES)
    assert from_file == built_in


# ---------------------------------------------------------------------------- run / calibrate
def test_run_from_config(config_dir, capsys):
    cfg = _write_config(config_dir, BASE_CONFIG)
    code, stdout, err = _run(["run", str(cfg), "--quiet"], capsys)
    assert code == 0, err
    out = config_dir / "out"  # output_dir resolves against the config's folder
    for name in (
        "calibration.csv",
        "power.csv",
        "discovery.csv",
        "summary.json",
        "summary.txt",
        "calibration.png",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["command"] == "run"
    assert summary["screen"]["n_cells"] == SMALL_SCREEN["n_cells"]
    assert summary["screen"]["n_targets"] == SMALL_SCREEN["n_targets"]
    # guides were assigned from the counts and burden columns added
    assert summary["screen"]["n_ntc_guides"] == SMALL_SCREEN["n_ntc_guides"]
    power = pd.read_csv(out / "power.csv")
    assert len(power) == summary["power"]["n_pairs"] > 0
    discovery = pd.read_csv(out / "discovery.csv")
    assert set(discovery["n_resamples"][discovery["pass_qc"]]) == {49}
    assert "stratified_perm + burden bins" in stdout


def test_calibrate_runs_only_calibration_and_overrides(config_dir, capsys, tmp_path):
    cfg = _write_config(config_dir, BASE_CONFIG.replace("compare_without_burden = true", ""))
    out = tmp_path / "elsewhere"
    code, stdout, err = _run(
        ["calibrate", str(cfg), "--quiet", "--out", str(out), "--n-jobs", "2"], capsys
    )
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == [
        "assignment.csv",
        "assignment.png",
        "calibration.csv",
        "calibration.png",
        "summary.json",
        "summary.txt",
    ]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["command"] == "calibrate"
    assert summary["config"]["n_jobs"] == 2
    assert list(summary["calibration"]) == ["stratified_perm + burden bins"]
    assert not (config_dir / "out").exists()


def test_simulated_input_without_files(tmp_path, capsys):
    cfg = _write_config(
        tmp_path,
        """
input = "simulate"
analyses = ["calibration"]
response = "programs"
resampling_method = "perm"
n_resamples = 49
n_resamples_adaptive = 0
[calibration]
n_pairs = 15
[simulate]
n_cells = 400
n_genes = 10
n_targets = 3
n_ntc_guides = 4
""",
    )
    code, stdout, err = _run(["run", str(cfg), "--quiet"], capsys)
    assert code == 0, err
    calib = pd.read_csv(tmp_path / "sklcrt_results" / "calibration.csv")
    assert len(calib) == 15
    assert calib["response"].str.startswith("program_").all()


LOW_MOI_CONFIG = """
input = "simulate"
analyses = ["calibration"]
response = "counts"
covariates = ["batch", "log1p_response_n_umis"]
resampling_method = "perm"
n_resamples = 49
n_resamples_adaptive = 0
control_group = "{control_group}"
[calibration]
n_pairs = 20
[simulate]
n_cells = 600
n_genes = 10
n_targets = 3
n_ntc_guides = 4
moi = 1.0
response = "counts"
"""


def test_control_group_nt_cells(tmp_path, capsys):
    tables = {}
    for group in ("complement", "nt_cells"):
        folder = tmp_path / group
        folder.mkdir()
        cfg = _write_config(folder, LOW_MOI_CONFIG.format(control_group=group))
        code, stdout, err = _run(["run", str(cfg), "--quiet"], capsys)
        assert code == 0, err
        out = folder / "sklcrt_results"
        assert f"control_group={group}" in (out / "summary.txt").read_text()
        assert json.loads((out / "summary.json").read_text())["config"]["control_group"] == group
        tables[group] = pd.read_csv(out / "calibration.csv")
    a, b = tables["complement"], tables["nt_cells"]
    assert len(a) == len(b) == 20
    tested = a["pass_qc"] & b["pass_qc"]
    assert tested.sum() > 5
    # SCEPTRE's low-MOI test with nt_cells: the null model fitted on the NT cells, so other
    # statistics, p-values and QC counts than with the complement's all-cells model
    assert not np.allclose(a.loc[tested, "statistic"], b.loc[tested, "statistic"])
    assert not a.loc[tested, "pvalue"].equals(b.loc[tested, "pvalue"])
    assert (b["n_nonzero_control"] <= a["n_nonzero_control"]).all()


DISCOVERY_ONLY = BASE_CONFIG.replace(
    "random_state = 1", 'random_state = 1\nanalyses = ["discovery"]'
).replace("compare_without_burden = true", "")


def _discovery_run(config_dir, capsys, text, name):
    """Run ``text`` with output in ``config_dir/name``: the discovery table and the summary."""
    cfg = _write_config(config_dir, text.replace('output_dir = "out"', f'output_dir = "{name}"'))
    code, _, err = _run(["run", str(cfg), "--quiet"], capsys)
    assert code == 0, err
    out = config_dir / name
    return (
        pd.read_csv(out / "discovery.csv"),
        json.loads((out / "summary.json").read_text()),
        (out / "summary.txt").read_text(),
    )


def test_statistic_section(config_dir, capsys):
    default, summary, text = _discovery_run(config_dir, capsys, DISCOVERY_ONLY, "default")
    # without the section: the estimated theta, recorded in both summaries
    assert summary["config"]["statistic"] is None
    assert summary["statistic"]["class"] == "NBScoreStatistic"
    assert summary["statistic"]["theta"] is None
    fitted = summary["statistic"]["fitted_theta"]
    assert fitted["min"] < fitted["max"]
    assert "statistic: NBScoreStatistic(theta=None, theta_bounds=(0.01, 1000.0)" in text

    # the section with the library's defaults is the default statistic, bit for bit
    same, _, _ = _discovery_run(
        config_dir,
        capsys,
        DISCOVERY_ONLY
        + '\n[statistic]\ntheta_bounds = [0.01, 1000.0]\neffect_fit = "linearized"\n',
        "same",
    )
    pd.testing.assert_frame_equal(same, default)

    fixed, summary, text = _discovery_run(
        config_dir, capsys, DISCOVERY_ONLY + "\n[statistic]\ntheta = 5.0\n", "fixed"
    )
    assert summary["config"]["statistic"] == {
        "theta": 5.0,
        "theta_bounds": [0.01, 1000.0],
        "effect_fit": "linearized",
    }
    assert summary["statistic"]["theta"] == 5.0
    assert summary["statistic"]["fitted_theta"] == {"min": 5.0, "median": 5.0, "max": 5.0}
    assert "statistic: NBScoreStatistic(theta=5.0, " in text
    assert "fitted theta 5 (min), 5 (median), 5 (max)" in text
    # same pairs and resamples, another null model: other statistics and effects
    assert list(fixed["unit"]) == list(default["unit"])
    tested = fixed["pass_qc"] & default["pass_qc"]
    assert tested.sum() > 5
    assert not fixed.loc[tested, "statistic"].equals(default.loc[tested, "statistic"])
    assert not fixed.loc[tested, "effect"].equals(default.loc[tested, "effect"])

    full, summary, _ = _discovery_run(
        config_dir,
        capsys,
        DISCOVERY_ONLY + '\n[statistic]\ntheta = 5.0\neffect_fit = "full"\n',
        "full",
    )
    assert summary["statistic"]["effect_fit"] == "full"
    # the effect fit changes the effect, not the score statistic
    pd.testing.assert_series_equal(full["statistic"], fixed["statistic"])
    assert not full.loc[tested, "effect"].equals(fixed.loc[tested, "effect"])


def test_per_guide(config_dir, capsys, screen_path):
    import anndata as ad

    uns = ad.read_h5ad(screen_path).uns
    guide2gene = dict(zip(uns["grna_ids"], uns["grna_target"], strict=True))
    union, _, _ = _discovery_run(config_dir, capsys, DISCOVERY_ONLY, "union")
    per_guide, summary, _ = _discovery_run(
        config_dir,
        capsys,
        DISCOVERY_ONLY + "\n[discovery]\nper_guide = true\n",
        "per_guide",
    )
    assert summary["discovery"]["per_guide"] is True
    assert (union["unit"] == union["grna_target"]).all()
    # one row per guide of the pair's target, the unit named by the guide
    assert set(per_guide["unit"]) <= set(guide2gene)
    assert (per_guide["unit"].map(guide2gene) == per_guide["grna_target"]).all()
    n_guides = pd.Series(guide2gene).value_counts()
    assert len(per_guide) == n_guides[union["grna_target"]].sum() > len(union)
    assert not per_guide.duplicated(["unit", "response"]).any()
    pairs = set(zip(per_guide["grna_target"], per_guide["response"], strict=True))
    assert pairs == set(zip(union["grna_target"], union["response"], strict=True))
    # a guide is treated in no more cells than the union of its target's guides
    treated = union.set_index(["grna_target", "response"])["n_treated"]
    keys = list(zip(per_guide["grna_target"], per_guide["response"], strict=True))
    assert (per_guide["n_treated"].to_numpy() <= treated.loc[keys].to_numpy()).all()


def test_progress_messages_unless_quiet(config_dir, capsys):
    cfg = _write_config(config_dir, BASE_CONFIG)
    code, stdout, err = _run(["calibrate", str(cfg)], capsys)
    assert code == 0, err
    assert "[sklcrt] assigning guides from obsm['grna_counts'] (threshold >= 5 UMIs)" in stdout


# ---------------------------------------------------------------------------- config errors
ERRORS = [
    (
        "unknown key",
        BASE_CONFIG.replace("n_resamples = 49", "n_resample = 49"),
        "unknown key 'n_resample' (did you mean 'n_resamples'?)",
    ),
    (
        "unknown section key",
        BASE_CONFIG.replace("n_burden_bins", "n_burden_bin"),
        "[resampling_kwargs]: unknown key 'n_burden_bin' (did you mean 'n_burden_bins'?)",
    ),
    (
        "unknown section",
        BASE_CONFIG + "\n[discovry]\npairs_key = 'x'\n",
        "unknown key 'discovry' (did you mean 'discovery'?)",
    ),
    (
        "wrong type",
        BASE_CONFIG.replace("n_resamples = 49", 'n_resamples = "49"'),
        "'n_resamples' must be an integer, got string '49'",
    ),
    (
        "wrong type in section",
        BASE_CONFIG.replace("n_bins = 4", "n_bins = 4.5"),
        "'n_bins' must be an integer, got float 4.5",
    ),
    (
        "bad choice",
        BASE_CONFIG.replace('"stratified_perm"', '"stratified_prem"'),
        "'resampling_method' has 'stratified_prem' (did you mean 'stratified_perm'?)",
    ),
    (
        "bad control group",
        BASE_CONFIG.replace("random_state = 1", 'random_state = 1\ncontrol_group = "nt-cells"'),
        "'control_group' has 'nt-cells' (did you mean 'nt_cells'?)",
    ),
    (
        "out of range",
        BASE_CONFIG.replace("n_resamples = 49", "n_resamples = 0"),
        "'n_resamples' parameter of CRTTest must be an int in the range [1, inf)",
    ),
    ("missing file", BASE_CONFIG.replace("screen.h5ad", "nope.h5ad"), "input file"),
    ("missing pairs file", BASE_CONFIG + "\n[power]\npairs = 'pairs.csv'\n", "[power]: pairs file"),
    (
        "missing obsm key",
        BASE_CONFIG.replace('"grna_counts"', '"grna_count"'),
        "adata.obsm['grna_count'] not found (did you mean 'grna_counts'?)",
    ),
    (
        "missing covariate column",
        BASE_CONFIG.replace('"log1p_response_n_umis"', '"n_umis"'),
        "covariate column(s) ['n_umis'] not found",
    ),
    (
        "missing uns key",
        BASE_CONFIG + "\n[power]\npairs_key = 'positive_controls'\n",
        "adata.uns['positive_controls'] not found",
    ),
    (
        "missing required key",
        BASE_CONFIG.replace('input = "screen.h5ad"', ""),
        "required key 'input' is missing",
    ),
    ("invalid toml", BASE_CONFIG + "\nn_jobs = \n", "invalid TOML"),
    (
        "unknown statistic key",
        BASE_CONFIG + "\n[statistic]\nthetta = 5.0\n",
        "[statistic]: unknown key 'thetta' (did you mean 'theta'?)",
    ),
    (
        "bad effect_fit",
        BASE_CONFIG + '\n[statistic]\neffect_fit = "ful"\n',
        "[statistic]: 'effect_fit' has 'ful' (did you mean 'full'?); choose from",
    ),
    (
        "theta not positive",
        BASE_CONFIG + "\n[statistic]\ntheta = 0\n",
        "'theta' parameter of NBScoreStatistic must be a float in the range (0.0, inf)",
    ),
    (
        "theta_bounds reversed",
        BASE_CONFIG + "\n[statistic]\ntheta_bounds = [10.0, 1.0]\n",
        "[statistic]: theta_bounds must be (low, high) with 0 < low < high < inf, got (10.0, 1.0)",
    ),
    (
        "theta_bounds infinite",
        BASE_CONFIG + "\n[statistic]\ntheta_bounds = [0.01, inf]\n",
        "[statistic]: theta_bounds must be (low, high) with 0 < low < high < inf, got (0.01, inf)",
    ),
    (
        "theta_bounds not a pair",
        BASE_CONFIG + "\n[statistic]\ntheta_bounds = [1.0]\n",
        "[statistic]: 'theta_bounds' must be an array of two numbers",
    ),
    (
        "statistic with programs",
        BASE_CONFIG.replace('response = "counts"', 'response = "programs"')
        + "\n[statistic]\ntheta = 5.0\n",
        "[statistic]: these options are for the NB score statistic of counts",
    ),
    (
        "per_guide not a boolean",
        BASE_CONFIG + '\n[discovery]\nper_guide = "yes"\n',
        "[discovery]: 'per_guide' must be a boolean (true/false), got string 'yes'",
    ),
    (
        "library check",
        BASE_CONFIG.replace("n_burden_bins = 3", "burden_clip_quantiles = [0.9, 0.1]"),
        "resampling_kwargs['burden_clip_quantiles'] must satisfy 0 <= lo < hi <= 1",
    ),
    (
        "impossible number of resamples",
        BASE_CONFIG.replace("n_resamples = 49", "n_resamples = 1000000000"),
        "n_resamples=1000000000",
    ),
    (
        "pairs naming an unknown target",
        BASE_CONFIG + "\n[discovery]\npairs = 'bad_pairs.csv'\n",
        "names targets ['NOPE']",
    ),
    (
        "empty pairs file",
        BASE_CONFIG + "\n[power]\npairs = 'empty.csv'\n",
        "pairs file",
    ),
    (
        "zero min_nonzero is fine but negative is not",
        BASE_CONFIG.replace("random_state = 1", "random_state = 1\nmin_nonzero = -1"),
        "min_nonzero must be an integer >= 0",
    ),
]


@pytest.mark.parametrize("text, message", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_config_errors_print_one_line_and_exit_2(config_dir, capsys, text, message):
    cfg = _write_config(config_dir, text)
    code, stdout, err = _run(["run", str(cfg), "--quiet"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("sklcrt: error: ")
    assert message in lines[0]
    assert "Traceback" not in err
    assert not (config_dir / "out").exists()  # checked before any analysis wrote anything


def test_missing_config_file(tmp_path, capsys):
    code, _, err = _run(["calibrate", str(tmp_path / "none.toml")], capsys)
    assert code == 2
    assert err.strip().splitlines() == [
        f"sklcrt: error: config file {str(tmp_path / 'none.toml')!r} not found."
    ]


def test_library_errors_are_one_line(config_dir, capsys):
    # 6 NTC guides cannot make groups of 7: the runner's ValueError becomes one line
    cfg = _write_config(
        config_dir, BASE_CONFIG.replace("[calibration]", "[calibration]\ngroup_size = 7")
    )
    code, _, err = _run(["calibrate", str(cfg), "--quiet"], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("sklcrt: error: ") and "group_size=7" in err


def test_usage_errors_exit_2(capsys):
    assert main(["demo", "--n-jobs", "x"]) == 2
    assert main([]) == 2
    assert main(["frobnicate"]) == 2
    capsys.readouterr()


# ---------------------------------------------------------------------------- help and schema
@pytest.mark.parametrize("command", [[], ["demo"], ["run"], ["calibrate"]])
def test_help(command, capsys):
    code, out, _ = _run([*command, "--help"], capsys)
    assert code == 0
    assert "usage: sklcrt" in out
    if command == ["demo"]:
        for flag in ("--out", "--quiet", "--n-jobs", "--seed"):
            assert flag in out
    if command in (["run"], ["calibrate"]):
        for flag in ("--out", "--quiet", "--n-jobs"):
            assert flag in out
        for section, options in CONFIG_SCHEMA.items():
            if section:
                assert f"[{section}]" in out
            for opt in options:
                assert f"  {opt.name} (" in out, (section, opt.name)
        assert "[simulate]" in out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("sklcrt ")


def test_schema_reads_its_defaults_and_choices_from_the_library():
    from sklcrt import _choices
    from sklcrt.crt import CRTTest
    from sklcrt.inputs import prepare_crt_inputs
    from sklcrt.resampling import DEFAULT_RESAMPLING_KWARGS
    from sklcrt.runners import run_gene_loop
    from sklcrt.statistics import NBScoreStatistic

    schema = {o.name: o for o in CONFIG_SCHEMA["resampling_kwargs"]}
    assert set(schema) == set(DEFAULT_RESAMPLING_KWARGS)
    for key, value in DEFAULT_RESAMPLING_KWARGS.items():
        if key != "batch_key":  # defaults to the top-level batch_key, "batch"
            expected = list(value) if isinstance(value, tuple) else value
            assert schema[key].default == expected, key
    nb = NBScoreStatistic().get_params()
    statistic = {o.name: o for o in CONFIG_SCHEMA["statistic"]}
    assert statistic["theta"].default == nb["theta"]
    assert tuple(statistic["theta_bounds"].default) == nb["theta_bounds"]
    assert statistic["effect_fit"].default == nb["effect_fit"]
    constraint = NBScoreStatistic._parameter_constraints["effect_fit"][0]
    assert set(statistic["effect_fit"].choices) == set(constraint.options)
    runner = inspect.signature(run_gene_loop).parameters
    for section in ("power", "discovery"):
        per_guide = {o.name: o.default for o in CONFIG_SCHEMA[section]}["per_guide"]
        assert per_guide is runner["per_guide"].default
    top = {o.name: o for o in CONFIG_SCHEMA[""]}
    crt = CRTTest().get_params()
    for key in cli_config.TEST_KEYS:
        assert top[key].default == crt[key], key
    for key in ("min_nonzero", "control_group", "alpha", "n_jobs"):
        assert top[key].default == runner[key].default, key
    assert set(top["control_group"].choices) == set(_choices.CONTROL_GROUPS)
    assert set(top["pvalue_method"].choices) == set(_choices.PVALUE_METHODS)
    assert set(top["alternative"].choices) == set(_choices.ALTERNATIVES)
    signature = inspect.signature(prepare_crt_inputs).parameters
    for key in (
        "response",
        "layer",
        "usage_key",
        "clr_floor_quantile",
        "covar_key",
        "covariates",
        "batch_key",
        "guide_key",
        "guide_names_key",
        "guide2gene_key",
    ):
        default = signature[key].default
        assert top[key].default == (list(default) if isinstance(default, tuple) else default), key


def test_config_sections_map_onto_the_test():
    """The config's test keys and sections become one CRTTest through set_params."""
    from sklcrt.runners import build_test

    raw = {
        "input": "simulate",
        "resampling_method": "stratified_perm",
        "n_resamples": 99,
        "pvalue_method": "saddlepoint",
        "resampling_kwargs": {"n_bins": 7, "burden_key": "log1p_grna_n_nonzero_assign"},
        "statistic": {"theta": 5.0},
    }
    config = validate_config(raw)
    test = build_test(**cli_config.test_settings(config))
    params = test.get_params()
    assert params["n_resamples"] == 99 and params["pvalue_method"] == "saddlepoint"
    assert params["resampling_kwargs"]["n_bins"] == 7
    assert params["statistic__theta"] == 5.0
    assert test.covariate_columns() == {"batch": "batch", "burden": "log1p_grna_n_nonzero_assign"}
    # keys left out keep CRTTest's own defaults
    assert params["n_resamples_adaptive"] == CRTTest_defaults()["n_resamples_adaptive"]


def CRTTest_defaults():
    from sklcrt.crt import CRTTest

    return CRTTest().get_params(deep=False)


@pytest.mark.skipif(not GASPERINI.is_file(), reason="../shared/data (real screens) not present")
def test_gasperini_example_config_validates():
    config = load_config(EXAMPLES / "config_gasperini.toml")
    assert Path(config["input"]) == GASPERINI.resolve()
    assert config["assignment"]["threshold"] == 5
    assert config["resampling_kwargs"]["burden_key"] == "log1p_non_ntc_guides_per_cell"
    assert Path(config["discovery"]["pairs"]).is_file()


def _console_script():
    found = shutil.which("sklcrt", path=os.path.dirname(sys.executable))
    return found or shutil.which("sklcrt")


@pytest.mark.skipif(_console_script() is None, reason="the sklcrt console script is not installed")
def test_console_script(tmp_path):
    cfg = _write_config(tmp_path, 'input = "simulate"\nn_resamples = "many"\n')
    proc = subprocess.run(
        [_console_script(), "run", str(cfg)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "sklcrt: error: config.toml: 'n_resamples' must be an integer, got string 'many'."
    ]
    proc = subprocess.run(
        [_console_script(), "calibrate", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "[resampling_kwargs]" in proc.stdout
