"""The command line's config file: its schema and its validation.

The schema is a table of the config's keys, their TOML types and their help texts; every default
and allowed value is read from the object that owns it, when the schema is first needed
(:func:`config_schema`): the test's settings from :class:`~sklcrt.crt.CRTTest` and
:data:`~sklcrt.resampling.DEFAULT_RESAMPLING_KWARGS`, the statistic's from
:class:`~sklcrt.statistics.NBScoreStatistic`, the inputs' from
:func:`~sklcrt.inputs.prepare_crt_inputs`, the run options from the runners, the assignment's and
the cellwise QC's from :func:`~sklcrt.assignment.assign_guides` and
:func:`~sklcrt.qc.cellwise_qc`. The values are checked here for their TOML type only; the owners
validate them (:func:`validate_config` builds the test once to let it), so the command line
cannot drift from the library. Importing this module is light (no numpy).
"""

from __future__ import annotations

import copy
import difflib
import functools
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sklcrt._choices import (
    ALTERNATIVES,
    CONTROL_GROUPS,
    PVALUE_METHODS,
    RESAMPLING_ALIASES,
    RESAMPLING_METHODS,
    RESPONSE_KINDS,
)

__all__ = [
    "ANALYSES",
    "ConfigError",
    "MOIS",
    "Option",
    "config_schema",
    "load_config",
    "validate_config",
]

#: The analyses a config can run.
ANALYSES = ("calibration", "power", "discovery")
#: The values of ``moi`` (see :mod:`sklcrt.moi`).
MOIS = ("high", "low")
SECTIONS = (
    "resampling_kwargs",
    "statistic",
    "assignment",
    "qc",
    "simulate",
    "calibration",
    "power",
    "discovery",
)
#: Keys of the top level that are :class:`~sklcrt.crt.CRTTest` parameters (set on the test).
TEST_KEYS = (
    "resampling_method",
    "n_resamples",
    "n_resamples_adaptive",
    "adaptive_threshold",
    "alternative",
    "pvalue_method",
    "memory_budget_mb",
)
REQUIRED = object()


class ConfigError(ValueError):
    """A config file (or its data) that cannot be analysed as written; the message says why."""


@dataclass(frozen=True)
class Option:
    """One config key: its TOML type, default, allowed values and meaning."""

    name: str
    kind: str  # "str", "int", "float", "bool", "str_list", "float_pair"
    default: object
    help: str
    choices: tuple[str, ...] | None = None


KIND_WORDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean (true/false)",
    "str_list": "an array of strings",
    "float_pair": "an array of two numbers",
}

