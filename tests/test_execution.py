"""Running units (#12): workers end when the run dies; impossible resample counts are refused
before any unit runs."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from sklcrt import execution
from sklcrt.checkpoints import CheckpointStore
from sklcrt.datasets import simulate_screen
from sklcrt.inputs import prepare_crt_inputs
from sklcrt.runners import fit_null_model, run_gene_loop, run_ntc_groups

LINUX = sys.platform.startswith("linux") and os.path.isdir("/proc/self")


@pytest.fixture(scope="module")
def inputs():
    adata = simulate_screen(n_cells=1200, n_genes=10, n_targets=3, n_ntc_guides=6, random_state=4)
    return prepare_crt_inputs(adata)


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------------- the run's process
def test_watch_in_the_runs_own_process_and_on_other_hosts():
    assert execution._parent_watch(None)()
    assert execution._parent_watch(execution._run_identity())()
    assert execution._parent_watch(("another-host", _dead_pid(), None))()


@pytest.mark.skipif(not LINUX, reason="needs /proc")
def test_watch_sees_a_dead_or_replaced_run():
    host = socket.gethostname()
    assert not execution._parent_watch((host, _dead_pid(), "1"))()
    # a live process with another start time is a reused pid: another process, not the run
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        started = execution._proc_stat(other.pid)[1]
        assert execution._parent_watch((host, other.pid, started))()
        assert not execution._parent_watch((host, other.pid, started + "0"))()
        other.kill()
        time.sleep(0.2)  # a zombie until reaped: dead all the same
        assert not execution._parent_watch((host, other.pid, started))()
    finally:
        other.kill()
        other.wait()


def test_worker_of_a_dead_run_computes_and_writes_nothing(inputs, tmp_path, monkeypatch):
    class Orphaned(Exception):
        pass

    def orphaned():
        raise Orphaned

    tested = []
    monkeypatch.setattr(execution, "_orphaned", orphaned)
    monkeypatch.setattr(execution, "_test_unit", lambda *a, **k: tested.append(a[3]))
    store = CheckpointStore(str(tmp_path), {})
    unit, guides = next(iter(inputs["units"].items()))
    chunk = [(unit, unit, guides, np.arange(3), "job")]
    with pytest.raises(Orphaned):
        execution._work_chunk(
            chunk,
            template=None,
            inputs=inputs,
            statistic=None,
            batch=None,
            burden=None,
            random_state=0,
            min_nonzero=7,
            store=store,
            run=(socket.gethostname(), _dead_pid(), None),
        )
    assert tested == [] and os.listdir(tmp_path) == []


SCRIPT = """
import os, sys
from sklcrt.datasets import simulate_screen
from sklcrt.runners import run_gene_loop

