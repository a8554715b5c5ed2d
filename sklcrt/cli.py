"""The ``sklcrt`` command line: the built-in demo and whole analyses from a TOML config file.

Three subcommands:

- ``sklcrt demo``: simulate a high-MOI screen, check calibration on non-targeting (NTC) pairs with
  stratified permutation without and with burden bins, test the positive controls and the discovery
  pairs, and write the tables, the figures of every step and a summary;
- ``sklcrt run CONFIG.toml``: the analyses a config file asks for (calibration, power, discovery);
- ``sklcrt calibrate CONFIG.toml``: only the calibration check of that config.

The demo is the config :data:`DEMO_CONFIG` (``examples/config_demo.toml`` is the same analysis as a
file), so the demo and config runs share one code path. The config's schema and validation live in
:mod:`sklcrt.config`, which reads every default from the library; a run maps the config onto one
:class:`~sklcrt.crt.CRTTest` (the runners' template) and writes its outputs with
:class:`~sklcrt.report.AnalysisReport`, all or nothing. Every input the config names is read and
checked before the first analysis starts. Errors in the config or the data print one line
``sklcrt: error: ...`` on stderr and exit with status 2. Importing this module is light (the
library is imported when a command runs), so ``sklcrt --help`` is fast.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sklcrt.config import (
    KIND_WORDS,
    REQUIRED,
    SECTION_HELP,
    SIMULATE_HELP,
    ConfigError,
    Option,
    closest,
    config_schema,
    load_config,
    test_settings,
    validate_config,
)

__all__ = [
    "DEMO_CONFIG",
    "ConfigError",
    "load_config",
    "main",
    "run_analysis",
    "validate_config",
]

_EXIT_ERROR = 2
logger = logging.getLogger("sklcrt")

#: The analysis ``sklcrt demo`` runs (``examples/config_demo.toml`` is the same as a file).
DEMO_CONFIG: dict = {
    "input": "simulate",
    "output_dir": "sklcrt_demo",
    "analyses": ["calibration", "power", "discovery"],
    "moi": "high",
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
    "calibration": {"compare_without_burden": True, "size_like_discovery": False},
    "qc": {},
    "simulate": {"response": "counts"},
}


def __getattr__(name):  # CONFIG_SCHEMA, read from the library on first use
    if name == "CONFIG_SCHEMA":
        return config_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------- reading the inputs
def _missing_key(container: str, key: str, available, option: str) -> ConfigError:
    available = sorted(map(str, available))
    return ConfigError(
        f"adata.{container}[{key!r}] not found{closest(key, available)}; adata.{container} has "
        f"keys {available}. Set {option} in the config."
    )


def _load_screen(config: dict, echo: Callable[[str], None]):
    """The screen as an AnnData: simulated, or read from .h5ad, .h5mu or a Cell Ranger .h5."""
    if config["input"] == "simulate":
        from sklcrt.datasets import simulate_screen

        options = dict(config["simulate"])
        echo(f"simulating a screen ({', '.join(f'{k}={v}' for k, v in options.items())})")
        return simulate_screen(**options)
    path = config["input"]
    echo(f"reading {path}")
    try:
        if path.endswith(".h5mu"):
            from sklcrt.io import read_mudata

            return read_mudata(path)
        if path.endswith(".h5") and not path.endswith(".h5ad"):
            from sklcrt.io import read_10x_h5

            return read_10x_h5(path)
        import anndata as ad

        return ad.read_h5ad(path)
    except (OSError, KeyError) as err:
        raise ConfigError(f"cannot read {path!r}: {' '.join(str(err).split())}") from err


def _prepare_screen(adata, config: dict, echo: Callable[[str], None]):
    """Assignment, burden covariates, cellwise QC and key checks before any test runs; returns
    the screen to analyse (the cells that pass QC) and the QC result (or None)."""
    from sklcrt.assignment import add_burden_covariates, assign_guides
    from sklcrt.moi import moi_choices

    choices = moi_choices(config["moi"])
    assignment = config["assignment"]
    if assignment is not None:
        options = dict(assignment)
        if options["method"] is None:
            options["method"] = choices.get("assignment", {}).get("method", "threshold")
        if options["counts_key"] not in adata.obsm:
            raise _missing_key(
                "obsm", options["counts_key"], adata.obsm.keys(), "[assignment] counts_key"
            )
        rule = options["method"]
        if rule == "threshold":
            rule += f" >= {options['threshold']:g} UMIs"
        echo(f"assigning guides from obsm[{options['counts_key']!r}] ({rule})")
        assign_guides(
            adata,
            **options,
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
    for key, where, option in (
        (config["covar_key"], "obsm", "covar_key"),
        (config["usage_key"] if config["response"] == "programs" else None, "obsm", "usage_key"),
        (config["layer"], "layers", "layer"),
    ):
        container = getattr(adata, where)
        if key is not None and key not in container:
            raise _missing_key(where, key, container.keys(), option)
    if config["add_burden_covariates"]:
        add_burden_covariates(
            adata,
            guide_key=config["guide_key"],
            covar_key=config["covar_key"],
            guide_names_key=config["guide_names_key"],
            guide2gene_key=config["guide2gene_key"],
            ntc_labels=config["ntc_labels"],
        )
    qc = None
    if config["qc"] is not None:
        from sklcrt.qc import cellwise_qc

        options = dict(config["qc"])
        if "remove_cells_w_zero_or_twoplus_grnas" not in config["_given_sections"]["qc"]:
            options["remove_cells_w_zero_or_twoplus_grnas"] = choices.get("qc", {}).get(
                "remove_cells_w_zero_or_twoplus_grnas",
                options.pop("remove_cells_w_zero_or_twoplus_grnas"),
            )
        for name in ("response_n_umis_range", "response_n_nonzero_range"):
            options[name] = tuple(options[name])
        qc = cellwise_qc(
            adata,
            moi=config["moi"],
            covar_key=config["covar_key"],
            guide_key=config["guide_key"],
            guide_names_key=config["guide_names_key"],
            layer=config["layer"],
            **options,
        )
        echo(f"cellwise QC: {qc.n_pass} of {adata.n_obs} cells pass")
        adata = adata[qc.mask].copy()  # the analysed cells; the user's object keeps them all
    return adata, qc


def _read_pairs_file(path: str, name: str):
    import pandas as pd

    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"[{name}] pairs file {path!r} cannot be read as a CSV with columns response_id, "
            f"grna_target: {' '.join(str(err).split())}"
        ) from None


def _load_pairs(config: dict, name: str, adata, inputs: dict):
    """The pairs of an analysis, checked against the screen's targets and responses."""
    import pandas as pd

    section = config[name]
    if section["pairs"] is not None:
        pairs = _read_pairs_file(section["pairs"], name)
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
    pairs = pairs[["response_id", "grna_target"]].astype(str).reset_index(drop=True)
    unknown_t = sorted(set(pairs["grna_target"]) - set(inputs["units"]))
    unknown_r = sorted(set(pairs["response_id"]) - set(map(str, inputs["response_names"])))
    if unknown_t or unknown_r:
        raise ConfigError(
            f"{where} names targets {unknown_t[:5]} / responses {unknown_r[:5]} that the screen "
            f"does not have (targets: {sorted(inputs['units'])[:5]}...); fix the pairs or the "
            "guide targets."
        )
    duplicated = int(pairs.duplicated().sum())
    if duplicated:
        raise ConfigError(f"{where} lists {duplicated} pair(s) more than once; drop them.")
    return pairs


