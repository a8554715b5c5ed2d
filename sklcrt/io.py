"""Reading screens from MuData and Cell Ranger files, and storing results with the data.

:func:`read_mudata` and :func:`read_10x_h5` turn the usual containers of a single-cell CRISPR
screen (a MuData with an RNA and a guide modality; Cell Ranger's ``filtered_feature_bc_matrix.h5``
with "CRISPR Guide Capture" features) into the AnnData layout of the data contract: raw RNA counts
in ``X``, gRNA UMI counts in ``obsm["grna_counts"]`` with ``uns["grna_ids"]``,
``uns["grna_target"]`` and ``uns["grna_target_data_frame"]``, and the count covariates in
``obsm["covar"]`` (``response_n_umis``, ``response_n_nonzero``, ``grna_n_umis``, ``grna_n_nonzero``
and their ``log1p_`` versions, plus ``batch`` where given). Guides are then assigned with
:func:`sklcrt.assignment.assign_guides`.

:func:`store_results` writes a results table and the parameters it ran with into
``data.uns[key]`` (``{"results": ..., "params": ...}``, scanpy's pattern) in a form that
``write_h5ad`` and ``write_h5mu`` accept, and :func:`load_results` reads it back equal.
:func:`to_mudata` and :func:`write_h5mu` go the other way, from the AnnData layout to a MuData.

``mudata`` is an optional dependency (``pip install mudata``), imported only by the functions that
need it.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from sklcrt._validation import json_safe, ntc_set
from sklcrt.assignment import DEFAULT_NTC_LABELS

__all__ = [
    "GUIDE_MODALITIES",
    "count_covariates",
    "load_results",
    "read_10x_h5",
    "read_mudata",
    "store_results",
    "to_mudata",
    "write_h5mu",
]

#: Guide modality names tried, in order, when ``guide=None``.
GUIDE_MODALITIES = ("guide", "crispr", "grna", "gdo", "guides")
#: Columns of the guide modality's ``var`` tried, in order, for each gRNA's target.
_TARGET_COLUMNS = ("grna_target", "target", "target_gene_name", "target_gene", "gene")
_MUDATA_HINT = "reading and writing MuData needs the mudata package: `pip install mudata`."


def _mudata():
    try:
        import mudata
    except ImportError as exc:
        raise ImportError(_MUDATA_HINT) from exc
    return mudata


# ---------------------------------------------------------------------- the data contract layout
def _count_matrix(matrix, what: str) -> sp.csr_matrix:
    if isinstance(matrix, pd.DataFrame):
        matrix = matrix.to_numpy()
    out = sp.csr_matrix(matrix) if sp.issparse(matrix) else sp.csr_matrix(np.asarray(matrix))
    if out.dtype.kind not in "biuf":
        raise ValueError(f"{what} must be numeric counts, got dtype {out.dtype}.")
    if out.nnz:
        if not np.all(np.isfinite(out.data)):
            raise ValueError(f"{what} has NaN or infinite values; counts must be finite.")
        if out.data.min() < 0:
            raise ValueError(f"{what} has negative values; raw UMI counts are >= 0.")
    return out


def _integer_dtype(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """Integer counts stored as floats become int32 (as the real screens store them)."""
    if matrix.dtype.kind == "f" and np.all(matrix.data == np.round(matrix.data)):
        if not matrix.nnz or matrix.data.max() < np.iinfo(np.int32).max:
            return matrix.astype(np.int32)
    return matrix


def count_covariates(rna_counts, grna_counts, index) -> pd.DataFrame:
    """The count covariates of the data contract, from raw RNA and gRNA UMI counts.

    Parameters
    ----------
    rna_counts, grna_counts : sparse matrix or ndarray, (n_cells, n_genes) and (n_cells, n_grnas)
        Raw UMI counts.
    index : pandas.Index
        Cell names (``obs_names``).

    Returns
    -------
    pandas.DataFrame
        ``response_n_umis``, ``response_n_nonzero`` (genes with >= 1 UMI), ``grna_n_umis``,
        ``grna_n_nonzero`` (gRNAs with >= 1 UMI, not assignments) and their ``log1p_`` versions.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from sklcrt.io import count_covariates
    >>> cov = count_covariates(np.array([[3, 0], [1, 1]]), np.array([[0, 5]]).repeat(2, 0),
    ...                        pd.Index(["c1", "c2"]))
    >>> cov["response_n_umis"].tolist(), cov["grna_n_nonzero"].tolist()
    ([3, 2], [1, 1])
    """
    rna = _count_matrix(rna_counts, "RNA counts")
    grna = _count_matrix(grna_counts, "gRNA counts")
    cov = pd.DataFrame(index=pd.Index(index))
    for prefix, matrix in (("response", rna), ("grna", grna)):
        n_umis = np.asarray(matrix.sum(axis=1)).ravel()
        if matrix.dtype.kind in "biu":
            n_umis = n_umis.astype(np.int64)
        cov[f"{prefix}_n_umis"] = n_umis
        cov[f"{prefix}_n_nonzero"] = matrix.getnnz(axis=1).astype(np.int64)
    for col in list(cov.columns):
        cov[f"log1p_{col}"] = np.log1p(cov[col].to_numpy(dtype=np.float64))
    return cov


def _screen_anndata(
    rna_counts,
    grna_counts,
    *,
    obs: pd.DataFrame,
    var: pd.DataFrame,
    grna_ids,
    grna_targets,
    batch=None,
    ntc_labels: Iterable[str] = DEFAULT_NTC_LABELS,
):
    """An AnnData in the data contract's layout from RNA and gRNA counts of the same cells."""
    import anndata as ad

    rna = _integer_dtype(_count_matrix(rna_counts, "RNA counts"))
    grna = _integer_dtype(_count_matrix(grna_counts, "gRNA counts"))
    if rna.shape[0] != grna.shape[0] or rna.shape[0] != len(obs):
        raise ValueError(
            f"RNA counts ({rna.shape[0]} cells), gRNA counts ({grna.shape[0]}) and obs "
            f"({len(obs)}) must describe the same cells."
        )
    ids = np.asarray([str(g) for g in grna_ids], dtype=object)
    targets = np.asarray([str(t) for t in grna_targets], dtype=object)
    if ids.size != grna.shape[1] or targets.size != ids.size:
        raise ValueError(
            f"{grna.shape[1]} gRNA columns need as many ids ({ids.size}) and targets "
            f"({targets.size})."
        )
    uniq, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        raise ValueError(f"gRNA ids must be unique; duplicated: {uniq[counts > 1][:5].tolist()}.")
    adata = ad.AnnData(X=rna, obs=obs.copy(), var=var.copy())
    adata.obs_names = adata.obs_names.astype(str)
    adata.var_names = adata.var_names.astype(str)
    if not adata.var_names.is_unique:
        adata.var_names_make_unique()
    covar = count_covariates(rna, grna, adata.obs_names)
    if batch is not None:
        covar.insert(0, "batch", pd.Categorical(np.asarray(batch).astype(str)))
    adata.obsm["covar"] = covar
    adata.obsm["grna_counts"] = grna
    adata.uns["grna_ids"] = ids.astype(str)
    adata.uns["grna_target"] = targets.astype(str)
    ntc = ntc_set(ntc_labels)
    adata.uns["grna_target_data_frame"] = pd.DataFrame(
        {
            "grna_id": ids.astype(str),
            "grna_target": targets.astype(str),
            "is_ntc": [t.strip().lower() in ntc for t in targets],
        }
    )
    return adata


