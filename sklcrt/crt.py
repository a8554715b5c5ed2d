"""The conditional randomization test estimator: one unit against many responses."""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.base import BaseEstimator, clone
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from sklcrt._random import as_generator
from sklcrt._validation import (
    check_1d_numeric,
    check_binary_treatment,
    check_has_both_arms,
    check_same_length,
)
from sklcrt.propensity import NewtonLogisticRegression, fit_propensity
from sklcrt.pvalues import ALTERNATIVES, compute_pvalues
from sklcrt.resampling import resolve_resampling
from sklcrt.samplers import (
    BernoulliSampler,
    PermutationSampler,
    StratifiedPermutationSampler,
)
from sklcrt.statistics import OLSStatistic
from sklcrt.strata import StratumEncoder

__all__ = ["CRTTest"]


def _resamples_on_cells(resamples: sp.csr_matrix, cells: np.ndarray, n_cells: int) -> sp.csr_matrix:
    """Resamples drawn on a subset of the cells, as rows over all ``n_cells`` cells.

    Column ``j`` of ``resamples`` is cell ``cells[j]``; ``cells`` is increasing (e.g.
    ``np.flatnonzero(eligible)``), so the mapped column indices stay sorted within every row and
    the result is canonical CSR, shape ``(n_resamples, n_cells)``; the cells outside ``cells`` are
    untreated in every resample. Cost ``O(nnz)``.

    Why the test stays valid: the null model of each response is fitted once on all cells
    without the treatment, so the statistic is a fixed function of the treatment vector, and
    under the null hypothesis the treatment is exchangeable among the eligible cells (within
    strata) given the covariates. Permuting the treated cells among the eligible cells only, with
    every other cell left untreated as observed, is a valid randomization test of that null: the
    p-value compares the treated cells with the eligible controls only.
    """
    index_dtype = resamples.indices.dtype if n_cells < 2**31 - 1 else np.int64
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


