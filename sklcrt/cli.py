"""The ``sklcrt`` command line: the built-in demo and whole analyses from a TOML config file.

Three subcommands:

- ``sklcrt demo``: simulate a high-MOI screen, check calibration on non-targeting (NTC) pairs with
  stratified permutation without and with burden bins, test the positive controls and the discovery
  pairs, and write the tables, a QQ plot and a summary;
- ``sklcrt run CONFIG.toml``: the analyses a config file asks for (calibration, power, discovery);
- ``sklcrt calibrate CONFIG.toml``: only the calibration check of that config.

The demo is the config :data:`DEMO_CONFIG` (``examples/config_demo.toml`` is the same analysis as a
file), so the demo and config runs share one code path. The config schema lives in one table
(:data:`CONFIG_SCHEMA`) that both the validation and ``--help`` read. Errors in the config or the
data print one line ``sklcrt: error: ...`` on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import importlib.util
import inspect
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CONFIG_SCHEMA",
    "DEMO_CONFIG",
    "ConfigError",
    "load_config",
    "main",
    "run_analysis",
    "validate_config",
]

ANALYSES = ("calibration", "power", "discovery")
SECTIONS = (
    "resampling_kwargs",
    "statistic",
    "assignment",
    "simulate",
    "calibration",
    "power",
    "discovery",
)
RESPONSE_KINDS = ("counts", "programs")
RESAMPLING_METHODS = ("bernoulli_index", "crt", "stratified_perm", "perm")
ALTERNATIVES = ("two-sided", "less", "greater")
PVALUE_METHODS = ("empirical", "skew_normal")
#: Same as the choices of :class:`sklcrt.statistics.NBScoreStatistic`'s ``effect_fit`` (tested).
EFFECT_FITS = ("linearized", "full")
#: Same as :data:`sklcrt.runners.CONTROL_GROUPS` (kept here so ``--help`` stays light).
CONTROL_GROUPS = ("complement", "nt_cells")
#: Same as :data:`sklcrt.assignment.DEFAULT_NTC_LABELS` (kept here so ``--help`` stays light).
NTC_LABELS = ("non-targeting", "non_targeting", "nontargeting", "NTC")

_REQUIRED = object()
_EXIT_ERROR = 2


class ConfigError(ValueError):
    """A config file (or its data) that cannot be analysed as written; the message says why."""


# ---------------------------------------------------------------------------- the schema
@dataclass(frozen=True)
class Option:
    """One config key: its TOML type, default, allowed values and meaning."""

    name: str
    kind: str  # "str", "int", "float", "bool", "str_list", "float_pair"
    default: object
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None


_KIND_WORDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean (true/false)",
    "str_list": "an array of strings",
    "float_pair": "an array of two numbers",
}

_TOP = (
    Option(
        "input",
        "str",
        _REQUIRED,
        'Path of the screen\'s .h5ad file, or "simulate" to '
        "simulate one with the [simulate] options.",
    ),
    Option(
        "output_dir",
        "str",
        "sklcrt_results",
        "Folder for the tables, summary and QQ plot "
        "(created; files in it are overwritten). The command line's --out overrides it.",
    ),
    Option(
        "analyses",
        "str_list",
        list(ANALYSES),
        "What `sklcrt run` does: any of "
        "calibration (NTC groups), power (positive-control pairs), discovery (discovery "
        "pairs). `sklcrt calibrate` runs calibration only.",
        choices=ANALYSES,
    ),
    Option(
        "response",
        "str",
        "counts",
        "Response kind: raw UMI counts (NB score statistic, "
        "effect = log2 fold change) or program usages (CLR, OLS).",
        choices=RESPONSE_KINDS,
    ),
    Option("layer", "str", None, "Layer with the raw counts (omit: adata.X). Counts only."),
    Option("usage_key", "str", "cnmf_usage", "obsm key of the program usages (programs only)."),
    Option(
        "clr_floor_quantile",
        "float",
        0.01,
        "Floor quantile of the CLR transform of program usages.",
        minimum=0.0,
        maximum=1.0,
    ),
    Option("covar_key", "str", "covar", "obsm key of the raw covariate DataFrame."),
    Option(
        "covariates",
        "str_list",
        None,
        "Columns of obsm[covar_key] encoded into the model "
        "covariates (one-hot categoricals, z-scored numerics); omit to encode every column.",
    ),
    Option(
        "batch_key",
        "str",
        "batch",
        "Column of obsm[covar_key] with the batch labels; also the "
        "default of resampling_kwargs.batch_key.",
    ),
    Option(
        "guide_key",
        "str",
        "guide_assignment",
        "obsm key of the 0/1 guide assignment (written there when [assignment] is given).",
    ),
    Option(
        "guide_names_key",
        "str",
        "guide_names",
        "uns key of the guide names (written there when [assignment] is given).",
    ),
    Option(
        "guide2gene_key",
        "str",
        "guide2gene",
        "uns key of the dict guide -> target (written there when [assignment] is given).",
    ),
    Option(
        "ntc_labels",
        "str_list",
        list(NTC_LABELS),
        "Targets that mark non-targeting guides (case-insensitive).",
    ),
    Option(
        "add_burden_covariates",
        "bool",
        True,
        "Derive non_ntc_guides_per_cell, "
        "grna_n_nonzero_assign and their log1p_ versions from the guide assignment and add "
        "them to obsm[covar_key] (replacing columns of those names), so burden_key can use "
        "them.",
    ),
    Option(
        "resampling_method",
        "str",
        "bernoulli_index",
        "bernoulli_index (= crt, the classic "
        "CRT), stratified_perm (recommended at high MOI) or perm.",
        choices=RESAMPLING_METHODS,
    ),
    Option(
        "control_group",
        "str",
        "complement",
        "Cells each unit is compared with: complement (every other cell) or nt_cells (the "
        "cells with non-targeting guides only; SCEPTRE's recommendation at low MOI).",
        choices=CONTROL_GROUPS,
    ),
    Option("n_resamples", "int", 499, "First-stage resamples per unit.", minimum=1),
    Option(
        "n_resamples_adaptive",
        "int",
        4999,
        "Second-stage resamples where the first-stage "
        "p-value is small; 0 turns the second stage off.",
        minimum=0,
    ),
    Option("alternative", "str", "two-sided", "Direction of the test.", choices=ALTERNATIVES),
    Option(
        "pvalue_method",
        "str",
        "empirical",
        "empirical, or skew_normal (fitted tail with an empirical fallback).",
        choices=PVALUE_METHODS,
    ),
    Option(
        "min_nonzero",
        "int",
        7,
        "Counts only: a pair needs this many treated and control "
        "cells with nonzero expression, else it is reported untested with a reason.",
        minimum=0,
    ),
    Option(
        "alpha", "float", 0.1, "Benjamini-Hochberg level for discoveries.", minimum=0.0, maximum=1.0
    ),
    Option(
        "n_jobs",
        "int",
        1,
        "Units tested in parallel (joblib; -1 = all cores). The command "
        "line's --n-jobs overrides it.",
    ),
    Option(
        "random_state",
        "int",
        0,
        "Seed of every random stream (and of [simulate]); results do not depend on n_jobs.",
        minimum=0,
    ),
)

_RESAMPLING = (
    Option("n_bins", "int", 10, "Propensity bins.", minimum=1),
    Option("stratify_by_batch", "bool", True, "Strata within each batch."),
    Option(
        "batch_key",
        "str",
        None,
        "Batch column of obsm[covar_key] (default: the top-level batch_key).",
    ),
    Option(
        "burden_key",
        "str",
        None,
        "Numeric column of obsm[covar_key] whose (raw) values are "
        "binned into strata, e.g. log1p_non_ntc_guides_per_cell; omit for no burden bins.",
    ),
    Option("n_burden_bins", "int", 8, "Burden bins.", minimum=1),
    Option(
        "burden_bin_method",
        "str",
        "quantile",
        "How burden bins are cut.",
        choices=("quantile", "uniform"),
    ),
    Option(
        "burden_clip_quantiles",
        "float_pair",
        [0.0, 1.0],
        "Clip burden to these quantiles before binning.",
    ),
    Option("min_stratum_size", "int", 2, "Smaller strata are pooled into one.", minimum=1),
)

_ASSIGNMENT = (
    Option("counts_key", "str", "grna_counts", "obsm key of the gRNA UMI counts."),
    Option(
        "method",
        "str",
        "threshold",
        "threshold (high MOI: every gRNA with >= threshold "
        "UMIs) or maximum (low MOI: the dominant gRNA).",
        choices=("threshold", "maximum"),
    ),
    Option("threshold", "float", 5.0, "UMI threshold of method = threshold.", minimum=0.0),
    Option(
        "min_fraction",
        "float",
        0.8,
        "method = maximum: share of the cell's gRNA UMIs the top gRNA needs.",
        minimum=0.0,
        maximum=1.0,
    ),
    Option("min_umis", "float", 5.0, "method = maximum: gRNA UMIs a cell needs.", minimum=0.0),
    Option("guide_names_key", "str", "grna_ids", "uns key of the gRNA ids of the counts' columns."),
    Option("target_key", "str", "grna_target", "uns key of each gRNA's target."),
    Option(
        "target_frame_key",
        "str",
        "grna_target_data_frame",
        "uns key of a DataFrame grna_id, grna_target (used when target_key is absent).",
    ),
)

_CALIBRATION = (
    Option(
        "group_size",
        "int",
        None,
        "Non-targeting guides per NTC group (default: the median number of guides per target).",
        minimum=1,
    ),
    Option(
        "n_pairs",
        "int",
        None,
        "Test a random subset of this many (NTC group, response) pairs (default: all).",
        minimum=1,
    ),
    Option(
        "n_ensemble",
        "int",
        1,
        "Repeat over this many random groupings of the NTC guides.",
        minimum=1,
    ),
    Option(
        "compare_without_burden",
        "bool",
        False,
        "With a burden_key, also run the check "
        "without burden bins (same settings otherwise) and plot both.",
    ),
)


def _statistic_section() -> tuple[Option, ...]:
    """The [statistic] options, their defaults read from :class:`NBScoreStatistic` itself."""
    from sklcrt.statistics import NBScoreStatistic

    defaults = NBScoreStatistic().get_params()
    return (
        Option(
            "theta",
            "float",
            defaults["theta"],
            "Fixed NB size theta (Var = mu + mu^2/theta) of every response, > 0; omit to "
            "estimate it per response by maximum likelihood.",
        ),
        Option(
            "theta_bounds",
            "float_pair",
            [float(b) for b in defaults["theta_bounds"]],
            "[low, high] with 0 < low < high: clamp of the estimated theta (the upper bound is "
            "effectively Poisson).",
        ),
        Option(
            "effect_fit",
            "str",
            defaults["effect_fit"],
            "How the effect (log2 fold change) is fitted: linearized (exact on the treated "
            "cells, quadratic expansion on the others; fast) or full (the NB GLM refitted on "
            "all cells).",
            choices=EFFECT_FITS,
        ),
    )


_STATISTIC = _statistic_section()


def _pairs_section(default_key: str) -> tuple[Option, ...]:
    return (
        Option(
            "pairs",
            "str",
            None,
            "CSV file with columns response_id, grna_target (relative "
            "to the config's folder); overrides pairs_key.",
        ),
        Option(
            "pairs_key",
            "str",
            default_key,
            "uns key of a DataFrame with columns "
            "response_id, grna_target (used when pairs is not given).",
        ),
        Option(
            "per_guide",
            "bool",
            False,
            "Test each guide of a target on its own (unit = the guide's name; one row per "
            "guide and response) instead of the union of the target's guides.",
        ),
    )


_SIMULATE_HELP = (
    'Only with input = "simulate": keyword arguments of sklcrt.datasets.simulate_screen '
    "(n_cells, n_genes, n_programs, n_targets, guides_per_target, n_ntc_guides, moi, n_batches, "
    "effect_size, frac_targets_with_effect, burden_effect, burden_shape, burden_threshold, "
    "guide_load_cv, mean_umis, response, random_state); omitted ones keep simulate_screen's "
    "defaults, except random_state, which defaults to the top-level one."
)

#: Every section of the config file and its options ("" is the top level).
CONFIG_SCHEMA: dict[str, tuple[Option, ...]] = {
    "": _TOP,
    "resampling_kwargs": _RESAMPLING,
    "statistic": _STATISTIC,
    "assignment": _ASSIGNMENT,
    "calibration": _CALIBRATION,
    "power": _pairs_section("positive_control_pairs"),
    "discovery": _pairs_section("discovery_pairs"),
}

_SECTION_HELP = {
    "resampling_kwargs": "Options of the resampling method (stratified_perm uses them all); "
    "passed unchanged to the runners.",
    "statistic": "Options of the NB score statistic of counts (sklcrt.statistics."
    'NBScoreStatistic), response = "counts" only; omit the section for its defaults. Program '
    "responses use the OLS t statistic, which has no options.",
    "assignment": "Give this section to assign guides from gRNA UMI counts "
    "(sklcrt.assignment.assign_guides) before the analysis; omit it when obsm[guide_key] exists.",
    "calibration": "The NTC calibration check (sklcrt.runners.run_ntc_groups).",
    "power": "Positive-control pairs (sklcrt.runners.power_check).",
    "discovery": "Discovery pairs, Benjamini-Hochberg at alpha "
    "(sklcrt.runners.discovery_analysis).",
}

#: The analysis ``sklcrt demo`` runs (``examples/config_demo.toml`` is the same as a file).
DEMO_CONFIG: dict = {
    "input": "simulate",
    "output_dir": "sklcrt_demo",
    "analyses": ["calibration", "power", "discovery"],
    "response": "counts",
    "covariates": ["batch", "log1p_response_n_umis", "log1p_response_n_nonzero"],
    "resampling_method": "stratified_perm",
    "n_resamples": 499,
    "n_resamples_adaptive": 0,
    "alpha": 0.1,
    "random_state": 0,
    "resampling_kwargs": {
        "n_bins": 20,
        "stratify_by_batch": True,
        "batch_key": "batch",
        "burden_key": "log1p_non_ntc_guides_per_cell",
        "n_burden_bins": 8,
        "burden_bin_method": "quantile",
    },
    "calibration": {"compare_without_burden": True},
    "simulate": {"response": "counts"},
}


# ---------------------------------------------------------------------------- validation
def _closest(name: str, candidates) -> str:
    match = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _toml_type(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_value(opt: Option, value, where: str):
    """``value`` converted to the option's Python type, or a ConfigError naming the key."""
    kind = opt.kind
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = _is_number(value) and math.isfinite(value)
        value = float(value) if ok else value
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "str":
        ok = isinstance(value, str)
    elif kind == "str_list":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        value = list(value) if ok else value
    elif kind == "float_pair":
        ok = isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)
        value = [float(v) for v in value] if ok else value
    else:  # pragma: no cover - schema bug
        raise AssertionError(kind)
    if not ok:
        raise ConfigError(
            f"{where}: {opt.name!r} must be {_KIND_WORDS[kind]}, got {_toml_type(value)} {value!r}."
        )
    if opt.choices is not None:
        for v in value if kind == "str_list" else [value]:
            if v not in opt.choices:
                raise ConfigError(
                    f"{where}: {opt.name!r} has {v!r}{_closest(v, opt.choices)}; choose from "
                    f"{list(opt.choices)}."
                )
    if kind in ("int", "float"):
        if opt.minimum is not None and value < opt.minimum:
            raise ConfigError(f"{where}: {opt.name!r} must be >= {opt.minimum}, got {value}.")
        if opt.maximum is not None and value > opt.maximum:
            raise ConfigError(f"{where}: {opt.name!r} must be <= {opt.maximum}, got {value}.")
    return value


