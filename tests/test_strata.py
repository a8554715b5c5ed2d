"""Tests of sklcrt.strata.StratumEncoder."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone

from sklcrt.binning import compute_bins
from sklcrt.strata import StratumEncoder, factorize_batch


def make_inputs(n=3000, seed=0):
    rng = np.random.default_rng(seed)
    batch = rng.choice(["lane2", "lane10", "lane1"], size=n)
    burden = np.log1p(rng.poisson(6.0, size=n).astype(float))
    p_hat = 1 / (1 + np.exp(-(rng.normal(size=n) - 3 + 0.3 * burden)))
    return p_hat, batch, burden


def pool_reference(raw, min_size):
    """The pooling rule written out the slow way: small strata -> one stratum, id max(raw) + 1."""
    out = raw.copy()
    small = [s for s in np.unique(raw) if np.sum(raw == s) < min_size]
    for s in small:
        out[raw == s] = raw.max() + 1
    return out


# ---------------------------------------------------------------- ids


def test_ids_follow_the_formula_with_batch_and_burden():
    p_hat, batch, burden = make_inputs()
    enc = StratumEncoder(n_bins=6, n_burden_bins=4, min_stratum_size=1)
    strata = enc.fit_transform(p_hat, batch=batch, burden=burden)
    batch_id = np.searchsorted(np.array(sorted(set(batch))), batch)
    p_bin, n_p, _ = compute_bins(p_hat, 6)
    b_bin, n_b, _ = compute_bins(burden, 4)
    np.testing.assert_array_equal(strata, batch_id * (n_p * n_b) + p_bin * n_b + b_bin)
    assert strata.dtype == np.int64
    assert enc.n_bins_ == n_p and enc.n_burden_bins_ == n_b and enc.n_batches_ == 3
    assert enc.batch_labels_.tolist() == ["lane1", "lane10", "lane2"]
    d = enc.diagnostics_
    assert d["n_effective_p_bins"] == n_p and d["n_effective_burden_bins"] == n_b
    assert d["n_strata"] == enc.n_strata_ == np.unique(strata).size
    assert d["burden_enabled"] and d["n_pooled_cells"] == 0 and d["pooled_stratum_id"] is None


def test_ids_without_batch():
    p_hat, batch, burden = make_inputs()
    p_bin, n_p, _ = compute_bins(p_hat, 5)
    b_bin, n_b, _ = compute_bins(burden, 3, method="uniform")
    for enc, kw in [
        (StratumEncoder(n_bins=5, n_burden_bins=3, burden_bin_method="uniform"), {}),
        (
            StratumEncoder(
                n_bins=5, n_burden_bins=3, burden_bin_method="uniform", stratify_by_batch=False
            ),
            {"batch": batch},
        ),
    ]:
        strata = enc.fit_transform(p_hat, burden=burden, **kw)
        np.testing.assert_array_equal(strata, p_bin * n_b + b_bin)
        assert enc.n_batches_ == 1 and enc.batch_labels_ is None


@pytest.mark.parametrize("with_batch", [True, False])
@pytest.mark.parametrize("min_stratum_size", [1, 2, 40])
def test_burden_off_reproduces_pre_burden_ids_exactly(with_batch, min_stratum_size):
    p_hat, batch, _ = make_inputs(n=800, seed=3)
    enc = StratumEncoder(n_bins=12, min_stratum_size=min_stratum_size)
    strata = enc.fit_transform(p_hat, batch=batch if with_batch else None)
    p_bin, n_p, _ = compute_bins(p_hat, 12)
    old = p_bin.copy()
    if with_batch:
        batch_id = np.unique(batch, return_inverse=True)[1]
        old = batch_id * n_p + p_bin
    np.testing.assert_array_equal(strata, pool_reference(old, min_stratum_size))
    assert enc.n_burden_bins_ == 1 and enc.burden_edges_ is None
    assert enc.diagnostics_["n_effective_burden_bins"] == 1
    assert not enc.diagnostics_["burden_enabled"]


def test_burden_refines_the_pre_burden_strata():
    p_hat, batch, burden = make_inputs()
    enc = StratumEncoder(n_bins=8, n_burden_bins=5, min_stratum_size=1)
    with_burden = enc.fit_transform(p_hat, batch=batch, burden=burden)
    without = clone(enc).fit_transform(p_hat, batch=batch)
    np.testing.assert_array_equal(with_burden // enc.n_burden_bins_, without)


def test_more_strata_with_burden_than_without():
    p_hat, batch, burden = make_inputs()
    enc = StratumEncoder(n_bins=10, n_burden_bins=8)
    n_with = enc.fit(p_hat, batch=batch, burden=burden).n_strata_
    n_without = clone(enc).fit(p_hat, batch=batch).n_strata_
    assert enc.diagnostics_["n_effective_burden_bins"] > 1
    assert n_with > n_without


def test_continuous_burden_gives_requested_bins():
    p_hat, batch, _ = make_inputs()
    burden = np.random.default_rng(5).gamma(2.0, size=p_hat.size)
    enc = StratumEncoder(n_bins=4, n_burden_bins=8).fit(p_hat, batch=batch, burden=burden)
    assert enc.n_burden_bins_ == 8
    assert enc.n_strata_ == 3 * 4 * 8


# ---------------------------------------------------------------- batch factorization


def test_batch_factorization_is_sorted_and_order_independent():
    codes, labels = factorize_batch(["c", "a", "b", "a"])
    assert codes.tolist() == [2, 0, 1, 0] and labels.tolist() == ["a", "b", "c"]
    p_hat, batch, burden = make_inputs(n=500)
    perm = np.random.default_rng(0).permutation(500)
    enc = StratumEncoder(n_bins=4, min_stratum_size=1)
    a = enc.fit_transform(p_hat, batch=batch)
    b = clone(enc).fit_transform(p_hat[perm], batch=batch[perm])
    np.testing.assert_array_equal(a[perm], b)


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.integers(0, 3000), min_size=1, max_size=300),
    dtype=st.sampled_from([np.int64, np.int32, np.uint16]),
)
def test_integer_factorization_matches_the_general_path(values, dtype):
    # Small non-negative integers are factorised by counting; same codes and labels as pandas.
    arr = np.array(values, dtype=dtype)
    codes, labels = factorize_batch(arr)
    ref_codes, ref_labels = factorize_batch(pd.Series(arr))
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_array_equal(labels, ref_labels)
    assert codes.dtype == ref_codes.dtype and labels.dtype == ref_labels.dtype


@pytest.mark.parametrize(
    "batch",
    [
        np.array([10, 2, 2, 10]),
        np.array([2**40, -3, -3, 2**40]),
        pd.Series(["y", "x", "x", "y"]),
        pd.Categorical(["y", "x", "x", "y"]),
        ["y", "x", "x", "y"],
        np.array(["y", "x", "x", "y"], dtype=object),
    ],
)
def test_batch_label_types(batch):
    enc = StratumEncoder(n_bins=1, min_stratum_size=1)
    strata = enc.fit_transform(np.full(4, 0.5), batch=batch)
    assert strata.tolist() == [1, 0, 0, 1]


def test_missing_batch_labels_raise():
    with pytest.raises(ValueError, match="batch.*missing"):
        StratumEncoder().fit(np.full(3, 0.5), batch=pd.Series(["a", None, "b"]))
    with pytest.raises(ValueError, match="batch"):
        StratumEncoder().fit(np.full(3, 0.5), batch=np.array([1.0, np.nan, 2.0]))


def test_mixed_type_batch_labels_raise():
    with pytest.raises(ValueError, match="batch"):
        StratumEncoder().fit(np.full(3, 0.5), batch=pd.Series(["a", 1, "b"], dtype=object))


# ---------------------------------------------------------------- pooling


def test_small_strata_are_pooled_into_one_extra_stratum():
    low, high = [0.10, 0.11, 0.12, 0.13, 0.14], [0.80, 0.81, 0.82, 0.83, 0.84]
    p_hat = np.array(low + high + [0.125, 0.81, 0.82, 0.83])
    batch = np.array(["a"] * 10 + ["b"] * 4)
    p_bin, n_p, _ = compute_bins(p_hat, 2)
    raw = (batch == "b") * n_p + p_bin
    # median 0.805: batch a has 6 + 4 cells, batch b has 1 + 3 cells; raw ids 0, 1, 2, 3
    assert n_p == 2 and np.bincount(raw).tolist() == [6, 4, 1, 3]
    enc = StratumEncoder(n_bins=2, min_stratum_size=4)
    strata = enc.fit_transform(p_hat, batch=batch)
    # strata 2 and 3 (batch b) are pooled into id max(raw) + 1 = 4, although 3 is itself pooled
    np.testing.assert_array_equal(strata, np.where(raw >= 2, 4, raw))
    d = enc.diagnostics_
    assert enc.pooled_stratum_id_ == d["pooled_stratum_id"] == 4
    assert d["n_pooled_strata"] == 2 and d["n_pooled_cells"] == 4
    assert d["n_raw_strata"] == 4 and d["n_strata"] == enc.n_strata_ == 3
    assert d["min_stratum_size"] == 4 and d["max_stratum_size"] == 6


def test_everything_pooled_when_all_strata_are_small():
    p_hat = np.linspace(0.1, 0.9, 10)
    enc = StratumEncoder(n_bins=10, min_stratum_size=5)
    strata = enc.fit_transform(p_hat)
    assert np.unique(strata).tolist() == [10] and enc.n_strata_ == 1
    assert enc.diagnostics_["n_pooled_cells"] == 10


def test_min_stratum_size_one_disables_pooling():
    p_hat = np.linspace(0.1, 0.9, 10)
    enc = StratumEncoder(n_bins=10, min_stratum_size=1)
    assert enc.fit_transform(p_hat).tolist() == list(range(10))
    assert enc.pooled_stratum_id_ is None and enc.diagnostics_["n_singleton_strata"] == 10


def test_diagnostics_keys():
    p_hat, batch, burden = make_inputs(n=400)
    d = StratumEncoder().fit(p_hat, batch=batch, burden=burden).diagnostics_
    for key in [
        "n_effective_p_bins",
        "n_effective_burden_bins",
        "n_strata",
        "n_batches",
        "n_pooled_cells",
        "n_pooled_strata",
        "min_stratum_size",
        "max_stratum_size",
        "n_raw_strata",
        "pooled_stratum_id",
    ]:
        assert key in d


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(batch=np.array(["a"] * 9)), "length mismatch"),
        (dict(burden=np.ones(11)), "length mismatch"),
        (dict(burden=np.array([1.0] * 9 + [np.nan])), "burden"),
        (dict(burden=np.array(["1"] * 10)), "burden.*numeric"),
        (dict(burden=pd.Series(["a"] * 10)), "burden.*numeric"),
    ],
)
def test_bad_batch_or_burden(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StratumEncoder().fit(np.full(10, 0.3), **kwargs)


@pytest.mark.parametrize(
    "p_hat", [[0.2, 1.2], [-0.1, 0.5], [0.2, np.nan], ["a", "b"], [], [[0.1, 0.2]] * 2]
)
def test_bad_p_hat(p_hat):
    with pytest.raises(ValueError, match="p_hat"):
        StratumEncoder().fit(p_hat)


@pytest.mark.parametrize(
    "params, name",
    [
        (dict(n_bins=0), "n_bins"),
        (dict(n_burden_bins=0), "n_burden_bins"),
        (dict(burden_bin_method="kmeans"), "burden_bin_method"),
        (dict(burden_clip_quantiles=(0.5, 0.2)), "burden_clip_quantiles"),
        (dict(min_stratum_size=0), "min_stratum_size"),
        (dict(stratify_by_batch="yes"), "stratify_by_batch"),
    ],
)
def test_bad_params(params, name):
    with pytest.raises(ValueError, match=name):
        StratumEncoder(**params).fit(np.linspace(0, 1, 10), burden=np.arange(10.0))


def test_get_params_and_clone():
    enc = StratumEncoder(n_bins=20, n_burden_bins=8, burden_bin_method="uniform")
    assert clone(enc).get_params() == enc.get_params()
    assert enc.set_params(n_burden_bins=3).n_burden_bins == 3


# ---------------------------------------------------------------- properties


@st.composite
def encoder_inputs(draw):
    n = draw(st.integers(1, 80))
    p_hat = np.array(draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n)))
    batch = np.array(draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=n, max_size=n)))
    burden = np.array(
        draw(
            st.lists(
                st.one_of(st.floats(-50, 50), st.sampled_from([0.0, 1.0, 2.0])),
                min_size=n,
                max_size=n,
            )
        )
    )
    return p_hat, batch, burden


@settings(max_examples=120, deadline=None)
@given(
    inputs=encoder_inputs(),
    n_bins=st.integers(1, 12),
    n_burden_bins=st.integers(1, 6),
    method=st.sampled_from(["quantile", "uniform"]),
    min_size=st.integers(1, 6),
    use_burden=st.booleans(),
)
def test_stratum_properties(inputs, n_bins, n_burden_bins, method, min_size, use_burden):
    p_hat, batch, burden = inputs
    burden = burden if use_burden else None
    enc = StratumEncoder(
        n_bins=n_bins,
        n_burden_bins=n_burden_bins,
        burden_bin_method=method,
        min_stratum_size=min_size,
    )
    strata = enc.fit_transform(p_hat, batch=batch, burden=burden)
    raw = StratumEncoder(**{**enc.get_params(), "min_stratum_size": 1}).fit_transform(
        p_hat, batch=batch, burden=burden
    )
    n_p, n_b, n_batch = enc.n_bins_, enc.n_burden_bins_, enc.n_batches_
    assert 1 <= n_p <= n_bins and 1 <= n_b <= (n_burden_bins if use_burden else 1)
    assert n_batch == np.unique(batch).size
    assert raw.min() >= 0 and raw.max() < n_batch * n_p * n_b
    # ids decompose into (batch, propensity bin, burden bin) consistently with each part
    np.testing.assert_array_equal(raw // (n_p * n_b), np.unique(batch, return_inverse=True)[1])
    np.testing.assert_array_equal((raw // n_b) % n_p, compute_bins(p_hat, n_bins)[0])
    # pooling: the documented rule, and every kept stratum is large enough
    np.testing.assert_array_equal(strata, pool_reference(raw, min_size))
    sizes = pd.Series(strata).value_counts()
    kept = sizes.drop(enc.pooled_stratum_id_) if enc.pooled_stratum_id_ is not None else sizes
    assert np.all(kept >= min_size)
    d = enc.diagnostics_
    assert d["n_strata"] == enc.n_strata_ == sizes.size
    assert d["n_pooled_cells"] == (
        0 if enc.pooled_stratum_id_ is None else sizes[enc.pooled_stratum_id_]
    )
    assert d["min_stratum_size"] == sizes.min() and d["max_stratum_size"] == sizes.max()
    # burden only refines: without it, the unpooled ids are raw // n_b
    off = StratumEncoder(n_bins=n_bins, min_stratum_size=1).fit_transform(p_hat, batch=batch)
    np.testing.assert_array_equal(raw // n_b, off)