adata = simulate_screen(n_cells=2000, n_genes=30, n_targets=30, n_ntc_guides=4, random_state=0)
print(os.getpid(), flush=True)
run_gene_loop(
    adata, per_guide=True, n_jobs=2, checkpoint_dir=sys.argv[1], progress=False,
    resampling_method="perm", n_resamples=999, n_resamples_adaptive=0, random_state=0,
)
print("finished", flush=True)
"""
N_UNITS = 60  # 30 targets x 2 guides


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = execution._proc_stat(int(entry))
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid and stat is not None:
                out.append(int(entry))
    return out


def _gone(pid: int) -> bool:
    stat = execution._proc_stat(pid)
    return stat is None or stat[0] in ("Z", "X")


def _units(ckpt) -> set[str]:
    return {f for f in os.listdir(ckpt) if f.startswith("unit_")} if os.path.isdir(ckpt) else set()


@pytest.mark.skipif(not LINUX, reason="needs /proc and joblib's process workers")
def test_workers_end_when_the_run_is_killed(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(SCRIPT))
    ckpt = tmp_path / "ckpt"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(ckpt)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        run_pid = int(proc.stdout.readline())
        deadline = time.monotonic() + 180
        while len(_units(ckpt)) < 2:  # the workers are testing units
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no unit finished in time"
            time.sleep(0.05)
        workers = _children(run_pid)
        os.kill(run_pid, signal.SIGKILL)
        proc.wait(timeout=30)
        at_kill = _units(ckpt)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert workers, "no worker processes found"
    deadline = time.monotonic() + 30
    while not all(_gone(w) for w in workers):
        if time.monotonic() > deadline:
            for w in workers:  # clean up before failing
                if not _gone(w):
                    os.kill(w, signal.SIGKILL)
            pytest.fail("worker processes outlived the killed run by 30 s")
        time.sleep(0.1)
    after = _units(ckpt)
    # at most the unit each worker was writing when the run died
    assert len(after - at_kill) <= 2
    assert len(after) < N_UNITS
    time.sleep(1.0)
    assert _units(ckpt) == after


# ---------------------------------------------------------------------- impossible budgets
@pytest.mark.parametrize("runner", [run_gene_loop, run_ntc_groups])
@pytest.mark.parametrize("option", ["n_resamples", "n_resamples_adaptive"])
def test_impossible_resample_count_is_refused_in_one_line(inputs, runner, option):
    start = time.monotonic()
    with pytest.raises(ValueError, match="MiB of null statistics.*memory_budget_mb") as err:
        runner(inputs, progress=False, **{option: 10**9})
    assert "\n" not in str(err.value)
    assert time.monotonic() - start < 30


def test_impossible_resample_count_is_refused_by_the_cli(tmp_path, capsys):
    from sklcrt import cli

    adata = simulate_screen(n_cells=600, n_genes=10, n_targets=3, n_ntc_guides=6, random_state=1)
    adata.write_h5ad(tmp_path / "screen.h5ad")
    (tmp_path / "config.toml").write_text(
        textwrap.dedent(
            """
            input = "screen.h5ad"
            output_dir = "out"
            response = "counts"
            resampling_method = "perm"
            n_resamples = 1000000000
            n_resamples_adaptive = 0
            random_state = 1
            """
        )
    )
    code = cli.main(["run", str(tmp_path / "config.toml")])
    err = capsys.readouterr().err
    assert code != 0
    last = [line for line in err.splitlines() if line.startswith("sklcrt: error:")]
    assert last and "MiB of null statistics" in last[-1]
    assert "Traceback" not in err


def test_fitted_statistic_of_another_screen_is_refused(inputs):
    other = simulate_screen(n_cells=1200, n_genes=10, n_targets=3, n_ntc_guides=6, random_state=9)
    fitted = fit_null_model(prepare_crt_inputs(other))
    with pytest.raises(ValueError, match="fitted on other data"):
        run_gene_loop(inputs, test=None, statistic=fitted, progress=False, n_resamples=19)


@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("with_controls", [True, False])
def test_nonzero_counts_match_a_direct_count(sparse, with_controls):
    # The per-run counter (control-group totals once, treated rows per unit) counts what a
    # direct count over the treated and the untreated control cells gives, explicit zeros
    # of a sparse matrix included.
    import scipy.sparse as sp

    rng = np.random.default_rng(3)
    dense = rng.poisson(0.4, size=(300, 12)).astype(float)
    Y = sp.csr_matrix(dense) if sparse else dense
    if sparse:
        Y.data[::7] = 0.0  # stored zeros are not expression
        dense = Y.toarray()
    controls = rng.random(300) < 0.3 if with_controls else None
    counter = execution.NonzeroCounts(Y, controls)
    columns = np.array([0, 3, 4, 11])
    for _ in range(5):
        x = rng.random(300) < 0.1
        control = ~x if controls is None else controls & ~x
        treated, untreated = counter(x, columns)
        np.testing.assert_array_equal(treated, (dense[x][:, columns] != 0).sum(axis=0))
        np.testing.assert_array_equal(untreated, (dense[control][:, columns] != 0).sum(axis=0))
        eligible = None if controls is None else x | controls
        np.testing.assert_array_equal(
            execution.nonzero_counts(Y, x, columns, eligible), (treated, untreated)
        )
