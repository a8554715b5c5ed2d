"""Gasperini et al. 2019 (high MOI): gene programs by NMF, tested with OLS, with and without burden.

The program workflow: derive gene programs from the expression of the real high-MOI screen
(``../shared/data/gasperini2019_highmoi.h5ad``) with scikit-learn's non-negative matrix
factorisation on library-size-normalised, log1p-transformed counts, store the per-cell usages
(rows scaled to sum to one, as cNMF reports them) in ``obsm["cnmf_usage"]``, and test them with
the OLS statistic on their centred log-ratio, covariates as in SCEPTRE's high-MOI formula. gRNAs
are assigned by thresholding UMI counts at 5. For each resampling method,

- the NTC ensemble: 5 random groupings of the 25 non-targeting gRNAs into groups of 2 (the median
  number of gRNAs per target), every group against every program (the calibration check);
- the gene loop: every target (10 TSS positive controls and 17 candidate enhancers) against every
  program, Benjamini-Hochberg at 0.1.

Methods: ``bernoulli_index``, ``stratified_perm`` (batch x 20 propensity bins) and
``stratified_perm`` with 8 quantile bins of ``log1p_non_ntc_guides_per_cell``. Writes
``gasperini_programs_comparison.csv`` and ``gasperini_programs_qq.png`` to ``--out``.

Run it with ``python examples/gasperini_programs.py`` (under a minute on 2 cores).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import scipy.sparse as sp
from _common import (
    base_parser,
    calibration_columns,
    high_moi_methods,
    read_screen,
    run_options,
    save_qq_panels,
)
from sklearn.decomposition import NMF

from sklcrt.assignment import add_burden_covariates, assign_guides
from sklcrt.inputs import SCEPTRE_HIGH_MOI_COVARIATES, prepare_crt_inputs
from sklcrt.runners import (
    calibration_summary,
    fit_null_model,
    run_gene_loop,
    run_ntc_ensemble,
)

METHODS = high_moi_methods()


def parse_args(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--n-programs", type=int, default=15)
    parser.add_argument("--n-ensemble", type=int, default=5)
    return parser.parse_args(argv)


def add_nmf_programs(adata, n_programs: int, seed: int) -> NMF:
    """NMF of normalised log1p expression; usages (rows sum to 1) in ``obsm["cnmf_usage"]``."""
    counts = sp.csr_matrix(adata.X, dtype=np.float64)
    size = np.asarray(counts.sum(axis=1)).ravel()
    norm = sp.diags(1e4 / np.maximum(size, 1.0)) @ counts
    norm.data = np.log1p(norm.data)
    model = NMF(n_components=n_programs, init="nndsvda", tol=1e-3, max_iter=1000, random_state=seed)
    usage = model.fit_transform(norm)
    total = usage.sum(axis=1, keepdims=True)
    usage = np.divide(usage, total, out=np.full_like(usage, 1.0 / n_programs), where=total > 0)
    names = [f"program_{k + 1:02d}" for k in range(n_programs)]
    adata.obsm["cnmf_usage"] = pd.DataFrame(usage, index=adata.obs_names, columns=names)
    adata.varm["cnmf_loadings"] = model.components_.T
    return model


def main(argv=None):
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    adata = read_screen(args.data_dir, "gasperini2019_highmoi")
    assign_guides(adata, method="threshold", threshold=5)
    add_burden_covariates(adata)
    model = add_nmf_programs(adata, args.n_programs, args.seed)
    print(
        f"NMF: {args.n_programs} programs, {model.n_iter_} iterations, reconstruction error "
        f"{model.reconstruction_err_:.1f} ({time.perf_counter() - start:.1f} s)"
    )
    inputs = prepare_crt_inputs(adata, response="programs", covariates=SCEPTRE_HIGH_MOI_COVARIATES)
    statistic = fit_null_model(inputs)  # OLS on the CLR usages, shared by every analysis
    tss = sorted(t for t in inputs["units"] if t.endswith("_TSS"))

    run = run_options(args, statistic)
    rows, ntc_p, loop_p = [], {}, {}
    for name, method in METHODS.items():
        tic = time.perf_counter()
        ntc = run_ntc_ensemble(inputs, n_ensemble=args.n_ensemble, **run, **method)
        loop = run_gene_loop(inputs, alpha=args.alpha, **run, **method)
        summary = calibration_summary(ntc, alpha=args.alpha)
        hit_targets = set(loop.loc[loop["significant"], "grna_target"])
        n_tss_hit = len(hit_targets & set(tss))
        n_enh_hit = len(hit_targets - set(tss))
        n_enh = len(inputs["units"]) - len(tss)
        rows.append(
            {
                "method": name,
                **calibration_columns(summary),
                "target x program pairs": int(loop["pvalue"].notna().sum()),
                f"discoveries at BH {args.alpha:g}": int(loop["significant"].sum()),
                "TSS targets with a discovery": f"{n_tss_hit}/{len(tss)}",
                "enhancer targets with a discovery": f"{n_enh_hit}/{n_enh}",
            }
        )
        ntc_p[name] = ntc["pvalue"].dropna().to_numpy()
        loop_p[name] = loop["pvalue"].dropna().to_numpy()
        print(f"{name}: {rows[-1]} ({time.perf_counter() - tic:.1f} s)")

    table = pd.DataFrame(rows)
    table.to_csv(args.out / "gasperini_programs_comparison.csv", index=False)

    save_qq_panels(
        {
            f"NTC ensemble ({args.n_ensemble} groupings) x programs (null)": ntc_p,
            "Gene loop: targets x programs": loop_p,
        },
        f"Gasperini 2019, {args.n_programs} NMF programs, OLS on CLR usages",
        args.out / "gasperini_programs_qq.png",
    )
    print(table.to_string(index=False))
    print(f"total: {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