def _targets_from(grna_target, ids: np.ndarray, var: pd.DataFrame | None, target_key, where: str):
    """One target per gRNA id: from ``grna_target`` (mapping, Series, DataFrame) or ``var``."""
    if grna_target is not None:
        if isinstance(grna_target, pd.DataFrame):
            if not {"grna_id", "grna_target"} <= set(grna_target.columns):
                raise ValueError(
                    "grna_target as a DataFrame needs columns 'grna_id', 'grna_target'."
                )
            mapping = dict(
                zip(grna_target["grna_id"].astype(str), grna_target["grna_target"], strict=True)
            )
        elif isinstance(grna_target, pd.Series):
            mapping = dict(zip(grna_target.index.astype(str), grna_target, strict=True))
        elif isinstance(grna_target, Mapping):
            mapping = {str(k): v for k, v in grna_target.items()}
        else:
            values = list(grna_target)
            if len(values) != ids.size:
                raise ValueError(f"grna_target has {len(values)} targets for {ids.size} gRNAs.")
            mapping = dict(zip(ids, values, strict=True))
        missing = [g for g in ids if g not in mapping]
        if missing:
            raise ValueError(
                f"{len(missing)} gRNA(s) have no target in grna_target, e.g. {missing[:5]}."
            )
        targets = [mapping[g] for g in ids]
    else:
        columns = [target_key] if target_key is not None else list(_TARGET_COLUMNS)
        found = [c for c in columns if var is not None and c in var.columns]
        if not found:
            have = [] if var is None else list(var.columns)
            raise ValueError(
                f"the gRNA targets were not found: {where} has none of the columns {columns} "
                f"(it has {have}). Pass grna_target={{grna_id: target}} or target_key=...."
            )
        targets = list(var[found[0]].to_numpy())
    bad = [g for g, t in zip(ids, targets, strict=True) if t is None or pd.isna(t) or str(t) == ""]
    if bad:
        raise ValueError(f"{len(bad)} gRNA(s) have an empty target, e.g. {bad[:5]}.")
    return [str(t) for t in targets]


