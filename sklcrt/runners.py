"""Screen-level runners: every unit of an AnnData screen against its responses.

A runner takes the screen (an AnnData, or inputs from :func:`sklcrt.inputs.prepare_crt_inputs`),
a test -- a :class:`~sklcrt.crt.CRTTest` template (``test=``), or its parameters by name
(``resampling_method=``, ``n_resamples=`` ...), which build one -- and explicit run options. It
fits the null model of every response once, reads the raw covariate columns the test asks for
(:meth:`~sklcrt.crt.CRTTest.covariate_columns`) once, tests each unit on its requested responses
(in parallel with joblib, see :mod:`sklcrt.execution`) and returns one tidy row per requested pair.

The test's settings live in :class:`~sklcrt.crt.CRTTest` only: the runners never declare,
default or validate them, so the runners, the command line and the estimator cannot drift apart.
"""

from __future__ import annotations

import difflib
import inspect
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats
from sklearn.base import clone

from sklcrt._choices import CONTROL_GROUPS, GRNA_INTEGRATIONS
from sklcrt._fingerprint import array_fingerprint
from sklcrt._random import as_generator
from sklcrt._validation import check_1d_numeric
from sklcrt.crt import CRTTest
from sklcrt.execution import RESULT_COLUMNS, NonzeroCounts, run_units
from sklcrt.inputs import prepare_crt_inputs, unit_treatment
from sklcrt.integration import combine_guides_bonferroni
from sklcrt.io import store_results
from sklcrt.moi import moi_choices
from sklcrt.pairs import gene_symbols
from sklcrt.statistics import NBScoreStatistic, OLSStatistic

__all__ = [
    "CONTROL_GROUPS",
    "RESULT_COLUMNS",
    "add_bh",
    "build_test",
    "calibration_summary",
    "check_run_options",
    "control_cells",
    "discovery_analysis",
    "fit_null_model",
    "make_ntc_groups",
    "pairwise_qc",
    "power_check",
    "run_gene_loop",
    "run_ntc_ensemble",
    "run_ntc_groups",
    "run_unit",
    "covariate_values",
]

#: Options of :func:`sklcrt.inputs.prepare_crt_inputs` that the runners pass through.
INPUT_OPTIONS = tuple(inspect.signature(prepare_crt_inputs).parameters)[1:]
#: The explicit run options every runner takes (besides its own).
RUN_OPTIONS = (
    "test",
    "moi",
    "control_group",
    "min_nonzero",
    "n_jobs",
    "random_state",
    "progress",
    "checkpoint_dir",
    "key_added",
)


# ---------------------------------------------------------------------- the test
def build_test(test: CRTTest | None = None, **params) -> CRTTest:
    """The test a run uses: a clone of ``test`` (default ``CRTTest()``) with ``params`` set.

    Parameters
    ----------
    test : CRTTest, default=None
        A configured template; it is cloned, never changed.
    **params
        :class:`~sklcrt.crt.CRTTest` parameters by name (``resampling_method``,
        ``resampling_kwargs``, ``n_resamples``, nested ones such as ``encoder__n_burden_bins``).

    Returns
    -------
    CRTTest
        The validated, unfitted test.

    Raises
    ------
    ValueError
        For an unknown parameter (with the closest valid name) or a bad value.

    Examples
    --------
    >>> from sklcrt.runners import build_test
    >>> build_test(resampling_method="perm", n_resamples=99).get_params()["n_resamples"]
    99
    """
    if test is not None and not isinstance(test, CRTTest):
        raise ValueError(f"test must be a CRTTest (or None), got {type(test).__name__}.")
    template = CRTTest() if test is None else clone(test)
    known = template.get_params(deep=True)
    for key in params:
        head = key.partition("__")[0]
        if key not in known and head not in known:
            raise ValueError(
                f"unknown test parameter {key!r}{_closest(key, known)}; CRTTest's parameters are "
                f"{sorted(template.get_params(deep=False))}."
            )
    template.set_params(**params)
    return template.check_params()


def _closest(name: str, candidates) -> str:
    match = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _route(kwargs: dict) -> tuple[dict, dict]:
    """Split a runner's ``**kwargs`` into CRTTest parameters and prepare_crt_inputs options."""
    test_names = set(CRTTest().get_params(deep=False))
    test_params, input_options = {}, {}
    for key, value in kwargs.items():
        if key.partition("__")[0] in test_names:
            test_params[key] = value
        elif key in INPUT_OPTIONS:
            input_options[key] = value
        else:
            valid = [*sorted(test_names), *INPUT_OPTIONS]
            raise TypeError(
                f"unknown option {key!r}{_closest(key, [*valid, *RUN_OPTIONS])}; a runner takes "
                f"its own options, the run options {list(RUN_OPTIONS)}, CRTTest parameters "
                f"{sorted(test_names)} and prepare_crt_inputs options {list(INPUT_OPTIONS)}."
            )
    return test_params, input_options


# ---------------------------------------------------------------------- inputs and models
def _as_inputs(data, input_options: dict) -> dict:
    if isinstance(data, dict):
        if input_options:
            raise ValueError(
                f"{sorted(input_options)} are options of prepare_crt_inputs; pass them when "
                "preparing the inputs, not with an already prepared inputs dict."
            )
        return data
    return prepare_crt_inputs(data, **input_options)


