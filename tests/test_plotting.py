"""Plots: returned Axes, what is drawn, the QQ band, and bad input."""

import sys

import numpy as np
import pandas as pd
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.collections import PathCollection, PolyCollection  # noqa: E402

from sklcrt.plotting import calibration_plot, qq_data, qq_plot, volcano_plot  # noqa: E402


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
            "p_value": p,
            "pass_qc": True,
        }
    )
    frame.loc[n - 5 :, ["p_value", "effect"]] = np.nan  # untested pairs keep their rows
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
    assert {"a", "b"} <= set(legend)


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
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["P", "S"]


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
        (pd.DataFrame({"p": [0.1]}), {}, "'p_value'"),
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
    with pytest.raises(ImportError, match=r"sklcrt\[plot\]"):
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
    # dashed line at the BH cut-off, solid line at zero effect
    assert sum(line.get_linestyle() == "--" for line in ax.get_lines()) == 1


def test_volcano_plot_uses_p_adj_column_and_labels_top():
    res = _results(seed=10)
    res["p_adj"] = 1.0
    res.loc[0, "p_adj"] = 0.01
    _, ax0 = plt.subplots()
    ax = volcano_plot(res, ax=ax0, label_top=3)
    assert ax is ax0
    _, signif = ax.collections
    assert len(signif.get_offsets()) == 1
    assert [t.get_text() for t in ax.texts] == ["T0:G0"]


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
        (pd.DataFrame({"effect": [1.0]}), {}, ValueError, "p_value"),
        (pd.DataFrame({"effect": [np.nan], "p_value": [np.nan]}), {}, ValueError, "no tested"),
        (pd.DataFrame({"effect": [1.0], "p_value": [2.0]}), {}, ValueError, r"\[0, 1\]"),
        (pd.DataFrame({"effect": [1.0], "p_value": [0.2]}), {"alpha": 0}, ValueError, "alpha"),
        (pd.DataFrame({"effect": [1.0], "p_value": [0.2]}), {"label_top": -1}, ValueError, "label"),
    ],
)
def test_volcano_plot_bad_input(results, kwargs, err, match):
    with pytest.raises(err, match=match):
        volcano_plot(results, **kwargs)
