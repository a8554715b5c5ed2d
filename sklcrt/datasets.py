"""Simulated high-MOI single-cell CRISPR screens in the sklcrt data contract.

:func:`simulate_screen` builds a small screen in which the number of guides a cell carries (its
*burden*) confounds guide presence and expression: cells with more guides are more likely to carry
any given guide, non-targeting ones included, and the number of targeting guides changes expression
through a nonlinear (by default step-like) response, as Cas9 cutting toxicity does. Stratifying by
batch and by bins of a propensity fitted on batch and library size does not absorb that
confounding; adding bins of ``log1p_non_ntc_guides_per_cell`` does. It is the built-in data for the
examples and the tests.
"""

from __future__ import annotations

import numbers

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sklcrt._random import as_generator, seed_sequence
from sklcrt._validation import check_int

__all__ = ["simulate_screen", "NTC_LABEL"]

NTC_LABEL = "non-targeting"
"""Target label of the non-targeting guides in ``uns["guide2gene"]``."""

_RESPONSES = ("both", "counts", "programs")
_BURDEN_SHAPES = ("threshold", "quadratic", "linear")

# Fixed generative constants (documented in the Notes of simulate_screen).
_ASSIGNMENT_THRESHOLD = 5  # assigned guides get >= 5 UMIs, ambient noise stays below it
_AMBIENT_RATE = 0.03  # probability that an absent guide shows 1-4 ambient UMIs
_GUIDE_UMI_MEAN = 20.0  # mean UMIs of an assigned guide above the threshold
_GUIDE_ABUNDANCE_SD = 0.25  # log-normal spread of guide representation in the library
_LIBRARY_SD = 0.35  # per-cell log library-size spread
_N_OTHER_DISCOVERY_GENES = 5  # genes other than its own tested per target in discovery_pairs


def _check_float(value, name: str, *, low=None, high=None, low_open=False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}.")
    value = float(value)
    if low is not None and (value < low or (low_open and value == low)):
        op = ">" if low_open else ">="
        raise ValueError(f"{name} must be {op} {low}, got {value}.")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}.")
    return value


def _burden_response(n_targeting: np.ndarray, shape: str, threshold: float) -> np.ndarray:
    """Burden term f(n) of the responses, scaled so that its spread over cells is about 1."""
    n = n_targeting.astype(np.float64)
    if shape == "threshold":
        # steep logistic step (about half a guide wide): flat away from the threshold, so bins of
        # the integer burden absorb it while a linear term in (log) burden does not.
        f = 1.0 / (1.0 + np.exp(-4.0 * (n - threshold)))
    elif shape == "quadratic":
        f = ((n - threshold) / max(np.std(n), 1e-12)) ** 2
    else:  # linear
        f = n
    sd = np.std(f)
    return (f - np.mean(f)) / sd if sd > 0 else np.zeros_like(f)


def _sample_guides(rng, n_cells, load, weights):
    """Each cell draws ``Poisson(load)`` distinct guides, weighted by ``weights`` (Gumbel top-k)."""
    n_guides = weights.size
    k = np.minimum(rng.poisson(load), n_guides)
    keys = np.log(weights)[None, :] + rng.gumbel(size=(n_cells, n_guides))
    rank = np.argsort(np.argsort(-keys, axis=1), axis=1)
    return rank < k[:, None]


def _nb(rng, mu, theta):
    """Negative binomial draws with mean ``mu`` and size ``theta`` (Gamma-Poisson mixture)."""
    return rng.poisson(rng.gamma(theta, mu / theta))