# ---------------------------------------------------------------------------- the plan
@dataclass
class _Plan:
    """Everything a run needs, read and checked before the first analysis."""

    adata: object
    inputs: dict
    qc: object
    pairs: dict
    test: object
    runs: list  # (label, test) of the calibration check
    screen: dict
    timings: dict = field(default_factory=dict)


def _method_label(config: dict, burden: bool) -> str:
    method = config["resampling_method"]
    method = {"crt": "bernoulli_index"}.get(method, method or "bernoulli_index")
    if burden and config["resampling_kwargs"]["burden_key"] is not None:
        return f"{method} + burden bins"
    return method


def _plan(config: dict, analyses: Sequence[str], echo) -> _Plan:
    """Load and prepare the screen, read the pairs, build the test and read the covariates it
    needs: every input of the run is checked here, before any analysis."""
    from sklcrt.inputs import prepare_crt_inputs
    from sklcrt.runners import INPUT_OPTIONS, build_test, covariate_values

    t0 = time.perf_counter()
    adata, qc = _prepare_screen(_load_screen(config, echo), config, echo)
    # Every option of prepare_crt_inputs is a top-level key of the config (the schema reads
    # their defaults from it).
    inputs = prepare_crt_inputs(adata, **{name: config[name] for name in INPUT_OPTIONS})
    pairs = {
        name: _load_pairs(config, name, adata, inputs)
        for name in ("power", "discovery")
        if name in analyses
    }
    test = build_test(**test_settings(config))
    runs = []
    if "calibration" in analyses:
        runs.append((_method_label(config, True), test))  # first: the report's reference NTC
        if config["calibration"]["compare_without_burden"]:
            without = build_test(**test_settings(config, burden=False))
            runs.append((_method_label(config, False), without))
    for _, candidate in [("main", test), *runs]:
        try:
            covariate_values(inputs, candidate)  # columns and dtypes, before any analysis
        except ValueError as err:
            raise ConfigError(" ".join(str(err).split())) from None
    screen = {
        "n_cells": int(inputs["C"].shape[0]),
        "n_responses": len(inputs["response_names"]),
        "response_kind": inputs["response_kind"],
        "n_guides": len(inputs["guide_names"]),
        "n_targets": len(inputs["units"]),
        "n_ntc_guides": len(inputs["ntc_guides"]),
        "covariates": list(inputs["C_names"]),
    }
    if qc is not None:
        screen["n_cells_before_qc"] = int(qc.mask.size)
    echo(
        f"screen: {screen['n_cells']} cells, {screen['n_responses']} {screen['response_kind']} "
        f"responses, {screen['n_targets']} targets, {screen['n_ntc_guides']} NTC guides"
    )
    plan = _Plan(adata, inputs, qc, pairs, test, runs, screen)
    plan.timings["load"] = round(time.perf_counter() - t0, 3)
    return plan


