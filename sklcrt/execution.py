"""Running units: QC and the test of each unit, in parallel chunks, with checkpoints.

The runners (:mod:`sklcrt.runners`) turn an analysis into jobs ``(unit, target, guides,
columns)``; :func:`run_units` tests them with one configured :class:`~sklcrt.crt.CRTTest` and one
fitted null model, each unit's random stream keyed by its name, and returns one row per pair.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from joblib import Parallel, delayed, effective_n_jobs
from sklearn.base import clone

from sklcrt._random import seed_sequence
from sklcrt._threads import single_threaded_blas
from sklcrt.checkpoints import CheckpointStore, job_fingerprint, run_fingerprint
from sklcrt.crt import CRTTest
from sklcrt.inputs import unit_treatment
from sklcrt.strata import factorize_batch

__all__ = ["RESULT_COLUMNS", "NonzeroCounts", "nonzero_counts", "run_units"]

#: The columns of every runner's table, one row per requested pair (the runners add ``p_adj``,
#: ``significant`` and, where the screen has gene symbols, ``response_name``).
RESULT_COLUMNS = [
    "unit",
    "grna_target",
    "response",
    "n_treated",
    "n_nonzero_treated",
    "n_nonzero_control",
    "statistic",
    "effect",
    "effect_se",
    "pvalue",
    "pvalue_method",
    "n_resamples",
    "n_strata",
    "pass_qc",
    "qc_reason",
]


# ---------------------------------------------------------------------- one unit
class NonzeroCounts:
    """Cells with nonzero expression of each response among a unit's treated and control cells.

    Built once per run: the positions of the nonzero counts (row-major) and their counts per
    response over the control group (all cells when ``control_cells`` is None). A unit then
    reads only its treated cells' rows, so the pairwise QC of a unit costs the nonzero counts of
    its cells, not of the screen.
    """

    def __init__(self, Y, control_cells: np.ndarray | None = None):
        self.control_cells = control_cells
        if sp.issparse(Y):
            csr = sp.csr_matrix(Y)  # no copy when Y is CSR already
            if not (csr.has_canonical_format and np.all(csr.data != 0)):
                csr = csr.copy()
                csr.sum_duplicates()
                csr.data = (csr.data != 0).astype(np.int8)
                csr.eliminate_zeros()
            self._nz = csr  # only its positions are read
        else:
            self._nz = np.asarray(Y) != 0
        self.n_responses = Y.shape[1]
        self._base = self._count(None if control_cells is None else control_cells)

    def _count(self, rows: np.ndarray | None) -> np.ndarray:
        """Nonzero cells per response among the cells ``rows`` (a boolean mask; None: all)."""
        if isinstance(self._nz, np.ndarray):
            sub = self._nz if rows is None else self._nz[rows]
            return sub.sum(axis=0).astype(np.int64)
        sub = self._nz if rows is None else self._nz[np.flatnonzero(rows)]
        return np.bincount(sub.indices, minlength=self.n_responses).astype(np.int64)

    def __call__(self, x: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(treated, control)`` nonzero counts of the responses ``columns``."""
        treated = self._count(x)
        # Controls: the control group's cells that are not treated.
        overlap = treated if self.control_cells is None else self._count(x & self.control_cells)
        return treated[columns], (self._base - overlap)[columns]