def simulate_screen(
    n_cells: int = 6000,
    n_genes: int = 100,
    n_programs: int = 10,
    n_targets: int = 20,
    guides_per_target: int = 2,
    n_ntc_guides: int = 20,
    moi: float = 8.0,
    n_batches: int = 2,
    effect_size: float = -1.0,
    frac_targets_with_effect: float = 0.5,
    burden_effect: float = 0.2,
    burden_shape: str = "threshold",
    burden_threshold: float | None = None,
    guide_load_cv: float = 0.6,
    mean_umis: float = 2000.0,
    response: str = "both",
    random_state=0,
) -> ad.AnnData:
    """Simulate a high-MOI single-cell CRISPR screen whose guide burden confounds the responses.

    Cells fall in batches; each cell has a latent guide load (a Gamma-distributed rate around
    ``moi``, higher in later batches) and carries ``Poisson(load)`` distinct guides drawn from the
    library, so a cell with more guides is more likely to carry any given guide, non-targeting
    guides included. The number of *targeting* guides a cell carries changes every response through
    a nonlinear burden term (per-response loadings), and targets with an effect shift their own gene
    (and one program). Non-targeting guides are true nulls: given batch and the number of targeting
    guides, their presence is independent of the responses.

    Parameters
    ----------
    n_cells : int, default=6000
        Number of cells.
    n_genes : int, default=100
        Number of genes (columns of ``X``). The first ``n_targets`` genes are the targets.
    n_programs : int, default=10
        Number of gene programs in ``obsm["cnmf_usage"]``.
    n_targets : int, default=20
        Number of targeted genes (at most ``n_genes``).
    guides_per_target : int, default=2
        Guides per target.
    n_ntc_guides : int, default=20
        Number of non-targeting (NTC) guides.
    moi : float, default=8.0
        Mean number of guides per cell (multiplicity of infection), averaged over batches.
    n_batches : int, default=2
        Number of batches. Batch MOIs are spread by +/-15 % around ``moi``, and batches shift the
        library size and every response.
    effect_size : float, default=-1.0
        Typical effect of a target with an effect: log2 fold change of its own gene (negative is a
        knockdown). Each target's effect is ``effect_size`` times a factor drawn in [0.5, 1.5]; the
        same factor shifts the log usage of one program by ``effect * ln 2``.
    frac_targets_with_effect : float, default=0.5
        Fraction of the targets that have an effect (rounded to the nearest count).
    burden_effect : float, default=0.2
        Standard deviation of the per-response loadings (natural-log scale) on the standardised
        burden term. 0 removes the direct effect of burden on the responses.
    burden_shape : {"threshold", "quadratic", "linear"}, default="threshold"
        Shape of the burden term in the number ``n`` of targeting guides: a smooth step at
        ``burden_threshold`` (width about one guide), ``(n - burden_threshold)**2``, or ``n``.
    burden_threshold : float or None, default=None
        Where the step (or the vertex of the quadratic) sits; None puts it half a guide above the
        median number of targeting guides.
    guide_load_cv : float, default=0.6
        Coefficient of variation of the cell-level guide load (Gamma distributed). Larger values
        make burden vary more between cells, hence a stronger confounder.
    mean_umis : float, default=2000.0
        Mean library size (UMIs per cell) of the gene counts.
    response : {"both", "counts", "programs"}, default="both"
        Which responses to store: raw counts in ``X``, program usages in ``obsm["cnmf_usage"]``, or
        both. With ``"programs"`` ``X`` is None; library-size covariates still come from the
        simulated (unstored) counts.
    random_state : int, SeedSequence, Generator or None, default=0
        Seed. Guides, library sizes, counts, programs and guide UMIs use separate streams derived
        from it, so e.g. ``response`` does not change the guides.

    Returns
    -------
    adata : anndata.AnnData
        ``n_cells`` cells with

        - ``X``: raw counts, CSR float32 (cells x genes), negative binomial with per-gene dispersion
          (``var["dispersion"]``, the NB size) and library-size effects (None for ``"programs"``);
        - ``obsm["cnmf_usage"]``: DataFrame of program usages (positive, rows sum to 1);
        - ``obsm["covar"]``: DataFrame indexed by ``obs_names`` with ``batch`` (categorical),
          ``response_n_umis``, ``response_n_nonzero``, their ``log1p_`` versions, and the burden
          covariates ``non_ntc_guides_per_cell``, ``grna_n_nonzero_assign`` and their ``log1p_``
          versions, derived from the assignment;
        - ``obsm["guide_assignment"]``: CSR int32 0/1 (cells x guides);
        - ``obsm["grna_counts"]``: CSR float32 guide UMIs: assigned guides have at least 5, a few
          absent guides have 1-4 ambient UMIs, so thresholding at 5 recovers the assignment;
        - ``obs``: ``batch`` and the latent ``guide_load`` (for diagnostics only);
        - ``var``: ``is_target``, ``dispersion`` and ``burden_loading``;
        - ``uns["guide_names"]``, ``uns["guide2gene"]`` (NTC guides map to ``"non-targeting"``),
          ``uns["program_names"]``, and the raw gRNA metadata ``uns["grna_ids"]`` /
          ``uns["grna_target"]`` (the columns of ``grna_counts``, as an assignment step reads them);
        - ``uns["true_effects"]``: DataFrame ``grna_target``, ``response_id``, ``effect``,
          ``response_kind`` (``"gene"``: log2 fold change; ``"program"``: shift of the program's
          centred log-ratio, ``(1 - 1/n_programs)`` times the log-usage shift);
        - ``uns["discovery_pairs"]``: DataFrame ``response_id``, ``grna_target``, ``response_kind``:
          each target against its own gene and 5 other genes, and against every program;
        - ``uns["positive_control_pairs"]``: same columns, each target with an effect against its
          own gene (against its program when ``response="programs"``);
        - ``uns["simulation"]``: the parameters used.

    Notes
    -----
    Generative model, for cell ``i`` in batch ``b``:

    - guide load ``lambda_i = moi_b * Gamma(1/cv**2, cv**2)``; the cell carries
      ``Poisson(lambda_i)`` distinct guides (capped at the library size) drawn without
      replacement with log-normal representation weights (sd 0.25);
    - ``n_i`` = number of targeting guides it carries (``non_ntc_guides_per_cell``) and
      ``f(n_i)`` the standardised burden term of ``burden_shape``;
    - counts ``y_ig ~ NB(mu_ig, theta_g)`` with
      ``log mu_ig = log L_i + log pi_g + batch_bg + beta_g f(n_i) + ln2 * sum_t e_t x_it [g = t]``,
      ``log L_i ~ N(log mean_umis + batch_b, 0.35)``, ``beta_g ~ N(0, burden_effect)``;
    - program usages ``softmax_k(a_k + batch_bk + gamma_k z_i + beta_k f(n_i) + shifts + noise)``
      with ``z_i`` the standardised log library size and Gaussian noise (sd 0.5).

    Counts and program usages share cells, covariates and guides but have independent noise: the
    usages are not a factorisation of ``X``, and program effects do not reach the genes. A program
    shift also moves the other programs' centred log-ratios by ``-shift/n_programs``; only the
    shifted program is listed in ``true_effects``.

    Burden acts on the responses through the number of *targeting* guides (cutting toxicity), so an
    NTC guide's presence has no effect given the batch and that number. Targeting guides change the
    number and hence every response through the burden term; ``true_effects`` lists only the
    target-specific effects.

    Examples
    --------
    >>> from sklcrt.datasets import simulate_screen
    >>> adata = simulate_screen(n_cells=500, n_genes=30, n_targets=5, n_ntc_guides=4)
    >>> adata.shape
    (500, 30)
    >>> sorted(adata.obsm)
    ['cnmf_usage', 'covar', 'grna_counts', 'guide_assignment']
    """
    n_cells = check_int(n_cells, "n_cells", min_value=2)
    n_genes = check_int(n_genes, "n_genes", min_value=1)
    n_programs = check_int(n_programs, "n_programs", min_value=2)
    n_targets = check_int(n_targets, "n_targets", min_value=0)
    guides_per_target = check_int(guides_per_target, "guides_per_target", min_value=1)
    n_ntc_guides = check_int(n_ntc_guides, "n_ntc_guides", min_value=0)
    n_batches = check_int(n_batches, "n_batches", min_value=1)
    moi = _check_float(moi, "moi", low=0.0, low_open=True)
    effect_size = _check_float(effect_size, "effect_size")
    frac_targets_with_effect = _check_float(
        frac_targets_with_effect, "frac_targets_with_effect", low=0.0, high=1.0
    )
    burden_effect = _check_float(burden_effect, "burden_effect", low=0.0)
    guide_load_cv = _check_float(guide_load_cv, "guide_load_cv", low=0.0, low_open=True)
    mean_umis = _check_float(mean_umis, "mean_umis", low=0.0, low_open=True)
    if burden_threshold is not None:
        burden_threshold = _check_float(burden_threshold, "burden_threshold")
    if response not in _RESPONSES:
        raise ValueError(f"response must be one of {_RESPONSES}, got {response!r}.")
    if burden_shape not in _BURDEN_SHAPES:
        raise ValueError(f"burden_shape must be one of {_BURDEN_SHAPES}, got {burden_shape!r}.")
    if n_targets > n_genes:
        raise ValueError(
            f"n_targets ({n_targets}) must be <= n_genes ({n_genes}): each target is one of the "
            "simulated genes; raise n_genes or lower n_targets."
        )
    if n_targets * guides_per_target + n_ntc_guides == 0:
        raise ValueError("the library is empty; set n_targets or n_ntc_guides to at least 1.")

    root = seed_sequence(random_state)
    rng_design = as_generator(root, key="design")
    rng_guides = as_generator(root, key="guides")
    rng_library = as_generator(root, key="library")
    rng_counts = as_generator(root, key="counts")
    rng_programs = as_generator(root, key="programs")
    rng_grna = as_generator(root, key="grna_counts")

    # ---- names and library -------------------------------------------------------------------
    width = max(3, len(str(n_genes - 1)))
    gene_names = np.array([f"gene_{g:0{width}d}" for g in range(n_genes)], dtype=object)
    program_names = np.array([f"program_{k:02d}" for k in range(n_programs)], dtype=object)
    cell_names = pd.Index([f"cell_{i:06d}" for i in range(n_cells)])
    batch_labels = [f"batch{b}" for b in range(n_batches)]
    targets = gene_names[:n_targets]
    guide_names = [f"{t}_sg{j + 1}" for t in targets for j in range(guides_per_target)]
    guide_names += [f"NTC_{j:03d}" for j in range(n_ntc_guides)]
    guide_target = np.array(
        [t for t in targets for _ in range(guides_per_target)] + [NTC_LABEL] * n_ntc_guides,
        dtype=object,
    )
    is_ntc = guide_target == NTC_LABEL
    n_guides_lib = len(guide_names)

    # ---- design: effects and per-response parameters (one stream, fixed order) ----------------
    n_effect = int(round(frac_targets_with_effect * n_targets))
    effect_targets = np.sort(rng_design.choice(n_targets, size=n_effect, replace=False))
    effect_factor = rng_design.uniform(0.5, 1.5, size=n_effect)
    target_effect = np.zeros(n_targets)
    target_effect[effect_targets] = effect_size * effect_factor  # log2 FC of own gene
    target_program = np.full(n_targets, -1)
    target_program[effect_targets] = rng_design.integers(0, n_programs, size=n_effect)
    guide_weights = np.exp(rng_design.normal(0.0, _GUIDE_ABUNDANCE_SD, size=n_guides_lib))
    guide_weights /= guide_weights.sum()

    log_pi = rng_design.normal(0.0, 1.2, size=n_genes)
    log_pi -= np.log(np.exp(log_pi).sum())
    theta = np.exp(rng_design.normal(np.log(5.0), 0.5, size=n_genes))
    gene_batch = rng_design.normal(0.0, 0.15, size=(n_batches, n_genes))
    gene_burden = rng_design.normal(0.0, burden_effect, size=n_genes)
    prog_base = rng_design.normal(0.0, 0.5, size=n_programs)
    prog_batch = rng_design.normal(0.0, 0.2, size=(n_batches, n_programs))
    prog_lib = rng_design.normal(0.0, 0.1, size=n_programs)
    prog_burden = rng_design.normal(0.0, burden_effect, size=n_programs)
    lib_batch = np.linspace(-0.15, 0.15, n_batches) if n_batches > 1 else np.zeros(1)
    moi_batch = moi * (np.linspace(0.85, 1.15, n_batches) if n_batches > 1 else np.ones(1))

    # ---- cells: batch, guide load, guides -------------------------------------------------------
    batch = np.sort(rng_guides.integers(0, n_batches, size=n_cells))
    shape = 1.0 / guide_load_cv**2
    load = moi_batch[batch] * rng_guides.gamma(shape, 1.0 / shape, size=n_cells)
    present = _sample_guides(rng_guides, n_cells, load, guide_weights)
    n_targeting = present[:, ~is_ntc].sum(axis=1)
    n_assigned = present.sum(axis=1)
    if burden_threshold is None:
        burden_threshold = float(np.median(n_targeting)) + 0.5
    f_burden = _burden_response(n_targeting, burden_shape, burden_threshold)

    # target presence (union of its guides), cells x targets
    target_present = (
        present[:, : n_targets * guides_per_target]
        .reshape(n_cells, n_targets, guides_per_target)
        .any(axis=2)
    )

    # ---- counts ------------------------------------------------------------------------------
    log_lib = rng_library.normal(np.log(mean_umis) + lib_batch[batch], _LIBRARY_SD)
    # composition: batch and burden move genes relative to each other, not the library size
    log_comp = log_pi[None, :] + gene_batch[batch] + np.outer(f_burden, gene_burden)
    log_comp -= np.log(np.exp(log_comp).sum(axis=1, keepdims=True))
    log_mu = log_lib[:, None] + log_comp
    if n_targets:
        log_mu[:, :n_targets] += np.log(2.0) * target_present * target_effect[None, :]
    counts = _nb(rng_counts, np.exp(log_mu), theta[None, :]).astype(np.float32)
    n_umis = counts.sum(axis=1).astype(np.int64)
    n_nonzero = np.count_nonzero(counts, axis=1).astype(np.int64)

    # ---- programs ----------------------------------------------------------------------------
    z_lib = (log_lib - log_lib.mean()) / max(log_lib.std(), 1e-12)
    logit = (
        prog_base[None, :]
        + prog_batch[batch]
        + np.outer(z_lib, prog_lib)
        + np.outer(f_burden, prog_burden)
        + rng_programs.normal(0.0, 0.5, size=(n_cells, n_programs))
    )
    prog_shift = np.zeros((n_targets, n_programs))
    prog_shift[effect_targets, target_program[effect_targets]] = (
        np.log(2.0) * target_effect[effect_targets]
    )
    if n_targets:
        logit += target_present.astype(np.float64) @ prog_shift
    logit -= logit.max(axis=1, keepdims=True)
    usage = np.exp(logit)
    usage /= usage.sum(axis=1, keepdims=True)

    # ---- guide UMIs and assignment -----------------------------------------------------------
    assigned_umis = _ASSIGNMENT_THRESHOLD + _nb(
        rng_grna, np.full(present.shape, _GUIDE_UMI_MEAN), 2.0
    )
    ambient = (rng_grna.random(present.shape) < _AMBIENT_RATE) * rng_grna.integers(
        1, _ASSIGNMENT_THRESHOLD, size=present.shape
    )
    grna = np.where(present, assigned_umis, ambient).astype(np.float32)
    assignment = sp.csr_matrix(present.astype(np.int32))

    # ---- covariates --------------------------------------------------------------------------
    batch_cat = pd.Categorical.from_codes(batch, categories=batch_labels)
    covar = pd.DataFrame(
        {
            "batch": batch_cat,
            "response_n_umis": n_umis,
            "response_n_nonzero": n_nonzero,
            "log1p_response_n_umis": np.log1p(n_umis),
            "log1p_response_n_nonzero": np.log1p(n_nonzero),
            "non_ntc_guides_per_cell": n_targeting.astype(np.int64),
            "grna_n_nonzero_assign": n_assigned.astype(np.int64),
            "log1p_non_ntc_guides_per_cell": np.log1p(n_targeting),
            "log1p_grna_n_nonzero_assign": np.log1p(n_assigned),
        },
        index=cell_names,
    )

    # ---- truth and pairs ---------------------------------------------------------------------
    with_counts = response in ("both", "counts")
    with_programs = response in ("both", "programs")
    eff_names = targets[effect_targets]
    truth, discovery, positive = [], [], []
    if with_counts:
        truth.append(
            pd.DataFrame(
                {
                    "grna_target": eff_names,
                    "response_id": eff_names,
                    "effect": target_effect[effect_targets],
                    "response_kind": "gene",
                }
            )
        )
        others = np.arange(n_targets, n_genes) if n_genes > n_targets else np.arange(n_genes)
        for t in range(n_targets):
            pool = others[others != t]
            k = min(_N_OTHER_DISCOVERY_GENES, pool.size)
            genes = np.concatenate([[t], np.sort(rng_design.choice(pool, size=k, replace=False))])
            discovery.append(
                pd.DataFrame(
                    {
                        "response_id": gene_names[genes],
                        "grna_target": targets[t],
                        "response_kind": "gene",
                    }
                )
            )
        positive.append(
            pd.DataFrame(
                {"response_id": eff_names, "grna_target": eff_names, "response_kind": "gene"}
            )
        )
    if with_programs:
        clr_factor = 1.0 - 1.0 / n_programs
        prog_of = program_names[target_program[effect_targets]] if n_effect else []
        truth.append(
            pd.DataFrame(
                {
                    "grna_target": eff_names,
                    "response_id": prog_of,
                    "effect": clr_factor * np.log(2.0) * target_effect[effect_targets],
                    "response_kind": "program",
                }
            )
        )
        discovery.append(
            pd.DataFrame(
                {
                    "response_id": np.tile(program_names, n_targets),
                    "grna_target": np.repeat(targets, n_programs),
                    "response_kind": "program",
                }
            )
        )
        if not with_counts:
            positive.append(
                pd.DataFrame(
                    {"response_id": prog_of, "grna_target": eff_names, "response_kind": "program"}
                )
            )

    def _frame(parts, columns):
        frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
        frame = frame[columns]
        for col in columns:
            if col != "effect":
                frame[col] = frame[col].astype(str)
        return frame.reset_index(drop=True)

    true_effects = _frame(truth, ["grna_target", "response_id", "effect", "response_kind"])
    true_effects["effect"] = true_effects["effect"].astype(np.float64)
    pair_cols = ["response_id", "grna_target", "response_kind"]
    discovery_pairs = _frame(discovery, pair_cols)
    positive_control_pairs = _frame(positive, pair_cols)

    # ---- assemble ------------------------------------------------------------------------------
    obs = pd.DataFrame({"batch": batch_cat, "guide_load": load}, index=cell_names)
    var = pd.DataFrame(
        {
            "is_target": np.arange(n_genes) < n_targets,
            "dispersion": theta,
            "burden_loading": gene_burden,
        },
        index=pd.Index(gene_names.astype(str)),
    )
    if with_counts:
        adata = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)
    else:
        adata = ad.AnnData(obs=obs)
    adata.obsm["covar"] = covar
    if with_programs:
        adata.obsm["cnmf_usage"] = pd.DataFrame(
            usage, index=cell_names, columns=pd.Index(program_names.astype(str))
        )
    adata.obsm["guide_assignment"] = assignment
    adata.obsm["grna_counts"] = sp.csr_matrix(grna)
    adata.uns["guide_names"] = list(guide_names)
    adata.uns["guide2gene"] = dict(zip(guide_names, guide_target.tolist(), strict=True))
    # raw gRNA metadata (columns of grna_counts), as stored before assignment (SCEPTRE-style keys)
    adata.uns["grna_ids"] = list(guide_names)
    adata.uns["grna_target"] = guide_target.tolist()
    adata.uns["program_names"] = list(program_names.astype(str))
    adata.uns["true_effects"] = true_effects
    adata.uns["discovery_pairs"] = discovery_pairs
    adata.uns["positive_control_pairs"] = positive_control_pairs
    adata.uns["simulation"] = {
        "n_cells": n_cells,
        "n_genes": n_genes,
        "n_programs": n_programs,
        "n_targets": n_targets,
        "guides_per_target": guides_per_target,
        "n_ntc_guides": n_ntc_guides,
        "moi": moi,
        "n_batches": n_batches,
        "effect_size": effect_size,
        "frac_targets_with_effect": frac_targets_with_effect,
        "burden_effect": burden_effect,
        "burden_shape": burden_shape,
        "burden_threshold": float(burden_threshold),
        "guide_load_cv": guide_load_cv,
        "mean_umis": mean_umis,
        "response": response,
        "ntc_label": NTC_LABEL,
    }
    return adata