# ---------------------------------------------------------------------------- the schema
# (name, kind, owner of the default, help[, choices]). Owners: "cli" (the default is the 4th
# field's `default=`), "inputs", "runner", "ntc", "test", "resampling", "statistic", "assignment",
# "qc"; each is read when the schema is built.
_TOP_SPEC = (
    (
        "input",
        "str",
        ("cli", REQUIRED),
        "Path of the screen (.h5ad, .h5mu, or a Cell Ranger "
        '.h5), or "simulate" to simulate one with the [simulate] options.',
    ),
    (
        "output_dir",
        "str",
        ("cli", "sklcrt_results"),
        "Folder for the tables, figures and "
        "summary; written all or nothing, replacing an earlier output of the same config (another "
        "run's only with --overwrite). The command line's --out overrides it.",
    ),
    (
        "analyses",
        "str_list",
        ("cli", list(ANALYSES)),
        "What `sklcrt run` does: any of "
        "calibration (NTC groups), power (positive-control pairs), discovery (discovery pairs). "
        "`sklcrt calibrate` runs calibration only.",
        ANALYSES,
    ),
    (
        "moi",
        "str",
        ("cli", None),
        "high or low: picks SCEPTRE's choices for what is not set "
        "(low: control_group nt_cells, permutations, assignment by the maximum rule, cells "
        "without exactly one gRNA removed by QC; high: the complement, the CRT, the mixture "
        "assignment). Burden bins stay off unless asked. Omit it for the library's defaults.",
        MOIS,
    ),
    (
        "response",
        "str",
        ("inputs", "response"),
        "Response kind: raw UMI counts (NB score "
        "statistic, effect = log2 fold change) or program usages (CLR, OLS).",
        RESPONSE_KINDS,
    ),
    (
        "layer",
        "str",
        ("inputs", "layer"),
        "Layer with the raw counts (omit: adata.X). Counts only.",
    ),
    (
        "usage_key",
        "str",
        ("inputs", "usage_key"),
        "obsm key of the program usages (programs only).",
    ),
    (
        "clr_floor_quantile",
        "float",
        ("inputs", "clr_floor_quantile"),
        "Floor quantile of the CLR transform of program usages.",
    ),
    ("covar_key", "str", ("inputs", "covar_key"), "obsm key of the raw covariate DataFrame."),
    (
        "covariates",
        "str_list",
        ("inputs", "covariates"),
        "Columns of obsm[covar_key] encoded "
        "into the model covariates (one-hot categoricals, z-scored numerics); omit to encode "
        "every column.",
    ),
    (
        "batch_key",
        "str",
        ("inputs", "batch_key"),
        "Column of obsm[covar_key] with the batch "
        "labels; also the default of resampling_kwargs.batch_key.",
    ),
    (
        "guide_key",
        "str",
        ("inputs", "guide_key"),
        "obsm key of the 0/1 guide assignment (written there when [assignment] is given).",
    ),
    (
        "guide_names_key",
        "str",
        ("inputs", "guide_names_key"),
        "uns key of the guide names (written there when [assignment] is given).",
    ),
    (
        "guide2gene_key",
        "str",
        ("inputs", "guide2gene_key"),
        "uns key of the dict guide -> target (written there when [assignment] is given).",
    ),
    (
        "ntc_labels",
        "str_list",
        ("inputs", "ntc_labels"),
        "Targets that mark non-targeting guides (case-insensitive).",
    ),
    (
        "add_burden_covariates",
        "bool",
        ("cli", True),
        "Derive non_ntc_guides_per_cell, "
        "grna_n_nonzero_assign and their log1p_ versions from the guide assignment and add them to "
        "obsm[covar_key] (replacing columns of those names), so burden_key can use them.",
    ),
    (
        "resampling_method",
        "str",
        ("test", "resampling_method"),
        "bernoulli_index (= crt, the "
        "classic CRT; the default), stratified_perm (recommended at high MOI) or perm.",
        (*RESAMPLING_METHODS, *RESAMPLING_ALIASES),
    ),
    (
        "control_group",
        "str",
        ("runner", "control_group"),
        "Cells each unit is compared with: "
        "complement (every other cell) or nt_cells (the cells with non-targeting guides only; "
        "SCEPTRE's choice at low MOI). Omit it for moi's choice.",
        CONTROL_GROUPS,
    ),
    ("n_resamples", "int", ("test", "n_resamples"), "First-stage resamples per unit."),
    (
        "n_resamples_adaptive",
        "int",
        ("test", "n_resamples_adaptive"),
        "Second-stage resamples "
        "where the first-stage p-value is small; 0 turns the second stage off.",
    ),
    (
        "adaptive_threshold",
        "float",
        ("test", "adaptive_threshold"),
        "First-stage p-value at or below which a pair gets the second stage.",
    ),
    ("alternative", "str", ("test", "alternative"), "Direction of the test.", ALTERNATIVES),
    (
        "pvalue_method",
        "str",
        ("test", "pvalue_method"),
        "empirical, skew_normal (a fitted tail "
        "with an empirical fallback: small p-values for strong effects) or saddlepoint (no "
        "resampling).",
        PVALUE_METHODS,
    ),
    (
        "memory_budget_mb",
        "float",
        ("test", "memory_budget_mb"),
        "Memory for one unit's resamples and null statistics, in MiB.",
    ),
    (
        "min_nonzero",
        "int",
        ("runner", "min_nonzero"),
        "Counts only: a pair needs this many "
        "treated and control cells with nonzero expression, else it is reported untested with a "
        "reason.",
    ),
    ("alpha", "float", ("runner", "alpha"), "Benjamini-Hochberg level for discoveries."),
    (
        "n_jobs",
        "int",
        ("runner", "n_jobs"),
        "Units tested in parallel (joblib; -1 = all cores). "
        "The command line's --n-jobs overrides it.",
    ),
    (
        "random_state",
        "int",
        ("cli", 0),
        "Seed of every random stream (and of [simulate]); results do not depend on n_jobs.",
    ),
)

