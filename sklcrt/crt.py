"""The conditional randomization test estimator: one unit against many responses."""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn import config_context
from sklearn.base import BaseEstimator, clone
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from sklcrt._choices import ALTERNATIVES, PVALUE_METHODS, RESAMPLING_ALIASES, RESAMPLING_METHODS
from sklcrt._fingerprint import array_fingerprint
from sklcrt._random import as_generator
from sklcrt._validation import (
    check_1d_numeric,
    check_binary_treatment,
    check_has_both_arms,
    check_same_length,
)
from sklcrt.propensity import NewtonLogisticRegression, fit_propensity
from sklcrt.pvalues import (
    adaptive_second_stage_mask,
    combine_two_stage_pvalues,
    compute_pvalues,
    empirical_pvalues,
)
from sklcrt.resampling import SAMPLERS, resolve_resampling
from sklcrt.saddlepoint import FALLBACK, _compact, _law_setup, _saddlepoint_pvalues
from sklcrt.samplers import BaseSampler, BernoulliSampler
from sklcrt.statistics import OLSStatistic
from sklcrt.strata import StratumEncoder

__all__ = ["CRTResult", "CRTTest"]


def _resamples_on_cells(resamples, cells: np.ndarray, n_cells: int):
    """Resamples drawn on a subset of the cells, as rows over all ``n_cells`` cells.

    Column ``j`` of ``resamples`` is cell ``cells[j]``; ``cells`` is increasing (e.g.
    ``np.flatnonzero(eligible)``), so the mapped column indices stay sorted within every row and
    the result is canonical, shape ``(n_resamples, n_cells)``, in the format of ``resamples``
    (CSR or CSC); the cells outside ``cells`` are untreated in every resample. Cost ``O(nnz)``
    (CSR) or ``O(n_cells)`` (CSC).

    Why the test stays valid: the null model of each response is fitted once on all cells
    without the treatment, so the statistic is a fixed function of the treatment vector, and
    under the null hypothesis the treatment is exchangeable among the eligible cells (within
    strata) given the covariates. Permuting the treated cells among the eligible cells only, with
    every other cell left untreated as observed, is a valid randomization test of that null: the
    p-value compares the treated cells with the eligible controls only.
    """
    index_dtype = resamples.indices.dtype if n_cells < 2**31 - 1 else np.int64
    if resamples.format == "csc":
        # Columns move to their cells; the other cells get empty columns.
        counts = np.zeros(n_cells, dtype=np.int64)
        counts[cells] = np.diff(resamples.indptr)
        indptr = np.zeros(n_cells + 1, dtype=np.result_type(resamples.indptr.dtype, index_dtype))
        np.cumsum(counts, out=indptr[1:])
        out = sp.csc_matrix(
            (resamples.data, resamples.indices, indptr), shape=(resamples.shape[0], n_cells)
        )
        out.has_sorted_indices = True
        out.has_canonical_format = True
        return out
    out = sp.csr_matrix(
        (
            resamples.data,
            cells[resamples.indices].astype(index_dtype, copy=False),
            resamples.indptr.astype(index_dtype, copy=False),
        ),
        shape=(resamples.shape[0], n_cells),
    )
    out.has_sorted_indices = True
    out.has_canonical_format = True
    return out


@dataclass(frozen=True)
class CRTResult:
    """What a fitted :class:`CRTTest` found, one entry per tested response.

    Shaped like the result of :func:`scipy.stats.permutation_test` (``statistic``, ``pvalue``,
    ``null_distribution``), plus the effect size and how each p-value was made.

    Attributes
    ----------
    statistic : ndarray of shape (n_responses,)
        Observed test statistic.
    pvalue : ndarray of shape (n_responses,)
        Final p-value.
    null_distribution : ndarray of shape (n_resamples, n_responses) or None
        First-stage null statistics, kept only with ``store_null=True``.
    effect : ndarray of shape (n_responses,)
        Effect size (OLS beta, or log2 fold change for counts).
    effect_se : ndarray of shape (n_responses,)
        Standard error of ``effect``.
    pvalue_method : ndarray of object, shape (n_responses,)
        ``"empirical"``, ``"skew_normal"``, ``"saddlepoint"``, ``"exact"`` (a saddlepoint
        null with no variance) or ``"empirical (saddlepoint_fallback: <reason>)"``.
    n_resamples : ndarray of int, shape (n_responses,)
        Resamples behind each p-value.
    n_treated : int
        Treated cells.
    """

    statistic: np.ndarray
    pvalue: np.ndarray
    null_distribution: np.ndarray | None
    effect: np.ndarray
    effect_se: np.ndarray
    pvalue_method: np.ndarray
    n_resamples: np.ndarray
    n_treated: int


class _Components(NamedTuple):
    """The resolved, unfitted parts of a test."""

    method: str
    sampler: BaseSampler
    encoder: StratumEncoder | None
    needs: frozenset  # per-cell inputs the parts use: "p_hat", "strata", "batch", "burden"


class _Treatment(NamedTuple):
    """The fitted model of the unit's treatment and a way to draw from it."""

    sampler: BaseSampler
    encoder: StratumEncoder | None
    propensity_model: object
    p_hat: np.ndarray | None
    strata: np.ndarray | None
    cells: np.ndarray | None  # the eligible cells (None: every cell)


# The components a ``None`` parameter stands for: ``get_params(deep=True)`` shows their nested
# parameters and ``set_params(encoder__n_bins=...)`` builds them, so grids need no hand-built
# objects.
_DEFAULT_COMPONENTS = {
    "statistic": OLSStatistic,
    "propensity": NewtonLogisticRegression,
    "encoder": StratumEncoder,
    "sampler": BernoulliSampler,
}
# Components the string API builds itself (their defaults are not shown while it is in use).
_STRING_API_COMPONENTS = ("encoder", "sampler")
# Bytes held per treated entry of a block of resamples: the sampler's int64 keys, then the CSR
# matrix's float64 data and int32 indices.
_BYTES_PER_TREATED_ENTRY = 20
# The default memory_budget_mb. Resamples are drawn in sampler calls of the size a block has
# under it: a function of the unit's treated count only, so that the random draws do not
# depend on the budget (a smaller budget evaluates a call's resamples in smaller blocks).
_DEFAULT_BUDGET_MB = 1024