def _check_table(table: dict, options: Sequence[Option], where: str) -> dict:
    """Defaults filled in, keys and types checked; ``_given`` lists the keys the user set."""
    known = {o.name: o for o in options}
    for key in table:
        if key not in known:
            raise ConfigError(
                f"{where}: unknown key {key!r}{_closest(key, known)}; valid keys are "
                f"{sorted(known)}."
            )
    out: dict = {}
    for opt in options:
        if opt.name in table:
            out[opt.name] = _check_value(opt, table[opt.name], where)
        elif opt.default is _REQUIRED:
            raise ConfigError(f"{where}: required key {opt.name!r} is missing.")
        else:
            out[opt.name] = copy.deepcopy(opt.default)
    out["_given"] = sorted(table)
    return out


def _simulate_options() -> tuple[Option, ...]:
    from sklcrt.datasets import simulate_screen

    options = []
    for name, param in inspect.signature(simulate_screen).parameters.items():
        default = param.default
        if name == "random_state":
            options.append(Option(name, "int", None, "seed", minimum=0))
        elif isinstance(default, bool):
            options.append(Option(name, "bool", default, ""))
        elif isinstance(default, int):
            options.append(Option(name, "int", default, ""))
        elif isinstance(default, float) or default is None:
            options.append(Option(name, "float", default, ""))
        else:
            options.append(Option(name, "str", default, ""))
    return tuple(options)