# ---------------------------------------------------------------------------- the analyses
def _run_options(config: dict, progress: bool) -> dict:
    """The runners' run options of a config (the test is passed separately)."""
    return dict(
        moi=config["moi"],
        control_group=config["control_group"],
        min_nonzero=config["min_nonzero"],
        n_jobs=config["n_jobs"],
        random_state=config["random_state"],
        progress=progress,
    )


def _n_passing(results) -> int:
    return int(results["pass_qc"].sum())


def _analyze(
    plan: _Plan, config: dict, analyses: Sequence[str], echo, progress: bool, checkpoint_dir=None
) -> dict:
    """Fit the null model once, then discovery, power and the calibration check sized like the
    discovery set; returns the tables and the summary's parts."""
    from sklcrt.moi import moi_choices
    from sklcrt.runners import (
        build_test,
        calibration_summary,
        control_cells,
        discovery_analysis,
        fit_null_model,
        power_check,
        run_ntc_ensemble,
        run_ntc_groups,
    )

    lap = _laps(plan.timings)
    group = config["control_group"] or moi_choices(config["moi"]).get("control_group")
    fit_cells = None
    if plan.inputs["response_kind"] == "counts":  # SCEPTRE's low-MOI null model: the NT cells
        fit_cells = control_cells(plan.inputs, group or "complement")
    echo("fitting the null model of every response")
    with lap("null_model"):
        statistic = fit_null_model(
            plan.inputs,
            plan.test.statistic,
            n_jobs=config["n_jobs"],
            fit_cells=fit_cells,
            progress=progress,
        )
    run = _run_options(config, progress)
    alpha = config["alpha"]
    out: dict = {"tables": {}, "calibration": {}, "statistic": statistic}
    for name, runner in (("discovery", discovery_analysis), ("power", power_check)):
        if name not in analyses:
            continue
        echo(f"{name} analysis: {len(plan.pairs[name])} pairs, {_method_label(config, True)}")
        with lap(name):
            out["tables"][name] = runner(
                plan.inputs,
                plan.pairs[name],
                alpha=alpha,
                per_guide=config[name]["per_guide"],
                test=build_test(plan.test, statistic=statistic),
                checkpoint_dir=_subfolder(checkpoint_dir, name),
                **run,
            )
    if plan.runs:
        cal = config["calibration"]
        n_pairs, matched = cal["n_pairs"], False
        if n_pairs is None and cal["size_like_discovery"] and "discovery" in out["tables"]:
            # sized like the discovery pairs that pass QC, drawn among NTC pairs that pass it
            n_pairs, matched = _n_passing(out["tables"]["discovery"]), True
        for i, (label, test) in enumerate(plan.runs):
            echo(f"calibration check on NTC groups: {label}")
            options = dict(
                group_size=cal["group_size"],
                n_pairs=n_pairs,
                pairs_pass_qc=matched,
                checkpoint_dir=_subfolder(checkpoint_dir, f"calibration_{i}"),
            )
            template = build_test(test, statistic=statistic)
            with lap(f"calibration: {label}"):
                if cal["n_ensemble"] > 1:
                    results = run_ntc_ensemble(
                        plan.inputs, n_ensemble=cal["n_ensemble"], test=template, **options, **run
                    )
                else:
                    results = run_ntc_groups(plan.inputs, test=template, **options, **run)
            stats = calibration_summary(results, alpha=alpha)
            stats.update(n_requested=len(results))
            out["calibration"][label] = (results, stats)
    return out


