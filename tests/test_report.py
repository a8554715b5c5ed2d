"""AnalysisReport: the printed summary, summary.json (versions, parameters), the output folder."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from sklcrt.report import AnalysisReport, assignment_summary, dependency_versions  # noqa: E402


@pytest.fixture(scope="module")
def analysis():
    """A simulated screen, assigned from its counts, with its NTC, power and discovery tables."""
    from sklcrt import runners
    from sklcrt.assignment import assign_guides
    from sklcrt.datasets import simulate_screen

    adata = simulate_screen(
        n_cells=1000, n_genes=25, n_targets=6, n_ntc_guides=6, response="counts", random_state=2
    )
    assign_guides(adata, threshold=5)
    opts = dict(n_resamples=199, n_resamples_adaptive=999, progress=False)
    with warnings.catch_warnings():  # the runners' API is being reshaped; not what is tested here
        warnings.simplefilter("ignore", FutureWarning)
        tables = {  # the p-value column is being renamed p_value -> pvalue: test the new name
            "calibration": runners.run_ntc_groups(adata, group_size=1, **opts),
            "power": runners.power_check(adata, adata.uns["positive_control_pairs"], **opts),
            "discovery": runners.discovery_analysis(adata, adata.uns["discovery_pairs"], **opts),
        }
    tables = {k: t.rename(columns={"p_value": "pvalue"}) for k, t in tables.items()}
    umis = adata.obsm["covar"]["response_n_umis"]
    low = float(umis.quantile(0.05))
    qc = pd.DataFrame({"low_n_umis": umis < low}, index=adata.obs_names)
    qc["pass_qc"] = ~qc["low_n_umis"]
    return adata, tables, qc, {"response_n_umis": (low, None)}


def _report(analysis, **kwargs):
    adata, tables, qc, bounds = analysis
    params = {"resampling_method": "bernoulli_index", "n_resamples": 199, "alpha": 0.1}
    return AnalysisReport.from_adata(adata, qc=qc, qc_bounds=bounds, params=params,
                                     **tables, **kwargs)  # fmt: skip


def test_summary_reads_like_print_sceptre_object(analysis):
    adata, tables, qc, _ = analysis
    report = _report(analysis)
    text = str(report)
    assert text == report.summary()
    lines = text.splitlines()
    assert lines[0] == "sklcrt analysis"
    assert lines[1] == (
        f"  screen: {adata.n_obs:,} cells x {adata.n_vars:,} responses; 18 gRNAs on 6 targets "
        "and 6 non-targeting"
    )
    assert lines[2].startswith("  guide assignment (method=threshold, threshold=5.0):")
    n_removed = int(qc["low_n_umis"].sum())
    assert f"({n_removed:,} removed: low_n_umis {n_removed:,})" in text
    ntc = tables["calibration"]
    n = int(ntc["pvalue"].notna().sum())
    k = int((ntc["pvalue"] < 0.01).sum())
    assert f"NTC pairs: {n:,} pairs; p < 0.01: {k / n:.4f} (95% CI 0.0000-" in text or k > 0
    n_pos = len(tables["power"])
    below = int((tables["power"]["pvalue"] < 1e-6).sum())
    assert f"power (positive controls): {n_pos} of {n_pos} tested; {below} with p < 1e-06" in text
    n_sig = int(tables["discovery"]["significant"].sum())
    assert f"{n_sig:,} discoveries at FDR 0.1" in text
    assert "log2 fold change" in text  # the top discoveries are listed


def test_to_dict_numbers(analysis):
    _, tables, qc, _ = analysis
    d = _report(analysis).to_dict()
    ntc = tables["calibration"]
    p = ntc["pvalue"].dropna().to_numpy()
    cal = d["calibration"]["NTC pairs"]
    assert cal["n_tested"] == p.size
    assert cal["frac_below_0.01"] == pytest.approx(np.mean(p < 0.01))
    lo, hi = cal["frac_below_0.01_ci95"]
    assert lo <= cal["frac_below_0.01"] <= hi
    from scipy import stats

    k = int(np.sum(p < 0.01))
    assert hi == pytest.approx(stats.beta.ppf(0.975, k + 1, p.size - k))
    assert d["qc"] == {
        "n_cells": len(qc),
        "n_pass": int(qc["pass_qc"].sum()),
        "n_removed": int((~qc["pass_qc"]).sum()),
        "removed_by_rule": {"low_n_umis": int(qc["low_n_umis"].sum())},
    }
    assert d["power"]["n_significant"] == int(tables["power"]["significant"].sum())
    assert len(d["discovery"]["top"]) == min(5, int(tables["discovery"]["significant"].sum()))
    json.dumps(d)  # JSON-ready


def test_assignment_summary_per_grna():
    counts = np.array([[7, 0, 1], [1, 9, 0], [0, 12, 0], [6, 0, 0]])
    table = assignment_summary(counts, counts >= 5, ["g1", "g2", "g3"], ["MYC", "MYC", "NTC"])
    assert table["n_cells_with_umis"].tolist() == [3, 2, 1]
    assert table["n_cells_assigned"].tolist() == [2, 2, 0]
    assert table["median_umis_assigned"].tolist()[:2] == [6.5, 10.5]
    assert np.isnan(table["median_umis_assigned"].iloc[2])
    assert table["is_ntc"].tolist() == [False, False, True]
    with pytest.raises(ValueError, match="differ"):
        assignment_summary(counts, counts[:, :2], ["g1", "g2"], ["A", "B"])


def test_write_folder_with_tables_figures_and_versions(analysis, tmp_path):
    report = _report(analysis)
    out = report.write(tmp_path / "out")
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [
            "assignment.csv", "qc.csv", "calibration.csv", "power.csv", "discovery.csv",
            "assignment.png", "qc.png", "calibration.png", "power.png", "volcano.png",
            "summary.txt", "summary.json",
        ]
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generator"] == "sklcrt"
    for package in ("sklcrt", "numpy", "scipy", "pandas", "scikit-learn", "anndata",
                    "matplotlib", "joblib"):  # fmt: skip
        assert summary["versions"][package], package
    assert summary["params"]["n_resamples"] == 199
    assert summary["params"]["assignment"]["threshold"] == 5.0
    assert summary["summary"]["calibration"]["NTC pairs"]["n_tested"] > 0
    assert sorted(summary["files"]) == names
    assert (out / "summary.txt").read_text().strip() == report.summary()
    back = pd.read_csv(out / "discovery.csv")
    assert len(back) == len(report.discovery)
    assert pd.read_csv(out / "qc.csv", index_col=0).index.tolist() == report.qc.index.tolist()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


def test_write_replaces_own_output_and_refuses_others(analysis, tmp_path):
    report = AnalysisReport(calibration=analysis[1]["calibration"], params={"a": 1})
    out = tmp_path / "res"
    report.write(out, figures=False)
    (out / "stale.csv").write_text("x")
    report.write(out, figures=False)  # an sklcrt output: replaced whole
    assert not (out / "stale.csv").exists()
    assert sorted(p.name for p in out.iterdir()) == ["calibration.csv", "summary.json",
                                                      "summary.txt"]  # fmt: skip
    other = tmp_path / "thesis"
    other.mkdir()
    (other / "chapter1.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        report.write(other, figures=False)
    assert (other / "chapter1.tex").read_text() == "precious"
    report.write(other, figures=False, overwrite=True)
    assert not (other / "chapter1.tex").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    report.write(empty, figures=False)
    with pytest.raises(FileExistsError, match="not a folder"):
        report.write(out / "summary.json")


def test_write_is_all_or_nothing(analysis, tmp_path, monkeypatch):
    report = AnalysisReport(calibration=analysis[1]["calibration"])
    out = tmp_path / "res"
    report.write(out, figures=False)
    before = (out / "summary.json").read_text()

    def broken(self):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(AnalysisReport, "figures", broken)
    with pytest.raises(RuntimeError, match="figure failed"):
        report.write(out)
    assert (out / "summary.json").read_text() == before  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["res"]  # temporary folder removed


def test_several_calibration_methods(analysis, tmp_path):
    ntc = analysis[1]["calibration"]
    report = AnalysisReport(calibration={"a": ntc, "b": ntc.assign(pvalue=ntc["pvalue"] ** 2)})
    text = report.summary()
    assert "    a: " in text and "    b: " in text
    out = report.write(tmp_path / "two")
    table = pd.read_csv(out / "calibration.csv")
    assert sorted(table["method"].unique()) == ["a", "b"]
    assert (out / "calibration.png").is_file()


def test_empty_report_and_versions():
    assert str(AnalysisReport()) == "sklcrt analysis"
    versions = dependency_versions(["numpy", "not-a-package-xyz"])
    assert versions["numpy"] == np.__version__ and versions["not-a-package-xyz"] is None