def _resolve_path(value: str, base_dir: Path) -> Path:
    path = Path(value).expanduser()
    return (path if path.is_absolute() else base_dir / path).resolve()


def validate_config(raw: dict, *, source: str = "config", base_dir: str | Path = ".") -> dict:
    """Check a config (as parsed from TOML) against the schema and fill in the defaults.

    Parameters
    ----------
    raw : dict
        The parsed TOML document.
    source : str, default="config"
        Name of the config in error messages (usually its file name).
    base_dir : str or Path, default="."
        Folder that relative paths (``input``, ``output_dir``, ``pairs``) resolve against.

    Returns
    -------
    dict
        The resolved config: every top-level key, ``resampling_kwargs`` (``burden_key`` None
        when omitted, ``batch_key`` the top-level one when omitted), ``statistic`` (None when the
        section is absent, else the options of :class:`~sklcrt.statistics.NBScoreStatistic`
        with ``theta_bounds`` a tuple), ``assignment`` (None when the section is absent),
        ``simulate`` (None unless ``input = "simulate"``), ``calibration``, ``power``,
        ``discovery``; paths absolute.

    Raises
    ------
    ConfigError
        For an unknown key (with the closest valid one), a value of the wrong type or out of range,
        a missing required key, or a file that does not exist.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the config must be a TOML table, got {_toml_type(raw)}.")
    base_dir = Path(base_dir).resolve()
    top_names = [o.name for o in _TOP]
    tables = {}
    flat = {}
    for key, value in raw.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(
                    f"{source}: {key!r} must be a table ([{key}] section), got "
                    f"{_toml_type(value)} {value!r}."
                )
            tables[key] = value
        elif key in top_names:
            flat[key] = value
        else:
            raise ConfigError(
                f"{source}: unknown key {key!r}{_closest(key, [*top_names, *SECTIONS])}; valid "
                f"top-level keys are {sorted(top_names)} and sections {list(SECTIONS)}."
            )
    config = _check_table(flat, _TOP, source)
    config["resampling_kwargs"] = _check_table(
        tables.get("resampling_kwargs", {}), _RESAMPLING, f"{source} [resampling_kwargs]"
    )
    rk = config["resampling_kwargs"]
    if rk["batch_key"] is None:
        rk["batch_key"] = config["batch_key"]
    rk["burden_clip_quantiles"] = tuple(rk["burden_clip_quantiles"])
    for name in ("calibration", "power", "discovery"):
        config[name] = _check_table(tables.get(name, {}), CONFIG_SCHEMA[name], f"{source} [{name}]")
    config["assignment"] = (
        _check_table(tables["assignment"], _ASSIGNMENT, f"{source} [assignment]")
        if "assignment" in tables
        else None
    )
    config["statistic"] = (
        _check_table(tables["statistic"], _STATISTIC, f"{source} [statistic]")
        if "statistic" in tables
        else None
    )

    if config["input"] == "simulate":
        sim = _check_table(tables.get("simulate", {}), _simulate_options(), f"{source} [simulate]")
        sim_given = sim.pop("_given")
        config["simulate"] = {k: sim[k] for k in sim_given}
        config["simulate"].setdefault("random_state", config["random_state"])
    else:
        if "simulate" in tables:
            raise ConfigError(
                f'{source}: a [simulate] section needs input = "simulate", got input = '
                f"{config['input']!r}."
            )
        config["simulate"] = None
        path = _resolve_path(config["input"], base_dir)
        if not path.is_file():
            raise ConfigError(
                f"{source}: input file {str(path)!r} not found (relative paths resolve against "
                f"the config's folder {str(base_dir)!r})."
            )
        config["input"] = str(path)
    config["output_dir"] = str(_resolve_path(config["output_dir"], base_dir))
    for name in ("power", "discovery"):
        section = config[name]
        if section["pairs"] is not None and "pairs_key" in section["_given"]:
            raise ConfigError(
                f"{source} [{name}]: give 'pairs' (a CSV file) or 'pairs_key', not both."
            )
        if section["pairs"] is not None:
            path = _resolve_path(section["pairs"], base_dir)
            if name in config["analyses"] and not path.is_file():
                raise ConfigError(
                    f"{source} [{name}]: pairs file {str(path)!r} not found (relative paths "
                    f"resolve against the config's folder {str(base_dir)!r})."
                )
            section["pairs"] = str(path)
    if not config["analyses"]:
        raise ConfigError(f"{source}: 'analyses' is empty; list some of {list(ANALYSES)}.")
    for section in (
        config,
        rk,
        config["calibration"],
        config["power"],
        config["discovery"],
        config["assignment"] or {},
        config["statistic"] or {},
    ):
        section.pop("_given", None)
    if config["n_jobs"] == 0:
        raise ConfigError(f"{source}: 'n_jobs' must be a positive integer or -1, got 0.")
    if not 0.0 < config["alpha"] < 1.0:
        raise ConfigError(f"{source}: 'alpha' must be in (0, 1), got {config['alpha']}.")
    if config["response"] == "programs" and config["layer"] is not None:
        raise ConfigError(f"{source}: 'layer' is only used with response = \"counts\".")
    if config["calibration"]["compare_without_burden"] and rk["burden_key"] is None:
        raise ConfigError(
            f"{source} [calibration]: compare_without_burden = true needs "
            "resampling_kwargs.burden_key to compare against."
        )
    _check_statistic(config, source)
    _check_resampling(config, source)
    return config


def _check_statistic(config: dict, source: str) -> None:
    """The [statistic] section: counts only, ``theta`` > 0, finite ``0 < low < high`` bounds."""
    options = config["statistic"]
    if options is None:
        return
    where = f"{source} [statistic]"
    if config["response"] != "counts":
        raise ConfigError(
            f"{where}: these options are for the NB score statistic of counts (response = "
            f'"counts"); response = {config["response"]!r} uses the OLS t statistic, which has '
            "none: remove the [statistic] section."
        )
    theta = options["theta"]
    if theta is not None and not theta > 0:
        raise ConfigError(
            f"{where}: 'theta' must be > 0, got {theta}; omit it to estimate theta per response."
        )
    from sklcrt.statistics.nb_score import check_theta_bounds

    try:
        options["theta_bounds"] = check_theta_bounds(options["theta_bounds"])
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _make_statistic(config: dict):
    """The unfitted statistic of the [statistic] section, or None (the runners' default)."""
    if config["statistic"] is None:
        return None
    from sklcrt.statistics import NBScoreStatistic

    return NBScoreStatistic(**config["statistic"], n_jobs=config["n_jobs"])


def _statistic_summary(statistic) -> dict:
    """The fitted statistic's class, its [statistic] options and the range of its fitted theta."""
    import numpy as np

    params = statistic.get_params()
    out = {"class": type(statistic).__name__}
    out.update({o.name: params[o.name] for o in _STATISTIC if o.name in params})
    theta = getattr(statistic, "theta_", None)
    if theta is not None and np.isfinite(theta).any():
        finite = theta[np.isfinite(theta)]
        out["fitted_theta"] = {
            "min": float(finite.min()),
            "median": float(np.median(finite)),
            "max": float(finite.max()),
        }
    return out


def _resampling_kwargs(config: dict, *, burden: bool = True) -> dict:
    kwargs = dict(config["resampling_kwargs"])
    if not burden:
        kwargs["burden_key"] = None
    return kwargs


def _check_resampling(config: dict, source: str) -> None:
    """Let the library validate the resampling options now, before any data is read."""
    try:
        from sklcrt.resampling import DEFAULT_RESAMPLING_KWARGS, resolve_resampling
    except ImportError:  # pragma: no cover - the lower layers are part of the package
        return
    kwargs = _resampling_kwargs(config)
    unknown = set(kwargs) - set(DEFAULT_RESAMPLING_KWARGS)
    for key in sorted(unknown):  # pragma: no cover - schema and library agree (tested)
        kwargs.pop(key)
    try:
        resolve_resampling(config["resampling_method"], kwargs)
    except ValueError as err:
        raise ConfigError(f"{source} [resampling_kwargs]: {err}") from err


def _read_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise ConfigError(
                "reading TOML config files needs Python >= 3.11 or the 'tomli' package "
                "(pip install tomli)."
            ) from None
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} not found.")
    with open(path, "rb") as fh:
        try:
            return tomllib.load(fh)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path.name}: invalid TOML: {err}") from err


