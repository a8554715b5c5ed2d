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

import time

import pandas as pd
from _common import base_parser, calibration_columns, high_moi_methods, run_options, save_qq_panels

from sklcrt.datasets import simulate_screen
from sklcrt.inputs import prepare_crt_inputs
from sklcrt.runners import (
    calibration_summary,
    discovery_analysis,
    fit_null_model,
    run_ntc_groups,
)

COVARIATES = ["batch", "log1p_response_n_umis"]  # batch + library size, no burden
METHODS = high_moi_methods()
RESPONSES = {"counts": "gene", "programs": "program"}


def parse_args(argv=None):
    parser = base_parser(__doc__.splitlines()[0], data_help="unused: the screen is simulated")
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
        run = run_options(args, statistic)
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
            n_found = int((pc["pvalue"] < 1e-3).sum())
            rows.append(
                {
                    "responses": f"{response} ({'NB score' if kind == 'gene' else 'OLS'})",
                    "method": name,
                    **calibration_columns(summary),
                    "true effects found (p<1e-3)": f"{n_found}/{len(pc)}",
                    f"discoveries at BH {args.alpha:g}": int(disc["significant"].sum()),
                    "listed true effects among them": n_true,
                }
            )
            qq.setdefault(response, {})[name] = ntc["pvalue"].dropna().to_numpy()
            print(rows[-1])

    table = pd.DataFrame(rows)
    table.to_csv(args.out / "simulated_burden_comparison.csv", index=False)
    save_qq_panels(
        {f"NTC groups x {response} (null)": sets for response, sets in qq.items()},
        "Simulated high-MOI screen, propensity on batch + library size only",
        args.out / "simulated_burden_qq.png",
    )
    print(table.to_string(index=False))
    print(f"total: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
