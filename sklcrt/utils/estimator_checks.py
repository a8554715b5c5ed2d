"""Check suites that every sklcrt sampler and statistic must pass.

:func:`check_sampler` runs them all on one sampler instance (like imbalanced-learn's
``check_estimator`` for its samplers); the individual ``check_sampler_*`` functions can be run
alone. Each raises ``AssertionError`` on failure. Tolerances come from exact binomial quantiles
with a Bonferroni correction over cells, so a correct sampler fails with probability below
``alpha`` whatever the seed. :func:`check_statistic` does the same for the statistics: the
protocol, the agreement of ``evaluate`` with ``observed``, invariance to the block size and to the
other responses, and the fingerprints that keep a null model on its own data.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import scipy.sparse as sp
from scipy import stats
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from sklcrt.samplers import BaseSampler
from sklcrt.strata import StratumEncoder

__all__ = [
    "check_statistic",
    "check_statistic_block_invariance",
    "check_statistic_consistency",
    "check_statistic_protocol",
    "check_statistic_refuses_other_data",
    "check_statistic_response_order",
    "make_statistic_data",
    "check_sampler",
    "check_sampler_counts",
    "check_sampler_frequencies",
    "check_sampler_no_densify",
    "check_sampler_output",
    "check_sampler_protocol",
    "check_sampler_reproducible",
    "make_sampler_data",
]


def make_sampler_data(
    n_cells: int = 600,
    n_batches: int = 3,
    random_state: int = 0,
    *,
    n_bins: int = 4,
    n_burden_bins: int = 3,
) -> dict:
    """Synthetic inputs with 3-D strata (batch x propensity bin x continuous burden bin).

    Returns
    -------
    dict
        ``x_obs`` (bool), ``p_hat``, ``batch`` (string labels), ``burden`` (continuous),
        ``strata`` (from ``StratumEncoder(n_bins, n_burden_bins=n_burden_bins)``) and
        ``encoder`` (the fitted encoder).
    """
    rng = np.random.default_rng(random_state)
    batch = rng.choice([f"b{i}" for i in range(n_batches)], size=n_cells)
    burden = np.log1p(rng.gamma(2.0, 3.0, size=n_cells))
    z = 0.8 * rng.standard_normal(n_cells) + 0.5 * (burden - burden.mean())
    p_hat = 1.0 / (1.0 + np.exp(-(z - 2.0)))
    x_obs = rng.random(n_cells) < p_hat
    encoder = StratumEncoder(n_bins=n_bins, n_burden_bins=n_burden_bins)
    strata = encoder.fit_transform(p_hat, batch=batch, burden=burden)
    return dict(
        x_obs=x_obs, p_hat=p_hat, batch=batch, burden=burden, strata=strata, encoder=encoder
    )


def _fitted(sampler, data):
    return clone(sampler).fit(data["x_obs"], strata=data["strata"], p_hat=data["p_hat"])


def _same(a: sp.csr_matrix, b: sp.csr_matrix) -> bool:
    return (
        a.shape == b.shape
        and np.array_equal(a.indptr, b.indptr)
        and np.array_equal(a.indices, b.indices)
        and np.array_equal(a.data, b.data)
    )


def _stratum_indicator(codes: np.ndarray) -> sp.csr_matrix:
    codes = np.asarray(codes)
    _, inverse = np.unique(codes, return_inverse=True)
    n = codes.size
    return sp.csr_matrix((np.ones(n), (np.arange(n), inverse)), shape=(n, inverse.max() + 1))


def check_sampler_protocol(sampler: BaseSampler, data: dict) -> None:
    """``BaseSampler`` subclass, clonable, ``fit`` returns self, errors on misuse."""
    assert isinstance(sampler, BaseSampler), f"{type(sampler).__name__} is not a BaseSampler"
    params = sampler.get_params()
    assert clone(sampler).get_params() == params, "clone changed the parameters"
    fresh = clone(sampler)
    try:
        fresh.sample(2, random_state=0)
    except NotFittedError:
        pass
    else:
        raise AssertionError("sample before fit must raise NotFittedError")
    out = fresh.fit(data["x_obs"], strata=data["strata"], p_hat=data["p_hat"])
    assert out is fresh, "fit must return self"
    n = len(data["x_obs"])
    assert fresh.n_cells_ == n
    assert fresh.n_treated_ == int(np.count_nonzero(data["x_obs"]))
    assert sampler.get_params() == params, "fit must not change the parameters"
    pi = fresh.inclusion_probabilities()
    assert pi.shape == (n,) and np.all((pi >= 0) & (pi <= 1))
    for bad in (0, -1, 2.5, "10"):
        try:
            fresh.sample(bad, random_state=0)
        except ValueError as exc:
            assert "n_resamples" in str(exc)
        else:
            raise AssertionError(f"sample(n_resamples={bad!r}) must raise ValueError")
    try:
        clone(sampler).fit(data["x_obs"][:-1], strata=data["strata"], p_hat=data["p_hat"])
    except ValueError as exc:
        assert "length" in str(exc)
    else:
        raise AssertionError("mismatched lengths must raise ValueError")
    bad_x = np.asarray(data["x_obs"], dtype=float) * 2.0
    try:
        clone(sampler).fit(bad_x, strata=data["strata"], p_hat=data["p_hat"])
    except ValueError as exc:
        assert "x_obs" in str(exc)
    else:
        raise AssertionError("a non-binary x_obs must raise ValueError")


def check_sampler_output(sampler: BaseSampler, data: dict, n_resamples: int = 50) -> None:
    """A canonical ``csr_matrix`` (B, N) of float64 ones with sorted, unique indices per row."""
    fitted = _fitted(sampler, data)
    n = len(data["x_obs"])
    for n_res in (1, n_resamples):
        R = fitted.sample(n_res, random_state=1)
        assert isinstance(R, sp.csr_matrix), f"sample must return csr_matrix, got {type(R)}"
        assert R.shape == (n_res, n), f"shape {R.shape} != {(n_res, n)}"
        assert R.dtype == np.float64
        assert np.all(R.data == 1.0), "stored values must all be 1.0"
        R.check_format(full_check=True)
        row_of = np.repeat(np.arange(n_res), np.diff(R.indptr))
        same_row = row_of[1:] == row_of[:-1]
        assert np.all(np.diff(R.indices.astype(np.int64))[same_row] > 0), (
            "indices must be strictly increasing within each row"
        )
        assert R.has_sorted_indices and R.has_canonical_format


def check_sampler_counts(sampler: BaseSampler, data: dict, n_resamples: int = 200) -> None:
    """Permutation samplers keep every per-stratum treated count; Bernoulli ones match on average.

    A sampler exposing ``n_treated_per_stratum_`` and ``strata_`` must reproduce the observed
    treated count of every one of its strata in every resample (hence the global count too).
    Other samplers must have a mean treated count within a 5-sigma bound of
    ``sum(inclusion_probabilities())``.
    """
    fitted = _fitted(sampler, data)
    R = fitted.sample(n_resamples, random_state=2)
    row_counts = np.diff(R.indptr)
    x = np.asarray(data["x_obs"], dtype=bool)
    if hasattr(fitted, "n_treated_per_stratum_"):
        indicator = _stratum_indicator(fitted.strata_)
        observed = indicator.T @ x.astype(float)
        np.testing.assert_array_equal(fitted.n_treated_per_stratum_, observed)
        counts = (R @ indicator).toarray()
        assert np.all(counts == observed[None, :]), "per-stratum treated counts not preserved"
        assert np.all(row_counts == x.sum()), "global treated count not preserved"
    else:
        pi = fitted.inclusion_probabilities()
        sd = np.sqrt(np.sum(pi * (1 - pi)) / n_resamples)
        assert abs(row_counts.mean() - pi.sum()) <= 5 * sd + 1e-9, (
            f"mean treated count {row_counts.mean()} far from expected {pi.sum()}"
        )


def check_sampler_reproducible(sampler: BaseSampler, data: dict, n_resamples: int = 30) -> None:
    """Same seed: identical resamples (int, SeedSequence, Generator); different seed: different."""
    fitted = _fitted(sampler, data)
    a = fitted.sample(n_resamples, random_state=7)
    assert _same(a, fitted.sample(n_resamples, random_state=7)), "same seed, different draws"
    assert _same(a, _fitted(sampler, data).sample(n_resamples, random_state=7)), (
        "a refitted sampler must give the same draws for the same seed"
    )
    seq = np.random.SeedSequence(11)
    assert _same(
        fitted.sample(n_resamples, random_state=seq), fitted.sample(n_resamples, random_state=seq)
    )
    g1 = fitted.sample(n_resamples, random_state=np.random.default_rng(3))
    g2 = fitted.sample(n_resamples, random_state=np.random.default_rng(3))
    assert _same(g1, g2), "equal Generators must give equal draws"
    pi = fitted.inclusion_probabilities()
    if np.any((pi > 0) & (pi < 1)):
        assert not _same(a, fitted.sample(n_resamples, random_state=8)), (
            "different seeds gave identical draws"
        )
        rng = np.random.default_rng(5)
        assert not _same(
            fitted.sample(n_resamples, random_state=rng),
            fitted.sample(n_resamples, random_state=rng),
        ), "a Generator must advance between calls"
    fitted.sample(2, random_state=None)


def check_sampler_frequencies(
    sampler: BaseSampler, data: dict, n_resamples: int = 2000, alpha: float = 1e-4
) -> None:
    """Each cell's inclusion count lies in its exact binomial interval around
    ``inclusion_probabilities()`` (level ``alpha`` Bonferroni-corrected over cells)."""
    fitted = _fitted(sampler, data)
    R = fitted.sample(n_resamples, random_state=3)
    counts = np.asarray(R.sum(axis=0)).ravel()
    pi = fitted.inclusion_probabilities()
    a = alpha / pi.size
    lo = stats.binom.ppf(a / 2, n_resamples, pi)
    hi = stats.binom.isf(a / 2, n_resamples, pi)
    bad = np.flatnonzero((counts < lo) | (counts > hi))
    assert bad.size == 0, (
        f"{bad.size} cell(s) with inclusion frequency outside the binomial bound, e.g. cell "
        f"{bad[0]}: {counts[bad[0]] / n_resamples:.4f} vs {pi[bad[0]]:.4f}"
    )


def check_sampler_no_densify(
    sampler: BaseSampler, n_cells: int = 100_000, n_treated: int = 40, n_resamples: int = 200
) -> None:
    """Sampling with ``m << N`` allocates far less than one dense ``B x N`` byte array."""
    rng = np.random.default_rng(0)
    x = np.zeros(n_cells, dtype=bool)
    x[rng.choice(n_cells, n_treated, replace=False)] = True
    strata = rng.integers(0, 50, n_cells)
    p_hat = np.full(n_cells, n_treated / n_cells)
    fitted = clone(sampler).fit(x, strata=strata, p_hat=p_hat)
    fitted.sample(2, random_state=0)
    tracemalloc.start()
    try:
        R = fitted.sample(n_resamples, random_state=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    dense_bytes = n_resamples * n_cells
    assert peak < dense_bytes / 10, (
        f"sample() allocated {peak} bytes at peak; a dense B x N byte array is {dense_bytes}"
    )
    assert R.shape == (n_resamples, n_cells)


def check_sampler(
    sampler: BaseSampler,
    x_obs=None,
    strata=None,
    p_hat=None,
    *,
    n_resamples: int = 2000,
    random_state: int = 0,
) -> None:
    """Run every sampler check on ``sampler`` (an unfitted instance; it is cloned).

    Parameters
    ----------
    sampler : BaseSampler
        The sampler to check.
    x_obs, strata, p_hat : array-like of shape (n_cells,), default=None
        Inputs to check on; when ``x_obs`` is None, :func:`make_sampler_data` makes 600 cells
        with 3-D strata (batch x propensity x burden).
    n_resamples : int, default=2000
        Resamples for the frequency check (the other checks use fewer).
    random_state : int, default=0
        Seed of the synthetic data.

    Raises
    ------
    AssertionError
        When a check fails.
    """
    if x_obs is None:
        data = make_sampler_data(random_state=random_state)
    else:
        data = dict(x_obs=np.asarray(x_obs), strata=strata, p_hat=p_hat)
    check_sampler_protocol(sampler, data)
    check_sampler_output(sampler, data)
    check_sampler_counts(sampler, data)
    check_sampler_reproducible(sampler, data)
    check_sampler_frequencies(sampler, data, n_resamples=n_resamples)
    check_sampler_no_densify(sampler)


# ---------------------------------------------------------------------------- statistics
def make_statistic_data(
    n_cells: int = 400, n_responses: int = 6, *, counts: bool = True, random_state: int = 0
) -> dict:
    """Responses (NB-like counts, sparse, with an all-zero response), covariates and resamples
    to check a statistic on.

    Returns
    -------
    dict
        ``Y`` (CSR counts, or dense floats with ``counts=False``), ``C`` (covariates), ``x``
        (an observed treatment), ``R`` (40 resamples, CSR), ``columns`` (a subset).
    """
    rng = np.random.default_rng(random_state)
    C = np.column_stack([rng.normal(size=n_cells), rng.integers(0, 2, n_cells)])
    x = rng.random(n_cells) < 0.15
    if counts:
        mu = np.exp(0.3 + 0.4 * C[:, :1] + rng.normal(0, 0.3, (1, n_responses)))
        Y = rng.poisson(mu * rng.gamma(2.0, 0.5, size=(n_cells, n_responses)))
        Y[:, -1] = 0
        Y = sp.csr_matrix(Y)
    else:
        Y = C @ rng.normal(size=(2, n_responses)) + rng.normal(size=(n_cells, n_responses))
    R = sp.csr_matrix((rng.random((40, n_cells)) < 0.15).astype(np.float64))
    return {"Y": Y, "C": C, "x": x, "R": R, "columns": np.array([3, 0, 1])}


def check_statistic_protocol(statistic, data: dict) -> None:
    """``fit`` returns the statistic with ``n_cells_`` and ``n_responses_``; nothing is set in
    ``__init__``; ``evaluate``/``observed`` before ``fit`` raise ``NotFittedError``."""
    unfitted = clone(statistic)
    for method, args in (("evaluate", (data["R"],)), ("observed", (data["x"],))):
        try:
            getattr(clone(statistic), method)(*args)
        except NotFittedError:
            pass
        else:  # pragma: no cover - the failure this check exists for
            raise AssertionError(f"{type(statistic).__name__}.{method} before fit must raise.")
    fitted = unfitted.fit(data["Y"], data["C"])
    assert fitted is unfitted, "fit must return self"
    assert fitted.n_cells_ == data["C"].shape[0]
    assert fitted.n_responses_ == data["Y"].shape[1]


def check_statistic_consistency(statistic, data: dict) -> None:
    """``evaluate`` of the observed treatment equals ``observed()["statistic"]``, a subset of
    columns equals the same columns of all, and the shapes are (resamples, responses)."""
    fitted = clone(statistic).fit(data["Y"], data["C"])
    full = fitted.evaluate(data["R"])
    assert full.shape == (data["R"].shape[0], data["Y"].shape[1])
    cols = data["columns"]
    np.testing.assert_allclose(
        fitted.evaluate(data["R"], cols), full[:, cols], rtol=1e-10, atol=1e-12, equal_nan=True
    )
    observed = fitted.observed(data["x"])
    via_evaluate = fitted.evaluate(sp.csr_matrix(data["x"].astype(np.float64)))[0]
    np.testing.assert_allclose(
        observed["statistic"], via_evaluate, rtol=1e-8, atol=1e-10, equal_nan=True
    )
    for key in ("effect", "effect_se"):
        assert np.shape(observed[key]) == (data["Y"].shape[1],), key


def check_statistic_block_invariance(statistic, data: dict) -> None:
    """The results do not depend on the block size (how responses are processed)."""
    whole = clone(statistic).fit(data["Y"], data["C"]).evaluate(data["R"])
    blocks = clone(statistic).set_params(block_size=1).fit(data["Y"], data["C"])
    np.testing.assert_allclose(blocks.evaluate(data["R"]), whole, rtol=1e-9, equal_nan=True)


def check_statistic_response_order(statistic, data: dict) -> None:
    """A response's null model and statistics do not depend on the other responses."""
    order = np.arange(data["Y"].shape[1])[::-1]
    Y = data["Y"][:, order]
    fitted = clone(statistic).fit(data["Y"], data["C"])
    reversed_ = clone(statistic).fit(Y, data["C"])
    np.testing.assert_allclose(
        reversed_.evaluate(data["R"]),
        fitted.evaluate(data["R"])[:, order],
        rtol=1e-7,
        atol=1e-9,
        equal_nan=True,
    )


def check_statistic_refuses_other_data(statistic, data: dict) -> None:
    """A fitted statistic carries fingerprints of its responses and covariates."""
    fitted = clone(statistic).fit(data["Y"], data["C"])
    other = clone(statistic).fit(data["Y"], data["C"][::-1].copy())
    assert fitted.responses_fingerprint_ == other.responses_fingerprint_
    assert fitted.covariates_fingerprint_ != other.covariates_fingerprint_


def check_statistic(statistic, *, counts: bool = True, random_state: int = 0) -> None:
    """Run every statistic check on ``statistic`` (an unfitted instance; it is cloned).

    Parameters
    ----------
    statistic : BaseStatistic
        The statistic to check.
    counts : bool, default=True
        Check on counts (for count models) or on continuous responses.
    random_state : int, default=0
        Seed of the synthetic data.

    Raises
    ------
    AssertionError
        When a check fails.
    """
    data = make_statistic_data(counts=counts, random_state=random_state)
    check_statistic_protocol(statistic, data)
    check_statistic_consistency(statistic, data)
    check_statistic_block_invariance(statistic, data)
    check_statistic_response_order(statistic, data)
    check_statistic_refuses_other_data(statistic, data)
