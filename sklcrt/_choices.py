"""The allowed values of sklcrt's string options, in one place.

Every layer (the estimator, the runners, the command line and its ``--help``) reads its choices
from here. The module imports nothing, so the command line can show them without loading numpy.
"""

#: ``alternative`` of the tests and p-values (SciPy's words).
ALTERNATIVES = ("two-sided", "less", "greater")

#: How :func:`~sklcrt.pvalues.compute_pvalues` turns null statistics into p-values.
RESAMPLING_PVALUE_METHODS = ("empirical", "skew_normal")
#: ``pvalue_method`` of :class:`~sklcrt.crt.CRTTest` and the runners (``"saddlepoint"``: no
#: resampling, see :mod:`sklcrt.saddlepoint`).
PVALUE_METHODS = (*RESAMPLING_PVALUE_METHODS, "saddlepoint")

#: ``resampling_method`` of the string API and the sampler class behind each (module:class);
#: giving a new sampler a string name is one line here.
SAMPLERS = {
    "bernoulli_index": "sklcrt.samplers:BernoulliSampler",
    "stratified_perm": "sklcrt.samplers:StratifiedPermutationSampler",
    "perm": "sklcrt.samplers:PermutationSampler",
}
#: The values of ``resampling_method`` (besides the aliases below).
RESAMPLING_METHODS = tuple(SAMPLERS)
#: Other names of resampling methods (``"crt"`` is the classic CRT, ``"bernoulli_index"``).
RESAMPLING_ALIASES = {"crt": "bernoulli_index"}

#: ``control_group`` of the runners, in SCEPTRE's words.
CONTROL_GROUPS = ("complement", "nt_cells")

#: ``grna_integration`` of the gene loop, in SCEPTRE's words.
GRNA_INTEGRATIONS = ("union", "singleton", "bonferroni")

#: ``response`` of :func:`~sklcrt.inputs.prepare_crt_inputs`.
RESPONSE_KINDS = ("counts", "programs")

#: Targets that mark non-targeting guides by default (compared case-insensitively).
DEFAULT_NTC_LABELS = ("non-targeting", "non_targeting", "nontargeting", "NTC")
