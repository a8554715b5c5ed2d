"""P-values from null statistics: empirical, skew-normal tail, and two-stage (adaptive) resampling.

Every function is vectorised over ``G`` responses: the observed statistics are a ``(G,)`` array and
the null statistics a ``(B, G)`` array, one row per resample (the layout the statistics return).
``alternative`` uses SciPy's words: ``"greater"`` (large statistics are evidence against the null),
``"less"`` and ``"two-sided"``.

Empirical p-values
    ``(1 + #{T* >= T}) / (B + 1)`` for ``"greater"``, ``(1 + #{T* <= T}) / (B + 1)`` for ``"less"``,
    and ``min(1, 2 * min(left, right))`` for ``"two-sided"``. Ties count as at least as extreme, so
    the p-value is valid (``P(p <= a) <= a`` under an exchangeable null) for any statistic.

Skew-normal p-values
    A skew-normal is fitted to each response's null statistics by the method of moments and its tail
    probability taken, as SCEPTRE does. It resolves p-values far below ``1 / (B + 1)``, but only as
    well as the fit, so a goodness-of-fit guard decides, response by response and tail by tail,
    whether to trust it, and each tail is taken from a fit whose skewness is nudged half a
    standard error towards that tail (a small conservative margin for the estimated skewness).
    :func:`compute_pvalues` uses it only where the guard accepts the fit and the empirical p-value
    is resolution-limited (below ``min(0.05, 10 / (B + 1))`` by default); everywhere else the
    empirical p-value is kept, and the ``methods`` array it returns says which is which.

Two-stage resampling
    :func:`adaptive_second_stage_mask` and :func:`combine_two_stage_pvalues` implement "few
    resamples for every response, many more only where the first stage says the p-value may be
    small" in a way that keeps the p-values valid (see their Notes).
"""

from __future__ import annotations

import numbers

import numpy as np
from scipy import special, stats

from sklcrt._choices import ALTERNATIVES
from sklcrt._choices import RESAMPLING_PVALUE_METHODS as PVALUE_METHODS

__all__ = [
    "ALTERNATIVES",
    "PVALUE_METHODS",
    "SKEW_NORMAL_THRESHOLD",
    "adaptive_second_stage_mask",
    "combine_two_stage_pvalues",
    "compute_pvalues",
    "empirical_pvalues",
    "fit_skew_normal",
    "skew_normal_pvalues",
]


SKEW_NORMAL_THRESHOLD = 0.05
"""Largest empirical p-value that :func:`compute_pvalues` replaces by a skew-normal one by default.

The default threshold is ``min(SKEW_NORMAL_THRESHOLD, 10 / (B + 1))``: the skew-normal is used only
where fewer than about 10 null statistics are as extreme as the observed one, so that the empirical
p-value is limited by its resolution ``1 / (B + 1)`` and the fitted tail is worth its (guarded)
risk. Above it the empirical p-value is exactly calibrated and already has a modest relative
error, and a fitted model could only add model error.
"""

_SKEW_NORMAL_MIN_EXCEEDANCES = 10

# Largest |skewness| a skew-normal can reach is ~0.99527; method-of-moments clips just below it.
_MAX_SKEWNESS = 0.995
_SQRT_2_OVER_PI = np.sqrt(2.0 / np.pi)

# Goodness-of-fit guard. The fitted CDF at the empirical quantiles of these levels must be within
# _GOF_Z binomial standard errors (plus 1/B) of the empirical CDF.
_GOF_LEVELS = np.array([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.975, 0.99])
_GOF_Z = 3.5
# The extremes of the null must be producible by the fit: B * P_fit(T > max) >= _OUTLIER_MASS
# (and likewise below the minimum). Under a correct fit this fails with probability ~_OUTLIER_MASS.
_OUTLIER_MASS = 1e-3
# Too few resamples (the skewness is then too noisy for tails beyond 1 / (B + 1): p-values ~1.5x
# too small at 1e-4 with B = 199 in simulations), or a too discrete null (fewer distinct values than
# this fraction of B): the skew-normal is not trusted.
_MIN_RESAMPLES = 400
_MIN_DISTINCT_FRACTION = 0.5
# Skewness beyond the feasible range by more than this many standard errors (sqrt(6 / B)): the
# skew-normal family cannot describe the null.
_SKEWNESS_Z = 3.0
# Each tail's p-value uses the skewness moved this many standard errors towards thickening that
# tail: a small correction for the error of the estimated skewness, to which the far tails (above
# all the thin one, opposite the skew) are very sensitive.
_SKEWNESS_SHIFT = 0.5
# Columns processed per block so the temporary copies stay near 32 MiB.
_BLOCK_ELEMENTS = 2**22


