"""Input checks shared by every layer.

Each check raises a ``ValueError`` (or ``TypeError``) whose message names the argument and says how
to fix it; nothing is silently coerced, dropped or imputed.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp


def check_1d_numeric(values, name: str, *, allow_nan: bool = False) -> np.ndarray:
    """Return ``values`` as a 1-D float64 array, or raise naming ``name``.

    Rejects non-numeric dtypes (strings, objects), more than one dimension, and NaN or inf
    (unless ``allow_nan``).
    """
    if isinstance(values, (pd.Series, pd.Index)):
        if not (
            pd.api.types.is_numeric_dtype(values.dtype) or pd.api.types.is_bool_dtype(values.dtype)
        ):
            raise ValueError(
                f"{name} must be numeric, got dtype {values.dtype}; pass a numeric column."
            )
        values = values.to_numpy()
    arr = np.asarray(values)
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}; pass a numeric array.")
    if arr.ndim != 1:
        arr = np.squeeze(arr)
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {np.shape(values)}.")
    arr = arr.astype(np.float64, copy=False)
    if not allow_nan and not np.all(np.isfinite(arr)):
        n_bad = int(np.sum(~np.isfinite(arr)))
        raise ValueError(
            f"{name} contains {n_bad} NaN or infinite value(s); remove or fill them first "
            "(sklcrt never imputes)."
        )
    return arr


def check_binary_treatment(x, name: str = "x") -> np.ndarray:
    """Return a 0/1 treatment vector as a boolean array, or raise naming ``name``."""
    if sp.issparse(x):
        x = x.toarray()
    if isinstance(x, (pd.Series, pd.DataFrame)):
        x = x.to_numpy()
    arr = np.asarray(x)
    arr = np.squeeze(arr) if arr.ndim > 1 else arr
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D 0/1 vector, got shape {np.shape(x)}.")
    if arr.dtype == bool:
        return arr
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must be a 0/1 vector, got dtype {arr.dtype}.")
    values = np.unique(arr)
    if not np.all(np.isin(values, (0, 1))):
        raise ValueError(
            f"{name} must be binary (0/1), got values {values[:5].tolist()}; "
            "threshold guide counts into an assignment first."
        )
    return arr.astype(bool)


def check_has_both_arms(x: np.ndarray, name: str = "x") -> None:
    """Raise if the binary treatment has no treated or no control cells."""
    n_treated = int(np.count_nonzero(x))
    if n_treated == 0:
        raise ValueError(f"{name} has no treated cells; a unit needs at least one treated cell.")
    if n_treated == x.size:
        raise ValueError(f"{name} has no control cells; every cell is treated.")


def check_same_length(**arrays) -> int:
    """Raise if the given arrays (``None`` skipped) do not share their first dimension."""
    lengths = {
        k: (v.shape[0] if hasattr(v, "shape") else len(v))
        for k, v in arrays.items()
        if v is not None
    }
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{k}: {n}" for k, n in lengths.items())
        raise ValueError(f"length mismatch, every input needs one row per cell ({detail}).")
    return next(iter(lengths.values())) if lengths else 0


def check_int(value, name: str, *, min_value: int | None = None) -> int:
    """Return ``value`` as an int, or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}.")
    if min_value is not None and value < min_value:
        raise ValueError(f"{name} must be >= {min_value}, got {value}.")
    return int(value)


def ntc_set(ntc_labels) -> frozenset:
    """The non-targeting labels, lower-cased and stripped, as a set."""
    if isinstance(ntc_labels, str):
        ntc_labels = (ntc_labels,)
    if ntc_labels is None:
        ntc_labels = ()
    return frozenset(str(label).strip().lower() for label in ntc_labels)


def missing_key_error(container: str, key, available, hint: str = "") -> ValueError:
    """The error for a key missing from ``adata.<container>``, listing the keys there."""
    keys = sorted(map(str, available))
    return ValueError(
        f"adata.{container}[{key!r}] not found; adata.{container} has keys {keys}."
        + (f" {hint}" if hint else "")
    )


def check_aligned(index: pd.Index, obs_names: pd.Index, what: str) -> None:
    """Raise unless ``index`` is ``obs_names`` (saying whether rows are missing or reordered)."""
    if index.equals(obs_names):
        return
    if len(index) != len(obs_names):
        raise ValueError(f"{what} has {len(index)} rows but adata has {len(obs_names)} cells.")
    if set(map(str, index)) == set(map(str, obs_names)):
        raise ValueError(
            f"{what} has the cells of adata.obs_names in another order; reorder it with "
            f".loc[adata.obs_names]."
        )
    n_diff = int(np.sum(np.asarray(index.astype(str)) != np.asarray(obs_names.astype(str))))
    raise ValueError(
        f"{what} is not indexed by adata.obs_names ({n_diff} label(s) differ, e.g. "
        f"{index[0]!r} vs {obs_names[0]!r}); set its index to adata.obs_names."
    )


def check_clip_quantiles(clip_quantiles, name: str = "clip_quantiles") -> tuple[float, float]:
    """Return ``(lo, hi)`` as floats with ``0 <= lo < hi <= 1``, or raise naming ``name``."""
    try:
        lo, hi = clip_quantiles
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a pair (lo, hi) of quantiles with 0 <= lo < hi <= 1, "
            f"got {clip_quantiles!r}."
        ) from None
    for q in (lo, hi):
        if isinstance(q, bool) or not isinstance(q, numbers.Real) or not np.isfinite(q):
            raise ValueError(
                f"{name} must hold two real numbers in [0, 1], got {clip_quantiles!r}."
            )
    lo, hi = float(lo), float(hi)
    if not (0.0 <= lo < hi <= 1.0):
        raise ValueError(
            f"{name} must satisfy 0 <= lo < hi <= 1, got {clip_quantiles!r}; "
            "use (0.0, 1.0) for no clipping."
        )
    return lo, hi


def json_safe(value):
    """Parameters as values h5ad/h5mu can store (dicts with str keys, lists, str, numbers)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else list(value)
        return [json_safe(v) for v in items]
    if isinstance(value, np.ndarray):
        return [json_safe(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    return repr(value)  # estimators, generators...: their repr is what they ran with


#: The p-value column and its old spelling, read alike.
PVALUE_ALIASES = {"pvalue": "p_value", "p_value": "pvalue"}


def pvalue_column(frame: pd.DataFrame, col: str) -> str:
    """``col``, or its alias when the frame has only that (``pvalue`` / ``p_value``)."""
    if col not in frame.columns and PVALUE_ALIASES.get(col) in frame.columns:
        return PVALUE_ALIASES[col]
    return col


def covariate_frame(adata, covar_key: str) -> pd.DataFrame:
    """``adata.obsm[covar_key]``, checked to be a DataFrame indexed by ``adata.obs_names``
    (the raw covariates of the data contract); the caller checks that the key exists."""
    covar = adata.obsm[covar_key]
    if not isinstance(covar, pd.DataFrame):
        raise ValueError(
            f"adata.obsm[{covar_key!r}] must be a pandas DataFrame of raw covariates indexed by "
            f"adata.obs_names, got {type(covar).__name__}."
        )
    check_aligned(covar.index, adata.obs_names, f"adata.obsm[{covar_key!r}]")
    return covar
