"""sklcrt against pysceptre: SCEPTRE's low-MOI analysis of the Papalexi screen, side by side.

Run ``python benchmarks/bench_lowmoi_vs_pysceptre.py`` (needs ``../shared/data`` and, for the
comparison, ``pip install pysceptre numba``; neither is a dependency of sklcrt).
``--genes N`` keeps only the pairs of the first N genes (a quick run), ``--skip-pysceptre`` runs
only sklcrt (the pysceptre figures are then read from ``--cache`` if it exists), ``--cache PATH``
keeps pysceptre's tables between runs (default ``/tmp/bench_lowmoi_pysceptre.pkl``).

The work, the same for both tools (SCEPTRE's low-MOI defaults):

- data: ``papalexi2021_lowmoi.h5ad``, gRNAs assigned by the maximum rule (``assign_guides(...,
  method="maximum", min_fraction=0.8, min_umis=5)`` as ``tests/test_realdata.py`` does), cells
  without a clear top gRNA dropped; a target's treated cells are the union of its gRNAs' cells,
  and pysceptre gets exactly these cells; the NT cells (the control group) are the cells whose
  gRNA is non-targeting;
- covariates: SCEPTRE's low-MOI formula (``bio_rep``, log response n_umis and n_nonzero),
  encoded once by sklcrt; pysceptre gets the identical design matrix ``inputs["C"]``;
- pairs: the 9 positive controls and the 7,765 discovery pairs from the csv files; pairwise QC
  (at least 7 treated and 7 NT cells with nonzero expression, pysceptre's
  ``annotate_pairwise_qc`` against the NT cells) decides the pairs both tools test;
- calibration: pysceptre's ``run_calibration_check`` (``moi="low"``: the NT cells are the
  universe, groups of 4 NTC gRNAs, as many pairs as discovery pairs pass QC); sklcrt tests the
  very same NTC groups against the same genes;
- test: NB score statistic, ``control_group="nt_cells"``, permutations, 499 then 4,999
  resamples where the first-stage p-value is small, skew-normal p-values, two-sided.

sklcrt's side is driven here directly, until the runners pass ``fit_cells``: one
``NBScoreStatistic`` is fitted on the NT cells only (``fit(Y, C, fit_cells=nt_cells)``, shared
by every unit), and every unit is tested with ``CRTTest(resampling_method="perm", ...)`` on its
treated cells and the NT cells (``fit(C, x, eligible=x | nt_cells)``). The row "sklcrt (all
cells)" is the test before this change: the null model fitted on every cell, the resamples
restricted to the NT cells.

Printed, for each sklcrt row against pysceptre: discoveries (Benjamini-Hochberg at 0.1 over
the discovery pairs both tested) of each and shared, the correlation of the z statistics on the
discovery and on the calibration pairs, of the log2 fold changes, the calibration (fraction of
NTC p-values below 0.01, BH discoveries among them) and the positive controls with
p < 1e-6; and the times.

How the statistics differ by design (so the agreement is not exact):

- SCEPTRE refits the gene's GLM on every pair's cells (the target's cells and the NT cells,
  Poisson coefficients, then the NB size from their means); sklcrt fits it once per gene on the
  NT cells (joint NB maximum likelihood) and scores the target's cells against that fit, with the
  prediction variance ``Σ W + ‖M Σ W q‖²`` (the fit's own estimation error adds to the score's
  variance, as the treated cells are not in the fit). In the intercept-only model the two z
  statistics are the same function of the data except for where ``μ(1 + μ/θ)`` is evaluated
  (NT mean vs the pooled mean); for strong effects sklcrt's |z| is larger.
- SCEPTRE's fold change is the treated counts over their expectation under the pair's pooled
  fit; sklcrt's effect is the NB GLM coefficient of the treatment against the NT cells (so it is
  not shrunk towards 0 by the pooling).
"""

from __future__ import annotations

import argparse
import pickle
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COVARIATES = ["bio_rep", "log1p_response_n_umis", "log1p_response_n_nonzero"]
MIN_NONZERO = 7
B1, B2 = 499, 4999
ALPHA = 0.1
GROUP_SIZE = 4  # NTC gRNAs per calibration group: a typical target's gRNA count


