"""Helpers shared by the example scripts: arguments, resampling methods and output files."""

import argparse
from pathlib import Path

import pandas as pd

from sklcrt.plotting import qq_plot
from sklcrt.resampling import RECOMMENDED_HIGH_MOI_KWARGS

ROOT = Path(__file__).resolve().parents[1]


def high_moi_methods(batch_key: str = "batch") -> dict:
    """The three resampling methods the high-MOI examples compare, as runner keyword sets.

    The burden-bin method is exactly the recommended setting
    (:data:`sklcrt.resampling.RECOMMENDED_HIGH_MOI_KWARGS`); the plain stratified method is the
    same without the burden keys.
    """
    recommended = dict(RECOMMENDED_HIGH_MOI_KWARGS, batch_key=batch_key)
    without_burden = {k: v for k, v in recommended.items() if not k.startswith("burden")
                      and k != "n_burden_bins"}  # fmt: skip
    return {
        "bernoulli_index": dict(resampling_method="bernoulli_index", resampling_kwargs=None),
        "stratified_perm": dict(
            resampling_method="stratified_perm", resampling_kwargs=without_burden
        ),  # fmt: skip
        "stratified_perm + burden bins": dict(
            resampling_method="stratified_perm", resampling_kwargs=recommended
        ),  # fmt: skip
    }


def base_parser(description: str, *, data_help: str | None = None) -> argparse.ArgumentParser:
    """The options every example takes; scripts add their own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".." / "shared" / "data",
                        help=data_help)  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "_static" / "validation")
    parser.add_argument("--n-resamples", type=int, default=499)
    parser.add_argument("--n-resamples-adaptive", type=int, default=4999)
    parser.add_argument("--alpha", type=float, default=0.1, help="BH level for discoveries")
    parser.add_argument("--n-jobs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def read_screen(data_dir: Path, name: str):
    """``<data_dir>/<name>.h5ad``; exits with a hint when the shared real screens are absent."""
    import anndata as ad

    path = data_dir / f"{name}.h5ad"
    if not path.is_file():
        raise SystemExit(f"{path} not found; pass --data-dir pointing at the shared real screens.")
    return ad.read_h5ad(path)


def run_options(args, statistic) -> dict:
    """The runner options every example passes: the shared null model and the command line's."""
    return dict(
        statistic=statistic,
        n_resamples=args.n_resamples,
        n_resamples_adaptive=args.n_resamples_adaptive,
        random_state=args.seed,
        n_jobs=args.n_jobs,
        progress=False,
    )


def calibration_columns(summary: dict) -> dict:
    """The NTC check's columns of a comparison table, from ``calibration_summary``."""
    return {
        "NTC pairs": summary["n_pairs"],
        "frac p<0.01": round(summary["frac_below_0.01"], 4),
        "frac p<0.05": round(summary["frac_below_0.05"], 4),
        "BH discoveries among NTC": summary["n_bh_discoveries"],
    }


def save_positive_controls(pc_tables: list, methods, reference: str, path: Path) -> None:
    """One row per positive control: size and log2FC (from ``reference``), p per method."""
    pcs = pd.concat(pc_tables, ignore_index=True)
    wide = pcs.pivot(index="grna_target", columns="method", values="pvalue")[list(methods)]
    first = pcs[pcs["method"] == reference].set_index("grna_target")
    wide.insert(0, "log2FC", first["effect"].round(3))
    wide.insert(0, "n_treated", first["n_treated"])
    wide.columns = [c if c in ("n_treated", "log2FC") else f"p ({c})" for c in wide.columns]
    wide.reset_index().to_csv(path, index=False, float_format="%.4g")


def save_qq_panels(panels: dict, suptitle: str, path: Path) -> None:
    """Side-by-side QQ plots, one panel per ``{title: {label: pvalues}}`` entry."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6))
    for ax, (title, pvalues) in zip(axes, panels.items(), strict=True):
        qq_plot(pvalues, ax=ax)
        ax.set_title(title)
    fig.suptitle(suptitle)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
