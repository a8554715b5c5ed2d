"""W3: a screen-scale counts workflow, sklcrt against pysceptre, side by side, per core.

Run ``python benchmarks/bench_w3_screen.py`` (pysceptre, with numba, is a benchmark-only
dependency: ``pip install pysceptre numba``). ``--cells``, ``--genes`` and ``--targets`` scale
the screen down (e.g. for ``bench_scaling.py``-style checks), ``--skip-pysceptre`` runs only the
sklcrt rows, ``--only NAME`` one row, ``--repeats R`` keeps the best of R timed runs per tool.

The screen (simulated once by :func:`sklcrt.datasets.simulate_screen` and cached in
``--cache``): 100,000 cells x 1,000 genes, 300 targets x 2 guides and 60 non-targeting guides
at high MOI (8 guides per cell on average), two batches, half the targets with an effect on
their own gene, no direct effect of the guide burden on the responses (``burden_effect=0``:
both tests are calibrated, so most pairs stop after the first stage, as in a real screen).
Discovery pairs are cis pairs: the genes are laid along a pseudo-genome (a fixed random order)
and each target is paired with the 10 genes around its own gene (its own gene included), 3,000
pairs. Positive controls: each target with an effect against its own gene.
The calibration check is sized like the discovery set (as many NTC pairs, pairs of NTC guides).

The workflow, the same for both tools and as their users run it: the per-gene NB null fits,
then the calibration check, the power check and the discovery analysis, all with NB score
statistics, the complement control group, 499 resamples then 4,999 where the first stage is
small, skew-normal p-values, two-sided, pairwise QC of 7 nonzero treated and control cells.

- sklcrt fits every gene's null model once (``fit_null_model``) and shares it across the
  three analyses. Rows: ``bernoulli_index`` (SCEPTRE's CRT, the same test as pysceptre) and
  ``stratified_perm`` with batch and burden bins (sklcrt's recommended high-MOI method).
- pysceptre 0.6.0 is called as its API offers: ``run_calibration_check``,
  ``run_power_check`` and ``run_discovery_analysis`` (after ``annotate_pairwise_qc``), each of
  which fits the null models of the genes it tests (its ``fit_all_genes``, timed by wrapping
  it); there is no public way to pass fitted null models from one call to the next.

Covariates: batch, log1p library size and detected genes, log1p detected guides, encoded once
by sklcrt; pysceptre gets the identical design matrix. Every tool runs in a fresh subprocess
(its peak RSS is its own, sampled over the process tree), one process, BLAS at one thread.
"""

from __future__ import annotations

import argparse
import os
import pickle
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vs_pysceptre import cpu_seconds, current_rss, timed_calls  # noqa: E402
from bench_w1_programs import PeakRSS  # noqa: E402

from sklcrt.resampling import RECOMMENDED_HIGH_MOI_KWARGS  # noqa: E402

B1, B2 = 499, 4999
ALPHA = 0.1
MIN_NONZERO = 7
CIS_GENES = 10
COVARIATES = (
    "batch",
    "log1p_response_n_umis",
    "log1p_response_n_nonzero",
    "log1p_grna_n_nonzero_assign",
)
METHODS = {
    "sklcrt-crt": dict(resampling_method="bernoulli_index"),
    "sklcrt-strat": dict(
        resampling_method="stratified_perm",
        resampling_kwargs=dict(RECOMMENDED_HIGH_MOI_KWARGS, batch_key="batch"),
    ),
}
LABELS = {
    "pysceptre": "pysceptre {version}, n_jobs=1",
    "sklcrt-crt": "sklcrt bernoulli_index (CRT)",
    "sklcrt-strat": "sklcrt stratified_perm+burden",
}
STAGES = ("null fits", "calibration", "power", "discovery")


# ---------------------------------------------------------------------- the screen
def screen_path(args) -> Path:
    name = f"w3_{args.cells}x{args.genes}_t{args.targets}_b0.h5ad"
    return Path(args.cache) / name


