"""The tutorial's figures: one analysis of the Gasperini et al. 2019 high-MOI screen, step by step.

Guide assignment (UMI threshold 5) -> calibration check on non-targeting pairs -> power check on
the positive controls -> discovery analysis, then an :class:`sklcrt.report.AnalysisReport` and its
output folder. Writes ``assignment.png``, ``calibration.png``, ``power.png`` and ``volcano.png`` to
``--out`` (default ``docs/_static/tutorial``), the printed summary to ``summary.txt`` and, with
``--report DIR``, the whole output folder.
Reads ``../shared/data/gasperini2019_highmoi.h5ad``. Run ``python examples/tutorial_gasperini.py``.

TODO(lead): add the cellwise QC step (``sklcrt.qc.cellwise_qc`` and ``plotting.qc_figure``) and
the pairs step (``sklcrt.pairs``) when they land, and the pass-through of ``key_added``.
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from _common import ROOT, base_parser, read_screen  # noqa: E402

from sklcrt import plotting  # noqa: E402
from sklcrt.assignment import assign_guides  # noqa: E402
from sklcrt.inputs import SCEPTRE_HIGH_MOI_COVARIATES, prepare_crt_inputs  # noqa: E402
from sklcrt.report import AnalysisReport  # noqa: E402
from sklcrt.runners import (  # noqa: E402
    discovery_analysis,
    fit_null_model,
    power_check,
    run_ntc_groups,
)


def main(argv=None):
    parser = base_parser(__doc__.splitlines()[0])
    parser.set_defaults(out=ROOT / "docs" / "_static" / "tutorial")
    parser.add_argument("--report", type=Path, default=None,
                        help="also write the whole output folder (tables, figures, summary.json)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()

    # 1. guide assignment
    adata = read_screen(args.data_dir, "gasperini2019_highmoi")
    assign_guides(adata, method="threshold", threshold=5)
    fig = plotting.assignment_figure(adata)
    fig.savefig(args.out / "assignment.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    # 2. cellwise QC -- TODO(lead): sklcrt.qc.cellwise_qc(adata, ...) and plotting.qc_figure

    # 3. the null model of every gene, once, then the calibration check sized like discovery
    inputs = prepare_crt_inputs(adata, response="counts", covariates=SCEPTRE_HIGH_MOI_COVARIATES)
    statistic = fit_null_model(inputs)
    run = dict(statistic=statistic, random_state=args.seed, n_jobs=args.n_jobs, progress=False,
               pvalue_method="skew_normal",
               n_resamples=args.n_resamples, n_resamples_adaptive=args.n_resamples_adaptive)
    discovery_pairs = pd.DataFrame(adata.uns["discovery_pairs"])
    ntc = run_ntc_groups(inputs, n_pairs=len(discovery_pairs), **run)
    fig = plotting.calibration_figure(ntc, title="Gasperini 2019: calibration on NTC pairs")
    fig.savefig(args.out / "calibration.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    # 4. power check on the positive controls
    positive = power_check(inputs, pd.DataFrame(adata.uns["positive_control_pairs"]), **run)
    ax = plotting.power_plot(positive, ntc, label_cols=("grna_target", "response"))
    ax.figure.savefig(args.out / "power.png", dpi=110, bbox_inches="tight")
    plt.close(ax.figure)

    # 5. discovery analysis
    discovery = discovery_analysis(inputs, discovery_pairs, alpha=args.alpha, **run)
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    plotting.volcano_plot(discovery, ax=ax, alpha=args.alpha,
                          label_cols=("grna_target", "response"))  # fmt: skip
    fig.savefig(args.out / "volcano.png", dpi=110, bbox_inches="tight")
    plt.close(fig)

    # 6. the summary and the output folder
    report = AnalysisReport.from_adata(
        adata, calibration=ntc, power=positive, discovery=discovery, alpha=args.alpha,
        params={"covariates": list(SCEPTRE_HIGH_MOI_COVARIATES), "resampling_method":
                "bernoulli_index", **{k: v for k, v in run.items() if k != "statistic"}},
    )  # fmt: skip
    print(report)
    if args.report is not None:
        report.write(args.report)
    (args.out / "summary.txt").write_text(report.summary() + "\n")
    print(f"total: {time.perf_counter() - tic:.1f} s")


if __name__ == "__main__":
    main()
