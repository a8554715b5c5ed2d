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
from dataclasses import asdict, dataclass

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


# ---- settings ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Params:
    """The validated arguments of simulate_screen, in signature order (as ``uns["simulation"]``)."""

    n_cells: int
    n_genes: int
    n_programs: int
    n_targets: int
    guides_per_target: int
    n_ntc_guides: int
    moi: float
    n_batches: int
    effect_size: float
    frac_targets_with_effect: float
    burden_effect: float
    burden_shape: str
    burden_threshold: float | None
    guide_load_cv: float
    mean_umis: float
    response: str

    @property
    def with_counts(self) -> bool:
        """Whether the gene counts are stored (and gene pairs listed)."""
        return self.response in ("both", "counts")

    @property
    def with_programs(self) -> bool:
        """Whether the program usages are stored (and program pairs listed)."""
        return self.response in ("both", "programs")


# minimum of each integer argument and bounds of each real one, in the order they are checked
_INT_MINIMA = {
    "n_cells": 2,
    "n_genes": 1,
    "n_programs": 2,
    "n_targets": 0,
    "guides_per_target": 1,
    "n_ntc_guides": 0,
    "n_batches": 1,
}
_FLOAT_BOUNDS = {
    "moi": {"low": 0.0, "low_open": True},
    "effect_size": {},
    "frac_targets_with_effect": {"low": 0.0, "high": 1.0},
    "burden_effect": {"low": 0.0},
    "guide_load_cv": {"low": 0.0, "low_open": True},
    "mean_umis": {"low": 0.0, "low_open": True},
}


def _check_params(**raw) -> _Params:
    """Validate the arguments of simulate_screen once and return them normalised."""
    checked = dict(raw)
    for name, min_value in _INT_MINIMA.items():
        checked[name] = check_int(raw[name], name, min_value=min_value)
    for name, bounds in _FLOAT_BOUNDS.items():
        checked[name] = _check_float(raw[name], name, **bounds)
    if raw["burden_threshold"] is not None:
        checked["burden_threshold"] = _check_float(raw["burden_threshold"], "burden_threshold")
    p = _Params(**checked)
    if p.response not in _RESPONSES:
        raise ValueError(f"response must be one of {_RESPONSES}, got {p.response!r}.")
    if p.burden_shape not in _BURDEN_SHAPES:
        raise ValueError(f"burden_shape must be one of {_BURDEN_SHAPES}, got {p.burden_shape!r}.")
    if p.n_targets > p.n_genes:
        raise ValueError(
            f"n_targets ({p.n_targets}) must be <= n_genes ({p.n_genes}): each target is one of "
            "the simulated genes; raise n_genes or lower n_targets."
        )
    if p.n_targets * p.guides_per_target + p.n_ntc_guides == 0:
        raise ValueError("the library is empty; set n_targets or n_ntc_guides to at least 1.")
    return p


# ---- names and library ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Names:
    """Names of the genes, programs, cells, batches and guides, and the target of each guide."""

    gene_names: np.ndarray
    program_names: np.ndarray
    cell_names: pd.Index
    batch_labels: list
    targets: np.ndarray  # the first n_targets gene names
    guide_names: list
    guide_target: np.ndarray  # target gene of each guide, NTC_LABEL for the non-targeting ones


def _make_names(p: _Params) -> _Names:
    """Name the genes, programs, cells, batches and guides, and map each guide to its target."""
    width = max(3, len(str(p.n_genes - 1)))
    gene_names = np.array([f"gene_{g:0{width}d}" for g in range(p.n_genes)], dtype=object)
    targets = gene_names[: p.n_targets]
    guide_names = [f"{t}_sg{j + 1}" for t in targets for j in range(p.guides_per_target)]
    guide_names += [f"NTC_{j:03d}" for j in range(p.n_ntc_guides)]
    guide_target = [t for t in targets for _ in range(p.guides_per_target)]
    return _Names(
        gene_names=gene_names,
        program_names=np.array([f"program_{k:02d}" for k in range(p.n_programs)], dtype=object),
        cell_names=pd.Index([f"cell_{i:06d}" for i in range(p.n_cells)]),
        batch_labels=[f"batch{b}" for b in range(p.n_batches)],
        targets=targets,
        guide_names=guide_names,
        guide_target=np.array(guide_target + [NTC_LABEL] * p.n_ntc_guides, dtype=object),
    )


