"""How cost grows: time of the per-unit work against cells, units, resamples and genes.

Run ``python benchmarks/bench_scaling.py``. Uses the W1 inputs of ``bench_w1_programs.py``
(100 OLS program responses, 12 covariate columns, ``stratified_perm`` with batch and burden
bins) in one process (``n_jobs=1``, BLAS one thread) and times ``run_gene_loop``:

- against cells: 25k, 50k, 100k, 200k cells (10 units, B = 1,023; the library keeps ~1,000
  treated cells per unit at 200k, so treated cells grow with N too),
- against units: 5, 10, 20, 40 units (200k cells... or ``--n-cells``),
- against B: 255, 511, 1,023, 2,047 resamples (10 units);
- against genes, on W3's counts screen (``bench_w3_screen.py``'s simulator, 20,000 cells, 60
  targets; ``--gene-cells`` to change): 250, 500, 1,000, 2,000, 4,000 genes, timing the
  per-gene NB null fits (``fit_null_model``) and a trans analysis of 5 targets against every
  gene (``discovery_analysis``, CRT, B = 499, no second stage), whose pairs grow with the
  genes. The NB statistic keeps the pieces of all genes while they fit in its ``cache_bytes``
  (512 MB: cells x genes <= 2**25, up to about 1,600 genes at 20,000 cells) and builds a unit's
  otherwise, as at W3's 100,000 x 1,000; the table says which, per row.

``--axes`` picks the tables (default all: ``cells units B genes``).
Each table ends with the least-squares line ``time = a + b * x`` and the ratio of the largest
to the smallest time next to the ratio of x: linear cost shows as a small intercept and
similar ratios.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_w1_programs import RESAMPLING, make_inputs, subset_inputs  # noqa: E402

from sklcrt.runners import discovery_analysis, fit_null_model, run_gene_loop  # noqa: E402

AXES = ("cells", "units", "B", "genes")
GENES = (250, 500, 1_000, 2_000, 4_000)
TRANS_TARGETS = 5


def run(inputs, statistic, n_units, B):
    start = time.perf_counter()
    run_gene_loop(
        subset_inputs(inputs, n_units),
        statistic=statistic,
        n_resamples=B,
        n_resamples_adaptive=0,
        random_state=0,
        n_jobs=1,
        progress=False,
        **RESAMPLING,
    )
    return time.perf_counter() - start


def genes_screen(n_cells: int, n_genes: int, cache: str):
    """W3's screen with ``n_genes`` genes (cached), its inputs and a trans pair set."""
    import pandas as pd
    from bench_w3_screen import load_inputs, make_screen

    screen = argparse.Namespace(cells=n_cells, genes=n_genes, targets=60, cache=cache)
    inputs, _, _ = load_inputs(make_screen(screen))
    targets = sorted(inputs["units"])[:TRANS_TARGETS]
    genes = list(map(str, inputs["response_names"]))
    pairs = pd.DataFrame(
        {"response_id": genes * len(targets), "grna_target": np.repeat(targets, len(genes))}
    )
    return inputs, pairs


def trans_analysis(inputs, statistic, pairs):
    start = time.perf_counter()
    discovery_analysis(
        inputs,
        pairs,
        statistic=statistic,
        resampling_method="bernoulli_index",
        n_resamples=499,
        n_resamples_adaptive=0,
        random_state=0,
        n_jobs=1,
        progress=False,
    )
    return time.perf_counter() - start


def table(name, xs, ts):
    xs, ts = np.asarray(xs, float), np.asarray(ts, float)
    b, a = np.polyfit(xs, ts, 1)
    print(f"{name:>10s} {'time (s)':>10s} {'s per x':>12s}")
    for x, t in zip(xs, ts, strict=True):
        print(f"{x:10,.0f} {t:10.2f} {t / x:12.3e}")
    print(
        f"  fit: time = {a:.3f} + {b:.3e} * {name}; t_max/t_min = {ts[-1] / ts[0]:.2f} for "
        f"x_max/x_min = {xs[-1] / xs[0]:.2f}"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, default=200_000)
    parser.add_argument("--units", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--axes", nargs="+", choices=AXES, default=list(AXES))
    parser.add_argument("--gene-cells", type=int, default=20_000, help="cells of the genes axis")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "sklcrt_w3"))
    args = parser.parse_args(argv)

    def best(fn):
        return min(fn() for _ in range(args.repeats))

    with threadpool_limits(1):
        if "cells" in args.axes:
            print(f"against cells (units = {args.units}, B = 1,023)")
            xs, ts = [], []
            for n in (25_000, 50_000, 100_000, 200_000):
                inputs = make_inputs(n_cells=n, n_targets=2_000, n_ntc_groups=2)
                stat = fit_null_model(inputs)
                xs.append(n)
                ts.append(best(lambda i=inputs, s=stat: run(i, s, args.units, 1023)))
            table("cells", xs, ts)

        if "units" in args.axes or "B" in args.axes:
            inputs = make_inputs(n_cells=args.n_cells, n_targets=2_000, n_ntc_groups=2)
            stat = fit_null_model(inputs)
        if "units" in args.axes:
            print(f"against units ({args.n_cells:,} cells, B = 1,023)")
            xs = [5, 10, 20, 40]
            table("units", xs, [best(lambda u=u: run(inputs, stat, u, 1023)) for u in xs])
        if "B" in args.axes:
            print(f"against B ({args.n_cells:,} cells, {args.units} units)")
            xs = [255, 511, 1023, 2047]
            table("B", xs, [best(lambda b=b: run(inputs, stat, args.units, b)) for b in xs])

        if "genes" in args.axes:
            fits, analyses, kept = [], [], []
            for n_genes in GENES:
                inputs, pairs = genes_screen(args.gene_cells, n_genes, args.cache)
                timed = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    stat = fit_null_model(inputs)
                    timed.append(time.perf_counter() - t0)
                fits.append(min(timed))
                kept.append(stat.pieces_cached_)
                analyses.append(best(lambda i=inputs, s=stat, p=pairs: trans_analysis(i, s, p)))
            print(f"against genes: NB null fits (W3 screen, {args.gene_cells:,} cells)")
            table("genes", GENES, fits)
            print(
                f"against genes: CRT analysis of {TRANS_TARGETS} targets x every gene "
                f"({args.gene_cells:,} cells, B = 499)"
            )
            table("genes", GENES, analyses)
            print(
                "  pieces of all genes kept: "
                + ", ".join(
                    f"{g:,} {'yes' if k else 'no'}" for g, k in zip(GENES, kept, strict=True)
                )
            )


if __name__ == "__main__":
    main()
