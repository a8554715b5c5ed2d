"""Tests of sklcrt.samplers: the shared check suite plus sampler-specific statistics."""

import itertools
import time

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

import sklcrt._binary
import sklcrt.samplers as samplers_module
from sklcrt.samplers import (
    BaseSampler,
    BernoulliSampler,
    PermutationSampler,
    StratifiedPermutationSampler,
)
from sklcrt.strata import StratumEncoder
from sklcrt.utils.estimator_checks import (
    check_sampler,
    check_sampler_no_densify,
    check_sampler_reproducible,
    make_sampler_data,
)

ALL_SAMPLERS = [StratifiedPermutationSampler(), PermutationSampler(), BernoulliSampler()]
IDS = [type(s).__name__ for s in ALL_SAMPLERS]


def counts_per_stratum(R, strata):
    _, inverse = np.unique(strata, return_inverse=True)
    n = inverse.size
    indicator = sp.csr_matrix((np.ones(n), (np.arange(n), inverse)))
    return (R @ indicator).toarray()


def binomial_bounds(p, n_draws, alpha=1e-4):
    """Exact two-sided binomial interval for counts, Bonferroni-corrected over the entries."""
    p = np.asarray(p, dtype=float)
    a = alpha / p.size
    return stats.binom.ppf(a / 2, n_draws, p), stats.binom.isf(a / 2, n_draws, p)


# ---------------------------------------------------------------- the shared check suite


@pytest.mark.parametrize("sampler", ALL_SAMPLERS, ids=IDS)
def test_check_sampler(sampler):
    check_sampler(sampler)


@pytest.mark.parametrize("sampler", ALL_SAMPLERS, ids=IDS)
def test_check_sampler_on_other_data(sampler):
    data = make_sampler_data(n_cells=300, n_batches=2, random_state=4, n_bins=3)
    check_sampler(sampler, data["x_obs"], data["strata"], data["p_hat"], n_resamples=500)


class _FixedSampler(StratifiedPermutationSampler):
    """Broken: ignores the seed and returns the same resamples every time."""

    def _sample_cells(self, n_resamples, rng):
        return super()._sample_cells(n_resamples, np.random.default_rng(0))


class _DensifyingSampler(PermutationSampler):
    """Broken: builds a dense B x N array."""

    def _sample_cells(self, n_resamples, rng):
        dense = np.zeros((n_resamples, self.n_cells_))
        cells = super()._sample_cells(n_resamples, rng)
        dense[np.arange(n_resamples)[:, None], cells] = 1.0
        return np.nonzero(dense)[1].reshape(n_resamples, -1)


def test_check_suite_catches_broken_samplers():
    data = make_sampler_data()
    with pytest.raises(AssertionError, match="different seeds"):
        check_sampler_reproducible(_FixedSampler(), data)
    with pytest.raises(AssertionError, match="dense"):
        check_sampler_no_densify(_DensifyingSampler())


# ---------------------------------------------------------------- stratified permutation


def test_counts_preserved_per_3d_stratum_and_globally():
    data = make_sampler_data(n_cells=2000, n_batches=3, random_state=1, n_bins=5, n_burden_bins=4)
    enc = data["encoder"]
    assert enc.n_batches_ == 3 and enc.n_bins_ == 5 and enc.n_burden_bins_ == 4
    strata, x = data["strata"], data["x_obs"]
    R = StratifiedPermutationSampler().fit(x, strata=strata).sample(300, random_state=0)
    observed = counts_per_stratum(sp.csr_matrix(x.astype(float)), strata)[0]
    counts = counts_per_stratum(R, strata)
    assert np.all(counts == observed)
    assert np.all(np.asarray(R.sum(axis=1)).ravel() == x.sum())
    # and the strata really are 3-D: batch x propensity x burden
    assert np.unique(strata).size > 3 * 5