# ---------------------------------------------------------------------- MuData
def read_mudata(
    mdata,
    *,
    rna: str = "rna",
    guide: str | None = None,
    layer: str | None = None,
    guide_layer: str | None = None,
    target_key: str | None = None,
    grna_target=None,
    batch_key: str | None = None,
    ntc_labels: Iterable[str] = DEFAULT_NTC_LABELS,
    results: bool = True,
):
    """A MuData with an RNA and a guide modality as an AnnData in the data contract's layout.

    Parameters
    ----------
    mdata : mudata.MuData, str or Path
        The screen, or the path of an ``.h5mu`` file.
    rna : str, default="rna"
        Modality of the RNA counts (cells x genes).
    guide : str, default=None
        Modality of the gRNA UMI counts (cells x gRNAs); ``None`` takes the first of
        :data:`GUIDE_MODALITIES` (``"guide"``, ``"crispr"``, ``"grna"``, ``"gdo"``...) present.
    layer, guide_layer : str, default=None
        Layers with the raw counts; ``None`` uses each modality's ``X``.
    target_key : str, default=None
        Column of the guide modality's ``var`` with each gRNA's target; ``None`` takes the first
        of ``grna_target``, ``target``, ``target_gene_name``, ``target_gene``, ``gene`` present.
    grna_target : dict, Series or DataFrame, default=None
        The targets instead (``{grna_id: target}`` or SCEPTRE's gRNA target data frame).
    batch_key : str, default=None
        Column of the RNA modality's ``obs`` (or of ``mdata.obs``) with the batch; written as
        ``obsm["covar"]["batch"]``.
    ntc_labels : iterable of str
        Targets that mark non-targeting gRNAs (for ``uns["grna_target_data_frame"]["is_ntc"]``).
    results : bool, default=True
        Copy the results stored in ``mdata.uns`` by :func:`store_results` (and every other
        ``uns`` entry) into the AnnData's ``uns``.

    Returns
    -------
    anndata.AnnData
        The RNA modality's cells, in its order: ``X`` raw RNA counts (CSR), ``obs``/``var`` of the
        RNA modality, ``obsm["grna_counts"]`` (CSR), ``uns["grna_ids"]``, ``uns["grna_target"]``,
        ``uns["grna_target_data_frame"]`` and ``obsm["covar"]``. RNA cells absent from the guide
        modality get no gRNA UMIs (with a warning). The RNA modality's ``layers`` and ``obsm``
        entries are kept; a covariate frame it holds in ``obsm["covar"]`` keeps its columns and
        gains the count covariates it lacks.

    Raises
    ------
    ImportError
        When ``mudata`` is not installed and a path is given.

    See Also
    --------
    to_mudata : The other way round.
    sklcrt.assignment.assign_guides : The next step.

    Examples
    --------
    >>> import anndata as ad, mudata as md, numpy as np, pandas as pd
    >>> from sklcrt.io import read_mudata
    >>> _ = md.set_options(pull_on_update=False)  # mudata 0.3: the coming default
    >>> cells = [f"c{i}" for i in range(3)]
    >>> rna = ad.AnnData(np.array([[3, 0], [1, 1], [0, 4]]), obs=pd.DataFrame(index=cells))
    >>> guide = ad.AnnData(np.array([[7, 0], [0, 6], [1, 0]]), obs=pd.DataFrame(index=cells),
    ...                    var=pd.DataFrame({"target": ["MYC", "non-targeting"]},
    ...                                     index=["g1", "g2"]))
    >>> adata = read_mudata(md.MuData({"rna": rna, "guide": guide}))
    >>> adata.uns["grna_ids"].tolist(), adata.obsm["covar"]["grna_n_umis"].tolist()
    (['g1', 'g2'], [7, 6, 1])
    """
    if isinstance(mdata, (str, Path)):
        mudata = _mudata()
        with mudata.set_options(pull_on_update=False):
            mdata = mudata.read_h5mu(mdata)
    mods = getattr(mdata, "mod", None)
    if mods is None:
        raise TypeError(f"mdata must be a MuData or a path to an .h5mu file, got {type(mdata)}.")
    if rna not in mods:
        raise ValueError(f"modality {rna!r} not found; mdata has modalities {list(mods)}.")
    if guide is None:
        guide = next((m for m in GUIDE_MODALITIES if m in mods), None)
        if guide is None:
            raise ValueError(
                f"no guide modality: mdata has {list(mods)}, none of {list(GUIDE_MODALITIES)}; "
                "pass guide=... naming the gRNA counts."
            )
    elif guide not in mods:
        raise ValueError(f"modality {guide!r} not found; mdata has modalities {list(mods)}.")
    rna_ad, guide_ad = mods[rna], mods[guide]
    rna_counts = _layer(rna_ad, layer, rna)
    grna_counts = _count_matrix(_layer(guide_ad, guide_layer, guide), f"modality {guide!r}")

    cells = rna_ad.obs_names.astype(str)
    position = pd.Index(guide_ad.obs_names.astype(str)).get_indexer(cells)
    missing = position < 0
    if missing.all():
        raise ValueError(f"modalities {rna!r} and {guide!r} share no cell (obs_names).")
    if missing.any():
        warnings.warn(
            f"{int(missing.sum())} of {cells.size} cells of {rna!r} are absent from {guide!r}; "
            "they get no gRNA UMIs.",
            UserWarning,
            stacklevel=2,
        )
    rows = sp.csr_matrix(
        (np.ones(int((~missing).sum())), (np.flatnonzero(~missing), position[~missing])),
        shape=(cells.size, guide_ad.n_obs),
    )
    grna_counts = sp.csr_matrix(rows @ grna_counts).astype(grna_counts.dtype)

    ids = np.asarray(guide_ad.var_names.astype(str), dtype=object)
    targets = _targets_from(grna_target, ids, guide_ad.var, target_key, f"mdata[{guide!r}].var")
    batch = None
    if batch_key is not None:
        if batch_key in rna_ad.obs.columns:
            batch = rna_ad.obs[batch_key].to_numpy()
        elif batch_key in mdata.obs.columns:
            batch = mdata.obs.loc[cells, batch_key].to_numpy()
        elif f"{rna}:{batch_key}" in mdata.obs.columns:
            batch = mdata.obs.loc[cells, f"{rna}:{batch_key}"].to_numpy()
        else:
            raise ValueError(
                f"batch_key={batch_key!r} is neither a column of mdata[{rna!r}].obs nor of "
                "mdata.obs."
            )
    adata = _screen_anndata(
        rna_counts,
        grna_counts,
        obs=rna_ad.obs,
        var=rna_ad.var,
        grna_ids=ids,
        grna_targets=targets,
        batch=batch,
        ntc_labels=ntc_labels,
    )
    for key, value in rna_ad.obsm.items():  # e.g. program usages, an earlier assignment
        if key == "covar" and isinstance(value, pd.DataFrame):
            given = value.reindex(adata.obs_names)
            computed = adata.obsm["covar"]
            extra = [c for c in computed.columns if c not in given.columns]
            adata.obsm["covar"] = pd.concat([given, computed[extra]], axis=1)
        elif key not in adata.obsm:
            adata.obsm[key] = value
    for key, value in rna_ad.layers.items():
        adata.layers[key] = value
    if results:
        for key, value in mdata.uns.items():
            adata.uns.setdefault(key, value)
    return adata