def _subfolder(folder, name: str) -> str | None:
    return None if folder is None else str(Path(folder) / name)


def _laps(timings: dict):
    """A context manager factory recording the seconds of each step in ``timings``."""
    from contextlib import contextmanager

    @contextmanager
    def lap(name):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            timings[name] = round(time.perf_counter() - t0, 3)

    return lap


def _summary(plan: _Plan, config: dict, found: dict, command: str) -> dict:
    """The command line's summary: the screen, the statistic, the table rows and the config."""
    import numpy as np

    alpha = config["alpha"]
    summary: dict = {
        "command": command,
        "screen": plan.screen,
        "statistic": _statistic_summary(found["statistic"]),
        "test": {k: repr(v) for k, v in plan.test.get_params(deep=False).items()},
    }
    rows = []
    if found["calibration"]:
        summary["calibration"] = {}
        for label, (_, stats) in found["calibration"].items():
            summary["calibration"][label] = stats
            rows.append(
                {
                    "method": label,
                    "ntc_pairs": stats["n_pairs"],
                    "frac_p_below_0.01": stats["frac_below_0.01"],
                    "ntc_bh_hits": stats["n_bh_discoveries"],
                }
            )
    main_label = _method_label(config, True)
    main_row = next((r for r in rows if r["method"] == main_label), None)
    if main_row is None:
        main_row = {"method": main_label}
        rows.append(main_row)
    for name, results in found["tables"].items():
        p = results["pvalue"].to_numpy(dtype=float)
        tested = np.isfinite(p)
        n_sig = int(results["significant"].sum())
        part = {
            "n_pairs": len(results),
            "n_tested": int(tested.sum()),
            "n_significant": n_sig,
            "alpha": alpha,
            "per_guide": config[name]["per_guide"],
            "median_pvalue": float(np.median(p[tested])) if tested.any() else None,
        }
        if name == "power":
            part["n_p_below_1e-6"] = int(np.sum(p[tested] < 1e-6))
            main_row["positives_found"] = f"{n_sig}/{len(results)}"
        else:
            main_row["discoveries"] = n_sig
        summary[name] = part
    summary["table"] = rows
    summary["table_text"] = format_table(rows, alpha)
    summary["config"] = {k: v for k, v in config.items() if not k.startswith("_given")}
    return summary


def _statistic_summary(statistic) -> dict:
    """The fitted statistic's class, its [statistic] options and the range of its fitted theta."""
    import numpy as np

    params = statistic.get_params()
    out = {"class": type(statistic).__name__}
    out.update({o.name: params[o.name] for o in config_schema()["statistic"] if o.name in params})
    theta = getattr(statistic, "theta_", None)
    if theta is not None and np.isfinite(theta).any():
        finite = theta[np.isfinite(theta)]
        out["fitted_theta"] = {
            "min": float(finite.min()),
            "median": float(np.median(finite)),
            "max": float(finite.max()),
        }
    return out


def _calibration_tables(tables: dict):
    """One NTC table, several by method, or None."""
    if not tables:
        return None
    return next(iter(tables.values())) if len(tables) == 1 else tables


def _check_output_folder(out_dir: Path, config: dict, overwrite: bool) -> None:
    """Refuse, before any work, to replace a folder holding another run's outputs."""
    if not out_dir.exists() or overwrite:
        return
    if not out_dir.is_dir():
        raise ConfigError(f"output folder {str(out_dir)!r} exists and is not a folder.")
    if not any(out_dir.iterdir()):
        return
    previous = out_dir / "summary.json"
    try:
        earlier = json.loads(previous.read_text()).get("config")
    except (OSError, ValueError, AttributeError):
        earlier = None
    now = {k: v for k, v in config.items() if not k.startswith("_given")}
    now = json.loads(json.dumps(now, default=str))
    if earlier is None or {k: v for k, v in earlier.items() if k != "output_dir"} != {
        k: v for k, v in now.items() if k != "output_dir"
    }:
        raise ConfigError(
            f"output folder {str(out_dir)!r} holds files of another run (or other files); "
            "choose another folder, or pass --overwrite to replace it."
        )


