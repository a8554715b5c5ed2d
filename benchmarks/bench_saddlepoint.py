"""Saddlepoint p-values (issue 16): accuracy against exact references and speed against resampling.

Run ``OMP_NUM_THREADS=1 python benchmarks/bench_saddlepoint.py`` from the repository root
(``--no-real`` skips the Gasperini part, which needs ``../shared/data``). Printed:

1. accuracy: relative error of :func:`sklcrt.saddlepoint.saddlepoint_pvalues` against exact
   laws (integer score pieces: convolutions of per-stratum subset-sum distributions, and of
   Bernoulli terms) and against exponentially tilted importance sampling (continuous pieces,
   Bernoulli CRT), by p-value range;
2. speed: time per (unit, response) pair of the saddlepoint against the resampling path on the
   same null model (499 resamples for every response, 4,999 more where p <= 0.02), on a
   simulated Gasperini-sized unit (40k cells, NB score, 160 strata, ~1,000 treated);
3. Gasperini: a few positive-control and NTC pairs, saddlepoint against 20,000 stratified
   permutations of the same score sum;
4. the whole analysis side by side (``--pipeline``, on by default): calibration (every NTC
   group x every gene) + power (positive controls) + discovery (the discovery pairs) on
   Gasperini with the NB score, and on simulated Gasperini-sized program usages with OLS,
   ``pvalue_method="saddlepoint"`` against the adaptive resampling path (499 + 4,999 resamples,
   skew-normal tail) on the same fitted null model, one core, best of 3 (interleaved), with the
   calibration and power figures of both (``--no-simulated``: Gasperini only).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import special

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_saddlepoint import (  # noqa: E402  (the exact references of the tests)
    _exact_bernoulli,
    _exact_conditional,
    _moments,
    _stratified_design,
    _tails,
)

from sklcrt.saddlepoint import saddlepoint_pvalues  # noqa: E402
from sklcrt.samplers import StratifiedPermutationSampler  # noqa: E402
from sklcrt.statistics import NBScoreStatistic  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RANGES = [(1e-3, 1.0), (1e-6, 1e-3), (1e-9, 1e-6), (1e-12, 1e-9), (1e-16, 1e-12)]


def _grid(dist, offset, z_max=9.0):
    mean, sd = _moments(dist, offset)
    for side in (1, -1):
        for z in np.linspace(0.5, z_max, 18):
            s = float(np.rint(mean + side * z * sd))
            up, lo = _tails(dist, offset, s)
            yield s, ("greater", up) if side > 0 else ("less", lo)


def accuracy(rng):
    rows = []
    cases = {
        "300 strata of 2, m_s=1": ([2] * 300, lambda n: 1),
        "200 strata of 3-8, m_s=n/2": (list(rng.integers(3, 9, 200)), lambda n: n // 2),
        "50 strata of 20, m_s=3": ([20] * 50, lambda n: 3),
        "40 strata of 120, m_s=2": ([120] * 40, lambda n: 2),
        "1 stratum of 3000, m=5": ([3000], lambda n: 5),
        "1 stratum of 400, m=60": ([400], lambda n: 60),
        "4 mixed strata": ([40, 300, 800, 6], lambda n: max(1, n // 30)),
    }
    for name, (sizes, m_of) in cases.items():
        codes, x = _stratified_design(rng, sizes, m_of)
        a = rng.integers(0, 60, codes.size).astype(float)
        a[rng.random(codes.size) < 0.3] = 0.0
        dist, offset = _exact_conditional(a, codes, x)
        for s, (alt, exact) in _grid(dist, offset):
            p, _ = saddlepoint_pvalues(a, [s], x=x, strata=codes, alternative=alt)
            rows.append((f"perm: {name}", exact, p[0]))
    n = 400
    a = rng.integers(-15, 16, n).astype(float)
    p_hat = rng.uniform(0.005, 0.3, n)
    dist, offset = _exact_bernoulli(a, p_hat)
    for s, (alt, exact) in _grid(dist, offset):
        p, _ = saddlepoint_pvalues(a, [s], p_hat=p_hat, alternative=alt)
        rows.append(("CRT: 400 cells, integer a", exact, p[0]))
    # Continuous, skewed pieces: tilted importance sampling (relative SE ~1%).
    n, B = 600, 40_000
    a = rng.gamma(0.5, 1.0, n) - 0.3
    p_hat = rng.uniform(0.01, 0.15, n)
    theta = np.log(p_hat / (1 - p_hat))
    mean, sd = p_hat @ a, np.sqrt((p_hat * (1 - p_hat)) @ a**2)
    for z in np.linspace(1, 10, 10):
        s = mean + z * sd
        lo, hi = 0.0, 50.0
        for _ in range(100):
            t = 0.5 * (lo + hi)
            lo, hi = (t, hi) if special.expit(theta + t * a) @ a < s else (lo, t)
        q = special.expit(theta + t * a)
        K = np.sum(np.log1p(-p_hat + p_hat * np.exp(t * a)))
        S = (rng.random((B, n)) < q) @ a
        ref = np.mean(np.where(S >= s, np.exp(K - t * S), 0.0))
        p, _ = saddlepoint_pvalues(a, [s], p_hat=p_hat, alternative="greater")
        rows.append(("CRT: 600 cells, gamma a (IS)", ref, p[0]))

    print("\n1. accuracy: |p_saddlepoint / p_reference - 1| by reference p-value range")
    print(f"{'case':34s} {'p range':>17s} {'n':>3s} {'median':>8s} {'max':>8s}")
    for name in dict.fromkeys(r[0] for r in rows):
        for lo, hi in RANGES:
            err = [abs(p / e - 1) for c, e, p in rows if c == name and lo <= e < hi]
            if err:
                print(
                    f"{name:34s} [{lo:.0e}, {hi:.0e}) {len(err):3d} {np.median(err):8.4f} "
                    f"{np.max(err):8.4f}"
                )


def speed(rng, G=50):
    n, m = 40_000, 1_000
    C = rng.normal(size=(n, 3))
    mu = np.exp(rng.normal(0, 1, G))[None, :] * np.exp(0.3 * C[:, :1])
    Y = rng.negative_binomial(2.0, 2.0 / (2.0 + mu))
    stat = NBScoreStatistic().fit(Y, C)
    codes = rng.integers(0, 160, n)
    x = np.zeros(n)
    x[rng.choice(n, m, replace=False)] = 1
    sampler = StratifiedPermutationSampler().fit(x, strata=codes)

    t0 = time.perf_counter()
    a = stat.score_pieces()
    t_pieces = time.perf_counter() - t0
    t0 = time.perf_counter()
    p_sp, methods = saddlepoint_pvalues(a, x=x, strata=codes)
    t_sp = time.perf_counter() - t0

    # Resampling path on the same null model (the statistic's own evaluate, as CRTTest does).
    t0 = time.perf_counter()
    obs = stat.observed(x)["statistic"]
    null = stat.evaluate(sampler.sample(499, random_state=1))
    p1 = (1 + np.minimum((null >= obs).sum(0), (null <= obs).sum(0))) * 2 / 500
    second = np.flatnonzero(p1 <= 0.02)
    t_stage1 = time.perf_counter() - t0
    t0 = time.perf_counter()
    # the second stage on 5% of the pairs (a discovery-like mix), at least one
    sel = second if second.size else np.arange(max(1, G // 20))
    stat.evaluate(sampler.sample(4999, random_state=2), sel)
    t_stage2 = time.perf_counter() - t0
    frac2 = sel.size / G
    per_pair_resampling = (t_stage1 + t_stage2) / G
    per_pair_stage2 = t_stage2 / sel.size
    print(f"\n2. speed: simulated unit, {n:,} cells, {m:,} treated, 160 strata, G={G} NB genes")
    print(f"  score pieces (all genes)        {t_pieces / G * 1e3:8.2f} ms/pair")
    print(
        f"  saddlepoint p-values            {t_sp / G * 1e3:8.2f} ms/pair "
        f"({np.mean(methods == 'saddlepoint'):.0%} saddlepoint)"
    )
    print(f"  resampling 499 (all pairs)      {t_stage1 / G * 1e3:8.2f} ms/pair")
    print(
        f"  resampling +4999 (per selected) {per_pair_stage2 * 1e3:8.2f} ms/pair "
        f"({frac2:.0%} selected here)"
    )
    print(
        f"  resampling path, this mix       {per_pair_resampling * 1e3:8.2f} ms/pair; "
        f"saddlepoint incl. pieces {(t_sp + t_pieces) / G * 1e3:.2f} ms/pair"
    )


def gasperini(data: Path, n_ntc=4, B=20_000):
    path = data / "gasperini2019_highmoi.h5ad"
    if not path.is_file():
        print(f"\n3. Gasperini: skipped ({path} not found)")
        return
    import anndata as ad
    import pandas as pd

    from sklcrt.assignment import add_burden_covariates, assign_guides
    from sklcrt.inputs import SCEPTRE_HIGH_MOI_COVARIATES, prepare_crt_inputs, unit_treatment
    from sklcrt.propensity import NewtonLogisticRegression, fit_propensity
    from sklcrt.strata import StratumEncoder

    adata = ad.read_h5ad(path)
    assign_guides(adata, method="threshold", threshold=5)
    add_burden_covariates(adata)
    inputs = prepare_crt_inputs(adata, response="counts", covariates=SCEPTRE_HIGH_MOI_COVARIATES)
    positive = pd.read_csv(data / "gasperini2019_highmoi_positive_control_pairs.csv")
    names = list(inputs["response_names"])
    pairs = [
        (r.grna_target, names.index(r.response_id))
        for r in positive.itertuples()
        if r.response_id in names and r.grna_target in inputs["units"]
    ]
    ntc = list(inputs["ntc_guides"])
    rng = np.random.default_rng(0)
    pairs += [
        (("NTC", tuple(rng.choice(ntc, 2, replace=False))), int(rng.integers(len(names))))
        for _ in range(n_ntc)
    ]
    genes = sorted({g for _, g in pairs})
    stat = NBScoreStatistic().fit(inputs["Y"][:, genes], inputs["C"])
    pieces = stat.score_pieces()
    burden = inputs["covar_df_raw"]["log1p_non_ntc_guides_per_cell"].to_numpy(float)
    print(
        f"\n3. Gasperini: {len(pairs)} pairs, saddlepoint vs {B:,} stratified permutations "
        "of the score sum (batch x 20 propensity x 8 burden bins)"
    )
    print(
        f"{'unit':22s} {'gene':>10s} {'m':>5s} {'p_saddlepoint':>14s} {'p_resampled':>12s} "
        f"{'ms sp':>7s} {'ms resampling':>14s}"
    )
    for unit, g in pairs:
        guides = unit[1] if isinstance(unit, tuple) else inputs["units"][unit]
        x = unit_treatment(inputs, guides).astype(float)
        p_hat = fit_propensity(NewtonLogisticRegression(), inputs["C"], x)
        strata = StratumEncoder(n_bins=20, n_burden_bins=8).fit_transform(
            p_hat, batch=inputs["batch_raw"], burden=burden
        )
        a = pieces[:, [genes.index(g)]]
        t0 = time.perf_counter()
        p, method = saddlepoint_pvalues(a, x=x, strata=strata)
        t_sp = time.perf_counter() - t0
        t0 = time.perf_counter()
        sampler = StratifiedPermutationSampler().fit(x, strata=strata)
        null = np.asarray(sampler.sample(B, random_state=1) @ a)[:, 0]
        s = x @ a[:, 0]
        p_mc = min(1.0, 2 * (1 + min((null >= s).sum(), (null <= s).sum())) / (B + 1))
        t_mc = time.perf_counter() - t0
        label = "NTC " + "+".join(guides) if isinstance(unit, tuple) else unit
        print(
            f"{label[:22]:22s} {names[g]:>10s} {int(x.sum()):5d} {p[0]:14.3e} {p_mc:12.3e} "
            f"{t_sp * 1e3:7.1f} {t_mc * 1e3:14.1f}  {method[0][:30]}"
        )


def _analysis(inputs, statistic, power_pairs, discovery_pairs, method):
    """Calibration + power + discovery with one p-value method; (seconds, results)."""
    from sklcrt.resampling import RECOMMENDED_HIGH_MOI_KWARGS
    from sklcrt.runners import discovery_analysis, power_check, run_ntc_groups

    kw = dict(
        statistic=statistic,
        random_state=0,
        progress=False,
        resampling_method="stratified_perm",
        resampling_kwargs=RECOMMENDED_HIGH_MOI_KWARGS,
    )
    if method == "saddlepoint":
        kw["pvalue_method"] = "saddlepoint"
    else:
        kw.update(pvalue_method="skew_normal", n_resamples=499, n_resamples_adaptive=4999)
    t0 = time.perf_counter()
    cal = run_ntc_groups(inputs, **kw)
    power = power_check(inputs, power_pairs, **kw)
    disc = discovery_analysis(inputs, discovery_pairs, **kw)
    return time.perf_counter() - t0, (cal, power, disc)


def _side_by_side(label, inputs, statistic, power_pairs, discovery_pairs, repeats=3):
    from sklcrt.runners import calibration_summary

    # The statistic's stored pieces (built on first use by either path) exist before timing.
    one = np.zeros((1, inputs["C"].shape[0]))
    one[0, 0] = 1.0
    statistic.evaluate(one)
    times = {"saddlepoint": [], "resampling": []}
    results = {}
    for _ in range(repeats):  # interleaved, so both see the same machine
        for method in times:
            sec, results[method] = _analysis(
                inputs, statistic, power_pairs, discovery_pairs, method
            )
            times[method].append(sec)
    print(f"\n4. {label}: calibration + power + discovery, best of {repeats}, one core")
    print(
        f"{'p-values':34s} {'seconds':>8s} {'NTC pairs':>9s} {'frac<0.01':>9s} {'BH':>3s} "
        f"{'power p<1e-6':>12s} {'discoveries':>11s}"
    )
    for method, sec in times.items():
        cal, power, disc = results[method]
        s = calibration_summary(cal)
        n_pow = int((power["pvalue"] < 1e-6).sum())
        name = "saddlepoint" if method == "saddlepoint" else "resampling 499 + 4,999, skew-normal"
        print(
            f"{name:34s} {min(sec):8.2f} {s['n_pairs']:9d} {s['frac_below_0.01']:9.4f} "
            f"{s['n_bh_discoveries']:3d} {n_pow:7d} / {len(power):<4d} "
            f"{int(disc['significant'].sum()):11d}"
        )
    ratio = min(times["resampling"]) / min(times["saddlepoint"])
    print(f"  speed-up of the saddlepoint: {ratio:.1f}x")
    methods = results["saddlepoint"][0]["pvalue_method"].value_counts(dropna=False)
    print(f"  saddlepoint methods (calibration): {methods.to_dict()}")


def pipeline(data: Path, repeats=3, simulated=True):
    from sklcrt.runners import fit_null_model

    path = data / "gasperini2019_highmoi.h5ad"
    if path.is_file():
        import anndata as ad

        from sklcrt.assignment import add_burden_covariates, assign_guides
        from sklcrt.inputs import SCEPTRE_HIGH_MOI_COVARIATES, prepare_crt_inputs

        adata = ad.read_h5ad(path)
        assign_guides(adata, method="threshold", threshold=5)
        add_burden_covariates(adata)
        inputs = prepare_crt_inputs(
            adata, response="counts", covariates=SCEPTRE_HIGH_MOI_COVARIATES
        )
        statistic = fit_null_model(inputs)
        _side_by_side(
            "Gasperini (NB score, 40,002 cells x 366 genes)",
            inputs,
            statistic,
            adata.uns["positive_control_pairs"],
            adata.uns["discovery_pairs"],
            repeats,
        )
    else:
        print(f"\n4. Gasperini: skipped ({path} not found)")
    if not simulated:
        return
    from sklcrt.assignment import add_burden_covariates
    from sklcrt.datasets import simulate_screen
    from sklcrt.inputs import prepare_crt_inputs

    sim = simulate_screen(
        n_cells=40_000,
        n_genes=60,
        n_programs=30,
        n_targets=27,
        n_ntc_guides=24,
        response="programs",
        random_state=0,
    )
    add_burden_covariates(sim)
    inputs = prepare_crt_inputs(sim, response="programs")
    _side_by_side(
        "simulated programs (OLS, 40,000 cells x 30 programs, 27 targets)",
        inputs,
        fit_null_model(inputs),
        sim.uns["positive_control_pairs"],
        sim.uns["discovery_pairs"],
        repeats,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-real", action="store_true", help="skip the Gasperini pairs")
    parser.add_argument("--no-pipeline", action="store_true", help="skip part 4")
    parser.add_argument("--only-pipeline", action="store_true", help="part 4 only")
    parser.add_argument(
        "--no-simulated", action="store_true", help="part 4 on Gasperini only (no OLS screen)"
    )
    parser.add_argument("--data", default=str(DATA))
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    if not args.only_pipeline:
        accuracy(rng)
        speed(rng)
        if not args.no_real:
            gasperini(Path(args.data))
    if not args.no_pipeline:
        data = Path(args.data) if not args.no_real else Path("/nonexistent")
        pipeline(data, simulated=not args.no_simulated)


if __name__ == "__main__":
    main()