def make_screen(args) -> Path:
    """Simulate the screen once (cached) with its cis discovery pairs."""
    path = screen_path(args)
    if path.exists():
        return path
    from sklcrt.datasets import simulate_screen

    adata = simulate_screen(
        n_cells=args.cells,
        n_genes=args.genes,
        n_programs=2,
        n_targets=args.targets,
        guides_per_target=2,
        n_ntc_guides=60,
        moi=8.0,
        n_batches=2,
        burden_effect=0.0,
        response="counts",
        random_state=0,
    )
    genes = np.asarray(adata.var_names)
    order = np.random.default_rng(1).permutation(genes.size)  # the pseudo-genome
    where = np.empty(genes.size, dtype=np.int64)
    where[order] = np.arange(genes.size)
    half = CIS_GENES // 2
    rows = []
    for t in range(args.targets):
        lo = int(np.clip(where[t] - half + 1, 0, genes.size - CIS_GENES))
        for g in order[lo : lo + CIS_GENES]:
            rows.append((genes[g], genes[t]))
    adata.uns["discovery_pairs"] = pd.DataFrame(rows, columns=["response_id", "grna_target"])
    path.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(path)
    return path


def load_inputs(path: Path):
    import anndata as ad

    from sklcrt.inputs import prepare_crt_inputs

    adata = ad.read_h5ad(path)
    discovery = adata.uns["discovery_pairs"][["response_id", "grna_target"]].astype(str)
    positive = adata.uns["positive_control_pairs"][["response_id", "grna_target"]].astype(str)
    inputs = prepare_crt_inputs(adata, response="counts", covariates=COVARIATES)
    return inputs, discovery.reset_index(drop=True), positive.reset_index(drop=True)


