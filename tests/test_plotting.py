"""Plots: returned Axes and Figures, what is drawn (labels, legends, counts), and bad input."""

import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.collections import PathCollection, PolyCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from sklcrt.plotting import (  # noqa: E402
    assignment_figure,
    calibration_figure,
    calibration_plot,
    cells_per_guide_plot,
    effect_histogram_plot,
    guide_umi_plot,
    guides_per_cell_plot,
    ntc_discoveries_plot,
    power_plot,
    qc_covariate_plot,
    qc_figure,
    qc_removal_plot,
    qq_data,
    qq_plot,
    volcano_plot,
)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _results(seed=0, n=300, n_signal=20):
    """A results table shaped like the runners' output, with a few strong signals."""
    rng = np.random.default_rng(seed)
    p = rng.uniform(size=n)
    p[:n_signal] = rng.uniform(1e-6, 1e-4, n_signal)
    effect = rng.normal(0, 0.2, n)
    effect[:n_signal] -= 1.0
    frame = pd.DataFrame(
        {
            "unit": [f"T{i % 30}" for i in range(n)],
            "grna_target": [f"T{i % 30}" for i in range(n)],
            "response": [f"G{i}" for i in range(n)],
            "statistic": effect / 0.2,
            "effect": effect,
            "pvalue": p,
            "pass_qc": True,
        }
    )
    frame.loc[n - 5 :, ["pvalue", "effect"]] = np.nan  # untested pairs keep their rows
    frame.loc[n - 5 :, "pass_qc"] = False
    return frame


# ---------------------------------------------------------------------- qq_data
def test_qq_data_expected_and_band_order():
    rng = np.random.default_rng(1)
    qq = qq_data(rng.uniform(size=200))
    assert list(qq.columns) == ["rank", "expected", "observed", "lower", "upper"]
    assert len(qq) == 200
    n = 200
    np.testing.assert_allclose(qq["expected"], -np.log10(np.arange(1, n + 1) / (n + 1)))
    assert np.all(qq["lower"] < qq["expected"]) and np.all(qq["expected"] < qq["upper"])
    assert np.all(np.diff(qq["observed"]) <= 0)  # smallest p-value first


def test_qq_band_has_nominal_pointwise_coverage():
    """Each rank's band covers its uniform order statistic with probability ``band``."""
    rng = np.random.default_rng(2)
    n, reps = 50, 2000
    qq = qq_data(np.linspace(0.01, 0.99, n), band=0.9)
    draws = -np.log10(np.sort(rng.uniform(size=(reps, n)), axis=1))
    inside = (draws >= qq["lower"].to_numpy()) & (draws <= qq["upper"].to_numpy())
    coverage = inside.mean(axis=0)
    se = np.sqrt(0.9 * 0.1 / reps)
    assert np.all(np.abs(coverage - 0.9) < 5 * se)


def test_qq_data_thinning_keeps_the_tail():
    p = np.random.default_rng(3).uniform(size=100_000)
    qq = qq_data(p, max_points=500)
    assert len(qq) <= 500
    np.testing.assert_array_equal(qq["rank"].to_numpy()[:20], np.arange(1, 21))
    assert qq["rank"].iloc[-1] == p.size


def test_qq_data_drops_nan_and_handles_zero():
    qq = qq_data([0.0, 0.5, np.nan, 1.0], band=None)
    assert len(qq) == 3 and "lower" not in qq
    assert np.all(np.isfinite(qq["observed"]))


# ---------------------------------------------------------------------- qq_plot
def test_qq_plot_single_array_returns_axes_with_band():
    p = np.random.default_rng(4).uniform(size=500)
    ax = qq_plot(p)
    assert isinstance(ax, Axes)
    assert len(ax.get_lines()) == 2  # points + diagonal
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 1
    assert ax.get_legend() is None
    assert "log" in ax.get_xlabel()


def test_qq_plot_dict_draws_one_line_per_method_on_given_axes():
    rng = np.random.default_rng(5)
    _, ax0 = plt.subplots()
    ax = qq_plot({"a": rng.uniform(size=300), "b": rng.uniform(size=300)}, ax=ax0)
    assert ax is ax0
    assert len(ax.get_lines()) == 3
    assert len(ax.collections) == 1  # same n: one band
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["a (n = 300)", "b (n = 300)", "95% band"]


