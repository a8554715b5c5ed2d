"""Propensity models: ``p_hat = P(x = 1 | C)`` for a unit's treatment ``x`` given covariates ``C``.

A screen fits one propensity model per unit, thousands of times on the same ``N`` cells, so the
default model must be fast and exact. :class:`NewtonLogisticRegression` minimises the same
objective as scikit-learn's ``LogisticRegression(C=C)`` by Newton's method: a handful of
iterations, each one ``N x p`` Hessian product and a ``p x p`` Cholesky solve. Any other
scikit-learn classifier with ``predict_proba`` can be used through :func:`fit_propensity`.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
import scipy.linalg
from scipy import special
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from sklcrt._threads import single_threaded_blas
from sklcrt._validation import check_binary_treatment, check_has_both_arms, check_same_length

__all__ = ["NewtonLogisticRegression", "fit_propensity"]

# Armijo sufficient-decrease constant and the most step halvings per Newton iteration.
_ARMIJO = 1e-4
_MAX_HALVINGS = 40
# Rows per chunk of the Hessian accumulation (a scaled float32 chunk of ~1 MB stays in cache).
_CHUNK_ROWS = 16384
# Fits on at least this many samples first fit a subsample (every sample of the rarer class and
# every k-th of the other, weighted by k, at least _SUBSAMPLE_PER_RARE per rare one and
# _SUBSAMPLE_MIN_COMMON in all) to a loose tolerance, and start from its optimum: the full fit then
# needs two or three Newton iterations instead of six or seven, to the same optimum.
_SUBSAMPLE_MIN_SAMPLES = 50_000
# Fits on at least this many samples take their Newton directions from single-precision
# Hessians (3x faster at 40,000 x 7); smaller ones keep double precision throughout.
_FLOAT32_MIN_SAMPLES = 8192
# (8 per rare sample: W1's subsample fits cost half of 16's, and the full fits still take three
# iterations from their starts.)
_SUBSAMPLE_PER_RARE = 8
_SUBSAMPLE_MIN_COMMON = 8192
_SUBSAMPLE_TOL = 1e-5
# A full Newton step that changes no linear predictor by more than this lets the next iteration
# reuse the Hessian's factorisation (which then contracts the steps about as much per iteration:
# at 0.1, Gasperini's fits took three or four reused steps of 1/60 each where a fresh Hessian
# takes one).
_REUSE_HESSIAN_DZ = 0.01
# With float32 Hessians (many samples), the start and every point reached by a larger step
# (largest coefficient change) take their probabilities and gradient in float32 as well (a
# quarter of the cost of double exponentials without AVX-512). At 0.1, W1's second points (after
# steps of 0.1-0.15) got gradients a few 1e-4 off, which cost an iteration.
_SINGLE_ABOVE = 0.3


class NewtonLogisticRegression(ClassifierMixin, BaseEstimator):
    """L2-penalised binary logistic regression fitted by Newton's method.

    Minimises the objective of scikit-learn's ``LogisticRegression(C=C)``,

    ``sum_i s_i * log_loss(y_i, x_i @ coef + intercept) + ||coef||^2 / (2 C)``

    (``s_i`` the sample weights; the intercept is not penalised), with Newton steps (Cholesky
    solve of the Hessian, least squares if it is singular) and a backtracking line search. It
    converges in a few iterations whatever the conditioning, so it is the fast default for fitting
    one propensity model per unit of a screen.

    Parameters
    ----------
    C : float, default=1.0
        Inverse of the L2 penalty strength, as in ``LogisticRegression``. ``np.inf`` means no
        penalty (the optimum may then not exist, e.g. on separable data).
    fit_intercept : bool, default=True
        Whether to fit an unpenalised intercept.
    tol : float, default=1e-8
        Stop when the largest Newton step is at most ``tol * (1 + max|parameters|)``, or when
        the steps contract so fast that the next one is predicted below a hundredth of that.
        Newton's method converges quadratically, so the parameters are then within a small
        fraction of ``tol`` of the optimum.
    max_iter : int, default=100
        Most Newton iterations; a ``ConvergenceWarning`` is issued when they run out.
    warm_start : bool, default=False
        Start from the previous fit's ``coef_``/``intercept_`` (when the number of features is
        unchanged) instead of from ``coef = 0`` and the intercept of the class frequencies.

    Attributes
    ----------
    classes_ : ndarray of shape (2,)
        Class labels; ``predict_proba[:, 1]`` is the probability of ``classes_[1]``.
    coef_ : ndarray of shape (1, n_features)
    intercept_ : ndarray of shape (1,)
        Zero when ``fit_intercept=False``.
    n_iter_ : int
        Newton iterations run.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when ``X`` had string column names.

    See Also
    --------
    sklearn.linear_model.LogisticRegression : same model, general solvers.
    fit_propensity : fit any classifier and return clipped propensities.

    Notes
    -----
    Each iteration costs one ``N x (p + 1)`` weighted Gram product ``A.T @ (w[:, None] * A)``
    (BLAS), where ``A`` is ``X`` with a column of ones appended, plus ``O(N)`` work per line-search
    trial. Binary targets only.

    Examples
    --------
    >>> import numpy as np
    >>> from sklcrt.propensity import NewtonLogisticRegression
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(1000, 3))
    >>> y = (X[:, 0] + rng.logistic(size=1000) > 2).astype(int)
    >>> model = NewtonLogisticRegression().fit(X, y)
    >>> model.predict_proba(X[:2]).shape
    (2, 2)
    >>> model.n_iter_ < 15
    True
    """

    _parameter_constraints: dict = {
        "C": [Interval(Real, 0, None, closed="right")],
        "fit_intercept": ["boolean"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "warm_start": ["boolean"],
    }

    def __init__(
        self,
        C: float = 1.0,
        fit_intercept: bool = True,
        tol: float = 1e-8,
        max_iter: int = 100,
        warm_start: bool = False,
    ):
        self.C = C
        self.fit_intercept = fit_intercept
        self.tol = tol
        self.max_iter = max_iter
        self.warm_start = warm_start

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    def fit(self, X, y, sample_weight=None) -> NewtonLogisticRegression:
        """Fit the model.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Dense covariates.
        y : array-like of shape (n_samples,)
            Binary target (two distinct labels).
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights; a weight of ``k`` is the same as repeating the row ``k`` times.

        Returns
        -------
        self : NewtonLogisticRegression
        """
        self._validate_params()
        warm = self.warm_start and hasattr(self, "coef_")
        previous = (self.coef_, self.intercept_) if warm else None
        X, y = validate_data(self, X, y, dtype=np.float64, y_numeric=False)
        if y.dtype.kind not in "biu":  # integer labels are always classification targets
            check_classification_targets(y)
        classes = _unique_labels(y)
        if classes.size != 2:
            if classes.size < 2:
                raise ValueError(
                    "NewtonLogisticRegression needs samples of 2 classes, but the data contains "
                    f"only one class: {classes[0]!r}."
                )
            raise ValueError(
                "Only binary classification is supported. NewtonLogisticRegression got "
                f"{classes.size} classes; use sklearn.linear_model.LogisticRegression for "
                "multiclass problems."
            )
        n_samples, n_features = X.shape
        w = _check_weights(sample_weight, n_samples)
        target = (y == classes[1]).astype(np.float64)
        w_pos = float(w @ target)
        w_total = float(w.sum())
        if w_pos <= 0 or w_pos >= w_total:
            raise ValueError(
                "NewtonLogisticRegression needs both classes to have a positive total "
                "sample_weight, but one class has weight 0."
            )

        penalty = np.full(n_features, 1.0 / self.C)
        beta = np.zeros(n_features + int(self.fit_intercept))
        warm = previous is not None and previous[0].shape == (1, n_features)
        if warm:
            beta[:n_features] = previous[0].ravel()
            if self.fit_intercept:
                beta[n_features] = previous[1][0]
        elif self.fit_intercept:
            mean = w_pos / w_total
            beta[n_features] = np.log(mean / (1.0 - mean))

        with single_threaded_blas():
            design32 = None
            if n_samples >= _FLOAT32_MIN_SAMPLES:
                design32 = _float32_design(X, self.fit_intercept)
            if n_samples >= _SUBSAMPLE_MIN_SAMPLES and not warm:
                start = _subsample_start(X, target, w, penalty, self.fit_intercept, self.max_iter)
                beta = beta if start is None else start
            beta, n_iter, converged = _newton(
                X,
                target,
                w,
                penalty,
                beta,
                self.fit_intercept,
                self.tol,
                self.max_iter,
                design32,
            )
        if not converged:
            warnings.warn(
                f"NewtonLogisticRegression did not converge in max_iter={self.max_iter} "
                "iterations; increase max_iter, or the penalty (smaller C) if the classes are "
                "separable.",
                ConvergenceWarning,
                stacklevel=2,
            )
        self.classes_ = classes
        self.coef_ = beta[None, :n_features].copy()
        self.intercept_ = np.array([beta[n_features] if self.fit_intercept else 0.0])
        self.n_iter_ = n_iter
        return self

    def decision_function(self, X) -> np.ndarray:
        """Log-odds of ``classes_[1]``, shape (n_samples,)."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=np.float64, reset=False)
        with single_threaded_blas():
            return X @ self.coef_[0] + self.intercept_[0]

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape (n_samples, 2), columns in the order of ``classes_``."""
        z = self.decision_function(X)
        proba = np.empty((z.size, 2))
        special.expit(z, out=proba[:, 1])
        np.negative(z, out=z)
        special.expit(z, out=proba[:, 0])
        return proba

    def predict_log_proba(self, X) -> np.ndarray:
        """Log class probabilities, shape (n_samples, 2)."""
        z = self.decision_function(X)
        return np.column_stack([special.log_expit(-z), special.log_expit(z)])

    def predict(self, X) -> np.ndarray:
        """Most probable class of each sample."""
        z = self.decision_function(X)  # checks the fit before classes_ is read
        return self.classes_[(z > 0).astype(np.intp)]


def _unique_labels(y: np.ndarray) -> np.ndarray:
    """``np.unique(y)``, from the minimum and maximum when ``y`` holds two adjacent integers.

    A screen fits thousands of propensity models on 0/1 treatments; the hash-based unique over
    all cells cost as much as a Newton iteration.
    """
    if y.dtype.kind in "biu" and y.size:
        lo, hi = y.min(), y.max()
        if int(hi) - int(lo) <= 1:  # every value is lo or hi, and both occur
            return np.unique(np.array([lo, hi], dtype=y.dtype))
    return np.unique(y)


def _check_weights(sample_weight, n_samples: int) -> np.ndarray:
    if sample_weight is None:
        return np.ones(n_samples)
    w = np.asarray(sample_weight, dtype=np.float64)
    if w.ndim == 0:
        w = np.full(n_samples, float(w))
    if w.shape != (n_samples,):
        raise ValueError(
            f"sample_weight must have shape ({n_samples},), one weight per sample, got shape "
            f"{w.shape}."
        )
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("sample_weight must be finite and non-negative.")
    if not np.any(w > 0):
        raise ValueError("sample_weight is zero for every sample; give some samples weight.")
    return w


def _objective(z, target, w, coef, penalty) -> float:
    # log(1 + exp(z)) - y z, written with one exp and one log1p (faster than np.logaddexp).
    loss = np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z))) - target * z
    return float(w @ loss + 0.5 * (penalty @ (coef * coef)))


def _expit(z: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-z))`` with numpy's vectorised ``exp`` (the fast path's probabilities)."""
    with np.errstate(over="ignore"):  # exp(-z) = inf for z < -709: the probability is 0
        p = np.exp(-z)
    p += 1.0
    return np.reciprocal(p, out=p)