def _check_alternative(alternative) -> str:
    if not isinstance(alternative, str) or alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {list(ALTERNATIVES)}, got {alternative!r}.")
    return alternative


def _as_statistic_and_null(statistic, null) -> tuple[np.ndarray, np.ndarray]:
    """Return ``statistic`` as float (G,) and ``null`` as float (B, G), or raise."""
    t = np.atleast_1d(np.asarray(statistic, dtype=np.float64))
    if t.ndim != 1:
        raise ValueError(f"statistic must be a 1-D array of shape (G,), got shape {t.shape}.")
    z = np.asarray(null, dtype=np.float64)
    if z.ndim == 1:
        if t.size != 1:
            raise ValueError(
                f"null is 1-D (one response) but statistic has {t.size} entries; pass null as a "
                "(B, G) array with one column per response."
            )
        z = z[:, None]
    if z.ndim != 2:
        raise ValueError(
            f"null must be a (B, G) array (one row per resample), got shape {z.shape}."
        )
    if z.shape[1] != t.size:
        raise ValueError(
            f"null has {z.shape[1]} columns but statistic has {t.size} entries; null must be "
            "(B, G) with one row per resample and one column per response."
        )
    if z.shape[0] < 1:
        raise ValueError("null has no rows; at least one resample is needed.")
    return t, z