def load_config(path: str | Path) -> dict:
    """Read and validate a TOML config file.

    Parameters
    ----------
    path : str or Path
        The config file; relative paths inside it resolve against its folder.

    Returns
    -------
    dict
        The resolved config (see :func:`validate_config`).
    """
    path = Path(path)
    return validate_config(_read_toml(path), source=path.name, base_dir=path.resolve().parent)


# ---------------------------------------------------------------------------- the analysis
def _missing_key(container: str, key: str, available, option: str) -> ConfigError:
    available = sorted(map(str, available))
    return ConfigError(
        f"adata.{container}[{key!r}] not found{_closest(key, available)}; adata.{container} has "
        f"keys {available}. Set {option} in the config."
    )


def _load_screen(config: dict, echo: Callable[[str], None]):
    if config["input"] == "simulate":
        from sklcrt.datasets import simulate_screen

        options = dict(config["simulate"])
        echo(f"simulating a screen ({', '.join(f'{k}={v}' for k, v in options.items())})")
        return simulate_screen(**options)
    import anndata as ad

    echo(f"reading {config['input']}")
    try:
        return ad.read_h5ad(config["input"])
    except OSError as err:
        raise ConfigError(f"cannot read {config['input']!r} as .h5ad: {err}") from err


def _prepare_screen(adata, config: dict, echo: Callable[[str], None]) -> None:
    """Assignment, burden covariates and key checks, in place, before any test runs."""
    from sklcrt.assignment import add_burden_covariates, assign_guides

    assignment = config["assignment"]
    if assignment is not None:
        if assignment["counts_key"] not in adata.obsm:
            raise _missing_key(
                "obsm", assignment["counts_key"], adata.obsm.keys(), "[assignment] counts_key"
            )
        rule = assignment["method"]
        if rule == "threshold":
            rule += f" >= {assignment['threshold']:g} UMIs"
        echo(f"assigning guides from obsm[{assignment['counts_key']!r}] ({rule})")
        assign_guides(
            adata,
            **assignment,
            key_added=config["guide_key"],
            names_key_added=config["guide_names_key"],
            guide2gene_key_added=config["guide2gene_key"],
        )
    if config["guide_key"] not in adata.obsm:
        raise _missing_key(
            "obsm",
            config["guide_key"],
            adata.obsm.keys(),
            "guide_key (or add an [assignment] section to assign from gRNA counts)",
        )
    if config["covar_key"] not in adata.obsm:
        raise _missing_key("obsm", config["covar_key"], adata.obsm.keys(), "covar_key")
    if config["response"] == "programs" and config["usage_key"] not in adata.obsm:
        raise _missing_key("obsm", config["usage_key"], adata.obsm.keys(), "usage_key")
    if config["layer"] is not None and config["layer"] not in adata.layers:
        raise _missing_key("layers", config["layer"], adata.layers.keys(), "layer")
    if config["add_burden_covariates"]:
        add_burden_covariates(
            adata,
            guide_key=config["guide_key"],
            covar_key=config["covar_key"],
            guide_names_key=config["guide_names_key"],
            guide2gene_key=config["guide2gene_key"],
            ntc_labels=config["ntc_labels"],
        )
    covar = adata.obsm[config["covar_key"]]
    columns = list(getattr(covar, "columns", []))
    rk = config["resampling_kwargs"]
    needed = [("resampling_kwargs.burden_key", rk["burden_key"])]
    if config["resampling_method"] == "stratified_perm" and rk["stratify_by_batch"]:
        needed.append(("resampling_kwargs.batch_key", rk["batch_key"]))
    needed += [("covariates", c) for c in config["covariates"] or []]
    for option, column in needed:
        if column is not None and column not in columns:
            raise ConfigError(
                f"{option} = {column!r} is not a column of adata.obsm[{config['covar_key']!r}]"
                f"{_closest(column, columns)}; its columns are {columns}."
            )