def _gradient_and_hessian(
    X, z, target, w, fit_intercept, with_hessian, design32=None, single=False
):
    """Gradient, (optionally) Hessian, and curvatures ``h`` of the unpenalised loss.

    The Hessian ``A.T @ (h[:, None] * A)`` (``A = [X, 1]``, ``h = w p (1 - p)``) is accumulated
    over row chunks, so each scaled chunk stays in cache, and ``A`` is never materialised. With
    ``design32`` (``A.T`` in float32, see :func:`_float32_design`) the chunks are single
    precision, summed in double: the Hessian only steers the Newton steps, the gradient (double)
    decides where they stop, so the optimum is the same. ``single`` (with ``design32``) takes
    the probabilities and the gradient in float32 too, for points far from the optimum (see
    :func:`_newton`): about 4x cheaper exponentials, a gradient accurate to about 1e-6.
    """
    n_samples, n_features = X.shape
    if single:
        p = _expit(z.astype(np.float32))
        resid = w.astype(np.float32) * (p - target.astype(np.float32))
        grad = (design32 @ resid).astype(np.float64)
        h = w * p * (1.0 - p)
        return grad, (_hessian32(design32, h) if with_hessian else None), h
    p = special.expit(z) if design32 is None else _expit(z)
    resid = w * (p - target)
    grad = X.T @ resid
    if fit_intercept:
        grad = np.append(grad, resid.sum())
    h = w * p * (1.0 - p)
    if not with_hessian:
        return grad, None, h
    if design32 is not None:
        return grad, _hessian32(design32, h), h
    root = np.sqrt(h)
    hxx = np.zeros((n_features, n_features))
    buf = np.empty((min(_CHUNK_ROWS, n_samples), n_features))
    for start in range(0, n_samples, _CHUNK_ROWS):
        rows = slice(start, start + _CHUNK_ROWS)
        chunk = np.multiply(
            X[rows], root[rows, None], out=buf[: min(_CHUNK_ROWS, n_samples - start)]
        )
        hxx += chunk.T @ chunk
    if not fit_intercept:
        return grad, hxx, h
    hess = np.empty((n_features + 1, n_features + 1))
    hess[:n_features, :n_features] = hxx
    hess[:n_features, n_features] = hess[n_features, :n_features] = X.T @ h
    hess[n_features, n_features] = h.sum()
    return grad, hess, h


