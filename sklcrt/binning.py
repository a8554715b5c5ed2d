"""Binning of continuous values into ordinal bins (layer 1).

:func:`compute_bins` bins one vector; :class:`Binner` is the scikit-learn transformer around it,
binning every column of a 2-D array independently (like
``sklearn.preprocessing.KBinsDiscretizer(encode="ordinal")``). Both are used by
:class:`sklcrt.strata.StratumEncoder` for propensity and burden bins.

Edges that tie (repeated quantiles, constant values) collapse: the *effective* number of bins is
``unique(edges).size - 1`` (at least 1), and ids always run over ``0 .. n_effective_bins - 1``.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from sklcrt._validation import check_1d_numeric, check_clip_quantiles, check_int

__all__ = ["BIN_METHODS", "Binner", "compute_bins"]

#: ``method`` of :func:`compute_bins` and :class:`Binner` (and ``burden_bin_method``).
BIN_METHODS = ("quantile", "uniform")


def _check_method(method, name: str = "method") -> str:
    if not isinstance(method, str) or method not in BIN_METHODS:
        raise ValueError(f"{name} must be one of {list(BIN_METHODS)}, got {method!r}.")
    return method


# Up to this many inner edges, bins are assigned by comparisons instead of a binary search.
_COMPARE_EDGES = 32


def _edges(values: np.ndarray, n_bins: int, method: str, lo: float, hi: float) -> np.ndarray:
    """Unique, increasing bin edges for finite ``values``; always at least two entries."""
    if (lo, hi) != (0.0, 1.0):
        vmin, vmax = np.quantile(values, [lo, hi])
        values = np.clip(values, vmin, vmax)
    if method == "quantile":
        # Sorting first gives the same quantiles (they are order statistics of the same values)
        # and is several times faster than np.quantile's partitions for many edges.
        edges = np.quantile(np.sort(values), np.linspace(0.0, 1.0, n_bins + 1))
    else:
        edges = np.linspace(values.min(), values.max(), n_bins + 1)
    edges = np.unique(edges)
    if edges.size == 1:  # all values equal: one bin [v, v]
        edges = np.repeat(edges, 2)
    return edges.astype(np.float64, copy=False)


def _assign(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin ids in ``0 .. edges.size - 2``; values outside ``[edges[0], edges[-1]]`` go to the ends.

    Bins are half-open ``[e_k, e_{k+1})`` except the last, which holds its right edge (the maximum).
    """
    inner = edges[1:-1]
    if inner.size > _COMPARE_EDGES:
        return np.searchsorted(inner, values, side="right").astype(np.int64, copy=False)
    # Few edges: count the edges at or below each value (what searchsorted(side="right")
    # returns), one vectorised comparison per edge; a binary search per value on unsorted
    # values is several times slower (mispredicted branches).
    out = np.zeros(values.shape, dtype=np.int64)
    for edge in inner:
        out += values >= edge
    return out


def compute_bins(
    values,
    n_bins: int,
    method: str = "quantile",
    clip_quantiles: tuple[float, float] = (0.0, 1.0),
) -> tuple[np.ndarray, int, np.ndarray]:
    """Bin a 1-D numeric vector into at most ``n_bins`` ordinal bins.

    Parameters
    ----------
    values : array-like of shape (n_samples,)
        Finite numeric values (NaN or inf raise).
    n_bins : int
        Requested number of bins, ``>= 1``. Fewer bins result when edges tie.
    method : {"quantile", "uniform"}, default="quantile"
        ``"quantile"``: ``edges = quantile(values, linspace(0, 1, n_bins + 1))`` then
        ``unique(edges)``, so tied quantiles collapse bins. ``"uniform"``:
        ``edges = linspace(min, max, n_bins + 1)``.
    clip_quantiles : tuple (lo, hi), default=(0.0, 1.0)
        Values are first clipped to their ``lo`` and ``hi`` quantiles (``0 <= lo < hi <= 1``), so
        outliers do not stretch uniform bins; ``(0.0, 1.0)`` means no clipping. With
        ``method="quantile"`` clipping only merges the tails into the end bins.

    Returns
    -------
    bin_id : ndarray of shape (n_samples,), dtype int64
        Bin of each value, in ``[0, n_effective_bins - 1]``; the maximum lands in the last bin and
        all-equal values give all zeros.
    n_effective_bins : int
        ``edges.size - 1`` after tied edges collapse; 1 when all values are equal.
    edges : ndarray of shape (n_effective_bins + 1,), dtype float64
        Increasing edges (``[v, v]`` when all values equal ``v``). Bin ``k`` is
        ``[edges[k], edges[k + 1])``, the last bin is closed.

    Raises
    ------
    ValueError
        If ``n_bins < 1``, ``method`` is unknown, ``clip_quantiles`` is outside ``[0, 1]`` or has
        ``lo >= hi``, or ``values`` is empty or holds NaN / inf; the message names the argument.

    See Also
    --------
    Binner : the scikit-learn transformer around this function.

    Examples
    --------
    >>> from sklcrt.binning import compute_bins
    >>> ids, n_eff, edges = compute_bins([0.0, 1.0, 2.0, 3.0], n_bins=2)
    >>> ids.tolist(), n_eff, edges.tolist()
    ([0, 0, 1, 1], 2, [0.0, 1.5, 3.0])
    >>> compute_bins([5.0, 5.0, 5.0], n_bins=4)[:2]
    (array([0, 0, 0]), 1)
    """
    n_bins = check_int(n_bins, "n_bins", min_value=1)
    method = _check_method(method)
    lo, hi = check_clip_quantiles(clip_quantiles)
    values = check_1d_numeric(values, "values")
    if values.size == 0:
        raise ValueError("values is empty; compute_bins needs at least one value.")
    edges = _edges(values, n_bins, method, lo, hi)
    return _assign(values, edges), int(edges.size - 1), edges


