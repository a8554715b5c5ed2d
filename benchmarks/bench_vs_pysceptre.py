"""sklcrt against pysceptre: SCEPTRE's high-MOI discovery analysis of the Gasperini screen.

Run ``python benchmarks/bench_vs_pysceptre.py`` (needs ``../shared/data`` and, for the
comparison, ``pip install pysceptre numba``; neither is a dependency of sklcrt). ``--pairs N``
runs only the first N discovery pairs, ``--skip-pysceptre`` only the sklcrt rows, ``--repeats R``
keeps the best of R timed runs per tool, ``--rounds N`` (default 3) runs the tools one after the
other N times (interleaved, so that on a shared machine they see the same load) and keeps each
tool's best round.

The work, the same for both tools (SCEPTRE's high-MOI discovery analysis):

- data: ``gasperini2019_highmoi.h5ad`` restricted to the genes of the tested pairs (pysceptre
  fits only those; sklcrt is given the same genes), gRNAs assigned once with sklcrt
  (``assign_guides``, threshold 5 UMIs); a target's treated cells are the union of its gRNAs'
  cells, and pysceptre gets exactly these cells (``grna_target_cells``), so both tools see the
  same binary treatment;
- covariates: those of the W2 benchmark (batch, log1p response n_umis and n_nonzero, log1p
  gRNA n_umis and n_nonzero), encoded once by sklcrt (intercept, one-hot batch, z-scored
  numerics); pysceptre gets the identical design matrix ``inputs["C"]``;
- pairwise QC: at least 7 treated and 7 control cells with nonzero expression (sklcrt's
  ``min_nonzero=7``, pysceptre's ``annotate_pairwise_qc`` with its defaults, both timed as part
  of the analysis); pysceptre tests the pairs that pass;
- test: NB GLM score statistic, complement control group, CRT resampling (Bernoulli draws from
  a per-target logistic propensity on the covariates), 499 resamples, then 4,999 where the
  first-stage p-value is at most 0.02, skew-normal p-values, two-sided. In sklcrt that is
  ``resampling_method="bernoulli_index"``, ``n_resamples=499``, ``n_resamples_adaptive=4999``,
  ``pvalue_method="skew_normal"``; in pysceptre ``run_discovery_analysis(moi="high",
  side="both", resampling_approximation="skew_normal")`` (its defaults).

A second sklcrt row times sklcrt's recommended high-MOI method, ``stratified_perm`` with
batch, 20 propensity bins and 8 burden bins (as in ``bench_w2_gasperini.py``), on the same
null model.

Every tool runs in a fresh subprocess (so its peak RSS is its own), single process, BLAS
limited to one thread (``threadpoolctl.threadpool_limits(1)``): the comparison is per core.
Optionally (``--pysceptre-n-jobs K``) pysceptre also runs as shipped, with its own parallel
option (``n_jobs=K``, worker processes on Linux; -1 is every core) and no thread limit of ours
(pysceptre itself keeps BLAS at one thread in its engine and its workers), reported as such.

Printed:

- per tool: the one-time per-gene null-model fits (sklcrt: ``fit_null_model``; pysceptre: the
  time spent in its ``fit_all_genes``, measured by wrapping it), the rest of the discovery
  analysis, the total, CPU time / wall time, and peak RSS of the process tree (sampled by
  psutil, the whole worker including the data, and its growth over the loaded data);
- speed-up of each sklcrt row over pysceptre, total and analysis only (without null fits);
- agreement on the pairs both tools tested: Spearman correlation of -log10 p, median
  ``|log10(p_sklcrt / p_pysceptre)|``, Benjamini-Hochberg (0.1) discoveries of each and in
  common (BH over the common tested pairs), correlation of the observed z statistics and of
  the log2 fold changes; and, as the Monte Carlo noise floor, the same figures for sklcrt's
  CRT run with two seeds;
- the pairs with p < 0.01 in either tool, side by side.

Notes
-----
Where the two tools differ by design (so agreement is not exact beyond Monte Carlo noise):

- null model: pysceptre (as SCEPTRE) fits a Poisson GLM and then estimates the NB size
  ``theta`` from its fitted means; sklcrt fits the NB GLM to the joint maximum likelihood of
  ``theta`` and the coefficients (simultaneous Newton steps). Both build their per-gene score
  pieces inside the analysis; the totals are the comparable figures;
- propensity: sklcrt's default ``NewtonLogisticRegression`` has scikit-learn's L2 penalty
  ``C=1``; SCEPTRE's logistic fit is unpenalised (negligible at 40,000 cells);
- skew-normal p-values: pysceptre uses the skew-normal fit for every second-stage pair
  (unless its fit check rejects it); sklcrt only where the empirical p-value is at most
  ``min(0.05, 10 / (B + 1))`` and keeps the empirical p-value elsewhere;
- pysceptre without ``numba`` (its ``fast`` extra, not installed by ``pip install pysceptre``)
  groups its CRT draws with a slower numpy fallback; the report says which was used. To time
  it with numba, install numba where the worker processes import it (e.g. ``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import contextlib
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
from bench_w1_programs import PeakRSS  # noqa: E402

from sklcrt.inputs import SCEPTRE_HIGH_MOI_COVARIATES  # noqa: E402
from sklcrt.resampling import RECOMMENDED_HIGH_MOI_KWARGS  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
B1, B2 = 499, 4999
ALPHA = 0.1
MIN_NONZERO = 7
CRT = dict(resampling_method="bernoulli_index")
STRATIFIED = dict(
    resampling_method="stratified_perm",
    resampling_kwargs=dict(RECOMMENDED_HIGH_MOI_KWARGS, batch_key="batch"),
)
MISSING = "pysceptre is not installed: pip install pysceptre to run this comparison"
LABELS = {
    "pysceptre": "pysceptre {version}, n_jobs=1",
    "pysceptre-par": "pysceptre {version}, n_jobs={n_jobs}, own threads",
    "sklcrt-crt": "sklcrt bernoulli_index (CRT)",
    "sklcrt-strat": "sklcrt stratified_perm+burden",
}


# ---------------------------------------------------------------------- shared inputs
def load_inputs(data: Path, n_pairs: int | None):
    """The discovery pairs and sklcrt's inputs (assignment, burden, W2 covariates)."""
    import anndata as ad

    from sklcrt.assignment import add_burden_covariates, assign_guides
    from sklcrt.inputs import prepare_crt_inputs

    pairs = pd.read_csv(data / "gasperini2019_highmoi_discovery_pairs.csv")
    pairs = pairs[["response_id", "grna_target"]].astype(str)
    if n_pairs is not None:
        pairs = pairs.iloc[:n_pairs].reset_index(drop=True)
    adata = ad.read_h5ad(data / "gasperini2019_highmoi.h5ad")
    genes = set(pairs["response_id"])
    adata = adata[:, [g for g in adata.var_names if g in genes]].copy()
    assign_guides(adata, method="threshold", threshold=5)
    add_burden_covariates(adata)
    inputs = prepare_crt_inputs(adata, response="counts", covariates=SCEPTRE_HIGH_MOI_COVARIATES)
    return pairs, inputs