def test_qq_plot_results_by_column_and_labels():
    rng = np.random.default_rng(6)
    frame = pd.DataFrame(
        {
            "p_value": np.concatenate([rng.uniform(size=200), rng.uniform(size=100)]),
            "method": ["perm"] * 200 + ["stratified_perm"] * 100,
        }
    )
    ax = qq_plot(frame, by="method")
    assert len(ax.get_lines()) == 3
    assert len(ax.collections) == 2  # two sample sizes, two bands
    ax = qq_plot(frame, by="method", labels=["P", "S"], band=None, diagonal=False)
    assert len(ax.get_lines()) == 2 and len(ax.collections) == 0
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["P (n = 200)", "S (n = 100)"]


def test_tables_with_the_old_p_value_column_are_read():
    old = _results().rename(columns={"pvalue": "p_value"})
    assert len(qq_plot(old).get_lines()[0].get_xdata()) == 295
    assert len(volcano_plot(old).collections) == 2


def test_qq_plot_results_table_without_by_drops_untested():
    ax = qq_plot(_results())
    (points, _) = ax.get_lines()
    assert len(points.get_xdata()) == 295


@pytest.mark.parametrize(
    ("pvalues", "kwargs", "match"),
    [
        ([0.1, 1.5], {}, r"\[0, 1\]"),
        ([np.nan, np.nan], {}, "no p-values"),
        (np.ones((3, 3)) / 2, {}, "1-D"),
        (["a", "b"], {}, "numeric"),
        ({}, {}, "empty dict"),
        ([0.1, 0.2], {"band": 1.5}, "band"),
        ([0.1, 0.2], {"by": "method"}, "DataFrame"),
        (pd.DataFrame({"p": [0.1]}), {}, "'pvalue'"),
        (pd.DataFrame({"p_value": [0.1]}), {"by": "method"}, "by='method'"),
        ({"a": [0.1], "b": [0.2]}, {"labels": ["x"]}, "labels has 1"),
        ([0.1, 0.2], {"max_points": 1}, "max_points"),
    ],
)
def test_qq_plot_bad_input(pvalues, kwargs, match):
    with pytest.raises(ValueError, match=match):
        qq_plot(pvalues, **kwargs)


def test_bad_ax_raises():
    with pytest.raises(TypeError, match="Axes"):
        qq_plot([0.1, 0.2], ax="not an axes")


def test_missing_matplotlib_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        qq_plot([0.1, 0.5])
    # qq_data needs no matplotlib
    assert len(qq_data([0.1, 0.5])) == 2


