"""Simulated high-MOI screen: where burden bins matter, for counts (NB score) and programs (OLS).

A screen from :func:`sklcrt.datasets.simulate_screen` (8,000 cells, MOI 8, 20 targets with 2
guides each, 60 non-targeting guides, 100 genes and 20 programs) in which a cell's guide load
drives both which guides it carries and, through the number of targeting guides, every response.
The propensity is fitted on batch and library size only (no burden covariate), as an analyst
without burden covariates would. For ``bernoulli_index``, ``stratified_perm`` (batch x 20
propensity bins) and ``stratified_perm`` with 8 quantile bins of
``log1p_non_ntc_guides_per_cell`` it runs the calibration check (every group of 2 NTC guides
against every response), the power check (targets with a true effect against their own gene or
program; these pairs are part of the discovery pairs) and the discovery analysis (each target
against its own gene and 5 others, or against every program; Benjamini-Hochberg at 0.1), and
writes ``simulated_burden_comparison.csv`` and ``simulated_burden_qq.png`` to ``--out``. The same
screen is the subject of ``tests/test_burden_e2e.py``.

Run it with ``python examples/simulated_burden.py`` (about 2 minutes on 2 cores; no data needed).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from sklcrt.datasets import simulate_screen  # noqa: E402
from sklcrt.inputs import prepare_crt_inputs  # noqa: E402
from sklcrt.plotting import qq_plot  # noqa: E402
from sklcrt.runners import (  # noqa: E402
    calibration_summary,
    discovery_analysis,
    fit_null_model,
    run_ntc_groups,
)

ROOT = Path(__file__).resolve().parents[1]
COVARIATES = ["batch", "log1p_response_n_umis"]  # batch + library size, no burden
STRATIFIED = dict(n_bins=20, stratify_by_batch=True, batch_key="batch")
METHODS = {
    "bernoulli_index": dict(resampling_method="bernoulli_index", resampling_kwargs=None),
    "stratified_perm": dict(resampling_method="stratified_perm", resampling_kwargs=STRATIFIED),
    "stratified_perm + burden bins": dict(
        resampling_method="stratified_perm",
        resampling_kwargs=dict(
            STRATIFIED,
            burden_key="log1p_non_ntc_guides_per_cell",
            n_burden_bins=8,
            burden_bin_method="quantile",
        ),
    ),
}
RESPONSES = {"counts": "gene", "programs": "program"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".." / "shared" / "data",
                        help="unused: the screen is simulated")  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "_static" / "validation")
    parser.add_argument("--n-resamples", type=int, default=499)
    parser.add_argument("--n-resamples-adaptive", type=int, default=4999)
    parser.add_argument("--alpha", type=float, default=0.1, help="BH level for discoveries")
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    adata = simulate_screen(
        n_cells=8000,
        n_genes=100,
        n_programs=20,
        n_targets=20,
        n_ntc_guides=60,
        moi=8.0,
        response="both",
        random_state=args.seed,
    )
    truth = adata.uns["true_effects"]
    rows, qq = [], {}
    for response, kind in RESPONSES.items():
        inputs = prepare_crt_inputs(adata, response=response, covariates=COVARIATES)
        statistic = fit_null_model(inputs)
        discovery = adata.uns["discovery_pairs"]
        discovery = discovery[discovery["response_kind"] == kind]
        positive = truth[truth["response_kind"] == kind][["response_id", "grna_target"]]
        true_pairs = set(zip(positive["grna_target"], positive["response_id"], strict=True))
        run = dict(
            statistic=statistic,
            n_resamples=args.n_resamples,
            n_resamples_adaptive=args.n_resamples_adaptive,
            random_state=args.seed,
            n_jobs=args.n_jobs,
            progress=False,
        )
        for name, method in METHODS.items():
            # no adaptive stage for the calibration check: without burden bins most NTC pairs
            # would qualify for it, and 499 resamples resolve the fraction below 0.01
            ntc = run_ntc_groups(inputs, **{**run, "n_resamples_adaptive": 0}, **method)
            disc = discovery_analysis(inputs, discovery, alpha=args.alpha, **run, **method)
            summary = calibration_summary(ntc, alpha=args.alpha)
            # the power check: the discovery pairs include every true effect (own gene / program)
            pairs = zip(disc["grna_target"], disc["response"], strict=True)
            is_true = pd.Series([pair in true_pairs for pair in pairs], index=disc.index)
            pc = disc[is_true]
            n_true = int((is_true & disc["significant"]).sum())
            n_found = int((pc["p_value"] < 1e-3).sum())
            rows.append(
                {
                    "responses": f"{response} ({'NB score' if kind == 'gene' else 'OLS'})",
                    "method": name,
                    "NTC pairs": summary["n_pairs"],
                    "frac p<0.01": round(summary["frac_below_0.01"], 4),
                    "frac p<0.05": round(summary["frac_below_0.05"], 4),
                    "BH discoveries among NTC": summary["n_bh_discoveries"],
                    "true effects found (p<1e-3)": f"{n_found}/{len(pc)}",
                    f"discoveries at BH {args.alpha:g}": int(disc["significant"].sum()),
                    "listed true effects among them": n_true,
                }
            )
            qq.setdefault(response, {})[name] = ntc["p_value"].dropna().to_numpy()
            print(rows[-1])

    table = pd.DataFrame(rows)
    table.to_csv(args.out / "simulated_burden_comparison.csv", index=False)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, (response, sets) in zip(axes, qq.items(), strict=True):
        qq_plot(sets, ax=ax)
        ax.set_title(f"NTC groups x {response} (null)")
    fig.suptitle("Simulated high-MOI screen, propensity on batch + library size only")
    fig.tight_layout()
    fig.savefig(args.out / "simulated_burden_qq.png", dpi=110)
    plt.close(fig)
    print(table.to_string(index=False))
    print(f"total: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