_RESAMPLING_SPEC = (
    ("n_bins", "int", ("resampling", "n_bins"), "Propensity bins."),
    ("stratify_by_batch", "bool", ("resampling", "stratify_by_batch"), "Strata within each batch."),
    (
        "batch_key",
        "str",
        ("cli", None),
        "Batch column of obsm[covar_key] (default: the top-level batch_key).",
    ),
    (
        "burden_key",
        "str",
        ("resampling", "burden_key"),
        "Numeric column of obsm[covar_key] "
        "whose (raw) values are binned into strata, e.g. log1p_non_ntc_guides_per_cell; omit for "
        "no burden bins.",
    ),
    ("n_burden_bins", "int", ("resampling", "n_burden_bins"), "Burden bins."),
    (
        "burden_bin_method",
        "str",
        ("resampling", "burden_bin_method"),
        "How burden bins are cut.",
        ("quantile", "uniform"),
    ),
    (
        "burden_clip_quantiles",
        "float_pair",
        ("resampling", "burden_clip_quantiles"),
        "Clip burden to these quantiles before binning.",
    ),
    (
        "min_stratum_size",
        "int",
        ("resampling", "min_stratum_size"),
        "Smaller strata are pooled into one.",
    ),
)

_STATISTIC_SPEC = (
    (
        "theta",
        "float",
        ("statistic", "theta"),
        "Fixed NB size theta (Var = mu + mu^2/theta) of "
        "every response, > 0; omit to estimate it per response by maximum likelihood.",
    ),
    (
        "theta_bounds",
        "float_pair",
        ("statistic", "theta_bounds"),
        "[low, high] with 0 < low < "
        "high: clamp of the estimated theta (the upper bound is effectively Poisson).",
    ),
    (
        "effect_fit",
        "str",
        ("statistic", "effect_fit"),
        "How the effect (log2 fold change) is "
        "fitted: linearized (exact on the treated cells, quadratic expansion on the others; fast) "
        "or full (the NB GLM refitted on all cells).",
        ("linearized", "full"),
    ),
)

_ASSIGNMENT_SPEC = (
    ("counts_key", "str", ("assignment", "counts_key"), "obsm key of the gRNA UMI counts."),
    (
        "method",
        "str",
        ("assignment", "method"),
        "threshold (every gRNA with >= threshold UMIs), "
        "maximum (low MOI: the dominant gRNA) or mixture (SCEPTRE's Poisson GLM mixture per gRNA, "
        "high MOI). Omit it for moi's choice.",
        ("threshold", "maximum", "mixture"),
    ),
    (
        "threshold",
        "float",
        ("assignment", "threshold"),
        "UMI threshold of method = threshold (and the mixture's fallback).",
    ),
    (
        "min_fraction",
        "float",
        ("assignment", "min_fraction"),
        "method = maximum: share of the cell's gRNA UMIs the top gRNA must exceed.",
    ),
    ("min_umis", "float", ("assignment", "min_umis"), "method = maximum: gRNA UMIs a cell needs."),
    (
        "probability_threshold",
        "float",
        ("assignment", "probability_threshold"),
        "method = mixture: posterior probability above which a cell carries the gRNA.",
    ),
    (
        "guide_names_key",
        "str",
        ("assignment", "guide_names_key"),
        "uns key of the gRNA ids of the counts' columns.",
    ),
    ("target_key", "str", ("assignment", "target_key"), "uns key of each gRNA's target."),
    (
        "target_frame_key",
        "str",
        ("assignment", "target_frame_key"),
        "uns key of a DataFrame grna_id, grna_target (used when target_key is absent).",
    ),
)