def test_burden_strata_preserve_burden_counts_that_plain_strata_do_not():
    data = make_sampler_data(n_cells=2000, random_state=2, n_bins=4, n_burden_bins=4)
    x, p_hat, batch = data["x_obs"], data["p_hat"], data["batch"]
    no_burden = StratumEncoder(n_bins=4).fit_transform(p_hat, batch=batch)
    with_burden = data["strata"]
    R_plain = StratifiedPermutationSampler().fit(x, strata=no_burden).sample(200, random_state=0)
    R_burden = StratifiedPermutationSampler().fit(x, strata=with_burden).sample(200, random_state=0)
    obs = counts_per_stratum(sp.csr_matrix(x.astype(float)), with_burden)[0]
    assert np.all(counts_per_stratum(R_burden, with_burden) == obs)
    assert not np.all(counts_per_stratum(R_plain, with_burden) == obs)


def test_inclusion_frequency_is_m_s_over_n_s():
    data = make_sampler_data(n_cells=800, random_state=3)
    x, strata = data["x_obs"], data["strata"]
    B = 3000
    R = StratifiedPermutationSampler().fit(x, strata=strata).sample(B, random_state=9)
    _, inverse, n_s = np.unique(strata, return_inverse=True, return_counts=True)
    m_s = np.bincount(inverse, weights=x)
    expected = (m_s / n_s)[inverse]
    lo, hi = binomial_bounds(expected, B)
    freq = np.asarray(R.sum(axis=0)).ravel()
    assert np.all((freq >= lo) & (freq <= hi))
    # ratios span both drawing paths (sparse: m_s/n_s <= 1/4, dense: above)
    ratios = m_s / n_s
    assert np.any((ratios > 0) & (ratios <= 0.25)) and np.any(ratios > 0.25)


@pytest.mark.parametrize("n_s, m_s", [(10, 2), (6, 2), (5, 4), (7, 1)])
def test_subsets_are_uniform(n_s, m_s):
    """Every m_s-subset of a stratum is equally likely (sparse and dense paths)."""
    x = np.zeros(n_s + 3, dtype=bool)
    x[:m_s] = True
    x[n_s] = True  # a second stratum of 3 cells with 1 treated
    strata = np.r_[np.zeros(n_s, dtype=int), np.ones(3, dtype=int)]
    B = 6000
    R = StratifiedPermutationSampler().fit(x, strata=strata).sample(B, random_state=1)
    sub = R[:, :n_s].tocsr()
    subsets = [tuple(sub.indices[sub.indptr[b] : sub.indptr[b + 1]]) for b in range(B)]
    all_subsets = list(itertools.combinations(range(n_s), m_s))
    index = {s: i for i, s in enumerate(all_subsets)}
    observed = np.bincount([index[s] for s in subsets], minlength=len(all_subsets))
    assert stats.chisquare(observed).pvalue > 1e-4


def test_full_and_empty_strata():
    x = np.array([1, 1, 1, 0, 0, 0, 1, 0, 0, 0])
    strata = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    R = StratifiedPermutationSampler().fit(x, strata=strata).sample(50, random_state=0)
    dense = R.toarray()
    assert np.all(dense[:, :3] == 1) and np.all(dense[:, 3:6] == 0)
    assert np.all(dense[:, 6:].sum(axis=1) == 1)


@pytest.mark.parametrize("x", [np.zeros(6, dtype=bool), np.ones(6, dtype=bool)])
def test_no_treated_or_all_treated(x):
    for sampler in (StratifiedPermutationSampler(), PermutationSampler()):
        R = sampler.fit(x, strata=[0, 0, 1, 1, 1, 2]).sample(4, random_state=0)
        assert R.shape == (4, 6)
        np.testing.assert_array_equal(R.toarray(), np.tile(x.astype(float), (4, 1)))


def test_stratum_labels_need_not_be_compact():
    x = np.array([1, 0, 0, 1, 0, 0])
    strata = np.array([7, 7, 7, -3, -3, -3])
    sampler = StratifiedPermutationSampler().fit(x, strata=strata)
    assert sampler.stratum_labels_.tolist() == [-3, 7]
    assert sampler.n_treated_per_stratum_.tolist() == [1, 1]
    counts = counts_per_stratum(sampler.sample(20, random_state=0), strata)
    assert np.all(counts == 1)