# ---- design: effects and per-response parameters (one stream, fixed order) ----------------------


@dataclass(frozen=True)
class _Design:
    """Screen-level parameters: target effects, guide representation, gene and program terms."""

    effect_targets: np.ndarray  # sorted indices of the targets with an effect
    target_effect: np.ndarray  # log2 fold change of each target's own gene (0 without effect)
    target_program: np.ndarray  # program shifted by each target with an effect (-1 otherwise)
    guide_weights: np.ndarray  # representation of each guide in the library (sums to 1)
    log_pi: np.ndarray  # baseline log composition of the genes
    theta: np.ndarray  # NB size of each gene
    gene_batch: np.ndarray  # batches x genes
    gene_burden: np.ndarray  # burden loading of each gene
    prog_base: np.ndarray
    prog_batch: np.ndarray  # batches x programs
    prog_lib: np.ndarray  # loading of each program on the standardised log library size
    prog_burden: np.ndarray  # burden loading of each program
    lib_batch: np.ndarray  # log library-size shift of each batch
    moi_batch: np.ndarray  # MOI of each batch


def _draw_effects(rng, p: _Params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw which targets have an effect, its size and the program each one shifts."""
    n_effect = int(round(p.frac_targets_with_effect * p.n_targets))
    effect_targets = np.sort(rng.choice(p.n_targets, size=n_effect, replace=False))
    effect_factor = rng.uniform(0.5, 1.5, size=n_effect)
    target_effect = np.zeros(p.n_targets)
    target_effect[effect_targets] = p.effect_size * effect_factor  # log2 FC of own gene
    target_program = np.full(p.n_targets, -1)
    target_program[effect_targets] = rng.integers(0, p.n_programs, size=n_effect)
    return effect_targets, target_effect, target_program


def _draw_design(rng, p: _Params, n_guides: int) -> _Design:
    """Draw the effects, guide weights and per-response parameters from the design stream."""
    effect_targets, target_effect, target_program = _draw_effects(rng, p)
    guide_weights = np.exp(rng.normal(0.0, _GUIDE_ABUNDANCE_SD, size=n_guides))
    guide_weights /= guide_weights.sum()

    log_pi = rng.normal(0.0, 1.2, size=p.n_genes)
    log_pi -= np.log(np.exp(log_pi).sum())
    theta = np.exp(rng.normal(np.log(5.0), 0.5, size=p.n_genes))
    gene_batch = rng.normal(0.0, 0.15, size=(p.n_batches, p.n_genes))
    gene_burden = rng.normal(0.0, p.burden_effect, size=p.n_genes)
    prog_base = rng.normal(0.0, 0.5, size=p.n_programs)
    prog_batch = rng.normal(0.0, 0.2, size=(p.n_batches, p.n_programs))
    prog_lib = rng.normal(0.0, 0.1, size=p.n_programs)
    prog_burden = rng.normal(0.0, p.burden_effect, size=p.n_programs)
    spread = p.n_batches > 1
    lib_batch = np.linspace(-0.15, 0.15, p.n_batches) if spread else np.zeros(1)
    moi_batch = p.moi * (np.linspace(0.85, 1.15, p.n_batches) if spread else np.ones(1))
    return _Design(
        effect_targets=effect_targets,
        target_effect=target_effect,
        target_program=target_program,
        guide_weights=guide_weights,
        log_pi=log_pi,
        theta=theta,
        gene_batch=gene_batch,
        gene_burden=gene_burden,
        prog_base=prog_base,
        prog_batch=prog_batch,
        prog_lib=prog_lib,
        prog_burden=prog_burden,
        lib_batch=lib_batch,
        moi_batch=moi_batch,
    )


# ---- cells: batch, guide load, guides ------------------------------------------------------------


@dataclass(frozen=True)
class _Cells:
    """Each cell's batch, latent guide load, guides and burden."""

    batch: np.ndarray  # batch code of each cell (sorted)
    load: np.ndarray  # latent guide load
    present: np.ndarray  # cells x guides, bool
    n_targeting: np.ndarray  # number of targeting guides (the burden)
    n_assigned: np.ndarray  # number of guides
    burden_threshold: float  # as given, or resolved from the median burden
    f_burden: np.ndarray  # standardised burden term f(n_targeting)
    target_present: np.ndarray  # cells x targets, bool: the union of each target's guides


def _draw_cells(rng, p: _Params, names: _Names, design: _Design) -> _Cells:
    """Draw each cell's batch, guide load and guides from the guides stream; derive its burden."""
    batch = np.sort(rng.integers(0, p.n_batches, size=p.n_cells))
    shape = 1.0 / p.guide_load_cv**2
    load = design.moi_batch[batch] * rng.gamma(shape, 1.0 / shape, size=p.n_cells)
    present = _sample_guides(rng, p.n_cells, load, design.guide_weights)
    is_ntc = names.guide_target == NTC_LABEL
    n_targeting = present[:, ~is_ntc].sum(axis=1)
    burden_threshold = p.burden_threshold
    if burden_threshold is None:
        burden_threshold = float(np.median(n_targeting)) + 0.5
    target_present = (
        present[:, : p.n_targets * p.guides_per_target]
        .reshape(p.n_cells, p.n_targets, p.guides_per_target)
        .any(axis=2)
    )
    return _Cells(
        batch=batch,
        load=load,
        present=present,
        n_targeting=n_targeting,
        n_assigned=present.sum(axis=1),
        burden_threshold=burden_threshold,
        f_burden=_burden_response(n_targeting, p.burden_shape, burden_threshold),
        target_present=target_present,
    )


# ---- responses: counts, programs, guide UMIs -----------------------------------------------------


def _simulate_counts(rng_library, rng_counts, p: _Params, design: _Design, cells: _Cells):
    """Draw the log library sizes (library stream) and the NB gene counts (counts stream)."""
    log_lib = rng_library.normal(np.log(p.mean_umis) + design.lib_batch[cells.batch], _LIBRARY_SD)
    # composition: batch and burden move genes relative to each other, not the library size
    log_comp = (
        design.log_pi[None, :]
        + design.gene_batch[cells.batch]
        + np.outer(cells.f_burden, design.gene_burden)
    )
    log_comp -= np.log(np.exp(log_comp).sum(axis=1, keepdims=True))
    log_mu = log_lib[:, None] + log_comp
    if p.n_targets:
        log_mu[:, : p.n_targets] += (
            np.log(2.0) * cells.target_present * design.target_effect[None, :]
        )
    counts = _nb(rng_counts, np.exp(log_mu), design.theta[None, :]).astype(np.float32)
    return log_lib, counts


def _simulate_programs(rng, p: _Params, design: _Design, cells: _Cells, log_lib) -> np.ndarray:
    """Draw the program usages (programs stream): softmax of batch, library, burden, effects."""
    z_lib = (log_lib - log_lib.mean()) / max(log_lib.std(), 1e-12)
    logit = (
        design.prog_base[None, :]
        + design.prog_batch[cells.batch]
        + np.outer(z_lib, design.prog_lib)
        + np.outer(cells.f_burden, design.prog_burden)
        + rng.normal(0.0, 0.5, size=(p.n_cells, p.n_programs))
    )
    effect_targets = design.effect_targets
    prog_shift = np.zeros((p.n_targets, p.n_programs))
    prog_shift[effect_targets, design.target_program[effect_targets]] = (
        np.log(2.0) * design.target_effect[effect_targets]
    )
    if p.n_targets:
        logit += cells.target_present.astype(np.float64) @ prog_shift
    logit -= logit.max(axis=1, keepdims=True)
    usage = np.exp(logit)
    usage /= usage.sum(axis=1, keepdims=True)
    return usage


def _simulate_guide_umis(rng, present: np.ndarray) -> np.ndarray:
    """Draw the guide UMIs (gRNA stream): >= 5 for carried guides, a little ambient noise else."""
    assigned_umis = _ASSIGNMENT_THRESHOLD + _nb(rng, np.full(present.shape, _GUIDE_UMI_MEAN), 2.0)
    ambient = (rng.random(present.shape) < _AMBIENT_RATE) * rng.integers(
        1, _ASSIGNMENT_THRESHOLD, size=present.shape
    )
    return np.where(present, assigned_umis, ambient).astype(np.float32)


# ---- truth and pairs -----------------------------------------------------------------------------


def _gene_pairs(rng, p: _Params, names: _Names, design: _Design):
    """Gene truth, discovery pairs (own gene and 5 others, design stream) and positive controls."""
    effect_targets = design.effect_targets
    eff_names = names.targets[effect_targets]
    truth = pd.DataFrame(
        {
            "grna_target": eff_names,
            "response_id": eff_names,
            "effect": design.target_effect[effect_targets],
            "response_kind": "gene",
        }
    )
    discovery = []
    others = np.arange(p.n_targets, p.n_genes) if p.n_genes > p.n_targets else np.arange(p.n_genes)
    for t in range(p.n_targets):
        pool = others[others != t]
        k = min(_N_OTHER_DISCOVERY_GENES, pool.size)
        genes = np.concatenate([[t], np.sort(rng.choice(pool, size=k, replace=False))])
        discovery.append(
            pd.DataFrame(
                {
                    "response_id": names.gene_names[genes],
                    "grna_target": names.targets[t],
                    "response_kind": "gene",
                }
            )
        )
    positive = pd.DataFrame(
        {"response_id": eff_names, "grna_target": eff_names, "response_kind": "gene"}
    )
    return truth, discovery, positive


def _program_pairs(p: _Params, names: _Names, design: _Design):
    """Program truth (centred log-ratio shifts), discovery pairs (all) and positive controls."""
    effect_targets = design.effect_targets
    eff_names = names.targets[effect_targets]
    clr_factor = 1.0 - 1.0 / p.n_programs
    prog_of = names.program_names[design.target_program[effect_targets]] if eff_names.size else []
    truth = pd.DataFrame(
        {
            "grna_target": eff_names,
            "response_id": prog_of,
            "effect": clr_factor * np.log(2.0) * design.target_effect[effect_targets],
            "response_kind": "program",
        }
    )
    discovery = pd.DataFrame(
        {
            "response_id": np.tile(names.program_names, p.n_targets),
            "grna_target": np.repeat(names.targets, p.n_programs),
            "response_kind": "program",
        }
    )
    positive = pd.DataFrame(
        {"response_id": prog_of, "grna_target": eff_names, "response_kind": "program"}
    )
    return truth, discovery, positive


def _pairs_frame(parts: list, columns: list) -> pd.DataFrame:
    """Concatenate table parts into one frame with ``columns``, every column but effect as str."""
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    frame = frame[columns]
    for col in columns:
        if col != "effect":
            frame[col] = frame[col].astype(str)
    return frame.reset_index(drop=True)


def _pair_tables(rng, p: _Params, names: _Names, design: _Design):
    """Build the true_effects, discovery_pairs and positive_control_pairs tables."""
    truth, discovery, positive = [], [], []
    if p.with_counts:
        gene_truth, gene_discovery, gene_positive = _gene_pairs(rng, p, names, design)
        truth.append(gene_truth)
        discovery.extend(gene_discovery)
        positive.append(gene_positive)
    if p.with_programs:
        prog_truth, prog_discovery, prog_positive = _program_pairs(p, names, design)
        truth.append(prog_truth)
        discovery.append(prog_discovery)
        if not p.with_counts:
            positive.append(prog_positive)
    true_effects = _pairs_frame(truth, ["grna_target", "response_id", "effect", "response_kind"])
    true_effects["effect"] = true_effects["effect"].astype(np.float64)
    pair_cols = ["response_id", "grna_target", "response_kind"]
    return true_effects, _pairs_frame(discovery, pair_cols), _pairs_frame(positive, pair_cols)


# ---- covariates and assembly ---------------------------------------------------------------------


def _covariates(cells: _Cells, counts: np.ndarray, batch_cat, cell_names) -> pd.DataFrame:
    """The ``obsm["covar"]`` table: batch, library-size and burden covariates (and log1p)."""
    n_umis = counts.sum(axis=1).astype(np.int64)
    n_nonzero = np.count_nonzero(counts, axis=1).astype(np.int64)
    return pd.DataFrame(
        {
            "batch": batch_cat,
            "response_n_umis": n_umis,
            "response_n_nonzero": n_nonzero,
            "log1p_response_n_umis": np.log1p(n_umis),
            "log1p_response_n_nonzero": np.log1p(n_nonzero),
            "non_ntc_guides_per_cell": cells.n_targeting.astype(np.int64),
            "grna_n_nonzero_assign": cells.n_assigned.astype(np.int64),
            "log1p_non_ntc_guides_per_cell": np.log1p(cells.n_targeting),
            "log1p_grna_n_nonzero_assign": np.log1p(cells.n_assigned),
        },
        index=cell_names,
    )


def _make_anndata(
    p: _Params, names: _Names, design: _Design, cells: _Cells, counts, usage, grna
) -> ad.AnnData:
    """Assemble X, obs, var and obsm: stored responses, covariates, assignment, guide UMIs."""
    batch_cat = pd.Categorical.from_codes(cells.batch, categories=names.batch_labels)
    obs = pd.DataFrame({"batch": batch_cat, "guide_load": cells.load}, index=names.cell_names)
    var = pd.DataFrame(
        {
            "is_target": np.arange(p.n_genes) < p.n_targets,
            "dispersion": design.theta,
            "burden_loading": design.gene_burden,
        },
        index=pd.Index(names.gene_names.astype(str)),
    )
    if p.with_counts:
        adata = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)
    else:
        adata = ad.AnnData(obs=obs)
    adata.obsm["covar"] = _covariates(cells, counts, batch_cat, names.cell_names)
    if p.with_programs:
        adata.obsm["cnmf_usage"] = pd.DataFrame(
            usage, index=names.cell_names, columns=pd.Index(names.program_names.astype(str))
        )
    adata.obsm["guide_assignment"] = sp.csr_matrix(cells.present.astype(np.int32))
    adata.obsm["grna_counts"] = sp.csr_matrix(grna)
    return adata