# ---------------------------------------------------------------------- calibration_plot
def test_calibration_plot_from_summaries_results_and_pvalues():
    rng = np.random.default_rng(7)
    res = _results(seed=8)
    p = rng.uniform(size=1000)
    summary = {"n_pairs": 400, "frac_below_0.01": 0.0125, "frac_below_0.05": 0.06}
    summaries = {
        "summary": summary,
        "table": res,
        "pvalues": p,
    }
    ax = calibration_plot(summaries)
    assert isinstance(ax, Axes)
    assert len(ax.containers) == 2  # one errorbar container per threshold
    assert [t.get_text() for t in ax.get_xticklabels()] == list(summaries)
    # nominal lines at 0.01 and 0.05
    hlines = [line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert sorted(hlines) == [0.01, 0.05]
    # the error bar of the p-value array brackets its observed fraction
    data_line = ax.containers[1].lines[0]
    y = data_line.get_ydata()[2]
    assert y == pytest.approx(np.mean(p < 0.05))


def test_calibration_plot_accepts_calibration_summary():
    runners = pytest.importorskip("sklcrt.runners")
    res = _results(seed=12)
    summary = runners.calibration_summary(res)
    ax = calibration_plot({"a": summary, "b": res})
    first = ax.containers[0].lines[0].get_ydata()
    np.testing.assert_allclose(first[0], first[1])  # same numbers from summary or table


def test_calibration_plot_binomial_interval_and_ratio_scale():
    p = np.r_[np.full(10, 0.001), np.full(990, 0.5)]  # 1% below 0.01
    ax = calibration_plot({"m": p}, thresholds=[0.01], scale="ratio")
    (container,) = ax.containers
    y = container.lines[0].get_ydata()[0]
    assert y == pytest.approx(1.0)
    seg = container.lines[2][0].get_segments()[0]
    lo, hi = seg[0][1], seg[1][1]
    from scipy import stats

    assert lo == pytest.approx(stats.beta.ppf(0.025, 10, 991) / 0.01)
    assert hi == pytest.approx(stats.beta.ppf(0.975, 11, 990) / 0.01)


def test_calibration_plot_summary_frame_rows_are_methods():
    frame = pd.DataFrame(
        {"n_pairs": [1000, 1000], "frac_below_0.01": [0.01, 0.03], "frac_below_0.05": [0.05, 0.1]},
        index=["stratified_perm", "bernoulli_index"],
    )
    ax = calibration_plot(frame)
    assert [t.get_text() for t in ax.get_xticklabels()] == list(frame.index)


@pytest.mark.parametrize(
    ("summaries", "kwargs", "err", "match"),
    [
        ([0.1, 0.2], {}, TypeError, "dict"),
        ({}, {}, ValueError, "empty"),
        ({"m": {"frac_below_0.01": 0.1}}, {}, ValueError, "n_pairs"),
        ({"m": {"n_pairs": 10, "frac_below_0.01": 0.1}}, {}, ValueError, "frac_below_0.05"),
        ({"m": [0.1, 0.2]}, {"scale": "log"}, ValueError, "scale"),
        ({"m": [0.1, 0.2]}, {"thresholds": [0.0]}, ValueError, "thresholds"),
        (pd.DataFrame({"p_value": [0.1]}), {}, ValueError, "compares methods"),
    ],
)
def test_calibration_plot_bad_input(summaries, kwargs, err, match):
    with pytest.raises(err, match=match):
        calibration_plot(summaries, **kwargs)


# ---------------------------------------------------------------------- volcano_plot
def test_volcano_plot_highlights_discoveries():
    res = _results(seed=9)
    ax = volcano_plot(res, alpha=0.1)
    assert isinstance(ax, Axes)
    other, signif = [c for c in ax.collections if isinstance(c, PathCollection)]
    n_drawn = len(other.get_offsets()) + len(signif.get_offsets())
    assert n_drawn == len(res) - 5  # untested pairs are not drawn
    # the planted knock-downs pass BH at 0.1 (a null pair or two may too)
    assert np.sum(signif.get_offsets()[:, 0] < -0.3) >= 20
    # dashed, labelled line at the BH cut-off, solid line at zero effect
    assert sum(line.get_linestyle() == "--" for line in ax.get_lines()) == 1
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[2] == "BH cut-off, FDR = 0.1" and legend[1].startswith("discoveries (")
    assert ax.get_xlabel() == "log2 fold change"


def test_volcano_plot_uses_p_adj_column_and_labels_top():
    res = _results(seed=10)
    res["p_adj"] = 1.0
    res.loc[0, "p_adj"] = 0.01
    _, ax0 = plt.subplots()
    ax = volcano_plot(res, ax=ax0, label_top=3)
    assert ax is ax0
    _, signif = ax.collections
    assert len(signif.get_offsets()) == 1
    assert [t.get_text() for t in ax.texts] == ["FDR 0.1", "T0:G0"]


def test_volcano_plot_no_discoveries_draws_no_cutoff():
    rng = np.random.default_rng(11)
    res = pd.DataFrame({"effect": rng.normal(size=100), "p_value": rng.uniform(0.5, 1, 100)})
    ax = volcano_plot(res)
    assert len(ax.collections[1].get_offsets()) == 0
    assert not any(line.get_linestyle() == "--" for line in ax.get_lines())


@pytest.mark.parametrize(
    ("results", "kwargs", "err", "match"),
    [
        (np.zeros(3), {}, TypeError, "DataFrame"),
        (pd.DataFrame({"effect": [1.0]}), {}, ValueError, "'pvalue'"),
        (pd.DataFrame({"effect": [np.nan], "p_value": [np.nan]}), {}, ValueError, "no tested"),
        (pd.DataFrame({"effect": [1.0], "p_value": [2.0]}), {}, ValueError, r"\[0, 1\]"),
        (pd.DataFrame({"effect": [1.0], "p_value": [0.2]}), {"alpha": 0}, ValueError, "alpha"),
        (pd.DataFrame({"effect": [1.0], "p_value": [0.2]}), {"label_top": -1}, ValueError, "label"),
    ],
)
def test_volcano_plot_bad_input(results, kwargs, err, match):
    with pytest.raises(err, match=match):
        volcano_plot(results, **kwargs)


# ---------------------------------------------------------------------- figures of every step
@pytest.fixture(scope="module")
def screen():
    """A small simulated screen, assigned from its gRNA counts, with the runners' tables."""
    from sklcrt import runners
    from sklcrt.assignment import assign_guides
    from sklcrt.datasets import simulate_screen

    adata = simulate_screen(
        n_cells=1200, n_genes=30, n_targets=8, n_ntc_guides=8, response="counts", random_state=0
    )
    assign_guides(adata, threshold=5)
    opts = dict(n_resamples=199, n_resamples_adaptive=999, progress=False)
    with warnings.catch_warnings():  # the runners' API is being reshaped; not what is tested here
        warnings.simplefilter("ignore", FutureWarning)
        tables = {
            "ntc": runners.run_ntc_ensemble(adata, n_ensemble=2, group_size=1, **opts),
            "power": runners.power_check(adata, adata.uns["positive_control_pairs"], **opts),
            "discovery": runners.discovery_analysis(adata, adata.uns["discovery_pairs"], **opts),
        }
    # the runners' p-value column is being renamed p_value -> pvalue: test the new name
    return {"adata": adata} | {
        k: t.rename(columns={"p_value": "pvalue"}) for k, t in tables.items()
    }


def _legend(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def _text_boxes(ax):
    renderer = ax.figure.canvas.get_renderer()
    return [Text.get_window_extent(t, renderer) for t in ax.texts]


def _assert_no_overlap(boxes):
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            a, b = boxes[i], boxes[j]
            overlap_x = min(a.x1, b.x1) - max(a.x0, b.x0)
            overlap_y = min(a.y1, b.y1) - max(a.y0, b.y0)
            assert overlap_x <= 0 or overlap_y <= 0, f"labels {i} and {j} overlap"


def test_qq_plot_sets_have_their_own_hollow_markers_largest_first():
    rng = np.random.default_rng(20)
    ax = qq_plot({"small": rng.uniform(size=100), "large": rng.uniform(size=1000)})
    lines = {line.get_label(): line for line in ax.get_lines()}
    small, large = lines["small (n = 100)"], lines["large (n = 1,000)"]
    assert small.get_marker() != large.get_marker()
    assert small.get_color() != large.get_color()
    assert small.get_markerfacecolor() == "none" and large.get_markerfacecolor() == "none"
    assert small.get_zorder() > large.get_zorder()  # the smaller set is drawn over the larger
    assert _legend(ax)[:2] == ["small (n = 100)", "large (n = 1,000)"]


def test_qq_plot_uniform_scale_is_the_bulk():
    p = np.random.default_rng(21).uniform(size=400)
    ax = qq_plot(p, scale="uniform")
    points = ax.get_lines()[0]
    assert np.all((points.get_xdata() > 0) & (points.get_xdata() < 1))
    np.testing.assert_allclose(np.sort(points.get_ydata()), np.sort(p))
    assert ax.get_xlabel() == "Expected p-value"
    band = ax.collections[0].get_paths()[0].vertices
    assert band[:, 1].min() >= 0 and band[:, 1].max() <= 1
    with pytest.raises(ValueError, match="scale"):
        qq_plot(p, scale="linear")


def test_calibration_figure_four_panels_on_simulated_ntc(screen):
    from sklcrt.runners import calibration_summary

    ntc = screen["ntc"]
    fig = calibration_figure(ntc)
    assert isinstance(fig, Figure)
    bulk, tail, hist, disc = fig.axes
    assert [a.get_title() for a in fig.axes] == [
        "QQ plot (bulk)",
        "QQ plot (tail)",
        "NTC effects",
        "False discoveries",
    ]
    n = int(ntc["pvalue"].notna().sum())
    assert _legend(tail)[0] == f"n = {n:,}"
    assert hist.get_xlabel() == "log2 fold change"
    hits = calibration_summary(ntc)["n_bh_discoveries"]  # BH within each grouping, summed
    assert disc.texts[0].get_text() == f"{hits} of {n:,} NTC pairs"
    assert "FDR 0.1" in disc.get_xlabel()
    assert fig.get_suptitle().startswith("Calibration check")


def test_calibration_figure_overlays_methods_with_counts(screen):
    ntc = screen["ntc"]
    shifted = ntc.assign(pvalue=ntc["pvalue"] ** 2)  # an inflated "method"
    fig = calibration_figure({"calibrated": ntc, "inflated": shifted}, alpha=0.2)
    bulk, tail, hist, disc = fig.axes
    n = int(ntc["pvalue"].notna().sum())
    for ax in (bulk, tail, hist):
        assert _legend(ax)[:2] == [f"calibrated (n = {n:,})", f"inflated (n = {n:,})"]
    lines = tail.get_lines()[:2]
    assert lines[0].get_marker() != lines[1].get_marker()
    assert [t.get_text() for t in disc.get_yticklabels()] == ["calibrated", "inflated"]
    assert len(disc.patches) == 2
    # split by a column gives the same panels
    both = pd.concat([ntc.assign(method="a"), shifted.assign(method="b")], ignore_index=True)
    fig2 = calibration_figure(both, by="method", title=None)
    assert _legend(fig2.axes[1])[:2] == [f"a (n = {n:,})", f"b (n = {n:,})"]
    assert fig2.get_suptitle() == ""


def test_effect_histogram_and_discoveries_bad_input():
    with pytest.raises(ValueError, match="'effect'"):
        effect_histogram_plot(pd.DataFrame({"p_value": [0.1]}))
    with pytest.raises(ValueError, match="finite"):
        effect_histogram_plot(pd.DataFrame({"effect": [np.nan]}))
    with pytest.raises(TypeError, match="DataFrame"):
        ntc_discoveries_plot([0.1, 0.2])
    with pytest.raises(ValueError, match="by='m'"):
        ntc_discoveries_plot(pd.DataFrame({"p_value": [0.1]}), by="m")
    with pytest.raises(ValueError, match="alpha"):
        ntc_discoveries_plot(pd.DataFrame({"p_value": [0.1]}), alpha=2)


def test_ntc_discoveries_counts_bh_within_each_grouping():
    p = np.r_[np.full(5, 1e-6), np.full(95, 0.5)]
    frame = pd.DataFrame({"p_value": np.r_[p, p], "ensemble": np.repeat([0, 1], 100)})
    ax = ntc_discoveries_plot(frame)
    assert ax.texts[0].get_text() == "10 of 200 NTC pairs"  # 5 per grouping
    assert ax.patches[0].get_width() == 10


def test_power_plot_positive_controls_against_ntc(screen):
    pos, ntc = screen["power"], screen["ntc"]
    ax = power_plot(pos, ntc, label_cols=("grna_target", "response"))
    n_ntc = int(ntc["pvalue"].notna().sum())
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        f"NTC pairs\n(n = {n_ntc:,})",
        f"positive controls\n(n = {len(pos)})",
    ]
    k = int((pos["pvalue"] < 1e-6).sum())
    assert _legend(ax)[1] == f"positive controls ({k} of {len(pos)} below 1e-06)"
    assert ax.get_ylabel() == r"$-\log_{10}(p)$"
    (cut,) = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert cut.get_ydata()[0] == pytest.approx(6.0)
    labels = [t for t in ax.texts if ":" in t.get_text()]
    assert len(labels) == len(pos)
    _assert_no_overlap(_text_boxes(ax))


def test_power_plot_without_ntc_and_bad_input():
    ax = power_plot(pd.DataFrame({"p_value": [1e-9, np.nan]}), threshold=1e-3)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["positive controls\n(n = 2)"]
    assert _legend(ax) == ["positive controls (1 of 2 below 0.001)"]
    with pytest.raises(TypeError, match="positive"):
        power_plot([1e-3])
    with pytest.raises(ValueError, match="threshold"):
        power_plot(pd.DataFrame({"p_value": [0.1]}), threshold=0)


def _crowded(n=40, seed=30):
    """Many discoveries with nearly equal p-values and effects: labels would pile up."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "unit": [f"TARGET{i}" for i in range(n)],
            "response": [f"GENE{i}" for i in range(n)],
            "effect": -1.0 + rng.normal(0, 0.02, n),
            "p_value": 10.0 ** -(8 + rng.normal(0, 0.05, n)),
        }
    )


@pytest.mark.parametrize("label_top", [5, 25])
def test_volcano_labels_never_overlap(label_top):
    ax = volcano_plot(_crowded(), label_top=label_top)
    labels = [t for t in ax.texts if t.get_text().startswith("TARGET")]
    assert len(labels) == label_top
    _assert_no_overlap(_text_boxes(ax))  # labels and the cut-off's label
    # deterministic: the same input gives the same layout
    again = volcano_plot(_crowded(), label_top=label_top)
    assert [t.xyann for t in again.texts] == [t.xyann for t in ax.texts]
    # the most significant pair is labelled first, at its preferred place
    first = labels[0]
    assert first.get_text() == _crowded().sort_values("p_value").iloc[0][
        ["unit", "response"]
    ].str.cat(sep=":")
    assert first.xyann[1] == 0


def test_volcano_on_simulated_discoveries(screen):
    res = screen["discovery"]
    ax = volcano_plot(res, alpha=0.1, label_cols=("grna_target", "response"))
    n_sig = int(res["significant"].sum())
    legend = _legend(ax)
    assert legend[1] == f"discoveries ({n_sig})"
    assert legend[2] == "BH cut-off, FDR = 0.1"
    assert ax.get_xlabel() == "log2 fold change"
    assert len([t for t in ax.texts if ":" in t.get_text()]) == min(n_sig, 10)
    _assert_no_overlap(_text_boxes(ax))
    assert volcano_plot(res, xlabel="beta").get_xlabel() == "beta"


def test_assignment_figure_from_anndata(screen):
    adata = screen["adata"]
    fig = assignment_figure(adata, n_guides=3)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 5
    umi_axes = fig.axes[:3]
    for ax in umi_axes:
        assert ax.get_xlabel() == "gRNA UMIs per cell"
        legend = _legend(ax)
        assert legend[-1] == "threshold = 5"
        assert legend[0].startswith("not assigned (") and legend[1].startswith("assigned (")
    # titles name the gRNA and its target; the gRNAs assigned to most cells come first
    names = list(adata.uns["grna_ids"])
    per_guide = np.asarray(adata.obsm["guide_assignment"].sum(axis=0)).ravel()
    top = names[int(np.argmax(per_guide))]
    assert umi_axes[0].get_title() == f"{top}\n({adata.uns['guide2gene'][top]})"
    per_cell_ax, per_guide_ax = fig.axes[3:]
    assert sum(p.get_height() for p in per_cell_ax.patches) == adata.n_obs
    assert per_cell_ax.get_xlabel() == "gRNAs per cell"
    assert _legend(per_guide_ax) == ["targeting (16 gRNAs)", "non-targeting (8 gRNAs)"]


def test_guide_umi_plot_marks_a_split_without_threshold():
    counts = sp.csr_matrix(np.array([[0, 12], [1, 0], [9, 2], [2, 30], [7, 0]]))
    assignment = sp.csr_matrix(np.array([[0, 1], [0, 0], [1, 0], [0, 1], [1, 0]]))
    ax = guide_umi_plot(counts, "g1", assignment=assignment, guide_names=["g1", "g2"])
    assert _legend(ax) == ["not assigned (2)", "assigned (2)", "split = 7"]
    ax = guide_umi_plot(counts, 1, threshold={"g2": 10}, guide_names=["g1", "g2"])
    assert _legend(ax) == ["cells with UMIs (3)", "threshold = 10"]
    with pytest.raises(ValueError, match="unknown guide"):
        guide_umi_plot(counts, "g9", guide_names=["g1", "g2"])
    with pytest.raises(ValueError, match="shape"):
        guide_umi_plot(counts, 0, assignment=np.ones((2, 2)))


def test_guides_per_cell_and_cells_per_guide():
    assignment = np.array([[1, 0, 1], [1, 1, 1], [0, 0, 0], [0, 1, 0]])
    ax = guides_per_cell_plot(assignment)
    assert [p.get_height() for p in ax.patches] == [1, 1, 1, 1]
    assert _legend(ax) == ["mean 1.50 per cell, 25% with none"]
    ax = guides_per_cell_plot(assignment, max_guides=2)
    assert [p.get_height() for p in ax.patches] == [1, 1, 2]
    assert ax.get_xticklabels()[-1].get_text() == ">=2"
    ax = cells_per_guide_plot(
        assignment, guide_names=["a", "b", "c"], guide_targets=["T", "T", "NTC"]
    )
    assert [p.get_height() for p in ax.patches] == [2, 2, 2]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]


def _qc_frame(screen):
    covar = screen["adata"].obsm["covar"]
    umis = covar["response_n_umis"]
    qc = pd.DataFrame(
        {
            "low_n_umis": umis < umis.quantile(0.05),
            "high_n_umis": umis > umis.quantile(0.99),
            "low_n_nonzero": covar["response_n_nonzero"]
            < covar["response_n_nonzero"].quantile(0.02),
        },
        index=covar.index,
    )
    qc["pass_qc"] = ~qc.any(axis=1)
    bounds = {"response_n_umis": (umis.quantile(0.05), umis.quantile(0.99))}
    return qc, covar, bounds


def test_qc_removal_plot_counts_each_rule(screen):
    qc, _, _ = _qc_frame(screen)
    ax = qc_removal_plot(qc)
    n = len(qc)
    ticks = {t.get_position()[1]: t.get_text() for t in ax.get_yticklabels()}
    assert [ticks[y] for y in sorted(ticks, reverse=True)] == [
        "low_n_umis",
        "high_n_umis",
        "low_n_nonzero",
        "any rule",
    ]
    texts = [t.get_text() for t in ax.texts]
    removed = [int(qc[c].sum()) for c in ("low_n_umis", "high_n_umis", "low_n_nonzero")]
    total = int((~qc["pass_qc"]).sum())
    assert texts == [f"{k:,} ({k / n:.1%})" for k in [*removed, total]]
    assert ax.get_xlabel() == f"cells removed (of {n:,}; {n - total:,} pass)"


def test_qc_figure_with_covariates_and_bounds(screen):
    qc, covar, bounds = _qc_frame(screen)
    fig = qc_figure(qc, covar, bounds)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    ax = fig.axes[1]
    assert ax.get_title() == "response_n_umis"
    legend = _legend(ax)
    assert legend[0].startswith("pass (") and legend[1].startswith("removed (")
    assert legend[2].startswith("lower bound") and legend[3].startswith("upper bound")
    assert len(qc_figure(qc).axes) == 1
    with pytest.raises(ValueError, match="lack"):
        qc_figure(qc, covar, {"nope": (1, 2)})
    with pytest.raises(ValueError, match="covariates="):
        qc_figure(qc, bounds=bounds)
    with pytest.raises(TypeError, match="cellwise QC"):
        qc_removal_plot(np.zeros(3))


def test_qc_covariate_plot_linear_for_narrow_ranges():
    ax = qc_covariate_plot(pd.Series([26, 27, 28, 29, 30] * 10, name="n_genes"), bounds=(27, None))
    assert ax.get_xscale() == "linear" and ax.get_xlabel() == "n_genes"
    ax = qc_covariate_plot(np.geomspace(10, 10_000, 100))
    assert ax.get_xscale() == "log"
