"""Screen-level runners: every unit of an AnnData screen against its responses.

The runners adapt AnnData (through :func:`sklcrt.inputs.prepare_crt_inputs`) to :class:`CRTTest`:
they fit the null model of every response once, test each unit on its requested responses (in
parallel with joblib), apply pairwise QC, and return one tidy row per requested pair.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from joblib import Parallel, delayed, effective_n_jobs
from scipy import stats
from sklearn.base import clone
from threadpoolctl import threadpool_limits

from sklcrt._random import as_generator, seed_sequence
from sklcrt.crt import CRTTest
from sklcrt.inputs import prepare_crt_inputs, unit_treatment
from sklcrt.resampling import resolve_resampling
from sklcrt.statistics import NBScoreStatistic, OLSStatistic
from sklcrt.strata import factorize_batch

__all__ = [
    "fit_null_model",
    "run_unit",
    "run_gene_loop",
    "run_ntc_groups",
    "run_ntc_ensemble",
    "make_ntc_groups",
    "calibration_summary",
    "power_check",
    "discovery_analysis",
    "add_bh",
]

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
    "p_value",
    "pvalue_method",
    "n_resamples",
    "n_strata",
    "pass_qc",
    "qc_reason",
]


#: Control groups of the runners' ``control_group`` option, in SCEPTRE's words.
CONTROL_GROUPS = ("complement", "nt_cells")


# ---------------------------------------------------------------------- inputs and models
def _as_inputs(data, input_kwargs) -> dict:
    if isinstance(data, dict):
        if input_kwargs:
            raise ValueError(
                f"{sorted(input_kwargs)} are options of prepare_crt_inputs; pass them when "
                "preparing the inputs, not with an already prepared inputs dict."
            )
        return data
    return prepare_crt_inputs(data, **input_kwargs)


def fit_null_model(inputs: dict, statistic=None, n_jobs=None):
    """Fit the null model of every response once, for all units and analyses.

    Parameters
    ----------
    inputs : dict
        From :func:`sklcrt.inputs.prepare_crt_inputs`.
    statistic : BaseStatistic, default=None
        Unfitted statistic; ``None`` picks :class:`NBScoreStatistic` for counts and
        :class:`OLSStatistic` for program usages. A fitted one is returned as is.
    n_jobs : int, default=None
        Threads of the default :class:`NBScoreStatistic`'s fit (a given statistic keeps its
        own settings). The fit is the same whatever ``n_jobs``.

    Returns
    -------
    BaseStatistic
        The fitted statistic.
    """
    if statistic is not None and hasattr(statistic, "n_responses_"):
        if statistic.n_cells_ != inputs["C"].shape[0]:
            raise ValueError(
                f"statistic was fitted on {statistic.n_cells_} cells, the inputs have "
                f"{inputs['C'].shape[0]}; refit it or pass an unfitted one."
            )
        return statistic
    if statistic is None:
        counts = inputs["response_kind"] == "counts"
        statistic = NBScoreStatistic(n_jobs=n_jobs) if counts else OLSStatistic()
    else:
        statistic = clone(statistic)
    return statistic.fit(inputs["Y"], inputs["C"])


def _control_cells(inputs: dict, control_group: str) -> np.ndarray | None:
    """The cells every unit is compared with besides its own: ``None`` for the complement
    (all other cells), else the cells whose guides are all non-targeting (at least one)."""
    if control_group not in CONTROL_GROUPS:
        raise ValueError(
            f"control_group must be one of {list(CONTROL_GROUPS)}, got {control_group!r}."
        )
    if control_group == "complement":
        return None
    guides = inputs["guides"]
    names = [str(g) for g in inputs["guide_names"]]
    ntc = set(map(str, inputs["ntc_guides"]))
    is_ntc = np.array([g in ntc for g in names], dtype=bool)
    if sp.issparse(guides):
        carried = sp.csr_matrix(guides) != 0
        n_guides = carried.getnnz(axis=1)
        n_ntc = carried[:, np.flatnonzero(is_ntc)].getnnz(axis=1)
    else:
        carried = np.asarray(guides) != 0
        n_guides = carried.sum(axis=1)
        n_ntc = carried[:, is_ntc].sum(axis=1)
    controls = (n_ntc > 0) & (n_ntc == n_guides)
    if not controls.any():
        raise ValueError(
            f"control_group='nt_cells' needs cells that carry only non-targeting guides, but none "
            f"of the {controls.size} cells does ({int(is_ntc.sum())} non-targeting guides: "
            f"{sorted(ntc)[:5]}). Check ntc_labels of prepare_crt_inputs, or use "
            "control_group='complement'."
        )
    return np.asarray(controls, dtype=bool)


def _strata_inputs(inputs: dict, test: CRTTest) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Raw batch labels and raw burden values the test's strata need, read from covar_df_raw."""
    if test.resampling_method is None and test.resampling_kwargs is None:
        batch = inputs.get("batch_raw")
        return batch, None
    config = resolve_resampling(test.resampling_method or "bernoulli_index", test.resampling_kwargs)
    covar = inputs["covar_df_raw"]
    batch = None
    if config.method == "stratified_perm" and config.stratify_by_batch:
        if config.batch_key not in covar.columns:
            raise ValueError(
                f"resampling_kwargs['batch_key']={config.batch_key!r} is not a column of the raw "
                f"covariates (columns: {list(covar.columns)}); set batch_key to the batch column "
                "or stratify_by_batch=False."
            )
        batch = covar[config.batch_key].to_numpy()
    burden = None
    if config.burden_key is not None:
        numeric = [c for c in covar.columns if pd.api.types.is_numeric_dtype(covar[c])]
        key = config.burden_key
        if key not in covar.columns:
            raise ValueError(
                f"resampling_kwargs['burden_key']={key!r} is not a column of the raw covariates; "
                f"numeric columns are {numeric}. Add burden covariates with "
                "sklcrt.assignment.add_burden_covariates."
            )
        if key not in numeric:
            raise ValueError(
                f"burden_key {key!r} must name a numeric column, it has dtype "
                f"{covar[key].dtype}; numeric columns are {numeric}."
            )
        burden = covar[key].to_numpy(dtype=float)
        if not np.all(np.isfinite(burden)):
            raise ValueError(
                f"burden_key {key!r} has {int(np.sum(~np.isfinite(burden)))} NaN/inf values; "
                "fix the column (sklcrt never imputes)."
            )
    return batch, burden