def _layer(adata, layer, name):
    if layer is None:
        if adata.X is None:
            raise ValueError(f"modality {name!r} has no X; pass the layer with the raw counts.")
        return adata.X
    if layer not in adata.layers:
        raise ValueError(
            f"layer {layer!r} not found in modality {name!r} (layers: {list(adata.layers)})."
        )
    return adata.layers[layer]


def to_mudata(adata, *, rna: str = "rna", guide: str = "guide", counts_key: str = "grna_counts"):
    """The data contract's AnnData as a MuData with an RNA and a guide modality.

    The RNA modality keeps ``X``, ``obs``, ``var``, ``layers`` and every ``obsm`` entry but the
    gRNA counts; the guide modality holds the gRNA UMI counts as ``X`` (gRNA ids as ``var_names``,
    targets in ``var["grna_target"]``, ``var["is_ntc"]`` when known) and the 0/1 assignment, when
    there is one, as the layer ``"assignment"``. ``uns`` (results stored with
    :func:`store_results` included) goes to the MuData's ``uns``. :func:`read_mudata` reads it
    back into the same layout.

    Parameters
    ----------
    adata : AnnData
        A screen with ``obsm[counts_key]``, ``uns["grna_ids"]`` and ``uns["grna_target"]``.
    rna, guide : str
        Modality names.
    counts_key : str, default="grna_counts"
        ``adata.obsm`` key of the gRNA UMI counts.

    Returns
    -------
    mudata.MuData

    Examples
    --------
    >>> from sklcrt.datasets import simulate_screen
    >>> from sklcrt.io import to_mudata
    >>> mdata = to_mudata(simulate_screen(n_cells=200, n_genes=10, n_targets=4, n_ntc_guides=4))
    >>> sorted(mdata.mod)
    ['guide', 'rna']
    """
    import anndata as ad

    mudata = _mudata()
    for container, key in (("obsm", counts_key), ("uns", "grna_ids"), ("uns", "grna_target")):
        if key not in getattr(adata, container):
            raise ValueError(f"adata.{container}[{key!r}] not found; to_mudata needs it.")
    grna = _count_matrix(adata.obsm[counts_key], f"adata.obsm[{counts_key!r}]")
    ids = np.asarray(adata.uns["grna_ids"]).astype(str)
    var = pd.DataFrame({"grna_target": np.asarray(adata.uns["grna_target"]).astype(str)}, index=ids)
    frame = adata.uns.get("grna_target_data_frame")
    if isinstance(frame, pd.DataFrame) and "is_ntc" in frame.columns:
        var["is_ntc"] = (
            frame.set_index(frame["grna_id"].astype(str)).loc[ids, "is_ntc"].to_numpy(dtype=bool)
        )
    guide_ad = ad.AnnData(X=grna, obs=pd.DataFrame(index=adata.obs_names.copy()), var=var)
    if "guide_assignment" in adata.obsm:
        assignment = sp.csr_matrix(adata.obsm["guide_assignment"])
        if assignment.shape == grna.shape:
            guide_ad.layers["assignment"] = assignment
    rna_ad = ad.AnnData(
        X=adata.X,
        obs=adata.obs.copy(),
        var=adata.var.copy(),
        layers={k: v for k, v in adata.layers.items()},
        obsm={k: v for k, v in adata.obsm.items() if k != counts_key},
    )
    skip = {"grna_ids", "grna_target", "grna_target_data_frame"}
    with mudata.set_options(pull_on_update=False):  # mudata 0.3 warns of the old default
        mdata = mudata.MuData({rna: rna_ad, guide: guide_ad})
    for key, value in adata.uns.items():
        if key not in skip:
            mdata.uns[key] = value
    return mdata