class Binner(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Bin each feature into ordinal bins with quantile or uniform edges.

    A thin scikit-learn transformer around :func:`compute_bins`: every column of ``X`` is binned
    independently, like ``KBinsDiscretizer(encode="ordinal")``, but tied edges are collapsed with
    ``unique`` (no width tolerance, no warning) and optional quantile clipping comes first.

    Parameters
    ----------
    n_bins : int, default=5
        Requested number of bins per feature (``>= 1``).
    method : {"quantile", "uniform"}, default="quantile"
        How edges are placed, see :func:`compute_bins`.
    clip_quantiles : tuple (lo, hi), default=(0.0, 1.0)
        Clip each feature to its ``lo`` / ``hi`` quantiles before computing edges.

    Attributes
    ----------
    edges_ : list of ndarray
        Edges of each feature, ``n_bins_[j] + 1`` increasing values.
    n_bins_ : ndarray of shape (n_features,), dtype int64
        Effective number of bins of each feature (after tied edges collapse).
    n_features_in_ : int
        Number of features seen in :meth:`fit`.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen in :meth:`fit`, when ``X`` has string column names.

    See Also
    --------
    compute_bins : the function that bins one vector.
    sklearn.preprocessing.KBinsDiscretizer : the scikit-learn precedent.

    Examples
    --------
    >>> import numpy as np
    >>> from sklcrt.binning import Binner
    >>> X = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0], [3.0, 1.0]])
    >>> binner = Binner(n_bins=2).fit(X)
    >>> binner.n_bins_.tolist()
    [2, 1]
    >>> binner.transform([[-10.0, 0.0], [1.6, 5.0]]).tolist()
    [[0.0, 0.0], [1.0, 0.0]]
    """

    _parameter_constraints: dict = {
        "n_bins": [Interval(Integral, 1, None, closed="left")],
        "method": [StrOptions(set(BIN_METHODS))],
        "clip_quantiles": ["array-like"],
    }

    def __init__(
        self,
        n_bins: int = 5,
        method: str = "quantile",
        clip_quantiles: tuple[float, float] = (0.0, 1.0),
    ):
        self.n_bins = n_bins
        self.method = method
        self.clip_quantiles = clip_quantiles

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Learn the edges of every feature.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Finite numeric data.
        y : None
            Ignored.

        Returns
        -------
        self : Binner
            The fitted transformer.
        """
        lo, hi = check_clip_quantiles(self.clip_quantiles)
        X = validate_data(self, X, dtype=np.float64)
        self.edges_ = [_edges(X[:, j], self.n_bins, self.method, lo, hi) for j in range(X.shape[1])]
        self.n_bins_ = np.array([e.size - 1 for e in self.edges_], dtype=np.int64)
        return self

    def transform(self, X):
        """Map values to bin ids; values outside the fitted range go to the end bins.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Finite numeric data with the features seen in :meth:`fit`.

        Returns
        -------
        Xt : ndarray of shape (n_samples, n_features), dtype float64
            Bin ids ``0 .. n_bins_[j] - 1`` of each feature.
        """
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        Xt = np.empty_like(X)
        for j, edges in enumerate(self.edges_):
            Xt[:, j] = _assign(X[:, j], edges)
        return Xt
