"""Checkpoints (#12): exact tables, faults injected into a checkpoint directory, stale resumes,
and a killed-and-resumed run equal to an uninterrupted one whatever the kill point."""

import io
import json
import os
import pickle
import shutil
import tempfile
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sklcrt import execution
from sklcrt.checkpoints import (
    CONFIG,
    CheckpointError,
    CheckpointStore,
    CheckpointWarning,
    read_table,
    write_table,
)
from sklcrt.datasets import simulate_screen
from sklcrt.inputs import prepare_crt_inputs
from sklcrt.runners import run_gene_loop, run_ntc_groups

TEST = dict(
    resampling_method="stratified_perm",
    resampling_kwargs=dict(n_bins=4, stratify_by_batch=True, batch_key="batch"),
    n_resamples=49,
    n_resamples_adaptive=0,
    random_state=3,
    progress=False,
)


@pytest.fixture(scope="module")
def adata():
    return simulate_screen(n_cells=1500, n_genes=12, n_targets=4, n_ntc_guides=6, random_state=2)


@pytest.fixture(scope="module")
def inputs(adata):
    return prepare_crt_inputs(adata)


@pytest.fixture(scope="module")
def full(inputs):
    """Uninterrupted tables, no checkpoints."""
    return {
        "gene_loop": run_gene_loop(inputs, **TEST),
        "ntc_groups": run_ntc_groups(inputs, **TEST),
    }


RUNNERS = {"gene_loop": run_gene_loop, "ntc_groups": run_ntc_groups}


def _unit_files(ckpt):
    return sorted(f for f in os.listdir(ckpt) if f.startswith("unit_"))


def _counting(monkeypatch):
    calls = []
    original = execution._test_unit

    def counting(*args, **kwargs):
        calls.append(args[3])
        return original(*args, **kwargs)

    monkeypatch.setattr(execution, "_test_unit", counting)
    return calls


def _exact(a, b):
    pd.testing.assert_frame_equal(a, b, check_exact=True)


# ---------------------------------------------------------------------- the table format
def test_table_round_trip_is_exact(tmp_path):
    frame = pd.DataFrame(
        {
            "f": [1 / 3, np.nan, np.inf, -np.inf, -0.0, 5e-324, 1e308, 0.1],
            "s": ["", "NA", "nan", "a,b", 'q"x', "two\nlines", "None", "é"],
            "o": ["x", None, np.nan, "", "y", "1", "z", "w"],
            "b": [True, False] * 4,
            "i": np.arange(8, dtype=np.int64) - 3,
            "f32": np.linspace(0, 1, 8, dtype=np.float32),
            "u8": np.arange(8, dtype=np.uint8),
        }
    )
    path = str(tmp_path / "t.csv")
    write_table(path, frame, unit="u")
    meta, back = read_table(path)
    assert meta["unit"] == "u" and meta["n_rows"] == 8
    _exact(frame, back)
    assert np.signbit(back["f"].iloc[4])
    with open(path, "rb") as fh:
        assert not fh.read().startswith(pickle.dumps(0)[:1])  # text, not a pickle


def test_table_rejects_unsupported_dtypes(tmp_path):
    with pytest.raises(TypeError, match="column 'c' has dtype category"):
        write_table(str(tmp_path / "t.csv"), pd.DataFrame({"c": pd.Categorical(["a"])}))


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda raw: b"", "empty"),
        (lambda raw: raw[:-4], "checksum"),
        (lambda raw: raw[: len(raw) // 3], "not an sklcrt checkpoint"),
        (lambda raw: b"\x00\xffgarbage" * 10, "not an sklcrt checkpoint"),
        (lambda raw: pickle.dumps(pd.DataFrame({"a": [1]})), "not an sklcrt checkpoint"),
        (lambda raw: raw.replace(b"0.33333333333333331", b"0.5"), "checksum"),
        (lambda raw: raw.split(b"\n", 1)[1], "not an sklcrt checkpoint"),
    ],
    ids=["empty", "truncated", "truncated-header", "garbage", "pickle", "edited", "no-header"],
)
def test_read_table_refuses_damaged_files(tmp_path, damage, match):
    path = str(tmp_path / "t.csv")
    write_table(path, pd.DataFrame({"f": [1 / 3, 2.0]}), unit="u")
    with open(path, "rb") as fh:
        raw = fh.read()
    with open(path, "wb") as fh:
        fh.write(damage(raw))
    with pytest.raises(CheckpointError, match=match) as err:
        read_table(path)
    assert path in str(err.value)


