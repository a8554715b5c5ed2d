"""0/1 sparse matrices (resamples): one shared buffer of ones as their data, and conversions
that move only their pattern.

A resample matrix's stored values are all 1, so a fresh float64 array of ones per matrix (8
bytes per entry: a pass and page faults) and a conversion that scatters those values along
with the indices are both wasted work.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

# Read-only; as many ones as the largest matrix so far (plus 1/8), memory that matrix needed
# anyway. (scipy copies a view of less than half of it: matrices that small own their data.)
_ONES = np.ones(0)


def shared_ones(n: int) -> np.ndarray:
    """A read-only view of ``n`` float64 ones, from one shared buffer grown as needed."""
    global _ONES
    if _ONES.size < n:
        _ONES = np.ones(n + n // 8)
        _ONES.flags.writeable = False
    return _ONES[:n]


def binary_tocsc(R: sp.csr_matrix) -> sp.csc_matrix:
    """Canonical CSC of a canonical CSR matrix whose stored values are all 1.

    Only the pattern is converted (scipy's conversion with one-byte values, about 25 % faster
    than with float64 ones); the result's data are :func:`shared_ones`.
    """
    pattern = sp.csr_matrix((np.ones(R.nnz, dtype=bool), R.indices, R.indptr), shape=R.shape)
    C = pattern.tocsc()
    out = sp.csc_matrix((shared_ones(C.nnz), C.indices, C.indptr), shape=R.shape)
    out.has_sorted_indices = True
    out.has_canonical_format = True
    return out
