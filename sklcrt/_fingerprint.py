"""Cheap content fingerprints of arrays, sparse matrices and frames.

A fingerprint tells whether two inputs are the same data without hashing every byte: it hashes
the shape and the row and column sums (numbers) or the values (text). Other data (another screen,
reordered or rescaled cells, other responses) change them except by coincidence; the storage
(dense or sparse, CSR or CSC, int or float) does not. The cost is one pass of additions, so a run
can fingerprint its inputs, and a test its covariates for every unit.
"""

from __future__ import annotations

import hashlib
import weakref

import numpy as np
import pandas as pd
import scipy.sparse as sp


def _sums(matrix) -> bytes:
    """Row and column sums, rounded to float32 so that the order of the additions (CSR or CSC,
    int or float storage) does not change them."""
    # Summed in float64 whatever the storage: float32 sums of 100,000 values depend on their
    # order (and scipy's sparse sum(dtype=) still adds in the matrix's dtype).
    if matrix.dtype != np.float64:
        matrix = matrix.astype(np.float64)
    rows = np.asarray(matrix.sum(axis=1)).ravel().astype(np.float32)
    cols = np.asarray(matrix.sum(axis=0)).ravel().astype(np.float32)
    return rows.tobytes() + cols.tobytes()


def _update(h, obj) -> None:
    if obj is None:
        h.update(b"none")
    elif isinstance(obj, pd.DataFrame):
        h.update(repr((list(map(str, obj.columns)), [str(d) for d in obj.dtypes])).encode())
        _update(h, obj.index.to_numpy().astype(str))
        for column in obj.columns:
            values = obj[column].to_numpy()
            _update(h, values if values.dtype.kind in "biuf" else values.astype(str))
    elif sp.issparse(obj):
        h.update(repr(("matrix", obj.shape)).encode())
        h.update(_sums(obj))
    else:
        arr = np.asarray(obj)
        if arr.dtype.kind in "biuf":
            arr2 = arr.reshape(arr.shape[0], -1) if arr.ndim else arr.reshape(1, 1)
            h.update(repr(("matrix", arr.shape)).encode())
            h.update(_sums(arr2.astype(np.float64, copy=False)))
        else:
            h.update(repr(("values", arr.shape)).encode())
            h.update("\x1f".join(map(str, np.ravel(arr))).encode())


def content_fingerprint(*objects) -> str:
    """A short hex fingerprint of the given arrays, sparse matrices, frames or ``None``.

    Parameters
    ----------
    *objects
        The inputs, in order.

    Returns
    -------
    str
        32 hex characters; equal inputs give equal fingerprints.
    """
    h = hashlib.blake2b(digest_size=16)
    for obj in objects:
        _update(h, obj)
    return h.hexdigest()


# Fingerprints of arrays that are fingerprinted again and again (a screen's covariates, once per
# unit), keyed by identity while the array lives.
_CACHE: dict[int, tuple[weakref.ref, str]] = {}


def array_fingerprint(arr: np.ndarray) -> str:
    """:func:`content_fingerprint` of one array, remembered while the array lives.

    Parameters
    ----------
    arr : ndarray or sparse matrix
        An array that is not changed in place while it is in use (a screen's covariates or
        responses, fingerprinted by every runner call that reuses a fitted null model).

    Returns
    -------
    str
    """
    key = id(arr)
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is arr:
        return hit[1]
    fp = content_fingerprint(arr)
    try:
        _CACHE[key] = (weakref.ref(arr, lambda _, key=key: _CACHE.pop(key, None)), fp)
    except TypeError:  # not weak-referenceable: not cached
        pass
    return fp