_QC_SPEC = (
    (
        "response_n_umis_range",
        "float_pair",
        ("qc", "response_n_umis_range"),
        "Quantiles of the response UMI count outside which cells are removed.",
    ),
    (
        "response_n_nonzero_range",
        "float_pair",
        ("qc", "response_n_nonzero_range"),
        "Quantiles of the number of expressed responses outside which cells are removed.",
    ),
    (
        "p_mito_threshold",
        "float",
        ("qc", "p_mito_threshold"),
        "Cells with a larger fraction of "
        "mitochondrial UMIs are removed (skipped when the screen has no such column).",
    ),
    (
        "remove_cells_w_zero_or_twoplus_grnas",
        "bool",
        ("qc", "remove_cells_w_zero_or_twoplus_grnas"),
        "Remove cells without exactly one gRNA (default: true at low MOI).",
    ),
)

_CALIBRATION_SPEC = (
    (
        "group_size",
        "int",
        ("ntc", "group_size"),
        "Non-targeting guides per NTC group (default: the median number of guides per target).",
    ),
    (
        "n_pairs",
        "int",
        ("ntc", "n_pairs"),
        "Test a random subset of this many (NTC group, "
        "response) pairs (default: as many as the discovery pairs that pass QC when discovery "
        "runs, else all).",
    ),
    (
        "size_like_discovery",
        "bool",
        ("cli", True),
        "When n_pairs is omitted and discovery runs, test as many NTC pairs as discovery pairs "
        "pass QC (SCEPTRE's rule); false tests every NTC pair.",
    ),
    ("n_ensemble", "int", ("cli", 1), "Repeat over this many random groupings of the NTC guides."),
    (
        "compare_without_burden",
        "bool",
        ("cli", False),
        "With a burden_key, also run the check "
        "without burden bins (same settings otherwise) and plot both.",
    ),
)


def _pairs_spec(default_key: str) -> tuple:
    return (
        (
            "pairs",
            "str",
            ("cli", None),
            "CSV file with columns response_id, grna_target "
            "(relative to the config's folder); overrides pairs_key.",
        ),
        (
            "pairs_key",
            "str",
            ("cli", default_key),
            "uns key of a DataFrame with columns "
            "response_id, grna_target (used when pairs is not given).",
        ),
        (
            "per_guide",
            "bool",
            ("runner", "per_guide"),
            "Test each guide of a target on its own "
            "(unit = the guide's name; one row per guide and response) instead of the union of "
            "the target's guides.",
        ),
    )


SIMULATE_HELP = (
    'Only with input = "simulate": keyword arguments of sklcrt.datasets.simulate_screen '
    "(n_cells, n_genes, n_programs, n_targets, guides_per_target, n_ntc_guides, moi, n_batches, "
    "effect_size, frac_targets_with_effect, burden_effect, burden_shape, burden_threshold, "
    "guide_load_cv, mean_umis, response, random_state); omitted ones keep simulate_screen's "
    "defaults, except random_state, which defaults to the top-level one."
)

SECTION_HELP = {
    "resampling_kwargs": "Options of the resampling method (stratified_perm uses them all); "
    "passed unchanged to the test (sklcrt.crt.CRTTest's resampling_kwargs).",
    "statistic": "Options of the NB score statistic of counts (sklcrt.statistics."
    'NBScoreStatistic), response = "counts" only; omit the section for its defaults. Program '
    "responses use the OLS t statistic, which has no options.",
    "assignment": "Give this section to assign guides from gRNA UMI counts "
    "(sklcrt.assignment.assign_guides) before the analysis; omit it when obsm[guide_key] exists.",
    "qc": "Give this section to run SCEPTRE's cellwise QC (sklcrt.qc.cellwise_qc) before the "
    "analysis; the removed cells are left out of every test (nothing is deleted from the data).",
    "calibration": "The NTC calibration check (sklcrt.runners.run_ntc_groups).",
    "power": "Positive-control pairs (sklcrt.runners.power_check).",
    "discovery": "Discovery pairs, Benjamini-Hochberg at alpha "
    "(sklcrt.runners.discovery_analysis).",
}