def load_inputs(data: Path):
    """sklcrt's inputs of the Papalexi screen, the NT cells and the targets' treated cells."""
    import anndata as ad

    from sklcrt.assignment import add_burden_covariates, assign_guides
    from sklcrt.inputs import prepare_crt_inputs, unit_treatment
    from sklcrt.runners import control_cells as _control_cells

    adata = ad.read_h5ad(data / "papalexi2021_lowmoi.h5ad")
    assign_guides(adata, method="maximum", min_fraction=0.8, min_umis=5)
    adata = adata[adata.obs["guide_assignment_status"] == "assigned"].copy()
    add_burden_covariates(adata)
    inputs = prepare_crt_inputs(
        adata, response="counts", covariates=COVARIATES, batch_key="bio_rep"
    )
    nt_cells = _control_cells(inputs, "nt_cells")
    target_cells = {
        t: np.flatnonzero(unit_treatment(inputs, g)).astype(np.int64)
        for t, g in inputs["units"].items()
    }
    ntc_cells = {
        str(g): np.flatnonzero(unit_treatment(inputs, [g])).astype(np.int64)
        for g in inputs["ntc_guides"]
    }
    return inputs, nt_cells, target_cells, ntc_cells


def read_pairs(data: Path, genes: list[str], n_genes: int | None) -> dict[str, pd.DataFrame]:
    keep = set(genes if n_genes is None else genes[:n_genes])
    out = {}
    for name in ("positive_control", "discovery"):
        pairs = pd.read_csv(data / f"papalexi2021_lowmoi_{name}_pairs.csv")
        out[name] = pairs.loc[pairs["response_id"].isin(keep), ["response_id", "grna_target"]]
    return out


def pairwise_qc(inputs, pairs, target_cells, nt_cells) -> pd.DataFrame:
    """At least MIN_NONZERO treated and MIN_NONZERO NT cells with nonzero expression."""
    Y = sp.csc_matrix(inputs["Y"])
    genes = {str(g): i for i, g in enumerate(inputs["response_names"])}
    nonzero = (Y != 0).astype(np.int64).tocsr()
    n_nt = np.asarray(nonzero[np.flatnonzero(nt_cells)].sum(axis=0)).ravel()
    rows = []
    for target, group in pairs.groupby("grna_target", sort=False):
        cells = target_cells.get(target, np.empty(0, dtype=np.int64))
        n_trt = np.asarray(nonzero[cells].sum(axis=0)).ravel()
        for gene in group["response_id"]:
            j = genes[gene]
            rows.append((gene, target, int(n_trt[j]), int(n_nt[j])))
    qc = pd.DataFrame(rows, columns=["response_id", "grna_target", "n_nonzero_trt", "n_nt"])
    qc["pass_qc"] = (qc["n_nonzero_trt"] >= MIN_NONZERO) & (qc["n_nt"] >= MIN_NONZERO)
    return qc


# ---------------------------------------------------------------------------------- pysceptre
def run_pysceptre(inputs, pairs, target_cells, ntc_cells, n_calibration_pairs):
    import pysceptre
    from pysceptre.pipeline.api import run_calibration_check, run_discovery_analysis
    from threadpoolctl import threadpool_limits

    response_matrix = sp.csr_matrix(inputs["Y"].T)
    genes = [str(g) for g in inputs["response_names"]]
    C = np.ascontiguousarray(inputs["C"], dtype=float)
    out, times = {}, {}
    with threadpool_limits(limits=1), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its notes on degenerate per-pair dispersion fits
        for name, table in pairs.items():
            if table.empty:
                out[name] = table.assign(pvalue=np.nan, z_orig=np.nan, fold_change=np.nan)
                continue
            t0 = time.perf_counter()
            cells = {t: target_cells[t] for t in table["grna_target"].unique()}
            res = run_discovery_analysis(
                response_matrix,
                genes,
                C,
                cells,
                table.reset_index(drop=True),
                side="both",
                moi="low",
                ntc_grna_cells=ntc_cells,
                seed=0,
            )
            times[name] = time.perf_counter() - t0
            out[name] = res.rename(columns={"p_value": "pvalue"})
        t0 = time.perf_counter()
        res = run_calibration_check(
            response_matrix,
            genes,
            C,
            ntc_cells,
            n_calibration_pairs=n_calibration_pairs,
            calibration_group_size=GROUP_SIZE,
            moi="low",
            side="both",
            seed=0,
        )
        times["calibration"] = time.perf_counter() - t0
        out["calibration"] = res.rename(columns={"p_value": "pvalue"})
    return out, times, pysceptre.__version__