def fit_null_model(inputs: dict, statistic=None, n_jobs=None, *, fit_cells=None, progress=False):
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
    fit_cells : array-like of bool of shape (n_cells,), default=None
        Fit the null model on these cells only (e.g. the NT cells, SCEPTRE's low-MOI test); a
        unit's test then refits it on its cells and these (see :class:`~sklcrt.crt.CRTTest`).
    progress : bool, default=False
        A progress bar over the default NB statistic's fit.

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
        fitted_on = (
            getattr(statistic, "responses_fingerprint_", None),
            getattr(statistic, "covariates_fingerprint_", None),
        )
        here = (array_fingerprint(inputs["Y"]), array_fingerprint(inputs["C"]))
        fitted_cells = getattr(statistic, "fit_cells_", None)
        same_cells = (fitted_cells is None and fit_cells is None) or (
            fitted_cells is not None
            and fit_cells is not None
            and np.array_equal(fitted_cells, np.asarray(fit_cells, dtype=bool))
        )
        if not same_cells:
            raise ValueError(
                "statistic was fitted on other cells than this run's null model needs (its "
                "fit_cells differ, e.g. a control_group='nt_cells' run reuses a null model "
                "fitted on every cell); pass an unfitted statistic."
            )
        if fitted_on != here:
            raise ValueError(
                "statistic was fitted on other data (the fingerprints of its responses or "
                "covariates differ from these inputs'): a null model serves only the screen it "
                "was fitted on; pass an unfitted statistic to fit it here."
            )
        return statistic
    if statistic is None:
        counts = inputs["response_kind"] == "counts"
        statistic = NBScoreStatistic(n_jobs=n_jobs, progress=progress) if counts else OLSStatistic()
    else:
        statistic = clone(statistic)
    if fit_cells is None:
        return statistic.fit(inputs["Y"], inputs["C"])
    return statistic.fit(inputs["Y"], inputs["C"], fit_cells=fit_cells)


def control_cells(inputs: dict, control_group: str) -> np.ndarray | None:
    """The cells every unit is compared with besides its own.

    Parameters
    ----------
    inputs : dict
        From :func:`~sklcrt.inputs.prepare_crt_inputs`.
    control_group : {"complement", "nt_cells"}

    Returns
    -------
    ndarray of bool or None
        ``None`` for the complement (all other cells), else the cells whose guides are all
        non-targeting (at least one).
    """
    check_run_options(control_group=control_group)
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


def covariate_values(inputs: dict, test: CRTTest) -> tuple[np.ndarray | None, ...]:
    """The raw batch labels and burden values ``test`` asks for, read and checked once.

    Parameters
    ----------
    inputs : dict
        From :func:`~sklcrt.inputs.prepare_crt_inputs` (reads ``covar_df_raw``).
    test : CRTTest
        The test; :meth:`~sklcrt.crt.CRTTest.covariate_columns` names the columns.

    Returns
    -------
    batch, burden : ndarray or None
        The raw batch labels and the burden values (float), ``None`` where the test needs none.

    Raises
    ------
    ValueError
        For a column that is missing, or a burden column that is not numeric or not finite.
    """
    template = test
    columns = template.covariate_columns()
    covar = inputs["covar_df_raw"]
    batch = burden = None
    if "batch" in columns:
        key = columns["batch"]
        if key not in covar.columns:
            raise ValueError(
                f"the test's strata are nested in batches, batch column {key!r} (batch_key), but "
                f"it is not a column of the raw covariates (columns: {list(covar.columns)}); set "
                "batch_key to the batch column or stratify_by_batch=False."
            )
        batch = covar[key].to_numpy()
    if "burden" in columns:
        key = columns["burden"]
        numeric = [c for c in covar.columns if pd.api.types.is_numeric_dtype(covar[c])]
        if key not in covar.columns:
            raise ValueError(
                f"the test bins the burden, burden column {key!r} (burden_key), but it is not a "
                f"column of the raw covariates; numeric columns are {numeric}. Add burden "
                "covariates with sklcrt.assignment.add_burden_covariates, name another column "
                "with burden_key, or set burden_key=None to turn burden bins off."
            )
        if key not in numeric:
            raise ValueError(
                f"burden_key {key!r} must name a numeric column, it has dtype "
                f"{covar[key].dtype}; numeric columns are {numeric}."
            )
        burden = check_1d_numeric(covar[key], f"burden column {key!r}")
    return batch, burden


@dataclass
class _Screen:
    """What every unit of a run shares: inputs, the test, its null model and covariates."""

    inputs: dict
    template: CRTTest
    statistic: object
    batch: np.ndarray | None
    burden: np.ndarray | None
    control_cells: np.ndarray | None
    random_state: int
    run_key: dict  # the run's settings that the checkpoint fingerprint covers


def _prepare(
    data, test, kwargs: dict, *, moi, control_group, min_nonzero, n_jobs, random_state, progress
) -> _Screen:
    """Inputs, the test template, the control group, the covariates and the null model, once."""
    choices = moi_choices(moi)
    test_params, input_options = _route(kwargs)
    configured = {k.partition("__")[0] for k in test_params} & _RESAMPLING_PARAMS
    if test is None and not configured:
        test_params = {**choices.get("test", {}), **test_params}
    template = build_test(test, **test_params)
    random_state = _run_seed(template, random_state)
    chosen_group = control_group or choices.get("control_group") or "complement"
    check_run_options(control_group=chosen_group, min_nonzero=min_nonzero)
    inputs = _as_inputs(data, input_options)
    if moi is None and control_group is None:
        _warn_if_low_moi(inputs)
    controls = control_cells(inputs, chosen_group)  # before the null fit: fail early
    batch, burden = covariate_values(inputs, template)
    # SCEPTRE's low-MOI test of counts: the null model fitted on the NT cells, refitted on each
    # unit's cells and the NT cells (CRTTest.fit does it).
    fit_cells = _null_model_cells(inputs, controls)
    statistic = fit_null_model(
        inputs, template.statistic, n_jobs=n_jobs, fit_cells=fit_cells, progress=progress
    )
    run_key = {"statistic": repr(template.statistic)}
    if chosen_group != "complement":
        # Only when set, so checkpoints of runs made before the option existed still resume.
        run_key["control_group"] = chosen_group
    if moi is not None:
        run_key["moi"] = moi
    return _Screen(inputs, template, statistic, batch, burden, controls, random_state, run_key)


def _null_model_cells(inputs: dict, controls: np.ndarray | None) -> np.ndarray | None:
    """The cells the null model is fitted on: the control group's for counts (SCEPTRE's
    low-MOI test), unless the covariates lose rank there (then all cells, with a warning)."""
    if controls is None or inputs["response_kind"] != "counts":
        return None
    C = inputs["C"]
    if np.linalg.matrix_rank(C[controls]) < np.linalg.matrix_rank(C):
        constant = [
            name
            for name, column in zip(inputs["C_names"], C[controls].T, strict=False)
            if np.ptp(column) == 0 and np.ptp(C[:, list(inputs["C_names"]).index(name)]) > 0
        ]
        warnings.warn(
            f"the covariates {constant or '(some)'} do not vary among the control cells, so the "
            "null model cannot be fitted on them alone (SCEPTRE's low-MOI test); it is fitted "
            "on all cells instead. Leave such columns out of covariates= (e.g. the burden "
            "columns, which are 0 on cells without targeting guides) for SCEPTRE's test.",
            UserWarning,
            stacklevel=4,
        )
        return None
    return controls


# CRTTest parameters that configure the resampling (``moi`` leaves a test that sets any alone).
_RESAMPLING_PARAMS = {"resampling_method", "resampling_kwargs", "sampler", "encoder"}


def check_run_options(
    *, control_group: str = "complement", min_nonzero: int = 7, alpha: float = 0.1
) -> None:
    """Validate the run options shared by every runner (the command line calls it too).

    Parameters
    ----------
    control_group : {"complement", "nt_cells"}
    min_nonzero : int >= 0
    alpha : float in (0, 1)
        The Benjamini-Hochberg level.

    Raises
    ------
    ValueError
        Naming the option and its valid values.
    """
    if control_group not in CONTROL_GROUPS:
        raise ValueError(
            f"control_group must be one of {list(CONTROL_GROUPS)}, got {control_group!r}."
        )
    if isinstance(min_nonzero, bool) or not isinstance(min_nonzero, int | np.integer):
        raise ValueError(f"min_nonzero must be an integer >= 0, got {min_nonzero!r}.")
    if min_nonzero < 0:
        raise ValueError(f"min_nonzero must be an integer >= 0, got {min_nonzero}.")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}.")