def test_row_blocks_do_not_change_the_draws(monkeypatch):
    data = make_sampler_data(n_cells=400, random_state=5)
    p_hat = np.where(data["p_hat"] > 0.2, 0.6, data["p_hat"])  # dense Bernoulli buckets too
    fitted = [
        StratifiedPermutationSampler().fit(data["x_obs"], strata=data["strata"]),
        BernoulliSampler().fit(data["x_obs"], p_hat=p_hat),
    ]
    reference = [s.sample(40, random_state=3) for s in fitted]
    monkeypatch.setattr(samplers_module, "_BLOCK_ELEMENTS", 7)
    for s, ref in zip(fitted, reference, strict=True):
        R = s.sample(40, random_state=3)
        assert (R != ref).nnz == 0


def test_stratified_needs_strata():
    with pytest.raises(ValueError, match="strata is required"):
        StratifiedPermutationSampler().fit(np.array([1, 0, 0]))
    with pytest.raises(ValueError, match="strata.*missing"):
        StratifiedPermutationSampler().fit(np.array([1, 0, 0]), strata=[0.0, np.nan, 1.0])


# ---------------------------------------------------------------- permutation


def test_permutation_ignores_strata_and_keeps_the_total():
    data = make_sampler_data(n_cells=500)
    x = data["x_obs"]
    sampler = PermutationSampler().fit(x, strata=data["strata"])
    assert sampler.n_strata_ == 1
    R = sampler.sample(2000, random_state=0)
    assert np.all(np.diff(R.indptr) == x.sum())
    lo, hi = binomial_bounds(np.full(x.size, x.mean()), 2000)
    freq = np.asarray(R.sum(axis=0)).ravel()
    assert np.all((freq >= lo) & (freq <= hi))
    # per-stratum counts are not preserved by the plain permutation
    obs = counts_per_stratum(sp.csr_matrix(x.astype(float)), data["strata"])[0]
    assert not np.all(counts_per_stratum(R, data["strata"]) == obs)


# ---------------------------------------------------------------- Bernoulli


@pytest.mark.parametrize("walk_draws", [None, 64])
def test_bernoulli_frequencies_match_p_hat(walk_draws, monkeypatch):
    """Inclusion frequencies are p_hat, also when each bucket's walk is cut into short runs."""
    if walk_draws is not None:
        monkeypatch.setattr(samplers_module, "_WALK_DRAWS", walk_draws)
    rng = np.random.default_rng(0)
    p_hat = np.concatenate(
        [
            [0.0, 1.0, 1e-6, 0.25, 0.5],
            rng.uniform(0, 1, 200),  # dense buckets
            rng.beta(1, 50, 800),  # sparse buckets
        ]
    )
    x = rng.random(p_hat.size) < p_hat
    B = 4000
    R = BernoulliSampler().fit(x, p_hat=p_hat).sample(B, random_state=2)
    freq = np.asarray(R.sum(axis=0)).ravel()
    lo, hi = binomial_bounds(p_hat, B)
    assert np.all((freq >= lo) & (freq <= hi))
    assert freq[0] == 0 and freq[1] == B


@pytest.mark.parametrize("walk_draws", [None, 64])
def test_bernoulli_draws_are_independent(walk_draws, monkeypatch):
    """Treated counts vary like a sum of independent Bernoullis, and joint patterns factorize
    (also across the runs a bucket's walk is cut into: 64 draws are about 20 cells here)."""
    if walk_draws is not None:
        monkeypatch.setattr(samplers_module, "_WALK_DRAWS", walk_draws)
    rng = np.random.default_rng(1)
    p_hat = np.r_[0.1, 0.1, 0.095, rng.beta(1, 30, 2000)]  # the first three share a bucket
    B = 6000
    R = BernoulliSampler().fit(np.zeros(p_hat.size), p_hat=p_hat).sample(B, random_state=4)
    row_counts = np.diff(R.indptr)
    var = np.sum(p_hat * (1 - p_hat))
    # sample variance of B draws: relative sd about sqrt(2 / B) ~ 0.018
    assert abs(row_counts.var() / var - 1) < 0.1
    assert abs(row_counts.mean() - p_hat.sum()) < 5 * np.sqrt(var / B)
    # the 8 joint patterns of three cells of one sparse bucket
    three = R[:, :3].toarray().astype(int)
    pattern = three @ np.array([4, 2, 1])
    observed = np.bincount(pattern, minlength=8)
    probs = np.array(
        [
            np.prod([p if bit else 1 - p for p, bit in zip(p_hat[:3], bits, strict=True)])
            for bits in itertools.product([0, 1], repeat=3)
        ]
    )
    assert stats.chisquare(observed, probs * B).pvalue > 1e-4