# ---------------------------------------------------------------------- workers
def run_sklcrt(inputs, discovery, positive, method: dict, repeats: int):
    from threadpoolctl import threadpool_limits

    from sklcrt.runners import discovery_analysis, fit_null_model, power_check, run_ntc_groups

    common = dict(
        n_resamples=B1,
        n_resamples_adaptive=B2,
        pvalue_method="skew_normal",
        alternative="two-sided",
        min_nonzero=MIN_NONZERO,
        random_state=0,
        n_jobs=1,
        progress=False,
        **method,
    )
    best, tables = None, None
    with threadpool_limits(limits=1):
        for _ in range(repeats):
            statistic = cal = pw = disc = None  # peak RSS is one run's
            c0 = cpu_seconds()
            times = {}
            t0 = time.perf_counter()
            statistic = fit_null_model(inputs)
            times["null fits"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            cal = run_ntc_groups(
                inputs, group_size=2, n_pairs=len(discovery), statistic=statistic, **common
            )
            times["calibration"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            pw = power_check(inputs, positive, alpha=ALPHA, statistic=statistic, **common)
            times["power"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            disc = discovery_analysis(inputs, discovery, alpha=ALPHA, statistic=statistic, **common)
            times["discovery"] = time.perf_counter() - t0
            times["total"] = sum(times[s] for s in STAGES)
            times["cpu"] = cpu_seconds() - c0
            if best is None or times["total"] < best["total"]:
                best, tables = times, (cal, pw, disc)
    return best, tables


def run_pysceptre(inputs, discovery, positive, repeats: int):
    import pysceptre
    import pysceptre.pipeline.discovery as engine
    import scipy.sparse as sp
    from pysceptre.crt import sampler
    from pysceptre.pipeline.api import (
        run_calibration_check,
        run_discovery_analysis,
        run_power_check,
    )
    from pysceptre.pipeline.power import annotate_pairwise_qc
    from threadpoolctl import threadpool_limits

    from sklcrt.inputs import unit_treatment

    # pysceptre's inputs from sklcrt's (not timed: data layout).
    response_matrix = sp.csr_matrix(inputs["Y"].T)
    gene_ids = [str(g) for g in inputs["response_names"]]
    covariate_matrix = np.ascontiguousarray(inputs["C"], dtype=float)
    targets = list(dict.fromkeys(list(discovery["grna_target"]) + list(positive["grna_target"])))
    target_cells = {
        t: np.flatnonzero(unit_treatment(inputs, inputs["units"][t])).astype(np.int64)
        for t in targets
    }
    ntc_cells = {
        g: np.flatnonzero(unit_treatment(inputs, [g])).astype(np.int64)
        for g in inputs["ntc_guides"]
    }
    n_cells = covariate_matrix.shape[0]
    opts = dict(side="both", moi="high", resampling_approximation="skew_normal", seed=0, n_jobs=1)

    best, tables = None, None
    with timed_calls(engine, ("fit_all_genes",)) as spent:
        with threadpool_limits(limits=1):
            for _ in range(repeats):
                cal = pw = disc = qc = None
                c0 = cpu_seconds()
                times = {}
                fits = []
                spent.clear()
                # discovery QC first: the calibration check is sized like the tested discovery set
                t0 = time.perf_counter()
                qc = annotate_pairwise_qc(
                    discovery,
                    response_matrix,
                    gene_ids,
                    target_cells,
                    n_cells,
                    n_nonzero_trt_thresh=MIN_NONZERO,
                    n_nonzero_cntrl_thresh=MIN_NONZERO,
                )
                t_qc = time.perf_counter() - t0
                passed = qc.loc[qc["pass_qc"], ["response_id", "grna_target"]]
                t0 = time.perf_counter()
                cal = run_calibration_check(
                    response_matrix,
                    gene_ids,
                    covariate_matrix,
                    ntc_cells,
                    n_calibration_pairs=len(passed),
                    calibration_group_size=2,
                    n_nonzero_trt_thresh=MIN_NONZERO,
                    n_nonzero_cntrl_thresh=MIN_NONZERO,
                    **opts,
                )
                times["calibration"] = time.perf_counter() - t0
                fits.append(spent.get("fit_all_genes", 0.0))
                t0 = time.perf_counter()
                pw = run_power_check(
                    response_matrix,
                    gene_ids,
                    covariate_matrix,
                    target_cells,
                    positive_control_pairs=positive,
                    n_nonzero_trt_thresh=MIN_NONZERO,
                    n_nonzero_cntrl_thresh=MIN_NONZERO,
                    **opts,
                )
                times["power"] = time.perf_counter() - t0
                fits.append(spent.get("fit_all_genes", 0.0) - sum(fits))
                t0 = time.perf_counter()
                res = run_discovery_analysis(
                    response_matrix,
                    gene_ids,
                    covariate_matrix,
                    {t: target_cells[t] for t in passed["grna_target"].unique()},
                    passed.reset_index(drop=True),
                    **opts,
                )
                times["discovery"] = time.perf_counter() - t0 + t_qc
                fits.append(spent.get("fit_all_genes", 0.0) - sum(fits))
                # The null fits happen inside each call; report them apart, the analyses without.
                times["null fits"] = sum(fits)
                times["calibration"] -= fits[0]
                times["power"] -= fits[1]
                times["discovery"] -= fits[2]
                times["null fits per call"] = fits
                times["total"] = sum(times[s] for s in STAGES)
                times["cpu"] = cpu_seconds() - c0
                if best is None or times["total"] < best["total"]:
                    disc = qc.merge(res, on=["response_id", "grna_target"], how="left")
                    disc = disc.rename(columns={"p_value": "pvalue"})
                    cal = cal.rename(columns={"p_value": "pvalue"})
                    pw = pw.rename(columns={"p_value": "pvalue"})
                    best, tables = times, (cal, pw, disc)
    best["version"] = pysceptre.__version__
    best["have_numba"] = bool(getattr(sampler, "_HAVE_NUMBA", False))
    return best, tables


def worker(args) -> None:
    out = Path(args.out)
    with PeakRSS() as peak:
        t0 = time.perf_counter()
        inputs, discovery, positive = load_inputs(screen_path(args))
        t_load = time.perf_counter() - t0
        rss_loaded = current_rss()
        if args.worker == "pysceptre":
            times, tables = run_pysceptre(inputs, discovery, positive, args.repeats)
        else:
            times, tables = run_sklcrt(
                inputs, discovery, positive, METHODS[args.worker], args.repeats
            )
    times.update(
        load=t_load,
        peak_mb=peak.peak / 2**20,
        loaded_mb=rss_loaded / 2**20,
        maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        n_cells=int(inputs["C"].shape[0]),
        n_genes=len(inputs["response_names"]),
        n_targets=int(discovery["grna_target"].nunique()),
        n_pairs=len(discovery),
        n_positive=len(positive),
    )
    with open(out / f"{args.worker}.pkl", "wb") as fh:
        pickle.dump({"times": times, "tables": tables}, fh)


def spawn(name: str, args, out: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--out", str(out)]
    cmd += ["--cache", str(args.cache), "--repeats", str(args.repeats)]
    cmd += ["--cells", str(args.cells), "--genes", str(args.genes)]
    cmd += ["--targets", str(args.targets)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"the {name} run failed (exit {proc.returncode}); output above")
    with open(out / f"{name}.pkl", "rb") as fh:
        res = pickle.load(fh)
    res["wall"] = time.perf_counter() - t0
    return res


# ---------------------------------------------------------------------- report
def _summary(name: str, tables, version: str) -> str:
    from scipy import stats

    cal, pw, disc = tables
    p_cal = cal["pvalue"].to_numpy(float)
    p_cal = p_cal[np.isfinite(p_cal)]
    p_pw = pw["pvalue"].to_numpy(float)
    p_disc = disc["pvalue"].to_numpy(float)
    tested = np.isfinite(p_disc)
    bh = stats.false_discovery_control(p_disc[tested], method="bh") <= ALPHA
    label = LABELS[name].format(version=version).split(",")[0]
    return (
        f"  {label:32s} calibration {p_cal.size} pairs, frac p<0.01 "
        f"{np.mean(p_cal < 0.01):.4f}; power {int(np.sum(p_pw < 1e-3))}/{len(p_pw)} p<1e-3; "
        f"discovery {int(tested.sum())} tested, {int(bh.sum())} BH({ALPHA}) discoveries"
    )


def print_report(runs: dict, args, load_before, load_after) -> None:
    first = next(iter(runs.values()))["times"]
    print(
        f"W3 simulated counts screen: {first['n_cells']:,} cells x {first['n_genes']:,} genes, "
        f"{first['n_targets']} targets x 2 guides, {first['n_pairs']:,} cis discovery pairs, "
        f"{first['n_positive']} positive controls, calibration sized like discovery; "
        f"B = {B1} then {B2}, skew-normal; best of {args.repeats}"
    )
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs; "
        f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}"
    )
    head = f"{'':34s}" + "".join(f"{s:>12s}" for s in STAGES)
    print("\n" + head + f"{'total':>10s}{'CPU/wall':>9s}{'peak RSS':>10s}")
    for name, run in runs.items():
        t = run["times"]
        label = LABELS[name].format(version=t.get("version", "?"))
        cells = "".join(f"{t[s]:11.2f}s" for s in STAGES)
        print(
            f"{label:34s}{cells}{t['total']:9.2f}s{t['cpu'] / t['total']:9.2f}{t['peak_mb']:8.0f}MB"
        )
    if "pysceptre" in runs:
        t = runs["pysceptre"]["times"]
        per_call = ", ".join(f"{v:.1f} s" for v in t["null fits per call"])
        print(
            f"  pysceptre refits the null models in every call (calibration, power, discovery): "
            f"{per_call}; numba {'yes' if t['have_numba'] else 'no'}"
        )
        print("\nspeed-up over pysceptre, per core (and peak memory, sklcrt / pysceptre):")
        for name in METHODS:
            if name in runs:
                s = runs[name]["times"]
                stages = "  ".join(f"{st} {t[st] / s[st]:5.2f}x" for st in STAGES)
                print(
                    f"  {LABELS[name]:32s} whole workflow {t['total'] / s['total']:6.2f}x   "
                    f"({stages})   memory {s['peak_mb'] / t['peak_mb']:.2f}"
                )
    print("\nresults:")
    for name, run in runs.items():
        print(_summary(name, run["tables"], run["times"].get("version", "?")))
    print(
        f"\n(data load + inputs, not counted: {first['load']:.1f} s per process); "
        f"load average after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=100_000)
    parser.add_argument("--genes", type=int, default=1_000)
    parser.add_argument("--targets", type=int, default=300)
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "sklcrt_w3"))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip-pysceptre", action="store_true")
    parser.add_argument("--only", choices=sorted(LABELS), help="run only this row")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    t0 = time.perf_counter()
    path = make_screen(args)
    print(f"[screen {path} ready in {time.perf_counter() - t0:.1f} s]", file=sys.stderr)
    names = ["pysceptre", "sklcrt-crt", "sklcrt-strat"]
    if args.skip_pysceptre:
        names.remove("pysceptre")
    if args.only:
        names = [args.only]
    load_before = os.getloadavg()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench_w3_") as tmp:
        for name in names:
            runs[name] = spawn(name, args, Path(tmp))
            print(f"[{name} done in {runs[name]['wall']:.1f} s]", file=sys.stderr, flush=True)
    print_report(runs, args, load_before, os.getloadavg())


if __name__ == "__main__":
    main()