class CRTTest(BaseEstimator):
    """Conditional randomization / stratified permutation test of one unit against many responses.

    ``fit`` fits a propensity model ``P(x = 1 | C)`` where the sampler or its strata need one,
    builds strata (batch x propensity bins x burden bins) when the sampler needs them, draws
    ``n_resamples`` synthetic treatment vectors once and evaluates the statistic of every response
    on all of them in one vectorised step. Where the first-stage p-value is at most
    ``adaptive_threshold``, ``n_resamples_adaptive`` fresh resamples give the final p-value (valid:
    see :func:`sklcrt.pvalues.adaptive_second_stage_mask`).

    This estimator is the one owner of a test's settings: the runners take it as a template (or
    build it from the same parameter names) and the command line maps its sections onto
    :meth:`set_params`.

    Components are configured either as objects (``sampler``, ``encoder``, ``propensity``,
    ``statistic``) or through the string API (``resampling_method`` and ``resampling_kwargs``),
    which builds the same objects. A ``None`` component stands for its default
    (:class:`~sklcrt.samplers.BernoulliSampler`, :class:`~sklcrt.strata.StratumEncoder`,
    :class:`~sklcrt.propensity.NewtonLogisticRegression`,
    :class:`~sklcrt.statistics.OLSStatistic`), whose nested parameters ``get_params(deep=True)``
    lists and ``set_params`` sets (``encoder__n_burden_bins=4`` builds the encoder), so
    ``ParameterGrid`` works on ``CRTTest()`` as it is.

    Components declare what they need (``required_inputs()``): a sampler whose declaration names
    ``"strata"`` gets strata from the encoder, one naming ``"p_hat"`` gets propensities; an
    encoder names ``"p_hat"``, ``"batch"`` and ``"burden"`` as its settings use them. A user's
    sampler is therefore one class (see :class:`~sklcrt.samplers.BaseSampler`).

    Parameters
    ----------
    statistic : BaseStatistic, default=None
        The test statistic; ``None`` means :class:`~sklcrt.statistics.OLSStatistic` (the runners
        pick :class:`~sklcrt.statistics.NBScoreStatistic` for counts). When ``fit`` is called with
        ``responses=None`` the statistic must already be fitted and is reused as is, so one null
        model serves every unit of a screen.
    propensity : classifier with ``predict_proba``, default=None
        Model of ``P(x = 1 | C)``; ``None`` means
        :class:`~sklcrt.propensity.NewtonLogisticRegression` (same fit as scikit-learn's
        ``LogisticRegression``, faster).
    encoder : StratumEncoder, default=None
        Builds strata for a sampler that needs them; ``None`` means ``StratumEncoder()`` then.
        Giving one to a sampler that uses no strata is an error.
    sampler : BaseSampler, default=None
        Draws synthetic treatment vectors; ``None`` means :class:`~sklcrt.samplers.BernoulliSampler`
        (the classic CRT), unless ``resampling_method`` says otherwise.
    resampling_method : {"bernoulli_index", "crt", "stratified_perm", "perm"}, default=None
        String API (``None`` with ``resampling_kwargs=None``: the objects above); when set,
        ``sampler`` and ``encoder`` must be left ``None``.
    resampling_kwargs : dict, default=None
        Options of the string API (``n_bins``, ``stratify_by_batch``, ``batch_key``, ``burden_key``,
        ``n_burden_bins``, ``burden_bin_method``, ``burden_clip_quantiles``, ``min_stratum_size``;
        see :func:`sklcrt.resampling.resolve_resampling`). For high MOI we recommend
        ``resampling_method="stratified_perm"`` with
        :data:`~sklcrt.resampling.RECOMMENDED_HIGH_MOI_KWARGS`.
    n_resamples : int, default=499
        First-stage resamples, shared by all responses.
    n_resamples_adaptive : int, default=4999
        Second-stage resamples for responses whose first-stage p-value is at most
        ``adaptive_threshold``; 0 turns the second stage off.
    adaptive_threshold : float, default=0.02
        First-stage p-value at or below which a response gets the second stage.
    alternative : {"two-sided", "less", "greater"}, default="two-sided"
        Direction of the alternative, in SciPy's words.
    pvalue_method : {"empirical", "skew_normal", "saddlepoint"}, default="skew_normal"
        How the final p-value is computed. ``"empirical"``: from the null statistics, at least
        ``1 / (B + 1)`` (so a strong effect cannot reach below about 2e-4 with 4,999
        resamples). ``"skew_normal"`` (the default, as in SCEPTRE): a skew-normal tail fitted to
        them where the empirical p-value is resolution-limited, with a goodness-of-fit guard that
        falls back to the empirical p-value, so strong effects get p-values far below 1e-5.
        ``"saddlepoint"``: no resampling; a saddlepoint approximation of the
        sampler's exact law (:func:`sklcrt.saddlepoint.saddlepoint_pvalues`) for the score sum
        ``S = x @ a`` (:meth:`~sklcrt.statistics.BaseStatistic.score_pieces`, the statistic's
        numerator), accurate far into the tail; where it cannot be trusted, ``S`` is resampled
        ``n_resamples`` times and ``pvalue_method_`` says why.
    store_null : bool, default=False
        Keep the first-stage null statistics in ``result_.null_distribution``.
    memory_budget_mb : float, default=1024
        Memory for one unit's resamples and null statistics, in MiB. Resamples are evaluated
        in blocks of a quarter of it, so peak memory does not grow with ``n_resamples`` or the
        treated fraction; null statistics (``n_resamples`` x responses float64) that cannot fit
        in it are refused before any work. The resamples are drawn in calls of the size of a
        block under the default budget (at most 256 MiB of draws, however small the budget):
        their number depends only on the unit's treated count, so results do not depend on
        this budget, ``n_jobs`` or chunking.
    random_state : int, SeedSequence or None, default=None
        Seeds the resamples.

    Attributes
    ----------
    result_ : CRTResult
        The results (``statistic``, ``pvalue``, ``null_distribution``, ``effect``,
        ``effect_se``, ``pvalue_method``, ``n_resamples``, ``n_treated``).
    statistic_, pvalue_, effect_, effect_se_, pvalue_method_, n_resamples_ : ndarray
        The fields of ``result_``, one entry per tested response. ``effect_`` comes from the
        statistic's null model: with a model fitted on every cell, the coefficient of ``x``
        added to it (the treated cells against all other cells, adjusted for ``C``); with one
        fitted on the control cells (``fit_cells``, SCEPTRE's low-MOI test, see Notes), the
        treated cells against those.
    n_treated_ : int
        Treated cells.
    propensity_ : ndarray of shape (n_cells,) or None
        Fitted ``P(x = 1 | C)``, ``None`` when no component needs it; 0 for cells outside
        ``eligible``.
    strata_ : ndarray of shape (n_cells,) or None
        Stratum id of each cell, ``None`` for samplers without strata; -1 for cells outside
        ``eligible``.
    diagnostics_ : dict
        Stratum diagnostics, resampling method, stage counts, ``n_eligible`` (cells that may
        be treated in a resample; ``n_cells`` without ``eligible``) and ``n_blocks`` (blocks of
        resamples drawn).
    resampling_method_ : str
        The string name of the sampler (its class name for a sampler without one).
    columns_ : ndarray of int or None
        The tested responses (``None``: all).
    statistic_estimator_, sampler_, encoder_, propensity_model_ : fitted components.

    Notes
    -----
    **Control group.** By default the treated cells are compared with all other cells
    (SCEPTRE's "complement" control group). ``fit(..., eligible=mask)`` restricts the
    comparison: the propensity model, the strata and the sampler are fitted on the eligible cells
    only, and the resamples treat eligible cells only, so the p-value compares the treated cells
    with the eligible controls (e.g. SCEPTRE's "nt_cells": the cells with non-targeting guides
    only, recommended at low MOI, where the other cells are mostly knock-outs with their own
    trans effects). The responses' null models are still fitted once on all cells, without the
    treatment, which keeps the test valid: the statistic is then a fixed function of the
    treatment vector, invariant to how the treatment is permuted among the eligible cells. The
    observed ``statistic_``, ``effect_`` and ``effect_se_`` are those of the all-cells model
    (``effect_`` is the treated cells against all other cells, adjusted for ``C``); only the
    reference distribution, hence ``pvalue_``, is restricted to the eligible cells.

    **SCEPTRE's low-MOI test.** When the (fitted) statistic's null model was fitted on the
    control cells only (``statistic.fit(Y, C, fit_cells=controls)``, as the runners do for
    ``control_group="nt_cells"`` on counts), ``fit(..., eligible=...)`` refits it on the unit's
    cells and the controls (:meth:`~sklcrt.statistics.NBScoreStatistic.refit`, warm-started,
    once per unit), so the statistic, its permutation null and the effect (log2 fold change
    against the controls) are SCEPTRE's.

    Examples
    --------
    >>> import numpy as np
    >>> from sklcrt import CRTTest
    >>> rng = np.random.default_rng(0)
    >>> C = rng.normal(size=(500, 2))
    >>> x = rng.random(500) < 0.2
    >>> Y = rng.normal(size=(500, 3))
    >>> test = CRTTest(n_resamples=99, n_resamples_adaptive=0, random_state=0)
    >>> test.fit(C, x, responses=Y).result_.pvalue.shape
    (3,)
    >>> "encoder__n_burden_bins" in CRTTest().get_params()
    True
    """

    _parameter_constraints: dict = {
        "statistic": [HasMethods(["fit", "evaluate", "observed"]), None],
        "propensity": [HasMethods(["fit", "predict_proba"]), None],
        "encoder": [HasMethods(["fit_transform", "required_inputs"]), None],
        "sampler": [HasMethods(["fit", "sample", "required_inputs"]), None],
        "resampling_method": [StrOptions({*RESAMPLING_METHODS, *RESAMPLING_ALIASES}), None],
        "resampling_kwargs": [dict, None],
        "n_resamples": [Interval(numbers.Integral, 1, None, closed="left")],
        "n_resamples_adaptive": [Interval(numbers.Integral, 0, None, closed="left")],
        "adaptive_threshold": [Interval(numbers.Real, 0, 1, closed="both")],
        "alternative": [StrOptions(set(ALTERNATIVES))],
        "pvalue_method": [StrOptions(set(PVALUE_METHODS))],
        "store_null": ["boolean"],
        "memory_budget_mb": [Interval(numbers.Real, 0, None, closed="neither")],
        "random_state": ["random_state", np.random.SeedSequence],
    }

    def __init__(
        self,
        statistic=None,
        propensity=None,
        encoder=None,
        sampler=None,
        *,
        resampling_method=None,
        resampling_kwargs=None,
        n_resamples=499,
        n_resamples_adaptive=4999,
        adaptive_threshold=0.02,
        alternative="two-sided",
        pvalue_method="skew_normal",
        store_null=False,
        memory_budget_mb=_DEFAULT_BUDGET_MB,
        random_state=None,
    ):
        self.statistic = statistic
        self.propensity = propensity
        self.encoder = encoder
        self.sampler = sampler
        self.resampling_method = resampling_method
        self.resampling_kwargs = resampling_kwargs
        self.n_resamples = n_resamples
        self.n_resamples_adaptive = n_resamples_adaptive
        self.adaptive_threshold = adaptive_threshold
        self.alternative = alternative
        self.pvalue_method = pvalue_method
        self.store_null = store_null
        self.memory_budget_mb = memory_budget_mb
        self.random_state = random_state

    # ------------------------------------------------------------------ parameters
    def _uses_string_api(self) -> bool:
        return self.resampling_method is not None or self.resampling_kwargs is not None

    def get_params(self, deep=True):
        """Parameters of the test; with ``deep``, also those of its (default) components.

        A component left ``None`` shows the nested parameters of the default it stands for
        (``encoder__n_burden_bins`` and the rest), except the sampler and encoder while the string
        API is in use (it builds them from ``resampling_kwargs``).

        Parameters
        ----------
        deep : bool, default=True
            Include the nested parameters of the components.

        Returns
        -------
        params : dict
            Parameter names mapped to their values.
        """
        params = super().get_params(deep=deep)
        if deep:
            for name, default in self._default_components().items():
                for key, value in default.get_params(deep=True).items():
                    params[f"{name}__{key}"] = value
        return params

    def set_params(self, **params):
        """Set parameters; a nested one of a ``None`` component builds its default first.

        Parameters
        ----------
        **params : dict
            Parameters, e.g. ``n_resamples=999`` or ``encoder__n_burden_bins=4``.

        Returns
        -------
        self : CRTTest
        """
        defaults = self._default_components()
        for key in params:
            name, nested, _ = key.partition("__")
            if nested and name in defaults and name not in params:
                setattr(self, name, defaults.pop(name))
        return super().set_params(**params)

    def check_params(self) -> CRTTest:
        """Validate the parameters and resolve the components, without fitting.

        The runners call it once before any work, so a bad setting fails before the null fit.

        Returns
        -------
        self : CRTTest
        """
        self._validate_params()
        self._null_statistics_fit(1)  # an impossible number of resamples, refused up front
        for name in ("statistic", "propensity", "encoder", "sampler"):
            component = getattr(self, name)
            if hasattr(component, "_parameter_constraints"):  # ours and scikit-learn's
                component._validate_params()
        self._components()
        return self

    def _default_components(self) -> dict:
        """Fresh defaults of the components left ``None`` (and not built by the string API)."""
        return {
            name: factory()
            for name, factory in _DEFAULT_COMPONENTS.items()
            if getattr(self, name) is None
            and not (name in _STRING_API_COMPONENTS and self._uses_string_api())
        }

    # ------------------------------------------------------------------ components
    def _components(self) -> _Components:
        """The unfitted sampler and encoder, the method name and what they need."""
        if self._uses_string_api():
            if self.sampler is not None or self.encoder is not None:
                raise ValueError(
                    "Configure resampling either with objects (sampler=, encoder=) or with the "
                    "string API (resampling_method=, resampling_kwargs=), not both."
                )
            config = resolve_resampling(
                self.resampling_method or "bernoulli_index", self.resampling_kwargs
            )
            method, sampler, encoder = config.method, config.sampler, config.encoder
        else:
            sampler = BernoulliSampler() if self.sampler is None else clone(self.sampler)
            method = _method_name(sampler)
            encoder = None
            if "strata" in sampler.required_inputs():
                encoder = StratumEncoder() if self.encoder is None else clone(self.encoder)
            elif self.encoder is not None:
                raise ValueError(
                    f"encoder is only used by samplers that need strata; "
                    f"{type(sampler).__name__} takes none. Use "
                    "sampler=StratifiedPermutationSampler() or drop the encoder."
                )
        needs = set(sampler.required_inputs())
        if encoder is not None:
            needs |= encoder.required_inputs()
        return _Components(method, sampler, encoder, frozenset(needs))

    def covariate_columns(self) -> dict[str, str]:
        """The raw covariate columns this test reads, for the runners.

        Returns
        -------
        dict
            ``{"batch": column}`` when the strata are nested in batches and ``{"burden":
            column}`` when they use burden bins (both from the encoder, or from
            ``resampling_kwargs`` in the string API); empty for a test without strata.

        Raises
        ------
        ValueError
            When the strata are nested in batches but no batch column is named.

        Examples
        --------
        >>> from sklcrt import CRTTest
        >>> CRTTest(resampling_method="stratified_perm").covariate_columns()
        {'batch': 'batch'}
        >>> CRTTest(resampling_method="crt").covariate_columns()
        {}
        """
        parts = self._components()
        columns = {}
        if "batch" in parts.needs:
            if parts.encoder.batch_key is None:
                raise ValueError(
                    "the strata are nested in batches (stratify_by_batch=True) but no batch "
                    "column is named; set batch_key (encoder__batch_key, or "
                    "resampling_kwargs['batch_key']) or stratify_by_batch=False."
                )
            columns["batch"] = parts.encoder.batch_key
        if "burden" in parts.needs:
            columns["burden"] = parts.encoder.burden_key
        return columns

    def _burden_setting(self) -> str:
        if self._uses_string_api():
            return "resampling_kwargs['burden_key']"
        return "encoder.burden_key"

    # ------------------------------------------------------------------ fit
    def fit(
        self, X, y, *, responses=None, batch=None, burden=None, columns=None, eligible=None, **kw
    ):
        """Test the unit ``y`` against every response in ``responses``.

        Parameters
        ----------
        X : array-like of shape (n_cells, n_covariates)
            Encoded covariates ``C`` (an intercept is added where missing).
        y : array-like of shape (n_cells,)
            The unit's binary treatment ``x`` (1 = the cell carries the unit).
        responses : array-like or sparse matrix of shape (n_cells, n_responses), default=None
            Responses. ``None`` reuses the already-fitted ``statistic`` (its null model).
            (Formerly ``Y``, which scikit-learn's metadata routing reserves; ``Y=`` still works
            with a ``FutureWarning``.)
        batch : array-like of shape (n_cells,), default=None
            Raw batch labels, used for strata when the encoder stratifies by batch (``None``: one
            batch).
        burden : array-like of shape (n_cells,), default=None
            Raw burden values (e.g. ``log1p_non_ntc_guides_per_cell``), binned into strata.
            Required exactly when the test has burden bins (the encoder's ``burden_key``, or
            ``resampling_kwargs['burden_key']``, is set).
        columns : array-like of int, default=None
            Test only these responses (indices into the statistic's responses).
        eligible : array-like of bool of shape (n_cells,), default=None
            The cells that may be treated in a resample (the control group plus the treated
            cells, e.g. SCEPTRE's ``"nt_cells"``: the treated cells and the cells that carry only
            non-targeting guides). Every treated cell must be eligible, and some eligible cells
            must be controls. The propensity model, the strata and the sampler are fitted on the
            eligible cells only; the other cells stay untreated in every resample (and get
            propensity 0 and stratum -1). ``None`` means every cell.

        Returns
        -------
        self : CRTTest
        """
        responses = _deprecated_Y(responses, kw)
        self._validate_params()
        parts = self._components()
        C = _check_covariates(X)
        x = check_binary_treatment(y, "y")
        check_same_length(X=C, y=x, batch=batch, burden=burden, eligible=eligible)
        check_has_both_arms(x, "y")
        eligible = _check_eligible(eligible, x)
        burden = self._check_burden(burden, parts)
        if batch is not None:
            batch = np.asarray(batch)

        statistic = self._fitted_statistic(responses, C)
        if statistic.n_cells_ != x.size:
            raise ValueError(
                f"the fitted statistic has {statistic.n_cells_} cells but y has {x.size}."
            )
        if eligible is not None and getattr(statistic, "fit_cells_", None) is not None:
            # A null model fitted on the control cells (SCEPTRE's low-MOI test) is refitted on
            # this unit's cells and the controls, where its resamples move the treatment.
            statistic = statistic.refit(eligible)
        columns = _check_columns(columns, statistic.n_responses_)
        treatment = _fit_treatment(parts, self.propensity, C, x, batch, burden, eligible)
        result, stages = self._resample_and_test(statistic, treatment, x, columns)

        self.statistic_estimator_ = statistic
        self.sampler_ = treatment.sampler
        self.encoder_ = treatment.encoder
        self.propensity_model_ = treatment.propensity_model
        p_hat, strata, cells = treatment.p_hat, treatment.strata, treatment.cells
        if cells is not None:
            # Full-length attributes: ineligible cells are never treated (propensity 0) and
            # belong to no stratum (-1).
            p_hat = None if p_hat is None else _on_cells(p_hat, cells, x.size, 0.0)
            strata = None if strata is None else _on_cells(strata, cells, x.size, -1)
        self.propensity_ = p_hat
        self.strata_ = strata
        self.columns_ = columns
        self.result_ = result
        self.n_treated_ = result.n_treated
        self.resampling_method_ = parts.method
        diagnostics = {
            "resampling_method": parts.method,
            "n_cells": int(x.size),
            "n_treated": result.n_treated,
            "n_eligible": int(x.size if cells is None else cells.size),
            **stages,
        }
        if treatment.encoder is not None:
            diagnostics.update(treatment.encoder.diagnostics_)
        else:
            diagnostics["n_strata"] = 1
        self.diagnostics_ = diagnostics
        return self

    def _check_burden(self, burden, parts: _Components):
        """The burden as floats, required exactly when the test has burden bins."""
        setting = self._burden_setting()
        if "burden" in parts.needs and burden is None:
            key = parts.encoder.burden_key
            raise ValueError(
                f"{setting}={key!r} asks for burden bins but no burden values were passed to "
                f"fit(burden=...); pass them (the raw column {key!r}), or set {setting} to None "
                "to turn burden bins off."
            )
        if burden is not None and "burden" not in parts.needs:
            if parts.encoder is None:
                raise ValueError(
                    f"burden values were passed but the sampler {type(parts.sampler).__name__} "
                    "uses no strata, so nothing would use them; burden bins need a stratified "
                    "sampler (resampling_method='stratified_perm'), or do not pass burden."
                )
            raise ValueError(
                f"burden values were passed but {setting} is None (burden bins off); set "
                f"{setting} to the burden column's name to use burden bins, or do not pass "
                "burden."
            )
        return None if burden is None else check_1d_numeric(burden, "burden")

    def _fitted_statistic(self, responses, C):
        if responses is None:
            if self.statistic is None:
                raise ValueError(
                    "responses is required unless statistic= is an already fitted statistic."
                )
            check_is_fitted(self.statistic, "n_responses_")
            fitted_on = getattr(self.statistic, "covariates_fingerprint_", None)
            if fitted_on is not None and fitted_on != array_fingerprint(C):
                raise ValueError(
                    "the fitted statistic's null model was fitted on other covariates than X "
                    "(their fingerprints differ): a null model serves only the screen it was "
                    "fitted on. Refit it on these data (pass responses=) or pass the X it was "
                    "fitted with."
                )
            return self.statistic
        statistic = OLSStatistic() if self.statistic is None else clone(self.statistic)
        return statistic.fit(responses, C)

    def _resample_and_test(self, statistic, treatment: _Treatment, x, columns):
        """Observed statistics, the two stages of resampling and the final p-values."""
        rng = as_generator(self.random_state)
        observed = statistic.observed(x, columns=columns)
        n_columns = statistic.n_responses_ if columns is None else columns.size
        n_treated = int(observed["n_treated"])
        rows_per_block = self._rows_per_block(n_treated, n_columns)
        draw = _Draws(treatment, x.size, rows_per_block, _rows_per_call(n_treated))
        if self.pvalue_method == "saddlepoint":
            pvalue, methods, n_used = self._saddlepoint(statistic, treatment, x, columns, draw, rng)
            second = np.zeros(pvalue.shape, dtype=bool)
            null = None
        else:
            pvalue, methods, n_used, null, second = self._two_stages(
                statistic, observed, columns, draw, rng
            )
        result = CRTResult(
            statistic=np.asarray(observed["statistic"], dtype=float),
            pvalue=pvalue,
            null_distribution=null if self.store_null else None,
            effect=np.asarray(observed["effect"], dtype=float),
            effect_se=np.asarray(observed["effect_se"], dtype=float),
            pvalue_method=np.asarray(methods, dtype=object),
            n_resamples=n_used,
            n_treated=int(observed["n_treated"]),
        )
        stages = {"n_stage2": int(second.sum()), "n_blocks": draw.n_blocks}
        return result, stages

    def _two_stages(self, statistic, observed, columns, draw, rng):
        """Resampling p-values: every response at stage 1, the small ones again at stage 2."""
        adaptive = self.n_resamples_adaptive > 0
        null = draw.evaluate(statistic, self.n_resamples, columns, rng)
        p1, methods = compute_pvalues(
            observed["statistic"],
            null,
            alternative=self.alternative,
            method="empirical" if adaptive else self.pvalue_method,
        )
        n_used = np.full(p1.shape, self.n_resamples, dtype=np.int64)
        pvalue = p1
        second = np.zeros(p1.shape, dtype=bool)
        if adaptive and self.adaptive_threshold > 0:
            # Fresh resamples where stage 1 says the p-value may be small; the rest keep their
            # (valid) stage-1 p-value.
            second = adaptive_second_stage_mask(p1, self.adaptive_threshold)
        if second.any():
            selected = np.flatnonzero(second)
            cols2 = selected if columns is None else columns[selected]
            null2 = draw.evaluate(statistic, self.n_resamples_adaptive, cols2, rng)
            p2, m2 = compute_pvalues(
                observed["statistic"][selected],
                null2,
                alternative=self.alternative,
                method=self.pvalue_method,
            )
            pvalue = combine_two_stage_pvalues(p1, p2, second)
            methods[selected] = m2
            n_used[selected] = self.n_resamples_adaptive
        return pvalue, methods, n_used, null, second

    def _saddlepoint(self, statistic, treatment: _Treatment, x, columns, draw, rng):
        """Saddlepoint p-values of the score sum ``S = x @ a`` from the sampler's exact law;
        responses where the approximation cannot be trusted are resampled (on ``S``)."""
        law = treatment.sampler._null_law
        if law is None:
            raise ValueError(
                f"pvalue_method='saddlepoint' needs a sampler whose resampling law is known "
                f"exactly; {type(treatment.sampler).__name__} declares none (_null_law). Use "
                "BernoulliSampler, PermutationSampler or StratifiedPermutationSampler, or a "
                "resampling pvalue_method."
            )
        rows, laws = _saddlepoint_rows(treatment, x)
        # Only the cells whose treatment can change under the null (and, for the CRT, those
        # always treated) are read: the others add the same constant to S and to its null.
        # They are taken in the order the saddlepoint reads them (no second copy).
        order, compact = _compact(_law_setup(**laws))
        if order.size == rows.size:
            # The setup re-indexed on the reading order is the setup of the reordered laws.
            rows, laws = rows[order], {key: value[order] for key, value in laws.items()}
        else:
            compact = None
        a = statistic.score_pieces(columns, cells=rows)
        observed = x[rows].astype(np.float64) @ a
        pvalue, methods = _saddlepoint_pvalues(
            a, observed, alternative=self.alternative, compact_setup=compact, **laws
        )
        methods = np.asarray(methods, dtype=object)
        n_used = np.zeros(pvalue.shape, dtype=np.int64)
        fallback = np.flatnonzero(
            np.char.startswith(methods.astype(str), FALLBACK) & np.isfinite(observed)
        )
        if fallback.size:
            # Resampled on every cell: the full pieces of these responses only.
            a_full = statistic.score_pieces(fallback if columns is None else columns[fallback])
            s_full = x.astype(np.float64) @ a_full
            every = np.arange(fallback.size)
            null = draw.evaluate(_LinearScore(a_full), self.n_resamples, every, rng)
            pvalue[fallback] = empirical_pvalues(s_full, null, self.alternative)
            methods[fallback] = [f"empirical ({reason})" for reason in methods[fallback]]
            n_used[fallback] = self.n_resamples
        return pvalue, methods, n_used

    def _rows_per_block(self, n_treated: int, n_columns: int) -> int:
        """Resamples per block within the memory budget; refuses null statistics that cannot
        fit in it, before any work."""
        return _rows_within(self._null_statistics_fit(n_columns), n_treated)

    def _null_statistics_fit(self, n_columns: int) -> float:
        """The memory budget in bytes; raises if the null statistics of ``n_columns`` responses
        cannot fit in it."""
        budget = float(self.memory_budget_mb) * 2**20
        largest = max(self.n_resamples, self.n_resamples_adaptive)
        name = "n_resamples" if largest == self.n_resamples else "n_resamples_adaptive"
        null_bytes = 8.0 * largest * max(n_columns, 1)
        if null_bytes > budget:
            raise ValueError(
                f"{name}={largest} with {n_columns} response(s) needs "
                f"{null_bytes / 2**20:.0f} MiB of null statistics, more than memory_budget_mb="
                f"{self.memory_budget_mb:g}; lower n_resamples / n_resamples_adaptive, test fewer "
                "responses per call, or raise memory_budget_mb."
            )
        return budget

    # ------------------------------------------------------------------ results
    statistic_ = property(lambda self: self._field("statistic"), doc="``result_.statistic``.")
    pvalue_ = property(lambda self: self._field("pvalue"), doc="``result_.pvalue``.")
    effect_ = property(lambda self: self._field("effect"), doc="``result_.effect``.")
    effect_se_ = property(lambda self: self._field("effect_se"), doc="``result_.effect_se``.")
    pvalue_method_ = property(
        lambda self: self._field("pvalue_method"), doc="``result_.pvalue_method``."
    )
    n_resamples_ = property(lambda self: self._field("n_resamples"), doc="``result_.n_resamples``.")

    @property
    def null_distribution_(self):
        """``result_.null_distribution`` (only with ``store_null=True``)."""
        null = self._field("null_distribution")
        if null is None:
            raise AttributeError("null_distribution_ is kept only with store_null=True.")
        return null

    @property
    def pvalues_(self):
        """Deprecated alias of ``pvalue_``."""
        _renamed("pvalues_", "pvalue_")
        return self.pvalue_

    @property
    def pvalue_methods_(self):
        """Deprecated alias of ``pvalue_method_``."""
        _renamed("pvalue_methods_", "pvalue_method_")
        return self.pvalue_method_

    def _field(self, name):
        if "result_" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__} is not fitted yet; call fit first.")
        return getattr(self.result_, name)

    def to_frame(self, response_names=None) -> pd.DataFrame:
        """The results as a tidy DataFrame, one row per tested response.

        Parameters
        ----------
        response_names : sequence of str, default=None
            Names of all the statistic's responses; defaults to their indices.

        Returns
        -------
        pandas.DataFrame
            Columns ``response``, ``n_treated``, ``statistic``, ``effect``, ``effect_se``,
            ``pvalue``, ``pvalue_method``, ``n_resamples``, ``n_strata``.
        """
        check_is_fitted(self, "result_")
        result = self.result_
        idx = (
            np.arange(self.statistic_estimator_.n_responses_)
            if self.columns_ is None
            else self.columns_
        )
        names = idx if response_names is None else np.asarray(response_names, dtype=object)[idx]
        return pd.DataFrame(
            {
                "response": names,
                "n_treated": result.n_treated,
                "statistic": result.statistic,
                "effect": result.effect,
                "effect_se": result.effect_se,
                "pvalue": result.pvalue,
                "pvalue_method": result.pvalue_method,
                "n_resamples": result.n_resamples,
                "n_strata": self.diagnostics_.get("n_strata", 1),
            }
        )