def _load_pairs(config: dict, name: str, adata):
    import pandas as pd

    section = config[name]
    if section["pairs"] is not None:
        pairs = pd.read_csv(section["pairs"])
        where = f"[{name}] pairs file {section['pairs']!r}"
    else:
        key = section["pairs_key"]
        if key not in adata.uns:
            raise _missing_key(
                "uns",
                key,
                adata.uns.keys(),
                f"[{name}] pairs_key or pairs (a CSV file), or drop {name!r} from analyses",
            )
        pairs = pd.DataFrame(adata.uns[key])
        where = f"adata.uns[{key!r}]"
    missing = {"response_id", "grna_target"} - set(pairs.columns)
    if missing:
        raise ConfigError(
            f"{where} needs columns response_id and grna_target; missing {sorted(missing)} "
            f"(it has {list(pairs.columns)})."
        )
    kinds = set(pairs["response_kind"].astype(str)) if "response_kind" in pairs.columns else {}
    if kinds and kinds <= {"gene", "program"}:  # the simulator's pairs: genes and programs
        kind = "gene" if config["response"] == "counts" else "program"
        pairs = pairs[pairs["response_kind"].astype(str) == kind]
    if len(pairs) == 0:
        raise ConfigError(f"{where} has no pairs to test for response = {config['response']!r}.")
    return pairs.reset_index(drop=True)


def _p_values(results):
    import numpy as np

    p = results["pvalue"].to_numpy(dtype=float)
    return p[np.isfinite(p)]


def _write_table(frame, out_dir: Path, name: str, files: list[str]) -> None:
    frame.to_csv(out_dir / name, index=False)
    files.append(name)