def _blocks(n_rows: int, n_cols: int):
    step = max(1, _BLOCK_ELEMENTS // max(n_rows, 1))
    for start in range(0, n_cols, step):
        yield slice(start, min(start + step, n_cols))


def _combine_sides(left: np.ndarray, right: np.ndarray, alternative: str) -> np.ndarray:
    if alternative == "greater":
        return right
    if alternative == "less":
        return left
    return np.minimum(1.0, 2.0 * np.minimum(left, right))


def empirical_pvalues(statistic, null, alternative: str = "two-sided") -> np.ndarray:
    """Empirical resampling p-values, one per response.

    Parameters
    ----------
    statistic : array-like of shape (G,)
        Observed statistic of each response.
    null : array-like of shape (B, G)
        Null statistics, one row per resample. A 1-D array is taken as one response.
    alternative : {"two-sided", "less", "greater"}, default="two-sided"
        ``"greater"``: ``(1 + #{T* >= T}) / (B + 1)``; ``"less"``: ``(1 + #{T* <= T}) / (B + 1)``;
        ``"two-sided"``: ``min(1, 2 * min(less, greater))``.

    Returns
    -------
    pvalues : ndarray of shape (G,)
        In ``[1 / (B + 1), 1]``; NaN where the observed statistic is NaN.

    Notes
    -----
    Ties count as at least as extreme, which keeps the p-value valid for discrete statistics. Null
    statistics that are NaN (a resample on which the statistic is undefined) are dropped from that
    response's count, and ``B`` becomes the number of non-NaN ones: under an exchangeable null the
    observed statistic, given that it is defined, is exchangeable with the defined resampled ones,
    so the p-value stays valid. ``+inf``/``-inf`` are ordinary (extreme) values.

    Examples
    --------
    >>> import numpy as np
    >>> from sklcrt.pvalues import empirical_pvalues
    >>> null = np.array([[1.0], [2.0], [3.0], [4.0]])
    >>> empirical_pvalues([3.0], null, alternative="greater")  # (1 + 2) / 5
    array([0.6])
    >>> empirical_pvalues([3.0], null, alternative="less")  # (1 + 3) / 5
    array([0.8])
    >>> empirical_pvalues([3.0], null)  # min(1, 2 * 0.6)
    array([1.])
    """
    alternative = _check_alternative(alternative)
    t, z = _as_statistic_and_null(statistic, null)
    n_rows, n_cols = z.shape
    left = np.empty(n_cols)
    right = np.empty(n_cols)
    for sl in _blocks(n_rows, n_cols):
        zb, tb = z[:, sl], t[sl]
        n_valid = n_rows - np.count_nonzero(np.isnan(zb), axis=0)
        denom = n_valid + 1.0
        if alternative != "less":
            right[sl] = (1.0 + np.count_nonzero(zb >= tb, axis=0)) / denom
        if alternative != "greater":
            left[sl] = (1.0 + np.count_nonzero(zb <= tb, axis=0)) / denom
    p = _combine_sides(left, right, alternative)
    p[np.isnan(t)] = np.nan
    return p


def fit_skew_normal(null) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Method-of-moments skew-normal fit to each column of the null statistics.

    Parameters
    ----------
    null : array-like of shape (B, G)
        Null statistics, one row per resample, one column per response (a 1-D array is one
        response).

    Returns
    -------
    xi, omega, alpha : ndarrays of shape (G,)
        Location, scale and shape in SciPy's parametrisation:
        ``scipy.stats.skewnorm(alpha, loc=xi, scale=omega)``. ``omega`` is 0 for a constant column
        and all three are NaN for a column with a non-finite value or fewer than 3 rows.

    Notes
    -----
    The sample mean ``m``, standard deviation ``s`` (``ddof=1``) and adjusted skewness ``g``
    (``scipy.stats.skew(bias=False)``) are matched to the skew-normal's. With
    ``mu_z = delta * sqrt(2 / pi)`` and ``delta = alpha / sqrt(1 + alpha**2)`` the skewness is
    ``(4 - pi) / 2 * mu_z**3 / (1 - mu_z**2)**1.5``, which inverts in closed form:
    ``r = cbrt(2 g / (4 - pi))``, ``mu_z = r / sqrt(1 + r**2)``,
    ``omega = s / sqrt(1 - mu_z**2)``, ``xi = m - omega * mu_z``. The skew-normal cannot reach
    ``|g| >= 0.9953``, so ``g`` is first clipped to ``[-0.995, 0.995]`` (the goodness-of-fit guard
    of :func:`skew_normal_pvalues` rejects columns whose skewness is clearly beyond it).

    Examples
    --------
    >>> import numpy as np
    >>> from scipy import special, stats
    >>> from sklcrt.pvalues import fit_skew_normal
    >>> null = stats.skewnorm.rvs(3.0, loc=1.0, scale=2.0, size=(200_000, 1), random_state=0)
    >>> xi, omega, alpha = fit_skew_normal(null)
    >>> np.round([xi[0], omega[0], alpha[0]], 1)
    array([1., 2., 3.])
    """
    z = np.asarray(null, dtype=np.float64)
    if z.ndim == 1:
        z = z[:, None]
    if z.ndim != 2:
        raise ValueError(
            f"null must be a (B, G) array (one row per resample), got shape {z.shape}."
        )
    n_rows, n_cols = z.shape
    xi = np.full(n_cols, np.nan)
    omega = np.full(n_cols, np.nan)
    alpha = np.full(n_cols, np.nan)
    if n_rows < 3:
        return xi, omega, alpha
    for sl in _blocks(n_rows, n_cols):
        mean, sd, skew = _moments(z[:, sl])
        xi[sl], omega[sl], alpha[sl] = _skew_normal_from_moments(mean, sd, skew)
    return xi, omega, alpha


def _moments(zb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, sd (ddof=1) and adjusted skewness of each column; NaN for non-finite columns."""
    n = zb.shape[0]
    with np.errstate(invalid="ignore", over="ignore"):
        mean = zb.mean(axis=0)
        centred = zb - mean
        m2 = np.einsum("ij,ij->j", centred, centred) / n
        m3 = np.einsum("ij,ij,ij->j", centred, centred, centred) / n
    finite = np.isfinite(mean) & np.isfinite(m2) & np.isfinite(m3)
    sd = np.sqrt(m2 * n / (n - 1))
    skew = np.zeros_like(mean)
    pos = finite & (m2 > 0)
    skew[pos] = m3[pos] / m2[pos] ** 1.5 * np.sqrt(n * (n - 1.0)) / (n - 2.0)
    mean[~finite] = np.nan
    sd[~finite] = np.nan
    skew[~finite] = np.nan
    return mean, sd, skew


def _skewness_se(n: int) -> float:
    """Standard error of the adjusted sample skewness of ``n`` normal draws."""
    return float(np.sqrt(6.0 * n * (n - 1.0) / ((n - 2.0) * (n + 1.0) * (n + 3.0))))


def _skew_normal_from_moments(mean, sd, skew):
    g = np.clip(skew, -_MAX_SKEWNESS, _MAX_SKEWNESS)
    r = np.cbrt(2.0 * g / (4.0 - np.pi))
    mu_z = r / np.sqrt(1.0 + r * r)
    delta = mu_z / _SQRT_2_OVER_PI
    alpha = delta / np.sqrt(1.0 - delta * delta)
    omega = sd / np.sqrt(1.0 - mu_z * mu_z)
    xi = mean - omega * mu_z
    return xi, omega, alpha


def _standard_skew_normal_cdf(h: np.ndarray, a: np.ndarray, *, exact_tail: bool) -> np.ndarray:
    """CDF of the standard skew-normal, ``Phi(h) - 2 T(h, a)`` (``T``: Owen's T function).

    The formula is a sum of non-negative terms except on the thin tail (``a > 0``, ``h < 0``), where
    it loses relative accuracy once the CDF falls below ~1e-8 of ``Phi(h)``; there, with
    ``exact_tail``, SciPy's numerical integration is used instead (slow, but only for extreme
    statistics on the thin side). Absolute accuracy is ~1e-16 either way.
    """
    base = special.ndtr(h)
    out = base - 2.0 * special.owens_t(h, a)
    if exact_tail:
        thin = (a > 0) & (h < 0) & (out < 1e-8 * base)
        if np.any(thin):
            out[thin] = stats.skewnorm.cdf(h[thin], a[thin])
    return np.clip(out, 0.0, 1.0)


def _skew_normal_tail(t, xi, omega, alpha, *, upper: bool) -> np.ndarray:
    """Fitted ``P(T* >= t)`` (``upper``) or ``P(T* <= t)``, NaN where unusable."""
    usable = np.isfinite(xi) & (omega > 0) & np.isfinite(alpha) & ~np.isnan(t)
    out = np.full(t.shape, np.nan)
    if np.any(usable):
        h = (t[usable] - xi[usable]) / omega[usable]
        a = alpha[usable]
        with np.errstate(invalid="ignore"):
            out[usable] = _standard_skew_normal_cdf(
                -h if upper else h, -a if upper else a, exact_tail=True
            )
    return out


def _skew_normal_guard(zb, xi, omega, alpha, skew) -> tuple[np.ndarray, np.ndarray]:
    """Goodness-of-fit guard for one block of columns: (lower tail trusted, upper tail trusted)."""
    n = zb.shape[0]
    ok = np.isfinite(xi) & np.isfinite(alpha) & (omega > 0) & np.all(np.isfinite(zb), axis=0)
    if n < _MIN_RESAMPLES:
        ok[:] = False
    if not np.any(ok):
        return ok, ok.copy()
    cols = np.flatnonzero(ok)
    zs = np.sort(zb[:, cols], axis=0)
    x, o, a, g = xi[cols], omega[cols], alpha[cols], skew[cols]

    # Degenerate or heavily discrete nulls; skewness clearly outside what a skew-normal can have.
    n_distinct = 1 + np.count_nonzero(np.diff(zs, axis=0) > 0, axis=0)
    common = n_distinct >= _MIN_DISTINCT_FRACTION * n
    common &= np.abs(g) <= _MAX_SKEWNESS + _SKEWNESS_Z * _skewness_se(n)

    # Fitted CDF at empirical quantiles against the empirical CDF (binomial tolerance). The k-th
    # order statistic has F(Z_(k)) ~ Beta(k + 1, n - k), mean (k + 1) / (n + 1).
    k = np.clip(np.floor(_GOF_LEVELS * n).astype(np.int64), 0, n - 1)
    q = (k + 1.0) / (n + 1.0)
    v = zs[k, :]  # (levels, cols)
    fitted = _standard_skew_normal_cdf((v - x) / o, np.broadcast_to(a, v.shape), exact_tail=False)
    tol = _GOF_Z * np.sqrt(q * (1.0 - q) / n) + 1.0 / n
    level_ok = np.abs(fitted - q[:, None]) <= tol[:, None]
    lower = common & np.all(level_ok[_GOF_LEVELS <= 0.75], axis=0)
    upper = common & np.all(level_ok[_GOF_LEVELS >= 0.25], axis=0)

    # Outliers: the sample extremes must be reachable under the fit.
    lower &= n * _standard_skew_normal_cdf((zs[0] - x) / o, a, exact_tail=False) >= _OUTLIER_MASS
    upper &= n * _standard_skew_normal_cdf((x - zs[-1]) / o, -a, exact_tail=False) >= _OUTLIER_MASS

    lower_ok, upper_ok = ok.copy(), ok
    lower_ok[cols] = lower
    upper_ok[cols] = upper
    return lower_ok, upper_ok


def skew_normal_pvalues(
    statistic, null, alternative: str = "two-sided"
) -> tuple[np.ndarray, np.ndarray]:
    """Skew-normal tail p-values with a goodness-of-fit guard.

    Parameters
    ----------
    statistic : array-like of shape (G,)
        Observed statistic of each response.
    null : array-like of shape (B, G)
        Null statistics, one row per resample.
    alternative : {"two-sided", "less", "greater"}, default="two-sided"
        Tail(s) of the fitted skew-normal: ``sf(T)``, ``cdf(T)`` or ``min(1, 2 * min(cdf, sf))``.

    Returns
    -------
    pvalues : ndarray of shape (G,)
        Skew-normal p-values; NaN where no skew-normal can be fitted (constant or non-finite null,
        NaN statistic).
    ok : ndarray of bool, shape (G,)
        True where the goodness-of-fit guard accepts the fit. Use the p-value only there;
        :func:`compute_pvalues` falls back to the empirical p-value elsewhere.

    See Also
    --------
    fit_skew_normal : the method-of-moments fit.
    compute_pvalues : applies the guard and the small-p-value rule.

    Notes
    -----
    The guard rejects a response's fit when any of these holds:

    - fewer than 400 resamples, a non-finite null statistic, or zero variance;
    - fewer distinct null values than half the number of resamples (a discrete null);
    - a sample skewness beyond the skew-normal's range (``|g| > 0.995``) by more than three
      standard errors (``se(g) ~ sqrt(6 / B)``);
    - at the order statistics for the levels 0.01, 0.025, 0.05, 0.1, 0.25, 0.5 (lower tail) or
      0.5, 0.75, 0.9, 0.95, 0.975, 0.99 (upper tail), the fitted CDF differs from the empirical
      one by more than ``3.5 * sqrt(q (1 - q) / B) + 1 / B`` (the binomial error of the
      empirical CDF);
    - an outlier: ``B * P_fit(T* <= min(null)) < 1e-3`` (lower tail) or
      ``B * P_fit(T* >= max(null)) < 1e-3`` (upper tail), an extreme null value that the fitted
      tail makes implausible.

    Only the tail that makes the p-value is checked: the upper one for ``"greater"``, the lower
    one for ``"less"``, and for ``"two-sided"`` the one on the statistic's side (the p-value is
    twice that tail). A skewed null often has a well-fitted heavy tail and a poorly fitted thin
    one.

    Each tail's probability comes from the fit whose skewness is moved half a standard error in
    the direction that thickens that tail (``g + 0.5 se`` for the upper tail, ``g - 0.5 se`` for
    the lower). Far tails, the thin one opposite the skew above all, are very sensitive to the
    skewness, and its sampling error otherwise makes p-values below ~1e-3 anti-conservative
    (1.5 to 3 times too many below 1e-3 and 1e-4 with ``B = 999`` and shape 4, in simulations).
    With the shift they were valid in the same simulations, at the price of p-values ~1.1 (heavy
    tail) to ~1.4 (thin tail) times larger at ``B = 4999``.
    """
    alternative = _check_alternative(alternative)
    t, z = _as_statistic_and_null(statistic, null)
    n_rows, n_cols = z.shape
    p = np.full(n_cols, np.nan)
    ok = np.zeros(n_cols, dtype=bool)
    for sl in _blocks(n_rows, n_cols):
        zb = z[:, sl]
        if n_rows >= 3:
            mean, sd, skew = _moments(zb)
            xi, omega, alpha = _skew_normal_from_moments(mean, sd, skew)
            # Each tail from the fit whose skewness is moved _SKEWNESS_SHIFT standard errors
            # towards thickening it (see Notes).
            shift = _SKEWNESS_SHIFT * _skewness_se(n_rows)
            fit_lower = _skew_normal_from_moments(mean, sd, skew - shift)
            fit_upper = _skew_normal_from_moments(mean, sd, skew + shift)
            left = _skew_normal_tail(t[sl], *fit_lower, upper=False)
            right = _skew_normal_tail(t[sl], *fit_upper, upper=True)
        else:
            xi = omega = alpha = skew = np.full(zb.shape[1], np.nan)
            left = right = xi
        p[sl] = _combine_sides(left, right, alternative)
        lower_ok, upper_ok = _skew_normal_guard(zb, xi, omega, alpha, skew)
        if alternative == "greater":
            ok[sl] = upper_ok
        elif alternative == "less":
            ok[sl] = lower_ok
        else:
            ok[sl] = np.where(right <= left, upper_ok, lower_ok)
    ok &= np.isfinite(p)
    return p, ok


def compute_pvalues(
    statistic,
    null,
    alternative: str = "two-sided",
    method: str = "empirical",
    *,
    skew_normal_threshold: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """P-values for every response, with the method that made each.

    Parameters
    ----------
    statistic : array-like of shape (G,)
        Observed statistic of each response.
    null : array-like of shape (B, G)
        Null statistics, one row per resample.
    alternative : {"two-sided", "less", "greater"}, default="two-sided"
        Which tail(s) count as extreme.
    method : {"empirical", "skew_normal"}, default="empirical"
        ``"empirical"``: :func:`empirical_pvalues` everywhere. ``"skew_normal"``: the skew-normal
        p-value (:func:`skew_normal_pvalues`) where the goodness-of-fit guard accepts the fit
        *and* the empirical p-value is at most ``skew_normal_threshold``; the empirical p-value
        elsewhere.
    skew_normal_threshold : float in [0, 1] or None, default=None
        Largest empirical p-value that the skew-normal p-value replaces. ``None``:
        ``min(0.05, 10 / (B + 1))``, i.e. only where fewer than about 10 null statistics are as
        extreme as the observed one (see :data:`SKEW_NORMAL_THRESHOLD` for why the other
        p-values stay empirical). 1.0 takes the skew-normal p-value wherever the fit is
        accepted.

    Returns
    -------
    pvalues : ndarray of shape (G,)
    methods : ndarray of object, shape (G,)
        ``"empirical"`` or ``"skew_normal"`` for each response.

    Examples
    --------
    >>> import numpy as np
    >>> from sklcrt.pvalues import compute_pvalues
    >>> rng = np.random.default_rng(0)
    >>> null = rng.normal(size=(999, 3))
    >>> p, methods = compute_pvalues([0.0, 6.0, -6.0], null, method="skew_normal")
    >>> methods.tolist()
    ['empirical', 'skew_normal', 'skew_normal']
    >>> bool(p[1] < 1e-6)
    True
    """
    alternative = _check_alternative(alternative)
    if not isinstance(method, str) or method not in PVALUE_METHODS:
        raise ValueError(f"method must be one of {list(PVALUE_METHODS)}, got {method!r}.")
    if skew_normal_threshold is not None and (
        isinstance(skew_normal_threshold, bool)
        or not isinstance(skew_normal_threshold, numbers.Real)
        or not 0.0 <= skew_normal_threshold <= 1.0
    ):
        raise ValueError(
            "skew_normal_threshold must be None or a number in [0, 1], got "
            f"{skew_normal_threshold!r}."
        )
    p_emp = empirical_pvalues(statistic, null, alternative)
    methods = np.full(p_emp.shape, "empirical", dtype=object)
    if method == "empirical":
        return p_emp, methods
    threshold = skew_normal_threshold
    if threshold is None:
        n_resamples = np.shape(null)[0]
        threshold = min(SKEW_NORMAL_THRESHOLD, _SKEW_NORMAL_MIN_EXCEEDANCES / (n_resamples + 1))
    p_sn, ok = skew_normal_pvalues(statistic, null, alternative)
    use = ok & (p_emp <= threshold)
    p = np.where(use, p_sn, p_emp)
    methods[use] = "skew_normal"
    return p, methods


def adaptive_second_stage_mask(pvalues_stage1, threshold: float) -> np.ndarray:
    """Which responses get a second stage of resamples: those with stage-1 p-value <= threshold.

    Parameters
    ----------
    pvalues_stage1 : array-like of shape (G,)
        Valid p-values from the first stage (e.g. ``B1 = 499`` resamples for every response).
    threshold : float in (0, 1]
        Fixed in advance, never chosen from the data. A good value leaves room for the stage-1
        resolution, e.g. ``threshold >= 10 / (B1 + 1)``; with SCEPTRE-like ``B1 = 499`` a threshold
        of 0.02 to 0.05 sends few null responses to stage 2.

    Returns
    -------
    mask : ndarray of bool, shape (G,)
        True where stage 2 should run. NaN p-values are never selected.

    See Also
    --------
    combine_two_stage_pvalues : the final p-values.

    Notes
    -----
    The two-stage procedure: every response gets a stage-1 p-value ``p1``; responses with
    ``p1 <= threshold`` get fresh resamples and a stage-2 p-value ``p2``, any p-value that is
    valid on its own (empirical or skew-normal from the stage-2 resamples alone, or the
    empirical p-value of the stage-1 and stage-2 resamples pooled: every resample is drawn from
    the same null, independently of which responses were selected); the final p-value is ``p2``
    where selected and ``p1`` elsewhere. It is valid, ``P(p <= a) <= a`` for every ``a``:

    - ``a < threshold``: ``p <= a`` needs the response to be selected (an unselected one has
      ``p = p1 > threshold > a``), so ``P(p <= a) = P(p1 <= threshold, p2 <= a)
      <= P(p2 <= a) <= a`` because ``p2`` alone is valid;
    - ``a >= threshold``: a selected response has ``p1 <= threshold <= a``, so ``{p <= a}`` is
      contained in ``{p1 <= a}`` and ``P(p <= a) <= P(p1 <= a) <= a`` because ``p1`` is valid.

    What would break validity: a threshold chosen after seeing the p-values, or reporting
    ``min(p1, p2)`` (it picks the smaller of two valid p-values).

    Examples
    --------
    >>> from sklcrt.pvalues import adaptive_second_stage_mask
    >>> adaptive_second_stage_mask([0.002, 0.3, 0.05, float("nan")], 0.05).tolist()
    [True, False, True, False]
    """
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, numbers.Real)
        or not 0.0 < threshold <= 1.0
    ):
        raise ValueError(f"threshold must be a number in (0, 1], got {threshold!r}.")
    p1 = np.atleast_1d(np.asarray(pvalues_stage1, dtype=np.float64))
    if p1.ndim != 1:
        raise ValueError(f"pvalues_stage1 must be 1-D, got shape {p1.shape}.")
    with np.errstate(invalid="ignore"):
        return p1 <= threshold