def _method_name(sampler: BaseSampler) -> str:
    """The string API's name of a sampler, or its class name."""
    for name, cls in SAMPLERS.items():
        if type(sampler) is cls:
            return name
    return type(sampler).__name__


def _fit_treatment(parts: _Components, propensity, C, x, batch, burden, eligible) -> _Treatment:
    """Fit the propensity model, the strata and the sampler on the eligible cells."""
    # Every model of the treatment sees the eligible cells only; the statistic (the responses'
    # null models) keeps all cells.
    cells = None if eligible is None else np.flatnonzero(eligible)
    if cells is not None:
        C, x = C[cells], x[cells]
        batch = None if batch is None else batch[cells]
        burden = None if burden is None else burden[cells]
    p_hat = None
    model = None
    if "p_hat" in parts.needs:
        model = NewtonLogisticRegression() if propensity is None else clone(propensity)
        # C is checked finite (fit's _check_covariates): the model need not check it again.
        with config_context(assume_finite=True):
            p_hat = fit_propensity(model, C, x)
    strata = None
    encoder = parts.encoder
    if encoder is not None:
        use_batch = batch if "batch" in encoder.required_inputs() else None
        p_for_bins = p_hat if p_hat is not None else np.zeros(x.size)
        strata = encoder.fit_transform(p_for_bins, batch=use_batch, burden=burden)
    sampler = parts.sampler
    sampler.fit(
        x,
        strata=strata if "strata" in sampler.required_inputs() else None,
        p_hat=p_hat if "p_hat" in sampler.required_inputs() else None,
    )
    return _Treatment(sampler, encoder, model, p_hat, strata, cells)