def write_h5mu(data, path, **kwargs) -> Path:
    """Write a screen (an AnnData in the data contract's layout, or a MuData) as ``.h5mu``.

    Parameters
    ----------
    data : AnnData or mudata.MuData
        An AnnData is converted with :func:`to_mudata` (``kwargs`` are passed to it).
    path : str or Path
        The file to write.

    Returns
    -------
    Path
        ``path``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from sklcrt.datasets import simulate_screen
    >>> from sklcrt.io import read_mudata, write_h5mu
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "screen.h5mu"
    >>> _ = write_h5mu(simulate_screen(n_cells=200, n_genes=10, n_targets=4, n_ntc_guides=4), path)
    >>> read_mudata(path).n_obs
    200
    """
    mudata = _mudata()
    mdata = data if isinstance(data, mudata.MuData) else to_mudata(data, **kwargs)
    path = Path(path)
    with mudata.set_options(pull_on_update=False):
        mdata.write(path)
    return path


# ---------------------------------------------------------------------- Cell Ranger
def _decode(values) -> np.ndarray:
    return np.asarray(
        [v.decode() if isinstance(v, bytes) else str(v) for v in values], dtype=object
    )


def read_10x_h5(
    path,
    *,
    guide_feature_type: str = "CRISPR Guide Capture",
    gene_feature_type: str = "Gene Expression",
    var_names: str = "gene_symbols",
    grna_target=None,
    target_key: str = "target_gene_name",
    batch="gem_group",
    ntc_labels: Iterable[str] = DEFAULT_NTC_LABELS,
):
    """Read Cell Ranger's ``filtered_feature_bc_matrix.h5`` with CRISPR Guide Capture features.

    A thin reader of the Cell Ranger (v3 and later) HDF5 layout: the ``matrix`` group's CSC
    arrays (features x barcodes), ``barcodes`` and ``features`` (``id``, ``name``,
    ``feature_type`` and the feature reference's extra columns such as ``target_gene_name``).

    Parameters
    ----------
    path : str or Path
        The ``.h5`` file.
    guide_feature_type, gene_feature_type : str
        ``feature_type`` values of the gRNA and the gene features.
    var_names : {"gene_symbols", "gene_ids"}, default="gene_symbols"
        Name genes by symbol (made unique) or by Ensembl id; the other is kept in ``var``.
    grna_target : dict, Series or DataFrame, default=None
        Each gRNA's target (``{feature id: target}`` or SCEPTRE's gRNA target data frame); default
        the feature reference's ``target_key`` column.
    target_key : str, default="target_gene_name"
        Feature column with the targets when ``grna_target`` is None (Cell Ranger marks
        non-targeting guides "Non-Targeting").
    batch : "gem_group", array-like or None, default="gem_group"
        ``"gem_group"``: the number after the barcode's dash (``AAAC...-2``), written as
        ``obsm["covar"]["batch"]`` when the file holds several (``cellranger aggr``); or one label
        per barcode; or ``None``.
    ntc_labels : iterable of str
        Targets that mark non-targeting gRNAs.

    Returns
    -------
    anndata.AnnData
        In the layout of :func:`read_mudata`; ``var`` has ``gene_ids``, ``gene_symbols`` and
        ``feature_types``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from sklcrt.io import read_10x_h5
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "filtered_feature_bc_matrix.h5"
    >>> import h5py, numpy as np
    >>> with h5py.File(path, "w") as f:  # 2 cells x (2 genes + 1 gRNA), CSC by barcode
    ...     m = f.create_group("matrix")
    ...     m["data"], m["indices"], m["indptr"] = [5, 9, 2, 7], [0, 2, 1, 2], [0, 2, 4]
    ...     m["shape"], m["barcodes"] = [3, 2], [b"AAAC-1", b"TTTG-1"]
    ...     ft = m.create_group("features")
    ...     ft["id"], ft["name"] = [b"ENSG1", b"ENSG2", b"g1"], [b"MYC", b"GATA1", b"g1"]
    ...     ft["feature_type"] = [b"Gene Expression"] * 2 + [b"CRISPR Guide Capture"]
    ...     ft["target_gene_name"] = [b"", b"", b"MYC"]
    >>> adata = read_10x_h5(path)
    >>> adata.var_names.tolist(), adata.obsm["grna_counts"].toarray().ravel().tolist()
    (['MYC', 'GATA1'], [9, 7])
    """
    import h5py

    if var_names not in ("gene_symbols", "gene_ids"):
        raise ValueError(f"var_names must be 'gene_symbols' or 'gene_ids', got {var_names!r}.")
    with h5py.File(path, "r") as f:
        if "matrix" not in f:
            raise ValueError(
                f"{path} has no 'matrix' group: not a Cell Ranger v3+ feature-barcode matrix "
                f"(groups: {list(f)})."
            )
        m = f["matrix"]
        n_features, n_barcodes = (int(v) for v in m["shape"][:])
        matrix = sp.csr_matrix(
            (m["data"][:], m["indices"][:], m["indptr"][:]), shape=(n_barcodes, n_features)
        )
        barcodes = _decode(m["barcodes"][:])
        feats = m["features"]
        columns = {
            key: _decode(feats[key][:])
            for key in feats
            if isinstance(feats[key], h5py.Dataset) and feats[key].shape == (n_features,)
        }
    for key in ("id", "name", "feature_type"):
        if key not in columns:
            raise ValueError(f"{path}: matrix/features has no {key!r} dataset.")
    features = pd.DataFrame(columns)
    types = features["feature_type"].to_numpy()
    is_gene, is_guide = types == gene_feature_type, types == guide_feature_type
    if not is_guide.any():
        raise ValueError(
            f"{path} has no {guide_feature_type!r} features (feature types: "
            f"{sorted(set(types))}); pass guide_feature_type=...."
        )
    if not is_gene.any():
        raise ValueError(f"{path} has no {gene_feature_type!r} features.")
    genes, guides = features[is_gene], features[is_guide]
    var = pd.DataFrame(
        {
            "gene_ids": genes["id"].to_numpy(),
            "gene_symbols": genes["name"].to_numpy(),
            "feature_types": genes["feature_type"].to_numpy(),
        }
    )
    var.index = pd.Index(var[var_names].astype(str))
    ids = guides["id"].to_numpy().astype(str)
    guide_var = guides.set_index(pd.Index(ids))
    guide_var = guide_var.replace("", np.nan)
    targets = _targets_from(grna_target, ids.astype(object), guide_var, target_key, f"{path}")
    labels = None
    if isinstance(batch, str) and batch == "gem_group":
        groups = [m.group(1) if (m := re.search(r"-(\d+)$", b)) else "1" for b in barcodes]
        if len(set(groups)) > 1:
            labels = np.asarray(groups)
    elif batch is not None:
        labels = np.asarray(batch)
        if labels.shape != (n_barcodes,):
            raise ValueError(f"batch has {labels.size} labels for {n_barcodes} barcodes.")
    return _screen_anndata(
        matrix[:, np.flatnonzero(is_gene)],
        matrix[:, np.flatnonzero(is_guide)],
        obs=pd.DataFrame(index=pd.Index(barcodes.astype(str))),
        var=var,
        grna_ids=ids,
        grna_targets=targets,
        batch=labels,
        ntc_labels=ntc_labels,
    )


