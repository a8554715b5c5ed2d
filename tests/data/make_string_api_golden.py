"""Regenerate ``string_api_golden.csv``: outputs of the string API on fixed simulated inputs.

The stored table ``string_api_golden.csv`` was written at 4a17328 (the sampler speed-up); its
first version, ``string_api_golden_v0.csv``, by the code at 1416e0b (before the settings
redesign of issue #11). ``tests/test_string_api_golden.py`` checks today's code against both.
Rerun only on purpose (a documented change of the random streams):

    python tests/data/make_string_api_golden.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from sklcrt.crt import CRTTest
from sklcrt.datasets import simulate_screen
from sklcrt.inputs import prepare_crt_inputs
from sklcrt.runners import run_gene_loop, run_ntc_groups

HERE = Path(__file__).parent
BURDEN = dict(
    n_bins=5,
    stratify_by_batch=True,
    batch_key="batch",
    burden_key="log1p_non_ntc_guides_per_cell",
    n_burden_bins=4,
)

#: (case name, resampling_method, resampling_kwargs, other CRTTest options)
ESTIMATOR_CASES = [
    ("crt_default", None, None, {}),
    ("crt_alias", "crt", None, {}),
    ("bernoulli_skew", "bernoulli_index", {}, {"pvalue_method": "skew_normal"}),
    ("perm", "perm", None, {"alternative": "less"}),
    ("strat_no_burden", "stratified_perm", {"n_bins": 5}, {}),
    ("strat_burden", "stratified_perm", BURDEN, {}),
    (
        "strat_burden_uniform",
        "stratified_perm",
        {
            **BURDEN,
            "burden_bin_method": "uniform",
            "burden_clip_quantiles": (0.05, 0.95),
            "min_stratum_size": 5,
        },
        {"alternative": "greater"},
    ),
    ("strat_no_batch", "stratified_perm", {"n_bins": 3, "stratify_by_batch": False}, {}),
]

#: (case name, runner, kwargs)
RUNNER_CASES = [
    ("runner_genes_crt", "genes", dict(resampling_method="bernoulli_index")),
    (
        "runner_genes_strat",
        "genes",
        dict(
            resampling_method="stratified_perm",
            resampling_kwargs=BURDEN,
            pvalue_method="skew_normal",
        ),
    ),
    (
        "runner_ntc_strat",
        "ntc",
        dict(resampling_method="stratified_perm", resampling_kwargs=BURDEN),
    ),
    ("runner_ntc_nt_cells", "ntc", dict(resampling_method="perm", control_group="nt_cells")),
    (
        "runner_programs_strat",
        "programs",
        dict(resampling_method="stratified_perm", resampling_kwargs=BURDEN),
    ),
]

COLUMNS = [
    "case",
    "unit",
    "response",
    "statistic",
    "effect",
    "effect_se",
    "p_value",
    "pvalue_method",
    "n_resamples",
    "n_strata",
]


def estimator_rows(adata) -> pd.DataFrame:
    inputs = prepare_crt_inputs(adata, response="programs")
    covar = inputs["covar_df_raw"]
    x = np.zeros(adata.n_obs, dtype=bool)
    for guide in inputs["units"][sorted(inputs["units"])[0]]:
        j = list(inputs["guide_names"]).index(guide)
        x |= np.asarray(inputs["guides"][:, j].toarray()).ravel() != 0
    frames = []
    for name, method, kwargs, options in ESTIMATOR_CASES:
        burden = None
        if kwargs and kwargs.get("burden_key"):
            burden = covar[kwargs["burden_key"]].to_numpy(float)
        test = CRTTest(
            resampling_method=method,
            resampling_kwargs=kwargs,
            n_resamples=199,
            n_resamples_adaptive=399,
            adaptive_threshold=0.2,
            random_state=7,
            # the default when the stored outputs were written (now "skew_normal")
            **{"pvalue_method": "empirical", **options},
        ).fit(inputs["C"], x, responses=inputs["Y"], batch=covar["batch"].to_numpy(), burden=burden)
        frame = test.to_frame(inputs["response_names"])
        frame.insert(0, "unit", "first_target")
        frame.insert(0, "case", name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def runner_rows(adata) -> pd.DataFrame:
    counts = prepare_crt_inputs(adata, response="counts")
    programs = prepare_crt_inputs(adata, response="programs")
    pairs = adata.uns["discovery_pairs"]
    frames = []
    for name, kind, kwargs in RUNNER_CASES:
        options = dict(
            n_resamples=99,
            n_resamples_adaptive=199,
            adaptive_threshold=0.1,
            progress=False,
            random_state=3,
            **{"pvalue_method": "empirical", **kwargs},
        )
        if kind == "genes":
            genes = pairs[pairs["response_kind"] == "gene"]
            frame = run_gene_loop(counts, pairs=genes, **options)
        elif kind == "programs":
            progs = pairs[pairs["response_kind"] == "program"]
            frame = run_gene_loop(programs, pairs=progs, **options)
        else:
            frame = run_ntc_groups(counts, n_pairs=60, **options)
        frame.insert(0, "case", name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def golden_frame() -> pd.DataFrame:
    adata = simulate_screen(
        n_cells=2500, n_genes=24, n_programs=6, n_targets=5, n_ntc_guides=8, random_state=11
    )
    out = pd.concat([estimator_rows(adata), runner_rows(adata)], ignore_index=True)
    # The tables spell the p-value "pvalue" since the redesign; the stored table kept "p_value".
    return out.rename(columns={"pvalue": "p_value"})[COLUMNS]


if __name__ == "__main__":
    golden_frame().to_csv(HERE / "string_api_golden.csv", index=False, float_format="%.17g")
    print(f"wrote {HERE / 'string_api_golden.csv'}")
