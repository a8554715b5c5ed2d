"""The string API for resampling: ``resampling_method`` + ``resampling_kwargs`` -> objects.

Runners and the command line take resampling as a method name and a dict of options, the way
analysts configure screens; :func:`resolve_resampling` validates them and maps them onto a sampler
(:mod:`sklcrt.samplers`) and, for stratified permutation, a :class:`sklcrt.strata.StratumEncoder`.
"""

from __future__ import annotations

import importlib
import numbers
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sklcrt._choices import RESAMPLING_ALIASES, RESAMPLING_METHODS
from sklcrt._choices import SAMPLERS as _SAMPLER_PATHS
from sklcrt._validation import check_clip_quantiles
from sklcrt.binning import BIN_METHODS
from sklcrt.samplers import BaseSampler
from sklcrt.strata import StratumEncoder

__all__ = [
    "SAMPLERS",
    "DEFAULT_RESAMPLING_KWARGS",
    "RECOMMENDED_HIGH_MOI_KWARGS",
    "RESAMPLING_ALIASES",
    "RESAMPLING_METHODS",
    "ResamplingConfig",
    "resolve_resampling",
]

#: The sampler class behind each ``resampling_method`` (named in :mod:`sklcrt._choices`).
SAMPLERS: dict[str, type[BaseSampler]] = {
    name: getattr(importlib.import_module(path.split(":")[0]), path.split(":")[1])
    for name, path in _SAMPLER_PATHS.items()
}

#: Defaults of every ``resampling_kwargs`` key (burden bins off: ``burden_key=None``).
DEFAULT_RESAMPLING_KWARGS: dict[str, Any] = dict(
    n_bins=10,
    stratify_by_batch=True,
    batch_key="batch",
    burden_key=None,
    n_burden_bins=8,
    burden_bin_method="quantile",
    burden_clip_quantiles=(0.0, 1.0),
    min_stratum_size=2,
)

#: Recommended ``resampling_kwargs`` for high-MOI screens with
#: ``resampling_method="stratified_perm"`` (documented, not the defaults).
#: ``"log1p_grna_n_nonzero_assign"`` is an equally good ``burden_key``.
RECOMMENDED_HIGH_MOI_KWARGS: dict[str, Any] = dict(
    n_bins=20,
    n_burden_bins=8,
    burden_key="log1p_non_ntc_guides_per_cell",
    stratify_by_batch=True,
    burden_bin_method="quantile",
)


@dataclass(frozen=True)
class ResamplingConfig:
    """The resolved resampling: what to build, and which covariate columns feed it.

    Attributes
    ----------
    method : str
        Canonical method name, one of :data:`RESAMPLING_METHODS` (``"crt"`` resolves to
        ``"bernoulli_index"``).
    sampler : BaseSampler
        An unfitted sampler instance.
    encoder : StratumEncoder or None
        An unfitted encoder for ``"stratified_perm"``; None for ``"bernoulli_index"`` and
        ``"perm"``.
    batch_key : str or None
        Column of the raw covariates holding batch labels.
    burden_key : str or None
        Column of the raw covariates holding the numeric burden (None: burden bins off).
    stratify_by_batch : bool
        Whether strata are nested in batches.
    kwargs : dict
        The full resolved ``resampling_kwargs`` (defaults filled in).
    """

    method: str
    sampler: BaseSampler
    encoder: StratumEncoder | None
    batch_key: str | None
    burden_key: str | None
    stratify_by_batch: bool
    kwargs: dict = field(default_factory=dict)


def _valid_keys() -> str:
    return ", ".join(sorted(DEFAULT_RESAMPLING_KWARGS))