# ---------------------------------------------------------------------- results with the data
def _from_stored(value):
    if isinstance(value, Mapping):
        return {k: _from_stored(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [_from_stored(v) for v in value.tolist()]
    if isinstance(value, list):
        return [_from_stored(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _storable_frame(results: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Object columns with missing values as categoricals (h5 strings cannot hold None)."""
    out = results.copy()
    converted = []
    for col in out.columns:
        series = out[col]
        if series.dtype != object:
            continue
        missing = series.isna().to_numpy()
        present = series[~missing]
        if not all(isinstance(v, str) for v in present):
            out[col] = series.map(lambda v: None if v is None or v is pd.NA else str(v))
            present = out[col][~missing]
        if missing.any():
            out[col] = pd.Categorical(out[col], categories=sorted(set(present)))
            converted.append(str(col))
    return out, converted


def store_results(data, key: str, results: pd.DataFrame, params: Mapping | None = None) -> None:
    """Store a results table and its parameters in ``data.uns[key]``, ready for h5ad/h5mu.

    Writes ``data.uns[key] = {"results": table, "params": params}`` (scanpy's
    ``uns[key]["params"]`` pattern). ``write_h5ad``/``write_h5mu`` cannot store None in a text
    column (e.g. ``pvalue_method`` of the pairs that failed QC), so such columns are stored as
    categoricals and listed in ``uns[key]["object_columns"]``; :func:`load_results` restores
    them. Parameters are stored as plain values (tuples as lists, NumPy scalars as numbers,
    other objects as their ``repr``).

    Parameters
    ----------
    data : AnnData or mudata.MuData
        Anything with a ``uns`` mapping.
    key : str
        The key, e.g. ``"sklcrt_discovery"``.
    results : pandas.DataFrame
        The table (kept unchanged; a converted copy is stored).
    params : dict, default=None
        The parameters the table ran with.

    Examples
    --------
    >>> import anndata as ad, numpy as np, pandas as pd
    >>> from sklcrt.io import load_results, store_results
    >>> a = ad.AnnData(np.zeros((2, 1)))
    >>> res = pd.DataFrame({"p_value": [0.01, np.nan], "pvalue_method": ["empirical", None]})
    >>> store_results(a, "sklcrt_discovery", res, {"alpha": 0.1, "n_resamples": (499, 4999)})
    >>> back, params = load_results(a, "sklcrt_discovery")
    >>> back["pvalue_method"].tolist(), params["n_resamples"]
    (['empirical', None], [499, 4999])
    """
    if not isinstance(results, pd.DataFrame):
        raise TypeError(f"results must be a pandas DataFrame, got {type(results).__name__}.")
    if not isinstance(key, str) or not key:
        raise ValueError(f"key must be a non-empty str, got {key!r}.")
    frame, converted = _storable_frame(results)
    entry = {"results": frame, "params": json_safe(dict(params or {}))}
    if converted:
        entry["object_columns"] = converted
    data.uns[key] = entry


def load_results(data, key: str) -> tuple[pd.DataFrame, dict]:
    """The results table and parameters stored by :func:`store_results` (also after a round trip
    through h5ad or h5mu), with text columns holding None again.

    Parameters
    ----------
    data : AnnData or mudata.MuData
        Anything with a ``uns`` mapping.
    key : str
        The key the results were stored under.

    Returns
    -------
    results : pandas.DataFrame
    params : dict

    Examples
    --------
    See :func:`store_results`.
    """
    if key not in data.uns:
        raise KeyError(f"no results under uns[{key!r}]; uns has keys {sorted(data.uns)}.")
    entry = data.uns[key]
    if isinstance(entry, pd.DataFrame):  # a bare table (the runners' key_added before params)
        return entry.copy(), {}
    if not isinstance(entry, Mapping) or "results" not in entry:
        raise ValueError(f"uns[{key!r}] is not a stored result ({{'results', 'params'}}).")
    frame = entry["results"].copy()
    for col in _from_stored(entry.get("object_columns", [])):
        values = frame[col].astype(object)
        frame[col] = values.where(values.notna(), None)
    return frame, _from_stored(dict(entry.get("params", {})))
