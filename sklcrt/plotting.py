"""Diagnostic plots: QQ plots of p-values, calibration comparisons and volcano plots.

matplotlib is an optional dependency (``pip install sklcrt[plot]``); it is imported only when a
plot is drawn. Every plotting function takes ``ax=`` (a new figure is made when it is ``None``)
and returns the :class:`matplotlib.axes.Axes` it drew on, as scanpy's plots do.
:func:`qq_data` computes the numbers behind a QQ plot without matplotlib.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["qq_data", "qq_plot", "calibration_plot", "volcano_plot"]

_PLOT_EXTRA_HINT = (
    "sklcrt's plots need matplotlib; install it with `pip install sklcrt[plot]` "
    "(or `pip install matplotlib`)."
)


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


def qq_plot(
    pvalues,
    ax=None,
    labels=None,
    band: float | None = 0.95,
    *,
    by: str | None = None,
    pvalue_col: str = "p_value",
    max_points: int | None = 5000,
    diagonal: bool = True,
    legend: bool | None = None,
    band_kwargs: dict | None = None,
    **plot_kwargs,
):
    """QQ plot of p-values against the uniform distribution, on the -log10 scale.

    Several sets of p-values (methods, resampling settings, NTC ensembles) share one axes, each
    drawn as one line of markers; a grey pointwise ``band`` shows where the points of well
    calibrated p-values fall (see :func:`qq_data`).

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
        Column of the results DataFrame that names the method of each row (one line per value).
    pvalue_col : str, default="p_value"
        Column of the results DataFrame with the p-values.
    max_points : int or None, default=5000
        Draw at most about this many points per set, evenly spaced in log rank (every small
        p-value is kept); ``None`` draws all.
    diagonal : bool, default=True
        Draw the ``y = x`` reference line.
    legend : bool, default=None
        Draw a legend; ``None`` draws one when the sets have labels.
    band_kwargs : dict, default=None
        Keyword arguments of :meth:`~matplotlib.axes.Axes.fill_between` for the band.
    **plot_kwargs
        Passed to :meth:`~matplotlib.axes.Axes.plot` for every set (e.g. ``markersize``).

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on.

    See Also
    --------
    qq_data : The numbers behind the plot.
    calibration_plot : Fractions of small p-values, method by method.

    Examples
    --------
    >>> import numpy as np
    >>> from sklcrt.plotting import qq_plot
    >>> rng = np.random.default_rng(0)
    >>> ax = qq_plot({"calibrated": rng.uniform(size=500), "inflated": rng.beta(0.7, 1, 500)})
    >>> len(ax.get_lines())  # two sets of p-values and the diagonal
    3
    """
    sets = _pvalue_sets(pvalues, labels, by, pvalue_col)
    if band is not None:
        band = _check_level(band, "band")
    ax = _get_ax(ax)

    frames = [(label, qq_data(p, band=band, max_points=max_points)) for label, p in sets]
    if band is not None:
        style = {"color": "0.6", "alpha": 0.3, "linewidth": 0, "zorder": 0}
        style.update(band_kwargs or {})
        drawn: set[int] = set()
        for (_, p), (_, frame) in zip(sets, frames, strict=True):
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

    line_style = {"marker": ".", "linestyle": "none", "markersize": 4}
    line_style.update(plot_kwargs)
    for label, frame in frames:
        ax.plot(frame["expected"], frame["observed"], label=label, **line_style)

    if diagonal:
        top = max(float(frame["expected"].max()) for _, frame in frames)
        ax.plot([0.0, top], [0.0, top], color="0.3", linestyle="--", linewidth=1, zorder=1)

    ax.set_xlabel(r"Expected $-\log_{10}(p)$")
    ax.set_ylabel(r"Observed $-\log_{10}(p)$")
    has_labels = any(label is not None for label, _ in sets)
    if legend or (legend is None and has_labels):
        ax.legend(loc="upper left", frameon=False)
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
        if pvalue_col in data.columns:
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
            if pvalue_col not in value.columns:
                raise ValueError(
                    f"results of {method!r} have no {pvalue_col!r} column; set pvalue_col=."
                )
            value = value[pvalue_col]
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
    pvalue_col: str = "p_value",
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
    pvalue_col : str, default="p_value"
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


def volcano_plot(
    results: pd.DataFrame,
    ax=None,
    alpha: float = 0.1,
    *,
    effect_col: str = "effect",
    pvalue_col: str = "p_value",
    padj_col: str = "p_adj",
    label_top: int = 0,
    label_cols: Sequence[str] = ("unit", "response"),
    color: str = "0.6",
    highlight_color: str = "C3",
    **scatter_kwargs,
):
    """Volcano plot: effect size against -log10 p-value, discoveries highlighted.

    Parameters
    ----------
    results : pandas.DataFrame
        A results table (e.g. from :func:`sklcrt.runners.discovery_analysis`). Rows with a NaN
        effect or p-value (untested pairs) are not drawn.
    ax : matplotlib.axes.Axes, default=None
        Axes to draw on; ``None`` makes a new figure.
    alpha : float, default=0.1
        False discovery rate: a pair is highlighted when its Benjamini-Hochberg adjusted p-value
        (``padj_col``, computed over the drawn pairs when the column is absent) is at most
        ``alpha``.
    effect_col, pvalue_col, padj_col : str
        Columns with the effect size, the p-value and the adjusted p-value.
    label_top : int, default=0
        Annotate this many discoveries with the smallest p-values with ``label_cols``.
    label_cols : sequence of str, default=("unit", "response")
        Columns joined by ``":"`` for the annotations.
    color, highlight_color : str
        Colours of the other pairs and of the discoveries.
    **scatter_kwargs
        Passed to :meth:`~matplotlib.axes.Axes.scatter` (e.g. ``s``).

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on: two scatter collections (other pairs, discoveries) and, when there are
        discoveries, a dashed line at the largest significant p-value.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from sklcrt.plotting import volcano_plot
    >>> rng = np.random.default_rng(0)
    >>> results = pd.DataFrame({"effect": rng.normal(size=200), "p_value": rng.uniform(size=200)})
    >>> ax = volcano_plot(results)
    >>> len(ax.collections)
    2
    """
    if not isinstance(results, pd.DataFrame):
        raise TypeError(f"results must be a pandas DataFrame, got {type(results).__name__}.")
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

    style = {"s": 10, "linewidths": 0}
    style.update(scatter_kwargs)
    ax.scatter(effect[other], y[other], color=color, label="not significant", **style)
    ax.scatter(
        effect[significant],
        y[significant],
        color=highlight_color,
        label=f"FDR $\\leq$ {alpha:g} ({int(significant.sum())})",
        **style,
    )
    if significant.any():
        ax.axhline(y[significant].min(), color="0.3", linestyle="--", linewidth=1)
    ax.axvline(0.0, color="0.8", linewidth=1, zorder=0)
    if label_top and significant.any():
        cols = [c for c in label_cols if c in results.columns]
        order = np.flatnonzero(significant)
        order = order[np.argsort(p[order], kind="stable")][:label_top]
        for i in order:
            text = ":".join(str(results[c].iloc[i]) for c in cols) or str(results.index[i])
            ax.annotate(
                text,
                (effect[i], y[i]),
                fontsize="x-small",
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.set_xlabel("Effect" if effect_col == "effect" else effect_col)
    ax.set_ylabel(r"$-\log_{10}(p)$")
    ax.legend(frameon=False, loc="best")
    return ax