@contextlib.contextmanager
def timed_calls(module, names):
    """Wrap ``module``'s functions ``names`` to add up their seconds in the yielded dict."""
    spent: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0

        return wrapper

    originals = {name: getattr(module, name) for name in names}
    for name, fn in originals.items():
        setattr(module, name, timed(name, fn))
    try:
        yield spent
    finally:
        for name, fn in originals.items():
            setattr(module, name, fn)


def cpu_seconds() -> float:
    """CPU time of this process and of its reaped children (pysceptre's worker processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def current_rss() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:  # pragma: no cover
        return float("nan")


# ---------------------------------------------------------------------- workers
def run_sklcrt(inputs, pairs, method: dict, repeats: int, noise_floor: bool):
    from threadpoolctl import threadpool_limits

    from sklcrt.runners import discovery_analysis, fit_null_model

    best, result, extra = None, None, {}
    options = dict(
        n_resamples=B1,
        n_resamples_adaptive=B2,
        pvalue_method="skew_normal",
        alternative="two-sided",
        min_nonzero=MIN_NONZERO,
        alpha=ALPHA,
        n_jobs=1,
        progress=False,
        **method,
    )
    with threadpool_limits(limits=1):
        for _ in range(repeats):
            statistic = res = None  # release the last repeat's: peak RSS is one run's
            c0, t0 = cpu_seconds(), time.perf_counter()
            statistic = fit_null_model(inputs)
            t_null = time.perf_counter() - t0
            t1 = time.perf_counter()
            res = discovery_analysis(inputs, pairs, statistic=statistic, random_state=0, **options)
            t_analysis = time.perf_counter() - t1
            cpu = cpu_seconds() - c0
            times = dict(null=t_null, analysis=t_analysis, total=t_null + t_analysis, cpu=cpu)
            if best is None or times["total"] < best["total"]:
                best, result = times, res
        if noise_floor:  # untimed: the same test with another seed
            extra["seed1"] = discovery_analysis(
                inputs, pairs, statistic=statistic, random_state=1, **options
            )
    table = result.rename(columns={"response": "response_id"})
    return best, table, extra


def run_pysceptre(inputs, pairs, repeats: int, n_jobs: int, limit_blas: bool):
    import pysceptre
    import pysceptre.pipeline.discovery as engine
    import scipy.sparse as sp
    from pysceptre.crt import sampler
    from pysceptre.pipeline.api import run_discovery_analysis
    from pysceptre.pipeline.power import annotate_pairwise_qc
    from threadpoolctl import threadpool_limits

    from sklcrt.inputs import unit_treatment

    # pysceptre's inputs from sklcrt's: genes x cells counts, the same design matrix, and each
    # target's treated cells (0-based) from the same assignment. Not timed (data layout).
    response_matrix = sp.csr_matrix(inputs["Y"].T)
    gene_ids = [str(g) for g in inputs["response_names"]]
    covariate_matrix = np.ascontiguousarray(inputs["C"], dtype=float)
    targets = list(dict.fromkeys(pairs["grna_target"]))
    target_cells = {
        t: np.flatnonzero(unit_treatment(inputs, inputs["units"][t])).astype(np.int64)
        for t in targets
    }
    n_cells = covariate_matrix.shape[0]

    best, result = None, None
    with timed_calls(engine, ("fit_all_genes", "fit_all_targets")) as spent:
        with threadpool_limits(limits=1) if limit_blas else contextlib.nullcontext():
            for _ in range(repeats):
                res = qc = passed = None  # release the last repeat's: peak RSS is one run's
                spent.clear()
                c0, t0 = cpu_seconds(), time.perf_counter()
                qc = annotate_pairwise_qc(
                    pairs,
                    response_matrix,
                    gene_ids,
                    target_cells,
                    n_cells,
                    n_nonzero_trt_thresh=MIN_NONZERO,
                    n_nonzero_cntrl_thresh=MIN_NONZERO,
                )
                t_qc = time.perf_counter() - t0
                passed = qc.loc[qc["pass_qc"], ["response_id", "grna_target"]]
                res = run_discovery_analysis(
                    response_matrix,
                    gene_ids,
                    covariate_matrix,
                    {t: target_cells[t] for t in passed["grna_target"].unique()},
                    passed.reset_index(drop=True),
                    side="both",
                    moi="high",
                    resampling_approximation="skew_normal",
                    seed=0,
                    n_jobs=n_jobs,
                )
                total = time.perf_counter() - t0
                cpu = cpu_seconds() - c0
                t_null = spent.get("fit_all_genes", 0.0)
                times = dict(
                    null=t_null,
                    analysis=total - t_null,
                    total=total,
                    cpu=cpu,
                    qc=t_qc,
                    targets=spent.get("fit_all_targets", 0.0),
                )
                if best is None or total < best["total"]:
                    best = times
                    result = qc.merge(res, on=["response_id", "grna_target"], how="left")
                    # sklcrt spells the p-value "pvalue"; pysceptre "p_value".
                    result = result.rename(columns={"p_value": "pvalue"})
    best["version"] = pysceptre.__version__
    best["have_numba"] = bool(getattr(sampler, "_HAVE_NUMBA", False))
    return best, result, {}


def worker(args) -> None:
    """One tool in this process; timings and tables go to ``args.out``."""
    out = Path(args.out)
    with PeakRSS() as peak:
        t0 = time.perf_counter()
        pairs, inputs = load_inputs(Path(args.data), args.pairs)
        t_load = time.perf_counter() - t0
        rss_loaded = current_rss()
        if args.worker == "sklcrt-crt":
            times, table, extra = run_sklcrt(inputs, pairs, CRT, args.repeats, True)
        elif args.worker == "sklcrt-strat":
            times, table, extra = run_sklcrt(inputs, pairs, STRATIFIED, args.repeats, False)
        elif args.worker == "pysceptre":
            times, table, extra = run_pysceptre(inputs, pairs, args.repeats, 1, True)
        elif args.worker == "pysceptre-par":
            times, table, extra = run_pysceptre(
                inputs, pairs, args.repeats, args.pysceptre_n_jobs, False
            )
        else:
            raise ValueError(f"unknown worker {args.worker!r}")
    times.update(
        load=t_load,
        peak_mb=peak.peak / 2**20,
        loaded_mb=rss_loaded / 2**20,
        maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        n_cells=int(inputs["C"].shape[0]),
        n_genes=len(inputs["response_names"]),
        n_targets=int(pairs["grna_target"].nunique()),
        n_pairs=len(pairs),
    )
    with open(out / f"{args.worker}.pkl", "wb") as fh:
        pickle.dump({"times": times, "table": table, "extra": extra}, fh)


def spawn(name: str, args, out: Path) -> dict:
    """Run one tool in a fresh subprocess (its own peak RSS) and read back what it wrote."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        name,
        "--out",
        str(out),
        "--data",
        str(args.data),
        "--repeats",
        str(args.repeats),
        "--pysceptre-n-jobs",
        str(args.pysceptre_n_jobs),
    ]
    if args.pairs is not None:
        cmd += ["--pairs", str(args.pairs)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"the {name} run failed (exit {proc.returncode}); output above")
    with open(out / f"{name}.pkl", "rb") as fh:
        res = pickle.load(fh)
    res["wall"] = time.perf_counter() - t0
    res["stderr"] = proc.stderr
    return res


