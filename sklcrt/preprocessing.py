"""Response transforms and covariate encoding (numpy/pandas only, no AnnData).

Two small steps turn the raw inputs of a screen into what the statistics consume:

- :func:`clr_transform` makes program usages (e.g. cNMF) analysable by OLS: a centred log-ratio
  with a small quantile floor, so that zero usages stay finite.
- :func:`encode_covariates` turns the raw covariate frame (``adata.obsm["covar"]``) into the
  design matrix ``C``: an intercept, one-hot categoricals (first sorted level dropped) and z-scored
  numerics.
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

__all__ = ["clr_transform", "encode_covariates"]

INTERCEPT_NAME = "intercept"


def clr_transform(usage, floor_quantile: float = 0.01) -> np.ndarray:
    """Centred log-ratio transform of non-negative usages, with a small quantile floor.

    Parameters
    ----------
    usage : array-like or DataFrame of shape (n_cells, n_programs)
        Non-negative usages (e.g. cNMF program usages), one row per cell. Rows need not sum to
        one: the CLR is invariant to rescaling a row.
    floor_quantile : float, default=0.01
        Quantile, in ``[0, 1)``, of the *positive* entries of the whole matrix used as the floor.
        Every entry below the floor (zeros included) is raised to it before taking logs, so zero
        usages give finite values. ``0`` uses the smallest positive entry.

    Returns
    -------
    clr : ndarray of shape (n_cells, n_programs), float64
        ``log(u_ik) - mean_k log(u_ik)`` of the floored usages; every row sums to zero.

    Raises
    ------
    ValueError
        If ``usage`` is not 2-D, has negative, NaN or infinite entries, has no positive entry, or
        ``floor_quantile`` is outside ``[0, 1)``.

    Notes
    -----
    The floor is one number for the whole matrix (not per program), so the transform of a cell does
    not depend on which other programs are small in other cells. A row of all zeros becomes a row
    of zeros.

    Examples
    --------
    >>> import numpy as np
    >>> from sklcrt.preprocessing import clr_transform
    >>> out = clr_transform(np.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]]))
    >>> bool(np.all(np.isfinite(out))), np.allclose(out.sum(axis=1), 0.0)
    (True, True)
    """
    if (
        isinstance(floor_quantile, bool)
        or not isinstance(floor_quantile, numbers.Real)
        or not 0.0 <= float(floor_quantile) < 1.0
    ):
        raise ValueError(f"floor_quantile must be a number in [0, 1), got {floor_quantile!r}.")
    if isinstance(usage, pd.DataFrame):
        non_numeric = [
            c for c in usage.columns if not pd.api.types.is_numeric_dtype(usage[c].dtype)
        ]
        if non_numeric:
            raise ValueError(
                f"usage must be numeric; non-numeric column(s) {non_numeric[:5]} found."
            )
        arr = usage.to_numpy(dtype=np.float64)
    elif sp.issparse(usage):
        arr = usage.toarray().astype(np.float64, copy=False)
    else:
        arr = np.asarray(usage)
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"usage must be numeric, got dtype {arr.dtype}.")
        arr = arr.astype(np.float64)
    if arr.ndim != 2:
        raise ValueError(
            f"usage must be 2-D (cells x programs), got shape {np.shape(arr)}; "
            "reshape a single program with usage.reshape(-1, 1)."
        )
    if not np.all(np.isfinite(arr)):
        n_bad = int(np.sum(~np.isfinite(arr)))
        raise ValueError(
            f"usage contains {n_bad} NaN or infinite value(s); remove or fill them first "
            "(sklcrt never imputes)."
        )
    if np.any(arr < 0):
        raise ValueError(
            f"usage must be non-negative for a log-ratio, got minimum {arr.min():g}; pass raw "
            "usages, not already-transformed values."
        )
    positive = arr[arr > 0]
    if positive.size == 0:
        raise ValueError("usage has no positive entry; a log-ratio transform needs some.")
    floor = float(np.quantile(positive, floor_quantile))
    logs = np.log(np.maximum(arr, floor))
    return logs - logs.mean(axis=1, keepdims=True)


def _sorted_levels(values: np.ndarray) -> list:
    levels = list(pd.unique(values))
    try:
        return sorted(levels)
    except TypeError:  # mixed types: fall back to their string form
        return sorted(levels, key=str)


def _is_categorical_like(dtype) -> bool:
    return (
        isinstance(dtype, pd.CategoricalDtype)
        or pd.api.types.is_bool_dtype(dtype)
        or pd.api.types.is_object_dtype(dtype)
        or pd.api.types.is_string_dtype(dtype)
    )


def encode_covariates(
    covar_df: pd.DataFrame, columns: str | Sequence[str] | None = None
) -> tuple[np.ndarray, list[str]]:
    """Encode a raw covariate frame into a design matrix with an intercept first.

    Parameters
    ----------
    covar_df : DataFrame of shape (n_cells, n_columns)
        Raw per-cell covariates (``adata.obsm["covar"]``).
    columns : str or sequence of str, default=None
        Columns to encode, in this order. ``None`` encodes every column of ``covar_df``; an empty
        list gives the intercept alone.

    Returns
    -------
    C : ndarray of shape (n_cells, n_features), float64
        Column 0 is the intercept (all ones). Categorical, string/object and boolean columns are
        one-hot encoded over their observed levels, sorted, with the first level dropped; numeric
        columns are z-scored (mean 0, population standard deviation 1).
    names : list of str
        One name per column of ``C``: ``"intercept"``, ``"<column>_<level>"`` for one-hot columns,
        ``"<column>"`` for numerics.

    Raises
    ------
    ValueError
        If ``covar_df`` is not a DataFrame, a requested column does not exist (the message lists the
        available ones), a column has NaN/missing or infinite values (named), or a column has a
        dtype that is neither numeric nor categorical (e.g. datetime).

    Warns
    -----
    UserWarning
        When a column is constant (a numeric column with zero variance, or a categorical column
        with one observed level). It is dropped, naming it: a constant column lies in the span of
        the intercept, so dropping it does not change the model.

    Notes
    -----
    Integer-coded categories (e.g. replicate ``1, 2, 3``) are numeric to pandas and get z-scored;
    cast them with ``.astype("category")`` to one-hot encode them. Burden values used for
    stratification are read raw from the frame by the runners, never from ``C``.

    Examples
    --------
    >>> import pandas as pd
    >>> from sklcrt.preprocessing import encode_covariates
    >>> df = pd.DataFrame({"batch": ["b1", "b2", "b1", "b2"], "n_umis": [1.0, 2.0, 3.0, 4.0]})
    >>> C, names = encode_covariates(df)
    >>> names
    ['intercept', 'batch_b2', 'n_umis']
    >>> C.shape
    (4, 3)
    """
    if not isinstance(covar_df, pd.DataFrame):
        raise ValueError(
            f"covar_df must be a pandas DataFrame, got {type(covar_df).__name__}; "
            "wrap arrays with pd.DataFrame(values, columns=names)."
        )
    available = [str(c) for c in covar_df.columns]
    if columns is None:
        columns = list(covar_df.columns)
    elif isinstance(columns, str):
        columns = [columns]
    else:
        columns = list(columns)
    missing = [c for c in columns if c not in covar_df.columns]
    if missing:
        raise ValueError(
            f"covariate column(s) {missing} not found in the covariate frame; "
            f"available columns: {available}."
        )
    duplicated = sorted({str(c) for c in columns if columns.count(c) > 1})
    if duplicated:
        raise ValueError(f"covariate column(s) {duplicated} requested more than once.")
    if covar_df.columns.duplicated().any():
        dup = sorted({str(c) for c in covar_df.columns[covar_df.columns.duplicated()]})
        raise ValueError(f"covar_df has duplicated column name(s) {dup}; make them unique.")

    n = covar_df.shape[0]
    blocks = [np.ones((n, 1))]
    names = [INTERCEPT_NAME]
    dropped = []
    for col in columns:
        series = covar_df[col]
        n_missing = int(series.isna().sum())
        if n_missing:
            raise ValueError(
                f"covariate column {col!r} has {n_missing} NaN/missing value(s); remove those "
                "cells or fill the values first (sklcrt never imputes)."
            )
        dtype = series.dtype
        if _is_categorical_like(dtype):
            values = series.to_numpy()
            levels = _sorted_levels(values)
            if len(levels) < 2:
                dropped.append(col)
                continue
            for level in levels[1:]:
                blocks.append((values == level).astype(np.float64).reshape(-1, 1))
                names.append(f"{col}_{level}")
        elif pd.api.types.is_numeric_dtype(dtype):
            values = series.to_numpy(dtype=np.float64)
            if not np.all(np.isfinite(values)):
                raise ValueError(
                    f"covariate column {col!r} has infinite value(s); remove or fix them first."
                )
            sd = values.std()
            centred = values - values.mean()
            if sd == 0.0 or np.all(centred == 0.0):
                dropped.append(col)
                continue
            blocks.append((centred / sd).reshape(-1, 1))
            names.append(str(col))
        else:
            raise ValueError(
                f"covariate column {col!r} has dtype {dtype}, which is neither numeric nor "
                "categorical; convert it (e.g. .astype('category') or to a number)."
            )
    if dropped:
        warnings.warn(
            f"constant covariate column(s) {[str(c) for c in dropped]} dropped: they lie in the "
            "span of the intercept and change nothing in the model.",
            UserWarning,
            stacklevel=2,
        )
    C = np.ascontiguousarray(np.hstack(blocks), dtype=np.float64)
    return C, names