class CRTTest(BaseEstimator):
    """Conditional randomization / stratified permutation test of one unit against many responses.

    ``fit`` fits a propensity model ``P(x = 1 | C)``, builds strata (batch x propensity bins x
    burden
    bins) when the sampler needs them, draws ``n_resamples`` synthetic treatment vectors once and
    evaluates the statistic of every response on all of them in one vectorised step. Where the
    first-stage p-value is at most ``adaptive_threshold``, ``n_resamples_adaptive`` fresh resamples
    give the final p-value (valid: see :func:`sklcrt.pvalues.adaptive_second_stage_mask`).

    Components are configured either as objects (``sampler``, ``encoder``, ``propensity``,
    ``statistic``; nested parameters such as ``encoder__n_burden_bins`` work with ``get_params``,
    ``set_params``, ``clone`` and ``ParameterGrid``) or through the string API
    (``resampling_method`` and ``resampling_kwargs``), which builds the same objects.

    Parameters
    ----------
    statistic : BaseStatistic, default=None
        The test statistic; ``None`` means :class:`~sklcrt.statistics.OLSStatistic`. When ``fit`` is
        called with ``Y=None`` the statistic must already be fitted and is reused as is, so one null
        model serves every unit of a screen.
    propensity : classifier with ``predict_proba``, default=None
        Model of ``P(x = 1 | C)``; ``None`` means
        :class:`~sklcrt.propensity.NewtonLogisticRegression` (same fit as scikit-learn's
        ``LogisticRegression``, faster).
    encoder : StratumEncoder, default=None
        Builds strata for a stratified sampler; ``None`` means ``StratumEncoder()`` when the sampler
        is stratified.
    sampler : BaseSampler, default=None
        Draws synthetic treatment vectors; ``None`` means :class:`~sklcrt.samplers.BernoulliSampler`
        (the classic CRT), unless ``resampling_method`` says otherwise.
    resampling_method : {"bernoulli_index", "crt", "stratified_perm", "perm"}, default=None
        String API; when set, ``sampler`` and ``encoder`` must be left ``None``.
    resampling_kwargs : dict, default=None
        Options of the string API (``n_bins``, ``stratify_by_batch``, ``batch_key``, ``burden_key``,
        ``n_burden_bins``, ``burden_bin_method``, ``burden_clip_quantiles``, ``min_stratum_size``).
        For high MOI we recommend ``resampling_method="stratified_perm"`` with ``n_bins=20``,
        ``stratify_by_batch=True``, ``burden_key="log1p_non_ntc_guides_per_cell"``,
        ``n_burden_bins=8`` and ``burden_bin_method="quantile"``.
    n_resamples : int, default=499
        First-stage resamples, shared by all responses.
    n_resamples_adaptive : int, default=4999
        Second-stage resamples for responses whose first-stage p-value is at most
        ``adaptive_threshold``; 0 turns the second stage off.
    adaptive_threshold : float, default=0.02
        First-stage p-value at or below which a response gets the second stage.
    alternative : {"two-sided", "less", "greater"}, default="two-sided"
        Direction of the alternative, in SciPy's words.
    pvalue_method : {"empirical", "skew_normal"}, default="empirical"
        How the final p-value is computed from the null statistics; ``"skew_normal"`` fits a
        skew-normal tail, with a goodness-of-fit guard that falls back to the empirical p-value.
    store_null : bool, default=False
        Keep the first-stage null statistics in ``null_distribution_``.
    random_state : int, SeedSequence or None, default=None
        Seeds the resamples.

    Attributes
    ----------
    statistic_ : ndarray of shape (n_responses,)
        Observed test statistic for each response.
    effect_ : ndarray of shape (n_responses,)
        Effect size (OLS beta, or log2 fold change for counts). It always comes from the
        statistic's all-cells model: the coefficient of ``x`` added to the null model fitted on
        every cell, i.e. the treated cells against all other cells (adjusted for ``C``), also
        when ``fit`` is given ``eligible`` (see Notes).
    effect_se_ : ndarray of shape (n_responses,)
        Standard error of ``effect_``.
    pvalues_ : ndarray of shape (n_responses,)
        Final p-values.
    pvalue_methods_ : ndarray of shape (n_responses,)
        ``"empirical"`` or ``"skew_normal"``, for each p-value.
    n_resamples_ : ndarray of shape (n_responses,)
        Resamples behind each final p-value.
    n_treated_ : int
        Treated cells.
    propensity_ : ndarray of shape (n_cells,) or None
        Fitted ``P(x = 1 | C)``, ``None`` when the sampler needs none; 0 for cells outside
        ``eligible``.
    strata_ : ndarray of shape (n_cells,) or None
        Stratum id of each cell, ``None`` for unstratified samplers; -1 for cells outside
        ``eligible``.
    diagnostics_ : dict
        Stratum diagnostics, resampling method, stage counts and ``n_eligible`` (cells that may
        be treated in a resample; ``n_cells`` without ``eligible``).
    null_distribution_ : ndarray of shape (n_resamples, n_responses)
        First-stage null statistics, only when ``store_null=True``.
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
    reference distribution, hence ``pvalues_``, is restricted to the eligible cells.

    Examples
    --------
    >>> import numpy as np
    >>> from sklcrt import CRTTest
    >>> rng = np.random.default_rng(0)
    >>> C = rng.normal(size=(500, 2))
    >>> x = rng.random(500) < 0.2
    >>> Y = rng.normal(size=(500, 3))
    >>> test = CRTTest(n_resamples=99, n_resamples_adaptive=0, random_state=0).fit(C, x, Y=Y)
    >>> test.pvalues_.shape
    (3,)
    """

    _parameter_constraints: dict = {
        "statistic": [HasMethods(["fit", "evaluate", "observed"]), None],
        "propensity": [HasMethods(["fit", "predict_proba"]), None],
        "encoder": [HasMethods(["fit_transform"]), None],
        "sampler": [HasMethods(["fit", "sample"]), None],
        "resampling_method": [
            StrOptions({"bernoulli_index", "crt", "stratified_perm", "perm"}),
            None,
        ],
        "resampling_kwargs": [dict, None],
        "n_resamples": [Interval(numbers.Integral, 1, None, closed="left")],
        "n_resamples_adaptive": [Interval(numbers.Integral, 0, None, closed="left")],
        "adaptive_threshold": [Interval(numbers.Real, 0, 1, closed="both")],
        "alternative": [StrOptions(set(ALTERNATIVES))],
        "pvalue_method": [StrOptions({"empirical", "skew_normal"})],
        "store_null": ["boolean"],
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
        pvalue_method="empirical",
        store_null=False,
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
        self.random_state = random_state

    # ------------------------------------------------------------------ components
    def _resolve_components(self, burden):
        """The unfitted sampler and encoder, and the method name, from objects or strings."""
        if self.resampling_method is not None or self.resampling_kwargs is not None:
            if self.sampler is not None or self.encoder is not None:
                raise ValueError(
                    "Configure resampling either with objects (sampler=, encoder=) or with the "
                    "string API (resampling_method=, resampling_kwargs=), not both."
                )
            config = resolve_resampling(
                self.resampling_method or "bernoulli_index", self.resampling_kwargs
            )
            if config.burden_key is None and burden is not None:
                raise ValueError(
                    "burden values were passed but resampling_kwargs['burden_key'] is None; set "
                    "burden_key to use burden bins, or do not pass burden."
                )
            if config.burden_key is not None and burden is None:
                raise ValueError(
                    f"resampling_kwargs['burden_key']={config.burden_key!r} asks for burden bins "
                    "but no burden values were passed to fit(burden=...)."
                )
            encoder = config.encoder
            return config.method, clone(config.sampler), None if encoder is None else clone(encoder)
        sampler = BernoulliSampler() if self.sampler is None else clone(self.sampler)
        encoder = None
        if isinstance(sampler, StratifiedPermutationSampler):
            encoder = StratumEncoder() if self.encoder is None else clone(self.encoder)
        elif self.encoder is not None:
            raise ValueError(
                f"encoder is only used by stratified samplers; {type(sampler).__name__} takes "
                "none. "
                "Use sampler=StratifiedPermutationSampler() or drop the encoder."
            )
        method = {
            BernoulliSampler: "bernoulli_index",
            StratifiedPermutationSampler: "stratified_perm",
            PermutationSampler: "perm",
        }.get(type(sampler), type(sampler).__name__)
        return method, sampler, encoder

    @staticmethod
    def _needs_propensity(sampler, encoder) -> bool:
        if isinstance(sampler, PermutationSampler):
            return False
        if encoder is not None and getattr(encoder, "n_bins", 2) == 1:
            return False
        return True

    # ------------------------------------------------------------------ fit
    def fit(self, X, y, *, Y=None, batch=None, burden=None, columns=None, eligible=None):
        """Test the unit ``y`` against every response in ``Y``.

        Parameters
        ----------
        X : array-like of shape (n_cells, n_covariates)
            Encoded covariates ``C`` (an intercept is added where missing).
        y : array-like of shape (n_cells,)
            The unit's binary treatment ``x`` (1 = the cell carries the unit).
        Y : array-like or sparse matrix of shape (n_cells, n_responses), default=None
            Responses. ``None`` reuses the already-fitted ``statistic`` (its null model).
        batch : array-like of shape (n_cells,), default=None
            Raw batch labels, used for strata when the encoder stratifies by batch.
        burden : array-like of shape (n_cells,), default=None
            Raw burden values (e.g. ``log1p_non_ntc_guides_per_cell``), binned into strata.
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
        self._validate_params()
        C = _check_covariates(X)
        x = check_binary_treatment(y, "y")
        check_same_length(X=C, y=x, batch=batch, burden=burden, eligible=eligible)
        check_has_both_arms(x, "y")
        eligible = _check_eligible(eligible, x)
        if burden is not None:
            burden = check_1d_numeric(burden, "burden")
        if batch is not None:
            batch = np.asarray(batch)

        statistic = self._fitted_statistic(Y, C)
        if statistic.n_cells_ != x.size:
            raise ValueError(
                f"the fitted statistic has {statistic.n_cells_} cells but y has {x.size}."
            )
        if columns is not None:
            columns = np.asarray(columns, dtype=np.intp)
            if columns.ndim != 1 or (
                columns.size and (columns.min() < 0 or columns.max() >= statistic.n_responses_)
            ):
                raise ValueError(
                    f"columns must be 1-D indices in [0, {statistic.n_responses_}), got {columns}."
                )

        method, sampler, encoder = self._resolve_components(burden)
        # Every model of the treatment (propensity, strata, sampler) sees the eligible cells only;
        # the statistic (the responses' null models) keeps all cells.
        if eligible is None:
            cells = None
            C_e, x_e, batch_e, burden_e = C, x, batch, burden
        else:
            cells = np.flatnonzero(eligible)
            C_e, x_e = C[cells], x[cells]
            batch_e = None if batch is None else batch[cells]
            burden_e = None if burden is None else burden[cells]
        p_hat = None
        propensity_model = None
        if self._needs_propensity(sampler, encoder):
            propensity_model = (
                NewtonLogisticRegression() if self.propensity is None else clone(self.propensity)
            )
            p_hat = fit_propensity(propensity_model, C_e, x_e)
        strata = None
        if encoder is not None:
            use_batch = batch_e if getattr(encoder, "stratify_by_batch", True) else None
            p_for_bins = p_hat if p_hat is not None else np.zeros(x_e.size)
            strata = encoder.fit_transform(p_for_bins, batch=use_batch, burden=burden_e)
        sampler.fit(x_e, strata=strata, p_hat=p_hat)

        def draw(n_resamples, rng):
            resamples = sampler.sample(n_resamples, random_state=rng)
            if cells is None:
                return resamples
            return _resamples_on_cells(resamples, cells, x.size)

        rng = as_generator(self.random_state)
        observed = statistic.observed(x, columns=columns)
        null = statistic.evaluate(draw(self.n_resamples, rng), columns)
        final_method = "empirical" if self.n_resamples_adaptive else self.pvalue_method
        pvalues, methods = compute_pvalues(
            observed["statistic"], null, alternative=self.alternative, method=final_method
        )
        n_used = np.full(pvalues.shape, self.n_resamples, dtype=np.int64)

        n_stage2 = 0
        if self.n_resamples_adaptive:
            # Fresh resamples where stage 1 says the p-value may be small; the rest keep their
            # (valid) stage-1 p-value.
            second = np.flatnonzero(pvalues <= self.adaptive_threshold)
            n_stage2 = int(second.size)
            if n_stage2:
                cols2 = second if columns is None else columns[second]
                null2 = statistic.evaluate(draw(self.n_resamples_adaptive, rng), cols2)
                p2, m2 = compute_pvalues(
                    observed["statistic"][second],
                    null2,
                    alternative=self.alternative,
                    method=self.pvalue_method,
                )
                pvalues[second] = p2
                methods[second] = m2
                n_used[second] = self.n_resamples_adaptive

        self.statistic_estimator_ = statistic
        self.sampler_ = sampler
        self.encoder_ = encoder
        self.propensity_model_ = propensity_model
        if cells is not None:
            # Full-length attributes: ineligible cells are never treated (propensity 0) and
            # belong to no stratum (-1).
            if p_hat is not None:
                p_hat = _on_cells(p_hat, cells, x.size, 0.0)
            if strata is not None:
                strata = _on_cells(strata, cells, x.size, -1)
        self.propensity_ = p_hat
        self.strata_ = strata
        self.columns_ = columns
        self.statistic_ = np.asarray(observed["statistic"], dtype=float)
        self.effect_ = np.asarray(observed["effect"], dtype=float)
        self.effect_se_ = np.asarray(observed["effect_se"], dtype=float)
        self.n_treated_ = int(observed["n_treated"])
        self.pvalues_ = pvalues
        self.pvalue_methods_ = np.asarray(methods, dtype=object)
        self.n_resamples_ = n_used
        self.resampling_method_ = method
        diagnostics = {
            "resampling_method": method,
            "n_cells": int(x.size),
            "n_treated": self.n_treated_,
            "n_eligible": int(x.size if cells is None else cells.size),
            "n_stage2": n_stage2,
        }
        if encoder is not None:
            diagnostics.update(encoder.diagnostics_)
        else:
            diagnostics["n_strata"] = 1
        self.diagnostics_ = diagnostics
        if self.store_null:
            self.null_distribution_ = null
        return self

    def _fitted_statistic(self, Y, C):
        if Y is None:
            if self.statistic is None:
                raise ValueError("Y is required unless statistic= is an already fitted statistic.")
            check_is_fitted(self.statistic, "n_responses_")
            return self.statistic
        statistic = OLSStatistic() if self.statistic is None else clone(self.statistic)
        return statistic.fit(Y, C)

    # ------------------------------------------------------------------ results
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
            ``p_value``, ``pvalue_method``, ``n_resamples``, ``n_strata``.
        """
        check_is_fitted(self, "pvalues_")
        idx = (
            np.arange(self.statistic_estimator_.n_responses_)
            if self.columns_ is None
            else self.columns_
        )
        names = idx if response_names is None else np.asarray(response_names, dtype=object)[idx]
        return pd.DataFrame(
            {
                "response": names,
                "n_treated": self.n_treated_,
                "statistic": self.statistic_,
                "effect": self.effect_,
                "effect_se": self.effect_se_,
                "p_value": self.pvalues_,
                "pvalue_method": self.pvalue_methods_,
                "n_resamples": self.n_resamples_,
                "n_strata": self.diagnostics_.get("n_strata", 1),
            }
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
    C = np.asarray(X, dtype=np.float64)
    if C.ndim == 1:
        C = C[:, None]
    if C.ndim != 2:
        raise ValueError(f"X (covariates) must be 2-D (cells x covariates), got shape {C.shape}.")
    if not np.all(np.isfinite(C)):
        raise ValueError("X (covariates) contains NaN or infinite values; sklcrt never imputes.")
    return C
