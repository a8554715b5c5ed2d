"""sklcrt: calibrated conditional randomization tests for single-cell CRISPR screens.

The core objects (binning, strata, samplers, statistics, p-values, propensity and the
:class:`CRTTest` estimator) work on numpy/scipy/pandas inputs; the AnnData layer
(:mod:`sklcrt.assignment`, :mod:`sklcrt.qc`, :mod:`sklcrt.pairs`, :mod:`sklcrt.inputs`,
:mod:`sklcrt.runners`, :mod:`sklcrt.io`, :mod:`sklcrt.report`, :mod:`sklcrt.datasets`) runs whole
screens. Figures for every step live in :mod:`sklcrt.plotting`.

The names below are imported lazily (PEP 562): ``import sklcrt`` loads no numpy, SciPy, AnnData or
matplotlib, so the ``sklcrt`` command answers ``--help`` at once. ``from sklcrt import CRTTest``
imports the module that defines the name on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # layer 1-2: binning and strata
    "Binner": "sklcrt.binning",
    "compute_bins": "sklcrt.binning",
    "StratumEncoder": "sklcrt.strata",
    # layer 3: samplers and the resampling string API
    "BaseSampler": "sklcrt.samplers",
    "BernoulliSampler": "sklcrt.samplers",
    "PermutationSampler": "sklcrt.samplers",
    "StratifiedPermutationSampler": "sklcrt.samplers",
    "DEFAULT_RESAMPLING_KWARGS": "sklcrt.resampling",
    "RECOMMENDED_HIGH_MOI_KWARGS": "sklcrt.resampling",
    "resolve_resampling": "sklcrt.resampling",
    # layer 4-5: statistics and p-values
    "BaseStatistic": "sklcrt.statistics",
    "NBScoreStatistic": "sklcrt.statistics",
    "OLSStatistic": "sklcrt.statistics",
    "compute_pvalues": "sklcrt.pvalues",
    "empirical_pvalues": "sklcrt.pvalues",
    "skew_normal_pvalues": "sklcrt.pvalues",
    "saddlepoint_pvalues": "sklcrt.saddlepoint",
    # propensity and preprocessing
    "NewtonLogisticRegression": "sklcrt.propensity",
    "fit_propensity": "sklcrt.propensity",
    "clr_transform": "sklcrt.preprocessing",
    "encode_covariates": "sklcrt.preprocessing",
    # layer 6: the estimator
    "CRTTest": "sklcrt.crt",
    "CRTResult": "sklcrt.crt",
    # AnnData face: guides, QC, pairs, inputs, io
    "add_burden_covariates": "sklcrt.assignment",
    "assign_guides": "sklcrt.assignment",
    "cellwise_qc": "sklcrt.qc",
    "CellwiseQCResult": "sklcrt.qc",
    "construct_cis_pairs": "sklcrt.pairs",
    "construct_trans_pairs": "sklcrt.pairs",
    "construct_positive_control_pairs": "sklcrt.pairs",
    "draw_calibration_pairs": "sklcrt.pairs",
    "gene_symbols": "sklcrt.pairs",
    "prepare_crt_inputs": "sklcrt.inputs",
    "unit_treatment": "sklcrt.inputs",
    "read_mudata": "sklcrt.io",
    "read_10x_h5": "sklcrt.io",
    # layer 7: runners, integration, report
    "build_test": "sklcrt.runners",
    "calibration_summary": "sklcrt.runners",
    "discovery_analysis": "sklcrt.runners",
    "fit_null_model": "sklcrt.runners",
    "power_check": "sklcrt.runners",
    "run_gene_loop": "sklcrt.runners",
    "run_ntc_ensemble": "sklcrt.runners",
    "run_ntc_groups": "sklcrt.runners",
    "run_unit": "sklcrt.runners",
    "combine_guides_bonferroni": "sklcrt.integration",
    "AnalysisReport": "sklcrt.report",
    # simulated data
    "simulate_screen": "sklcrt.datasets",
}

__all__ = [
    "AnalysisReport",
    "BaseSampler",
    "BaseStatistic",
    "BernoulliSampler",
    "Binner",
    "CRTResult",
    "CRTTest",
    "CellwiseQCResult",
    "DEFAULT_RESAMPLING_KWARGS",
    "NBScoreStatistic",
    "NewtonLogisticRegression",
    "OLSStatistic",
    "PermutationSampler",
    "RECOMMENDED_HIGH_MOI_KWARGS",
    "StratifiedPermutationSampler",
    "StratumEncoder",
    "add_burden_covariates",
    "assign_guides",
    "build_test",
    "calibration_summary",
    "cellwise_qc",
    "clr_transform",
    "combine_guides_bonferroni",
    "compute_bins",
    "compute_pvalues",
    "construct_cis_pairs",
    "construct_positive_control_pairs",
    "construct_trans_pairs",
    "discovery_analysis",
    "draw_calibration_pairs",
    "empirical_pvalues",
    "encode_covariates",
    "fit_null_model",
    "fit_propensity",
    "gene_symbols",
    "power_check",
    "prepare_crt_inputs",
    "read_10x_h5",
    "read_mudata",
    "resolve_resampling",
    "run_gene_loop",
    "run_ntc_ensemble",
    "run_ntc_groups",
    "run_unit",
    "saddlepoint_pvalues",
    "simulate_screen",
    "skew_normal_pvalues",
    "unit_treatment",
]


def __getattr__(name: str):
    """Import a public name's module on first access (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sklcrt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # static type checkers and IDEs see ordinary imports
    from sklcrt.assignment import add_burden_covariates, assign_guides
    from sklcrt.binning import Binner, compute_bins
    from sklcrt.crt import CRTResult, CRTTest
    from sklcrt.datasets import simulate_screen
    from sklcrt.inputs import prepare_crt_inputs, unit_treatment
    from sklcrt.integration import combine_guides_bonferroni
    from sklcrt.io import read_10x_h5, read_mudata
    from sklcrt.pairs import (
        construct_cis_pairs,
        construct_positive_control_pairs,
        construct_trans_pairs,
        draw_calibration_pairs,
        gene_symbols,
    )
    from sklcrt.preprocessing import clr_transform, encode_covariates
    from sklcrt.propensity import NewtonLogisticRegression, fit_propensity
    from sklcrt.pvalues import compute_pvalues, empirical_pvalues, skew_normal_pvalues
    from sklcrt.qc import CellwiseQCResult, cellwise_qc
    from sklcrt.report import AnalysisReport
    from sklcrt.resampling import (
        DEFAULT_RESAMPLING_KWARGS,
        RECOMMENDED_HIGH_MOI_KWARGS,
        resolve_resampling,
    )
    from sklcrt.runners import (
        build_test,
        calibration_summary,
        discovery_analysis,
        fit_null_model,
        power_check,
        run_gene_loop,
        run_ntc_ensemble,
        run_ntc_groups,
        run_unit,
    )
    from sklcrt.saddlepoint import saddlepoint_pvalues
    from sklcrt.samplers import (
        BaseSampler,
        BernoulliSampler,
        PermutationSampler,
        StratifiedPermutationSampler,
    )
    from sklcrt.statistics import BaseStatistic, NBScoreStatistic, OLSStatistic
    from sklcrt.strata import StratumEncoder