def nonzero_counts(
    Y, x: np.ndarray, columns: np.ndarray, eligible: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Nonzero-expression cells among treated and control cells for each selected response.

    Control cells are the eligible untreated cells (all untreated cells when ``eligible`` is
    None). For many units, build one :class:`NonzeroCounts` instead."""
    return NonzeroCounts(Y, eligible)(x, columns)


def _test_unit(
    template: CRTTest,
    inputs: dict,
    statistic,
    unit: str,
    target: str,
    guides: Sequence[str],
    columns: np.ndarray,
    batch,
    burden,
    random_state,
    min_nonzero: int,
) -> pd.DataFrame:
    """Rows for one unit: QC, then the CRT on the pairs that pass."""
    names = np.asarray(inputs["response_names"], dtype=object)
    x = unit_treatment(inputs, guides)
    n_treated = int(x.sum())
    controls = inputs.get("control_cells")
    # The cells a resample may treat: the unit's cells and the control group (None: all cells).
    eligible = None if controls is None else x | controls
    n_control = x.size - n_treated if eligible is None else int(eligible.sum()) - n_treated
    n = len(columns)
    # Columns as arrays, one DataFrame at the end (per-column frame assignments cost more
    # than a small unit's test).
    col = {
        "statistic": np.full(n, np.nan),
        "effect": np.full(n, np.nan),
        "effect_se": np.full(n, np.nan),
        "pvalue": np.full(n, np.nan),
        "pvalue_method": np.full(n, "", dtype=object),  # "" (not None): saves to h5ad
        "n_resamples": np.zeros(n, dtype=np.int64),
        "n_nonzero_treated": np.full(n, -1, dtype=np.int64),
        "n_nonzero_control": np.full(n, -1, dtype=np.int64),
    }
    n_strata = 0
    pass_qc = np.ones(n, dtype=bool)
    reason = np.full(n, "", dtype=object)

    if n_treated == 0 or n_control == 0:
        pass_qc[:] = False
        if n_treated == 0:
            reason[:] = "no treated cells"
        elif controls is None:
            reason[:] = "no control cells"
        else:
            reason[:] = "no control cells (every cell of the control group is treated)"
    elif inputs["response_kind"] == "counts":
        # A count response needs expression in both arms to have a test (and a finite log2
        # fold change) whatever min_nonzero: with none, the pair is untestable.
        nz_t, nz_c = inputs["nonzero_counts"](x, columns)
        col["n_nonzero_treated"], col["n_nonzero_control"] = nz_t, nz_c
        need = max(min_nonzero, 1)
        low_t, low_c = nz_t < need, nz_c < need
        pass_qc &= ~(low_t | low_c)
        if min_nonzero > 0:
            reason[low_t] = f"fewer than {need} treated cells with nonzero expression"
            reason[low_c & ~low_t] = f"fewer than {need} control cells with nonzero expression"
        else:
            reason[low_t] = "no treated cell with nonzero expression (untestable)"
            reason[low_c & ~low_t] = "no control cell with nonzero expression (untestable)"

    if pass_qc.any():
        test = clone(template).set_params(statistic=statistic, random_state=random_state)
        test.fit(
            inputs["C"],
            x,
            responses=None,
            batch=batch,
            burden=burden,
            columns=columns[pass_qc],
            eligible=eligible,
        )
        ok = np.flatnonzero(pass_qc)
        col["statistic"][ok] = test.statistic_
        col["effect"][ok] = test.effect_
        col["effect_se"][ok] = test.effect_se_
        col["pvalue"][ok] = test.pvalue_
        col["pvalue_method"][ok] = test.pvalue_method_
        col["n_resamples"][ok] = test.n_resamples_
        n_strata = int(test.diagnostics_.get("n_strata", 1))
        # A pair whose statistic is undefined (e.g. a constant response) is not a tested pair.
        undefined = ok[~np.isfinite(col["pvalue"][ok])]
        pass_qc[undefined] = False
        reason[undefined] = "the test is undefined for this response (e.g. it does not vary)"
        col["pvalue_method"][undefined] = ""
        col["n_resamples"][undefined] = 0
    frame = {
        "unit": np.full(n, unit, dtype=object),
        "grna_target": np.full(n, target, dtype=object),
        "response": names[columns],
        "n_treated": np.full(n, n_treated, dtype=np.int64),
        **col,
        "n_strata": np.full(n, n_strata, dtype=np.int64),
        "pass_qc": pass_qc,
        "qc_reason": reason,
    }
    return pd.DataFrame({name: frame[name] for name in RESULT_COLUMNS})


# ---------------------------------------------------------------------- many units
# Inputs a unit's test reads (the rest of the inputs dict stays in the parent process).
_UNIT_INPUT_KEYS = ("response_names", "response_kind", "C", "guides", "guide_names")
# Most units per task when units run in parallel (see _run_units).
_MAX_CHUNK = 32


def _unit_inputs(inputs: dict, control_cells: np.ndarray | None = None) -> dict:
    """The part of ``inputs`` that :func:`_test_unit` reads, with the guides in CSC form, and the
    control group's cells (``None``: every other cell, see :func:`_control_cells`)."""
    shared = {k: inputs[k] for k in _UNIT_INPUT_KEYS}
    shared["control_cells"] = control_cells
    if inputs["response_kind"] == "counts":  # the pairwise QC
        shared["nonzero_counts"] = NonzeroCounts(inputs["Y"], control_cells)
    if sp.issparse(shared["guides"]):
        shared["guides"] = sp.csc_matrix(shared["guides"])  # a unit reads a few columns
    return shared


def _chunk_size(n_units: int, n_jobs) -> int:
    """Units per task: one at a time in this process, else about 4 tasks per worker (<= 32)."""
    workers = effective_n_jobs(n_jobs)
    if workers == 1 or n_units == 0:
        return 1
    return max(1, min(_MAX_CHUNK, -(-n_units // (4 * workers))))


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """The state and start time of process ``pid`` from ``/proc`` (None where unavailable)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
    except OSError:
        return None
    return fields[0], fields[19]


def _run_identity() -> tuple[str, int, str | None]:
    """Who runs the units: host, process id and its start time (a reused pid is another run)."""
    stat = _proc_stat(os.getpid())
    return socket.gethostname(), os.getpid(), None if stat is None else stat[1]


def _parent_watch(run: tuple | None):
    """A function telling whether this process should go on testing units.

    In the run's own process, or on another host (a cluster's worker), always ``True``. In a
    worker process on the run's host (joblib's loky or multiprocessing workers, a local dask
    cluster), whether the run's process still lives: still this worker's parent
    (``os.getppid()``), or else alive, not a zombie and started when it was."""
    if run is None:
        return lambda: True
    host, pid, started = run
    if os.getpid() == pid or host != socket.gethostname():
        return lambda: True

    def alive() -> bool:
        if os.getppid() == pid:
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # pragma: no cover - exists, another user's
            return False
        stat = _proc_stat(pid)
        if stat is None:
            return started is None
        return stat[0] not in ("Z", "X") and stat[1] == started

    return alive


def _orphaned() -> None:
    """End a worker whose run died (kill -9 of the parent): write nothing more, compute no more."""
    os._exit(1)


def _work_chunk(
    chunk,
    *,
    template,
    inputs,
    statistic,
    batch,
    burden,
    random_state,
    min_nonzero,
    store,
    run=None,
):
    """Test the units of one task; returns ``[(unit, frame), ...]``.

    ``chunk`` holds ``(unit, target, guides, columns, job_fingerprint)``; each finished unit is
    written to ``store`` (a :class:`~sklcrt.checkpoints.CheckpointStore`, or None). A worker
    process whose run's process ``run`` (:func:`_run_identity`) has died ends before its next
    unit or write, also in a task it picks up after the death."""
    alive = _parent_watch(run)
    out = []
    # The products of a unit's test are thin (cells x a few columns): threaded BLAS gains
    # nothing there and oversubscribes the cores when units run in parallel.
    with single_threaded_blas():
        for unit, target, guides, columns, job in chunk:
            if not alive():
                _orphaned()
            frame = _test_unit(
                template,
                inputs,
                statistic,
                unit,
                target,
                guides,
                columns,
                batch,
                burden,
                seed_sequence(random_state, unit),
                min_nonzero,
            )
            if store is not None:
                if not alive():
                    _orphaned()
                store.save(unit, job, frame)
            out.append((unit, frame))
    return out


def run_units(
    inputs: dict,
    jobs: list[tuple[str, str, list[str], np.ndarray]],
    *,
    statistic,
    template: CRTTest,
    batch: np.ndarray | None,
    burden: np.ndarray | None,
    random_state,
    n_jobs: int,
    progress: bool,
    checkpoint_dir: str | None,
    min_nonzero: int,
    desc: str,
    fingerprint_extra: dict,
    control_cells: np.ndarray | None = None,
) -> pd.DataFrame:
    """Test every (unit, target, guides, columns) job; results in job order, seed per unit name.

    ``control_cells`` (from :func:`_control_cells`, computed once per run) is the control group
    each unit is compared with besides its own cells; ``None`` compares with all other cells.

    With ``checkpoint_dir``, each finished unit is written there (:mod:`sklcrt.checkpoints`) and
    a rerun resumes: the directory's fingerprint covers the data the units read (responses,
    covariates, guides, names, the raw ``batch``/``burden``, the control cells), the input options
    (response kind, non-targeting guides, units, jobs), the test (``template``'s parameters and
    the fitted ``statistic``: class, parameters, the data it was fitted on), ``random_state``,
    ``min_nonzero`` and ``fingerprint_extra`` (the runner's options). A directory from another run
    is refused unless it holds no unit; a unit file that is corrupt or not this run's is
    recomputed with a :class:`~sklcrt.checkpoints.CheckpointWarning` naming it. Worker processes
    end when the run's process dies."""
    if random_state is None:
        raise ValueError(
            "random_state=None would make a screen irreproducible; pass an integer seed."
        )
    done: dict[str, pd.DataFrame] = {}
    keyed = [(*job, job_fingerprint(*job)) for job in jobs]
    store = None
    if checkpoint_dir is not None:
        parts = run_fingerprint(
            inputs,
            jobs,
            template=template,
            statistic=statistic,
            batch=batch,
            burden=burden,
            control_cells=control_cells,
            random_state=random_state,
            min_nonzero=min_nonzero,
            extra=fingerprint_extra,
        )
        store = CheckpointStore(checkpoint_dir, parts)
        store.open()
        for unit, *_, job in keyed:
            frame = store.load(unit, job)
            if frame is not None:
                done[unit] = frame

    todo = [job for job in keyed if job[0] not in done]
    if batch is not None:
        # Integer codes in the order of the sorted labels: the strata are the same, and each
        # unit factorizes small integers instead of (e.g.) 200,000 strings.
        try:
            batch = factorize_batch(batch, "batch")[0]
        except ValueError:
            pass  # e.g. missing labels: left to the encoder, which says so if it uses them
    shared = _unit_inputs(inputs, control_cells)
    options = dict(
        template=template,
        inputs=shared,
        statistic=statistic,
        batch=batch,
        burden=burden,
        random_state=random_state,
        min_nonzero=min_nonzero,
        store=store,
        run=_run_identity(),
    )
    # Units go to the workers in chunks: every task ships the shared inputs and the fitted null
    # model (joblib hashes and memory-maps the large arrays once per task), which costs about as
    # much as testing a few units; chunks spread that over many units.
    size = _chunk_size(len(todo), n_jobs)
    chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
    results = Parallel(n_jobs=n_jobs, return_as="generator")(
        delayed(_work_chunk)(chunk, **options) for chunk in chunks
    )
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc=desc)
        try:
            for pairs in results:
                for unit, frame in pairs:
                    done[unit] = frame
                bar.update(len(pairs))
        finally:
            bar.close()
    else:
        for pairs in results:
            for unit, frame in pairs:
                done[unit] = frame
    frames = [done[unit] for unit, *_ in jobs]
    if not frames:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    return pd.concat(frames, ignore_index=True)
