"""Time the samplers: B resamples of N cells with m treated in about 100 strata.

Run ``python benchmarks/bench_sampling.py`` (defaults: N = 200,000, m = 2,000, B = 1,000,
4 batches x 5 propensity bins x 5 burden bins = 100 strata). Prints, for each sampler, the best and
median wall time of ``sample`` over several repeats, the stored entries and their rate; plus the
time of the stratum encoding itself.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from sklcrt.samplers import BernoulliSampler, PermutationSampler, StratifiedPermutationSampler
from sklcrt.strata import StratumEncoder


def make_data(n_cells: int, n_treated: int, seed: int = 0) -> dict:
    """Cells in 4 batches with a continuous burden; propensity rises with burden.

    The treated cells are drawn with probability proportional to ``p_hat``, and ``p_hat`` is
    rescaled so that it sums to ``n_treated``.
    """
    rng = np.random.default_rng(seed)
    batch = rng.choice(["b0", "b1", "b2", "b3"], size=n_cells)
    burden = np.log1p(rng.gamma(2.0, 4.0, size=n_cells))
    logit = rng.normal(size=n_cells) + 0.8 * (burden - burden.mean())
    weight = np.exp(logit)
    p_hat = np.clip(weight / weight.sum() * n_treated, 1e-6, 1.0)
    x = np.zeros(n_cells, dtype=bool)
    x[rng.choice(n_cells, n_treated, replace=False, p=weight / weight.sum())] = True
    return dict(x=x, p_hat=p_hat, batch=batch, burden=burden)


def timed(fn, repeats: int) -> tuple[float, float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), float(np.median(times)), out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, default=200_000)
    parser.add_argument("--n-treated", type=int, default=2_000)
    parser.add_argument("--n-resamples", type=int, default=1_000)
    parser.add_argument("--n-bins", type=int, default=5, help="propensity bins")
    parser.add_argument("--n-burden-bins", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    data = make_data(args.n_cells, args.n_treated)
    encoder = StratumEncoder(n_bins=args.n_bins, n_burden_bins=args.n_burden_bins)
    t_enc, _, strata = timed(
        lambda: encoder.fit_transform(data["p_hat"], batch=data["batch"], burden=data["burden"]),
        args.repeats,
    )
    B = args.n_resamples
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}")
    print(
        f"N = {args.n_cells:,} cells, m = {int(data['x'].sum()):,} treated, "
        f"{encoder.n_strata_} strata, B = {B:,} resamples, best/median of {args.repeats}"
    )
    print(f"{'StratumEncoder.fit_transform':34s} {t_enc * 1e3:8.1f} ms")
    print(f"{'sampler':34s} {'fit':>8s} {'best':>9s} {'median':>9s} {'nnz':>11s} {'Mnnz/s':>8s}")
    for sampler in (StratifiedPermutationSampler(), PermutationSampler(), BernoulliSampler()):
        t_fit, _, fitted = timed(
            lambda s=sampler: s.fit(data["x"], strata=strata, p_hat=data["p_hat"]), args.repeats
        )
        fitted.sample(10, random_state=0)  # warm up
        best, median, R = timed(lambda f=fitted: f.sample(B, random_state=1), args.repeats)
        print(
            f"{type(sampler).__name__:34s} {t_fit * 1e3:6.1f}ms {best * 1e3:7.1f}ms "
            f"{median * 1e3:7.1f}ms {R.nnz:11,d} {R.nnz / best / 1e6:8.1f}"
        )


if __name__ == "__main__":
    main()