def _warn_if_low_moi(inputs: dict) -> None:
    """Warn when the guides look like a low-MOI screen run with the high-MOI defaults."""
    guides = inputs["guides"]
    per_cell = (
        np.diff(sp.csr_matrix(guides).indptr)
        if sp.issparse(guides)
        else np.count_nonzero(np.asarray(guides), axis=1)
    )
    if per_cell.size and np.mean(per_cell == 1) >= 0.5 and np.mean(per_cell >= 2) < 0.005:
        warnings.warn(
            f"{np.mean(per_cell == 1):.0%} of the cells carry exactly one guide and almost none "
            "two or more: this looks like a low-MOI screen, which the defaults (every other cell "
            "as control) miscalibrate. Set moi='low' (SCEPTRE's choices: control_group="
            "'nt_cells', permutations), or moi='high' to keep the defaults and silence this.",
            UserWarning,
            stacklevel=3,
        )


def _run_seed(template: CRTTest, random_state) -> int:
    """The run's seed: the runner's ``random_state``, else the template's, else 0."""
    if random_state is None:
        random_state = 0 if template.random_state is None else template.random_state
    elif template.random_state is not None and template.random_state != random_state:
        raise ValueError(
            f"the test template has random_state={template.random_state!r} and the runner "
            f"random_state={random_state!r}; give the seed once."
        )
    if random_state is None or isinstance(random_state, bool):
        raise ValueError("random_state must be an integer seed (a screen must be reproducible).")
    return random_state


def _execute(
    screen: _Screen,
    jobs: list,
    *,
    desc: str,
    fingerprint_extra: dict,
    min_nonzero: int,
    n_jobs: int,
    progress: bool,
    checkpoint_dir: str | None,
) -> pd.DataFrame:
    return run_units(
        screen.inputs,
        jobs,
        statistic=screen.statistic,
        template=screen.template,
        batch=screen.batch,
        burden=screen.burden,
        random_state=screen.random_state,
        n_jobs=n_jobs,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
        min_nonzero=min_nonzero,
        desc=desc,
        fingerprint_extra={**fingerprint_extra, **screen.run_key, "desc": desc},
        control_cells=screen.control_cells,
    )