# ------------------------------------------------------------------------------------- sklcrt
def _seed(name: str) -> np.random.SeedSequence:
    return np.random.SeedSequence([0, zlib.crc32(name.encode())])


def run_sklcrt(inputs, tables, unit_cells, nt_cells, *, fit_on_nt: bool):
    """The driver the runners will replace: one null fit, then ``CRTTest`` per unit.

    ``tables`` maps an analysis name to its pairs (``response_id``, ``grna_target``), and
    ``unit_cells`` every unit's treated cells. The null model is fitted on the NT cells
    (``fit_on_nt``) or on every cell (sklcrt before ``fit_cells``); either way the resamples
    move the treatment among the unit's cells and the NT cells only (``eligible``).
    """
    from sklcrt.crt import CRTTest
    from sklcrt.statistics import NBScoreStatistic

    C = np.asarray(inputs["C"], dtype=float)
    genes = {str(g): i for i, g in enumerate(inputs["response_names"])}
    t0 = time.perf_counter()
    statistic = NBScoreStatistic(progress=True).fit(
        inputs["Y"], C, fit_cells=nt_cells if fit_on_nt else None
    )
    times = {"null_fit": time.perf_counter() - t0}
    out = {}
    for name, table in tables.items():
        if table.empty:
            out[name] = table.assign(z=np.nan, pvalue=np.nan, log2_fc=np.nan)
            continue
        t0 = time.perf_counter()
        parts = []
        for unit, group in table.groupby("grna_target", sort=False):
            x = np.zeros(C.shape[0], dtype=bool)
            x[unit_cells[unit]] = True
            cols = np.array([genes[g] for g in group["response_id"]], dtype=np.intp)
            # SCEPTRE's pair: the null model on the unit's cells and the NT cells, refitted
            # from the shared NT-cell fit (the same statistic when the unit is in the NT cells).
            unit_statistic = statistic.refit(x | nt_cells) if fit_on_nt else statistic
            test = CRTTest(
                statistic=unit_statistic,
                resampling_method="perm",
                n_resamples=B1,
                n_resamples_adaptive=B2,
                pvalue_method="skew_normal",
                random_state=_seed(unit),
            )
            test.fit(C, x, columns=cols, eligible=x | nt_cells)
            parts.append(
                pd.DataFrame(
                    {
                        "response_id": group["response_id"].to_numpy(),
                        "grna_target": unit,
                        "z": test.statistic_,
                        "pvalue": test.pvalue_,
                        "log2_fc": test.effect_,
                    }
                )
            )
        out[name] = pd.concat(parts, ignore_index=True)
        times[name] = time.perf_counter() - t0
    return out, times


# ------------------------------------------------------------------------------------ figures
def bh(p: np.ndarray, alpha: float = ALPHA) -> np.ndarray:
    """Benjamini-Hochberg rejections (NaN p-values are not tested)."""
    p = np.asarray(p, dtype=float)
    ok = np.flatnonzero(np.isfinite(p))
    reject = np.zeros(p.size, dtype=bool)
    if ok.size == 0:
        return reject
    order = ok[np.argsort(p[ok], kind="stable")]
    below = p[order] <= alpha * np.arange(1, ok.size + 1) / ok.size
    if below.any():
        reject[order[: np.flatnonzero(below)[-1] + 1]] = True
    return reject


def _corr(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[ok], b[ok])[0, 1]) if ok.sum() > 2 else float("nan")