# ---------------------------------------------------------------------- agreement
def _bh(p: np.ndarray) -> np.ndarray:
    from scipy import stats

    return stats.false_discovery_control(p, method="bh") <= ALPHA


def agreement(a: pd.DataFrame, b: pd.DataFrame, a_cols, b_cols) -> dict:
    """Agreement of two result tables (keyed by response_id, grna_target) on their common pairs.

    ``a_cols`` and ``b_cols`` are ``(log2 fold change, z statistic)`` arrays aligned with the
    rows of ``a`` and ``b``.
    """
    (a_effect, a_stat), (b_effect, b_stat) = a_cols, b_cols
    from scipy import stats

    keys = ["response_id", "grna_target"]
    left = a[keys].assign(p_a=a["pvalue"].to_numpy(float), e_a=a_effect, z_a=a_stat)
    right = b[keys].assign(p_b=b["pvalue"].to_numpy(float), e_b=b_effect, z_b=b_stat)
    m = left.merge(right, on=keys, how="inner")
    m = m[np.isfinite(m["p_a"]) & np.isfinite(m["p_b"])]
    out = {"n": len(m)}
    if len(m) < 3:
        return out
    la, lb = -np.log10(m["p_a"].to_numpy()), -np.log10(m["p_b"].to_numpy())
    sig_a, sig_b = _bh(m["p_a"].to_numpy()), _bh(m["p_b"].to_numpy())
    ok_e = np.isfinite(m["e_a"]) & np.isfinite(m["e_b"])
    ok_z = np.isfinite(m["z_a"]) & np.isfinite(m["z_b"])
    out.update(
        spearman=float(stats.spearmanr(la, lb).statistic),
        med_abs_log10=float(np.median(np.abs(la - lb))),
        n_bh_a=int(sig_a.sum()),
        n_bh_b=int(sig_b.sum()),
        n_bh_both=int((sig_a & sig_b).sum()),
        r_effect=float(np.corrcoef(m["e_a"][ok_e], m["e_b"][ok_e])[0, 1]),
        med_abs_effect=float(np.median(np.abs(m["e_a"][ok_e] - m["e_b"][ok_e]))),
        r_z=float(np.corrcoef(m["z_a"][ok_z], m["z_b"][ok_z])[0, 1]),
    )
    return out