def _response_columns(inputs: dict, responses) -> np.ndarray:
    names = list(inputs["response_names"])
    if responses is None:
        return np.arange(len(names))
    index = {r: i for i, r in enumerate(names)}
    if isinstance(responses, str):
        responses = [responses]
    missing = [r for r in responses if r not in index]
    if missing:
        raise ValueError(f"responses {missing[:10]} are not among the {len(names)} responses.")
    counts = pd.Series(list(responses)).value_counts()
    if (counts > 1).any():
        raise ValueError(
            f"responses lists {sorted(counts.index[counts > 1])[:5]} more than once; every "
            "response gets one row per unit, so give each once."
        )
    return np.array([index[r] for r in responses], dtype=np.intp)


def _finish(data, screen: _Screen, results: pd.DataFrame, key_added, options: dict):
    """Gene symbols where the screen has them; the table and its parameters stored with the
    data (scanpy's ``uns[key]["params"]`` pattern) unless ``key_added`` is None."""
    if not isinstance(data, dict):
        symbols = gene_symbols(data, results["response"])
        if symbols is not None and symbols.notna().any():
            results.insert(
                results.columns.get_loc("response") + 1, "response_name", symbols.to_numpy()
            )
        if key_added is not None:
            params = {
                "test": screen.template.get_params(deep=False),
                "random_state": screen.random_state,
                **screen.run_key,
                **options,
            }
            store_results(data, key_added, results, params)
    return results


