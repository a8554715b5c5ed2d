import numpy as np
import scipy.sparse as sp

import sklcrt._binary
from sklcrt._binary import binary_tocsc, shared_ones


def test_binary_tocsc_is_the_canonical_csc_with_shared_ones(monkeypatch):
    # In a fresh buffer (scipy copies a view of less than half of it: then the data is owned).
    monkeypatch.setattr(sklcrt._binary, "_ONES", np.ones(0))
    rng = np.random.default_rng(0)
    R = sp.csr_matrix((rng.random((300, 2_000)) < 0.05).astype(np.float64))
    C = binary_tocsc(R)
    ref = R.tocsc()
    assert C.format == "csc" and C.has_canonical_format and C.dtype == np.float64
    np.testing.assert_array_equal(C.indptr, ref.indptr)
    np.testing.assert_array_equal(C.indices, ref.indices)
    assert np.all(C.data == 1.0) and not C.data.flags.writeable
    Y = rng.standard_normal((2_000, 3))
    np.testing.assert_array_equal(C @ Y, ref @ Y)  # the same sums, in the same order


def test_shared_ones_grow_and_stay_read_only(monkeypatch):
    monkeypatch.setattr(sklcrt._binary, "_ONES", np.ones(0))
    small, large = shared_ones(10), shared_ones(1_000_003)
    assert small.size == 10 and large.size == 1_000_003
    assert np.all(large == 1.0) and not large.flags.writeable
    assert np.shares_memory(shared_ones(900_000), large)