def _sklcrt_cols(table):
    return table["effect"].to_numpy(float), table["statistic"].to_numpy(float)


def _pysceptre_cols(table):
    with np.errstate(divide="ignore", invalid="ignore"):
        log2fc = np.log2(table["fold_change"].to_numpy(float))
    return log2fc, table["z_orig"].to_numpy(float)


# ---------------------------------------------------------------------- report
def print_small_pvalues(sk: pd.DataFrame, py: pd.DataFrame, cutoff=0.01, most=25) -> None:
    """Side by side, the pairs with p < cutoff in either tool (sklcrt CRT and pysceptre)."""
    keys = ["response_id", "grna_target"]
    m = sk[keys + ["statistic", "effect", "pvalue", "pvalue_method", "n_resamples"]].merge(
        py[keys + ["z_orig", "fold_change", "pvalue", "stage"]],
        on=keys,
        suffixes=("_sk", "_py"),
    )
    m = m[(m["pvalue_sk"] < cutoff) | (m["pvalue_py"] < cutoff)]
    m = m.sort_values("pvalue_py").head(most)
    print(f"\npairs with p < {cutoff} in either (sklcrt CRT | pysceptre), by pysceptre p:")
    print(
        f"  {'gene':16s} {'target':22s} {'z sk':>7s} {'z py':>7s} {'log2FC sk':>9s} "
        f"{'log2FC py':>9s} {'p sklcrt':>9s} {'how':>6s} {'p pysceptre':>11s} {'stage':>5s}"
    )
    for r in m.itertuples(index=False):
        how = "sn" if r.pvalue_method == "skew_normal" else f"emp{r.n_resamples}"
        print(
            f"  {r.response_id:16s} {r.grna_target[:22]:22s} {r.statistic:7.2f} {r.z_orig:7.2f} "
            f"{r.effect:9.3f} {np.log2(r.fold_change):9.3f} {r.pvalue_sk:9.2e} {how:>6s} "
            f"{r.pvalue_py:11.2e} {int(r.stage):5d}"
        )
    print("  (how: sn = skew-normal fit, empN = empirical on N resamples; stage: pysceptre's,")
    print("   1 = 499 resamples, 2 = skew-normal on 4,999 more, 3 = empirical, fit rejected)")


