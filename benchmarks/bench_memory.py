"""Bounded memory (issue 12): peak RSS and time per unit against ``memory_budget_mb``.

Run ``python benchmarks/bench_memory.py``. A simulated high-MOI screen of 100,000 cells x 100
genes (``simulate_screen`` defaults otherwise: 20 targets of 2 guides, 20 NTC guides, MOI 8, so
a unit of two guides treats about a quarter of the cells) is tested with the recommended
high-MOI settings: ``resampling_method="stratified_perm"``,
``resampling_kwargs=RECOMMENDED_HIGH_MOI_KWARGS``, the covariates of
``SCEPTRE_HIGH_MOI_COVARIATES`` that the screen has, 499 first-stage and 4,999 second-stage
resamples (NB score, counts). Two workloads:

- ``ntc``: the first ``--ntc-units`` NTC groups of two guides (every gene), the calibration
  check: time per NTC unit;
- ``target``: one target with an effect on its own gene, about 24 % of the cells treated, whose
  gene (at least) gets the 4,999-resample second stage: the case that peaked at 6.3 GB.

Each ``memory_budget_mb`` (the default, and a large value that makes every unit one block, the
behaviour before the budget) runs in its own process (``n_jobs=1``, so the process is the whole
tree), which reports its peak RSS (``ru_maxrss``, and ``VmHWM`` from ``/proc``) and its RSS
before the units (screen loaded, null model fitted): the difference is what the units add.
The screen is simulated once and cached in ``--cache`` (an .h5ad).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings

DEFAULT_BUDGET = None  # read from CRTTest below
LARGE_BUDGET = 10**6  # MiB: one block per unit, as before the budget existed


def _rss_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _peak_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return max(own, kids)


def simulate(cache: str, n_cells: int, n_genes: int) -> None:
    from sklcrt.datasets import simulate_screen

    adata = simulate_screen(n_cells=n_cells, n_genes=n_genes, response="counts", random_state=0)
    adata.write_h5ad(cache)


def child(args) -> dict:
    """One budget, one workload, in this process; returns the figures."""
    import anndata as ad
    import numpy as np
    import pandas as pd

    from sklcrt.inputs import SCEPTRE_HIGH_MOI_COVARIATES, prepare_crt_inputs
    from sklcrt.resampling import RECOMMENDED_HIGH_MOI_KWARGS
    from sklcrt.runners import build_test, fit_null_model, make_ntc_groups, run_unit

    warnings.simplefilter("ignore")
    adata = ad.read_h5ad(args.cache)
    present = [c for c in SCEPTRE_HIGH_MOI_COVARIATES if c in adata.obsm["covar"].columns]
    inputs = prepare_crt_inputs(adata, response="counts", covariates=present)
    test = build_test(
        resampling_method="stratified_perm",
        resampling_kwargs=dict(RECOMMENDED_HIGH_MOI_KWARGS),
        n_resamples=499,
        n_resamples_adaptive=4999,
        memory_budget_mb=args.budget,
    )
    statistic = fit_null_model(inputs)
    before = _rss_mb("VmRSS")
    start = time.perf_counter()
    if args.workload == "ntc":
        groups = make_ntc_groups(inputs["ntc_guides"], 2, random_state=0)
        names = list(groups)[: args.ntc_units]
        res = pd.concat(
            [
                run_unit(
                    inputs,
                    name,
                    guides=groups[name],
                    test=test,
                    statistic=statistic,
                    random_state=0,
                    progress=False,
                )  # fmt: skip
                for name in names
            ]
        )
        n_units = len(names)
    else:
        target = _target_with_effect(adata.uns["true_effects"], inputs)
        res = run_unit(
            inputs, target, test=test, statistic=statistic, random_state=0, progress=False
        )
        n_units = 1
    elapsed = time.perf_counter() - start
    treated = res["n_treated"].to_numpy()
    second = int(np.sum(res["n_resamples"].to_numpy() > 499))
    return {
        "workload": args.workload,
        "budget_mb": args.budget,
        "seconds": elapsed,
        "units": n_units,
        "seconds_per_unit": elapsed / max(n_units, 1),
        "treated_fraction": float(treated.max() / adata.n_obs),
        "second_stage_pairs": second,
        "rss_before_units_mb": before,
        "peak_rss_mb": _peak_mb(),
        "vmhwm_mb": _rss_mb("VmHWM"),
    }


def _target_with_effect(effects, inputs) -> str:
    """The first target with an effect on a gene (a unit of about 24 % of the cells)."""
    genes = effects[(effects["response_kind"] == "gene") & (effects["effect"] != 0)]
    return next(t for t in genes["grna_target"].astype(str) if t in inputs["units"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-cells", type=int, default=100_000)
    parser.add_argument("--n-genes", type=int, default=100)
    parser.add_argument("--cache", default="/tmp/sklcrt_bench_memory.h5ad")
    parser.add_argument("--budgets", type=float, nargs="*", default=None)
    parser.add_argument("--workloads", nargs="*", default=["target", "ntc"])
    parser.add_argument("--ntc-units", type=int, default=3, help="NTC groups timed")
    parser.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.workload is not None:  # a child run
        print(json.dumps(child(args)))
        return 0

    from sklcrt.crt import CRTTest

    budgets = args.budgets or [CRTTest().get_params()["memory_budget_mb"], LARGE_BUDGET]
    if not os.path.exists(args.cache):
        t = time.perf_counter()
        simulate(args.cache, args.n_cells, args.n_genes)
        print(f"simulated {args.n_cells} cells x {args.n_genes} genes in "
              f"{time.perf_counter() - t:.0f} s -> {args.cache}")  # fmt: skip
    print(f"{'workload':8} {'budget MiB':>10} {'treated':>8} {'2nd-stage':>9} {'s/unit':>8} "
          f"{'RSS before':>10} {'peak RSS':>9}")  # fmt: skip
    for workload in args.workloads:
        for budget in budgets:
            cmd = [sys.executable, __file__, "--cache", args.cache, "--budget", str(budget),
                   "--workload", workload, "--ntc-units", str(args.ntc_units)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{workload:8} {budget:>10g} failed:\n{out.stderr[-2000:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{workload:8} {budget:>10g} {r['treated_fraction']:>8.1%} "
                  f"{r['second_stage_pairs']:>9d} {r['seconds_per_unit']:>8.1f} "
                  f"{r['rss_before_units_mb']:>8.0f}MB {r['peak_rss_mb']:>7.0f}MB",
                  flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