def _check_int_key(kwargs: dict, key: str, min_value: int) -> None:
    value = kwargs[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < min_value:
        raise ValueError(
            f"resampling_kwargs[{key!r}] must be an integer >= {min_value}, got {value!r}."
        )
    kwargs[key] = int(value)


def _check_key_name(kwargs: dict, key: str, allow_none: bool) -> None:
    value = kwargs[key]
    if value is None and allow_none:
        return
    if not isinstance(value, str) or not value:
        expected = "a column name (str) or None" if allow_none else "a column name (str)"
        raise ValueError(f"resampling_kwargs[{key!r}] must be {expected}, got {value!r}.")


def resolve_resampling(
    resampling_method: str = "bernoulli_index", resampling_kwargs: Mapping | None = None
) -> ResamplingConfig:
    """Validate ``resampling_method`` / ``resampling_kwargs`` and build the objects they name.

    Parameters
    ----------
    resampling_method : {"bernoulli_index", "stratified_perm", "perm", "crt"}, \
            default="bernoulli_index"
        ``"bernoulli_index"`` (alias ``"crt"``): classic CRT, ``x*_i ~ Bernoulli(p_hat_i)``
        (:class:`~sklcrt.samplers.BernoulliSampler`). ``"stratified_perm"``: permutation within
        (batch x propensity bin x burden bin) strata
        (:class:`~sklcrt.samplers.StratifiedPermutationSampler` + :class:`StratumEncoder`).
        ``"perm"``: permutation over all cells (:class:`~sklcrt.samplers.PermutationSampler`).
    resampling_kwargs : dict, default=None
        Options, missing ones taken from :data:`DEFAULT_RESAMPLING_KWARGS`:

        - ``n_bins`` (int >= 1, 10): propensity bins;
        - ``stratify_by_batch`` (bool, True): nest strata in batches;
        - ``batch_key`` (str, "batch"): raw covariate column of batch labels (may be None only
          when ``stratify_by_batch=False``);
        - ``burden_key`` (str or None, None): raw numeric covariate column of the burden; None
          turns burden bins off;
        - ``n_burden_bins`` (int >= 1, 8), ``burden_bin_method`` ("quantile" or "uniform"),
          ``burden_clip_quantiles`` ((lo, hi) with 0 <= lo < hi <= 1, (0.0, 1.0));
        - ``min_stratum_size`` (int >= 1, 2): smaller strata are pooled.

        The stratification keys are validated for every method but used only by
        ``"stratified_perm"``; a ``burden_key`` with another method warns that it is ignored.

    Returns
    -------
    ResamplingConfig
        Canonical method name, unfitted sampler and encoder, keys, full kwargs.

    Raises
    ------
    ValueError
        Unknown method, unknown key or bad value; the message names it and lists the valid ones.

    Notes
    -----
    Recommended for high-MOI screens (not the defaults): ``resampling_method="stratified_perm"``
    with ``n_bins=20``, ``n_burden_bins=8``, ``burden_key="log1p_non_ntc_guides_per_cell"``
    (or ``"log1p_grna_n_nonzero_assign"``), ``stratify_by_batch=True``,
    ``burden_bin_method="quantile"`` -- see :data:`RECOMMENDED_HIGH_MOI_KWARGS`.

    Examples
    --------
    >>> from sklcrt.resampling import resolve_resampling
    >>> cfg = resolve_resampling("crt")
    >>> cfg.method, type(cfg.sampler).__name__, cfg.encoder
    ('bernoulli_index', 'BernoulliSampler', None)
    >>> cfg = resolve_resampling(
    ...     "stratified_perm", {"n_bins": 20, "burden_key": "log1p_non_ntc_guides_per_cell"}
    ... )
    >>> cfg.encoder.n_bins, cfg.burden_key
    (20, 'log1p_non_ntc_guides_per_cell')
    """
    valid_methods = [*RESAMPLING_METHODS, *RESAMPLING_ALIASES]
    if not isinstance(resampling_method, str) or (
        resampling_method not in RESAMPLING_METHODS and resampling_method not in RESAMPLING_ALIASES
    ):
        raise ValueError(
            f"resampling_method must be one of {valid_methods}, got {resampling_method!r}."
        )
    method = RESAMPLING_ALIASES.get(resampling_method, resampling_method)

    if resampling_kwargs is None:
        resampling_kwargs = {}
    if not isinstance(resampling_kwargs, Mapping):
        raise ValueError(
            f"resampling_kwargs must be a dict (or None), got {type(resampling_kwargs).__name__}; "
            f"valid keys: {_valid_keys()}."
        )
    unknown = sorted(str(k) for k in resampling_kwargs if k not in DEFAULT_RESAMPLING_KWARGS)
    if unknown:
        raise ValueError(
            f"unknown resampling_kwargs key(s) {unknown}; valid keys: {_valid_keys()}."
        )
    kwargs = {**DEFAULT_RESAMPLING_KWARGS, **resampling_kwargs}

    _check_int_key(kwargs, "n_bins", 1)
    _check_int_key(kwargs, "n_burden_bins", 1)
    _check_int_key(kwargs, "min_stratum_size", 1)
    if not isinstance(kwargs["stratify_by_batch"], (bool, np.bool_)):
        raise ValueError(
            "resampling_kwargs['stratify_by_batch'] must be True or False, "
            f"got {kwargs['stratify_by_batch']!r}."
        )
    kwargs["stratify_by_batch"] = bool(kwargs["stratify_by_batch"])
    _check_key_name(kwargs, "batch_key", allow_none=not kwargs["stratify_by_batch"])
    _check_key_name(kwargs, "burden_key", allow_none=True)
    if kwargs["burden_bin_method"] not in BIN_METHODS:
        raise ValueError(
            f"resampling_kwargs['burden_bin_method'] must be one of {list(BIN_METHODS)}, "
            f"got {kwargs['burden_bin_method']!r}."
        )
    kwargs["burden_clip_quantiles"] = check_clip_quantiles(
        kwargs["burden_clip_quantiles"], "resampling_kwargs['burden_clip_quantiles']"
    )

    sampler = SAMPLERS[method]()
    encoder = None
    if "strata" in sampler.required_inputs():
        encoder = StratumEncoder(
            n_bins=kwargs["n_bins"],
            stratify_by_batch=kwargs["stratify_by_batch"],
            n_burden_bins=kwargs["n_burden_bins"],
            burden_bin_method=kwargs["burden_bin_method"],
            burden_clip_quantiles=kwargs["burden_clip_quantiles"],
            min_stratum_size=kwargs["min_stratum_size"],
            batch_key=kwargs["batch_key"],
            burden_key=kwargs["burden_key"],
        )
    elif kwargs["burden_key"] is not None:
        warnings.warn(
            f"resampling_kwargs['burden_key']={kwargs['burden_key']!r} is ignored by "
            f"resampling_method={resampling_method!r}, which uses no strata; burden bins need "
            "resampling_method='stratified_perm'.",
            UserWarning,
            stacklevel=2,
        )
    return ResamplingConfig(
        method=method,
        sampler=sampler,
        encoder=encoder,
        batch_key=kwargs["batch_key"],
        burden_key=kwargs["burden_key"],
        stratify_by_batch=kwargs["stratify_by_batch"],
        kwargs=kwargs,
    )