def combine_two_stage_pvalues(pvalues_stage1, pvalues_stage2, mask) -> np.ndarray:
    """Final p-values of the two-stage procedure: stage 2 where ``mask``, stage 1 elsewhere.

    Parameters
    ----------
    pvalues_stage1 : array-like of shape (G,)
        Stage-1 p-values of every response.
    pvalues_stage2 : array-like of shape (G,) or (mask.sum(),)
        Stage-2 p-values, either for every response (entries outside ``mask`` ignored) or only for
        the selected ones, in order.
    mask : array-like of bool, shape (G,)
        From :func:`adaptive_second_stage_mask`.

    Returns
    -------
    pvalues : ndarray of shape (G,)

    See Also
    --------
    adaptive_second_stage_mask : the selection rule and why the result is valid.

    Examples
    --------
    >>> from sklcrt.pvalues import combine_two_stage_pvalues
    >>> combine_two_stage_pvalues([0.01, 0.5], [0.0004], [True, False]).tolist()
    [0.0004, 0.5]
    """
    p1 = np.atleast_1d(np.asarray(pvalues_stage1, dtype=np.float64))
    p2 = np.atleast_1d(np.asarray(pvalues_stage2, dtype=np.float64))
    m = np.atleast_1d(np.asarray(mask))
    if m.dtype != bool or m.shape != p1.shape:
        raise ValueError(
            f"mask must be a boolean array shaped like pvalues_stage1 {p1.shape}, got dtype "
            f"{m.dtype} and shape {m.shape}."
        )
    out = p1.copy()
    if p2.shape == p1.shape:
        out[m] = p2[m]
    elif p2.shape == (int(m.sum()),):
        out[m] = p2
    else:
        raise ValueError(
            f"pvalues_stage2 must have {p1.size} entries (every response) or {int(m.sum())} "
            f"(the selected ones), got shape {p2.shape}."
        )
    return out