def run_analysis(
    config: dict,
    *,
    analyses: Sequence[str] | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    command: str = "run",
    overwrite: bool = False,
    checkpoint_dir: str | Path | None = None,
) -> dict:
    """Run the analyses of a validated config and write their outputs, all or nothing.

    Every input is read and checked first (the screen, the assignment, QC, the pairs, the test
    and the covariate columns it reads); then the null model is fitted once and the analyses
    run; the tables, the figures of every step and ``summary.json`` are written into a
    temporary folder that replaces ``out_dir`` at the end, so a failed or interrupted run leaves
    ``out_dir`` as it was.

    Parameters
    ----------
    config : dict
        From :func:`~sklcrt.config.load_config` or :func:`~sklcrt.config.validate_config`.
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
    overwrite : bool, default=False
        Replace ``out_dir`` even when it holds another run's (or other) files.
    checkpoint_dir : str or Path, default=None
        Checkpoint every finished unit of each analysis in a subfolder of it
        (``discovery``, ``power``, ``calibration_<n>``); rerunning resumes.

    Returns
    -------
    dict
        The command line's summary, also in ``summary.json``: ``screen``, ``statistic``,
        ``calibration``, ``power``, ``discovery``, ``table`` (one row per calibration run:
        method, NTC pairs, fraction of p < 0.01, NTC BH hits, discoveries, positives found),
        ``timings_s``, ``files``, ``config``.
    """
    from sklcrt.report import AnalysisReport

    analyses = list(config["analyses"] if analyses is None else analyses)
    out_dir = Path(config["output_dir"] if out_dir is None else out_dir)
    t_start = time.perf_counter()
    _check_output_folder(out_dir, config, overwrite)
    plan = _plan(config, analyses, echo)
    found = _analyze(plan, config, analyses, echo, progress, checkpoint_dir)
    summary = _summary(plan, config, found, command)
    plan.timings["total"] = round(time.perf_counter() - t_start, 3)
    summary["timings_s"] = plan.timings
    calibration = {label: results for label, (results, _) in found["calibration"].items()}
    report = AnalysisReport.from_adata(
        plan.adata,
        qc=None if plan.qc is None else plan.qc.cells,
        calibration=_calibration_tables(calibration),
        power=found["tables"].get("power"),
        discovery=found["tables"].get("discovery"),
        params={"config": summary["config"], "test": summary["test"]},
        alpha=config["alpha"],
        assignment_key=config["guide_key"],
        covar_key=config["covar_key"],
        ntc_labels=config["ntc_labels"],
    )
    echo(f"writing the tables, figures and summary to {out_dir}")
    report.write(
        out_dir,
        overwrite=True,
        extra=summary,
        extra_text=_summary_text(summary, config),
    )
    summary["files"] = sorted(p.name for p in out_dir.iterdir())
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


def _summary_text(summary: dict, config: dict) -> str:
    """The command line's part of summary.txt: the source, the test and the summary table."""
    screen = summary["screen"]
    source = config["input"]
    if config["simulate"] is not None:
        source = f"simulated screen {config['simulate']}"
    test = summary["test"]
    lines = [
        f"sklcrt {summary['command']}: {source}",
        f"screen: {screen['n_cells']} cells, {screen['n_responses']} {screen['response_kind']} "
        f"responses, {screen['n_targets']} targets, {screen['n_ntc_guides']} NTC guides",
        f"test: resampling_method={test['resampling_method']}, resampling_kwargs="
        f"{test['resampling_kwargs']}, control_group={config['control_group']}, moi="
        f"{config['moi']}",
        f"n_resamples={test['n_resamples']}, n_resamples_adaptive="
        f"{test['n_resamples_adaptive']}, alternative={test['alternative']}, "
        f"pvalue_method={test['pvalue_method']}, random_state={config['random_state']}",
        _statistic_text(summary["statistic"]),
        "",
        summary["table_text"],
        "",
        "A calibrated method gives NTC pairs about 1% of p-values below 0.01 and no BH hits.",
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


def _echo_for(quiet: bool, verbose: int = 0) -> Callable[[str], None]:
    """Step messages through the ``sklcrt`` logger, shown unless ``quiet``."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    logger.setLevel(level)
    if not any(isinstance(h, _StdoutHandler) for h in logger.handlers):
        logger.addHandler(_StdoutHandler())
        logger.propagate = False
    return logger.info


class _StdoutHandler(logging.Handler):
    """Step messages on the current ``sys.stdout`` (looked up at each message)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"[sklcrt] {record.getMessage()}", file=sys.stdout, flush=True)