def _qq_plot(curves: dict, out_dir: Path, files: list[str], echo, title: str) -> str | None:
    """QQ plot of the NTC p-values of every calibration run, on one axes (Agg backend)."""
    if not curves:
        return None
    if importlib.util.find_spec("matplotlib") is None:
        echo("matplotlib is not installed: skipping the QQ plot (pip install 'sklcrt[plot]').")
        return None
    try:
        from sklcrt.plotting import qq_plot
    except ImportError as err:
        echo(f"skipping the QQ plot: {err}")
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 5.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    qq_plot(curves, ax=ax)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out_dir / "qq_plot.png", dpi=120)
    files.append("qq_plot.png")
    return "qq_plot.png"


def _method_label(config: dict, burden: bool) -> str:
    method = config["resampling_method"]
    if method == "crt":
        method = "bernoulli_index"
    if burden and config["resampling_kwargs"]["burden_key"] is not None:
        return f"{method} + burden bins"
    return method


def _json_default(value):
    import numpy as np

    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path | tuple | set):
        return str(value) if isinstance(value, Path) else list(value)
    return str(value)


def run_analysis(
    config: dict,
    *,
    analyses: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    command: str = "run",
) -> dict:
    """Run the analyses of a validated config and write their outputs.

    Parameters
    ----------
    config : dict
        From :func:`load_config` or :func:`validate_config`.
    analyses : sequence of str, default=None
        Analyses to run; default ``config["analyses"]``.
    out_dir : str or Path, default=None
        Output folder; default ``config["output_dir"]``.
    progress : bool, default=True
        Show progress bars.
    echo : callable, default=print
        Receives one line per step.
    command : str, default="run"
        Recorded in the summary.

    Returns
    -------
    dict
        The summary also written to ``summary.json``; its ``"table"`` rows are printed by the
        command line (one row per calibration run: method, NTC pairs, fraction of p < 0.01, NTC
        Benjamini-Hochberg hits, discoveries, positives found).
    """
    import numpy as np

    from sklcrt.inputs import prepare_crt_inputs
    from sklcrt.runners import (
        calibration_summary,
        discovery_analysis,
        fit_null_model,
        power_check,
        run_ntc_ensemble,
        run_ntc_groups,
    )

    analyses = list(config["analyses"] if analyses is None else analyses)
    out_dir = Path(config["output_dir"] if out_dir is None else out_dir)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name, t0):
        timings[name] = round(time.perf_counter() - t0, 3)

    t0 = time.perf_counter()
    adata = _load_screen(config, echo)
    _prepare_screen(adata, config, echo)
    pairs = {
        name: _load_pairs(config, name, adata)
        for name in ("power", "discovery")
        if name in analyses
    }
    inputs = prepare_crt_inputs(
        adata,
        response=config["response"],
        layer=config["layer"],
        usage_key=config["usage_key"],
        clr_floor_quantile=config["clr_floor_quantile"],
        covar_key=config["covar_key"],
        covariates=config["covariates"],
        batch_key=config["batch_key"],
        guide_key=config["guide_key"],
        guide_names_key=config["guide_names_key"],
        guide2gene_key=config["guide2gene_key"],
        ntc_labels=config["ntc_labels"],
    )
    lap("load", t0)
    screen = {
        "n_cells": int(inputs["C"].shape[0]),
        "n_responses": len(inputs["response_names"]),
        "response_kind": inputs["response_kind"],
        "n_guides": len(inputs["guide_names"]),
        "n_targets": len(inputs["units"]),
        "n_ntc_guides": len(inputs["ntc_guides"]),
        "covariates": list(inputs["C_names"]),
    }
    echo(
        f"screen: {screen['n_cells']} cells, {screen['n_responses']} {screen['response_kind']} "
        f"responses, {screen['n_targets']} targets, {screen['n_ntc_guides']} NTC guides"
    )
    out_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    echo("fitting the null model of every response")
    statistic = fit_null_model(inputs, _make_statistic(config), n_jobs=config["n_jobs"])
    lap("null_model", t0)
    common = dict(
        statistic=statistic,
        resampling_method=config["resampling_method"],
        control_group=config["control_group"],
        n_resamples=config["n_resamples"],
        n_resamples_adaptive=config["n_resamples_adaptive"],
        alternative=config["alternative"],
        pvalue_method=config["pvalue_method"],
        min_nonzero=config["min_nonzero"],
        n_jobs=config["n_jobs"],
        random_state=config["random_state"],
        progress=progress,
    )
    alpha = config["alpha"]
    files: list[str] = []
    summary: dict = {
        "command": command,
        "screen": screen,
        "statistic": _statistic_summary(statistic),
    }
    rows: list[dict] = []
    main_label = _method_label(config, burden=True)

    if "calibration" in analyses:
        cal = config["calibration"]
        runs = []
        if cal["compare_without_burden"]:
            runs.append((_method_label(config, burden=False), False, "calibration_no_burden.csv"))
        runs.append((main_label, True, "calibration.csv"))
        summary["calibration"] = {}
        curves = {}
        for label, burden, fname in runs:
            t0 = time.perf_counter()
            echo(f"calibration check on NTC groups: {label}")
            kwargs = dict(
                common,
                resampling_kwargs=_resampling_kwargs(config, burden=burden),
                group_size=cal["group_size"],
                n_pairs=cal["n_pairs"],
            )
            if cal["n_ensemble"] > 1:
                results = run_ntc_ensemble(inputs, n_ensemble=cal["n_ensemble"], **kwargs)
            else:
                results = run_ntc_groups(inputs, **kwargs)
            lap(f"calibration: {label}", t0)
            _write_table(results, out_dir, fname, files)
            stats_ = calibration_summary(results, alpha=alpha)
            stats_.update(
                n_requested=len(results), table=fname, resampling_kwargs=kwargs["resampling_kwargs"]
            )
            summary["calibration"][label] = stats_
            curves[f"{label} (NTC)"] = _p_values(results)
            rows.append(
                {
                    "method": label,
                    "ntc_pairs": stats_["n_pairs"],
                    "frac_p_below_0.01": stats_["frac_below_0.01"],
                    "ntc_bh_hits": stats_["n_bh_discoveries"],
                }
            )
        summary["qq_plot"] = _qq_plot(curves, out_dir, files, echo, title="NTC calibration check")

    main_row = next((r for r in rows if r["method"] == main_label), None)
    if main_row is None:
        main_row = {"method": main_label}
        rows.append(main_row)
    rk_main = _resampling_kwargs(config, burden=True)
    for name, runner, fname in (
        ("power", power_check, "power.csv"),
        ("discovery", discovery_analysis, "discovery.csv"),
    ):
        if name not in analyses:
            continue
        t0 = time.perf_counter()
        echo(f"{name} analysis: {len(pairs[name])} pairs, {main_label}")
        results = runner(
            inputs,
            pairs[name][["response_id", "grna_target"]],
            alpha=alpha,
            resampling_kwargs=rk_main,
            per_guide=config[name]["per_guide"],
            **common,
        )
        lap(name, t0)
        _write_table(results, out_dir, fname, files)
        p = results["pvalue"].to_numpy(dtype=float)
        tested = np.isfinite(p)
        n_sig = int(results["significant"].sum())
        part = {
            "n_pairs": len(results),
            "n_tested": int(tested.sum()),
            "n_significant": n_sig,
            "alpha": alpha,
            "per_guide": config[name]["per_guide"],
            "table": fname,
            "median_p_value": float(np.median(p[tested])) if tested.any() else None,
        }
        if name == "power":
            part["n_p_below_0.001"] = int(np.sum(p[tested] < 1e-3))
            main_row["positives_found"] = f"{n_sig}/{len(results)}"
        else:
            main_row["discoveries"] = n_sig
        summary[name] = part

    summary["table"] = rows
    timings["total"] = round(time.perf_counter() - t_start, 3)
    summary["timings_s"] = timings
    summary["files"] = files + ["summary.json", "summary.txt"]
    summary["config"] = {k: v for k, v in config.items() if k != "_given"}
    table = format_table(rows, alpha)
    summary["table_text"] = table
    with open(out_dir / "summary.json", "w") as fh:
        json.dump(summary, fh, indent=2, default=_json_default)
    with open(out_dir / "summary.txt", "w") as fh:
        fh.write(_summary_text(summary, config, out_dir))
    return summary


