"""Tests for sklcrt.propensity: NewtonLogisticRegression and fit_propensity."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils.estimator_checks import parametrize_with_checks

from sklcrt.propensity import NewtonLogisticRegression, fit_propensity


@parametrize_with_checks(
    [NewtonLogisticRegression(), NewtonLogisticRegression(C=0.1, fit_intercept=False)]
)
def test_sklearn_compatible(estimator, check):
    check(estimator)


# ----------------------------------------------------------------------------------- designs


def _design(name: str, rng: np.random.Generator):
    """(X, y) for a named design; n is modest so sklearn's tight lbfgs reference stays fast."""
    n = 4000
    if name == "gaussian":
        X = rng.normal(size=(n, 4))
        y = X @ [1.0, -1.0, 0.5, 0.0] + rng.logistic(size=n) > 0
    elif name == "near_separable":
        X = rng.normal(size=(n, 3))
        y = X[:, 0] + 0.05 * rng.logistic(size=n) > 0
    elif name == "separable":
        X = rng.normal(size=(n, 3))
        y = X[:, 0] > 0
    elif name == "rare_positives":  # 0.5% positives
        n = 20_000
        X = rng.normal(size=(n, 5))
        lin = 0.8 * X[:, 0] - 0.5 * X[:, 1]
        y = np.zeros(n, dtype=bool)
        y[np.argsort(lin + rng.logistic(size=n))[-100:]] = True
    elif name == "duplicated_intercept":  # a column of ones, and a duplicated feature
        Z = rng.normal(size=(n, 3))
        X = np.column_stack([np.ones(n), Z, Z[:, 1]])
        y = Z[:, 0] + Z[:, 1] + rng.logistic(size=n) > 1
    elif name == "all_level_one_hot":  # one-hot of every batch: collinear with the intercept
        batch = rng.integers(0, 4, size=n)
        X = np.column_stack([np.eye(4)[batch], rng.normal(size=n)])
        y = (batch == 2) | (rng.random(n) < 0.05 + 0.05 * (X[:, 4] > 1))
    elif name == "badly_scaled":
        X = rng.normal(size=(n, 3)) * [1.0, 100.0, 1e-3]
        y = X @ [1.0, 0.01, 1000.0] + rng.logistic(size=n) > 0
    else:  # pragma: no cover
        raise ValueError(name)
    return X, y.astype(int)


DESIGNS = [
    "gaussian",
    "near_separable",
    "separable",
    "rare_positives",
    "duplicated_intercept",
    "all_level_one_hot",
    "badly_scaled",
]