# ---------------------------------------------------------------------- public runners
def run_unit(
    data,
    unit: str,
    *,
    guides: Sequence[str] | None = None,
    responses=None,
    test: CRTTest | None = None,
    moi: str | None = None,
    control_group: str | None = None,
    min_nonzero: int = 7,
    n_jobs: int = 1,
    random_state: int | None = None,
    progress: bool = True,
    checkpoint_dir: str | None = None,
    key_added: str | None = "sklcrt_unit",
    **kwargs,
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

    Returns
    -------
    pandas.DataFrame
        One row per response (columns of :data:`RESULT_COLUMNS`, ``p_adj``, ``significant``).
    """
    screen = _prepare(
        data,
        test,
        kwargs,
        moi=moi,
        control_group=control_group,
        min_nonzero=min_nonzero,
        n_jobs=n_jobs,
        random_state=random_state,
        progress=progress,
    )
    gs = list(guides) if guides is not None else _target_guides(screen.inputs, unit)
    cols = _response_columns(screen.inputs, responses)
    jobs = [(unit, unit if guides is None else "custom", gs, cols)]
    results = _execute(
        screen,
        jobs,
        desc="unit",
        fingerprint_extra={"unit": unit, "responses": responses},
        min_nonzero=min_nonzero,
        n_jobs=n_jobs,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
    )
    results = add_bh(results)
    return _finish(
        data,
        screen,
        results,
        key_added,
        {"unit": unit, "guides": guides, "responses": responses, "min_nonzero": min_nonzero},
    )


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
    table = pairs[["response_id", "grna_target"]].astype(str)
    repeated = table[table.duplicated()]
    if len(repeated):
        shown = list(zip(repeated["grna_target"], repeated["response_id"], strict=True))[:5]
        raise ValueError(
            f"pairs lists {len(repeated)} (grna_target, response_id) pair(s) more than once, "
            f"e.g. {shown}; every pair gets one row, so drop the duplicates "
            "(pairs.drop_duplicates(['grna_target', 'response_id']))."
        )
    return table


def _check_integration(grna_integration: str, per_guide: bool) -> str:
    if grna_integration not in GRNA_INTEGRATIONS:
        raise ValueError(
            f"grna_integration must be one of {list(GRNA_INTEGRATIONS)}, got {grna_integration!r}."
        )
    if per_guide and grna_integration == "union":
        return "singleton"
    if per_guide and grna_integration == "bonferroni":
        raise ValueError("per_guide=True is grna_integration='singleton'; give one of the two.")
    return grna_integration


def _pair_jobs(inputs, pairs, targets, responses, per_guide) -> list:
    """The (unit, target, guides, columns) jobs of a gene loop."""
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
        design = {t: list(g["response_id"]) for t, g in table.groupby("grna_target", sort=False)}
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


def run_gene_loop(
    data,
    *,
    pairs=None,
    targets=None,
    responses=None,
    per_guide: bool = False,
    grna_integration: str = "union",
    alpha: float = 0.1,
    test: CRTTest | None = None,
    moi: str | None = None,
    control_group: str | None = None,
    min_nonzero: int = 7,
    n_jobs: int = 1,
    random_state: int | None = None,
    progress: bool = True,
    checkpoint_dir: str | None = None,
    key_added: str | None = "sklcrt_gene_loop",
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
        Same as ``grna_integration="singleton"``.
    grna_integration : {"union", "singleton", "bonferroni"}, default="union"
        How a target's guides are tested, in SCEPTRE's words: ``"union"``, the cells carrying
        any of them against the controls; ``"singleton"``, each guide on its own (one row per
        guide and response, ``unit`` = the guide); ``"bonferroni"``, each guide on its own and
        then one row per (target, response) with ``min(1, k * min p)`` over its ``k`` tested
        guides (:func:`sklcrt.integration.combine_guides_bonferroni`).
    alpha : float, default=0.1
        Benjamini-Hochberg level for ``significant``.

    Returns
    -------
    pandas.DataFrame
        One row per requested pair (per guide when ``per_guide``): the columns of
        :data:`RESULT_COLUMNS`, ``p_adj`` and ``significant``.
    """
    check_run_options(alpha=alpha)  # before the null fit
    integration = _check_integration(grna_integration, per_guide)
    screen = _prepare(
        data,
        test,
        kwargs,
        moi=moi,
        control_group=control_group,
        min_nonzero=min_nonzero,
        n_jobs=n_jobs,
        random_state=random_state,
        progress=progress,
    )
    jobs = _pair_jobs(screen.inputs, pairs, targets, responses, integration != "union")
    results = _execute(
        screen,
        jobs,
        desc="targets",
        fingerprint_extra={
            "pairs": None if pairs is None else _pairs_frame(pairs).to_json(),
            "targets": targets,
            "responses": responses,
            "per_guide": integration != "union",
        },
        min_nonzero=min_nonzero,
        n_jobs=n_jobs,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
    )
    if integration == "bonferroni":
        results = combine_guides_bonferroni(results)
    results = add_bh(results, alpha)
    return _finish(
        data,
        screen,
        results,
        key_added,
        {
            "pairs": None if pairs is None else len(pairs),
            "targets": targets,
            "responses": responses,
            "grna_integration": integration,
            "alpha": alpha,
            "min_nonzero": min_nonzero,
        },
    )


def pairwise_qc(
    data,
    pairs,
    *,
    min_nonzero: int = 7,
    moi: str | None = None,
    control_group: str | None = None,
    grna_integration: str = "union",
    **input_options,
) -> pd.DataFrame:
    """SCEPTRE's pairwise QC of ``pairs`` without testing them, e.g. to size the calibration check
    like the discovery pairs that pass it before running discovery.

    Parameters
    ----------
    data : AnnData or dict
        The screen, or inputs from :func:`~sklcrt.inputs.prepare_crt_inputs`.
    pairs : DataFrame
        Columns ``response_id`` and ``grna_target``.
    min_nonzero : int, default=7
        Treated and control cells with nonzero expression a pair needs (counts only).
    moi, control_group, grna_integration
        As in :func:`run_gene_loop` (the control cells decide the control counts).
    **input_options
        Options of :func:`~sklcrt.inputs.prepare_crt_inputs` when ``data`` is an AnnData.

    Returns
    -------
    pandas.DataFrame
        One row per pair (per guide with ``grna_integration`` other than ``"union"``): ``unit``,
        ``grna_target``, ``response``, ``n_treated``, ``n_nonzero_treated``,
        ``n_nonzero_control``, ``pass_qc`` (program responses always pass).

    Examples
    --------
    >>> from sklcrt.datasets import simulate_screen
    >>> from sklcrt.runners import pairwise_qc
    >>> adata = simulate_screen(n_cells=500, n_genes=5, n_targets=2, n_ntc_guides=4)
    >>> qc = pairwise_qc(adata, adata.uns["discovery_pairs"].query("response_kind == 'gene'"))
    >>> int(qc["pass_qc"].sum()) <= len(qc)
    True
    """
    check_run_options(control_group=control_group or "complement", min_nonzero=min_nonzero)
    inputs = _as_inputs(data, input_options)
    group = control_group or moi_choices(moi).get("control_group") or "complement"
    controls = control_cells(inputs, group)
    integration = _check_integration(grna_integration, False)
    jobs = _pair_jobs(inputs, pairs, None, None, integration != "union")
    names = np.asarray(inputs["response_names"], dtype=object)
    counter = NonzeroCounts(inputs["Y"], controls) if inputs["response_kind"] == "counts" else None
    frames = []
    for unit, target, guides, cols in jobs:
        x = unit_treatment(inputs, guides)
        frame = pd.DataFrame({"unit": unit, "grna_target": target, "response": names[cols]})
        frame["n_treated"] = int(x.sum())
        if inputs["response_kind"] == "counts":
            nz_t, nz_c = counter(x, cols)
            need = max(min_nonzero, 1)
            frame["n_nonzero_treated"], frame["n_nonzero_control"] = nz_t, nz_c
            frame["pass_qc"] = (nz_t >= need) & (nz_c >= need)
        else:
            frame["n_nonzero_treated"] = frame["n_nonzero_control"] = -1
            frame["pass_qc"] = True
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


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


def _ntc_jobs(
    inputs,
    group_size,
    responses,
    n_pairs,
    grouping_key,
    random_state,
    *,
    passing=None,
) -> list:
    """The (group, "non-targeting", guides, columns) jobs of a calibration check.

    ``passing`` (a callable ``groups -> bool (n_groups, n_columns)``) restricts the draw of
    ``n_pairs`` to the pairs that pass the pairwise QC."""
    size = group_size or _default_group_size(inputs)
    groups = make_ntc_groups(inputs["ntc_guides"], size, random_state, grouping_key)
    cols = _response_columns(inputs, responses)
    per_group = {name: cols for name in groups}
    if n_pairs is not None:
        total = len(groups) * cols.size
        rng = as_generator(random_state, key=("ntc_pairs", grouping_key))
        if passing is None:
            if n_pairs > total:
                raise ValueError(f"n_pairs={n_pairs} exceeds the {total} available NTC pairs.")
            chosen = np.sort(rng.choice(total, size=n_pairs, replace=False))
        else:
            candidates = np.flatnonzero(passing(list(groups.values()), cols).ravel())
            if n_pairs > candidates.size:
                raise ValueError(
                    f"n_pairs={n_pairs} exceeds the {candidates.size} NTC pairs (of {total}) "
                    "that pass the pairwise QC; lower n_pairs or min_nonzero."
                )
            chosen = np.sort(rng.choice(candidates, size=n_pairs, replace=False))
        g_idx, r_idx = np.divmod(chosen, cols.size)
        names = list(groups)
        per_group = {
            names[g]: cols[r_idx[g_idx == g]] for g in range(len(names)) if np.any(g_idx == g)
        }
    return [(name, "non-targeting", groups[name], c) for name, c in per_group.items()]


def _passing_pairs(screen: _Screen, min_nonzero: int):
    """A function ``(groups, cols) -> bool (n_groups, n_cols)``: which (NTC group, response)
    pairs pass the pairwise QC (enough treated and control cells with nonzero expression)."""
    inputs = screen.inputs

    def passing(groups, cols):
        if inputs["response_kind"] != "counts" or min_nonzero == 0:
            return np.ones((len(groups), cols.size), dtype=bool)
        names = {str(g): j for j, g in enumerate(inputs["guide_names"])}
        guides = sp.csc_matrix(inputs["guides"])
        member = sp.csr_matrix(
            (
                np.ones(sum(map(len, groups))),
                (
                    [names[str(g)] for grp in groups for g in grp],
                    np.repeat(np.arange(len(groups)), [len(grp) for grp in groups]),
                ),
            ),
            shape=(guides.shape[1], len(groups)),
        )
        treated = ((guides @ member) != 0).astype(np.float64)  # cells x groups
        expressed = sp.csc_matrix(inputs["Y"])[:, cols] != 0
        n_treated = np.asarray((treated.T @ expressed).todense())  # groups x cols
        controls = screen.control_cells
        if controls is None:
            n_all = np.asarray(expressed.sum(axis=0)).ravel()[None, :]
        else:  # the group's cells plus the NT cells: NTC groups lie inside them
            n_all = np.asarray(expressed[np.flatnonzero(controls)].sum(axis=0)).ravel()[None, :]
        return (n_treated >= min_nonzero) & (n_all - n_treated >= min_nonzero)

    return passing


def _ntc_grouping(
    screen: _Screen,
    grouping_key: str,
    *,
    group_size,
    responses,
    n_pairs,
    pairs_pass_qc: bool,
    min_nonzero: int,
    n_jobs,
    progress: bool,
    checkpoint_dir,
) -> pd.DataFrame:
    """One random grouping of the NTC guides tested, Benjamini-Hochberg within it."""
    jobs = _ntc_jobs(
        screen.inputs,
        group_size,
        responses,
        n_pairs,
        grouping_key,
        screen.random_state,
        passing=_passing_pairs(screen, min_nonzero) if pairs_pass_qc else None,
    )
    results = _execute(
        screen,
        jobs,
        desc="NTC groups",
        fingerprint_extra={
            "group_size": group_size,
            "responses": responses,
            "n_pairs": n_pairs,
            "grouping": grouping_key,
        },
        min_nonzero=min_nonzero,
        n_jobs=n_jobs,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
    )
    return add_bh(results)


def run_ntc_groups(
    data,
    *,
    group_size: int | None = None,
    responses=None,
    n_pairs: int | None = None,
    grouping_key: str = "ntc",
    pairs_pass_qc: bool = False,
    test: CRTTest | None = None,
    moi: str | None = None,
    control_group: str | None = None,
    min_nonzero: int = 7,
    n_jobs: int = 1,
    random_state: int | None = None,
    progress: bool = True,
    checkpoint_dir: str | None = None,
    key_added: str | None = "sklcrt_calibration",
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
    pairs_pass_qc : bool, default=False
        Draw the ``n_pairs`` among the pairs that pass the pairwise QC (``min_nonzero``), as
        SCEPTRE's calibration check does, so that every drawn pair is tested (the command line
        does; sized like the discovery pairs that pass QC).

    Returns
    -------
    pandas.DataFrame
        One row per (NTC group, response) pair; ``grna_target`` is ``"non-targeting"``.
    """
    screen = _prepare(
        data,
        test,
        kwargs,
        moi=moi,
        control_group=control_group,
        min_nonzero=min_nonzero,
        n_jobs=n_jobs,
        random_state=random_state,
        progress=progress,
    )
    results = _ntc_grouping(
        screen,
        grouping_key,
        group_size=group_size,
        responses=responses,
        n_pairs=n_pairs,
        pairs_pass_qc=pairs_pass_qc,
        min_nonzero=min_nonzero,
        n_jobs=n_jobs,
        progress=progress,
        checkpoint_dir=checkpoint_dir,
    )
    return _finish(
        data,
        screen,
        results,
        key_added,
        {
            "group_size": group_size,
            "responses": responses,
            "n_pairs": n_pairs,
            "grouping_key": grouping_key,
            "min_nonzero": min_nonzero,
        },
    )


def run_ntc_ensemble(
    data,
    *,
    n_ensemble: int = 5,
    group_size: int | None = None,
    responses=None,
    n_pairs: int | None = None,
    pairs_pass_qc: bool = False,
    test: CRTTest | None = None,
    moi: str | None = None,
    control_group: str | None = None,
    min_nonzero: int = 7,
    n_jobs: int = 1,
    random_state: int | None = None,
    progress: bool = True,
    checkpoint_dir: str | None = None,
    key_added: str | None = "sklcrt_calibration",
    **kwargs,
) -> pd.DataFrame:
    """Repeat :func:`run_ntc_groups` over ``n_ensemble`` random groupings of the NTC guides.

    The null model is fitted once and shared by every grouping.

    Parameters
    ----------
    data : AnnData or dict
        The screen, or inputs from :func:`~sklcrt.inputs.prepare_crt_inputs`.
    n_ensemble : int, default=5
        Random groupings (``grouping_key`` ``"e0"``, ``"e1"`` ...).
    group_size, responses, n_pairs, pairs_pass_qc
        As in :func:`run_ntc_groups`.

    Returns
    -------
    pandas.DataFrame
        The concatenated tables with an ``ensemble`` column (0 .. n_ensemble - 1); the
        Benjamini-Hochberg adjustment is done within each grouping.
    """
    if isinstance(n_ensemble, bool) or not isinstance(n_ensemble, int) or n_ensemble < 1:
        raise ValueError(f"n_ensemble must be an integer >= 1, got {n_ensemble!r}.")
    screen = _prepare(
        data,
        test,
        kwargs,
        moi=moi,
        control_group=control_group,
        min_nonzero=min_nonzero,
        n_jobs=n_jobs,
        random_state=random_state,
        progress=progress,
    )
    frames = []
    for e in range(n_ensemble):
        frame = _ntc_grouping(
            screen,
            f"e{e}",
            group_size=group_size,
            responses=responses,
            n_pairs=n_pairs,
            pairs_pass_qc=pairs_pass_qc,
            min_nonzero=min_nonzero,
            n_jobs=n_jobs,
            progress=progress,
            checkpoint_dir=None
            if checkpoint_dir is None
            else os.path.join(checkpoint_dir, f"ensemble_{e}"),
        )
        frame.insert(0, "ensemble", e)
        frames.append(frame)
    results = pd.concat(frames, ignore_index=True)
    return _finish(
        data,
        screen,
        results,
        key_added,
        {
            "n_ensemble": n_ensemble,
            "group_size": group_size,
            "responses": responses,
            "n_pairs": n_pairs,
            "min_nonzero": min_nonzero,
        },
    )


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
    tested = np.isfinite(results["pvalue"].to_numpy(dtype=float))
    p = results["pvalue"].to_numpy(dtype=float)[tested]
    if p.size == 0:
        raise ValueError("results hold no tested pairs (every pvalue is NaN).")
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


def add_bh(results: pd.DataFrame, alpha: float = 0.1) -> pd.DataFrame:
    """Add Benjamini-Hochberg ``p_adj`` and ``significant`` (at ``alpha``) over tested pairs."""
    results = results.copy()
    p = results["pvalue"].to_numpy(dtype=float)
    tested = np.isfinite(p)
    p_adj = np.full(p.shape, np.nan)
    if tested.any():
        p_adj[tested] = stats.false_discovery_control(p[tested], method="bh")
    results["p_adj"] = p_adj
    results["significant"] = np.where(tested, p_adj <= alpha, False)
    return results


def power_check(
    data,
    pairs,
    *,
    per_guide: bool = False,
    grna_integration: str = "union",
    alpha: float = 0.1,
    test: CRTTest | None = None,
    moi: str | None = None,
    control_group: str | None = None,
    min_nonzero: int = 7,
    n_jobs: int = 1,
    random_state: int | None = None,
    progress: bool = True,
    checkpoint_dir: str | None = None,
    key_added: str | None = "sklcrt_power",
    **kwargs,
) -> pd.DataFrame:
    """Test positive-control pairs: :func:`run_gene_loop` on ``pairs``.

    Look for tiny p-values (and, for knock-downs, negative effects).

    Parameters
    ----------
    data : AnnData or dict
        The screen, or inputs from :func:`~sklcrt.inputs.prepare_crt_inputs`.
    pairs : DataFrame
        Columns ``response_id`` and ``grna_target``: the positive-control pairs.
    per_guide : bool, default=False
        Test each guide of a target on its own (unit = guide) instead of their union.
    alpha : float, default=0.1
        Benjamini-Hochberg level for ``significant``.

    Returns
    -------
    pandas.DataFrame
        One row per pair, as :func:`run_gene_loop`.
    """
    return run_gene_loop(data, pairs=pairs, **_run_options(locals()), **kwargs)


def discovery_analysis(
    data,
    pairs,
    *,
    per_guide: bool = False,
    grna_integration: str = "union",
    alpha: float = 0.1,
    test: CRTTest | None = None,
    moi: str | None = None,
    control_group: str | None = None,
    min_nonzero: int = 7,
    n_jobs: int = 1,
    random_state: int | None = None,
    progress: bool = True,
    checkpoint_dir: str | None = None,
    key_added: str | None = "sklcrt_discovery",
    **kwargs,
) -> pd.DataFrame:
    """Test discovery pairs and call discoveries by Benjamini-Hochberg at ``alpha``.

    Parameters
    ----------
    data : AnnData or dict
        The screen, or inputs from :func:`~sklcrt.inputs.prepare_crt_inputs`.
    pairs : DataFrame
        Columns ``response_id`` and ``grna_target``: the discovery pairs.
    per_guide : bool, default=False
        Test each guide of a target on its own (unit = guide) instead of their union.
    alpha : float, default=0.1
        Benjamini-Hochberg level of ``significant`` (``p_adj`` is the adjusted p-value).

    Returns
    -------
    pandas.DataFrame
        One row per pair, as :func:`run_gene_loop`; ``significant`` marks the discoveries.
    """
    return run_gene_loop(data, pairs=pairs, **_run_options(locals()), **kwargs)


def _run_options(local: dict) -> dict:
    """A wrapper's explicit options, to pass on to :func:`run_gene_loop`."""
    return {k: local[k] for k in ("per_guide", "grna_integration", "alpha", *RUN_OPTIONS)}


# ---------------------------------------------------------------------- documentation
_RUN_OPTIONS_DOC = """
    test : CRTTest, default=None
        The test, as a configured template (cloned, never changed). ``None`` builds
        ``CRTTest()``. CRTTest parameters given by name below are set on it, so
        ``test=CRTTest(sampler=...)`` and ``resampling_method=...`` configure the same thing in
        two spellings. ``statistic`` left ``None`` means the NB score statistic for counts and
        OLS for programs, fitted once on all cells; a fitted statistic is reused as is.
    moi : {"high", "low"}, default=None
        Picks SCEPTRE's choices (:data:`sklcrt.moi.MOI_CHOICES`) for what is not given: at low
        MOI ``control_group="nt_cells"`` and permutations (``resampling_method="perm"``, only
        when neither ``test`` nor the parameters below configure the resampling); at high MOI
        every other cell as control and the test's defaults (the CRT). Burden bins are never
        turned on by ``moi``. ``None`` keeps the defaults and warns when the guides look like a
        low-MOI screen (most cells carry exactly one guide) and no ``control_group`` is given.
    control_group : {"complement", "nt_cells"}, default=None
        The cells a unit's treated cells are compared with, in SCEPTRE's words (``None``: the
        choice of ``moi``, else ``"complement"``).
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
        Units run in parallel with joblib (any backend, e.g. dask); also the threads of the
        default NB null fit. Results do not depend on it.
    random_state : int, default=None
        Each unit's stream is derived from it and the unit's name; ``None`` takes the test's
        ``random_state``, else 0.
    progress : bool, default=True
        Show a tqdm progress bar.
    checkpoint_dir : str, default=None
        Write each finished unit there; a rerun with the same arguments resumes.
    key_added : str or None, default="sklcrt_<analysis>"
        Store the table and the parameters it ran with in ``adata.uns[key_added]`` (``"results"``
        and ``"params"``, saved by ``write_h5ad``/``write_h5mu``; read back with
        :func:`sklcrt.io.load_results`); ``None`` stores nothing. Every table also gets a
        ``response_name`` column where ``adata.var["gene_name"]`` has the symbols.
    **kwargs
        :class:`~sklcrt.crt.CRTTest` parameters by name (set on ``test``; an unknown name is an
        error naming the closest valid one) and, when ``data`` is an AnnData, options of
        :func:`~sklcrt.inputs.prepare_crt_inputs`; both are listed below, read from their
        owners.
"""


def _parameters_section(func_or_class) -> str:
    """The entries of a numpydoc Parameters section, as written."""
    doc = inspect.getdoc(func_or_class) or ""
    head, _, rest = doc.partition("Parameters\n----------\n")
    body = []
    for line in rest.splitlines():
        if line and not line.startswith(" ") and body and body[-1] == "":
            break  # the next section's title
        if line.startswith("---"):
            body.pop()  # a section title just passed
            break
        body.append(line)
    return "\n".join(body).strip("\n")


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "\n".join(pad + line if line else line for line in text.splitlines())


def _add_options_doc(func):
    """Document a runner's run options and every pass-through parameter, read from their owners
    (CRTTest and prepare_crt_inputs), at the end of its Parameters section."""
    test_doc = _parameters_section(CRTTest)
    input_doc = _parameters_section(prepare_crt_inputs).split("\n", 2)[2]  # drop ``adata``
    extra = "\n".join([_RUN_OPTIONS_DOC.rstrip(), _indent(test_doc, 4), _indent(input_doc, 4)])
    head, sep, tail = func.__doc__.partition("\n    Returns\n")
    func.__doc__ = head.rstrip() + "\n" + extra + "\n" + (sep + tail if sep else "\n    ")
    return func


for _runner in (
    run_unit,
    run_gene_loop,
    run_ntc_groups,
    run_ntc_ensemble,
    power_check,
    discovery_analysis,
):
    _add_options_doc(_runner)