def format_table(rows: Sequence[dict], alpha: float) -> str:
    """The summary table: one row per method, ``-`` where an analysis did not run."""
    headers = [
        "method",
        "NTC pairs",
        "frac p<0.01",
        f"NTC BH hits@{alpha:g}",
        f"discoveries@{alpha:g}",
        "positives found",
    ]
    keys = [
        "method",
        "ntc_pairs",
        "frac_p_below_0.01",
        "ntc_bh_hits",
        "discoveries",
        "positives_found",
    ]
    body = []
    for row in rows:
        cells = []
        for key in keys:
            value = row.get(key)
            if value is None:
                cells.append("-")
            elif isinstance(value, float):
                cells.append(f"{value:.4f}")
            else:
                cells.append(str(value))
        body.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(headers)]
    lines = []
    for cells in [headers, *body]:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        lines.append("  ".join([first, *rest]))
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def _summary_text(summary: dict, config: dict, out_dir: Path) -> str:
    screen = summary["screen"]
    source = config["input"]
    if config["simulate"] is not None:
        source = f"simulated screen {config['simulate']}"
    lines = [
        f"sklcrt {summary['command']}: {source}",
        f"screen: {screen['n_cells']} cells, {screen['n_responses']} {screen['response_kind']} "
        f"responses, {screen['n_targets']} targets, {screen['n_ntc_guides']} NTC guides",
        f"resampling: {config['resampling_method']} {_resampling_kwargs(config)}, "
        f"control_group={config['control_group']}",
        f"n_resamples={config['n_resamples']}, n_resamples_adaptive="
        f"{config['n_resamples_adaptive']}, alternative={config['alternative']}, "
        f"pvalue_method={config['pvalue_method']}, random_state={config['random_state']}",
        _statistic_text(summary["statistic"]),
        "",
        summary["table_text"],
        "",
        "A calibrated method gives NTC pairs about 1% of p-values below 0.01 and no BH hits.",
        f"files in {out_dir}: {', '.join(summary['files'])}",
        f"total time: {summary['timings_s']['total']:.1f} s",
    ]
    return "\n".join(lines) + "\n"


def _statistic_text(info: dict) -> str:
    """One line of summary.txt: the statistic, its options and the fitted theta's range."""
    options = {k: v for k, v in info.items() if k not in ("class", "fitted_theta")}
    text = f"statistic: {info['class']}({', '.join(f'{k}={v!r}' for k, v in options.items())})"
    theta = info.get("fitted_theta")
    if theta is not None:
        text += (
            f", fitted theta {theta['min']:.4g} (min), {theta['median']:.4g} (median), "
            f"{theta['max']:.4g} (max)"
        )
    return text


# ---------------------------------------------------------------------------- the commands
def _echo_for(quiet: bool) -> Callable[[str], None]:
    if quiet:
        return lambda message: None
    return lambda message: print(f"[sklcrt] {message}", flush=True)


def _finish(summary: dict, out_dir: Path) -> None:
    print(summary["table_text"])
    print(
        f"wrote {', '.join(summary['files'])} to {out_dir} in {summary['timings_s']['total']:.1f} s"
    )


def _cmd_demo(args: argparse.Namespace) -> int:
    raw = copy.deepcopy(DEMO_CONFIG)
    raw["random_state"] = args.seed
    raw["n_jobs"] = args.n_jobs
    config = validate_config(raw, source="demo", base_dir=Path.cwd())
    out_dir = Path(args.out)
    summary = run_analysis(
        config, out_dir=out_dir, progress=not args.quiet, echo=_echo_for(args.quiet), command="demo"
    )
    _finish(summary, out_dir)
    return 0


def _cmd_config(args: argparse.Namespace, analyses: Sequence[str] | None) -> int:
    config = load_config(args.config)
    if args.n_jobs is not None:
        if args.n_jobs == 0:
            raise ConfigError("--n-jobs must be a positive integer or -1, got 0.")
        config["n_jobs"] = args.n_jobs
    out_dir = Path(args.out) if args.out is not None else Path(config["output_dir"])
    summary = run_analysis(
        config,
        analyses=analyses,
        out_dir=out_dir,
        progress=not args.quiet,
        echo=_echo_for(args.quiet),
        command=args.command,
    )
    _finish(summary, out_dir)
    return 0


