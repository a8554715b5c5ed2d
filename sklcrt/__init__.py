"""sklcrt: calibrated conditional randomization tests for single-cell CRISPR screens.

The core objects (binning, strata, samplers, statistics, p-values, propensity and the
:class:`CRTTest` estimator) work on numpy/scipy/pandas inputs; the AnnData layer
(:mod:`sklcrt.assignment`, :mod:`sklcrt.inputs`, :mod:`sklcrt.runners`, :mod:`sklcrt.datasets`)
runs whole screens. Plots live in :mod:`sklcrt.plotting` (needs matplotlib).
"""

from sklcrt.assignment import add_burden_covariates, assign_guides
from sklcrt.binning import Binner, compute_bins
from sklcrt.crt import CRTTest
from sklcrt.datasets import simulate_screen
from sklcrt.inputs import prepare_crt_inputs, unit_treatment
from sklcrt.preprocessing import clr_transform, encode_covariates
from sklcrt.propensity import NewtonLogisticRegression, fit_propensity
from sklcrt.pvalues import compute_pvalues, empirical_pvalues, skew_normal_pvalues
from sklcrt.resampling import (
    DEFAULT_RESAMPLING_KWARGS,
    RECOMMENDED_HIGH_MOI_KWARGS,
    resolve_resampling,
)
from sklcrt.runners import (
    calibration_summary,
    discovery_analysis,
    fit_null_model,
    power_check,
    run_gene_loop,
    run_ntc_ensemble,
    run_ntc_groups,
    run_unit,
)
from sklcrt.samplers import (
    BaseSampler,
    BernoulliSampler,
    PermutationSampler,
    StratifiedPermutationSampler,
)
from sklcrt.statistics import BaseStatistic, NBScoreStatistic, OLSStatistic
from sklcrt.strata import StratumEncoder

__version__ = "0.1.0"

__all__ = [
    "BaseSampler",
    "BaseStatistic",
    "BernoulliSampler",
    "Binner",
    "CRTTest",
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
    "calibration_summary",
    "clr_transform",
    "compute_bins",
    "compute_pvalues",
    "discovery_analysis",
    "empirical_pvalues",
    "encode_covariates",
    "fit_null_model",
    "fit_propensity",
    "power_check",
    "prepare_crt_inputs",
    "resolve_resampling",
    "run_gene_loop",
    "run_ntc_ensemble",
    "run_ntc_groups",
    "run_unit",
    "simulate_screen",
    "skew_normal_pvalues",
    "unit_treatment",
]
