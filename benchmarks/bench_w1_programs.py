"""W1, the program workflow of issue 7: a screen-sized OLS run on CLR program usages.

Run ``python benchmarks/bench_w1_programs.py`` (full size: 200,000 cells, 2,000 targeting units
plus 50 NTC groups, 100 program responses, 12 encoded covariate columns with a 4-level batch,
B = 1,023 resamples, ``stratified_perm`` with batch, 20 propensity bins and 8 burden bins,
``n_jobs=2``). ``--units N`` runs only the first N targeting units (and N/40 NTC groups, at least
one) and extrapolates the end-to-end time to the full 2,050 units, saying so.

The inputs are built directly with numpy in the format of ``prepare_crt_inputs`` (the same keys):
``simulate_screen`` is not meant for this size. Cells carry ``Poisson(load)`` distinct guides
(a Gamma load around MOI 10) from a library of 4,000 targeting guides (2 per target) and 100
non-targeting guides (2 per NTC group); a target's unit has about 1,000 treated cells.

Printed:

- end to end: ``run_gene_loop`` + ``run_ntc_groups`` (null model fitted once, shared), wall time,
  and peak RSS of the process tree (this process plus the joblib workers, sampled every 50 ms by
  psutil; shared memory-mapped pages count once per process, so this overstates a little), and
  ``ru_maxrss`` of this process and of its reaped children;
- per stage (single process, on ``--stage-units`` units): the time of each component timed
  directly — propensity fit, strata (binning + encoding), sampling (sampler fit + sample),
  statistics (observed + evaluate), p-values, and bookkeeping (the rest of the per-unit runner:
  treatment vector, validation, cloning, the result frame) — and that per-unit cost times
  2,050 units / n_jobs;
- ``--profile FILE``: a cProfile of a single-process run on ``--units`` units, top 30 by
  cumulative and by internal time.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import platform
import pstats
import resource
import threading
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

try:
    import psutil
except ImportError:  # pragma: no cover
    psutil = None

from sklcrt.preprocessing import encode_covariates
from sklcrt.resampling import RECOMMENDED_HIGH_MOI_KWARGS

FULL_UNITS = 2_000
FULL_NTC_GROUPS = 50
RESAMPLING = dict(
    resampling_method="stratified_perm", resampling_kwargs=dict(RECOMMENDED_HIGH_MOI_KWARGS)
)


# ---------------------------------------------------------------------- inputs
def make_inputs(
    n_cells=200_000,
    n_targets=FULL_UNITS,
    n_ntc_groups=FULL_NTC_GROUPS,
    n_programs=100,
    moi=10.0,
    seed=0,
) -> dict:
    """The inputs dict of ``prepare_crt_inputs(adata, response="programs")`` for a big screen."""
    rng = np.random.default_rng(seed)
    n_batches = 4
    batch = rng.integers(0, n_batches, size=n_cells)
    batch_labels = np.array([f"b{k}" for k in range(n_batches)], dtype=object)
    n_target_guides = 2 * n_targets
    n_ntc = 2 * n_ntc_groups
    n_guides = n_target_guides + n_ntc
    load = rng.gamma(4.0, moi / 4.0, size=n_cells) * (1 + 0.1 * (batch - 1.5) / 1.5)
    k = np.minimum(rng.poisson(load), n_guides)
    rows = np.repeat(np.arange(n_cells), k)
    cols = rng.integers(0, n_guides, size=rows.size)
    guides = sp.csr_matrix(
        (np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(n_cells, n_guides)
    )
    guides.sum_duplicates()
    guides.data[:] = 1
    targeting = np.asarray(guides[:, :n_target_guides].sum(axis=1)).ravel()
    grna_nonzero = np.diff(guides.indptr)

    umis = rng.lognormal(np.log(8000), 0.4, size=n_cells)
    covar = pd.DataFrame(
        {
            "batch": pd.Categorical(batch_labels[batch]),
            "log1p_response_n_umis": np.log1p(umis),
            "log1p_response_n_nonzero": np.log1p(umis * rng.uniform(0.3, 0.4, size=n_cells)),
            "response_p_mito": rng.beta(2, 30, size=n_cells),
            "log1p_grna_n_umis": np.log1p(grna_nonzero * rng.gamma(5.0, 10.0, size=n_cells)),
            "cell_cycle_s": rng.normal(size=n_cells),
            "cell_cycle_g2m": rng.normal(size=n_cells),
            "non_ntc_guides_per_cell": targeting.astype(float),
            "log1p_non_ntc_guides_per_cell": np.log1p(targeting),
            "grna_n_nonzero_assign": grna_nonzero.astype(float),
            "log1p_grna_n_nonzero_assign": np.log1p(grna_nonzero),
        },
        index=pd.Index([f"cell_{i + 1}" for i in range(n_cells)]),
    )
    model_cols = [
        "batch",
        "log1p_response_n_umis",
        "log1p_response_n_nonzero",
        "response_p_mito",
        "log1p_grna_n_umis",
        "cell_cycle_s",
        "cell_cycle_g2m",
        "log1p_non_ntc_guides_per_cell",
        "log1p_grna_n_nonzero_assign",
    ]
    C, C_names = encode_covariates(covar, columns=model_cols)  # 1 + 3 + 8 = 12 columns

    # CLR program usages: batch shifts, a burden term and noise (the CLR transform centres rows).
    burden = (np.log1p(targeting) - np.log1p(targeting).mean()) / np.log1p(targeting).std()
    logits = (
        rng.normal(size=(n_batches, n_programs))[batch] * 0.3
        + np.tanh(burden)[:, None] * rng.normal(0, 0.2, size=n_programs)
        + rng.normal(size=(n_cells, n_programs))
    )
    Y = logits - logits.mean(axis=1, keepdims=True)

    guide_names = np.array(
        [f"T{t}_g{j}" for t in range(n_targets) for j in (1, 2)]
        + [f"NTC_g{j}" for j in range(n_ntc)],
        dtype=object,
    )
    guide2gene = {g: g.split("_")[0] for g in guide_names[:n_target_guides]}
    guide2gene.update({g: "non-targeting" for g in guide_names[n_target_guides:]})
    units = {}
    for g in guide_names[:n_target_guides]:
        units.setdefault(guide2gene[g], []).append(str(g))
    units = {t: units[t] for t in sorted(units)}
    return {
        "Y": Y,
        "response_names": np.array([f"program_{j}" for j in range(n_programs)], dtype=object),
        "response_kind": "programs",
        "C": C,
        "C_names": C_names,
        "covar_df_raw": covar,
        "batch_raw": covar["batch"].to_numpy(),
        "guides": guides,
        "guide_names": guide_names,
        "guide2gene": guide2gene,
        "units": units,
        "ntc_guides": [str(g) for g in guide_names[n_target_guides:]],
        "cell_names": np.asarray(covar.index, dtype=object),
    }


# ---------------------------------------------------------------------- memory
class PeakRSS:
    """Samples the summed RSS of this process and its children every ``interval`` seconds."""

    def __init__(self, interval=0.05):
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        proc = psutil.Process()
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        self.peak = max(self.peak, total)

    def _run(self):
        while not self._stop.is_set():
            try:
                self._sample()
            except Exception:  # noqa: BLE001 - best effort
                pass
            self._stop.wait(self.interval)

    def __enter__(self):
        if psutil is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if psutil is not None:
            self._thread.join()
            self._sample()


def maxrss_mb():
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return self_kb / 1024, child_kb / 1024


# ---------------------------------------------------------------------- runs
def subset_inputs(inputs: dict, n_units: int) -> dict:
    sub = dict(inputs)
    sub["units"] = dict(list(inputs["units"].items())[:n_units])
    return sub


def end_to_end(inputs, n_units, n_ntc_groups, B, n_jobs, progress=False):
    from sklcrt.runners import fit_null_model, run_gene_loop, run_ntc_groups

    timings = {}
    t0 = time.perf_counter()
    statistic = fit_null_model(inputs)
    timings["null model fit"] = time.perf_counter() - t0
    common = dict(
        statistic=statistic,
        n_resamples=B,
        n_resamples_adaptive=0,
        random_state=0,
        n_jobs=n_jobs,
        progress=progress,
        **RESAMPLING,
    )
    t0 = time.perf_counter()
    gene = run_gene_loop(subset_inputs(inputs, n_units), **common)
    timings["gene loop"] = time.perf_counter() - t0
    ntc_inputs = dict(inputs)
    ntc_inputs["ntc_guides"] = inputs["ntc_guides"][: 2 * n_ntc_groups]
    t0 = time.perf_counter()
    ntc = run_ntc_groups(ntc_inputs, group_size=2, **common)
    timings["NTC groups"] = time.perf_counter() - t0
    return timings, gene, ntc


def stage_times(inputs, n_units, B):
    """Per-unit time of each stage, timing the components the runner calls, in one process."""
    from sklearn.base import clone

    from sklcrt._random import as_generator, seed_sequence
    from sklcrt.crt import CRTTest
    from sklcrt.execution import _test_unit, _unit_inputs
    from sklcrt.inputs import unit_treatment
    from sklcrt.propensity import NewtonLogisticRegression, fit_propensity
    from sklcrt.pvalues import compute_pvalues
    from sklcrt.resampling import resolve_resampling
    from sklcrt.runners import covariate_values, fit_null_model
    from sklcrt.strata import factorize_batch

    statistic = fit_null_model(inputs)
    inputs = {**inputs, **_unit_inputs(inputs)}  # as run_units passes them: the guides as CSC
    template = CRTTest(n_resamples=B, n_resamples_adaptive=0, **RESAMPLING)
    batch, burden = covariate_values(inputs, template)
    if batch is not None:  # as run_units passes them: codes of the sorted labels
        batch = factorize_batch(batch, "batch")[0]
    config = resolve_resampling(RESAMPLING["resampling_method"], RESAMPLING["resampling_kwargs"])
    C = inputs["C"]
    cols = np.arange(statistic.n_responses_)
    names = list(inputs["units"])[:n_units]
    acc = dict.fromkeys(
        ["propensity", "strata", "sampling", "statistics", "p-values", "whole unit"], 0.0
    )

    def one_unit(name):
        guides = inputs["units"][name]
        x = unit_treatment(inputs, guides)
        t0 = time.perf_counter()
        p_hat = fit_propensity(NewtonLogisticRegression(), C, x)
        t1 = time.perf_counter()
        strata = clone(config.encoder).fit_transform(p_hat, batch=batch, burden=burden)
        t2 = time.perf_counter()
        rng = as_generator(seed_sequence(0, name))
        R = clone(config.sampler).fit(x, strata=strata).sample(B, random_state=rng)
        t3 = time.perf_counter()
        obs = statistic.observed(x, cols)
        null = statistic.evaluate(R, cols)
        t4 = time.perf_counter()
        compute_pvalues(obs["statistic"], null, alternative="two-sided", method="empirical")
        t5 = time.perf_counter()
        _test_unit(
            template,
            inputs,
            statistic,
            name,
            name,
            guides,
            cols,
            batch,
            burden,
            seed_sequence(0, name),
            7,
        )
        t6 = time.perf_counter()
        for key, dt in zip(
            acc, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5), strict=True
        ):
            acc[key] += dt

    one_unit(names[0])  # warm up (not counted)
    acc = dict.fromkeys(acc, 0.0)
    with threadpool_limits(1):  # as in the joblib workers (loky: cores // n_jobs threads)
        for name in names:
            one_unit(name)
    per_unit = {k: v / len(names) for k, v in acc.items()}
    parts = sum(v for k, v in per_unit.items() if k != "whole unit")
    per_unit["bookkeeping"] = max(0.0, per_unit["whole unit"] - parts)
    return per_unit


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, default=200_000)
    parser.add_argument("--units", type=int, default=FULL_UNITS, help="targeting units to run")
    parser.add_argument("--n-resamples", type=int, default=1_023)
    parser.add_argument("--n-jobs", type=int, default=2)
    parser.add_argument("--stage-units", type=int, default=20, help="units for the stage table")
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--profile", metavar="FILE", help="cProfile a 1-process run instead")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    inputs = make_inputs(n_cells=args.n_cells)
    t_make = time.perf_counter() - t0
    n_units = min(args.units, FULL_UNITS)
    n_ntc = max(1, round(FULL_NTC_GROUPS * n_units / FULL_UNITS))
    total_units = FULL_UNITS + FULL_NTC_GROUPS
    ran_units = n_units + n_ntc
    scale = total_units / ran_units
    sizes = np.diff(inputs["guides"].indptr)
    print(f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs")
    print(
        f"W1: {args.n_cells:,} cells, {inputs['C'].shape[1]} covariate columns, "
        f"{inputs['Y'].shape[1]} programs, {len(inputs['guide_names']):,} guides "
        f"(mean {sizes.mean():.1f}/cell), B = {args.n_resamples:,}, n_jobs = {args.n_jobs}; "
        f"inputs built in {t_make:.1f} s"
    )

    if args.profile:
        from sklcrt.runners import fit_null_model

        statistic = fit_null_model(inputs)
        prof = cProfile.Profile()
        prof.enable()
        with threadpool_limits(1):  # as in the joblib workers
            end_to_end(dict(inputs), n_units, n_ntc, args.n_resamples, 1)
        prof.disable()
        del statistic
        prof.dump_stats(args.profile)
        st = pstats.Stats(prof)
        st.sort_stats("cumulative").print_stats(30)
        st.sort_stats("tottime").print_stats(30)
        return

    if not args.skip_e2e:
        with PeakRSS() as peak:
            timings, gene, ntc = end_to_end(
                inputs, n_units, n_ntc, args.n_resamples, args.n_jobs, args.progress
            )
        total = sum(timings.values())
        per_units = timings["gene loop"] + timings["NTC groups"]
        note = "" if scale == 1 else f"  [ran {ran_units} of {total_units} units]"
        print(f"end to end: {total:.1f} s{note}")
        for key, value in timings.items():
            print(f"  {key:18s} {value:8.1f} s")
        if scale != 1:
            est = timings["null model fit"] + per_units * scale
            print(
                f"  extrapolated to {total_units} units: {est:.0f} s "
                f"({est / 60:.1f} min; units part x{scale:.1f})"
            )
        self_mb, child_mb = maxrss_mb()
        peak_mb = peak.peak / 2**20 if psutil is not None else float("nan")
        print(
            f"peak RSS: process tree {peak_mb:.0f} MB (sampled); ru_maxrss self {self_mb:.0f} MB, "
            f"largest reaped child {child_mb:.0f} MB"
        )
        print(
            f"pairs: {len(gene):,} targeting + {len(ntc):,} NTC; "
            f"NTC frac p<0.05 {np.mean(ntc['pvalue'] < 0.05):.3f}"
        )

    if args.stage_units:
        per_unit = stage_times(inputs, args.stage_units, args.n_resamples)
        whole = per_unit["whole unit"]
        print(
            f"per-unit stages (1 process, mean of {args.stage_units} units; x{total_units} "
            f"units / {args.n_jobs} jobs):"
        )
        for key in ("propensity", "strata", "sampling", "statistics", "p-values", "bookkeeping"):
            v = per_unit[key]
            print(
                f"  {key:12s} {v * 1e3:8.1f} ms/unit {100 * v / whole:5.1f}%  "
                f"-> {v * total_units / args.n_jobs:7.1f} s"
            )
        print(
            f"  {'unit total':12s} {whole * 1e3:8.1f} ms/unit         -> "
            f"{whole * total_units / args.n_jobs:7.1f} s"
        )


if __name__ == "__main__":
    main()
