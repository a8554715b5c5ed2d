"""Tests of sklcrt.binning: compute_bins and Binner."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklcrt.binning import Binner, compute_bins

# ---------------------------------------------------------------- compute_bins: basic behaviour


def test_quantile_edges_follow_the_specification():
    values = np.random.default_rng(0).normal(size=1001)
    ids, n_eff, edges = compute_bins(values, 4)
    np.testing.assert_array_equal(edges, np.quantile(values, np.linspace(0, 1, 5)))
    assert n_eff == 4
    assert ids.dtype == np.int64 and ids.shape == values.shape
    # continuous data: equal-frequency bins (within one cell of N / n_bins)
    np.testing.assert_allclose(np.bincount(ids), 1001 / 4, atol=1.5)
    assert ids[np.argmax(values)] == 3 and ids[np.argmin(values)] == 0


def test_uniform_edges_follow_the_specification():
    values = np.array([0.0, 0.5, 1.0, 9.0, 10.0])
    ids, n_eff, edges = compute_bins(values, 5, method="uniform")
    np.testing.assert_array_equal(edges, np.linspace(0, 10, 6))
    assert n_eff == 5
    assert ids.tolist() == [0, 0, 0, 4, 4]


def test_docstring_example():
    ids, n_eff, edges = compute_bins([0.0, 1.0, 2.0, 3.0], n_bins=2)
    assert ids.tolist() == [0, 0, 1, 1] and n_eff == 2 and edges.tolist() == [0.0, 1.5, 3.0]


def test_ties_collapse_quantile_bins():
    values = np.array([0.0] * 50 + [1.0] * 50)
    ids, n_eff, edges = compute_bins(values, 4)
    # quantiles 0, 0, 0.5, 1, 1 -> unique 0, 0.5, 1
    assert n_eff == 2 and edges.tolist() == [0.0, 0.5, 1.0]
    assert ids.tolist() == [0] * 50 + [1] * 50


def test_heavy_tie_collapses_to_fewer_bins_and_ids_stay_compact():
    rng = np.random.default_rng(1)
    values = np.concatenate([np.zeros(800), rng.uniform(1, 2, 200)])
    ids, n_eff, edges = compute_bins(values, 10)
    assert n_eff == edges.size - 1 < 10
    assert set(np.unique(ids)) <= set(range(n_eff))
    assert np.all(ids[values == 0] == 0)
    assert ids[np.argmax(values)] == n_eff - 1


@pytest.mark.parametrize("method", ["quantile", "uniform"])
@pytest.mark.parametrize("n_bins", [1, 3, 50])
def test_all_equal_values_give_one_bin(method, n_bins):
    ids, n_eff, edges = compute_bins(np.full(7, 2.5), n_bins, method=method)
    assert n_eff == 1
    assert ids.tolist() == [0] * 7
    assert edges.tolist() == [2.5, 2.5]


@pytest.mark.parametrize("method", ["quantile", "uniform"])
def test_one_bin_and_one_value(method):
    ids, n_eff, edges = compute_bins([3.0, 1.0, 2.0], 1, method=method)
    assert n_eff == 1 and ids.tolist() == [0, 0, 0] and edges.tolist() == [1.0, 3.0]
    ids, n_eff, _ = compute_bins([4.0], 5, method=method)
    assert n_eff == 1 and ids.tolist() == [0]


def test_integer_and_bool_values_are_accepted():
    ids, n_eff, _ = compute_bins(np.array([1, 2, 3, 4]), 2)
    assert n_eff == 2 and ids.tolist() == [0, 0, 1, 1]
    ids, n_eff, _ = compute_bins(np.array([True, False, True]), 2, method="uniform")
    assert n_eff == 2 and ids.tolist() == [1, 0, 1]
    # quantiles of (1, 0, 1) are 0, 1, 1: the tie collapses to one bin
    ids, n_eff, _ = compute_bins(np.array([True, False, True]), 2)
    assert n_eff == 1 and ids.tolist() == [0, 0, 0]


def test_uniform_with_outliers_needs_clipping():
    rng = np.random.default_rng(2)
    values = np.append(rng.normal(size=999), 1e6)
    ids, n_eff, _ = compute_bins(values, 5, method="uniform")
    # unclipped: the outlier stretches the range; all but one value in the first bin
    assert n_eff == 5 and np.bincount(ids, minlength=5).tolist() == [999, 0, 0, 0, 1]
    ids_c, n_eff_c, edges_c = compute_bins(values, 5, method="uniform", clip_quantiles=(0.01, 0.99))
    lo, hi = np.quantile(values, [0.01, 0.99])
    np.testing.assert_allclose(edges_c, np.linspace(lo, hi, 6))
    counts = np.bincount(ids_c, minlength=5)
    assert n_eff_c == 5 and np.all(counts > 40)
    assert ids_c[-1] == 4 and ids_c[np.argmin(values)] == 0


def test_quantile_with_clipping_merges_the_tails():
    values = np.arange(100, dtype=float)
    ids, n_eff, edges = compute_bins(values, 4, clip_quantiles=(0.1, 0.9))
    lo, hi = np.quantile(values, [0.1, 0.9])
    assert edges[0] == lo and edges[-1] == hi and n_eff == 4
    assert ids[0] == 0 and ids[-1] == 3
    # the clipped tails are ties at the end edges and all land in the end bins
    assert np.all(ids[values <= lo] == 0) and np.all(ids[values >= hi] == 3)


def test_maximum_lands_in_the_last_bin():
    values = np.array([0.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0])
    for method in ("quantile", "uniform"):
        ids, n_eff, _ = compute_bins(values, 3, method=method)
        assert np.all(ids[values == 3.0] == n_eff - 1)


# ---------------------------------------------------------------- compute_bins: bad input


@pytest.mark.parametrize("n_bins", [0, -3, 2.5, "4", True, None])
def test_bad_n_bins(n_bins):
    with pytest.raises(ValueError, match="n_bins"):
        compute_bins([1.0, 2.0], n_bins)


def test_bad_method():
    with pytest.raises(ValueError, match="method"):
        compute_bins([1.0, 2.0], 2, method="kmeans")


@pytest.mark.parametrize(
    "clip", [(-0.1, 1.0), (0.0, 1.1), (0.5, 0.5), (0.6, 0.4), (0.0,), "ab", None, (0, np.nan)]
)
def test_bad_clip_quantiles(clip):
    with pytest.raises(ValueError, match="clip_quantiles"):
        compute_bins([1.0, 2.0], 2, clip_quantiles=clip)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_values(bad):
    with pytest.raises(ValueError, match="values"):
        compute_bins([1.0, bad, 2.0], 2)


@pytest.mark.parametrize("values", [[], ["a", "b"], [[1.0, 2.0], [3.0, 4.0]]])
def test_empty_non_numeric_or_2d_values(values):
    with pytest.raises(ValueError, match="values"):
        compute_bins(values, 2)


# ---------------------------------------------------------------- compute_bins: properties

finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)
# values drawn from a small pool too, so that ties are common
value_arrays = st.one_of(
    arrays(np.float64, st.integers(1, 60), elements=finite),
    arrays(np.float64, st.integers(1, 60), elements=st.sampled_from([-1.0, 0.0, 0.5, 3.0])),
)
clips = st.one_of(
    st.just((0.0, 1.0)),
    st.tuples(st.floats(0.0, 0.45), st.floats(0.55, 1.0)),
)


@settings(max_examples=150, deadline=None)
@given(
    values=value_arrays,
    n_bins=st.integers(1, 25),
    method=st.sampled_from(["quantile", "uniform"]),
    clip=clips,
)
def test_compute_bins_properties(values, n_bins, method, clip):
    ids, n_eff, edges = compute_bins(values, n_bins, method=method, clip_quantiles=clip)
    assert ids.dtype == np.int64 and ids.shape == values.shape
    assert 1 <= n_eff <= n_bins
    assert edges.size == n_eff + 1
    assert np.all(np.diff(edges) > 0) or (n_eff == 1 and edges[0] == edges[1])
    assert ids.min() >= 0 and ids.max() <= n_eff - 1
    # ordinal: bins are monotone in the value
    order = np.argsort(values, kind="stable")
    assert np.all(np.diff(ids[order]) >= 0)
    assert np.all(ids[values == values.max()] == n_eff - 1)
    assert np.all(ids[values == values.min()] == 0)
    if np.all(values == values[0]):
        assert n_eff == 1 and np.all(ids == 0)
    # the transformer reproduces the function on its training data
    Xt = Binner(n_bins=n_bins, method=method, clip_quantiles=clip).fit_transform(values[:, None])
    np.testing.assert_array_equal(Xt[:, 0], ids)


@settings(max_examples=60, deadline=None)
@given(values=value_arrays, n_bins=st.integers(1, 25))
def test_quantile_bins_are_near_equal_frequency_without_ties(values, n_bins):
    values = np.unique(values)
    ids, n_eff, _ = compute_bins(values, n_bins)
    if values.size >= n_bins:
        # every bin of distinct values holds about N / n_bins of them
        counts = np.bincount(ids, minlength=n_eff)
        assert counts.max() <= np.ceil(values.size / n_bins) + 1


# ---------------------------------------------------------------- Binner


# Every scikit-learn check applies to Binner: nothing is expected to fail.
EXPECTED_FAILED_CHECKS: dict[str, str] = {}


@parametrize_with_checks(
    [Binner(), Binner(n_bins=3, method="uniform", clip_quantiles=(0.1, 0.9))],
    expected_failed_checks=lambda estimator: EXPECTED_FAILED_CHECKS,
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


def test_binner_fitted_attributes_and_transform():
    X = np.column_stack([np.arange(10.0), np.full(10, 4.0), np.r_[np.zeros(8), 1.0, 2.0]])
    binner = Binner(n_bins=5).fit(X)
    assert binner.n_bins_.tolist() == [5, 1, 2]
    assert binner.n_bins_.dtype == np.int64
    assert isinstance(binner.edges_, list) and len(binner.edges_) == 3
    for j in range(3):
        ids, n_eff, edges = compute_bins(X[:, j], 5)
        np.testing.assert_array_equal(binner.edges_[j], edges)
        assert binner.n_bins_[j] == n_eff
    Xt = binner.transform(X)
    assert Xt.dtype == np.float64
    assert Xt[:, 1].tolist() == [0.0] * 10


def test_binner_outside_range_goes_to_end_bins():
    binner = Binner(n_bins=4, method="uniform").fit(np.array([[0.0], [4.0]]))
    Xt = binner.transform(np.array([[-100.0], [0.0], [1.0], [3.99], [4.0], [1e9]]))
    assert Xt[:, 0].tolist() == [0.0, 0.0, 1.0, 3.0, 3.0, 3.0]


def test_binner_feature_names_out():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"a": [0.0, 1.0, 2.0], "b": [1.0, 1.0, 2.0]})
    binner = Binner(n_bins=2).fit(df)
    assert binner.get_feature_names_out().tolist() == ["a", "b"]


@pytest.mark.parametrize(
    "params, name",
    [
        (dict(n_bins=0), "n_bins"),
        (dict(method="kmeans"), "method"),
        (dict(clip_quantiles=(0.9, 0.1)), "clip_quantiles"),
        (dict(clip_quantiles=(0.0, 2.0)), "clip_quantiles"),
    ],
)
def test_binner_bad_params(params, name):
    with pytest.raises(ValueError, match=name):
        Binner(**params).fit(np.arange(10.0)[:, None])


def test_binner_rejects_nan():
    with pytest.raises(ValueError, match="NaN"):
        Binner().fit(np.array([[0.0], [np.nan]]))