@functools.cache
def _owner_defaults() -> dict[str, dict]:
    """The defaults of every owner, read from the objects themselves (imports the library)."""
    from sklcrt.assignment import assign_guides
    from sklcrt.crt import CRTTest
    from sklcrt.inputs import prepare_crt_inputs
    from sklcrt.qc import cellwise_qc
    from sklcrt.resampling import DEFAULT_RESAMPLING_KWARGS
    from sklcrt.runners import run_gene_loop, run_ntc_groups
    from sklcrt.statistics import NBScoreStatistic

    def signature(func) -> dict:
        return {k: p.default for k, p in inspect.signature(func).parameters.items()}

    return {
        "inputs": signature(prepare_crt_inputs),
        "runner": signature(run_gene_loop),
        "ntc": signature(run_ntc_groups),
        "test": CRTTest().get_params(deep=False),
        "resampling": dict(DEFAULT_RESAMPLING_KWARGS),
        "statistic": NBScoreStatistic().get_params(),
        "assignment": signature(assign_guides),
        "qc": signature(cellwise_qc),
    }


def _options(spec) -> tuple[Option, ...]:
    owners = _owner_defaults()
    out = []
    for name, kind, (owner, ref), help_text, *choices in spec:
        default = ref if owner == "cli" else owners[owner][ref]
        if kind == "float" and isinstance(default, int) and not isinstance(default, bool):
            default = float(default)
        if kind == "float_pair" and default is not None:
            default = [float(v) for v in default]
        if isinstance(default, tuple):  # the config file spells tuples as arrays
            default = list(default)
        out.append(Option(name, kind, default, help_text, choices[0] if choices else None))
    return tuple(out)


def _simulate_options() -> tuple[Option, ...]:
    from sklcrt.datasets import simulate_screen

    options = []
    for name, param in inspect.signature(simulate_screen).parameters.items():
        default = param.default
        if name == "random_state":
            options.append(Option(name, "int", None, "seed"))
        elif isinstance(default, bool):
            options.append(Option(name, "bool", default, ""))
        elif isinstance(default, int):
            options.append(Option(name, "int", default, ""))
        elif isinstance(default, float) or default is None:
            options.append(Option(name, "float", default, ""))
        else:
            options.append(Option(name, "str", default, ""))
    return tuple(options)


@functools.cache
def config_schema() -> dict[str, tuple[Option, ...]]:
    """Every section of the config file and its options (``""`` is the top level).

    Returns
    -------
    dict
        Section name -> options, with the defaults read from their owners.
    """
    return {
        "": _options(_TOP_SPEC),
        "resampling_kwargs": _options(_RESAMPLING_SPEC),
        "statistic": _options(_STATISTIC_SPEC),
        "assignment": _options(_ASSIGNMENT_SPEC),
        "qc": _options(_QC_SPEC),
        "calibration": _options(_CALIBRATION_SPEC),
        "power": _options(_pairs_spec("positive_control_pairs")),
        "discovery": _options(_pairs_spec("discovery_pairs")),
    }


def __getattr__(name):  # CONFIG_SCHEMA, built on first use
    if name == "CONFIG_SCHEMA":
        return config_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------- checks
def closest(name: str, candidates) -> str:
    match = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _toml_type(value) -> str:
    for kind, word in ((bool, "boolean"), (int, "integer"), (float, "float"), (str, "string")):
        if isinstance(value, kind):
            return word
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
            f"{where}: {opt.name!r} must be {KIND_WORDS[kind]}, got {_toml_type(value)} {value!r}."
        )
    if opt.choices is not None:
        for v in value if kind == "str_list" else [value]:
            if v not in opt.choices:
                raise ConfigError(
                    f"{where}: {opt.name!r} has {v!r}{closest(v, opt.choices)}; choose from "
                    f"{list(opt.choices)}."
                )
    return value