def _hessian32(design32: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``A.T @ (h[:, None] * A)`` from ``design32 = A.T`` (float32), chunks summed in double."""
    n_params, n_samples = design32.shape
    h32 = h.astype(np.float32)
    hess = np.zeros((n_params, n_params))
    buf = np.empty((n_params, min(_CHUNK_ROWS, n_samples)), dtype=np.float32)
    for start in range(0, n_samples, _CHUNK_ROWS):
        stop = min(n_samples, start + _CHUNK_ROWS)
        cols = design32[:, start:stop]
        scaled = np.multiply(cols, h32[start:stop], out=buf[:, : stop - start])
        hess += scaled @ cols.T
    return hess


# The last design converted by _float32_design: (key, the array, a probe of its rows, A.T).
_DESIGN_CACHE: list = []


def _float32_design(X: np.ndarray, fit_intercept: bool) -> np.ndarray:
    """``[X, 1].T`` (or ``X.T``) in float32, C-contiguous, for the Hessian of :func:`_hessian32`.

    A screen fits one model per unit on the same covariates, so the last conversion is kept
    (with a reference to ``X``, so its memory cannot be reused) and reused while ``X`` has the
    same memory, shape and strides and every 32nd row still holds the same values. A stale copy
    could only slow the iterations down, never move the optimum (see
    :func:`_gradient_and_hessian`).
    """
    key = (X.__array_interface__["data"][0], X.shape, X.strides, X.dtype.str, fit_intercept)
    probe = X[:: max(1, X.shape[0] // 32)]
    if _DESIGN_CACHE:
        cached_key, _, cached_probe, design = _DESIGN_CACHE[0]
        if cached_key == key and np.array_equal(cached_probe, probe):
            return design
    n_samples, n_features = X.shape
    design = np.empty((n_features + int(fit_intercept), n_samples), dtype=np.float32)
    design[:n_features] = X.T
    if fit_intercept:
        design[n_features] = 1.0
    _DESIGN_CACHE[:] = [(key, X, probe.copy(), design)]
    return design


def _subsample_start(X, target, w, penalty, fit_intercept, max_iter):
    """Start of a fit on many samples: the optimum of the fit on a weighted subsample, or None.

    The subsample keeps every sample of the rarer class and every k-th sample (by position) of
    the other, with its weight times k, so its objective estimates the full one; its optimum is
    within the sampling error of the full optimum, where Newton's method converges
    quadratically. Deterministic: the same data give the same start.
    """
    rare = target if 2.0 * (w @ target) <= w.sum() else 1.0 - target
    n_rare = int(np.count_nonzero(rare * w))
    n_common = int(np.count_nonzero((1.0 - rare) * w))
    k = n_common // max(_SUBSAMPLE_PER_RARE * n_rare, _SUBSAMPLE_MIN_COMMON)
    if k < 4:
        return None
    is_rare = rare > 0
    keep = is_rare.copy()
    keep[::k] = True
    rows = np.flatnonzero(keep)
    w_sub = w[rows] * np.where(is_rare[rows], 1.0, float(k))
    beta = np.zeros(X.shape[1] + int(fit_intercept))
    if fit_intercept:
        mean = float(w_sub @ target[rows]) / float(w_sub.sum())
        if not 0.0 < mean < 1.0:
            return None
        beta[-1] = np.log(mean / (1.0 - mean))
    beta, _, _ = _newton(
        X[rows], target[rows], w_sub, penalty, beta, fit_intercept, _SUBSAMPLE_TOL, max_iter
    )
    return beta if np.all(np.isfinite(beta)) else None


def _newton(X, target, w, penalty, beta, fit_intercept, tol, max_iter, design32=None):
    """Damped Newton iterations on (coef, intercept); returns (beta, n_iter, converged).

    Once a full step moves no linear predictor by more than ``_REUSE_HESSIAN_DZ`` the Hessian
    changes by about as little, so the next iteration reuses its factorisation (a few ``O(N)``
    passes instead of the ``O(N p^2)`` Hessian). The fixed point is the same optimum; the Hessian
    is refreshed as soon as a reused one stops shrinking the step fourfold per iteration.

    The line search evaluates the objective only where :func:`_full_step_decreases` cannot
    show that the full step satisfies the Armijo condition (near the optimum it always can), so
    most iterations cost two products with ``X`` and a few passes over the samples. With
    ``design32`` (many samples) the Hessian is single precision, and so are the probabilities
    and the gradient at the start and at every point reached by a step above
    ``_SINGLE_ABOVE`` (far from the optimum, where a gradient to 1e-6 steers as well); once a
    step is smaller every point is double, and the iterations stop only at a double point.

    They stop when a step is at most ``tol * (1 + max|beta|)``, or when a full step from a double
    point contracted so much that the next one, predicted as ``size * (size / previous size)``
    (at least what Newton's quadratic or a reused Hessian's linear convergence leaves), is a
    hundredth of that: then the step is taken and the point not evaluated again.
    """
    n_features = X.shape[1]
    full_penalty = np.append(penalty, 0.0) if fit_intercept else penalty

    def linear(b):
        return X @ b[:n_features] + (b[n_features] if fit_intercept else 0.0)

    def objective(z_, b):
        return _objective(z_, target, w, b[:n_features], penalty)

    z = linear(beta)
    f = None  # the objective at beta, computed when a line search needs it
    solve, reuse, last_step = None, False, np.inf
    single = design32 is not None  # the start: float32 probabilities and gradient
    for it in range(1, max_iter + 1):
        grad, hess, h = _gradient_and_hessian(
            X, z, target, w, fit_intercept, not reuse, design32=design32, single=single
        )
        grad += full_penalty * beta
        if hess is not None:
            hess[np.diag_indices_from(hess)] += full_penalty
            solve = _factorize(hess)
        step = solve(grad)
        slope = float(grad @ step)
        if not np.isfinite(slope) or slope <= 0:  # not a descent direction: use the gradient
            step, slope = grad, float(grad @ grad)
        dz = linear(step)
        t = 1.0
        if _full_step_decreases(slope, h, dz, full_penalty, step):
            beta_new, z_new, f_new = beta - step, z - dz, None
        else:
            if f is None:
                f = objective(z, beta)
            for _ in range(_MAX_HALVINGS):
                beta_new = beta - t * step
                z_new = z - t * dz
                f_new = objective(z_new, beta_new)
                # The small relative slack accepts steps that only rounding keeps from
                # decreasing f.
                if f_new <= f - _ARMIJO * t * slope + 1e-13 * abs(f):
                    break
                t *= 0.5
            else:
                if reuse or single:  # a stale Hessian or a float32 gradient: refresh both
                    reuse = single = False
                    continue
                return beta, it, True  # no decrease possible: at the optimum to machine precision
        beta, z, f = beta_new, z_new, f_new
        size = t * np.max(np.abs(step))
        bound = tol * (1.0 + np.max(np.abs(beta)))
        # The next step predicted from this full one's contraction, size * (size / last_step),
        # at most a hundredth of the bound (no prediction after the first step).
        predicted = t == 1.0 and last_step < np.inf and size * size <= 0.01 * bound * last_step
        if not single and (size <= bound or predicted):
            return beta, it, True
        contracting = not reuse or size <= 0.25 * last_step
        reuse = t == 1.0 and contracting and np.max(np.abs(dz)) <= _REUSE_HESSIAN_DZ
        single = single and size > _SINGLE_ABOVE  # once double, always double
        last_step = size
    return beta, max_iter, False


def _full_step_decreases(slope, h, dz, full_penalty, step) -> bool:
    """Whether the full step ``beta - step`` provably satisfies the Armijo condition.

    Along the step, ``phi(t) = f(beta - t step)`` has ``phi'(0) = -slope`` and
    ``phi''(0) = q = sum_i h_i dz_i^2 + step' P step`` (``P`` the penalty), and because the
    log-loss has a third derivative at most its second, ``phi''' <= M phi''`` with
    ``M = max_i |dz_i|``. Hence ``phi(1) <= phi(0) - slope + q (e^M - 1 - M) / M^2``, with no
    objective evaluation. When this bound (with 1 % slack for rounding) meets the Armijo
    condition, the step is one the line search would accept at ``t = 1``: the iterates are the
    same.
    """
    m = float(np.max(np.abs(dz))) if dz.size else 0.0
    if not np.isfinite(m) or m > 2.0:
        return False
    q = float(h @ (dz * dz)) + float(full_penalty @ (step * step))
    growth = 0.5 + m / 6.0 + m * m / 24.0 if m < 1e-3 else (np.expm1(m) - m) / (m * m)
    return bool(np.isfinite(q) and 1.01 * q * growth <= (1.0 - _ARMIJO) * slope)


def _factorize(hess: np.ndarray):
    """A function solving ``hess @ step = grad``: Cholesky, or least squares if singular."""
    try:
        factor = scipy.linalg.cho_factor(hess, check_finite=False)
        if np.all(np.isfinite(factor[0])):
            return lambda grad: scipy.linalg.cho_solve(factor, grad, check_finite=False)
    except (np.linalg.LinAlgError, scipy.linalg.LinAlgError, ValueError):
        pass
    return lambda grad: np.linalg.lstsq(hess, grad, rcond=None)[0]


def fit_propensity(classifier, C, x, clip: float = 1e-6) -> np.ndarray:
    """Fit ``classifier`` on ``(C, x)`` and return ``P(x = 1 | C)`` clipped to ``[clip, 1 - clip]``.

    Parameters
    ----------
    classifier : classifier with ``fit`` and ``predict_proba``
        Fitted in place (not cloned), so a ``NewtonLogisticRegression(warm_start=True)`` reused
        across units starts from the previous unit's fit.
    C : array-like of shape (n_cells, n_covariates)
        Encoded covariates.
    x : array-like of shape (n_cells,)
        Binary treatment (0/1 or bool), with treated and control cells.
    clip : float in [0, 0.5), default=1e-6
        Propensities are clipped to ``[clip, 1 - clip]`` so that no cell is certain to be treated
        or untreated.

    Returns
    -------
    p_hat : ndarray of shape (n_cells,), float64
        The column of ``predict_proba`` for class 1 (found through ``classifier.classes_``).

    Examples
    --------
    >>> import numpy as np
    >>> from sklcrt.propensity import NewtonLogisticRegression, fit_propensity
    >>> rng = np.random.default_rng(0)
    >>> C = np.column_stack([np.ones(500), rng.normal(size=500)])
    >>> x = rng.random(500) < 0.1
    >>> p_hat = fit_propensity(NewtonLogisticRegression(), C, x)
    >>> p_hat.shape, bool(0 < p_hat.min() and p_hat.max() < 1)
    ((500,), True)
    """
    if not (hasattr(classifier, "fit") and hasattr(classifier, "predict_proba")):
        raise ValueError(
            f"classifier must have fit and predict_proba methods, got {type(classifier).__name__}"
            " which lacks predict_proba; use a probabilistic classifier such as "
            "NewtonLogisticRegression or LogisticRegression (SVC needs probability=True)."
        )
    if isinstance(clip, bool) or not isinstance(clip, Real) or not 0.0 <= clip < 0.5:
        raise ValueError(f"clip must be a number in [0, 0.5), got {clip!r}.")
    x = check_binary_treatment(x, "x")
    check_has_both_arms(x, "x")
    check_same_length(C=C, x=x)
    classifier.fit(C, x.astype(np.int64))
    if type(classifier) is NewtonLogisticRegression:
        # The column of class 1 alone (predict_proba's own numbers): one pass of exp, not two.
        p_hat = special.expit(classifier.decision_function(C))
    else:
        p_hat = _positive_proba(classifier, C, x.size)
    if not np.all(np.isfinite(p_hat)):
        raise ValueError(
            f"classifier {type(classifier).__name__} returned non-finite probabilities; check C "
            "for extreme or non-finite values."
        )
    return np.clip(p_hat, clip, 1.0 - clip, out=p_hat)


def _positive_proba(classifier, C, n_cells: int) -> np.ndarray:
    """The column of ``classifier.predict_proba(C)`` for class 1 (checked), as float64."""
    proba = np.asarray(classifier.predict_proba(C))
    classes = getattr(classifier, "classes_", None)
    if classes is None:
        raise ValueError(
            f"classifier {type(classifier).__name__} has no classes_ after fit, so the column "
            "of predict_proba for class 1 is unknown."
        )
    column = np.flatnonzero(np.asarray(classes) == 1)
    if column.size != 1 or proba.ndim != 2 or proba.shape != (n_cells, len(classes)):
        raise ValueError(
            f"classifier {type(classifier).__name__} must predict_proba one column per class "
            f"with class 1 among classes_, got classes_={list(classes)} and predict_proba shape "
            f"{proba.shape}."
        )
    return proba[:, column[0]].astype(np.float64)
