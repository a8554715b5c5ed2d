"""How cost grows: time of the W1 per-unit work against cells, units and resamples.

Run ``python benchmarks/bench_scaling.py``. Uses the W1 inputs of ``bench_w1_programs.py``
(100 OLS program responses, 12 covariate columns, ``stratified_perm`` with batch and burden
bins) in one process (``n_jobs=1``, BLAS one thread) and times ``run_gene_loop``:

- against cells: 25k, 50k, 100k, 200k cells (10 units, B = 1,023; the library keeps ~1,000
  treated cells per unit at 200k, so treated cells grow with N too),
- against units: 5, 10, 20, 40 units (200k cells... or ``--n-cells``),
- against B: 255, 511, 1,023, 2,047 resamples (10 units).

Each table ends with the least-squares line ``time = a + b * x`` and the ratio of the largest
to the smallest time next to the ratio of x: linear cost shows as a small intercept and
similar ratios.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_w1_programs import RESAMPLING, make_inputs, subset_inputs  # noqa: E402

from sklcrt.runners import fit_null_model, run_gene_loop  # noqa: E402


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
    args = parser.parse_args(argv)

    def best(fn):
        return min(fn() for _ in range(args.repeats))

    with threadpool_limits(1):
        print(f"against cells (units = {args.units}, B = 1,023)")
        xs, ts = [], []
        for n in (25_000, 50_000, 100_000, 200_000):
            inputs = make_inputs(n_cells=n, n_targets=2_000, n_ntc_groups=2)
            stat = fit_null_model(inputs)
            xs.append(n)
            ts.append(best(lambda inputs=inputs, stat=stat: run(inputs, stat, args.units, 1023)))
        table("cells", xs, ts)

        inputs = make_inputs(n_cells=args.n_cells, n_targets=2_000, n_ntc_groups=2)
        stat = fit_null_model(inputs)
        print(f"against units ({args.n_cells:,} cells, B = 1,023)")
        xs = [5, 10, 20, 40]
        table("units", xs, [best(lambda u=u: run(inputs, stat, u, 1023)) for u in xs])
        print(f"against B ({args.n_cells:,} cells, {args.units} units)")
        xs = [255, 511, 1023, 2047]
        table("B", xs, [best(lambda b=b: run(inputs, stat, args.units, b)) for b in xs])


if __name__ == "__main__":
    main()