def compare(ours: dict, theirs: dict) -> dict:
    key = ["response_id", "grna_target"]
    disc = ours["discovery"].merge(theirs["discovery"], on=key, suffixes=("", "_pys"))
    both = np.isfinite(disc["pvalue"]) & np.isfinite(disc["pvalue_pys"])
    disc = disc[both]
    ours_hits, theirs_hits = bh(disc["pvalue"]), bh(disc["pvalue_pys"])
    with np.errstate(divide="ignore", invalid="ignore"):
        lfc_pys = np.log2(disc["fold_change"].to_numpy(dtype=float))
    cal = ours["calibration"].merge(theirs["calibration"], on=key, suffixes=("", "_pys"))
    pos = ours["positive_control"].merge(theirs["positive_control"], on=key, suffixes=("", "_pys"))
    return {
        "n_discovery_pairs": int(len(disc)),
        "discoveries": int(ours_hits.sum()),
        "discoveries_pysceptre": int(theirs_hits.sum()),
        "shared": int((ours_hits & theirs_hits).sum()),
        "r_z_discovery": _corr(disc["z"], disc["z_orig"]),
        "r_z_calibration": _corr(cal["z"], cal["z_orig"]),
        "r_log2fc": _corr(disc["log2_fc"], lfc_pys),
        "ntc_pairs": int(np.isfinite(cal["pvalue"]).sum()),
        "ntc_frac_p<0.01": float(np.nanmean(cal["pvalue"] < 0.01)),
        "ntc_bh": int(bh(cal["pvalue"]).sum()),
        "ntc_frac_p<0.01_pysceptre": float(np.nanmean(cal["pvalue_pys"] < 0.01)),
        "ntc_bh_pysceptre": int(bh(cal["pvalue_pys"]).sum()),
        "positive_controls": int(len(pos)),
        "pc_p<1e-6": int((pos["pvalue"] < 1e-6).sum()),
        "pc_p<1e-6_pysceptre": int((pos["pvalue_pys"] < 1e-6).sum()),
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--genes", type=int, default=None, help="only the first N genes' pairs")
    parser.add_argument("--skip-pysceptre", action="store_true")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/bench_lowmoi_pysceptre.pkl"))
    parser.add_argument("--no-baseline", action="store_true", help="skip the all-cells row")
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_limits

    inputs, nt_cells, target_cells, ntc_cells = load_inputs(args.data)
    genes = [str(g) for g in inputs["response_names"]]
    pairs = read_pairs(args.data, genes, args.genes)
    tested = {}
    for name, table in pairs.items():
        qc = pairwise_qc(inputs, table, target_cells, nt_cells)
        tested[name] = qc.loc[qc["pass_qc"], ["response_id", "grna_target"]]
        print(f"{name}: {len(table)} pairs, {len(tested[name])} pass pairwise QC")
    print(f"{int(nt_cells.sum())} NT cells, {len(nt_cells)} cells")

    tag = (args.genes, len(tested["discovery"]))
    cached = pickle.loads(args.cache.read_bytes()) if args.cache.exists() else None
    if cached is not None and cached["tag"] == tag:
        theirs, pys_times, version = cached["tables"], cached["times"], cached["version"]
    elif args.skip_pysceptre:
        raise SystemExit(f"--skip-pysceptre needs pysceptre's tables in {args.cache}")
    else:
        theirs, pys_times, version = run_pysceptre(
            inputs, tested, target_cells, ntc_cells, len(tested["discovery"])
        )
        payload = {"tag": tag, "tables": theirs, "times": pys_times, "version": version}
        args.cache.write_bytes(pickle.dumps(payload))
    print(f"pysceptre {version}: " + ", ".join(f"{k} {v:.1f} s" for k, v in pys_times.items()))

    # sklcrt tests pysceptre's calibration groups ("g1&g2&g3&g4"), each against the same genes.
    calibration = theirs["calibration"][["response_id", "grna_target"]]
    unit_cells = dict(target_cells)
    for group in calibration["grna_target"].unique():
        unit_cells[group] = np.unique(np.concatenate([ntc_cells[g] for g in group.split("&")]))
    tables = dict(tested, calibration=calibration)

    rows = {}
    variants = [("sklcrt (NT-cell fit)", True)]
    if not args.no_baseline:
        variants.append(("sklcrt (all cells)", False))
    for label, fit_on_nt in variants:
        with threadpool_limits(limits=1):
            ours, times = run_sklcrt(inputs, tables, unit_cells, nt_cells, fit_on_nt=fit_on_nt)
        print(f"{label}: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
        rows[label] = compare(ours, theirs)
    report = pd.DataFrame(rows)
    with pd.option_context("display.max_rows", 100, "display.width", 120):
        print(report.to_string(float_format=lambda v: f"{v:.4f}"))
    return rows


if __name__ == "__main__":
    main()
