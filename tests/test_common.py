"""scikit-learn's API checks on every public estimator, and sklcrt's own suites.

Checks that cannot apply are listed with the reason; everything else must pass.
"""

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklcrt import (
    BernoulliSampler,
    Binner,
    CRTTest,
    NBScoreStatistic,
    NewtonLogisticRegression,
    OLSStatistic,
    PermutationSampler,
    StratifiedPermutationSampler,
    StratumEncoder,
)
from sklcrt.utils.estimator_checks import check_sampler, check_statistic

# The checks that feed fit a samples x features matrix (plus an optional target) and expect
# predictions or transforms of it: they cannot apply to an estimator whose fit takes other data.
_MATRIX_DATA_CHECKS = (
    "check_complex_data",
    "check_dict_unchanged",
    "check_dont_overwrite_parameters",
    "check_dtype_object",
    "check_estimator_sparse_array",
    "check_estimator_sparse_matrix",
    "check_estimator_sparse_tag",
    "check_estimators_dtypes",
    "check_estimators_empty_data_messages",
    "check_estimators_fit_returns_self",
    "check_estimators_nan_inf",
    "check_estimators_overwrite_params",
    "check_estimators_pickle",
    "check_f_contiguous_array_estimator",
    "check_fit2d_1feature",
    "check_fit2d_1sample",
    "check_fit2d_predict1d",
    "check_fit_check_is_fitted",
    "check_fit_idempotent",
    "check_fit_score_takes_y",
    "check_methods_sample_order_invariance",
    "check_methods_subset_invariance",
    "check_n_features_in",
    "check_n_features_in_after_fitting",
    "check_pipeline_consistency",
    "check_positive_only_tag_during_fit",
    "check_readonly_memmap_input",
)

_REASONS = {
    StratumEncoder: "fit takes one propensity per cell (1-D) plus raw batch and burden, not a "
    "samples x features matrix; its own tests check the strata (tests/test_strata.py)",
    BernoulliSampler: "a sampler's fit takes a 1-D treatment (and propensities or strata); "
    "check_sampler is its suite",
    StratifiedPermutationSampler: "a sampler's fit takes a 1-D treatment and strata; "
    "check_sampler is its suite",
    PermutationSampler: "a sampler's fit takes a 1-D treatment; check_sampler is its suite",
    OLSStatistic: "a statistic's fit takes responses x covariates and it evaluates treatment "
    "vectors, not predictions of X; check_statistic is its suite",
    NBScoreStatistic: "a statistic's fit takes counts (non-negative responses) x covariates and "
    "it evaluates treatment vectors; check_statistic is its suite",
    CRTTest: "a test's fit needs responses (fit(X, y, responses=...)) besides covariates and the "
    "treatment, and it makes p-values, not predictions",
}

ESTIMATORS = [
    Binner(),
    NewtonLogisticRegression(),
    StratumEncoder(),
    BernoulliSampler(),
    StratifiedPermutationSampler(),
    PermutationSampler(),
    OLSStatistic(),
    NBScoreStatistic(),
    CRTTest(),
]


# A statistic validates its own (responses, covariates) input, so fewer checks fail: those
# that read n_features_in_, feed complex/object/empty/one-row matrices or a 1-D X, and
# (counts only) negative or non-integer data the count model refuses.
_STATISTIC_CHECKS = (
    "check_complex_data",
    "check_dtype_object",
    "check_estimator_sparse_tag",
    "check_estimators_empty_data_messages",
    "check_fit1d",
    "check_fit2d_1sample",
    "check_fit_score_takes_y",
    "check_n_features_in",
    "check_n_features_in_after_fitting",
)
_COUNT_STATISTIC_CHECKS = (
    *_STATISTIC_CHECKS,
    "check_estimators_fit_returns_self",
    "check_estimators_overwrite_params",
    "check_estimators_pickle",
    "check_pipeline_consistency",
    "check_positive_only_tag_during_fit",
    "check_readonly_memmap_input",
)
_CHECKS = {OLSStatistic: _STATISTIC_CHECKS, NBScoreStatistic: _COUNT_STATISTIC_CHECKS}


def _expected_failed_checks(estimator) -> dict:
    reason = _REASONS.get(type(estimator))
    if reason is None:
        return {}
    return dict.fromkeys(_CHECKS.get(type(estimator), _MATRIX_DATA_CHECKS), reason)


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=_expected_failed_checks)
def test_sklearn_api(estimator, check):
    check(estimator)


@pytest.mark.parametrize(
    "sampler", [BernoulliSampler(), StratifiedPermutationSampler(), PermutationSampler()]
)
def test_check_sampler(sampler):
    check_sampler(sampler)


@pytest.mark.parametrize(
    "statistic, counts",
    [(NBScoreStatistic(), True), (OLSStatistic(), True), (OLSStatistic(), False)],
)
def test_check_statistic(statistic, counts):
    check_statistic(statistic, counts=counts)