def _store_uns(adata, p: _Params, names: _Names, tables, burden_threshold: float) -> None:
    """Store the guide and program names, the truth and pairs tables and the parameters in uns."""
    true_effects, discovery_pairs, positive_control_pairs = tables
    adata.uns["guide_names"] = list(names.guide_names)
    adata.uns["guide2gene"] = dict(zip(names.guide_names, names.guide_target.tolist(), strict=True))
    # raw gRNA metadata (columns of grna_counts), as stored before assignment (SCEPTRE-style keys)
    adata.uns["grna_ids"] = list(names.guide_names)
    adata.uns["grna_target"] = names.guide_target.tolist()
    adata.uns["program_names"] = list(names.program_names.astype(str))
    adata.uns["true_effects"] = true_effects
    adata.uns["discovery_pairs"] = discovery_pairs
    adata.uns["positive_control_pairs"] = positive_control_pairs
    simulation = asdict(p)
    simulation["burden_threshold"] = float(burden_threshold)
    simulation["ntc_label"] = NTC_LABEL
    adata.uns["simulation"] = simulation


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
    p = _check_params(
        n_cells=n_cells,
        n_genes=n_genes,
        n_programs=n_programs,
        n_targets=n_targets,
        guides_per_target=guides_per_target,
        n_ntc_guides=n_ntc_guides,
        moi=moi,
        n_batches=n_batches,
        effect_size=effect_size,
        frac_targets_with_effect=frac_targets_with_effect,
        burden_effect=burden_effect,
        burden_shape=burden_shape,
        burden_threshold=burden_threshold,
        guide_load_cv=guide_load_cv,
        mean_umis=mean_umis,
        response=response,
    )
    root = seed_sequence(random_state)
    rng_design = as_generator(root, key="design")
    rng_guides = as_generator(root, key="guides")
    rng_library = as_generator(root, key="library")
    rng_counts = as_generator(root, key="counts")
    rng_programs = as_generator(root, key="programs")
    rng_grna = as_generator(root, key="grna_counts")

    names = _make_names(p)
    design = _draw_design(rng_design, p, len(names.guide_names))
    cells = _draw_cells(rng_guides, p, names, design)
    log_lib, counts = _simulate_counts(rng_library, rng_counts, p, design, cells)
    usage = _simulate_programs(rng_programs, p, design, cells, log_lib)
    grna = _simulate_guide_umis(rng_grna, cells.present)
    tables = _pair_tables(rng_design, p, names, design)  # design stream, after the design draws

    adata = _make_anndata(p, names, design, cells, counts, usage, grna)
    _store_uns(adata, p, names, tables, cells.burden_threshold)
    return adata