def test_bernoulli_needs_valid_p_hat():
    with pytest.raises(ValueError, match="p_hat is required"):
        BernoulliSampler().fit(np.array([1, 0]))
    with pytest.raises(ValueError, match="p_hat"):
        BernoulliSampler().fit(np.array([1, 0]), p_hat=[0.5, 1.5])
    with pytest.raises(ValueError, match="p_hat"):
        BernoulliSampler().fit(np.array([1, 0]), p_hat=[0.5, np.nan])


# ---------------------------------------------------------------- protocol details


@pytest.mark.parametrize("sampler", ALL_SAMPLERS, ids=IDS)
def test_protocol_basics(sampler):
    data = make_sampler_data(n_cells=100)
    assert isinstance(sampler, BaseSampler)
    with pytest.raises(NotFittedError):
        clone(sampler).sample(3)
    with pytest.raises(ValueError, match="x_obs"):
        clone(sampler).fit(np.full(100, 0.5), strata=data["strata"], p_hat=data["p_hat"])
    with pytest.raises(ValueError, match="length mismatch"):
        clone(sampler).fit(data["x_obs"], strata=data["strata"][:50], p_hat=data["p_hat"])
    fitted = clone(sampler).fit(data["x_obs"], strata=data["strata"], p_hat=data["p_hat"])
    a = fitted.sample(5, random_state=np.random.SeedSequence(1))
    b = fitted.sample(5, random_state=np.random.SeedSequence(1))
    assert (a != b).nnz == 0
    assert (a != fitted.sample(5, random_state=2)).nnz > 0


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ALL_SAMPLERS, ids=IDS)
def test_scale_is_order_b_times_m(sampler):
    """N = 200,000 cells, m = 2,000 treated, ~100 strata, B = 1,000 resamples."""
    rng = np.random.default_rng(0)
    n, m, B = 200_000, 2_000, 1_000
    strata = rng.integers(0, 100, n)
    p_hat = np.clip(rng.beta(1, 99, n), 1e-6, 1)
    x = np.zeros(n, dtype=bool)
    x[rng.choice(n, m, replace=False)] = True
    fitted = clone(sampler).fit(x, strata=strata, p_hat=p_hat)
    start = time.perf_counter()
    R = fitted.sample(B, random_state=0)
    elapsed = time.perf_counter() - start
    assert R.shape == (B, n)
    if isinstance(sampler, BernoulliSampler):
        assert abs(R.nnz / B - p_hat.sum()) < 5 * np.sqrt(p_hat.sum() / B)
    else:
        assert R.nnz == B * m
    assert elapsed < 5.0, f"{type(sampler).__name__} took {elapsed:.2f} s"


@settings(max_examples=60, deadline=None)
@given(
    cells=st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=1, max_size=60),
    n_resamples=st.integers(1, 20),
    seed=st.integers(0, 2**32 - 1),
)
def test_stratified_property(cells, n_resamples, seed):
    strata = np.array([s for s, _ in cells])
    x = np.array([t for _, t in cells])
    R = StratifiedPermutationSampler().fit(x, strata=strata).sample(n_resamples, seed)
    R.check_format(full_check=True)
    assert R.shape == (n_resamples, x.size) and np.all(R.data == 1.0)
    observed = counts_per_stratum(sp.csr_matrix(x.astype(float)), strata)[0]
    assert np.all(counts_per_stratum(R, strata) == observed)


def test_bernoulli_degenerate_propensities():
    R = BernoulliSampler().fit([0, 0, 0], p_hat=[0.0, 0.0, 0.0]).sample(3, random_state=0)
    assert R.shape == (3, 3) and R.nnz == 0
    R = BernoulliSampler().fit([1, 0], p_hat=[1.0, 0.0]).sample(3, random_state=0)
    np.testing.assert_array_equal(R.toarray(), [[1.0, 0.0]] * 3)