def _check_table(table: dict, options: Sequence[Option], where: str) -> tuple[dict, list]:
    """Defaults filled in, keys and types checked; also the keys the user set."""
    known = {o.name: o for o in options}
    for key in table:
        if key not in known:
            raise ConfigError(
                f"{where}: unknown key {key!r}{closest(key, known)}; valid keys are "
                f"{sorted(known)}."
            )
    out: dict = {}
    for opt in options:
        if opt.name in table:
            out[opt.name] = _check_value(opt, table[opt.name], where)
        elif opt.default is REQUIRED:
            raise ConfigError(f"{where}: required key {opt.name!r} is missing.")
        else:
            out[opt.name] = copy.deepcopy(opt.default)
    return out, sorted(table)


def _resolve_path(value: str, base_dir: Path) -> Path:
    path = Path(value).expanduser()
    return (path if path.is_absolute() else base_dir / path).resolve()


# ---------------------------------------------------------------------------- validation
def validate_config(raw: dict, *, source: str = "config", base_dir: str | Path = ".") -> dict:
    """Check a config (as parsed from TOML) against the schema and fill in the defaults.

    The keys' types are checked here; their values by the objects that own them: the test's
    settings (top-level test keys, ``[resampling_kwargs]``, ``[statistic]``) by building the
    :class:`~sklcrt.crt.CRTTest` once, the run options by the runners' checks.

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
        The resolved config: every top-level key, ``resampling_kwargs`` (``batch_key`` the
        top-level one when omitted), ``statistic``, ``assignment`` and ``qc`` (None when their
        section is absent), ``simulate`` (None unless ``input = "simulate"``), ``calibration``,
        ``power``, ``discovery``; paths absolute; ``_given``: the top-level keys the config set,
        ``_given_sections``: those of ``[assignment]``, ``[qc]`` and ``[statistic]``.

    Raises
    ------
    ConfigError
        For an unknown key (with the closest valid one), a value of the wrong type or out of range,
        a missing required key, or a file that does not exist.
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the config must be a TOML table, got {_toml_type(raw)}.")
    base_dir = Path(base_dir).resolve()
    schema = config_schema()
    flat, tables = _split_sections(raw, schema, source)
    config, given = _check_table(flat, schema[""], source)
    config["_given"] = given
    for name in ("resampling_kwargs", "calibration", "power", "discovery"):
        config[name], _ = _check_table(tables.get(name, {}), schema[name], f"{source} [{name}]")
    config["_given_sections"] = {}
    for name in ("assignment", "qc", "statistic"):
        config[name] = None
        config["_given_sections"][name] = []
        if name in tables:
            config[name], set_keys = _check_table(tables[name], schema[name], f"{source} [{name}]")
            config["_given_sections"][name] = set_keys
    rk = config["resampling_kwargs"]
    if rk["batch_key"] is None:
        rk["batch_key"] = config["batch_key"]
    rk["burden_clip_quantiles"] = tuple(rk["burden_clip_quantiles"])
    _resolve_input(config, tables, source, base_dir)
    _check_combinations(config, source)
    check_test_settings(config, source)
    return config


def _split_sections(raw: dict, schema: dict, source: str) -> tuple[dict, dict]:
    """The top-level keys and the section tables of a parsed config."""
    top_names = [o.name for o in schema[""]]
    tables, flat = {}, {}
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
                f"{source}: unknown key {key!r}{closest(key, [*top_names, *SECTIONS])}; valid "
                f"top-level keys are {sorted(top_names)} and sections {list(SECTIONS)}."
            )
    return flat, tables


def _resolve_input(config: dict, tables: dict, source: str, base_dir: Path) -> None:
    """The input file (or the [simulate] options), the output folder and the pairs files."""
    if config["input"] == "simulate":
        sim, sim_given = _check_table(
            tables.get("simulate", {}), _simulate_options(), f"{source} [simulate]"
        )
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
        given = tables.get(name, {})
        if section["pairs"] is not None and "pairs_key" in given:
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


def _check_combinations(config: dict, source: str) -> None:
    """Settings that are valid alone but not together, and the command line's own options."""
    if not config["analyses"]:
        raise ConfigError(f"{source}: 'analyses' is empty; list some of {list(ANALYSES)}.")
    if config["n_jobs"] == 0:
        raise ConfigError(f"{source}: 'n_jobs' must be a positive integer or -1, got 0.")
    if config["random_state"] < 0:
        raise ConfigError(f"{source}: 'random_state' must be >= 0, got {config['random_state']}.")
    if config["response"] == "programs" and config["layer"] is not None:
        raise ConfigError(f"{source}: 'layer' is only used with response = \"counts\".")
    if config["calibration"]["compare_without_burden"] and (
        config["resampling_kwargs"]["burden_key"] is None
    ):
        raise ConfigError(
            f"{source} [calibration]: compare_without_burden = true needs "
            "resampling_kwargs.burden_key to compare against."
        )
    for name in ("group_size", "n_pairs", "n_ensemble"):
        value = config["calibration"][name]
        if value is not None and value < 1:
            raise ConfigError(f"{source} [calibration]: {name!r} must be >= 1, got {value}.")
    if config["statistic"] is not None and config["response"] != "counts":
        raise ConfigError(
            f"{source} [statistic]: these options are for the NB score statistic of counts "
            f'(response = "counts"); response = {config["response"]!r} uses the OLS t '
            "statistic, which has none: remove the [statistic] section."
        )
    from sklcrt.runners import check_run_options

    try:
        check_run_options(
            control_group=config["control_group"] or "complement",
            min_nonzero=config["min_nonzero"],
            alpha=config["alpha"],
        )
    except ValueError as err:
        raise ConfigError(f"{source}: {err}") from None


