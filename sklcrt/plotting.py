"""Figures for every step of a screen analysis, and the numbers behind the QQ plots.

One figure per step of an analysis (guide assignment -> cellwise QC -> calibration -> power ->
discovery):

* guide assignment: :func:`guide_umi_plot`, :func:`guides_per_cell_plot`,
  :func:`cells_per_guide_plot` and the whole :func:`assignment_figure`;
* cellwise QC: :func:`qc_removal_plot`, :func:`qc_covariate_plot` and :func:`qc_figure`;
* calibration on non-targeting (NTC) pairs: :func:`qq_plot` (bulk and tail),
  :func:`effect_histogram_plot`, :func:`ntc_discoveries_plot`, the four-panel
  :func:`calibration_figure` and the method comparison :func:`calibration_plot`;
* power: :func:`power_plot`, positive controls against the NTC p-values;
* discovery: :func:`volcano_plot`, with labels that never overlap.

Functions that draw one panel take ``ax=`` (a new figure is made when it is ``None``) and return
the :class:`matplotlib.axes.Axes`, as scanpy's plots do; ``*_figure`` functions draw several
panels and return the :class:`matplotlib.figure.Figure`. matplotlib is imported only when a plot
is drawn (``import sklcrt`` stays fast) and every function works with the Agg backend.
:func:`qq_data` computes the numbers behind a QQ plot without matplotlib. Results tables are read
by column name (``pvalue``, ``effect``, ``p_adj``...); a table whose p-values are in ``p_value``
(the runners' name before ``pvalue``) is read as well.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from sklcrt._validation import pvalue_column

__all__ = [
    "assignment_figure",
    "calibration_figure",
    "calibration_plot",
    "cells_per_guide_plot",
    "effect_histogram_plot",
    "guide_umi_plot",
    "guides_per_cell_plot",
    "ntc_discoveries_plot",
    "power_plot",
    "qc_covariate_plot",
    "qc_figure",
    "qc_removal_plot",
    "qq_data",
    "qq_plot",
    "volcano_plot",
]

_PLOT_EXTRA_HINT = (
    "sklcrt's plots need matplotlib, a dependency of sklcrt; reinstall sklcrt or run "
    "`pip install matplotlib`."
)

#: Marker shapes and colours of overlaid sets (methods), in order: each set gets its own hollow
#: shape and colour, so that no set hides another where they overlap.
_SET_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
_LFC_LABEL = "log2 fold change"


#: The runners' p-value column is ``pvalue`` (scipy's word); tables from before the rename call
#: it ``p_value``. Either is found when the other is asked for.


def _pyplot():
    """Import matplotlib.pyplot lazily, with an error that says how to install it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - exercised by monkeypatching in the tests
        raise ImportError(_PLOT_EXTRA_HINT) from exc
    return plt


def _get_ax(ax):
    plt = _pyplot()  # also checks that matplotlib is installed when an ax is passed
    if ax is None:
        _, ax = plt.subplots()
    elif not hasattr(ax, "plot"):
        raise TypeError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}.")
    return ax