# ---------------------------------------------------------------------- faults in a directory
def _first_run(inputs, ckpt, runner="gene_loop"):
    return RUNNERS[runner](inputs, checkpoint_dir=str(ckpt), **TEST)


def _corrupt(path, how):
    with open(path, "rb") as fh:
        raw = fh.read()
    body = {
        "truncated": raw[: len(raw) * 2 // 3],
        "empty": b"",
        "garbage": os.urandom(300),
        "pickle": pickle.dumps(pd.DataFrame({"a": [1]})),
    }[how]
    with open(path, "wb") as fh:
        fh.write(body)


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "pickle"])
def test_corrupt_unit_file_is_recomputed_with_a_warning(inputs, full, tmp_path, monkeypatch, how):
    ckpt = tmp_path / "ckpt"
    _first_run(inputs, ckpt)
    victim = str(ckpt / _unit_files(ckpt)[1])
    _corrupt(victim, how)
    calls = _counting(monkeypatch)
    with pytest.warns(CheckpointWarning, match=f"not used.*{victim}"):
        resumed = _first_run(inputs, ckpt)
    assert len(calls) == 1
    _exact(resumed, full["gene_loop"])
    # the recomputed unit was written again, intact
    read_table(victim)


def test_unit_file_copied_over_another_is_recomputed(inputs, full, tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    _first_run(inputs, ckpt)
    a, b = _unit_files(ckpt)[:2]
    shutil.copyfile(ckpt / a, ckpt / b)
    calls = _counting(monkeypatch)
    with pytest.warns(CheckpointWarning, match=r"holds unit .*not .*copied"):
        resumed = _first_run(inputs, ckpt)
    assert len(calls) == 1
    _exact(resumed, full["gene_loop"])
    assert resumed.duplicated(["unit", "response"]).sum() == 0


def test_edited_values_are_recomputed(inputs, full, tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    _first_run(inputs, ckpt)
    victim = ckpt / _unit_files(ckpt)[0]
    header, body = victim.read_bytes().split(b"\n", 1)
    table = pd.read_csv(io.BytesIO(body), keep_default_na=False)
    table.loc[0, "pvalue"] = 1e-12  # a tempting discovery
    edited = table.to_csv(index=False, float_format="%.17g", lineterminator="\n").encode()
    victim.write_bytes(header + b"\n" + edited)
    calls = _counting(monkeypatch)
    with pytest.warns(CheckpointWarning, match="checksum"):
        resumed = _first_run(inputs, ckpt)
    assert len(calls) == 1
    _exact(resumed, full["gene_loop"])


def test_unit_file_from_another_run_is_recomputed(inputs, full, tmp_path, monkeypatch):
    ckpt, other = tmp_path / "ckpt", tmp_path / "other"
    _first_run(inputs, ckpt)
    run_gene_loop(inputs, checkpoint_dir=str(other), **{**TEST, "random_state": 4})
    name = _unit_files(ckpt)[2]
    shutil.copyfile(other / name, ckpt / name)  # same unit, another seed
    calls = _counting(monkeypatch)
    with pytest.warns(CheckpointWarning, match="run with other arguments"):
        resumed = _first_run(inputs, ckpt)
    assert len(calls) == 1
    _exact(resumed, full["gene_loop"])


@pytest.mark.parametrize("how", ["deleted", "corrupt", "empty"])
def test_config_lost_resumes_checked_units(inputs, full, tmp_path, monkeypatch, how):
    ckpt = tmp_path / "ckpt"
    _first_run(inputs, ckpt)
    stamp = ckpt / CONFIG
    if how == "deleted":
        stamp.unlink()
    else:
        stamp.write_text("{not json" if how == "corrupt" else "")
    calls = _counting(monkeypatch)
    with pytest.warns(CheckpointWarning, match=f"{CONFIG}.*rewritten"):
        resumed = _first_run(inputs, ckpt)
    assert calls == []  # every unit file was checked against this run and used
    _exact(resumed, full["gene_loop"])
    assert json.loads(stamp.read_text())["fingerprint"]


def test_config_lost_and_units_of_another_run_is_refused(inputs, tmp_path):
    ckpt = tmp_path / "ckpt"
    _first_run(inputs, ckpt)
    (ckpt / CONFIG).unlink()
    with pytest.raises(ValueError, match=f"{CONFIG} is missing.*other arguments.*new checkpoint"):
        run_gene_loop(inputs, checkpoint_dir=str(ckpt), **{**TEST, "random_state": 9})


def test_old_pickle_checkpoints_are_never_loaded(inputs, full, tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / CONFIG).write_text(json.dumps({"fingerprint": "0123456789abcdef"}))
    (ckpt / "unit_0123.pkl").write_bytes(pickle.dumps(full["gene_loop"]))
    with pytest.raises(ValueError, match="other arguments"):
        _first_run(inputs, ckpt)


def test_empty_directory_of_another_run_is_reused(inputs, full, tmp_path):
    ckpt = tmp_path / "ckpt"
    run_gene_loop(inputs, checkpoint_dir=str(ckpt), **{**TEST, "random_state": 9})
    for name in _unit_files(ckpt):
        os.remove(ckpt / name)
    _exact(_first_run(inputs, ckpt), full["gene_loop"])


# Settings that do not change results: a run resumes with them, and (the budget: a few
# resamples per block) a run without a checkpoint gives the same table.
@pytest.mark.parametrize("setting", [{"n_jobs": 2}, {"memory_budget_mb": 0.05}])
def test_resume_with_settings_that_keep_results(inputs, full, tmp_path, monkeypatch, setting):
    ckpt = tmp_path / "ckpt"
    _first_run(inputs, ckpt)
    calls = _counting(monkeypatch)
    resumed = run_gene_loop(inputs, checkpoint_dir=str(ckpt), **setting, **TEST)
    assert calls == []
    _exact(resumed, full["gene_loop"])
    _exact(run_gene_loop(inputs, **setting, **TEST), full["gene_loop"])


def test_leftover_temporary_file_is_ignored(inputs, full, tmp_path):
    ckpt = tmp_path / "ckpt"
    _first_run(inputs, ckpt)
    name = _unit_files(ckpt)[0]
    (ckpt / f"{name}.tmp123").write_bytes(b"half a fi")  # a write killed before its rename
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)
        _exact(_first_run(inputs, ckpt), full["gene_loop"])


# ---------------------------------------------------------------------- stale resumes
def _double(adata):
    out = adata.copy()
    out.X = out.X * 2
    return out


def _other_covariates(adata):
    out = adata.copy()
    covar = out.obsm["covar"].copy()
    covar["response_n_umis"] = covar["response_n_umis"][::-1].to_numpy()
    out.obsm["covar"] = covar
    return out


STALE = {
    "programs after counts": (lambda a: a, {"response": "programs"}),
    "other covariates": (_other_covariates, {}),
    "covariate subset": (lambda a: a, {"covariates": ["batch", "log1p_response_n_umis"]}),
    "another AnnData": (
        lambda a: simulate_screen(
            n_cells=1500, n_genes=12, n_targets=4, n_ntc_guides=6, random_state=5
        ),
        {},
    ),
    "doubled counts": (_double, {}),
    "another layer": (lambda a: _with_layer(a), {"layer": "half"}),
    "other ntc_labels": (lambda a: a, {"ntc_labels": ("non-targeting", "T1")}),
    "other seed": (lambda a: a, {"random_state": 4}),
    "other n_resamples": (lambda a: a, {"n_resamples": 99}),
    "other min_nonzero": (lambda a: a, {"min_nonzero": 3}),
}


def _with_layer(adata):
    out = adata.copy()
    half = out.X.copy()
    half.data = np.floor(half.data / 2)
    out.layers["half"] = half
    return out


@pytest.mark.parametrize("runner", ["gene_loop", "ntc_groups"])
@pytest.mark.parametrize("case", list(STALE))
def test_stale_resume_is_refused(adata, tmp_path, case, runner):
    ckpt = str(tmp_path / "ckpt")
    RUNNERS[runner](adata, checkpoint_dir=ckpt, **TEST)
    change, options = STALE[case]
    other = change(adata)
    if case == "other ntc_labels":
        targets = sorted(set(adata.uns["guide2gene"].values()) - {"non-targeting"})
        options = {"ntc_labels": ("non-targeting", targets[0])}
    with pytest.raises(ValueError, match="other arguments.*differs: .*new checkpoint_dir"):
        RUNNERS[runner](other, checkpoint_dir=ckpt, **{**TEST, **options})


def test_refusal_names_what_differs(adata, tmp_path):
    ckpt = str(tmp_path / "ckpt")
    run_gene_loop(adata, checkpoint_dir=ckpt, **TEST)
    with pytest.raises(ValueError, match="data: responses Y"):
        run_gene_loop(_double(adata), checkpoint_dir=ckpt, **TEST)
    with pytest.raises(ValueError, match="options: response_kind"):
        run_gene_loop(adata, checkpoint_dir=ckpt, response="programs", **TEST)
    with pytest.raises(ValueError, match="run: random_state"):
        run_gene_loop(adata, checkpoint_dir=ckpt, **{**TEST, "random_state": 1})


def test_fingerprint_does_not_depend_on_dict_order(inputs, tmp_path, monkeypatch):
    ckpt = str(tmp_path / "ckpt")
    run_gene_loop(inputs, checkpoint_dir=ckpt, **TEST)
    reordered = dict(TEST, resampling_kwargs=dict(reversed(TEST["resampling_kwargs"].items())))
    calls = _counting(monkeypatch)
    run_gene_loop(inputs, checkpoint_dir=ckpt, **reordered)
    assert calls == []


def test_store_is_small_when_pickled_for_workers(inputs, tmp_path):
    store = CheckpointStore(str(tmp_path), {"data": {"x": "y" * 10_000}})
    clone = pickle.loads(pickle.dumps(store))
    assert clone.fingerprint == store.fingerprint and clone.parts is None
    assert len(pickle.dumps(store)) < 1000


# ---------------------------------------------------------------------- killed and resumed
class _Killed(BaseException):
    """Stands for a kill: not an Exception, so nothing on the way catches it."""


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
    derandomize=True,
)
@given(
    runner=st.sampled_from(sorted(RUNNERS)),
    kills=st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=3),
)
def test_killed_and_resumed_equals_uninterrupted(inputs, full, runner, kills):
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
        ckpt = os.path.join(tmp, "ckpt")
        original = execution._test_unit
        for k in kills:  # each attempt dies after k more units
            calls = {"n": 0}

            def dying(*args, _k=k, _calls=calls, **kwargs):
                if _calls["n"] == _k:
                    raise _Killed
                _calls["n"] += 1
                return original(*args, **kwargs)

            mp.setattr(execution, "_test_unit", dying)
            try:
                RUNNERS[runner](inputs, checkpoint_dir=ckpt, **TEST)
            except _Killed:
                pass
        mp.setattr(execution, "_test_unit", original)
        resumed = RUNNERS[runner](inputs, checkpoint_dir=ckpt, **TEST)
        _exact(resumed, full[runner])


def test_fingerprint_of_float32_counts_does_not_depend_on_storage():
    import scipy.sparse as sp

    from sklcrt._fingerprint import content_fingerprint

    rng = np.random.default_rng(0)
    Y = sp.random(100_000, 5, density=0.3, format="csr", random_state=rng, dtype=np.float32)
    Y.data = np.ceil(Y.data * 50)
    assert content_fingerprint(Y) == content_fingerprint(sp.csc_matrix(Y, dtype=np.float64))
    assert content_fingerprint(Y) == content_fingerprint(Y.toarray())