def _finish(summary: dict, out_dir: Path) -> None:
    print(summary["table_text"])
    print(
        f"wrote {', '.join(summary['files'])} to {out_dir} in {summary['timings_s']['total']:.1f} s"
    )


# ---------------------------------------------------------------------------- the commands
def _schema_help() -> str:
    """The config file reference shown by ``sklcrt run --help``."""
    import textwrap

    def describe(opt: Option) -> list[str]:
        if opt.default is REQUIRED:
            default = "required"
        elif opt.default is None:
            default = "default: omitted"
        else:
            default = f"default: {json.dumps(opt.default)}"
        head = f"  {opt.name} ({KIND_WORDS[opt.kind]}; {default})"
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
    schema = config_schema()
    for opt in schema[""]:
        lines += describe(opt)
    for section, options in schema.items():
        if not section:
            continue
        lines += ["", f"[{section}]"]
        lines += textwrap.wrap(
            SECTION_HELP[section], 94, initial_indent="  ", subsequent_indent="  "
        )
        for opt in options:
            lines += describe(opt)
    lines += ["", "[simulate]"]
    lines += textwrap.wrap(SIMULATE_HELP, 94, initial_indent="  ", subsequent_indent="  ")
    lines += [
        "",
        "outputs in output_dir (written all or nothing): calibration.csv (with a method column",
        "when compare_without_burden), power.csv, discovery.csv (one row per pair, or per guide",
        "and pair with per_guide: pvalue, effect, p_adj, significant, pass_qc, qc_reason...),",
        "assignment.csv and qc.csv when those steps run, a figure per step (assignment.png,",
        "qc.png, calibration.png, power.png, volcano.png), summary.txt and summary.json (the",
        "settings, the test, the statistic and its fitted theta, the versions of sklcrt and its",
        "dependencies).",
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
        "demo takes seconds). Writes calibration.csv (both methods), power.csv, discovery.csv, "
        "assignment.csv, the figures calibration.png, power.png, volcano.png and "
        "assignment.png, summary.txt and summary.json (with the versions) to --out and prints a "
        "summary table. examples/config_demo.toml is the "
        "same analysis as a config file (sklcrt run examples/config_demo.toml)."
    )
    return "\n".join(textwrap.wrap(text, 94))


def _cmd_demo(args: argparse.Namespace) -> int:
    raw = copy.deepcopy(DEMO_CONFIG)
    raw["random_state"] = args.seed
    raw["n_jobs"] = args.n_jobs
    config = validate_config(raw, source="demo", base_dir=Path.cwd())
    out_dir = Path(args.out)
    summary = run_analysis(
        config,
        out_dir=out_dir,
        progress=not args.quiet,
        echo=_echo_for(args.quiet, args.verbose),
        command="demo",
        overwrite=args.overwrite,
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
        echo=_echo_for(args.quiet, args.verbose),
        command=args.command,
        overwrite=args.overwrite,
        checkpoint_dir=args.checkpoint_dir,
    )
    _finish(summary, out_dir)
    return 0


class _ConfigCommandParser(argparse.ArgumentParser):
    """A subcommand whose help ends with the config reference, built when help is shown (it
    reads the library's defaults, which a plain ``sklcrt --help`` need not import)."""

    def format_help(self) -> str:
        if self.epilog is None and self.prog.split()[-1] in ("run", "calibrate"):
            self.epilog = _schema_help()
        return super().format_help()


def _common_arguments(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars or step messages; only the summary table",
    )
    cmd.add_argument(
        "-v", "--verbose", action="count", default=0, help="more messages (debug logging)"
    )
    cmd.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the output folder even when it holds another run's (or other) files",
    )


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
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_ConfigCommandParser
    )

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
    _common_arguments(demo)
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
            description=f"Read CONFIG (TOML) and run {what};\nwrite the tables, figures and "
            "summary to its output_dir (all or nothing) and print a summary table.",
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
        _common_arguments(cmd)
        cmd.add_argument(
            "--n-jobs",
            metavar="N",
            type=int,
            default=None,
            help="units tested in parallel, overriding the config's n_jobs",
        )
        cmd.add_argument(
            "--checkpoint-dir",
            metavar="DIR",
            default=None,
            help="write each finished unit there; rerunning the same command resumes an "
            "interrupted run (a folder from other data or settings is refused)",
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