def _check_level(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise ValueError(f"{name} must be a float in (0, 1), got {value!r}.")
    value = float(value)
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {value}.")
    return value


def _clean_pvalues(values, name: str) -> np.ndarray:
    """1-D float p-values with NaN (untested pairs) dropped; values outside [0, 1] raise."""
    if isinstance(values, (pd.Series, pd.Index)):
        values = values.to_numpy()
    arr = np.asarray(values)
    if arr.dtype == object:
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be numeric p-values, got non-numeric values.") from exc
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric p-values, got dtype {arr.dtype}.")
    arr = np.squeeze(arr.astype(np.float64))
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(
            f"{name} must be 1-D, got shape {np.shape(values)}; pass several sets of p-values "
            "as a dict {label: pvalues} or a results DataFrame with by=."
        )
    arr = arr[~np.isnan(arr)]
    if np.any((arr < 0) | (arr > 1)):
        bad = arr[(arr < 0) | (arr > 1)]
        raise ValueError(f"{name} must lie in [0, 1]; found {bad.size} value(s) such as {bad[0]}.")
    if arr.size == 0:
        raise ValueError(
            f"{name} holds no p-values (all NaN or empty); were any pairs tested (pass_qc)?"
        )
    return arr


def _pvalue_sets(pvalues, labels, by, pvalue_col: str) -> list[tuple[str | None, np.ndarray]]:
    """Normalise the accepted inputs to a list of (label, p-values)."""
    if isinstance(pvalues, pd.DataFrame):
        pvalue_col = pvalue_column(pvalues, pvalue_col)
        if pvalue_col not in pvalues.columns:
            raise ValueError(
                f"the results DataFrame has no {pvalue_col!r} column (columns: "
                f"{list(pvalues.columns)}); set pvalue_col= to the p-value column."
            )
        if by is None:
            sets = [(None, pvalues[pvalue_col])]
        else:
            if by not in pvalues.columns:
                raise ValueError(
                    f"by={by!r} is not a column of the results (columns: {list(pvalues.columns)})."
                )
            sets = [
                (str(key), group[pvalue_col])
                for key, group in pvalues.groupby(by, sort=False, observed=True)
            ]
    elif by is not None:
        raise ValueError("by= needs a results DataFrame; got " + type(pvalues).__name__ + ".")
    elif isinstance(pvalues, Mapping):
        if len(pvalues) == 0:
            raise ValueError("pvalues is an empty dict; pass {label: pvalues, ...}.")
        sets = [(str(key), value) for key, value in pvalues.items()]
    else:
        sets = [(None, pvalues)]

    if labels is not None:
        if isinstance(labels, str):
            labels = [labels]
        labels = list(labels)
        if len(labels) != len(sets):
            raise ValueError(
                f"labels has {len(labels)} entries but there are {len(sets)} sets of p-values."
            )
        sets = [(str(label), values) for label, (_, values) in zip(labels, sets, strict=True)]
    return [
        (label, _clean_pvalues(values, "pvalues" if label is None else f"pvalues[{label!r}]"))
        for label, values in sets
    ]


def _plot_ranks(n: int, max_points: int | None) -> np.ndarray:
    """1-based ranks to draw: all of them, or about ``max_points`` spaced evenly in log rank.

    Log spacing keeps every one of the smallest p-values (the tail that matters) and thins the
    bulk near p = 1, where thousands of points overlap.
    """
    if max_points is None or n <= max_points:
        return np.arange(1, n + 1)
    ranks = np.unique(np.round(np.geomspace(1, n, max_points)).astype(np.int64))
    return ranks


def qq_data(pvalues, band: float | None = 0.95, max_points: int | None = None) -> pd.DataFrame:
    """Points of a uniform QQ plot on the -log10 scale, with a pointwise band.

    The ``i``-th smallest of ``n`` independent uniform p-values follows ``Beta(i, n - i + 1)``, so
    its expected value is ``i / (n + 1)`` and its central ``band`` interval comes from the Beta
    quantiles. Points outside the band at the top right show inflation (too many small p-values).

    Parameters
    ----------
    pvalues : array-like of shape (n,)
        P-values in [0, 1]; NaN (untested pairs) are dropped.
    band : float or None, default=0.95
        Coverage of the pointwise band; ``None`` leaves the band columns out.
    max_points : int, default=None
        Keep at most about this many points, evenly spaced in log rank (all the smallest
        p-values are kept); ``None`` keeps all.

    Returns
    -------
    pandas.DataFrame
        One row per point, from the smallest p-value: ``rank``, ``expected`` and ``observed``
        (``-log10`` of the expected and observed p-value) and, with a band, ``lower`` and
        ``upper`` (``-log10`` of the band's upper and lower Beta quantiles, so ``lower <=
        upper``).

    Examples
    --------
    >>> import numpy as np
    >>> from sklcrt.plotting import qq_data
    >>> qq = qq_data(np.random.default_rng(0).uniform(size=1000))
    >>> list(qq.columns)
    ['rank', 'expected', 'observed', 'lower', 'upper']
    """
    p = np.sort(_clean_pvalues(pvalues, "pvalues"))
    if band is not None:
        band = _check_level(band, "band")
    if max_points is not None and (
        isinstance(max_points, bool)
        or not isinstance(max_points, (int, np.integer))
        or max_points < 2
    ):
        raise ValueError(f"max_points must be an int >= 2 or None, got {max_points!r}.")
    n = p.size
    ranks = _plot_ranks(n, max_points)
    tiny = np.finfo(np.float64).tiny  # p = 0 would be -log10(0) = inf
    frame = pd.DataFrame(
        {
            "rank": ranks,
            "expected": -np.log10(ranks / (n + 1)),
            "observed": -np.log10(np.maximum(p[ranks - 1], tiny)),
        }
    )
    if band is not None:
        tail = (1.0 - band) / 2.0
        a, b = ranks.astype(np.float64), (n - ranks + 1).astype(np.float64)
        frame["lower"] = -np.log10(stats.beta.ppf(1.0 - tail, a, b))
        frame["upper"] = -np.log10(stats.beta.ppf(tail, a, b))
    return frame


def _set_style(i: int) -> dict:
    """Marker style of the ``i``-th overlaid set: a hollow shape of its own colour."""
    return {
        "marker": _SET_MARKERS[i % len(_SET_MARKERS)],
        "color": f"C{i % 10}",
        "markerfacecolor": "none",
        "markeredgewidth": 1.0,
        "linestyle": "none",
    }


def _count_label(label: str | None, n: int) -> str:
    return f"n = {n:,}" if label is None else f"{label} (n = {n:,})"


def qq_plot(
    pvalues,
    ax=None,
    labels=None,
    band: float | None = 0.95,
    *,
    by: str | None = None,
    pvalue_col: str = "pvalue",
    scale: str = "log",
    max_points: int | None = 5000,
    diagonal: bool = True,
    legend: bool | None = None,
    band_kwargs: dict | None = None,
    **plot_kwargs,
):
    """QQ plot of p-values against the uniform distribution (tail or bulk).

    Several sets of p-values (methods, resampling settings, NTC ensembles) share one axes. Each
    set gets its own hollow marker shape and colour, the largest set is drawn first and the
    legend gives every set's number of p-values, so that no set hides another. A grey pointwise
    ``band`` shows where the points of well calibrated p-values fall (see :func:`qq_data`).

    Parameters
    ----------
    pvalues : array-like, dict or pandas.DataFrame
        One set of p-values (array-like of shape (n,)), a dict ``{label: pvalues}``, or a results
        table (e.g. from :func:`sklcrt.runners.run_ntc_groups`) whose ``pvalue_col`` is plotted,
        split by its ``by`` column when given. NaN p-values (untested pairs) are dropped.
    ax : matplotlib.axes.Axes, default=None
        Axes to draw on; ``None`` makes a new figure.
    labels : str or sequence of str, default=None
        Legend labels, one per set of p-values, replacing the dict keys or ``by`` values.
    band : float or None, default=0.95
        Coverage of the pointwise band from the Beta distribution of uniform order statistics;
        ``None`` draws no band. One band is drawn per distinct number of p-values.
    by : str, default=None
        Column of the results DataFrame that names the method of each row (one set per value).
    pvalue_col : str, default="pvalue"
        Column of the results DataFrame with the p-values.
    scale : {"log", "uniform"}, default="log"
        ``"log"``: ``-log10`` of expected and observed p-values, which shows the tail (the small
        p-values a screen's discoveries come from). ``"uniform"``: the p-values themselves on
        [0, 1], which shows the bulk (SCEPTRE's "QQ plot (bulk)").
    max_points : int or None, default=5000
        Draw at most about this many points per set, evenly spaced in log rank (every small
        p-value is kept); ``None`` draws all.
    diagonal : bool, default=True
        Draw the ``y = x`` reference line.
    legend : bool, default=None
        Draw a legend; ``None`` draws one when the sets have labels or there are several.
    band_kwargs : dict, default=None
        Keyword arguments of :meth:`~matplotlib.axes.Axes.fill_between` for the band.
    **plot_kwargs
        Passed to :meth:`~matplotlib.axes.Axes.plot` for every set (e.g. ``markersize``).

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on: one line of markers per set (then the diagonal) and one band per
        distinct number of p-values.

    See Also
    --------
    qq_data : The numbers behind the plot.
    calibration_figure : Bulk and tail QQ plots with the effects and NTC discoveries.

    Examples
    --------
    >>> import numpy as np
    >>> from sklcrt.plotting import qq_plot
    >>> rng = np.random.default_rng(0)
    >>> ax = qq_plot({"calibrated": rng.uniform(size=500), "inflated": rng.beta(0.7, 1, 500)})
    >>> len(ax.get_lines())  # two sets of p-values and the diagonal
    3
    >>> [t.get_text() for t in ax.get_legend().get_texts()][:2]
    ['calibrated (n = 500)', 'inflated (n = 500)']
    """
    sets = _pvalue_sets(pvalues, labels, by, pvalue_col)
    if band is not None:
        band = _check_level(band, "band")
    if scale not in ("log", "uniform"):
        raise ValueError(f"scale must be 'log' or 'uniform', got {scale!r}.")
    ax = _get_ax(ax)

    frames = [qq_data(p, band=band, max_points=max_points) for _, p in sets]
    if scale == "uniform":
        frames = [
            frame.assign(**{col: 10.0 ** -frame[col] for col in frame.columns if col != "rank"})
            for frame in frames
        ]
        frames = [
            frame.rename(columns={"lower": "upper", "upper": "lower"}) if band else frame
            for frame in frames
        ]
    if band is not None:
        style = {"color": "0.6", "alpha": 0.3, "linewidth": 0, "zorder": 0}
        style.update(band_kwargs or {})
        drawn: set[int] = set()
        for (_, p), frame in zip(sets, frames, strict=True):
            if p.size in drawn:
                continue
            ax.fill_between(
                frame["expected"],
                frame["lower"],
                frame["upper"],
                label=None if drawn else f"{band:.0%} band",
                **style,
            )
            drawn.add(p.size)

    # the largest set first, so that smaller ones are drawn over it; legend in the given order
    order = sorted(range(len(sets)), key=lambda i: -sets[i][1].size)
    handles = [None] * len(sets)
    for rank, i in enumerate(order):
        label, p = sets[i]
        style = (
            _set_style(i)
            if len(sets) > 1 or label is not None
            else {"marker": ".", "linestyle": "none", "color": "C0"}
        )
        style.update({"markersize": 4, "alpha": 0.85, "zorder": 2 + rank})
        style.update(plot_kwargs)
        (handles[i],) = ax.plot(
            frames[i]["expected"], frames[i]["observed"], label=_count_label(label, p.size), **style
        )

    if diagonal:
        top = 1.0 if scale == "uniform" else max(float(f["expected"].max()) for f in frames)
        ax.plot([0.0, top], [0.0, top], color="0.3", linestyle="--", linewidth=1, zorder=1)

    if scale == "log":
        ax.set_xlabel(r"Expected $-\log_{10}(p)$")
        ax.set_ylabel(r"Observed $-\log_{10}(p)$")
    else:
        ax.set_xlabel("Expected p-value")
        ax.set_ylabel("Observed p-value")
    has_labels = any(label is not None for label, _ in sets)
    if legend or (legend is None and (has_labels or len(sets) > 1)):
        band_handles = [c for c in ax.collections if c.get_label() and c.get_label()[0] != "_"]
        ax.legend(handles=[*handles, *band_handles[:1]], loc="upper left", frameon=False)
    return ax


def _binomial_interval(k: np.ndarray, n: np.ndarray, level: float) -> tuple[np.ndarray, ...]:
    """Clopper-Pearson (exact) interval of a binomial proportion."""
    tail = (1.0 - level) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        lower = np.where(k > 0, stats.beta.ppf(tail, k, n - k + 1), 0.0)
        upper = np.where(k < n, stats.beta.ppf(1.0 - tail, k + 1, n - k), 1.0)
    return lower, upper


def _threshold_key(threshold: float) -> str:
    return f"frac_below_{threshold:g}"


def _calibration_table(data, thresholds: Sequence[float], pvalue_col: str) -> pd.DataFrame:
    """Rows (method, threshold, n, k, fraction) from summaries, results tables or p-values."""
    if isinstance(data, pd.DataFrame):
        if pvalue_column(data, pvalue_col) in data.columns:
            raise ValueError(
                "calibration_plot compares methods: pass a dict {method: results} (or "
                "{method: calibration_summary(results)}), not a single results table."
            )
        items = [(str(idx), row.to_dict()) for idx, row in data.iterrows()]
    elif isinstance(data, Mapping):
        items = [(str(key), value) for key, value in data.items()]
    else:
        raise TypeError(
            "summaries must be a dict {method: summary dict, results DataFrame or p-values} or a "
            f"DataFrame of summaries (one row per method), got {type(data).__name__}."
        )
    if not items:
        raise ValueError("summaries is empty; pass at least one method.")

    rows = []
    for method, value in items:
        if isinstance(value, pd.DataFrame):
            col = pvalue_column(value, pvalue_col)
            if col not in value.columns:
                raise ValueError(
                    f"results of {method!r} have no {pvalue_col!r} column; set pvalue_col=."
                )
            value = value[col]
        if isinstance(value, Mapping):
            if "n_pairs" not in value:
                raise ValueError(
                    f"summary of {method!r} has no 'n_pairs'; pass the dict returned by "
                    "sklcrt.runners.calibration_summary or the results table."
                )
            n = int(value["n_pairs"])
            for t in thresholds:
                key = _threshold_key(t)
                if key not in value:
                    raise ValueError(
                        f"summary of {method!r} has no {key!r}; pass the results table instead "
                        f"of the summary to use threshold {t:g}."
                    )
                frac = float(value[key])
                rows.append((method, t, n, int(round(frac * n)), frac))
        else:
            p = _clean_pvalues(value, f"p-values of {method!r}")
            for t in thresholds:
                k = int(np.sum(p < t))
                rows.append((method, t, p.size, k, k / p.size))
    return pd.DataFrame(rows, columns=["method", "threshold", "n", "k", "fraction"])


def calibration_plot(
    summaries,
    ax=None,
    thresholds: Sequence[float] = (0.01, 0.05),
    *,
    ci: float = 0.95,
    scale: str = "fraction",
    pvalue_col: str = "pvalue",
    legend: bool = True,
):
    """Compare the calibration of several methods: fraction of null p-values below thresholds.

    For null pairs (e.g. NTC groups) a calibrated test gives a fraction ``t`` of p-values below
    ``t``. Each method gets one marker per threshold with an exact (Clopper-Pearson) binomial
    interval; dashed lines mark the nominal levels.

    Parameters
    ----------
    summaries : dict or pandas.DataFrame
        ``{method: value}`` where each value is a summary dict from
        :func:`sklcrt.runners.calibration_summary`, a results table or an array of p-values; or
        a DataFrame of summaries with one row per method (the index names the methods).
    ax : matplotlib.axes.Axes, default=None
        Axes to draw on; ``None`` makes a new figure.
    thresholds : sequence of float, default=(0.01, 0.05)
        Nominal levels. Summary dicts hold ``frac_below_0.01`` and ``frac_below_0.05``; for other
        levels pass results tables or p-values.
    ci : float, default=0.95
        Coverage of the binomial error bars.
    scale : {"fraction", "ratio"}, default="fraction"
        Plot the observed fraction (nominal levels as dashed lines) or its ratio to the nominal
        level (reference line at 1).
    pvalue_col : str, default="pvalue"
        P-value column of results tables.
    legend : bool, default=True
        Draw a legend of the thresholds.

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on; one errorbar container per threshold.

    See Also
    --------
    qq_plot : The whole distribution of the p-values.

    Examples
    --------
    >>> import numpy as np
    >>> from sklcrt.plotting import calibration_plot
    >>> rng = np.random.default_rng(0)
    >>> ax = calibration_plot({"perm": rng.uniform(size=2000), "crt": rng.beta(0.8, 1, 2000)})
    >>> len(ax.containers)  # one errorbar set per threshold
    2
    """
    if isinstance(thresholds, (int, float)):
        thresholds = [thresholds]
    thresholds = [_check_level(t, "thresholds") for t in thresholds]
    if not thresholds:
        raise ValueError("thresholds is empty; pass levels such as (0.01, 0.05).")
    ci = _check_level(ci, "ci")
    if scale not in ("fraction", "ratio"):
        raise ValueError(f"scale must be 'fraction' or 'ratio', got {scale!r}.")
    table = _calibration_table(summaries, thresholds, pvalue_col)
    lower, upper = _binomial_interval(
        table["k"].to_numpy(dtype=float), table["n"].to_numpy(dtype=float), ci
    )
    table["lower"], table["upper"] = lower, upper
    ax = _get_ax(ax)

    methods = list(dict.fromkeys(table["method"]))
    x = np.arange(len(methods), dtype=float)
    width = 0.6
    offsets = (np.arange(len(thresholds)) - (len(thresholds) - 1) / 2) * (
        width / max(len(thresholds), 1)
    )
    colors = [f"C{i}" for i in range(len(thresholds))]
    for t, offset, color in zip(thresholds, offsets, colors, strict=True):
        sub = table[table["threshold"] == t].set_index("method").loc[methods]
        denom = t if scale == "ratio" else 1.0
        y = sub["fraction"].to_numpy() / denom
        yerr = np.vstack([y - sub["lower"].to_numpy() / denom, sub["upper"].to_numpy() / denom - y])
        ax.errorbar(
            x + offset,
            y,
            yerr=np.clip(yerr, 0, None),
            fmt="o",
            color=color,
            capsize=3,
            label=f"p < {t:g}",
        )
        if scale == "fraction":
            ax.axhline(t, color=color, linestyle="--", linewidth=1)
    if scale == "ratio":
        ax.axhline(1.0, color="0.3", linestyle="--", linewidth=1)
        ax.set_ylabel("Observed / nominal fraction")
    else:
        ax.set_ylabel("Fraction of p-values below threshold")
    ax.set_xticks(x)
    ax.set_xticklabels(
        methods,
        rotation=30 if len(methods) > 3 else 0,
        ha="right" if len(methods) > 3 else "center",
    )
    ax.set_xlim(-0.5, len(methods) - 0.5)
    ax.set_ylim(bottom=0)
    if legend:
        ax.legend(frameon=False, title=f"{ci:.0%} binomial CI")
    return ax


def _label_units(ax, pad_points: float):
    """The renderer, the points per pixel and the padding in pixels of ``ax``'s label layout."""
    fig = ax.figure
    to_points = 72.0 / fig.dpi
    return _renderer(fig), to_points, pad_points / to_points


def _renderer(fig):
    """The figure's renderer (Agg and the interactive canvases have one after a draw)."""
    get = getattr(fig.canvas, "get_renderer", None)
    if get is not None:
        return get()
    fig.canvas.draw()  # pragma: no cover - canvases without get_renderer
    return fig.canvas.get_renderer()  # pragma: no cover


def _overlap(a, b, pad: float) -> bool:
    """Whether two display boxes ``(x0, y0, x1, y1)`` come closer than ``pad``."""
    return a[0] < b[2] + pad and b[0] < a[2] + pad and a[1] < b[3] + pad and b[1] < a[3] + pad


def _repel_labels(ax, annotations, fixed=(), pad_points: float = 1.5) -> None:
    """Move annotations vertically until no two text boxes overlap (deterministic, greedy).

    The annotations are placed one after another in the order given (the most important
    first). Each keeps its preferred place when that box is free; otherwise it moves up or down
    by the smallest shift that clears every box placed before it. In one dimension the nearest
    free place is either the preferred one or the edge of a placed box, so the candidates are
    the preferred place and the places just above and just below each placed box that it
    overlaps horizontally; places inside the axes are preferred. Shifts are set in points, so
    the layout survives a change of dpi (not a change of the axes' size). ``fixed`` texts stay
    where they are and are avoided like placed ones.
    """
    if not annotations:
        return
    from matplotlib.text import Text

    renderer, to_points, pad = _label_units(ax, pad_points)
    frame = ax.get_window_extent(renderer)

    # the texts' own boxes (an Annotation's extent would include its connector)
    def extent(text):
        if hasattr(text, "update_positions"):  # an Annotation places its text when drawn
            text.update_positions(renderer)
        return tuple(Text.get_window_extent(text, renderer).extents)

    ax.get_xlim(), ax.get_ylim()  # apply any pending autoscaling before measuring
    placed = [extent(t) for t in fixed]
    for ann in annotations:
        box = extent(ann)
        others = [q for q in placed if box[0] < q[2] + pad and q[0] < box[2] + pad]
        shifts = [0.0]
        for q in others:
            shifts += [q[3] + pad - box[1], q[1] - pad - box[3]]

        lo, hi = frame.y0 - box[1], frame.y1 - box[3]  # shifts that keep the box inside
        best = None
        for shift in sorted(shifts, key=lambda s: (not lo <= s <= hi, abs(s), s)):
            moved = (box[0], box[1] + shift, box[2], box[3] + shift)
            if not any(_overlap(moved, q, pad * 0.999) for q in others):
                best = moved
                break
        dx, dy = ann.xyann
        ann.xyann = (dx, dy + (best[1] - box[1]) * to_points)
        placed.append(best)


def _stack_labels(ax, annotations, pad_points: float = 1.5) -> None:
    """Place labels of one column in the order of their points, top to bottom, never overlapping.

    ``annotations`` come sorted by their points' height (highest first). A first pass moves each
    label down just below the one above when they would overlap; a second pass, from the bottom,
    moves labels that fell below the axes back up. The order of the labels is the order of the
    points, so their connectors never cross.
    """
    if not annotations:
        return
    from matplotlib.text import Text

    renderer, to_points, pad = _label_units(ax, pad_points)
    ax.get_xlim(), ax.get_ylim()
    boxes = []
    for ann in annotations:
        ann.update_positions(renderer)
        boxes.append(list(Text.get_window_extent(ann, renderer).extents))
    y0s = [b[1] for b in boxes]
    heights = [b[3] - b[1] for b in boxes]
    for k in range(1, len(boxes)):  # down: below the label above
        y0s[k] = min(y0s[k], y0s[k - 1] - pad - heights[k])
    bottom = ax.get_window_extent(renderer).y0
    if y0s[-1] < bottom:
        y0s[-1] = bottom
        for k in range(len(boxes) - 2, -1, -1):  # up: above the label below
            y0s[k] = max(y0s[k], y0s[k + 1] + heights[k + 1] + pad)
    for ann, box, y0 in zip(annotations, boxes, y0s, strict=True):
        dx, dy = ann.xyann
        ann.xyann = (dx, dy + (y0 - box[1]) * to_points)


def volcano_plot(
    results: pd.DataFrame,
    ax=None,
    alpha: float = 0.1,
    *,
    effect_col: str = "effect",
    pvalue_col: str = "pvalue",
    padj_col: str = "p_adj",
    label_top: int = 10,
    label_cols: Sequence[str] = ("unit", "response"),
    xlabel: str | None = None,
    color: str = "0.6",
    highlight_color: str = "C3",
    fontsize: str | float = "small",
    **scatter_kwargs,
):
    """Volcano plot: log2 fold change against -log10 p-value, discoveries highlighted and labelled.

    The discoveries (Benjamini-Hochberg adjusted p-value at most ``alpha``) are drawn in
    ``highlight_color`` above a dashed, labelled cut-off line; the ``label_top`` of them with the
    smallest p-values are labelled, pointing at their dots. Labels never overlap: they are placed
    one after another, most significant first, each moved up or down by the smallest shift that
    clears the labels already placed (a deterministic greedy repel in display space).

    Parameters
    ----------
    results : pandas.DataFrame
        A results table (e.g. from :func:`sklcrt.runners.discovery_analysis`). Rows with a NaN
        effect or p-value (untested pairs) are not drawn.
    ax : matplotlib.axes.Axes, default=None
        Axes to draw on; ``None`` makes a new figure.
    alpha : float, default=0.1
        False discovery rate: a pair is a discovery when its Benjamini-Hochberg adjusted p-value
        (``padj_col``, computed over the drawn pairs when the column is absent) is at most
        ``alpha``.
    effect_col, pvalue_col, padj_col : str
        Columns with the effect size, the p-value and the adjusted p-value.
    label_top : int, default=10
        Label this many discoveries, those with the smallest p-values; 0 labels none.
    label_cols : sequence of str, default=("unit", "response")
        Columns joined by ``":"`` for the labels (those present; the row index otherwise).
    xlabel : str, default=None
        Label of the x axis; default ``"log2 fold change"`` for the runners' ``effect`` column (the
        NB statistic's effect), else ``effect_col``.
    color, highlight_color : str
        Colours of the other pairs and of the discoveries.
    fontsize : str or float, default="small"
        Size of the labels.
    **scatter_kwargs
        Passed to :meth:`~matplotlib.axes.Axes.scatter` (e.g. ``s``).

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on: two scatter collections (other pairs, discoveries), the labels in
        ``ax.texts`` and, when there are discoveries, a dashed line at the largest significant
        p-value.

    Notes
    -----
    The labels are placed for the axes' size when the function runs: draw into an axes of the
    final size (save with ``bbox_inches="tight"`` rather than resizing afterwards).

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from sklcrt.plotting import volcano_plot
    >>> rng = np.random.default_rng(0)
    >>> results = pd.DataFrame({"effect": rng.normal(size=200), "p_value": rng.uniform(size=200)})
    >>> ax = volcano_plot(results)
    >>> len(ax.collections), ax.get_xlabel()
    (2, 'log2 fold change')
    """
    if not isinstance(results, pd.DataFrame):
        raise TypeError(f"results must be a pandas DataFrame, got {type(results).__name__}.")
    pvalue_col = pvalue_column(results, pvalue_col)
    missing = [c for c in (effect_col, pvalue_col) if c not in results.columns]
    if missing:
        raise ValueError(
            f"results lack column(s) {missing} (columns: {list(results.columns)}); set "
            "effect_col= / pvalue_col=."
        )
    alpha = _check_level(alpha, "alpha")
    if isinstance(label_top, bool) or not isinstance(label_top, (int, np.integer)) or label_top < 0:
        raise ValueError(f"label_top must be a non-negative int, got {label_top!r}.")
    effect = pd.to_numeric(results[effect_col], errors="coerce").to_numpy(dtype=float)
    p = pd.to_numeric(results[pvalue_col], errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(effect) & np.isfinite(p)
    if not keep.any():
        raise ValueError("results hold no tested pairs (every effect or p-value is NaN).")
    _clean_pvalues(p[keep], pvalue_col)
    if padj_col in results.columns:
        p_adj = pd.to_numeric(results[padj_col], errors="coerce").to_numpy(dtype=float)
    else:
        p_adj = np.full(p.shape, np.nan)
        p_adj[keep] = stats.false_discovery_control(p[keep], method="bh")
    significant = keep & (p_adj <= alpha)
    other = keep & ~significant
    y = -np.log10(np.maximum(p, np.finfo(np.float64).tiny))
    ax = _get_ax(ax)

    style = {"s": 12, "linewidths": 0}
    style.update(scatter_kwargs)
    ax.scatter(
        effect[other], y[other], color=color, label=f"not significant ({int(other.sum())})", **style
    )
    ax.scatter(
        effect[significant],
        y[significant],
        color=highlight_color,
        label=f"discoveries ({int(significant.sum())})",
        **style,
    )
    fixed = []
    if significant.any():
        cut = float(y[significant].min())
        ax.axhline(
            cut, color="0.3", linestyle="--", linewidth=1, label=f"BH cut-off, FDR = {alpha:g}"
        )
        cut_label = ax.annotate(
            f"FDR {alpha:g}",
            (1.0, cut),
            xycoords=("axes fraction", "data"),
            xytext=(-2, 2),
            textcoords="offset points",
            ha="right",
            va="bottom",
            fontsize="x-small",
            color="0.3",
        )
        fixed.append(cut_label)
    ax.axvline(0.0, color="0.8", linewidth=1, zorder=0)
    ax.set_xlabel(
        xlabel if xlabel is not None else (_LFC_LABEL if effect_col == "effect" else effect_col)
    )
    ax.set_ylabel(r"$-\log_{10}(p)$")
    ax.margins(x=0.15, y=0.08)

    if label_top and significant.any():
        cols = [c for c in label_cols if c in results.columns]
        order = np.flatnonzero(significant)
        order = order[np.lexsort((np.arange(order.size), p[order]))][:label_top]
        x_mid = float(np.mean(ax.get_xlim()))
        annotations = []
        for i in order:
            text = ":".join(str(results[c].iloc[i]) for c in cols) or str(results.index[i])
            right = effect[i] >= x_mid  # labels point inwards, away from the axes' edge
            annotations.append(
                ax.annotate(
                    text,
                    (effect[i], y[i]),
                    xytext=(-6 if right else 6, 0),
                    textcoords="offset points",
                    ha="right" if right else "left",
                    va="center",
                    fontsize=fontsize,
                    arrowprops={
                        "arrowstyle": "-",
                        "color": "0.4",
                        "linewidth": 0.6,
                        "shrinkA": 0,
                        "shrinkB": 2,
                    },
                    zorder=5,
                )
            )
        _repel_labels(ax, annotations, fixed=fixed)
    ax.legend(frameon=False, loc="best", fontsize="small")
    return ax


# ---------------------------------------------------------------------- results of several methods
def _result_sets(results, by: str | None, labels, name: str = "results"):
    """Normalise a results table (split ``by`` a column), or a dict of tables, to (label, frame)."""
    if isinstance(results, pd.DataFrame):
        if by is None:
            sets = [(None, results)]
        else:
            if by not in results.columns:
                raise ValueError(
                    f"by={by!r} is not a column of the {name} (columns: {list(results.columns)})."
                )
            sets = [
                (str(key), group) for key, group in results.groupby(by, sort=False, observed=True)
            ]
    elif isinstance(results, Mapping):
        if by is not None:
            raise ValueError(f"by= needs one {name} DataFrame, got a dict of them.")
        if not results:
            raise ValueError(f"{name} is an empty dict; pass {{label: results table, ...}}.")
        sets = []
        for key, value in results.items():
            if not isinstance(value, pd.DataFrame):
                raise TypeError(
                    f"{name}[{key!r}] must be a results DataFrame, got {type(value).__name__}."
                )
            sets.append((str(key), value))
    else:
        raise TypeError(
            f"{name} must be a results DataFrame or a dict {{label: DataFrame}}, got "
            f"{type(results).__name__}."
        )
    if labels is not None:
        labels = [labels] if isinstance(labels, str) else list(labels)
        if len(labels) != len(sets):
            raise ValueError(f"labels has {len(labels)} entries but there are {len(sets)} sets.")
        sets = [(str(lab), frame) for lab, (_, frame) in zip(labels, sets, strict=True)]
    return sets


def _column(frame: pd.DataFrame, col: str, what: str) -> np.ndarray:
    col = pvalue_column(frame, col)
    if col not in frame.columns:
        raise ValueError(
            f"the {what} have no {col!r} column (columns: {list(frame.columns)}); set the "
            "matching *_col argument."
        )
    return pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float)


def _bh_hits(frame: pd.DataFrame, alpha: float, pvalue_col: str, group_col: str | None) -> int:
    """Benjamini-Hochberg discoveries over the tested pairs, within each ``group_col`` value
    (the NTC ensemble's groupings: every grouping tests the same guides again)."""
    p = _column(frame, pvalue_col, "results")
    tested = np.isfinite(p)
    groups = np.zeros(p.size)
    if group_col is not None and group_col in frame.columns:
        groups = frame[group_col].to_numpy()
    total = 0
    for g in pd.unique(groups[tested]):
        sub = p[tested & (groups == g)]
        total += int(np.sum(stats.false_discovery_control(sub, method="bh") <= alpha))
    return total


# ---------------------------------------------------------------------- calibration
def effect_histogram_plot(
    results,
    ax=None,
    *,
    by: str | None = None,
    labels=None,
    effect_col: str = "effect",
    bins: int = 40,
    xlabel: str | None = None,
):
    """Histogram of the effects of null (NTC) pairs, one outline per method.

    Calibrated NTC effects centre on zero. Several methods share the bins and are drawn as
    outlines of their own colour and line style, so that none hides another.

    Parameters
    ----------
    results : pandas.DataFrame or dict
        An NTC results table (split by its ``by`` column when given) or ``{label: table}``.
    ax : matplotlib.axes.Axes, default=None
        Axes to draw on; ``None`` makes a new figure.
    by : str, default=None
        Column naming the method of each row.
    labels : sequence of str, default=None
        Legend labels replacing the dict keys or ``by`` values.
    effect_col : str, default="effect"
        Column with the effect (the NB statistic's log2 fold change).
    bins : int, default=40
        Number of bins shared by all methods.
    xlabel : str, default=None
        Default ``"log2 fold change"`` for ``effect_col="effect"``, else ``effect_col``.

    Returns
    -------
    matplotlib.axes.Axes
        One step-histogram patch per method in ``ax.patches``; a legend with the counts.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from sklcrt.plotting import effect_histogram_plot
    >>> ntc = pd.DataFrame({"effect": np.random.default_rng(0).normal(0, 0.05, 300)})
    >>> effect_histogram_plot(ntc).get_xlabel()
    'log2 fold change'
    """
    sets = _result_sets(results, by, labels)
    values = []
    for label, frame in sets:
        e = _column(frame, effect_col, "results")
        e = e[np.isfinite(e)]
        if e.size == 0:
            what = "results" if label is None else f"results of {label!r}"
            raise ValueError(f"{what} hold no finite {effect_col!r} values.")
        values.append(e)
    ax = _get_ax(ax)
    edges = np.histogram_bin_edges(np.concatenate(values), bins=bins)
    linestyles = ("-", "--", "-.", ":")
    for i, ((label, _), e) in enumerate(zip(sets, values, strict=True)):
        ax.hist(
            e,
            bins=edges,
            histtype="step",
            linewidth=1.5,
            color=f"C{i % 10}",
            linestyle=linestyles[i % len(linestyles)],
            label=_count_label(label, e.size),
        )
    ax.axvline(0.0, color="0.3", linewidth=1, zorder=0)
    ax.set_xlabel(
        xlabel if xlabel is not None else (_LFC_LABEL if effect_col == "effect" else effect_col)
    )
    ax.set_ylabel("NTC pairs")
    ax.legend(frameon=False, loc="upper right", fontsize="small")
    return ax


def ntc_discoveries_plot(
    results,
    ax=None,
    alpha: float = 0.1,
    *,
    by: str | None = None,
    labels=None,
    pvalue_col: str = "pvalue",
    group_col: str | None = "ensemble",
):
    """Benjamini-Hochberg discoveries among null (NTC) pairs, one annotated bar per method.

    Every NTC pair is null, so every discovery is a false one: a calibrated method makes none
    (or very few) at the discovery level ``alpha``.

    Parameters
    ----------
    results : pandas.DataFrame or dict
        An NTC results table (split by its ``by`` column when given) or ``{label: table}``.
    ax : matplotlib.axes.Axes, default=None
        Axes to draw on; ``None`` makes a new figure.
    alpha : float, default=0.1
        False discovery rate of the Benjamini-Hochberg procedure.
    by : str, default=None
        Column naming the method of each row.
    labels : sequence of str, default=None
        Bar labels replacing the dict keys or ``by`` values.
    pvalue_col : str, default="pvalue"
        Column with the p-values; NaN (untested) pairs are left out.
    group_col : str or None, default="ensemble"
        Column of the NTC ensemble's grouping: the procedure runs within each grouping and the
        discoveries are summed (as :func:`sklcrt.runners.calibration_summary` counts them).

    Returns
    -------
    matplotlib.axes.Axes
        One bar per method in ``ax.patches``, each annotated "k of n NTC pairs".

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from sklcrt.plotting import ntc_discoveries_plot
    >>> ntc = pd.DataFrame({"p_value": np.random.default_rng(0).uniform(size=500)})
    >>> ax = ntc_discoveries_plot(ntc)
    >>> ax.texts[0].get_text()
    '0 of 500 NTC pairs'
    """
    from matplotlib.ticker import MaxNLocator

    alpha = _check_level(alpha, "alpha")
    sets = _result_sets(results, by, labels)
    names, hits, sizes = [], [], []
    for label, frame in sets:
        p = _column(frame, pvalue_col, "results")
        names.append("NTC pairs" if label is None else label)
        sizes.append(int(np.isfinite(p).sum()))
        hits.append(_bh_hits(frame, alpha, pvalue_col, group_col) if sizes[-1] else 0)
    ax = _get_ax(ax)
    ypos = np.arange(len(names))[::-1]
    colors = [f"C{i % 10}" for i in range(len(names))]
    ax.barh(ypos, hits, color=colors, height=0.6)
    top = max(max(hits), 1)
    for y, k, n in zip(ypos, hits, sizes, strict=True):
        ax.text(k + 0.02 * top, y, f"{k:,} of {n:,} NTC pairs", va="center", fontsize="small")
    ax.set_yticks(ypos)
    ax.set_yticklabels(names)
    ax.set_xlim(0, top * 1.6)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(-0.7, len(names) - 0.3)
    ax.set_xlabel(f"BH discoveries at FDR {alpha:g} (all false)")
    return ax


def calibration_figure(
    results,
    *,
    by: str | None = None,
    labels=None,
    alpha: float = 0.1,
    band: float = 0.95,
    pvalue_col: str = "pvalue",
    effect_col: str = "effect",
    group_col: str | None = "ensemble",
    max_points: int | None = 5000,
    figsize: tuple[float, float] = (10.0, 8.0),
    title: str | None = "Calibration check on non-targeting (NTC) pairs",
):
    """The calibration check in four panels, as SCEPTRE draws it.

    (a) bulk QQ plot of the NTC p-values on [0, 1] with a pointwise band, (b) tail QQ plot on
    the ``-log10`` scale, (c) histogram of the NTC effects (log2 fold change) and (d) the number
    of Benjamini-Hochberg discoveries among the NTC pairs (all of them false). Several methods are
    overlaid with their own hollow markers, outlines and bars, and every legend gives counts.

    Parameters
    ----------
    results : pandas.DataFrame or dict
        NTC results (from :func:`sklcrt.runners.run_ntc_groups` or ``run_ntc_ensemble``), split by
        the ``by`` column when given, or ``{label: table}`` for several methods.
    by : str, default=None
        Column naming the method of each row.
    labels : sequence of str, default=None
        Labels replacing the dict keys or ``by`` values.
    alpha : float, default=0.1
        False discovery rate of panel (d).
    band : float, default=0.95
        Coverage of the QQ plots' pointwise band.
    pvalue_col, effect_col : str
        Columns with the p-values and the effects.
    group_col : str or None, default="ensemble"
        Grouping column of an NTC ensemble (see :func:`ntc_discoveries_plot`).
    max_points : int or None, default=5000
        Points per set in the QQ plots (see :func:`qq_plot`).
    figsize : (float, float), default=(10, 8)
        Size of the figure in inches.
    title : str or None
        Title of the figure.

    Returns
    -------
    matplotlib.figure.Figure
        Four axes, in ``fig.axes``: bulk QQ, tail QQ, effects, discoveries.

    See Also
    --------
    calibration_plot : Fractions below thresholds with binomial intervals, method by method.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from sklcrt.plotting import calibration_figure
    >>> rng = np.random.default_rng(0)
    >>> ntc = pd.DataFrame({"p_value": rng.uniform(size=400), "effect": rng.normal(0, .05, 400)})
    >>> fig = calibration_figure(ntc)
    >>> [ax.get_title() for ax in fig.axes]
    ['QQ plot (bulk)', 'QQ plot (tail)', 'NTC effects', 'False discoveries']
    """
    plt = _pyplot()
    sets = _result_sets(results, by, labels)
    fig, axes = plt.subplots(2, 2, figsize=figsize, layout="constrained")
    (bulk, tail), (hist, disc) = axes
    pvalue_sets = {
        ("NTC pairs" if label is None else label): _column(frame, pvalue_col, "results")
        for label, frame in sets
    }
    single = len(sets) == 1 and sets[0][0] is None
    qq_labels = None if single else list(pvalue_sets)
    qq_input = next(iter(pvalue_sets.values())) if single else pvalue_sets
    qq_plot(
        qq_input,
        ax=bulk,
        labels=qq_labels,
        band=band,
        scale="uniform",
        max_points=max_points,
        legend=not single,
    )
    bulk.set_title("QQ plot (bulk)")
    qq_plot(qq_input, ax=tail, labels=qq_labels, band=band, max_points=max_points, legend=True)
    tail.set_title("QQ plot (tail)")
    frames = {("NTC pairs" if label is None else label): frame for label, frame in sets}
    effect_histogram_plot(frames, ax=hist, effect_col=effect_col)
    hist.set_title("NTC effects")
    ntc_discoveries_plot(frames, ax=disc, alpha=alpha, pvalue_col=pvalue_col, group_col=group_col)
    disc.set_title("False discoveries")
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------- power
def power_plot(
    positive: pd.DataFrame,
    ntc: pd.DataFrame | None = None,
    ax=None,
    *,
    threshold: float = 1e-6,
    pvalue_col: str = "pvalue",
    label_cols: Sequence[str] | None = None,
    jitter: float = 0.25,
    max_points: int | None = 20000,
):
    """Positive-control p-values against the NTC p-values, as a strip plot of ``-log10 p``.

    Positive controls (e.g. guides on a gene's promoter against that gene) should have tiny
    p-values, far above the cloud of null NTC p-values. A dashed line marks ``threshold`` and
    the legend says how many positive controls fall below it.

    Parameters
    ----------
    positive : pandas.DataFrame
        Results of the positive-control pairs (:func:`sklcrt.runners.power_check`).
    ntc : pandas.DataFrame, default=None
        Results of the NTC pairs (the calibration check), drawn as the reference.
    ax : matplotlib.axes.Axes, default=None
        Axes to draw on; ``None`` makes a new figure.
    threshold : float, default=1e-6
        P-value line; the legend counts the positive controls below it.
    pvalue_col : str, default="pvalue"
        Column with the p-values; NaN (untested) pairs are not drawn but counted in ``n``.
    label_cols : sequence of str, default=None
        Label the positive controls with these columns joined by ``":"`` (e.g.
        ``("grna_target", "response")``); labels never overlap. ``None`` labels none.
    jitter : float, default=0.25
        Half-width of the deterministic horizontal jitter of the points.
    max_points : int or None, default=20000
        Draw at most this many NTC points (a fixed, evenly spaced subset of the sorted
        p-values, which keeps the smallest); ``None`` draws all.

    Returns
    -------
    matplotlib.axes.Axes
        Scatter collections for the NTC pairs (when given) and the positive controls.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from sklcrt.plotting import power_plot
    >>> rng = np.random.default_rng(0)
    >>> pos = pd.DataFrame({"p_value": [1e-12, 1e-8, 0.2]})
    >>> ax = power_plot(pos, pd.DataFrame({"p_value": rng.uniform(size=500)}))
    >>> [t.get_text() for t in ax.get_xticklabels()]
    ['NTC pairs\\n(n = 500)', 'positive controls\\n(n = 3)']
    """
    threshold = _check_level(threshold, "threshold")
    if not isinstance(positive, pd.DataFrame):
        raise TypeError(f"positive must be a results DataFrame, got {type(positive).__name__}.")
    if ntc is not None and not isinstance(ntc, pd.DataFrame):
        raise TypeError(f"ntc must be a results DataFrame or None, got {type(ntc).__name__}.")
    tiny = np.finfo(np.float64).tiny
    p_pos = _column(positive, pvalue_col, "positive-control results")
    ax = _get_ax(ax)
    ticks, names = [], []
    if ntc is not None:
        p_ntc = np.sort(_clean_pvalues(_column(ntc, pvalue_col, "NTC results"), "NTC p-values"))
        n_ntc = p_ntc.size
        if max_points is not None and n_ntc > max_points:
            p_ntc = p_ntc[np.unique(np.linspace(0, n_ntc - 1, max_points).round().astype(int))]
        x = np.random.default_rng(0).uniform(-jitter, jitter, p_ntc.size)
        ax.scatter(
            x,
            -np.log10(np.maximum(p_ntc, tiny)),
            s=6,
            color="0.55",
            alpha=0.4,
            linewidths=0,
            label=f"NTC pairs ({int(np.sum(p_ntc < threshold))} of {n_ntc:,} below {threshold:g})",
            rasterized=p_ntc.size > 2000,
        )
        ticks.append(0.0)
        names.append(f"NTC pairs\n(n = {n_ntc:,})")
    xpos = float(len(ticks))
    tested = np.isfinite(p_pos)
    n_pos = int(p_pos.size)
    if tested.any():
        _clean_pvalues(p_pos[tested], "positive-control p-values")
    k = int(np.sum(p_pos[tested] < threshold))
    y_pos = -np.log10(np.maximum(p_pos[tested], tiny))
    x_pos = xpos + np.random.default_rng(1).uniform(-jitter, jitter, y_pos.size) * 0.6
    ax.scatter(
        x_pos,
        y_pos,
        s=36,
        color="C3",
        edgecolors="black",
        linewidths=0.6,
        zorder=3,
        label=f"positive controls ({k} of {n_pos} below {threshold:g})",
    )
    ticks.append(xpos)
    names.append(f"positive controls\n(n = {n_pos:,})")
    ax.axhline(-np.log10(threshold), color="0.3", linestyle="--", linewidth=1)
    ax.annotate(
        f"p = {threshold:g}",
        (0.0, -np.log10(threshold)),
        xycoords=("axes fraction", "data"),
        xytext=(2, 2),
        textcoords="offset points",
        fontsize="x-small",
        color="0.3",
    )
    ax.set_xticks(ticks)
    ax.set_xticklabels(names)
    ax.set_xlim(-0.6, xpos + 0.6 + (0.6 if label_cols else 0.0))
    ax.set_ylabel(r"$-\log_{10}(p)$")
    ax.set_ylim(bottom=0)
    ax.margins(y=0.1)
    if label_cols:
        cols = [c for c in label_cols if c in positive.columns]
        rows = np.flatnonzero(tested)
        order = np.argsort(p_pos[rows], kind="stable")
        annotations = []
        # every label starts in one column right of the points, so the connectors never cross
        to_points = 72.0 / ax.figure.dpi
        ax.get_xlim(), ax.get_ylim()  # apply any pending autoscaling first
        x_text = ax.transData.transform((xpos + jitter * 0.6, 0.0))[0] + 8 / to_points
        for j in order:
            i = rows[j]
            text = ":".join(str(positive[c].iloc[i]) for c in cols) or str(positive.index[i])
            dx = (x_text - ax.transData.transform((x_pos[j], y_pos[j]))[0]) * to_points
            annotations.append(
                ax.annotate(
                    text,
                    (x_pos[j], y_pos[j]),
                    xytext=(dx, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize="x-small",
                    zorder=5,
                    arrowprops={
                        "arrowstyle": "-",
                        "color": "0.4",
                        "linewidth": 0.5,
                        "shrinkA": 0,
                        "shrinkB": 2,
                    },
                )
            )
        _stack_labels(ax, annotations)
    ax.legend(frameon=False, loc="upper left", fontsize="small")
    return ax


# ---------------------------------------------------------------------- guide assignment
def _csr(matrix, name: str) -> sp.csr_matrix:
    if isinstance(matrix, pd.DataFrame):
        matrix = matrix.to_numpy()
    out = sp.csr_matrix(matrix) if sp.issparse(matrix) else sp.csr_matrix(np.asarray(matrix))
    if out.ndim != 2 or out.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a numeric 2-D matrix (cells x guides).")
    if out.nnz and out.data.min() < 0:
        raise ValueError(f"{name} has negative values; gRNA UMI counts must be >= 0.")
    return out


def _assignment_inputs(grna_counts, assignment, threshold, guide_names, guide_targets, keys):
    """Counts, assignment, names, targets and per-guide thresholds from arrays or an AnnData."""
    counts_key, assignment_key = keys
    if hasattr(grna_counts, "obsm") and hasattr(grna_counts, "uns"):  # an AnnData
        adata = grna_counts
        if counts_key not in adata.obsm:
            raise ValueError(f"adata.obsm[{counts_key!r}] (the gRNA UMI counts) not found.")
        grna_counts = adata.obsm[counts_key]
        if assignment is None and assignment_key in adata.obsm:
            assignment = adata.obsm[assignment_key]
        params = adata.uns.get(f"{assignment_key}_params", {})
        if threshold is None and params.get("method") == "threshold":
            threshold = params.get("threshold")
        if guide_names is None:
            if isinstance(grna_counts, pd.DataFrame):
                guide_names = list(grna_counts.columns)
            elif "grna_ids" in adata.uns:
                guide_names = list(adata.uns["grna_ids"])
        if guide_targets is None and "grna_target" in adata.uns:
            guide_targets = list(adata.uns["grna_target"])
    if guide_names is None and isinstance(grna_counts, pd.DataFrame):
        guide_names = list(grna_counts.columns)
    counts = _csr(grna_counts, "grna_counts")
    n_guides = counts.shape[1]
    names = (
        [f"guide_{j}" for j in range(n_guides)]
        if guide_names is None
        else [str(g) for g in guide_names]
    )
    if len(names) != n_guides:
        raise ValueError(f"guide_names has {len(names)} names for {n_guides} guides.")
    if guide_targets is not None:
        guide_targets = [str(t) for t in guide_targets]
        if len(guide_targets) != n_guides:
            raise ValueError(
                f"guide_targets has {len(guide_targets)} entries for {n_guides} guides."
            )
    scalar = threshold is not None and not isinstance(threshold, Mapping)
    if assignment is None and scalar and np.ndim(threshold) == 0:
        assignment = counts >= float(threshold)
    if assignment is not None:
        assignment = _csr(assignment, "assignment").astype(bool)
        if assignment.shape != counts.shape:
            raise ValueError(
                f"assignment has shape {assignment.shape} but grna_counts has {counts.shape}."
            )
    if threshold is None:
        thresholds = np.full(n_guides, np.nan)
    elif isinstance(threshold, Mapping):
        thresholds = np.array([float(threshold.get(g, np.nan)) for g in names])
    elif np.ndim(threshold) == 0:
        thresholds = np.full(n_guides, float(threshold))
    else:
        thresholds = np.asarray(threshold, dtype=float).ravel()
        if thresholds.size != n_guides:
            raise ValueError(f"threshold has {thresholds.size} values for {n_guides} guides.")
    return counts, assignment, names, guide_targets, thresholds


def _guide_index(names: list[str], guide) -> int:
    if isinstance(guide, (int, np.integer)) and not isinstance(guide, bool):
        if not 0 <= guide < len(names):
            raise ValueError(f"guide index {guide} out of range for {len(names)} guides.")
        return int(guide)
    if str(guide) not in names:
        raise ValueError(f"unknown guide {guide!r}; guides are e.g. {names[:5]}.")
    return names.index(str(guide))


def guide_umi_plot(
    grna_counts,
    guide,
    ax=None,
    *,
    assignment=None,
    threshold=None,
    guide_names: Sequence[str] | None = None,
    guide_targets: Sequence[str] | None = None,
    bins: int = 30,
    counts_key: str = "grna_counts",
    assignment_key: str = "guide_assignment",
):
    """UMI distribution of one gRNA across the cells that have any, split at its threshold.

    A histogram of the gRNA's UMI counts (log-spaced bins, cells with at least one UMI), the
    cells assigned the gRNA in colour, the others (ambient reads) in grey, and the threshold (or
    the split a mixture model chose) as a labelled dashed line.

    Parameters
    ----------
    grna_counts : sparse matrix, ndarray, DataFrame or AnnData
        gRNA UMI counts (cells x gRNAs), or an AnnData that holds them in
        ``obsm[counts_key]`` with the ids in ``uns["grna_ids"]``, the targets in
        ``uns["grna_target"]``, the assignment in ``obsm[assignment_key]`` and the threshold in
        ``uns[assignment_key + "_params"]`` (as :func:`sklcrt.assignment.assign_guides` writes
        them).
    guide : str or int
        The gRNA, by name or column index.
    ax : matplotlib.axes.Axes, default=None
        Axes to draw on; ``None`` makes a new figure.
    assignment : matrix of shape (n_cells, n_guides), default=None
        The 0/1 assignment; default ``counts >= threshold`` when ``threshold`` is a number.
    threshold : float, sequence or dict, default=None
        The UMI threshold: one for all gRNAs, one per gRNA (sequence in column order or dict by
        name, e.g. a mixture model's split). ``None`` marks the smallest count assigned instead
        (labelled "split"), when there is an assignment.
    guide_names, guide_targets : sequence of str, default=None
        Names and targets of the columns.
    bins : int, default=30
        Number of log-spaced bins.
    counts_key, assignment_key : str
        Keys read from an AnnData.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> from sklcrt.plotting import guide_umi_plot
    >>> counts = sp.csr_matrix(np.array([[0, 12], [1, 0], [9, 2], [2, 30]]))
    >>> ax = guide_umi_plot(counts, 0, threshold=5, guide_names=["g1", "g2"])
    >>> ax.get_title()
    'g1'
    """
    counts, assigned, names, targets, thresholds = _assignment_inputs(
        grna_counts, assignment, threshold, guide_names, guide_targets, (counts_key, assignment_key)
    )
    j = _guide_index(names, guide)
    col = counts[:, j].tocsc()
    values = col.data.astype(float)
    rows = col.indices
    is_assigned = None
    if assigned is not None:
        is_assigned = np.asarray(assigned[:, j].toarray()).ravel()[rows]
    ax = _get_ax(ax)
    title = names[j] if targets is None else f"{names[j]}\n({targets[j]})"
    ax.set_title(title, fontsize="small")
    ax.set_xlabel("gRNA UMIs per cell")
    ax.set_ylabel("cells")
    if values.size == 0:
        ax.text(0.5, 0.5, "no cell has a UMI", ha="center", va="center", transform=ax.transAxes)
        return ax
    edges = np.unique(np.geomspace(max(values.min(), 1.0) * 0.999, values.max() * 1.001, bins + 1))
    if edges.size < 2:
        edges = np.array([values.min() - 0.5, values.min() + 0.5])
    if is_assigned is None:
        ax.hist(values, bins=edges, color="C0", label=f"cells with UMIs ({values.size:,})")
    else:
        ax.hist(
            [values[~is_assigned], values[is_assigned]],
            bins=edges,
            stacked=True,
            color=["0.7", "C0"],
            label=[
                f"not assigned ({int((~is_assigned).sum()):,})",
                f"assigned ({int(is_assigned.sum()):,})",
            ],
        )
    split, kind = thresholds[j], "threshold"
    if not np.isfinite(split) and is_assigned is not None and is_assigned.any():
        split, kind = float(values[is_assigned].min()), "split"
    if np.isfinite(split):
        ax.axvline(split, color="C3", linestyle="--", linewidth=1.2, label=f"{kind} = {split:g}")
    ax.set_xscale("log")
    ax.legend(frameon=False, fontsize="x-small", loc="upper right")
    return ax


def guides_per_cell_plot(assignment, ax=None, *, max_guides: int | None = None):
    """Histogram of the number of gRNAs assigned to each cell, zero included.

    At low MOI most assigned cells carry one gRNA; at high MOI the counts spread out. The
    legend gives the mean and the fraction of cells with none.

    Parameters
    ----------
    assignment : matrix of shape (n_cells, n_guides)
        The 0/1 assignment (sparse, array or DataFrame).
    ax : matplotlib.axes.Axes, default=None
        Axes to draw on; ``None`` makes a new figure.
    max_guides : int, default=None
        Pool cells with more gRNAs into the last bar (labelled ``">= max_guides"``).

    Returns
    -------
    matplotlib.axes.Axes
        One bar per number of gRNAs in ``ax.patches``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklcrt.plotting import guides_per_cell_plot
    >>> ax = guides_per_cell_plot(np.array([[1, 0], [1, 1], [0, 0]]))
    >>> len(ax.patches)
    3
    """
    per_cell = np.asarray((_csr(assignment, "assignment") != 0).sum(axis=1)).ravel()
    if per_cell.size == 0:
        raise ValueError("assignment has no cells.")
    ax = _get_ax(ax)
    mean, frac_none = per_cell.mean(), np.mean(per_cell == 0)
    top = int(per_cell.max())
    pooled = max_guides is not None and top > max_guides
    if pooled:
        per_cell = np.minimum(per_cell, max_guides)
        top = int(max_guides)
    freq = np.bincount(per_cell, minlength=top + 1)
    ax.bar(
        np.arange(top + 1),
        freq,
        width=0.8,
        color="C0",
        label=f"mean {mean:.2f} per cell, {frac_none:.0%} with none",
    )
    ax.set_xlabel("gRNAs per cell")
    ax.set_ylabel("cells")
    if pooled:
        ticks = [t for t in ax.get_xticks() if 0 <= t < top] + [top]
        ax.set_xticks(ticks)
        ax.set_xticklabels([f"{t:g}" for t in ticks[:-1]] + [f">={top}"])
    ax.set_xlim(-0.6, top + 0.6)
    ax.legend(frameon=False, fontsize="small")
    return ax


def cells_per_guide_plot(
    assignment,
    ax=None,
    *,
    guide_names: Sequence[str] | None = None,
    guide_targets: Sequence[str] | None = None,
    ntc_labels: Sequence[str] = ("non-targeting", "non_targeting", "nontargeting", "NTC"),
):
    """Number of cells assigned each gRNA, sorted, non-targeting gRNAs in their own colour.

    Parameters
    ----------
    assignment : matrix of shape (n_cells, n_guides)
        The 0/1 assignment.
    ax : matplotlib.axes.Axes, default=None
        Axes to draw on; ``None`` makes a new figure.
    guide_names, guide_targets : sequence of str, default=None
        Names and targets of the columns; with targets, non-targeting gRNAs (``ntc_labels``,
        case-insensitive) are coloured apart.
    ntc_labels : sequence of str
        Targets that mark non-targeting gRNAs.

    Returns
    -------
    matplotlib.axes.Axes
        One bar per gRNA in ``ax.patches``, most cells first.

    Examples
    --------
    >>> import numpy as np
    >>> from sklcrt.plotting import cells_per_guide_plot
    >>> ax = cells_per_guide_plot(np.array([[1, 0], [1, 1]]), guide_targets=["MYC", "NTC"])
    >>> len(ax.patches)
    2
    """
    matrix = _csr(assignment, "assignment")
    n_cells = np.asarray((matrix != 0).sum(axis=0)).ravel()
    order = np.argsort(-n_cells, kind="stable")
    ntc = {str(label).strip().lower() for label in ntc_labels}
    is_ntc = np.zeros(n_cells.size, dtype=bool)
    if guide_targets is not None:
        is_ntc = np.array([str(t).strip().lower() in ntc for t in guide_targets])
    ax = _get_ax(ax)
    x = np.arange(n_cells.size)
    colors = np.where(is_ntc[order], "C1", "C0")
    ax.bar(x, n_cells[order], width=0.85, color=colors)
    from matplotlib.patches import Patch

    handles = [Patch(color="C0", label=f"targeting ({int((~is_ntc).sum())} gRNAs)")]
    if is_ntc.any():
        handles.append(Patch(color="C1", label=f"non-targeting ({int(is_ntc.sum())} gRNAs)"))
    ax.legend(handles=handles, frameon=False, fontsize="small")
    ax.set_xlabel("gRNAs, by number of cells")
    ax.set_ylabel("cells assigned")
    if guide_names is not None and n_cells.size <= 30:
        ax.set_xticks(x)
        ax.set_xticklabels([str(guide_names[i]) for i in order], rotation=90, fontsize="x-small")
    ax.set_xlim(-0.8, n_cells.size - 0.2)
    return ax


def assignment_figure(
    grna_counts,
    assignment=None,
    threshold=None,
    *,
    guide_names: Sequence[str] | None = None,
    guide_targets: Sequence[str] | None = None,
    guides: Sequence | None = None,
    n_guides: int = 4,
    counts_key: str = "grna_counts",
    assignment_key: str = "guide_assignment",
    figsize: tuple[float, float] | None = None,
    title: str | None = "Guide assignment",
):
    """The guide assignment: per-gRNA UMI distributions with their threshold, and the totals.

    The top row shows the UMI distributions of ``n_guides`` gRNAs (:func:`guide_umi_plot`,
    default: those assigned to most cells); the bottom row the number of gRNAs per cell
    (:func:`guides_per_cell_plot`) and the number of cells per gRNA
    (:func:`cells_per_guide_plot`).

    Parameters
    ----------
    grna_counts : sparse matrix, ndarray, DataFrame or AnnData
        gRNA UMI counts (cells x gRNAs), or an AnnData (see :func:`guide_umi_plot`).
    assignment : matrix, default=None
        The 0/1 assignment; default ``counts >= threshold`` when the threshold is a number.
    threshold : float, sequence or dict, default=None
        The UMI threshold (one, or one per gRNA, e.g. a mixture model's splits).
    guide_names, guide_targets : sequence of str, default=None
        Names and targets of the columns.
    guides : sequence of str or int, default=None
        The gRNAs of the top row; default the ``n_guides`` assigned to most cells.
    n_guides : int, default=4
        Number of gRNAs in the top row when ``guides`` is None.
    counts_key, assignment_key : str
        Keys read from an AnnData.
    figsize : (float, float), default=None
        Default about 3 inches per top-row panel by 6.5 inches.
    title : str or None
        Title of the figure.

    Returns
    -------
    matplotlib.figure.Figure
        The top-row axes first, then the gRNAs-per-cell and cells-per-gRNA axes.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> from sklcrt.plotting import assignment_figure
    >>> counts = sp.csr_matrix(np.random.default_rng(0).poisson(3, size=(100, 3)))
    >>> fig = assignment_figure(counts, threshold=5, n_guides=2)
    >>> len(fig.axes)
    4
    """
    plt = _pyplot()
    counts, assigned, names, targets, thresholds = _assignment_inputs(
        grna_counts, assignment, threshold, guide_names, guide_targets, (counts_key, assignment_key)
    )
    if guides is None:
        if isinstance(n_guides, bool) or not isinstance(n_guides, (int, np.integer)):
            raise ValueError(f"n_guides must be a positive int, got {n_guides!r}.")
        if n_guides < 1:
            raise ValueError(f"n_guides must be a positive int, got {n_guides!r}.")
        ranking = assigned if assigned is not None else counts
        per_guide = np.asarray((ranking != 0).sum(axis=0)).ravel()
        guides = list(np.argsort(-per_guide, kind="stable")[: min(n_guides, len(names))])
    idx = [_guide_index(names, g) for g in guides]
    if not idx:
        raise ValueError("guides is empty; pass at least one gRNA or guides=None.")
    ncol = len(idx)
    if figsize is None:
        figsize = (max(3.0 * ncol, 8.0), 6.5)
    fig = plt.figure(figsize=figsize, layout="constrained")
    grid = fig.add_gridspec(2, 2 * ncol)
    top_axes = [fig.add_subplot(grid[0, 2 * k : 2 * k + 2]) for k in range(ncol)]
    bottom_left = fig.add_subplot(grid[1, :ncol])
    bottom_right = fig.add_subplot(grid[1, ncol:])
    for ax, j in zip(top_axes, idx, strict=True):
        guide_umi_plot(
            counts,
            j,
            ax=ax,
            assignment=assigned,
            threshold=thresholds,
            guide_names=names,
            guide_targets=targets,
        )
    if assigned is not None:
        guides_per_cell_plot(assigned, ax=bottom_left)
        cells_per_guide_plot(assigned, ax=bottom_right, guide_names=names, guide_targets=targets)
    else:
        for ax in (bottom_left, bottom_right):
            ax.text(0.5, 0.5, "no assignment", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------- cellwise QC
def _qc_rules(qc: pd.DataFrame, pass_col: str) -> tuple[list[str], np.ndarray]:
    if not isinstance(qc, pd.DataFrame):
        raise TypeError(
            f"qc must be the cellwise QC DataFrame (one boolean column per rule, True = removed, "
            f"and {pass_col!r}), got {type(qc).__name__}."
        )
    rules = [c for c in qc.columns if c != pass_col and pd.api.types.is_bool_dtype(qc[c])]
    if pass_col in qc.columns:
        passed = qc[pass_col].to_numpy(dtype=bool)
    elif rules:
        passed = ~qc[rules].to_numpy(dtype=bool).any(axis=1)
    else:
        raise ValueError(
            f"qc has neither a {pass_col!r} column nor boolean rule columns (columns: "
            f"{list(qc.columns)})."
        )
    return [str(r) for r in rules], passed


def qc_removal_plot(qc: pd.DataFrame, ax=None, *, pass_col: str = "pass_qc"):
    """Cells removed by each cellwise QC rule, and by any rule, as annotated bars.

    A cell can fail several rules, so the rule bars may add up to more than the total; the
    lighter inner bar of each rule shows the cells that this rule alone removes.

    Parameters
    ----------
    qc : pandas.DataFrame
        One row per cell (indexed like ``obs_names``), one boolean column per rule (True =
        removed by it) and ``pass_col`` (as :func:`sklcrt.qc.cellwise_qc` returns).
    ax : matplotlib.axes.Axes, default=None
        Axes to draw on; ``None`` makes a new figure.
    pass_col : str, default="pass_qc"
        Column that says whether the cell passes every rule (computed from the rules when absent).

    Returns
    -------
    matplotlib.axes.Axes
        Bars in ``ax.patches`` (per rule, then "any rule"), each annotated "n (x %)".

    Examples
    --------
    >>> import pandas as pd
    >>> from sklcrt.plotting import qc_removal_plot
    >>> qc = pd.DataFrame({"low_umis": [True, False, False, True],
    ...                    "high_mito": [False, False, True, True]})
    >>> qc["pass_qc"] = ~(qc["low_umis"] | qc["high_mito"])
    >>> ax = qc_removal_plot(qc)
    >>> [t.get_text() for t in ax.texts]
    ['2 (50.0%)', '2 (50.0%)', '3 (75.0%)']
    """
    rules, passed = _qc_rules(qc, pass_col)
    n = len(qc)
    if n == 0:
        raise ValueError("qc has no cells.")
    flags = qc[rules].to_numpy(dtype=bool) if rules else np.zeros((n, 0), dtype=bool)
    removed = flags.sum(axis=0)
    only = (flags & (flags.sum(axis=1, keepdims=True) == 1)).sum(axis=0)
    total = int((~passed).sum())
    ax = _get_ax(ax)
    names = [*rules, "any rule"]
    values = [*removed.tolist(), total]
    ypos = np.arange(len(names))[::-1]
    ax.barh(
        ypos, values, color=["C0"] * len(rules) + ["C3"], height=0.6, label="removed by the rule"
    )
    if rules:
        ax.barh(ypos[:-1], only, color="C9", height=0.3, label="removed by this rule only")
    top = max(max(values), 1)
    for y, v in zip(ypos, values, strict=True):
        ax.text(v + 0.02 * top, y, f"{v:,} ({v / n:.1%})", va="center", fontsize="small")
    ax.set_yticks(ypos)
    ax.set_yticklabels(names)
    ax.set_xlim(0, top * 1.45)
    ax.set_xlabel(f"cells removed (of {n:,}; {int(passed.sum()):,} pass)")
    ax.legend(frameon=False, fontsize="x-small", loc="best")
    return ax


def qc_covariate_plot(
    values,
    ax=None,
    *,
    bounds: tuple[float | None, float | None] | None = None,
    removed=None,
    log: bool = True,
    bins: int = 50,
    xlabel: str | None = None,
):
    """Distribution of one QC covariate (e.g. UMIs per cell) with the QC bounds marked.

    Parameters
    ----------
    values : array-like or pandas.Series of shape (n_cells,)
        The covariate, e.g. ``obsm["covar"]["response_n_umis"]``.
    ax : matplotlib.axes.Axes, default=None
        Axes to draw on; ``None`` makes a new figure.
    bounds : (float or None, float or None), default=None
        Lower and upper bound of the rule (cells outside are removed); ``None`` for no bound.
    removed : array-like of bool, default=None
        Cells removed by cellwise QC (any rule), stacked in a second colour.
    log : bool, default=True
        Log-spaced bins and a log x axis (for counts; zeros are left out of the histogram), when
        the values span at least a decade.
    bins : int, default=50
        Number of bins.
    xlabel : str, default=None
        Default the Series' name.

    Returns
    -------
    matplotlib.axes.Axes

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from sklcrt.plotting import qc_covariate_plot
    >>> umis = pd.Series(np.random.default_rng(0).lognormal(8, 0.5, 500), name="response_n_umis")
    >>> ax = qc_covariate_plot(umis, bounds=(1000, None))
    >>> ax.get_xlabel()
    'response_n_umis'
    """
    name = values.name if isinstance(values, pd.Series) else None
    v = np.asarray(values, dtype=float).ravel()
    mask = np.isfinite(v) & ((v > 0) if log else True)
    if not mask.any():
        raise ValueError("values hold no finite" + (" positive" if log else "") + " value to plot.")
    rem = np.zeros(v.size, dtype=bool) if removed is None else np.asarray(removed, dtype=bool)
    if rem.shape != v.shape:
        raise ValueError(f"removed has {rem.size} entries for {v.size} values.")
    ax = _get_ax(ax)
    lo, hi = v[mask].min(), v[mask].max()
    log = log and hi >= 10 * lo  # a log axis over less than a decade only clutters the ticks
    if not log:
        mask = np.isfinite(v)
    if log:
        edges = (
            np.geomspace(lo * 0.999, hi * 1.001, bins + 1)
            if hi > lo
            else np.array([lo * 0.9, lo * 1.1])
        )
    else:
        edges = np.histogram_bin_edges(v[mask], bins=bins)
    if removed is None:
        ax.hist(v[mask], bins=edges, color="C0", label=f"cells ({int(mask.sum()):,})")
    else:
        ax.hist(
            [v[mask & ~rem], v[mask & rem]],
            bins=edges,
            stacked=True,
            color=["C0", "C3"],
            label=[
                f"pass ({int((mask & ~rem).sum()):,})",
                f"removed ({int((mask & rem).sum()):,})",
            ],
        )
    if bounds is not None:
        for bound, side in zip(bounds, ("lower", "upper"), strict=True):
            if bound is not None and np.isfinite(bound):
                ax.axvline(
                    bound,
                    color="0.2",
                    linestyle="--",
                    linewidth=1.2,
                    label=f"{side} bound {bound:.4g}",
                )
    if log:
        from matplotlib.ticker import NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide over few decades
    ax.set_xlabel(xlabel if xlabel is not None else (str(name) if name is not None else "value"))
    ax.set_ylabel("cells")
    ax.legend(frameon=False, fontsize="x-small")
    return ax


def qc_figure(
    qc: pd.DataFrame,
    covariates: pd.DataFrame | None = None,
    bounds: Mapping[str, tuple] | None = None,
    *,
    pass_col: str = "pass_qc",
    log: bool | Mapping[str, bool] = True,
    figsize: tuple[float, float] | None = None,
    title: str | None = "Cellwise QC",
):
    """The cellwise QC: the cells each rule removes and the covariates with their bounds.

    Parameters
    ----------
    qc : pandas.DataFrame
        The QC frame (see :func:`qc_removal_plot`).
    covariates : pandas.DataFrame, default=None
        Per-cell covariates indexed like ``qc`` (e.g. ``adata.obsm["covar"]``); one histogram per
        column named in ``bounds`` (see :func:`qc_covariate_plot`), the removed cells stacked.
    bounds : dict, default=None
        ``{column: (lower, upper)}`` of the covariates to draw, ``None`` for an open side.
        Without ``bounds``, every column of ``covariates`` is drawn without bounds.
    pass_col : str, default="pass_qc"
        Column of ``qc`` saying whether a cell passes.
    log : bool or dict, default=True
        Log scale of the histograms, one for all or ``{column: bool}`` (default True).
    figsize : (float, float), default=None
        Default about 4 inches per panel by 3.6 inches.
    title : str or None
        Title of the figure.

    Returns
    -------
    matplotlib.figure.Figure
        The removal bars first, then one axes per covariate.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from sklcrt.plotting import qc_figure
    >>> umis = np.random.default_rng(0).lognormal(8, 0.5, 200)
    >>> qc = pd.DataFrame({"low_umis": umis < 1500})
    >>> qc["pass_qc"] = ~qc["low_umis"]
    >>> fig = qc_figure(qc, pd.DataFrame({"n_umis": umis}), {"n_umis": (1500, None)})
    >>> len(fig.axes)
    2
    """
    plt = _pyplot()
    _, passed = _qc_rules(qc, pass_col)
    columns: list[str] = []
    if covariates is not None:
        if not isinstance(covariates, pd.DataFrame):
            raise TypeError(f"covariates must be a DataFrame, got {type(covariates).__name__}.")
        if len(covariates) != len(qc):
            raise ValueError(f"covariates has {len(covariates)} rows but qc has {len(qc)}.")
        columns = list(bounds) if bounds else [str(c) for c in covariates.columns]
        missing = [c for c in columns if c not in covariates.columns]
        if missing:
            raise ValueError(
                f"bounds name column(s) {missing} that covariates lack (columns: "
                f"{list(covariates.columns)})."
            )
    elif bounds:
        raise ValueError("bounds need covariates= (the values the bounds apply to).")
    n_panels = 1 + len(columns)
    ncols = min(n_panels, 3)
    nrows = -(-n_panels // ncols)
    if figsize is None:
        figsize = (max(4.2 * ncols, 6.0), 3.6 * nrows)
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, layout="constrained", squeeze=False)
    flat = list(axes.ravel())
    qc_removal_plot(qc, ax=flat[0], pass_col=pass_col)
    flat[0].set_title("cells removed by each rule", fontsize="medium")
    for ax, col in zip(flat[1:], columns, strict=False):
        use_log = log.get(col, True) if isinstance(log, Mapping) else bool(log)
        qc_covariate_plot(
            covariates[col], ax=ax, bounds=(bounds or {}).get(col), removed=~passed, log=use_log
        )
        ax.set_title(col, fontsize="medium")
    for ax in flat[n_panels:]:
        fig.delaxes(ax)
    if title:
        fig.suptitle(title)
    return fig