def _sklearn_reference(X, y, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(tol=1e-10, max_iter=10_000, **kwargs).fit(X, y)


@pytest.mark.parametrize("C", [1.0, 0.05])
@pytest.mark.parametrize("design", DESIGNS)
def test_agrees_with_sklearn_logistic_regression(design, C):
    X, y = _design(design, np.random.default_rng(1))
    if design == "rare_positives":
        assert y.mean() == pytest.approx(0.005)
    model = NewtonLogisticRegression(C=C).fit(X, y)
    assert model.n_iter_ <= 30
    ref = _sklearn_reference(X, y, C=C)
    np.testing.assert_allclose(model.predict_proba(X), ref.predict_proba(X), rtol=0, atol=1e-4)
    # Against sklearn's exact Newton solver the agreement is to rounding error.
    exact = LogisticRegression(C=C, solver="newton-cholesky", tol=1e-12, max_iter=1000).fit(X, y)
    np.testing.assert_allclose(model.predict_proba(X), exact.predict_proba(X), rtol=0, atol=1e-8)


def test_optimality_conditions():
    """At the fit the gradient of sum(log-loss) + ||coef||^2 / (2C) vanishes."""
    rng = np.random.default_rng(2)
    X, y = _design("duplicated_intercept", rng)
    C = 0.3
    model = NewtonLogisticRegression(C=C).fit(X, y)
    p = model.predict_proba(X)[:, 1]
    grad_coef = X.T @ (p - y) + model.coef_[0] / C
    grad_intercept = np.sum(p - y)
    scale = len(y)
    assert np.max(np.abs(grad_coef)) < 1e-8 * scale
    assert abs(grad_intercept) < 1e-8 * scale
    # The penalty splits the weight of the duplicated feature equally.
    assert model.coef_[0, 2] == pytest.approx(model.coef_[0, 4], abs=1e-10)


def test_no_intercept_agrees_with_sklearn():
    X, y = _design("gaussian", np.random.default_rng(3))
    model = NewtonLogisticRegression(fit_intercept=False).fit(X, y)
    assert model.intercept_.tolist() == [0.0]
    ref = _sklearn_reference(X, y, fit_intercept=False)
    np.testing.assert_allclose(model.predict_proba(X), ref.predict_proba(X), atol=1e-4)


def test_unpenalised_with_collinear_columns():
    """C=inf: the Hessian is singular along the duplicated column (least-squares Newton step)."""
    X, y = _design("duplicated_intercept", np.random.default_rng(13))
    X = X[:, 1:]  # drop the column of ones; keep the duplicated feature
    model = NewtonLogisticRegression(C=np.inf).fit(X, y)
    ref = _sklearn_reference(X, y, C=np.inf)
    np.testing.assert_allclose(model.predict_proba(X), ref.predict_proba(X), atol=1e-4)


def test_sample_weight_agrees_with_sklearn_and_repetition():
    rng = np.random.default_rng(4)
    X, y = _design("gaussian", rng)
    w = rng.integers(0, 4, size=len(y)).astype(float)
    model = NewtonLogisticRegression().fit(X, y, sample_weight=w)
    ref = _sklearn_reference(X, y, C=1.0)
    ref.fit(X, y, sample_weight=w)
    np.testing.assert_allclose(model.predict_proba(X), ref.predict_proba(X), atol=1e-4)
    repeated = NewtonLogisticRegression().fit(
        np.repeat(X, w.astype(int), 0), np.repeat(y, w.astype(int))
    )
    np.testing.assert_allclose(model.coef_, repeated.coef_, atol=1e-8)
    np.testing.assert_allclose(model.intercept_, repeated.intercept_, atol=1e-8)


def test_warm_start_reaches_the_same_optimum_faster():
    rng = np.random.default_rng(5)
    X, y = _design("all_level_one_hot", rng)
    cold = NewtonLogisticRegression().fit(X, y)
    warm = NewtonLogisticRegression(warm_start=True).fit(X, y)
    warm.fit(X, y)  # restart at the optimum
    assert warm.n_iter_ <= 2 < cold.n_iter_
    np.testing.assert_allclose(warm.coef_, cold.coef_, atol=1e-9)
    # A new target (another unit) from the previous solution: same answer as a cold start.
    y2 = (rng.random(len(y)) < 0.1).astype(int)
    np.testing.assert_allclose(
        warm.fit(X, y2).predict_proba(X),
        NewtonLogisticRegression().fit(X, y2).predict_proba(X),
        atol=1e-9,
    )
    # A different number of features: warm start is ignored, not an error.
    warm.fit(X[:, :3], y2)
    assert warm.coef_.shape == (1, 3)


def test_labels_attributes_and_predictions():
    rng = np.random.default_rng(6)
    X, y = _design("gaussian", rng)
    labels = np.array(["control", "treated"])[y]
    model = NewtonLogisticRegression().fit(X, labels)
    assert model.classes_.tolist() == ["control", "treated"]
    assert model.coef_.shape == (1, 4) and model.intercept_.shape == (1,)
    assert isinstance(model.n_iter_, int) and model.n_iter_ >= 1
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    np.testing.assert_allclose(np.exp(model.predict_log_proba(X)), proba)
    z = model.decision_function(X)
    np.testing.assert_allclose(proba[:, 1], 1 / (1 + np.exp(-z)))
    np.testing.assert_array_equal(model.predict(X), np.where(z > 0, "treated", "control"))
    # Same probabilities as with 0/1 labels.
    np.testing.assert_allclose(NewtonLogisticRegression().fit(X, y).predict_proba(X), proba)


@pytest.mark.parametrize(
    "y",
    [
        np.arange(30) % 2,
        (np.arange(30) % 2).astype(bool),
        (np.arange(30) % 2 + 4).astype(np.uint8),
        np.where(np.arange(30) % 2, 7, -2),
    ],
)
def test_integer_labels(y):
    X = np.random.default_rng(7).normal(size=(30, 2))
    model = NewtonLogisticRegression().fit(X, y)
    np.testing.assert_array_equal(model.classes_, np.unique(y))
    assert model.classes_.dtype == np.unique(y).dtype


def test_binary_only_and_one_class_errors():
    X = np.random.default_rng(7).normal(size=(30, 2))
    with pytest.raises(ValueError, match="Only binary classification"):
        NewtonLogisticRegression().fit(X, np.arange(30) % 3)
    with pytest.raises(ValueError, match="Only binary classification"):
        NewtonLogisticRegression().fit(X, (np.arange(30) % 3).astype(np.uint8))
    with pytest.raises(ValueError, match="only one class"):
        NewtonLogisticRegression().fit(X, np.ones(30))
    with pytest.raises(ValueError, match="only one class"):
        NewtonLogisticRegression().fit(X, np.ones(30, dtype=int))
    with pytest.raises(ValueError, match="Unknown label type"):
        NewtonLogisticRegression().fit(X, np.linspace(0, 1, 30))
    with pytest.raises(ValueError, match="both classes"):
        NewtonLogisticRegression().fit(X, np.arange(30) % 2, sample_weight=np.arange(30) % 2)
    with pytest.raises(ValueError, match="sample_weight"):
        NewtonLogisticRegression().fit(X, np.arange(30) % 2, sample_weight=-np.ones(30))
    with pytest.raises(ValueError, match="C"):
        NewtonLogisticRegression(C=0).fit(X, np.arange(30) % 2)


def test_convergence_warning():
    X, y = _design("separable", np.random.default_rng(8))
    with pytest.warns(ConvergenceWarning, match="max_iter"):
        NewtonLogisticRegression(C=1e6, max_iter=2).fit(X, y)


def test_clone_and_params():
    model = NewtonLogisticRegression(C=0.5, warm_start=True)
    assert clone(model).get_params() == model.get_params()
    assert model.get_params()["C"] == 0.5


# ------------------------------------------------------------------------------ fit_propensity


def _unit(rng, n=3000):
    C = np.column_stack([np.ones(n), rng.normal(size=(n, 3))])
    x = rng.random(n) < 1 / (1 + np.exp(-(C[:, 1] - 3)))
    return C, x


@pytest.mark.parametrize(
    "classifier",
    [
        NewtonLogisticRegression(),
        LogisticRegression(tol=1e-10, max_iter=10_000),
        make_pipeline(StandardScaler(), LogisticRegression()),
        GaussianNB(),
    ],
)
def test_fit_propensity_any_probabilistic_classifier(classifier):
    rng = np.random.default_rng(9)
    C, x = _unit(rng, n=600)
    p_hat = fit_propensity(classifier, C, x)
    assert p_hat.shape == (600,) and p_hat.dtype == np.float64
    assert np.all((p_hat >= 1e-6) & (p_hat <= 1 - 1e-6))
    # The column of class 1: treated cells get higher propensities on average.
    assert p_hat[x].mean() > p_hat[~x].mean()
    # The classifier itself is fitted (not a clone).
    assert hasattr(classifier, "classes_")


def test_fit_propensity_matches_sklearn():
    rng = np.random.default_rng(10)
    C, x = _unit(rng)
    p_newton = fit_propensity(NewtonLogisticRegression(), C, x)
    p_sklearn = fit_propensity(LogisticRegression(tol=1e-10, max_iter=10_000), C, x)
    np.testing.assert_allclose(p_newton, p_sklearn, atol=1e-4)
    # Bool, 0/1 int and 0/1 float treatments are the same thing.
    np.testing.assert_allclose(
        fit_propensity(NewtonLogisticRegression(), C, x.astype(float)), p_newton
    )


def test_fit_propensity_clips():
    rng = np.random.default_rng(11)
    n = 2000
    C = rng.normal(size=(n, 1))
    x = C[:, 0] > 0  # separable: unclipped propensities reach 0 and 1 to machine precision
    p_hat = fit_propensity(NewtonLogisticRegression(C=1e4), C, x, clip=1e-3)
    assert p_hat.min() == pytest.approx(1e-3) and p_hat.max() == pytest.approx(1 - 1e-3)
    p_raw = fit_propensity(NewtonLogisticRegression(C=1e4), C, x, clip=0.0)
    assert p_raw.min() < 1e-3


class _ReversedClassesClassifier(ClassifierMixin, BaseEstimator):
    """Orders its classes as [1, 0], so the class-1 column is column 0."""

    def fit(self, X, y):
        self.classes_ = np.array([1, 0])
        self.rate_ = float(np.mean(y))
        return self

    def predict_proba(self, X):
        n = len(X)
        return np.column_stack([np.full(n, self.rate_), np.full(n, 1 - self.rate_)])


def test_fit_propensity_uses_classes_to_pick_the_column():
    x = np.r_[np.ones(10), np.zeros(90)]
    p_hat = fit_propensity(_ReversedClassesClassifier(), np.zeros((100, 1)), x)
    np.testing.assert_allclose(p_hat, 0.1)


def test_fit_propensity_errors():
    rng = np.random.default_rng(12)
    C, x = _unit(rng, n=200)
    for clf in (LinearSVC(), SVC()):
        with pytest.raises(ValueError, match="predict_proba"):
            fit_propensity(clf, C, x)
    with pytest.raises(ValueError, match="length mismatch"):
        fit_propensity(NewtonLogisticRegression(), C[:-1], x)
    with pytest.raises(ValueError, match="binary"):
        fit_propensity(NewtonLogisticRegression(), C, x * 2.0)
    with pytest.raises(ValueError, match="no treated cells"):
        fit_propensity(NewtonLogisticRegression(), C, np.zeros(200))
    with pytest.raises(ValueError, match="no control cells"):
        fit_propensity(NewtonLogisticRegression(), C, np.ones(200))
    for clip in (-0.1, 0.5, "1e-6", True):
        with pytest.raises(ValueError, match="clip"):
            fit_propensity(NewtonLogisticRegression(), C, x, clip=clip)
    C_nan = C.copy()
    C_nan[0, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_propensity(NewtonLogisticRegression(), C_nan, x)


def _plain_newton(X, y):
    """The float64 Newton iterations from the default start, to 1e-10: (beta, n_iter)."""
    from sklcrt import propensity

    beta0 = np.zeros(X.shape[1] + 1)
    beta0[-1] = np.log(y.mean() / (1 - y.mean()))
    exact, n_iter, converged = propensity._newton(
        X, y.astype(float), np.ones(X.shape[0]), np.ones(X.shape[1]), beta0, True, 1e-10, 100
    )
    assert converged
    return exact, n_iter


def _assert_same_optimum(model, exact):
    np.testing.assert_allclose(model.coef_[0], exact[:-1], rtol=0, atol=1e-8)
    np.testing.assert_allclose(model.intercept_[0], exact[-1], rtol=0, atol=1e-8)


def test_float32_hessians_reach_the_same_optimum():
    # 8,192 to 50,000 samples: float32 Hessians (no subsample start) steer the same Newton
    # iterations to the optimum of the float64 ones, to solver tolerance.
    from sklcrt import propensity

    rng = np.random.default_rng(6)
    n = 20_000
    assert propensity._FLOAT32_MIN_SAMPLES <= n < propensity._SUBSAMPLE_MIN_SAMPLES
    X = np.column_stack([rng.normal(size=(n, 3)), rng.integers(0, 2, size=n)])
    lin = -4.0 + 0.7 * X[:, 0] - 0.3 * X[:, 1] + 0.9 * X[:, 3]
    y = (lin + rng.logistic(size=n) > 0).astype(int)
    model = NewtonLogisticRegression().fit(X, y)
    exact, n_exact = _plain_newton(X, y)
    _assert_same_optimum(model, exact)
    assert model.n_iter_ <= n_exact + 1


def test_many_samples_path_reaches_the_same_optimum():
    # >= 50,000 samples: float32 Hessians and a start from a subsample fit; the optimum is the
    # one of the plain float64 Newton iterations from the default start, to solver tolerance.
    rng = np.random.default_rng(5)
    n = 60_000
    X = np.column_stack([np.ones(n), rng.normal(size=(n, 4)), rng.integers(0, 2, size=n)])
    lin = -5.0 + 0.6 * X[:, 1] - 0.4 * X[:, 2] + 0.8 * X[:, 5]
    y = (lin + rng.logistic(size=n) > 0).astype(int)
    assert 100 < y.sum() < 1000
    model = NewtonLogisticRegression().fit(X, y)
    _assert_same_optimum(model, _plain_newton(X, y)[0])
    assert model.n_iter_ <= 5
    # The cached float32 design is rebuilt when the covariates change in place.
    X2 = X.copy()
    NewtonLogisticRegression().fit(X2, y)
    X2[:, 1] *= 2.0
    refit = NewtonLogisticRegression().fit(X2, y)
    _assert_same_optimum(refit, _plain_newton(X2, y)[0])


@pytest.mark.parametrize("n", [20_000, 60_000])
def test_float32_points_then_double_points_to_the_same_optimum(n, monkeypatch):
    # With float32 Hessians the start and the points after large steps are float32 passes; the
    # fit stops only at a double point (possibly by the predicted-step rule), at the optimum of
    # the plain float64 iterations to within a hundredth of the tolerance's bound.
    from sklcrt import propensity

    rng = np.random.default_rng(11)
    X = np.column_stack([rng.normal(size=(n, 4)), rng.integers(0, 2, size=n)])
    lin = -4.5 + 0.8 * X[:, 0] - 0.5 * X[:, 1] + 0.3 * X[:, 2] + 0.9 * X[:, 4]
    y = (lin + rng.logistic(size=n) > 0).astype(int)
    passes = []
    original = propensity._gradient_and_hessian

    def recording(*args, single=False, **kwargs):
        passes.append((args[0].shape[0], single))
        return original(*args, single=single, **kwargs)

    monkeypatch.setattr(propensity, "_gradient_and_hessian", recording)
    model = NewtonLogisticRegression().fit(X, y)
    full = [single for rows, single in passes if rows == n]
    assert full[0] and not full[-1]  # float32 at the start, double at the end
    assert full == sorted(full, reverse=True)  # once double, always double
    exact, _ = _plain_newton(X, y)
    beta = np.append(model.coef_[0], model.intercept_[0])
    assert np.max(np.abs(beta - exact)) <= 1e-8 * (1 + np.max(np.abs(exact)))