def _make_test(
    test,
    *,
    resampling_method,
    resampling_kwargs,
    n_resamples,
    n_resamples_adaptive,
    adaptive_threshold,
    alternative,
    pvalue_method,
    propensity,
) -> CRTTest:
    if test is not None:
        return clone(test)
    return CRTTest(
        propensity=propensity,
        resampling_method=resampling_method,
        resampling_kwargs=None if resampling_kwargs is None else dict(resampling_kwargs),
        n_resamples=n_resamples,
        n_resamples_adaptive=n_resamples_adaptive,
        adaptive_threshold=adaptive_threshold,
        alternative=alternative,
        pvalue_method=pvalue_method,
    )


# ---------------------------------------------------------------------- one unit
def _qc_counts(
    Y, x: np.ndarray, columns: np.ndarray, eligible: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Nonzero-expression cells among treated and control cells for each selected response.

    Control cells are the eligible untreated cells (all untreated cells when ``eligible`` is
    None)."""
    if sp.issparse(Y):
        sub = Y[:, columns].tocsc() if not sp.isspmatrix_csc(Y) else Y[:, columns]
        nz = sub.copy()
        nz.data = (nz.data != 0).astype(np.int64)
        if eligible is None:
            total = np.asarray(nz.sum(axis=0)).ravel()
        else:
            total = np.asarray(nz[np.flatnonzero(eligible)].sum(axis=0)).ravel()
        treated = np.asarray(nz[np.flatnonzero(x)].sum(axis=0)).ravel()
    else:
        sub = np.asarray(Y)[:, columns] != 0
        total = sub.sum(axis=0) if eligible is None else sub[eligible].sum(axis=0)
        treated = sub[x].sum(axis=0)
    return treated.astype(np.int64), (total - treated).astype(np.int64)


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
    rows = pd.DataFrame({"unit": unit, "grna_target": target, "response": names[columns]})
    rows["n_treated"] = n_treated
    for col in ("statistic", "effect", "effect_se", "p_value"):
        rows[col] = np.nan
    rows["pvalue_method"] = None
    rows["n_resamples"] = 0
    rows["n_strata"] = 0
    rows["n_nonzero_treated"] = -1
    rows["n_nonzero_control"] = -1
    pass_qc = np.ones(len(columns), dtype=bool)
    reason = np.full(len(columns), "", dtype=object)

    if n_treated == 0 or n_control == 0:
        pass_qc[:] = False
        if n_treated == 0:
            reason[:] = "no treated cells"
        elif controls is None:
            reason[:] = "no control cells"
        else:
            reason[:] = "no control cells (every cell of the control group is treated)"
    elif inputs["response_kind"] == "counts" and min_nonzero > 0:
        nz_t, nz_c = _qc_counts(inputs["Y"], x, columns, eligible)
        rows["n_nonzero_treated"] = nz_t
        rows["n_nonzero_control"] = nz_c
        low_t, low_c = nz_t < min_nonzero, nz_c < min_nonzero
        pass_qc &= ~(low_t | low_c)
        reason[low_t] = f"fewer than {min_nonzero} treated cells with nonzero expression"
        reason[low_c & ~low_t] = f"fewer than {min_nonzero} control cells with nonzero expression"

    if pass_qc.any():
        test = clone(template).set_params(statistic=statistic, random_state=random_state)
        test.fit(
            inputs["C"],
            x,
            Y=None,
            batch=batch,
            burden=burden,
            columns=columns[pass_qc],
            eligible=eligible,
        )
        ok = np.flatnonzero(pass_qc)
        rows.loc[ok, "statistic"] = test.statistic_
        rows.loc[ok, "effect"] = test.effect_
        rows.loc[ok, "effect_se"] = test.effect_se_
        rows.loc[ok, "p_value"] = test.pvalues_
        rows.loc[ok, "pvalue_method"] = test.pvalue_methods_
        rows.loc[ok, "n_resamples"] = test.n_resamples_
        rows["n_strata"] = int(test.diagnostics_.get("n_strata", 1))
    rows["pass_qc"] = pass_qc
    rows["qc_reason"] = reason
    return rows[RESULT_COLUMNS]


# ---------------------------------------------------------------------- many units
def _config_fingerprint(template: CRTTest, extra: dict) -> str:
    params = {
        k: repr(v) for k, v in sorted(template.get_params(deep=False).items()) if k != "statistic"
    }
    params.update({k: repr(v) for k, v in sorted(extra.items())})
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def _unit_file(checkpoint_dir: str, unit: str) -> str:
    digest = hashlib.sha256(unit.encode()).hexdigest()[:20]
    return os.path.join(checkpoint_dir, f"unit_{digest}.pkl")


# Inputs a unit's test reads (the rest of the inputs dict stays in the parent process).
_UNIT_INPUT_KEYS = ("response_names", "response_kind", "C", "guides", "guide_names")
# Most units per task when units run in parallel (see _run_units).
_MAX_CHUNK = 32


def _unit_inputs(inputs: dict, control_cells: np.ndarray | None = None) -> dict:
    """The part of ``inputs`` that :func:`_test_unit` reads, with the guides in CSC form, and the
    control group's cells (``None``: every other cell, see :func:`_control_cells`)."""
    shared = {k: inputs[k] for k in _UNIT_INPUT_KEYS}
    shared["control_cells"] = control_cells
    if inputs["response_kind"] == "counts":  # read by the pairwise QC, a few columns per unit
        Y = inputs["Y"]
        shared["Y"] = sp.csc_matrix(Y) if sp.issparse(Y) else Y
    if sp.issparse(shared["guides"]):
        shared["guides"] = sp.csc_matrix(shared["guides"])  # a unit reads a few columns
    return shared


def _chunk_size(n_units: int, n_jobs) -> int:
    """Units per task: one at a time in this process, else about 4 tasks per worker (<= 32)."""
    workers = effective_n_jobs(n_jobs)
    if workers == 1 or n_units == 0:
        return 1
    return max(1, min(_MAX_CHUNK, -(-n_units // (4 * workers))))


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
    checkpoint_dir,
):
    """Test the units of one task; returns ``[(unit, frame), ...]``."""
    out = []
    # The products of a unit's test are thin (cells x a few columns): threaded BLAS gains
    # nothing there and oversubscribes the cores when units run in parallel.
    with threadpool_limits(limits=1, user_api="blas"):
        for unit, target, guides, columns in chunk:
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
            if checkpoint_dir is not None:
                tmp = _unit_file(checkpoint_dir, unit) + ".tmp"
                frame.to_pickle(tmp)
                os.replace(tmp, _unit_file(checkpoint_dir, unit))
            out.append((unit, frame))
    return out


def _run_units(
    inputs: dict,
    jobs: list[tuple[str, str, list[str], np.ndarray]],
    *,
    statistic,
    template: CRTTest,
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
    each unit is compared with besides its own cells; ``None`` compares with all other cells."""
    if random_state is None:
        raise ValueError(
            "random_state=None would make a screen irreproducible; pass an integer seed."
        )
    batch, burden = _strata_inputs(inputs, template)
    done: dict[str, pd.DataFrame] = {}
    if checkpoint_dir is not None:
        os.makedirs(checkpoint_dir, exist_ok=True)
        stamp = os.path.join(checkpoint_dir, "config.json")
        fingerprint = _config_fingerprint(
            template,
            {**fingerprint_extra, "random_state": random_state, "min_nonzero": min_nonzero},
        )
        if os.path.exists(stamp):
            with open(stamp) as fh:
                if json.load(fh)["fingerprint"] != fingerprint:
                    raise ValueError(
                        f"checkpoint_dir {checkpoint_dir!r} holds units from a run with other "
                        "arguments; use a new directory or the same arguments to resume."
                    )
        else:
            with open(stamp, "w") as fh:
                json.dump({"fingerprint": fingerprint}, fh)
        for unit, *_ in jobs:
            path = _unit_file(checkpoint_dir, unit)
            if os.path.exists(path):
                done[unit] = pd.read_pickle(path)

    todo = [job for job in jobs if job[0] not in done]
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
        checkpoint_dir=checkpoint_dir,
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


def _response_columns(inputs: dict, responses) -> np.ndarray:
    names = list(inputs["response_names"])
    if responses is None:
        return np.arange(len(names))
    index = {r: i for i, r in enumerate(names)}
    missing = [r for r in responses if r not in index]
    if missing:
        raise ValueError(f"responses {missing[:10]} are not among the {len(names)} responses.")
    return np.array([index[r] for r in responses], dtype=np.intp)


def add_bh(results: pd.DataFrame, alpha: float = 0.1) -> pd.DataFrame:
    """Add Benjamini-Hochberg ``p_adj`` and ``significant`` (at ``alpha``) over tested pairs."""
    results = results.copy()
    p = results["p_value"].to_numpy(dtype=float)
    tested = np.isfinite(p)
    p_adj = np.full(p.shape, np.nan)
    if tested.any():
        p_adj[tested] = stats.false_discovery_control(p[tested], method="bh")
    results["p_adj"] = p_adj
    results["significant"] = np.where(tested, p_adj <= alpha, False)
    return results


def _store(data, results: pd.DataFrame, key_added: str | None) -> None:
    if key_added is not None and not isinstance(data, dict):
        data.uns[key_added] = results


_SHARED_DOC = """
    resampling_method : {"bernoulli_index", "crt", "stratified_perm", "perm"}
        Default "bernoulli_index". Passed unchanged to :class:`CRTTest`.
    resampling_kwargs : dict, default=None
        Passed unchanged to :class:`CRTTest`; ``burden_key`` names a numeric column of
        ``obsm["covar"]`` read raw (never from the encoded covariates).
    statistic : BaseStatistic, default=None
        Fitted or unfitted statistic; default by response kind (NB score for counts, OLS for
        programs). Pass a fitted one to reuse its null model across analyses.
    n_resamples, n_resamples_adaptive, adaptive_threshold, alternative, pvalue_method, propensity
        As in :class:`CRTTest`.
    test : CRTTest, default=None
        A configured template that replaces the options above (its statistic is ignored).
    control_group : {"complement", "nt_cells"}, default="complement"
        The cells a unit's treated cells are compared with, in SCEPTRE's words.
        ``"complement"``: every other cell. ``"nt_cells"``: the cells that carry only
        non-targeting guides (at least one, no targeting guide); each unit's resamples then treat
        only its own cells and those (``eligible`` of :meth:`sklcrt.crt.CRTTest.fit`), and for
        NTC groups the controls are the other NTC cells. SCEPTRE recommends ``"nt_cells"`` at
        low MOI, where the other cells are mostly knock-outs of other targets with real trans
        effects, and ``"complement"`` at high MOI (where few cells carry only non-targeting
        guides). The null model of every response stays fitted on all cells, so ``effect`` is
        still the treated cells against all other cells; only the p-value's reference changes.
    min_nonzero : int, default=7
        Counts only: pairs with fewer treated or control cells with nonzero expression keep their
        row with ``pass_qc=False`` and a reason (control cells: those of ``control_group``).
    n_jobs : int, default=1
        Units run in parallel with joblib (any backend, e.g. dask).
    random_state : int, default=0
        Each unit's stream is derived from it and the unit's name.
    progress : bool, default=True
        Show a tqdm progress bar.
    checkpoint_dir : str, default=None
        Write each finished unit there; a rerun with the same arguments resumes.
    key_added : str, default=None
        Also store the table in ``adata.uns[key_added]``.
    input_kwargs
        Options of :func:`sklcrt.inputs.prepare_crt_inputs` when ``data`` is an AnnData.
"""


def _add_shared_doc(func):
    """Insert the shared options at the end of ``func``'s Parameters section."""
    head, sep, tail = func.__doc__.partition("\n    Returns\n")
    func.__doc__ = (
        head.rstrip() + "\n" + _SHARED_DOC.strip("\n") + "\n" + (sep + tail if sep else "\n    ")
    )
    return func


def _common(kwargs: dict):
    return dict(
        resampling_method=kwargs.pop("resampling_method", "bernoulli_index"),
        resampling_kwargs=kwargs.pop("resampling_kwargs", None),
        n_resamples=kwargs.pop("n_resamples", 499),
        n_resamples_adaptive=kwargs.pop("n_resamples_adaptive", 4999),
        adaptive_threshold=kwargs.pop("adaptive_threshold", 0.02),
        alternative=kwargs.pop("alternative", "two-sided"),
        pvalue_method=kwargs.pop("pvalue_method", "empirical"),
        propensity=kwargs.pop("propensity", None),
    )


_RUN_OPTIONS = (
    "statistic",
    "test",
    "control_group",
    "min_nonzero",
    "n_jobs",
    "random_state",
    "progress",
    "checkpoint_dir",
    "key_added",
)


def _split_kwargs(kwargs: dict) -> tuple[dict, dict, dict]:
    common = _common(kwargs)
    run = {k: kwargs.pop(k) for k in _RUN_OPTIONS if k in kwargs}
    return common, run, kwargs


def _execute(
    data, jobs_builder: Callable[[dict], list], desc: str, kwargs: dict, fingerprint_extra: dict
) -> pd.DataFrame:
    common, run, input_kwargs = _split_kwargs(dict(kwargs))
    inputs = _as_inputs(data, input_kwargs)
    control_group = run.get("control_group", "complement")
    control_cells = _control_cells(inputs, control_group)  # once per run, before the null fit
    if control_group != "complement":
        # Only when set, so checkpoints of runs made before the option existed still resume.
        fingerprint_extra = {**fingerprint_extra, "control_group": control_group}
    template = _make_test(run.get("test"), **common)
    statistic = fit_null_model(inputs, run.get("statistic"), n_jobs=run.get("n_jobs"))
    jobs = jobs_builder(inputs)
    results = _run_units(
        inputs,
        jobs,
        statistic=statistic,
        template=template,
        random_state=run.get("random_state", 0),
        n_jobs=run.get("n_jobs", 1),
        progress=run.get("progress", True),
        checkpoint_dir=run.get("checkpoint_dir"),
        min_nonzero=run.get("min_nonzero", 7),
        desc=desc,
        fingerprint_extra={
            **fingerprint_extra,
            "desc": desc,
            "statistic": repr(run.get("statistic")),
        },
        control_cells=control_cells,
    )
    return results, run


# ---------------------------------------------------------------------- public runners
def run_unit(
    data, unit: str, *, guides: Sequence[str] | None = None, responses=None, **kwargs
) -> pd.DataFrame:
    """Test one unit (a target, or explicit ``guides``) against all or chosen responses.

    Parameters
    ----------
    data : AnnData or dict
        The screen, or inputs from :func:`~sklcrt.inputs.prepare_crt_inputs`.
    unit : str
        A target name (its guides form the unit) or a name for ``guides``.
    guides : sequence of str, default=None
        Guides of the unit; default: the guides of target ``unit``.
    responses : sequence of str, default=None
        Responses to test; default all.
    """

    def jobs(inputs):
        gs = list(guides) if guides is not None else _target_guides(inputs, unit)
        return [
            (unit, unit if guides is None else "custom", gs, _response_columns(inputs, responses))
        ]

    results, run = _execute(data, jobs, "unit", kwargs, {"unit": unit, "responses": responses})
    results = add_bh(results)
    _store(data, results, run.get("key_added"))
    return results


_add_shared_doc(run_unit)


def _target_guides(inputs: dict, target: str) -> list[str]:
    units = inputs["units"]
    if target not in units:
        raise ValueError(
            f"target {target!r} is not a targeting unit; known targets start with "
            f"{sorted(units)[:10]}."
        )
    return list(units[target])


def _pairs_frame(pairs) -> pd.DataFrame:
    pairs = pd.DataFrame(pairs)
    missing = {"response_id", "grna_target"} - set(pairs.columns)
    if missing:
        raise ValueError(
            f"pairs needs columns 'response_id' and 'grna_target'; missing {sorted(missing)}."
        )
    return pairs[["response_id", "grna_target"]].astype(str).drop_duplicates()


def run_gene_loop(
    data,
    *,
    pairs=None,
    targets=None,
    responses=None,
    per_guide: bool = False,
    alpha: float = 0.1,
    **kwargs,
) -> pd.DataFrame:
    """Test every targeting unit against its responses (or the pairs of a pairs table).

    Parameters
    ----------
    data : AnnData or dict
        The screen, or inputs from :func:`~sklcrt.inputs.prepare_crt_inputs`.
    pairs : DataFrame, default=None
        Columns ``response_id`` and ``grna_target``: test exactly these pairs. ``None`` tests
        every target (or ``targets``) against every response (or ``responses``).
    targets, responses : sequence of str, default=None
        Restrict the all-by-all design.
    per_guide : bool, default=False
        Test each guide of a target on its own (unit = guide) instead of their union.
    alpha : float, default=0.1
        Benjamini-Hochberg level for ``significant``.

    Returns
    -------
    pandas.DataFrame
        One row per requested pair (per guide when ``per_guide``), with ``p_adj`` and
        ``significant``.
    """

    def jobs(inputs):
        units = inputs["units"]
        names = list(inputs["response_names"])
        if pairs is not None:
            table = _pairs_frame(pairs)
            unknown_t = sorted(set(table["grna_target"]) - set(units))
            unknown_r = sorted(set(table["response_id"]) - set(names))
            if unknown_t or unknown_r:
                raise ValueError(
                    f"pairs name unknown targets {unknown_t[:5]} / responses {unknown_r[:5]}; "
                    "check grna_target against the guide targets and response_id against the "
                    "response names."
                )
            design = {
                t: list(g["response_id"]) for t, g in table.groupby("grna_target", sort=False)
            }
        else:
            chosen = list(units) if targets is None else list(targets)
            design = {t: (names if responses is None else list(responses)) for t in chosen}
        out = []
        for target, resp in design.items():
            cols = _response_columns(inputs, resp)
            guides = _target_guides(inputs, target)
            if per_guide:
                out.extend((g, target, [g], cols) for g in guides)
            else:
                out.append((target, target, guides, cols))
        return out

    results, run = _execute(
        data,
        jobs,
        "targets",
        kwargs,
        {
            "pairs": None if pairs is None else _pairs_frame(pairs).to_json(),
            "targets": targets,
            "responses": responses,
            "per_guide": per_guide,
        },
    )
    results = add_bh(results, alpha)
    _store(data, results, run.get("key_added"))
    return results


_add_shared_doc(run_gene_loop)


def make_ntc_groups(
    ntc_guides: Sequence[str], group_size: int, random_state=0, key: str = "ntc"
) -> dict[str, list[str]]:
    """Partition non-targeting guides at random into groups of ``group_size``.

    Guides left over after the last full group are not used. Group names are ``NTC_1``,
    ``NTC_2``... prefixed by ``key`` when it is not ``"ntc"``.
    """
    ntc = sorted(ntc_guides)
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}.")
    if len(ntc) < group_size:
        raise ValueError(
            f"only {len(ntc)} non-targeting guides, fewer than group_size={group_size}."
        )
    order = as_generator(random_state, key=("ntc_groups", key)).permutation(len(ntc))
    n_groups = len(ntc) // group_size
    prefix = "NTC" if key == "ntc" else f"NTC_{key}"
    return {
        f"{prefix}_{j + 1}": [ntc[i] for i in order[j * group_size : (j + 1) * group_size]]
        for j in range(n_groups)
    }


def _default_group_size(inputs: dict) -> int:
    sizes = [len(g) for g in inputs["units"].values()]
    return max(1, int(np.median(sizes))) if sizes else 1


def run_ntc_groups(
    data,
    *,
    group_size: int | None = None,
    responses=None,
    n_pairs: int | None = None,
    grouping_key: str = "ntc",
    **kwargs,
) -> pd.DataFrame:
    """Test groups of non-targeting guides like targets: the calibration check.

    Parameters
    ----------
    data : AnnData or dict
        The screen, or inputs from :func:`~sklcrt.inputs.prepare_crt_inputs`.
    group_size : int, default=None
        Guides per NTC group; default the median number of guides per target.
    responses : sequence of str, default=None
        Responses to pair with every group; default all.
    n_pairs : int, default=None
        Test a random subset of this many (group, response) pairs (e.g. as many as the discovery
        pairs, as SCEPTRE does); default all.
    grouping_key : str, default="ntc"
        Names the random grouping (the NTC ensemble uses one per repeat).

    Returns
    -------
    pandas.DataFrame
        One row per (NTC group, response) pair; ``grna_target`` is ``"non-targeting"``.
    """
    random_state = kwargs.get("random_state", 0)

    def jobs(inputs):
        size = group_size or _default_group_size(inputs)
        groups = make_ntc_groups(inputs["ntc_guides"], size, random_state, grouping_key)
        cols = _response_columns(inputs, responses)
        per_group = {name: cols for name in groups}
        if n_pairs is not None:
            total = len(groups) * cols.size
            if n_pairs > total:
                raise ValueError(f"n_pairs={n_pairs} exceeds the {total} available NTC pairs.")
            rng = as_generator(random_state, key=("ntc_pairs", grouping_key))
            chosen = np.sort(rng.choice(total, size=n_pairs, replace=False))
            g_idx, r_idx = np.divmod(chosen, cols.size)
            names = list(groups)
            per_group = {
                names[g]: cols[r_idx[g_idx == g]] for g in range(len(names)) if np.any(g_idx == g)
            }
        return [(name, "non-targeting", groups[name], c) for name, c in per_group.items()]

    results, run = _execute(
        data,
        jobs,
        "NTC groups",
        kwargs,
        {
            "group_size": group_size,
            "responses": responses,
            "n_pairs": n_pairs,
            "grouping": grouping_key,
        },
    )
    results = add_bh(results)
    _store(data, results, run.get("key_added"))
    return results


_add_shared_doc(run_ntc_groups)


def run_ntc_ensemble(
    data,
    *,
    n_ensemble: int = 5,
    group_size: int | None = None,
    responses=None,
    n_pairs: int | None = None,
    **kwargs,
) -> pd.DataFrame:
    """Repeat :func:`run_ntc_groups` over ``n_ensemble`` random groupings of the NTC guides.

    The null model is fitted once and shared by every grouping. Options are those of
    :func:`run_ntc_groups`.

    Returns
    -------
    pandas.DataFrame
        The concatenated tables with an ``ensemble`` column (0 .. n_ensemble - 1); the
        Benjamini-Hochberg adjustment is done within each grouping.
    """
    if n_ensemble < 1:
        raise ValueError(f"n_ensemble must be >= 1, got {n_ensemble}.")
    common, run, input_kwargs = _split_kwargs(dict(kwargs))
    inputs = _as_inputs(data, input_kwargs)
    _control_cells(inputs, run.get("control_group", "complement"))  # bad values fail early
    run["statistic"] = fit_null_model(inputs, run.get("statistic"), n_jobs=run.get("n_jobs"))
    key_added = run.pop("key_added", None)
    checkpoint_dir = run.pop("checkpoint_dir", None)
    frames = []
    for e in range(n_ensemble):
        ckpt = None if checkpoint_dir is None else os.path.join(checkpoint_dir, f"ensemble_{e}")
        frame = run_ntc_groups(
            inputs,
            group_size=group_size,
            responses=responses,
            n_pairs=n_pairs,
            grouping_key=f"e{e}",
            checkpoint_dir=ckpt,
            **common,
            **run,
        )
        frame.insert(0, "ensemble", e)
        frames.append(frame)
    results = pd.concat(frames, ignore_index=True)
    _store(data, results, key_added)
    return results


# ---------------------------------------------------------------------- summaries
def calibration_summary(results: pd.DataFrame, *, alpha: float = 0.1) -> dict:
    """Summarise null (NTC) p-values: how close to uniform they are.

    Returns
    -------
    dict
        ``n_pairs`` (tested), ``frac_below_0.01``, ``frac_below_0.05``, ``quantile_0.01``,
        ``n_bh_discoveries`` (at ``alpha``), ``ks_distance``, ``ks_pvalue``, ``mean_effect``.
        For the results of :func:`run_ntc_ensemble` (an ``ensemble`` column) the
        Benjamini-Hochberg adjustment is done within each grouping, as there, and the
        discoveries are summed: every grouping tests the same guides again.
    """
    tested = np.isfinite(results["p_value"].to_numpy(dtype=float))
    p = results["p_value"].to_numpy(dtype=float)[tested]
    if p.size == 0:
        raise ValueError("results hold no tested pairs (every p_value is NaN).")
    ks = stats.kstest(p, "uniform")
    groupings = np.zeros(p.size)
    if "ensemble" in results:
        groupings = results["ensemble"].to_numpy()[tested]
    n_bh = sum(
        int(np.sum(stats.false_discovery_control(p[groupings == g], method="bh") <= alpha))
        for g in np.unique(groupings)
    )
    return {
        "n_pairs": int(p.size),
        "frac_below_0.01": float(np.mean(p < 0.01)),
        "frac_below_0.05": float(np.mean(p < 0.05)),
        "quantile_0.01": float(np.quantile(p, 0.01)),
        "n_bh_discoveries": n_bh,
        "ks_distance": float(ks.statistic),
        "ks_pvalue": float(ks.pvalue),
        "mean_effect": float(np.nanmean(results["effect"].to_numpy(dtype=float))),
    }


def power_check(data, pairs, **kwargs) -> pd.DataFrame:
    """Test positive-control pairs (``response_id``, ``grna_target``); same options as
    :func:`run_gene_loop`. Look for tiny p-values (and, for knock-downs, negative effects)."""
    return run_gene_loop(data, pairs=pairs, **kwargs)


def discovery_analysis(data, pairs, *, alpha: float = 0.1, **kwargs) -> pd.DataFrame:
    """Test discovery pairs and call discoveries by Benjamini-Hochberg at ``alpha``
    (``p_adj``, ``significant``); same options as :func:`run_gene_loop`."""
    return run_gene_loop(data, pairs=pairs, alpha=alpha, **kwargs)