def print_report(runs: dict, args, load_before, load_after) -> None:
    first = next(iter(runs.values()))["times"]
    print(
        f"Gasperini 2019 high MOI: {first['n_cells']:,} cells, {first['n_pairs']} discovery pairs"
        f" ({first['n_genes']} genes, {first['n_targets']} targets)"
        + ("" if args.pairs is None else f"; first {args.pairs} pairs only (--pairs)")
        + f"; B = {B1} then {B2}, skew-normal, two-sided; best of {args.repeats}"
    )
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs; "
        f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}"
    )
    head = (
        f"{'':40s} {'null fits':>9s} {'analysis':>9s} {'total':>8s} {'CPU/wall':>8s} "
        f"{'peak RSS':>9s} {'(+ over data)':>13s}"
    )
    print("\n" + head)
    for name, run in runs.items():
        t = run["times"]
        label = LABELS[name].format(version=t.get("version", "?"), n_jobs=args.pysceptre_n_jobs)
        grown = t["peak_mb"] - t["loaded_mb"]
        print(
            f"{label:40s} {t['null']:8.2f}s {t['analysis']:8.2f}s {t['total']:7.2f}s "
            f"{t['cpu'] / t['total']:8.2f} {t['peak_mb']:7.0f}MB {grown:+11.0f}MB"
        )
    for name in ("pysceptre", "pysceptre-par"):
        if name in runs:
            t = runs[name]["times"]
            print(
                f"  {name}: pairwise QC {t['qc']:.2f} s, target logistic fits + CRT draws "
                f"{t['targets']:.2f} s (inside analysis); numba "
                f"{'yes' if t['have_numba'] else 'no (pure-numpy fallback)'}"
            )
    print(
        f"  (data load + assignment + inputs, not counted: {first['load']:.1f} s per process; "
        "peak RSS is of the whole worker process tree, sampled every 50 ms; ru_maxrss "
        + ", ".join(f"{name} {run['times']['maxrss_mb']:.0f} MB" for name, run in runs.items())
        + ")"
    )

    if "pysceptre" in runs:
        ref = runs["pysceptre"]["times"]
        print("\nspeed-up over pysceptre (n_jobs=1), per core:")
        for name in ("sklcrt-crt", "sklcrt-strat"):
            if name in runs:
                t = runs[name]["times"]
                print(
                    f"  {LABELS[name]:36s} total {ref['total'] / t['total']:6.2f}x   "
                    f"analysis only {ref['analysis'] / t['analysis']:6.2f}x   "
                    f"null fits {ref['null'] / t['null']:6.2f}x   "
                    f"(CPU time, total: {ref['cpu'] / t['cpu']:5.2f}x)"
                )

    print("\nagreement on the pairs both tested (BH at 0.1 over those pairs):")
    print(
        f"  {'A vs B':46s} {'pairs':>5s} {'rho(-log10p)':>12s} {'med|dlog10p|':>12s} "
        f"{'BH A':>5s} {'BH B':>5s} {'both':>5s} {'r(log2FC)':>9s} {'med|dFC|':>8s} {'r(z)':>7s}"
    )
    rows = []
    if "pysceptre" in runs:
        py = runs["pysceptre"]["table"]
        for name in ("sklcrt-crt", "sklcrt-strat"):
            if name in runs:
                sk = runs[name]["table"]
                rows.append(
                    (
                        f"{LABELS[name]} vs pysceptre",
                        agreement(sk, py, _sklcrt_cols(sk), _pysceptre_cols(py)),
                    )
                )
        if "pysceptre-par" in runs:
            par = runs["pysceptre-par"]["table"]
            rows.append(
                (
                    "pysceptre n_jobs=1 vs parallel",
                    agreement(py, par, _pysceptre_cols(py), _pysceptre_cols(par)),
                )
            )
    if "sklcrt-crt" in runs:
        crt = runs["sklcrt-crt"]["table"]
        seed1 = runs["sklcrt-crt"]["extra"]["seed1"].rename(columns={"response": "response_id"})
        rows.append(
            (
                "noise floor: sklcrt CRT seed 0 vs seed 1",
                agreement(crt, seed1, _sklcrt_cols(crt), _sklcrt_cols(seed1)),
            )
        )
        if "sklcrt-strat" in runs:
            st = runs["sklcrt-strat"]["table"]
            rows.append(
                (
                    "sklcrt stratified_perm vs sklcrt CRT",
                    agreement(st, crt, _sklcrt_cols(st), _sklcrt_cols(crt)),
                )
            )
    for label, a in rows:
        if a["n"] < 3:
            print(f"  {label:46s} {a['n']:5d}  (too few pairs)")
            continue
        print(
            f"  {label:46s} {a['n']:5d} {a['spearman']:12.3f} {a['med_abs_log10']:12.3f} "
            f"{a['n_bh_a']:5d} {a['n_bh_b']:5d} {a['n_bh_both']:5d} {a['r_effect']:9.4f} "
            f"{a['med_abs_effect']:8.4f} {a['r_z']:7.4f}"
        )
    print(
        "  (rho: Spearman; med|dlog10p|: median |log10 p_A - log10 p_B|; r: Pearson correlation "
        "of the observed log2 fold changes and z statistics; med|dFC|: median |log2 FC_A - "
        "log2 FC_B|)"
    )

    if "pysceptre" in runs and "sklcrt-crt" in runs:
        print_small_pvalues(runs["sklcrt-crt"]["table"], runs["pysceptre"]["table"])

    print("\ntested pairs and second-stage pairs:")
    for name, run in runs.items():
        tab = run["table"]
        tested = int(np.isfinite(tab["pvalue"].to_numpy(float)).sum())
        if name.startswith("sklcrt"):
            stage2 = int((tab["n_resamples"] > B1).sum())
            skew = int((tab["pvalue_method"] == "skew_normal").sum())
            note = f"{stage2} got {B2} more resamples, {skew} skew-normal p-values"
        else:
            stage = tab["stage"]
            note = (
                f"{int((stage >= 2).sum())} got {B2} more resamples, "
                f"{int((stage == 2).sum())} skew-normal p-values"
            )
        label = LABELS[name].format(
            version=run["times"].get("version", "?"), n_jobs=args.pysceptre_n_jobs
        )
        print(f"  {label:40s} {tested} of {len(tab)} tested; {note}")
    print(
        f"\nload average after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; "
        "the machine may be shared: compare rows measured at similar load"
    )
    for name, run in runs.items():
        lines = [ln for ln in run["stderr"].splitlines() if "Warning" in ln]
        if lines:
            print(f"warnings from {name}: {len(lines)} (first: {lines[0].strip()[:150]})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--pairs", type=int, default=None, help="only the first N pairs")
    parser.add_argument("--skip-pysceptre", action="store_true", help="only the sklcrt rows")
    parser.add_argument("--repeats", type=int, default=1, help="best of R timed runs per tool")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="run the tools one after the other N times (interleaved), best round per tool "
        "(default 3: on a shared machine one round can be 20-40%% off)",
    )
    parser.add_argument(
        "--pysceptre-n-jobs",
        type=int,
        default=0,
        help="also run pysceptre with n_jobs=K and no thread limit of ours (its parallel "
        "option; -1: every core)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.pairs is not None and args.pairs < 1:
        parser.error("--pairs must be >= 1")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.worker:
        worker(args)
        return
    if not args.skip_pysceptre:
        try:
            import pysceptre  # noqa: F401
        except ImportError:
            raise SystemExit(f"{MISSING} (or pass --skip-pysceptre).") from None

    names = ["sklcrt-crt", "sklcrt-strat"]
    if not args.skip_pysceptre:
        names.insert(0, "pysceptre")
        if args.pysceptre_n_jobs != 0:
            names.insert(1, "pysceptre-par")
    load_before = os.getloadavg()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench_vs_pysceptre_") as tmp:
        # Rounds interleave the tools, so that on a shared machine every tool sees the same
        # mix of load; each tool keeps its best round (by total time).
        for _ in range(args.rounds):
            for name in names:
                run = spawn(name, args, Path(tmp))
                if name not in runs or run["times"]["total"] < runs[name]["times"]["total"]:
                    runs[name] = run
                print(f"[{name} done in {run['wall']:.1f} s]", file=sys.stderr, flush=True)
    print_report(runs, args, load_before, os.getloadavg())


if __name__ == "__main__":
    main()
