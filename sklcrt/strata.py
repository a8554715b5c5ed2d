"""Strata of exchangeable cells: batch x propensity bin x burden bin (layer 2).

:class:`StratumEncoder` composes a batch label, quantile bins of the propensity ``p_hat`` and
(optionally) bins of a per-cell burden covariate into one integer stratum id per cell, which
:class:`sklcrt.samplers.StratifiedPermutationSampler` permutes within.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions

from sklcrt._validation import check_1d_numeric, check_clip_quantiles, check_same_length
from sklcrt.binning import BIN_METHODS, compute_bins

__all__ = ["StratumEncoder", "factorize_batch"]


def factorize_batch(batch, name: str = "batch") -> tuple[np.ndarray, np.ndarray]:
    """Factorize batch labels deterministically: codes follow the sorted unique labels.

    Parameters
    ----------
    batch : array-like of shape (n_samples,)
        Raw batch labels (strings, integers, categorical...). Missing labels raise.
    name : str, default="batch"
        Argument name used in error messages.

    Returns
    -------
    codes : ndarray of shape (n_samples,), dtype int64
        ``codes[i]`` is the position of ``batch[i]`` among the sorted unique labels.
    labels : ndarray
        The sorted unique labels.

    Examples
    --------
    >>> from sklcrt.strata import factorize_batch
    >>> codes, labels = factorize_batch(["b", "a", "b", "c"])
    >>> codes.tolist(), labels.tolist()
    ([1, 0, 1, 2], ['a', 'b', 'c'])
    """
    if isinstance(batch, pd.DataFrame):
        if batch.shape[1] != 1:
            raise ValueError(f"{name} must be 1-D (one label per cell), got shape {batch.shape}.")
        batch = batch.iloc[:, 0]
    if np.ndim(batch) != 1:
        raise ValueError(f"{name} must be 1-D (one label per cell), got shape {np.shape(batch)}.")
    if isinstance(batch, np.ndarray) and batch.dtype.kind in "iu" and batch.size:
        codes = _factorize_small_ints(batch)
        if codes is not None:
            return codes
    series = batch if isinstance(batch, pd.Series) else pd.Series(batch)
    codes, uniques = pd.factorize(series)  # order of appearance; missing -> -1
    if codes.size and codes.min() < 0:
        raise ValueError(
            f"{name} has {int(np.sum(codes < 0))} missing label(s); give every cell a label "
            "(sklcrt never imputes)."
        )
    values = list(uniques)
    try:
        order = sorted(range(len(values)), key=values.__getitem__)
    except TypeError as exc:
        raise ValueError(
            f"{name} labels cannot be sorted ({exc}); use labels of one type (e.g. all strings)."
        ) from None
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = np.arange(len(values))
    codes = rank[codes]
    labels = np.asarray(uniques)[order]
    return codes.astype(np.int64, copy=False), labels


def _factorize_small_ints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """What :func:`factorize_batch` returns, by counting, for non-negative integer codes.

    Stratum ids and pre-factorised batches are small non-negative integers, factorised once per
    unit; counting is several times faster than hashing. None when the values are not small.
    """
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi > 4 * values.size + 1024:
        return None
    present = np.bincount(values, minlength=hi + 1) > 0
    rank = np.cumsum(present) - 1
    return rank[values].astype(np.int64, copy=False), np.flatnonzero(present).astype(values.dtype)


# The last burden binned by _burden_bins: ((settings, a copy of the values), its bins).
_BURDEN_CACHE: list = []


def _burden_bins(burden: np.ndarray, n_bins: int, method: str, clip) -> tuple:
    """``compute_bins`` of the burden, reused while the same values come back.

    Every unit of a screen bins the same burden of every cell; the values are compared exactly
    with a copy of the last ones binned (one pass, far cheaper than the quantiles and the
    assignment), so the bins are always those of the values given.
    """
    settings = (int(n_bins), method, tuple(clip))
    if _BURDEN_CACHE:
        (cached_settings, values), result = _BURDEN_CACHE[0]
        if cached_settings == settings and np.array_equal(values, burden):
            bins, n_eff, edges = result
            return bins, n_eff, edges.copy()
    bins, n_eff, edges = compute_bins(burden, n_bins, method, clip)
    bins.setflags(write=False)  # shared by the units that reuse it
    _BURDEN_CACHE[:] = [((settings, burden.copy()), (bins, n_eff, edges.copy()))]
    return bins, n_eff, edges


class StratumEncoder(BaseEstimator):
    """Encode (batch, propensity bin, burden bin) into integer stratum ids.

    Propensity bins are quantile bins of ``p_hat`` computed over all cells (never per batch);
    burden bins use ``burden_bin_method``. With the *effective* bin counts ``nP`` (propensity) and
    ``nB`` (burden; ``nB = 1`` when ``burden`` is None) the raw stratum id of a cell is::

        batch_id * (nP * nB) + p_bin * nB + b_bin     (stratify_by_batch and batch given)
        p_bin * nB + b_bin                            (otherwise)

    where ``batch_id`` indexes the sorted unique batch labels. With burden off this is exactly the
    pre-burden id ``batch_id * nP + p_bin`` (or ``p_bin``), and refining by burden only splits
    strata: ``raw_id // nB`` is the pre-burden id.

    Parameters
    ----------
    n_bins : int, default=10
        Requested number of quantile bins of ``p_hat``.
    stratify_by_batch : bool, default=True
        Whether strata are nested in batches. Ignored (one batch) when ``batch`` is None.
    n_burden_bins : int, default=8
        Requested number of burden bins (used only when ``burden`` is given).
    burden_bin_method : {"quantile", "uniform"}, default="quantile"
        How burden edges are placed, see :func:`sklcrt.binning.compute_bins`.
    burden_clip_quantiles : tuple (lo, hi), default=(0.0, 1.0)
        Clip the burden to these quantiles before binning (mostly useful with ``"uniform"``).
    min_stratum_size : int, default=2
        Every raw stratum with fewer cells than this is pooled into one extra stratum whose id is
        ``(largest raw id) + 1``; the other strata keep their raw ids. ``1`` disables pooling.
        The pooled stratum itself may still be smaller than ``min_stratum_size``.
    batch_key : str or None, default="batch"
        Column of the raw covariates (``adata.obsm["covar"]``) with the batch labels, read by the
        runners when ``stratify_by_batch``; :meth:`fit` itself takes the labels as ``batch``.
    burden_key : str or None, default="log1p_non_ntc_guides_per_cell"
        Column of the raw covariates with the numeric burden, read raw by the runners (never from
        the encoded covariates); ``None`` turns burden bins off. :meth:`fit` itself takes the
        values as ``burden``; :class:`~sklcrt.crt.CRTTest` requires them exactly when
        ``burden_key`` is set, so a test never silently runs without the burden it was
        configured with. The string API's ``resampling_kwargs["burden_key"]`` defaults to
        ``None`` (burden bins off unless asked); an encoder built by hand bins the burden unless
        told otherwise.

    Attributes
    ----------
    strata_ : ndarray of shape (n_samples,), dtype int64
        Stratum id of every cell (after pooling).
    n_strata_ : int
        Number of distinct non-empty strata (after pooling).
    n_bins_ : int
        Effective number of propensity bins ``nP``.
    n_burden_bins_ : int
        Effective number of burden bins ``nB`` (1 when burden is off).
    n_batches_ : int
        Number of batches used (1 without batch stratification).
    batch_labels_ : ndarray or None
        Sorted unique batch labels (``batch_id`` indexes them), None without batch stratification.
    p_edges_ : ndarray
        Edges of the propensity bins.
    burden_edges_ : ndarray or None
        Edges of the burden bins, None when burden is off.
    pooled_stratum_id_ : int or None
        Id of the pooled stratum, None when no stratum was pooled.
    diagnostics_ : dict
        ``n_effective_p_bins``, ``n_effective_burden_bins``, ``burden_enabled``, ``n_batches``,
        ``n_raw_strata`` (non-empty strata before pooling), ``n_strata``, ``n_pooled_strata``
        (raw strata merged), ``n_pooled_cells``, ``pooled_stratum_id``, ``min_stratum_size`` and
        ``max_stratum_size`` (observed sizes after pooling), ``median_stratum_size``,
        ``n_singleton_strata``.

    See Also
    --------
    sklcrt.binning.compute_bins : the binning of ``p_hat`` and burden.
    sklcrt.samplers.StratifiedPermutationSampler : permutes treatment within these strata.

    Notes
    -----
    Recommended settings at high MOI (not the defaults): ``n_bins=20``, ``n_burden_bins=8``,
    burden ``log1p_non_ntc_guides_per_cell`` (or ``log1p_grna_n_nonzero_assign``),
    ``stratify_by_batch=True``, ``burden_bin_method="quantile"``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklcrt.strata import StratumEncoder
    >>> p_hat = np.array([0.1, 0.2, 0.3, 0.4, 0.1, 0.2, 0.3, 0.4])
    >>> batch = np.array(["a", "a", "a", "a", "b", "b", "b", "b"])
    >>> enc = StratumEncoder(n_bins=2, min_stratum_size=1)
    >>> enc.fit_transform(p_hat, batch=batch).tolist()
    [0, 0, 1, 1, 2, 2, 3, 3]
    >>> enc.diagnostics_["n_strata"]
    4
    """

    _parameter_constraints: dict = {
        "n_bins": [Interval(Integral, 1, None, closed="left")],
        "stratify_by_batch": ["boolean"],
        "n_burden_bins": [Interval(Integral, 1, None, closed="left")],
        "burden_bin_method": [StrOptions(set(BIN_METHODS))],
        "burden_clip_quantiles": ["array-like"],
        "min_stratum_size": [Interval(Integral, 1, None, closed="left")],
        "batch_key": [str, None],
        "burden_key": [str, None],
    }

    def __init__(
        self,
        n_bins: int = 10,
        stratify_by_batch: bool = True,
        n_burden_bins: int = 8,
        burden_bin_method: str = "quantile",
        burden_clip_quantiles: tuple[float, float] = (0.0, 1.0),
        min_stratum_size: int = 2,
        batch_key: str | None = "batch",
        burden_key: str | None = "log1p_non_ntc_guides_per_cell",
    ):
        self.n_bins = n_bins
        self.stratify_by_batch = stratify_by_batch
        self.n_burden_bins = n_burden_bins
        self.burden_bin_method = burden_bin_method
        self.burden_clip_quantiles = burden_clip_quantiles
        self.min_stratum_size = min_stratum_size
        self.batch_key = batch_key
        self.burden_key = burden_key

    def required_inputs(self) -> frozenset[str]:
        """The per-cell inputs :meth:`fit` uses with these settings.

        Returns
        -------
        frozenset of str
            ``"p_hat"`` when there are propensity bins (``n_bins > 1``), ``"batch"`` when strata
            are nested in batches, ``"burden"`` when ``burden_key`` is set.
        """
        needs = set()
        if self.n_bins != 1:
            needs.add("p_hat")
        if self.stratify_by_batch:
            needs.add("batch")
        if self.burden_key is not None:
            needs.add("burden")
        return frozenset(needs)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, p_hat, batch=None, burden=None) -> StratumEncoder:
        """Compute the stratum of every cell.

        Parameters
        ----------
        p_hat : array-like of shape (n_samples,)
            Propensity ``P(x = 1 | C)`` of every cell, in ``[0, 1]``.
        batch : array-like of shape (n_samples,), default=None
            Raw batch labels. None (or ``stratify_by_batch=False``) means one batch.
        burden : array-like of shape (n_samples,), default=None
            Raw numeric burden (e.g. ``log1p_non_ntc_guides_per_cell``). None turns burden bins
            off (``nB = 1``).

        Returns
        -------
        self : StratumEncoder
            The fitted encoder.
        """
        clip = check_clip_quantiles(self.burden_clip_quantiles, "burden_clip_quantiles")
        p_hat = check_1d_numeric(p_hat, "p_hat")
        if p_hat.size == 0:
            raise ValueError("p_hat is empty; StratumEncoder needs at least one cell.")
        if p_hat.min() < 0.0 or p_hat.max() > 1.0:
            raise ValueError(
                f"p_hat must lie in [0, 1] (propensities), got values in "
                f"[{p_hat.min():.4g}, {p_hat.max():.4g}]; pass predict_proba(...)[:, 1]."
            )
        use_batch = bool(self.stratify_by_batch) and batch is not None
        if batch is not None:
            check_same_length(p_hat=p_hat, batch=batch)
        if burden is not None:
            burden = check_1d_numeric(burden, "burden")
            check_same_length(p_hat=p_hat, burden=burden)

        if use_batch:
            batch_id, labels = factorize_batch(batch, "batch")
        else:
            batch_id, labels = np.zeros(p_hat.size, dtype=np.int64), None
        n_batches = int(labels.size) if labels is not None else 1

        p_bin, n_p, p_edges = compute_bins(p_hat, self.n_bins, "quantile")
        if burden is None:
            b_bin, n_b, b_edges = np.zeros(p_hat.size, dtype=np.int64), 1, None
        else:
            b_bin, n_b, b_edges = _burden_bins(
                burden, self.n_burden_bins, self.burden_bin_method, clip
            )
        raw = batch_id * (n_p * n_b) + p_bin * n_b + b_bin

        counts = np.bincount(raw)
        small = (counts > 0) & (counts < self.min_stratum_size)
        pooled_id = None
        strata = raw
        if small.any():
            pooled_id = int(raw.max()) + 1
            strata = raw.copy()
            strata[small[raw]] = pooled_id
        sizes = np.bincount(strata)
        sizes = sizes[sizes > 0]

        self.strata_ = strata
        self.n_strata_ = int(sizes.size)
        self.n_bins_ = int(n_p)
        self.n_burden_bins_ = int(n_b)
        self.n_batches_ = n_batches
        self.batch_labels_ = labels
        self.p_edges_ = p_edges
        self.burden_edges_ = b_edges
        self.pooled_stratum_id_ = pooled_id
        self.diagnostics_ = {
            "n_effective_p_bins": int(n_p),
            "n_effective_burden_bins": int(n_b),
            "burden_enabled": burden is not None,
            "n_batches": n_batches,
            "n_raw_strata": int(np.count_nonzero(counts)),
            "n_strata": int(sizes.size),
            "n_pooled_strata": int(np.count_nonzero(small)),
            "n_pooled_cells": int(counts[small].sum()),
            "pooled_stratum_id": pooled_id,
            "min_stratum_size": int(sizes.min()),
            "max_stratum_size": int(sizes.max()),
            "median_stratum_size": float(np.median(sizes)),
            "n_singleton_strata": int(np.count_nonzero(sizes == 1)),
        }
        return self

    def fit_transform(self, p_hat, batch=None, burden=None) -> np.ndarray:
        """Fit and return the stratum ids.

        Parameters
        ----------
        p_hat : array-like of shape (n_samples,)
            Propensities in ``[0, 1]``.
        batch : array-like of shape (n_samples,), default=None
            Raw batch labels.
        burden : array-like of shape (n_samples,), default=None
            Raw numeric burden; None turns burden bins off.

        Returns
        -------
        strata : ndarray of shape (n_samples,), dtype int64
            The stratum id of every cell (``strata_``).
        """
        return self.fit(p_hat, batch=batch, burden=burden).strata_