def _rows_within(budget_bytes: float, n_treated: int) -> int:
    """Resamples of ``n_treated`` treated cells that a quarter of ``budget_bytes`` holds."""
    per_row = _BYTES_PER_TREATED_ENTRY * max(n_treated, 1)
    return max(1, int(budget_bytes / 4 // per_row))


def _rows_per_call(n_treated: int) -> int:
    """Resamples per sampler call: a block under the default budget (``_DEFAULT_BUDGET_MB``)."""
    return _rows_within(float(_DEFAULT_BUDGET_MB) * 2**20, n_treated)


class _Draws:
    """Resamples of a fitted treatment model, drawn call by call and evaluated block by block.

    The sampler is called for ``rows_per_call`` resamples at a time (the last call for the rest),
    whatever the memory budget, so the draws are the same for every budget; a call's resamples
    are evaluated in blocks of at most ``rows_per_block``.
    """

    def __init__(
        self, treatment: _Treatment, n_cells: int, rows_per_block: int, rows_per_call: int
    ):
        self.treatment = treatment
        self.n_cells = n_cells
        self.rows_per_block = rows_per_block
        self.rows_per_call = rows_per_call
        self.n_blocks = 0

    def evaluate(self, statistic, n_resamples: int, columns, rng) -> np.ndarray:
        """Null statistics ``(n_resamples, n_columns)`` of fresh resamples."""
        blocks = []
        block_rows = min(self.rows_per_block, self.rows_per_call)
        # Several blocks: the statistic keeps its pieces from one block to the next.
        several = n_resamples > block_rows and hasattr(statistic, "_evaluate_blocks")
        memo: dict = {}
        for start in range(0, n_resamples, self.rows_per_call):
            rows = min(self.rows_per_call, n_resamples - start)
            # The sampler's own format (CSR or CSC): the statistic takes either.
            resamples = _draw_resamples(self.treatment.sampler, rows, rng)
            if self.treatment.cells is not None:
                resamples = _resamples_on_cells(resamples, self.treatment.cells, self.n_cells)
            for r0 in range(0, rows, block_rows):
                block = resamples if rows <= block_rows else resamples[r0 : r0 + block_rows]
                if several:
                    blocks.append(statistic._evaluate_blocks(block, columns, memo))
                else:
                    blocks.append(statistic.evaluate(block, columns))
                self.n_blocks += 1
            del resamples
        return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=0)


def _draw_resamples(sampler, n_resamples: int, rng):
    """``sampler.sample(n_resamples, rng)``, in CSC where the sampler builds it so (the same
    draws: :meth:`BaseSampler._draw`)."""
    draw = getattr(sampler, "_draw", None)
    if draw is None:
        return sampler.sample(n_resamples, random_state=rng)
    return draw(n_resamples, random_state=rng)


class _LinearScore:
    """The score sum ``S = x @ a`` as a statistic, to resample where the saddlepoint falls back."""

    def __init__(self, pieces: np.ndarray):
        self.pieces = pieces

    def evaluate(self, resamples, columns) -> np.ndarray:
        return np.asarray(resamples @ self.pieces[:, columns])


def _saddlepoint_rows(treatment: _Treatment, x: np.ndarray):
    """The cells the saddlepoint reads and its law on them (``saddlepoint_pvalues`` keywords).

    CRT: the cells with ``p_hat > 0`` (or treated). Permutation: the cells of the strata with
    some but not every cell treated. The cells left out add the same constant to the observed
    ``S`` and to every resampled one (0, or their pieces in a stratum where every cell is
    treated), so the p-values are those of all cells. All cells where none is left.
    """
    n, cells = x.size, treatment.cells
    treated = x != 0
    if treatment.sampler._null_law == "bernoulli":
        p_hat = treatment.p_hat if cells is None else _on_cells(treatment.p_hat, cells, n, 0.0)
        rows = np.flatnonzero((p_hat > 0) | treated)
        if rows.size == 0:
            rows = np.arange(n)
        return rows, {"p_hat": p_hat[rows]}
    strata = treatment.strata
    if strata is None:
        strata = np.zeros(n if cells is None else cells.size, dtype=np.int64)
    if cells is not None:
        strata = _on_cells(strata, cells, n, -1)
    strata = np.asarray(strata, dtype=np.int64)
    inside = strata >= 0
    codes = np.where(inside, strata, 0)
    size = np.bincount(codes[inside])
    m = np.bincount(codes[inside], weights=treated[inside], minlength=size.size)
    active = (m > 0) & (m < size)
    rows = np.flatnonzero(inside & active[codes])
    if rows.size == 0:
        rows = np.arange(n)
    return rows, {"x": x[rows], "strata": strata[rows]}


def _check_columns(columns, n_responses: int):
    if columns is None:
        return None
    columns = np.asarray(columns, dtype=np.intp)
    if columns.ndim != 1 or (columns.size and (columns.min() < 0 or columns.max() >= n_responses)):
        raise ValueError(f"columns must be 1-D indices in [0, {n_responses}), got {columns}.")
    return columns


def _deprecated_Y(responses, kwargs: dict):
    """``fit(Y=...)``, the responses' old name, still accepted with a FutureWarning."""
    if "Y" in kwargs:
        if responses is not None:
            raise TypeError("pass the responses once, as responses= (Y= is its old name).")
        warnings.warn(
            "CRTTest.fit(Y=...) is renamed fit(responses=...) (scikit-learn's metadata routing "
            "reserves 'Y'); Y= will be removed in a future release.",
            FutureWarning,
            stacklevel=3,
        )
        responses = kwargs.pop("Y")
    if kwargs:
        raise TypeError(f"CRTTest.fit() got unexpected keyword argument(s) {sorted(kwargs)}.")
    return responses


def _renamed(old: str, new: str) -> None:
    warnings.warn(
        f"CRTTest.{old} is renamed {new} (one spelling of p-value: 'pvalue'); {old} will be "
        "removed in a future release.",
        FutureWarning,
        stacklevel=3,
    )


def _check_eligible(eligible, x: np.ndarray) -> np.ndarray | None:
    """``eligible`` as a boolean mask, or ``None`` when it is absent or marks every cell."""
    if eligible is None:
        return None
    mask = check_binary_treatment(eligible, "eligible")
    outside = int(np.count_nonzero(x & ~mask))
    if outside:
        raise ValueError(
            f"{outside} treated cell(s) of y are not eligible; eligible must mark every treated "
            "cell (and the control cells they are compared with), e.g. treated | control_group."
        )
    if int(np.count_nonzero(mask)) == int(np.count_nonzero(x)):
        raise ValueError(
            "eligible marks no control cell (every eligible cell is treated); eligible must also "
            "mark the control cells the treated cells are compared with."
        )
    # All cells eligible is the plain test: take exactly the same path (bit-identical results).
    return None if mask.all() else mask


def _on_cells(values: np.ndarray, cells: np.ndarray, n_cells: int, fill) -> np.ndarray:
    """``values`` of the cells ``cells`` spread over ``n_cells``, ``fill`` elsewhere."""
    out = np.full(n_cells, fill, dtype=np.asarray(values).dtype)
    out[cells] = values
    return out


def _check_covariates(X) -> np.ndarray:
    if isinstance(X, pd.DataFrame):
        bad = [c for c in X.columns if not pd.api.types.is_numeric_dtype(X[c])]
        if bad:
            raise ValueError(
                f"X (covariates) has non-numeric columns {bad}; encode them first with "
                "sklcrt.preprocessing.encode_covariates."
            )
    if sp.issparse(X):
        X = X.toarray()
    # astype(copy=False), not asarray(dtype=): the caller's float64 array itself (asarray makes a
    # view where the dtype object differs, e.g. after unpickling), so its fingerprint is cached.
    C = np.asarray(X).astype(np.float64, copy=False)
    if C.ndim == 1:
        C = C[:, None]
    if C.ndim != 2:
        raise ValueError(f"X (covariates) must be 2-D (cells x covariates), got shape {C.shape}.")
    # A finite sum means no NaN or inf (one pass of additions, no boolean array per unit);
    # only a non-finite sum needs the elementwise check (it may be an overflow).
    if not np.isfinite(C.sum()) and not np.all(np.isfinite(C)):
        raise ValueError("X (covariates) contains NaN or infinite values; sklcrt never imputes.")
    return C