def test_settings(config: dict, *, burden: bool = True) -> dict:
    """The :class:`~sklcrt.crt.CRTTest` parameters a config sets (only the keys it gives, so
    the test's own defaults and ``moi``'s choices fill the rest).

    Parameters
    ----------
    config : dict
        A resolved config.
    burden : bool, default=True
        False drops the burden bins (the calibration run without them).

    Returns
    -------
    dict
        CRTTest parameters by name.
    """
    params = {k: config[k] for k in TEST_KEYS if k in config["_given"]}
    kwargs = dict(config["resampling_kwargs"])
    if not burden:
        kwargs["burden_key"] = None
    if "resampling_method" in params or kwargs != _default_resampling_kwargs(config):
        params["resampling_kwargs"] = kwargs
        params.setdefault("resampling_method", "bernoulli_index")
    if config["statistic"] is not None:
        from sklcrt.statistics import NBScoreStatistic

        options = dict(config["statistic"])
        options["theta_bounds"] = tuple(options["theta_bounds"])
        params["statistic"] = NBScoreStatistic(**options, n_jobs=config["n_jobs"])
    return params


def _default_resampling_kwargs(config: dict) -> dict:
    defaults = {o.name: o.default for o in config_schema()["resampling_kwargs"]}
    defaults["batch_key"] = config["batch_key"]
    defaults["burden_clip_quantiles"] = tuple(defaults["burden_clip_quantiles"])
    return defaults


def check_test_settings(config: dict, source: str) -> None:
    """Let the test validate its settings now, before any data is read."""
    from sklcrt.runners import build_test

    if config["statistic"] is not None:
        from sklcrt.statistics.nb_score import check_theta_bounds

        try:
            check_theta_bounds(tuple(config["statistic"]["theta_bounds"]))
        except ValueError as err:
            raise ConfigError(f"{source} [statistic]: {err}") from None
    try:
        build_test(**test_settings(config))
    except ValueError as err:
        raise ConfigError(f"{source}: {' '.join(str(err).split())}") from None


# ---------------------------------------------------------------------------- files
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