def test_bernoulli_tiny_propensities_end():
    """A propensity so small that its geometric gaps exceed int64 (scale ~1/p) draws nothing
    there and returns (it used to loop forever on the overflowed gaps)."""
    p_hat = [1e-300, 1e-19, 1.0, 0.5]
    R = BernoulliSampler().fit([0, 0, 1, 1], p_hat=p_hat).sample(200, random_state=0)
    dense = R.toarray()
    assert dense[:, :2].sum() == 0 and dense[:, 2].sum() == 200
    assert 60 < dense[:, 3].sum() < 140  # Binomial(200, 0.5): mean 100, sd 7.1


# ---------------------------------------------------------------- draw kernels


def test_bernoulli_positions_are_iid_inclusions():
    """Geometric gaps give increasing distinct positions with Binomial(size, q) counts."""
    rng = np.random.default_rng(0)
    size, q = 5_000, 0.03
    counts = np.empty(400)
    hits = np.zeros(size)
    for i in range(counts.size):
        pos = samplers_module._bernoulli_positions(rng, size, q)
        assert np.all(np.diff(pos) > 0) and (pos.size == 0 or (pos[0] >= 0 and pos[-1] < size))
        counts[i] = pos.size
        hits[pos] += 1
    mean, sd = size * q, np.sqrt(size * q * (1 - q))
    assert abs(counts.mean() - mean) < 5 * sd / np.sqrt(counts.size)
    assert abs(counts.std() / sd - 1) < 0.15
    # every position equally likely: the first and last fifths hit alike
    first, last = hits[: size // 5].sum(), hits[-size // 5 :].sum()
    assert abs(first - last) < 5 * np.sqrt(first + last)


@pytest.mark.parametrize("n_cells", [30, 3_000])
def test_runs_to_sparse_is_canonical(n_cells):
    """Runs of places (cells in any order across runs) give the canonical matrix of the draws."""
    rng = np.random.default_rng(2)
    B = 40
    dense = rng.random((B, n_cells)) < 0.3
    order = rng.permutation(n_cells)  # the places' cells
    runs, start = [], 0
    for size in np.diff(
        np.r_[0, np.sort(rng.choice(np.arange(1, n_cells), 5, replace=False)), n_cells]
    ):
        local, rows = np.nonzero(dense[:, order[start : start + size]].T)
        runs.append((start, int(size), local, rows))
        start += size
    R = samplers_module._runs_to_sparse(runs, B, n_cells, order)
    assert R.has_canonical_format and R.format == ("csc" if R.nnz >= 2 * n_cells else "csr")
    R = R.tocsc()
    assert all(
        np.all(np.diff(R.indices[a:b]) > 0)
        for a, b in zip(R.indptr[:-1], R.indptr[1:], strict=True)
    )
    np.testing.assert_array_equal(R.toarray(), dense.astype(float))


def _reference_distinct(rng, keys, n_cells, grp):
    """The redraw rule on global keys ``row * n_cells + cell`` (sort, redraw the repeats in key
    order, accept a redraw new to its row): the oracle of ``_redraw_repeats``."""
    keys = np.sort(keys)
    dup = keys[1:] == keys[:-1]
    pending, kept = keys[1:][dup], keys[np.r_[True, ~dup]]
    extra = np.empty(0, dtype=np.int64)
    while pending.size:
        prow = pending // n_cells
        new = np.sort(prow * n_cells + grp.draw(rng, grp.group_of_cell[pending - prow * n_cells]))
        first = np.r_[True, new[1:] != new[:-1]]
        ok = first & ~np.isin(new, kept) & ~np.isin(new, extra)
        extra, pending = np.sort(np.r_[extra, new[ok]]), new[~ok]
    return np.sort(np.r_[kept, extra])


@pytest.mark.parametrize(
    ("n_cells", "n_groups", "fraction", "n_rows"),
    [
        (3_000, 4, 0.2, 300),  # many repeats: _in_rows searches blocks of rows
        (20_000, 40, 0.01, 50),  # few: binary searches within rows
        (500, 1, 0.25, 7),
    ],
)
def test_redraw_repeats_matches_the_rule_on_global_keys(n_cells, n_groups, fraction, n_rows):
    rng = np.random.default_rng(8)
    grp = samplers_module._Groups(rng.integers(0, n_groups, n_cells), n_groups)
    slots = np.repeat(np.arange(n_groups), (fraction * grp.sizes).astype(int))
    cells = grp.draw(rng, slots, repeat=n_rows).reshape(n_rows, slots.size).astype(np.int32)
    cells.sort(axis=1)
    keys = (cells + np.arange(n_rows)[:, None] * n_cells).ravel().astype(np.int64)
    expected = _reference_distinct(np.random.default_rng(3), keys, n_cells, grp)
    samplers_module._redraw_repeats(np.random.default_rng(3), cells, grp)
    assert np.all(np.diff(cells, axis=1) > 0)  # distinct, increasing rows
    got = (cells + np.arange(n_rows)[:, None] * n_cells).ravel()
    np.testing.assert_array_equal(got, expected)


def test_in_rows_agrees_with_a_global_search():
    rng = np.random.default_rng(9)
    n_rows, width, n_cells = 200, 300, 5_000
    cells = np.sort(rng.integers(0, n_cells, (n_rows, width)), axis=1).astype(np.int32)
    keys = (cells + np.arange(n_rows)[:, None] * n_cells).ravel().astype(np.int64)
    for size in (50_000, 20):  # a block search, a binary search
        rows = rng.integers(0, n_rows, size)
        values = rng.integers(0, n_cells, size)
        values[::2] = cells[rows[::2], rng.integers(0, width, values[::2].size)]
        queries = np.sort(rows * n_cells + values)
        found = samplers_module._in_rows(cells, queries, n_cells)
        np.testing.assert_array_equal(found, np.isin(queries, keys))
        assert 0.4 < found.mean() < 0.7


def test_draws_share_read_only_ones_and_samples_own_their_data(monkeypatch):
    """The CSC draws the gather reads share one read-only buffer of ones as their data (no
    fresh array per draw); what ``sample`` hands out owns writable data. (scipy copies a view
    of less than half its buffer: those draws own their data, as before.)"""
    monkeypatch.setattr(sklcrt._binary, "_ONES", np.ones(0))  # as in a fresh process
    x = np.arange(2_000) < 400
    sampler = BernoulliSampler().fit(x, p_hat=np.full(x.size, 0.2))
    second, first = sampler._draw(45, 1), sampler._draw(30, 0)  # the larger one first
    assert first.format == second.format == "csc"
    assert not first.data.flags.writeable and np.all(first.data == 1.0)
    assert np.shares_memory(first.data, second.data)
    R = sampler.sample(30, 0)
    assert R.data.flags.writeable and not np.shares_memory(R.data, first.data)
    np.testing.assert_array_equal(R.toarray(), first.toarray())
    R.data[:] = 2.0  # the user's copy: the shared ones are untouched
    assert np.all(sampler._draw(30, 0).data == 1.0)


@pytest.mark.parametrize("n_cells", [50, 5_000])
def test_cell_major_to_csr_is_canonical(n_cells):
    rng = np.random.default_rng(1)
    B = 40
    dense = rng.random((B, n_cells)) < 0.3
    cols, rows = np.nonzero(dense.T)  # cell by cell, increasing rows
    order = np.argsort(rng.permutation(n_cells)[cols], kind="stable")  # cells in any order
    R = samplers_module._cell_major_to_csr(cols[order], rows[order], B, n_cells)
    assert R.has_canonical_format
    assert np.all(np.diff(R.indices[R.indptr[0] : R.indptr[1]]) > 0)
    np.testing.assert_array_equal(R.toarray(), dense.astype(float))


def test_stratified_draws_with_many_strata_are_uniform_subsets():
    """The per-stratum draws keep every stratum's count and treat each cell m_s / n_s often."""
    rng = np.random.default_rng(2)
    strata = rng.integers(0, 12, 3_000)
    x = rng.random(strata.size) < 0.05
    B = 3_000
    sampler = StratifiedPermutationSampler().fit(x, strata=strata)
    R = sampler.sample(B, random_state=3)
    obs = np.bincount(strata[x], minlength=12)
    for b in (0, B // 2, B - 1):
        row = R.indices[R.indptr[b] : R.indptr[b + 1]]
        np.testing.assert_array_equal(np.bincount(strata[row], minlength=12), obs)
    freq = np.asarray(R.sum(axis=0)).ravel()
    lo, hi = binomial_bounds(sampler.inclusion_probabilities(), B)
    assert np.all((freq >= lo) & (freq <= hi))