def _schema_help() -> str:
    """The config file reference shown by ``sklcrt run --help``."""
    import textwrap

    def describe(opt: Option) -> list[str]:
        if opt.default is _REQUIRED:
            default = "required"
        elif opt.default is None:
            default = "default: omitted"
        else:
            default = f"default: {json.dumps(opt.default)}"
        head = f"  {opt.name} ({_KIND_WORDS[opt.kind]}; {default})"
        text = opt.help
        if opt.choices is not None:
            text += f" One of: {', '.join(opt.choices)}."
        return [head, *textwrap.wrap(text, 92, initial_indent="      ", subsequent_indent="      ")]

    lines = [
        "config file (TOML). Relative paths resolve against the config file's folder; TOML has "
        "no null,",
        "so omit a key to leave it unset. Reference examples: examples/config_gasperini.toml and",
        "examples/config_demo.toml.",
        "",
        "top level:",
    ]
    for opt in _TOP:
        lines += describe(opt)
    for section, options in CONFIG_SCHEMA.items():
        if not section:
            continue
        lines += ["", f"[{section}]"]
        lines += textwrap.wrap(
            _SECTION_HELP[section], 94, initial_indent="  ", subsequent_indent="  "
        )
        for opt in options:
            lines += describe(opt)
    lines += ["", "[simulate]"]
    lines += textwrap.wrap(_SIMULATE_HELP, 94, initial_indent="  ", subsequent_indent="  ")
    lines += [
        "",
        "outputs in output_dir: calibration.csv (and calibration_no_burden.csv), power.csv,",
        "discovery.csv (one row per pair, or per guide and pair with per_guide: pvalue, effect, "
        "p_adj,",
        "significant, pass_qc, qc_reason...), qq_plot.png (needs matplotlib), summary.json and "
        "summary.txt",
        "(the settings, the statistic and its fitted theta).",
        "",
        "errors in the config or the data print one line 'sklcrt: error: ...' and exit with "
        "status 2.",
    ]
    return "\n".join(lines)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("sklcrt")
    except Exception:  # noqa: BLE001 - not installed: fall back to the source tree's version
        from sklcrt import __version__

        return __version__


def _demo_description() -> str:
    import textwrap

    rk = DEMO_CONFIG["resampling_kwargs"]
    text = (
        "Simulate a high-MOI screen with sklcrt.datasets.simulate_screen (its defaults: 6000 "
        "cells, 100 genes, 20 targets x 2 guides, 20 non-targeting guides, MOI 8, 2 batches; "
        f"options {DEMO_CONFIG['simulate']}). Then, with resampling_method "
        f"'{DEMO_CONFIG['resampling_method']}' (strata: batch x {rk['n_bins']} propensity bins "
        f"of {', '.join(DEMO_CONFIG['covariates'])}), run the NTC calibration check without and "
        f"with {rk['n_burden_bins']} burden bins of {rk['burden_key']}, and the positive-control "
        "and discovery analyses with burden bins (NB score statistic on the counts, "
        f"{DEMO_CONFIG['n_resamples']} resamples per unit, no adaptive second stage, so the "
        "demo takes seconds). Writes calibration_no_burden.csv, calibration.csv, "
        "power.csv, discovery.csv, qq_plot.png (needs matplotlib), summary.json and "
        "summary.txt to --out and prints a summary table. examples/config_demo.toml is the "
        "same analysis as a config file (sklcrt run examples/config_demo.toml)."
    )
    return "\n".join(textwrap.wrap(text, 94))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``sklcrt`` command."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="sklcrt",
        description="Calibrated conditional randomization and stratified permutation tests for "
        "single-cell CRISPR screens.",
        epilog="Run 'sklcrt demo' for the built-in example; 'sklcrt run --help' documents the "
        "config file.",
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        help="simulate a high-MOI screen and show calibration with and without burden bins",
        description=_demo_description(),
        formatter_class=formatter,
    )
    demo.add_argument(
        "--out",
        metavar="DIR",
        default="sklcrt_demo",
        help="output folder, created if needed (default: ./sklcrt_demo)",
    )
    demo.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars or step messages; only the summary table",
    )
    demo.add_argument(
        "--n-jobs",
        metavar="N",
        type=int,
        default=1,
        help="units tested in parallel with joblib, -1 for all cores (default: 1)",
    )
    demo.add_argument(
        "--seed",
        metavar="S",
        type=_non_negative_int,
        default=0,
        help="seed of the simulation and of every test (default: 0)",
    )
    demo.set_defaults(func=_cmd_demo)

    for name, analyses, summary in (
        ("run", None, "run the analyses of a TOML config file"),
        ("calibrate", ["calibration"], "run only the NTC calibration check of a TOML config file"),
    ):
        what = (
            "the analyses listed in its 'analyses' key (calibration, power, discovery)"
            if analyses is None
            else "only the NTC calibration check ([calibration] section), whatever 'analyses' says"
        )
        cmd = sub.add_parser(
            name,
            help=summary,
            description=f"Read CONFIG (TOML) and run {what};\nwrite the tables, QQ plot and "
            "summary to its output_dir and print a summary table.",
            epilog=_schema_help(),
            formatter_class=formatter,
        )
        cmd.add_argument("config", metavar="CONFIG", help="TOML config file (schema below)")
        cmd.add_argument(
            "--out",
            metavar="DIR",
            default=None,
            help="output folder, overriding the config's output_dir "
            "(relative to the current folder)",
        )
        cmd.add_argument(
            "--quiet",
            action="store_true",
            help="no progress bars or step messages; only the summary table",
        )
        cmd.add_argument(
            "--n-jobs",
            metavar="N",
            type=int,
            default=None,
            help="units tested in parallel, overriding the config's n_jobs",
        )
        cmd.set_defaults(func=lambda args, analyses=analyses: _cmd_config(args, analyses))
    return parser


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


def _one_line(err: BaseException) -> str:
    if isinstance(err, KeyError) and len(err.args) == 1:
        message = f"missing key {err.args[0]!r}"
    else:
        message = str(err) or type(err).__name__
    return " ".join(message.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sklcrt`` console script.

    Parameters
    ----------
    argv : sequence of str, default=None
        Arguments without the program name; ``None`` reads ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status: 0 on success, 2 for a usage, config or data error (one line
        ``sklcrt: error: ...`` on stderr), 130 when interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    try:
        return args.func(args)
    except (ValueError, KeyError, OSError) as err:
        print(f"sklcrt: error: {_one_line(err)}", file=sys.stderr)
        return _EXIT_ERROR
    except KeyboardInterrupt:
        print("sklcrt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
