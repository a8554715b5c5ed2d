"""Model inputs from an AnnData screen: responses, encoded covariates, guides and units.

:func:`prepare_crt_inputs` reads the data contract (``../shared/DESIGN.md``) once and returns plain
numpy/scipy/pandas objects, so that nothing below the runners ever sees AnnData.
:func:`unit_treatment` turns a unit (a list of guides) into the binary treatment vector ``x``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sklcrt._validation import check_aligned, covariate_frame, missing_key_error, ntc_set
from sklcrt.assignment import DEFAULT_NTC_LABELS, read_guide2gene, read_guide_matrix
from sklcrt.preprocessing import clr_transform, encode_covariates

__all__ = ["RESPONSE_KINDS", "SCEPTRE_HIGH_MOI_COVARIATES", "prepare_crt_inputs", "unit_treatment"]

RESPONSE_KINDS = ("counts", "programs")

#: SCEPTRE's default high-MOI formula, ``log(response_n_nonzero) + log(response_n_umis) +
#: log(grna_n_nonzero + 1) + log(grna_n_umis + 1) + batch``, as ``covariates`` of
#: :func:`prepare_crt_inputs` (columns of the data contract's ``obsm["covar"]``).
SCEPTRE_HIGH_MOI_COVARIATES = (
    "batch",
    "log1p_response_n_umis",
    "log1p_response_n_nonzero",
    "log1p_grna_n_umis",
    "log1p_grna_n_nonzero",
)


def _in_memory(matrix, where: str):
    """The matrix itself, or read into memory when it is on disk or lazy (a backed AnnData's
    ``X``: an h5py dataset or anndata's backed sparse dataset; a zarr or dask array)."""
    if sp.issparse(matrix) or isinstance(matrix, np.ndarray):
        return matrix
    kind = type(matrix).__name__
    try:
        if hasattr(matrix, "to_memory"):  # anndata's backed CSR/CSC dataset
            matrix = matrix.to_memory()
        elif hasattr(matrix, "compute"):  # dask
            matrix = matrix.compute()
        if not sp.issparse(matrix):
            matrix = np.asarray(matrix)  # h5py dataset, zarr array
    except Exception as err:  # noqa: BLE001 - whatever the storage raises, say what to do
        raise ValueError(
            f"{where} is a {kind} that could not be read into memory ({err}); load the data "
            "first (e.g. adata = adata.to_memory() for a backed AnnData)."
        ) from err
    if not sp.issparse(matrix) and matrix.dtype.kind == "O":
        raise ValueError(
            f"{where} is a {kind}, not a numeric array or sparse matrix; load the data into "
            "memory first (e.g. adata = adata.to_memory() for a backed AnnData)."
        )
    return matrix


def _count_responses(adata, layer):
    if layer is None:
        matrix, where = adata.X, "adata.X"
        if matrix is None:
            raise ValueError("adata.X is empty; pass layer=... naming a layer with the counts.")
    else:
        if layer not in adata.layers:
            raise missing_key_error(
                "layers", layer, adata.layers.keys(), "Pass layer=None to use adata.X."
            )
        matrix, where = adata.layers[layer], f"adata.layers[{layer!r}]"
    matrix = _in_memory(matrix, where)
    if sp.issparse(matrix):
        Y = sp.csr_matrix(matrix)  # no copy when already CSR
        values = Y.data
    else:
        Y = np.asarray(matrix)
        values = Y
    if Y.dtype.kind not in "biuf":
        raise ValueError(f"{where} must be numeric counts, got dtype {Y.dtype}.")
    if values.size:
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{where} has NaN or infinite value(s); counts must be finite.")
        if values.min() < 0:
            raise ValueError(
                f"{where} has negative value(s) (minimum {values.min():g}); the count model needs "
                "raw UMI counts >= 0. Pass layer=... naming the raw counts."
            )
        if Y.dtype.kind == "f" and not np.all(values == np.round(values)):
            warnings.warn(
                f"{where} has non-integer values; the count model expects raw UMI counts "
                "(normalised or log-transformed data would be mis-modelled).",
                UserWarning,
                stacklevel=3,
            )
    return Y, np.asarray(adata.var_names.astype(str), dtype=object)


def _program_responses(adata, usage_key, floor_quantile):
    if usage_key not in adata.obsm:
        raise missing_key_error(
            "obsm", usage_key, adata.obsm.keys(), "Pass usage_key=... or response='counts'."
        )
    usage = adata.obsm[usage_key]
    what = f"adata.obsm[{usage_key!r}]"
    if isinstance(usage, pd.DataFrame):
        check_aligned(usage.index, adata.obs_names, what)
        names = np.asarray(usage.columns.astype(str), dtype=object)
    else:
        shape = np.shape(usage)
        if len(shape) != 2:
            raise ValueError(f"{what} must be 2-D (cells x programs), got shape {shape}.")
        names = np.asarray([f"program_{k}" for k in range(shape[1])], dtype=object)
    if np.shape(usage)[0] != adata.n_obs:
        raise ValueError(f"{what} has {np.shape(usage)[0]} rows but adata has {adata.n_obs} cells.")
    try:
        Y = clr_transform(usage, floor_quantile=floor_quantile)
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from err
    return Y, names


def prepare_crt_inputs(
    adata,
    *,
    response: str = "counts",
    layer: str | None = None,
    usage_key: str = "cnmf_usage",
    clr_floor_quantile: float = 0.01,
    covar_key: str = "covar",
    covariates: Sequence[str] | None = None,
    batch_key: str | None = "batch",
    guide_key: str = "guide_assignment",
    guide_names_key: str = "guide_names",
    guide2gene_key: str = "guide2gene",
    ntc_labels: Iterable[str] = DEFAULT_NTC_LABELS,
) -> dict:
    """Read a screen's responses, covariates and guides into model inputs.

    Parameters
    ----------
    adata : AnnData
        The screen, following the data contract (not modified).
    response : {"counts", "programs"}, default="counts"
        ``"counts"``: raw UMI counts from ``adata.X`` or ``adata.layers[layer]`` (kept sparse CSR
        when sparse; checked finite and non-negative; read into memory from a backed AnnData,
        ``anndata.read_h5ad(path, backed="r")``). ``"programs"``: program usages from
        ``adata.obsm[usage_key]`` (DataFrame or array), CLR-transformed with
        :func:`sklcrt.preprocessing.clr_transform`.
    layer : str, default=None
        Layer with the counts; ``None`` uses ``adata.X``. Only with ``response="counts"``.
    usage_key : str, default="cnmf_usage"
        ``adata.obsm`` key of the usages for ``response="programs"``.
    clr_floor_quantile : float, default=0.01
        ``floor_quantile`` of the CLR transform for ``response="programs"``.
    covar_key : str, default="covar"
        ``adata.obsm`` key of the raw covariate DataFrame, indexed by ``adata.obs_names``.
    covariates : sequence of str, default=None
        Columns of the covariate frame to encode into ``C`` (see
        :func:`sklcrt.preprocessing.encode_covariates`); ``None`` encodes every column.
    batch_key : str or None, default="batch"
        Column of the covariate frame with the raw batch labels; ``batch_raw`` is ``None`` when the
        column is absent or ``batch_key`` is ``None``.
    guide_key : str, default="guide_assignment"
        ``adata.obsm`` key of the 0/1 guide matrix (sparse, array or DataFrame).
    guide_names_key : str, default="guide_names"
        ``adata.uns`` key of the guide names, used when the guide matrix has no column names.
    guide2gene_key : str, default="guide2gene"
        ``adata.uns`` key of the dict guide -> target.
    ntc_labels : iterable of str, default=DEFAULT_NTC_LABELS
        Targets marking non-targeting guides (case-insensitive).

    Returns
    -------
    inputs : dict
        ``"Y"``: responses (n_cells, n_responses), CSR (or dense when given dense) for counts,
        float64 CLR values for programs; ``"response_names"``: object ndarray;
        ``"response_kind"``: ``"counts"`` or ``"programs"``;
        ``"C"``: encoded covariates (n_cells, p), intercept first; ``"C_names"``: list of str;
        ``"covar_df_raw"``: a copy of the whole raw covariate frame (before encoding; burden columns
        are read from it); ``"batch_raw"``: ``covar_df_raw[batch_key].to_numpy()`` or ``None``;
        ``"guides"``: CSR int8 (n_cells, n_guides) 0/1; ``"guide_names"``: object ndarray;
        ``"guide2gene"``: dict guide -> target; ``"units"``: dict target -> list of its guides, for
        targeting targets (sorted by target, guides in matrix order); ``"ntc_guides"``: list of the
        non-targeting guides; ``"cell_names"``: object ndarray of ``adata.obs_names``.

    Raises
    ------
    ValueError
        For a missing key (listing the keys that exist), a covariate frame not indexed by
        ``adata.obs_names`` (saying whether rows are missing or reordered), shapes that disagree,
        negative or non-finite counts, or guide matrices that are not 0/1.

    See Also
    --------
    sklcrt.assignment.assign_guides : make the guide matrix from gRNA UMI counts.
    sklcrt.assignment.add_burden_covariates : add burden columns to the covariate frame.
    unit_treatment : the treatment vector of a unit.
    """
    if response not in RESPONSE_KINDS:
        raise ValueError(f"response must be one of {list(RESPONSE_KINDS)}, got {response!r}.")
    if response == "programs" and layer is not None:
        raise ValueError(
            "layer is only used with response='counts'; program usages are read from "
            f"adata.obsm[{usage_key!r}]. Pass layer=None."
        )
    if response == "counts":
        Y, response_names = _count_responses(adata, layer)
    else:
        Y, response_names = _program_responses(adata, usage_key, clr_floor_quantile)

    if covar_key not in adata.obsm:
        raise missing_key_error(
            "obsm",
            covar_key,
            adata.obsm.keys(),
            "Store the raw covariates as a DataFrame indexed by adata.obs_names.",
        )
    covar_df_raw = covariate_frame(adata, covar_key).copy()
    C, C_names = encode_covariates(covar_df_raw, columns=covariates)
    batch_raw = None
    if batch_key is not None and batch_key in covar_df_raw.columns:
        batch_raw = covar_df_raw[batch_key].to_numpy()

    guides, guide_names = read_guide_matrix(
        adata, guide_key=guide_key, guide_names_key=guide_names_key
    )
    guide2gene = read_guide2gene(adata, guide_names, guide2gene_key=guide2gene_key)
    ntc = ntc_set(ntc_labels)
    ntc_guides: list[str] = []
    by_target: dict[str, list[str]] = {}
    for g in guide_names:
        target = guide2gene[g]
        if target.strip().lower() in ntc:
            ntc_guides.append(g)
        else:
            by_target.setdefault(target, []).append(g)
    units = {t: by_target[t] for t in sorted(by_target)}

    n = adata.n_obs
    for name, arr in (("Y", Y), ("C", C), ("guides", guides)):
        if arr.shape[0] != n:  # pragma: no cover - guarded by AnnData and the readers
            raise ValueError(f"{name} has {arr.shape[0]} rows but adata has {n} cells.")
    return {
        "Y": Y,
        "response_names": response_names,
        "response_kind": response,
        "C": C,
        "C_names": C_names,
        "covar_df_raw": covar_df_raw,
        "batch_raw": batch_raw,
        "guides": guides,
        "guide_names": guide_names,
        "guide2gene": guide2gene,
        "units": units,
        "ntc_guides": ntc_guides,
        "cell_names": np.asarray(adata.obs_names.astype(str), dtype=object),
    }


def unit_treatment(inputs: dict, guides: str | Iterable[str]) -> np.ndarray:
    """The treatment vector of a unit: whether each cell carries any of ``guides``.

    Parameters
    ----------
    inputs : dict
        The output of :func:`prepare_crt_inputs` (uses ``"guides"`` and ``"guide_names"``).
    guides : str or iterable of str
        Guide names of the unit, e.g. ``inputs["units"]["MYC"]`` or a group of NTC guides.

    Returns
    -------
    x : ndarray of shape (n_cells,), bool

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> from sklcrt.inputs import unit_treatment
    >>> inputs = {"guides": sp.csr_matrix(np.array([[1, 0], [0, 1], [0, 0]])),
    ...           "guide_names": np.array(["g1", "g2"], dtype=object)}
    >>> unit_treatment(inputs, ["g1", "g2"]).tolist()
    [True, True, False]
    """
    if isinstance(guides, str):
        guides = [guides]
    guides = [str(g) for g in guides]
    if not guides:
        raise ValueError("guides is empty; a unit needs at least one guide.")
    names = [str(g) for g in inputs["guide_names"]]
    position = {g: j for j, g in enumerate(names)}
    unknown = [g for g in guides if g not in position]
    if unknown:
        raise ValueError(
            f"unknown guide(s) {unknown[:5]}; inputs['guide_names'] has {len(names)} guides, "
            f"e.g. {names[:5]}."
        )
    matrix = inputs["guides"]
    cols = np.unique([position[g] for g in guides])
    if sp.issparse(matrix):
        if matrix.format == "csc":  # cheap column slices (the runners pass CSC)
            sub = matrix[:, cols]
            x = np.zeros(matrix.shape[0], dtype=bool)
            x[sub.indices[sub.data != 0]] = True
            return x
        sub = sp.csr_matrix(matrix)[:, cols]
        return (sub != 0).getnnz(axis=1) > 0
    return np.any(np.asarray(matrix)[:, cols] != 0, axis=1)
