"""Engine throughput: gathered values per second of the statistic evaluation.

Run ``python benchmarks/bench_engine.py`` (defaults from issue 3: N = 200,000 cells, G = 500 OLS
responses, m = 2,000 treated cells per resample, B = 1,000 resamples; NB score on G = 100).

For a unit with ``m`` treated cells, ``B`` resamples and ``G`` responses the evaluation gathers
``B * m * G`` values. The table compares, on one core (BLAS limited to one thread):

- ``OLSStatistic.evaluate`` (the library's gather kernel),
- a naive per-resample numpy loop ``for b in range(B): Ytilde[idx_b].sum(0)``,
- the rate at which the machine streams the residual matrix from memory (``Ytilde.sum(0)`` and a
  copy), in bytes/s and values/s: the ceiling of any kernel that reads every cell's row,
- ``NBScoreStatistic.evaluate`` on a smaller G (two gathered pieces and ``rank + 2`` sums per
  response).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from sklcrt.samplers import PermutationSampler
from sklcrt.statistics import NBScoreStatistic, OLSStatistic


def best_of(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), float(np.median(times)), out


def covariates(rng, n_cells: int, n_cov: int) -> np.ndarray:
    batch = rng.integers(0, 4, size=n_cells)
    onehot = np.eye(4)[batch][:, 1:]
    numeric = rng.normal(size=(n_cells, max(0, n_cov - 3)))
    return np.column_stack([onehot, numeric])


def row(name, seconds, values, extra=""):
    rate = values / seconds
    print(f"{name:44s} {seconds * 1e3:9.1f} ms {rate / 1e9:8.3f} Gval/s  {extra}")
    return rate


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, default=200_000)
    parser.add_argument("--n-responses", type=int, default=500)
    parser.add_argument("--n-treated", type=int, default=2_000)
    parser.add_argument("--n-resamples", type=int, default=1_000)
    parser.add_argument("--n-covariates", type=int, default=12)
    parser.add_argument("--nb-responses", type=int, default=100)
    parser.add_argument("--naive-resamples", type=int, default=200, help="B for the naive loop")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-nb", action="store_true")
    args = parser.parse_args(argv)

    N, G, m, B = args.n_cells, args.n_responses, args.n_treated, args.n_resamples
    rng = np.random.default_rng(0)
    C = covariates(rng, N, args.n_covariates)
    Y = rng.normal(size=(N, G)) + C[:, :1]
    x = np.zeros(N, dtype=bool)
    x[rng.choice(N, m, replace=False)] = True

    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}, ")
    print(f"{os.cpu_count()} logical CPUs; everything below runs on one core (BLAS 1 thread)")
    print(f"N = {N:,} cells, G = {G} responses, m = {m:,} treated, B = {B:,} resamples")

    with threadpool_limits(1):
        t0 = time.perf_counter()
        ols = OLSStatistic().fit(Y, C)
        t_fit = time.perf_counter() - t0
        del Y
        R = PermutationSampler().fit(x).sample(B, random_state=1)
        ols.evaluate(R[:10])  # warm up
        print(f"OLS null fit: {t_fit:.2f} s; resample matrix nnz {R.nnz:,}")
        print(f"{'what':44s} {'time':>12s} {'rate':>15s}")

        Yt = ols.residuals_
        values = B * m * G
        t_ols, _, _ = best_of(lambda: ols.evaluate(R), args.repeats)
        r_ols = row("OLSStatistic.evaluate (all responses)", t_ols, values)
        cols = np.arange(0, G, 2)
        t_sub, _, _ = best_of(lambda: ols.evaluate(R, cols), args.repeats)
        row("OLSStatistic.evaluate (half the responses)", t_sub, B * m * cols.size)

        Bn = min(args.naive_resamples, B)
        idx = [R.indices[R.indptr[b] : R.indptr[b + 1]] for b in range(Bn)]

        def naive():
            out = np.empty((Bn, G))
            for b in range(Bn):
                out[b] = Yt[idx[b]].sum(0)
            return out

        t_naive, _, out_naive = best_of(naive, args.repeats)
        r_naive = row(f"naive loop Ytilde[idx_b].sum(0) (B={Bn})", t_naive, Bn * m * G)
        check = np.asarray(R[:Bn] @ Yt)
        assert np.allclose(out_naive, check)

        t_sum, _, _ = best_of(lambda: Yt.sum(0), args.repeats)
        r_sum = row("stream: Ytilde.sum(0)", t_sum, Yt.size, f"{Yt.nbytes / t_sum / 1e9:.2f} GB/s")
        t_copy, _, _ = best_of(lambda: Yt.copy(), args.repeats)
        row(
            "stream: Ytilde.copy()", t_copy, Yt.size, f"{2 * Yt.nbytes / t_copy / 1e9:.2f} GB/s r+w"
        )
        print(
            f"OLS gather / naive = {r_ols / r_naive:.1f}x; OLS gather / stream sum = "
            f"{r_ols / r_sum:.1f}x (>1: each streamed cell row feeds several resamples)"
        )
        target = 1e9
        print(
            f"target 1e9 gathered values/s/core: {'MET' if r_ols >= target else 'MISSED'} "
            f"({r_ols / 1e9:.2f}e9)"
        )

        if not args.skip_nb:
            Gn = args.nb_responses
            lib = np.exp(0.3 * C[:, 3] if C.shape[1] > 3 else np.zeros(N))
            mu = lib[:, None] * rng.gamma(2.0, 1.0, size=(1, Gn))
            counts = sp.csr_matrix(rng.negative_binomial(5, 5 / (5 + mu)).astype(np.int32))
            t0 = time.perf_counter()
            nb = NBScoreStatistic().fit(counts, C)
            t_nbfit = time.perf_counter() - t0
            nb.evaluate(R[:10])
            t_nb, _, _ = best_of(lambda: nb.evaluate(R), args.repeats)
            print(f"NB null fit (G={Gn}): {t_nbfit:.2f} s, rank {nb.rank_}")
            row(f"NBScoreStatistic.evaluate (G={Gn})", t_nb, B * m * Gn, "(resample x response)")
            row(
                f"  counting all {nb.rank_ + 2} sums per response",
                t_nb,
                B * m * Gn * (nb.rank_ + 2),
            )


if __name__ == "__main__":
    main()
