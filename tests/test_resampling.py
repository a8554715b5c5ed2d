"""Tests of sklcrt.resampling: the string API."""

import dataclasses

import numpy as np
import pytest

from sklcrt.resampling import (
    DEFAULT_RESAMPLING_KWARGS,
    RECOMMENDED_HIGH_MOI_KWARGS,
    RESAMPLING_METHODS,
    ResamplingConfig,
    resolve_resampling,
)
from sklcrt.samplers import BernoulliSampler, PermutationSampler, StratifiedPermutationSampler
from sklcrt.strata import StratumEncoder


def test_defaults():
    assert RESAMPLING_METHODS == ("bernoulli_index", "stratified_perm", "perm")
    assert DEFAULT_RESAMPLING_KWARGS == dict(
        n_bins=10,
        stratify_by_batch=True,
        batch_key="batch",
        burden_key=None,
        n_burden_bins=8,
        burden_bin_method="quantile",
        burden_clip_quantiles=(0.0, 1.0),
        min_stratum_size=2,
    )
    cfg = resolve_resampling()
    assert isinstance(cfg, ResamplingConfig)
    assert cfg.method == "bernoulli_index"
    assert isinstance(cfg.sampler, BernoulliSampler) and cfg.encoder is None
    assert cfg.kwargs == DEFAULT_RESAMPLING_KWARGS
    assert cfg.batch_key == "batch" and cfg.burden_key is None and cfg.stratify_by_batch is True


@pytest.mark.parametrize(
    "name, canonical, sampler_cls, has_encoder",
    [
        ("bernoulli_index", "bernoulli_index", BernoulliSampler, False),
        ("crt", "bernoulli_index", BernoulliSampler, False),
        ("stratified_perm", "stratified_perm", StratifiedPermutationSampler, True),
        ("perm", "perm", PermutationSampler, False),
    ],
)
def test_methods_map_onto_objects(name, canonical, sampler_cls, has_encoder):
    cfg = resolve_resampling(name)
    assert cfg.method == canonical
    assert type(cfg.sampler) is sampler_cls
    assert isinstance(cfg.encoder, StratumEncoder) if has_encoder else cfg.encoder is None


def test_kwargs_map_onto_the_encoder():
    kwargs = dict(
        n_bins=20,
        stratify_by_batch=False,
        batch_key=None,
        burden_key="log1p_grna_n_nonzero_assign",
        n_burden_bins=5,
        burden_bin_method="uniform",
        burden_clip_quantiles=[0.01, 0.99],
        min_stratum_size=3,
    )
    cfg = resolve_resampling("stratified_perm", kwargs)
    assert cfg.encoder.get_params() == dict(
        n_bins=20,
        stratify_by_batch=False,
        n_burden_bins=5,
        burden_bin_method="uniform",
        burden_clip_quantiles=(0.01, 0.99),
        min_stratum_size=3,
        batch_key=None,
        burden_key="log1p_grna_n_nonzero_assign",
    )
    assert cfg.burden_key == "log1p_grna_n_nonzero_assign" and cfg.batch_key is None
    assert cfg.stratify_by_batch is False
    assert cfg.kwargs["burden_clip_quantiles"] == (0.01, 0.99)
    assert kwargs["burden_clip_quantiles"] == [0.01, 0.99], "the input dict must not change"


def test_recommended_high_moi_settings_resolve_and_are_not_defaults():
    cfg = resolve_resampling("stratified_perm", RECOMMENDED_HIGH_MOI_KWARGS)
    assert cfg.encoder.n_bins == 20 and cfg.encoder.n_burden_bins == 8
    assert cfg.burden_key == "log1p_non_ntc_guides_per_cell"
    assert DEFAULT_RESAMPLING_KWARGS["burden_key"] is None
    assert DEFAULT_RESAMPLING_KWARGS["n_bins"] == 10
    for doc in (resolve_resampling.__doc__, StratifiedPermutationSampler.__doc__):
        assert "log1p_non_ntc_guides_per_cell" in doc and "log1p_grna_n_nonzero_assign" in doc


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match="resampling_method.*stratified_perm"):
        resolve_resampling("bootstrap")
    with pytest.raises(ValueError, match="resampling_method"):
        resolve_resampling(None)


def test_unknown_key_is_named_and_valid_keys_listed():
    with pytest.raises(ValueError, match=r"n_bin\b.*valid keys: .*burden_key.*n_bins"):
        resolve_resampling("stratified_perm", {"n_bin": 20})
    with pytest.raises(ValueError, match="resampling_kwargs must be a dict"):
        resolve_resampling("perm", [("n_bins", 3)])


@pytest.mark.parametrize(
    "key, value",
    [
        ("n_bins", 0),
        ("n_bins", 2.5),
        ("n_bins", True),
        ("n_burden_bins", -1),
        ("min_stratum_size", 0),
        ("stratify_by_batch", "yes"),
        ("batch_key", 3),
        ("batch_key", None),
        ("burden_key", ""),
        ("burden_key", 1.0),
        ("burden_bin_method", "kmeans"),
        ("burden_clip_quantiles", (0.9, 0.1)),
        ("burden_clip_quantiles", (0.0, 1.5)),
        ("burden_clip_quantiles", 0.5),
    ],
)
@pytest.mark.parametrize("method", ["bernoulli_index", "stratified_perm"])
def test_bad_values_name_the_key(key, value, method):
    with pytest.raises(ValueError, match=key):
        resolve_resampling(method, {key: value})


def test_batch_key_may_be_none_without_batch_stratification():
    cfg = resolve_resampling("stratified_perm", {"stratify_by_batch": False, "batch_key": None})
    assert cfg.batch_key is None and cfg.encoder.stratify_by_batch is False
    cfg = resolve_resampling("stratified_perm", {"stratify_by_batch": np.True_})
    assert cfg.stratify_by_batch is True


def test_config_is_frozen_and_defaults_are_not_mutated():
    cfg = resolve_resampling("stratified_perm", {"n_bins": 3})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.method = "perm"
    cfg.kwargs["n_bins"] = 99
    assert DEFAULT_RESAMPLING_KWARGS["n_bins"] == 10
    assert resolve_resampling("stratified_perm").kwargs["n_bins"] == 10


def test_each_call_builds_fresh_objects():
    a, b = resolve_resampling("stratified_perm"), resolve_resampling("stratified_perm")
    assert a.sampler is not b.sampler and a.encoder is not b.encoder


def test_end_to_end_stratified_perm():
    rng = np.random.default_rng(0)
    n = 1000
    p_hat = rng.uniform(0.01, 0.2, n)
    batch = rng.choice(["a", "b"], n)
    burden = np.log1p(rng.poisson(4, n))
    x = rng.random(n) < p_hat
    cfg = resolve_resampling(
        "stratified_perm", {"n_bins": 5, "burden_key": "log1p_non_ntc_guides_per_cell"}
    )
    strata = cfg.encoder.fit_transform(p_hat, batch=batch, burden=burden)
    R = cfg.sampler.fit(x, strata=strata).sample(20, random_state=0)
    assert R.shape == (20, n) and np.all(np.diff(R.indptr) == x.sum())
