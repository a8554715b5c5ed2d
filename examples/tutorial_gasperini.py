"""The tutorial's figures: one analysis of the Gasperini et al. 2019 high-MOI screen, step by step.

Guide assignment (UMI threshold 5) -> cellwise QC (SCEPTRE's rules, ``moi="high"``) -> pairs (the
positive controls rebuilt from the gRNA targets, the shipped discovery pairs) -> calibration check
on non-targeting pairs sized like the discovery pairs that pass QC -> power check on the positive
controls -> discovery analysis, every table stored in the AnnData, then an
:class:`sklcrt.report.AnalysisReport` and its output folder. Writes ``assignment.png``,
``qc.png``, ``calibration.png``, ``power.png`` and ``volcano.png`` to ``--out`` (default
``docs/_static/tutorial``), the printed summary to ``summary.txt`` and, with ``--report DIR``,
the whole output folder. Reads ``../shared/data/gasperini2019_highmoi.h5ad``. Run
``python examples/tutorial_gasperini.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from _common import ROOT, base_parser, read_screen  # noqa: E402

from sklcrt import plotting  # noqa: E402
from sklcrt.assignment import assign_guides  # noqa: E402
from sklcrt.inputs import (  # noqa: E402
    SCEPTRE_HIGH_MOI_COVARIATES,
    prepare_crt_inputs,
    unit_treatment,
)
from sklcrt.io import load_results  # noqa: E402
from sklcrt.pairs import construct_positive_control_pairs, gene_symbols  # noqa: E402
from sklcrt.qc import cellwise_qc  # noqa: E402
from sklcrt.report import AnalysisReport  # noqa: E402
from sklcrt.runners import (  # noqa: E402
    discovery_analysis,
    fit_null_model,
    power_check,
    run_ntc_groups,
)

QC_COVARIATES = ("response_n_umis", "response_n_nonzero")


def n_pairs_pass_qc(inputs: dict, pairs: pd.DataFrame, min_nonzero: int = 7) -> int:
    """Pairs with at least ``min_nonzero`` treated and control cells expressing the gene (the
    runners' pairwise QC with every other cell as control), counted before any test."""
    expressed = inputs["Y"].tocsc() != 0
    column = {name: j for j, name in enumerate(inputs["response_names"])}
    n = 0
    for target, group in pairs.groupby("grna_target"):
        treated = unit_treatment(inputs, inputs["units"][target])
        cols = [column[r] for r in group["response_id"]]
        n_treated = np.asarray(expressed[treated][:, cols].sum(axis=0)).ravel()
        n_all = np.asarray(expressed[:, cols].sum(axis=0)).ravel()
        n += int(np.sum((n_treated >= min_nonzero) & (n_all - n_treated >= min_nonzero)))
    return n


def main(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.set_defaults(out=ROOT / "docs" / "_static" / "tutorial")
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="also write the whole output folder (tables, figures, summary.json)",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()

    def save(fig, name):
        fig.savefig(args.out / f"{name}.png", dpi=110, bbox_inches="tight")
        plt.close(fig)

    # 1. guide assignment
    adata = read_screen(args.data_dir, "gasperini2019_highmoi")
    assign_guides(adata, method="threshold", threshold=5)
    save(plotting.assignment_figure(adata), "assignment")

    # 2. cellwise QC: flag the cells, analyse the ones that pass, keep adata whole
    qc = cellwise_qc(adata, moi="high")
    covar = adata.obsm["covar"]
    bounds = {name: tuple(np.quantile(covar[name], qc.params[f"{name}_range"]))
              for name in QC_COVARIATES}  # fmt: skip
    save(plotting.qc_figure(qc.cells, covar, bounds), "qc")
    screen = adata[qc.mask].copy()
    print(f"cellwise QC: {qc.n_pass:,} of {adata.n_obs:,} cells pass")

    # 3. pairs: the positive controls rebuilt from the gRNA targets, the shipped discovery pairs
    guide2gene = screen.uns["guide2gene"]
    positive_pairs = construct_positive_control_pairs(
        guide2gene, screen.var_names, symbols=gene_symbols(screen), suffixes=("_TSS",)
    )
    shipped = pd.DataFrame(screen.uns["positive_control_pairs"])
    key = ["grna_target", "response_id"]
    same = (
        shipped[key]
        .sort_values(key, ignore_index=True)
        .equals(positive_pairs[key].sort_values(key, ignore_index=True))
    )
    print(f"positive controls: {len(positive_pairs)} pairs, the shipped ones: {same}")
    discovery_pairs = pd.DataFrame(screen.uns["discovery_pairs"])

    # 4. the null model of every gene, once, then the calibration check sized like the discovery
    #    pairs that pass the pairwise QC, drawn among the NTC pairs that pass it
    covariates = list(SCEPTRE_HIGH_MOI_COVARIATES)
    inputs = prepare_crt_inputs(screen, covariates=covariates)
    run = dict(moi="high", statistic=fit_null_model(inputs), covariates=covariates,
               random_state=args.seed, n_jobs=args.n_jobs, progress=False,
               n_resamples=args.n_resamples,
               n_resamples_adaptive=args.n_resamples_adaptive)  # fmt: skip
    n_pass = n_pairs_pass_qc(inputs, discovery_pairs)
    print(f"discovery pairs passing the pairwise QC: {n_pass} of {len(discovery_pairs)}")
    ntc = run_ntc_groups(screen, n_pairs=n_pass, pairs_pass_qc=True, **run)
    save(plotting.calibration_figure(ntc, title="Gasperini 2019: calibration on NTC pairs"),
         "calibration")  # fmt: skip

    # 5. power check on the positive controls
    positive = power_check(screen, positive_pairs, **run)
    ax = plotting.power_plot(positive, ntc, label_cols=("grna_target", "response"))
    save(ax.figure, "power")

    # 6. discovery analysis
    discovery = discovery_analysis(screen, discovery_pairs, alpha=args.alpha, **run)
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    plotting.volcano_plot(discovery, ax=ax, alpha=args.alpha,
                          label_cols=("grna_target", "response"))  # fmt: skip
    save(fig, "volcano")

    # 7. every table is stored with the data, with its parameters
    stored = sorted(k for k in screen.uns if k.startswith("sklcrt_"))
    table, params = load_results(screen, "sklcrt_discovery")
    assert table.equals(discovery), "the stored discovery table differs from the returned one"
    print(f"stored in screen.uns: {stored}; discovery ran with moi={params['moi']!r}, "
          f"alpha={params['alpha']}")  # fmt: skip

    # 8. the summary and the output folder
    report = AnalysisReport.from_adata(
        screen, qc=qc.cells, calibration=ntc, power=positive, discovery=discovery,
        alpha=args.alpha, qc_covariates=covar, qc_bounds=bounds,
        params={"resampling_method": "bernoulli_index",
                **{k: v for k, v in run.items() if k != "statistic"}},
    )  # fmt: skip
    print(report)
    if args.report is not None:
        report.write(args.report)
    (args.out / "summary.txt").write_text(report.summary() + "\n")
    print(f"total: {time.perf_counter() - tic:.1f} s")


if __name__ == "__main__":
    main()
