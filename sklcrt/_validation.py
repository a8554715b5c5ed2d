"""Input checks shared by every layer.

Each check raises a ``ValueError`` (or ``TypeError``) whose message names the argument and says how
to fix it; nothing is silently coerced, dropped or imputed.
"""

from __future__ import annotations

import numbers

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
