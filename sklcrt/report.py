"""A summary of a screen analysis and its output folder (tables, figures, ``summary.json``).

:class:`AnalysisReport` gathers the tables of an analysis (guide assignment, cellwise QC, the
calibration check on non-targeting pairs, the power check on positive controls, the discovery
analysis; each optional) and the parameters they ran with. ``print(report)`` gives a readable
summary, as ``print(sceptre_object)`` does in SCEPTRE, and :meth:`AnalysisReport.write` writes
every table (CSV), every relevant figure (PNG, from :mod:`sklcrt.plotting`) and a
``summary.json`` with the numbers, the parameters and the versions of sklcrt and its main
dependencies into a folder, all or nothing.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from sklcrt._validation import json_safe, ntc_set, pvalue_column
from sklcrt.assignment import DEFAULT_NTC_LABELS

__all__ = ["AnalysisReport", "assignment_summary", "dependency_versions"]

#: Packages whose versions every output records.
VERSIONED_PACKAGES = (
    "sklcrt",
    "numpy",
    "scipy",
    "pandas",
    "scikit-learn",
    "anndata",
    "matplotlib",
    "joblib",
    "h5py",
    "mudata",
)
_GENERATOR = "sklcrt"


def dependency_versions(packages: Iterable[str] = VERSIONED_PACKAGES) -> dict[str, str | None]:
    """Installed versions of sklcrt and its main dependencies (``None`` when not installed).

    Examples
    --------
    >>> from sklcrt.report import dependency_versions
    >>> sorted(dependency_versions(["numpy", "scipy"]))
    ['numpy', 'python', 'scipy']
    """
    import platform

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def assignment_summary(
    grna_counts,
    assignment,
    grna_ids,
    grna_targets,
    *,
    ntc_labels: Iterable[str] = DEFAULT_NTC_LABELS,
) -> pd.DataFrame:
    """One row per gRNA: its target, the cells with its UMIs and the cells assigned it.

    Parameters
    ----------
    grna_counts, assignment : matrices of shape (n_cells, n_grnas)
        gRNA UMI counts and the 0/1 assignment.
    grna_ids, grna_targets : sequence of str
        Ids and targets of the columns.
    ntc_labels : iterable of str
        Targets that mark non-targeting gRNAs.

    Returns
    -------
    pandas.DataFrame
        ``grna_id``, ``grna_target``, ``is_ntc``, ``n_cells_with_umis``, ``n_cells_assigned``,
        ``median_umis_assigned`` (NaN when no cell is assigned).

    Examples
    --------
    >>> import numpy as np
    >>> from sklcrt.report import assignment_summary
    >>> counts = np.array([[7, 0], [1, 9], [0, 2]])
    >>> assignment_summary(counts, counts >= 5, ["g1", "g2"], ["MYC", "NTC"])["n_cells_assigned"]
    0    1
    1    1
    Name: n_cells_assigned, dtype: int64
    """
    counts = sp.csc_matrix(grna_counts)
    assigned = sp.csc_matrix(assignment).astype(bool)
    if counts.shape != assigned.shape:
        raise ValueError(f"grna_counts {counts.shape} and assignment {assigned.shape} differ.")
    ntc = ntc_set(ntc_labels)
    medians = []
    for j in range(counts.shape[1]):
        values = np.asarray(counts[:, j].toarray()).ravel()[assigned[:, j].toarray().ravel()]
        medians.append(float(np.median(values)) if values.size else np.nan)
    targets = [str(t) for t in grna_targets]
    return pd.DataFrame(
        {
            "grna_id": [str(g) for g in grna_ids],
            "grna_target": targets,
            "is_ntc": [t.strip().lower() in ntc for t in targets],
            "n_cells_with_umis": counts.getnnz(axis=0).astype(np.int64),
            "n_cells_assigned": np.asarray(assigned.sum(axis=0)).ravel().astype(np.int64),
            "median_umis_assigned": medians,
        }
    )


def _binomial_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a proportion."""
    tail = (1 - level) / 2
    lower = float(stats.beta.ppf(tail, k, n - k + 1)) if k > 0 else 0.0
    upper = float(stats.beta.ppf(1 - tail, k + 1, n - k)) if k < n else 1.0
    return lower, upper


def _bh_hits(frame: pd.DataFrame, alpha: float) -> int:
    """BH discoveries within each grouping of an NTC ensemble (summed)."""
    p = pd.to_numeric(frame[pvalue_column(frame, "pvalue")], errors="coerce").to_numpy(dtype=float)
    tested = np.isfinite(p)
    groups = frame["ensemble"].to_numpy() if "ensemble" in frame else np.zeros(p.size)
    return int(
        sum(
            np.sum(stats.false_discovery_control(p[tested & (groups == g)], method="bh") <= alpha)
            for g in pd.unique(groups[tested])
        )
    )


def _significant(frame: pd.DataFrame, alpha: float) -> np.ndarray:
    if "significant" in frame.columns:
        return frame["significant"].to_numpy(dtype=bool)
    p = pd.to_numeric(frame[pvalue_column(frame, "pvalue")], errors="coerce").to_numpy(dtype=float)
    out = np.zeros(p.size, dtype=bool)
    tested = np.isfinite(p)
    if tested.any():
        out[tested] = stats.false_discovery_control(p[tested], method="bh") <= alpha
    return out


def _pair_label(row) -> str:
    target = row.get("grna_target", row.get("unit", "?"))
    unit = row.get("unit", target)
    name = target if unit == target else f"{unit} ({target})"
    return f"{name}:{row.get('response', '?')}"


@dataclass
class AnalysisReport:
    """The tables of a screen analysis, its parameters, a printed summary and an output folder.

    Every table is optional: a report holds what the analysis ran. Build it from the tables
    directly or with :meth:`from_adata`, print it, and :meth:`write` it.

    Parameters
    ----------
    screen : dict
        Numbers describing the screen (``n_cells``, ``n_responses``, ``n_grnas``, ``n_targets``,
        ``n_ntc_grnas``...), e.g. from :meth:`from_adata`.
    assignment : pandas.DataFrame, default=None
        Per-gRNA assignment summary (:func:`assignment_summary`).
    qc : pandas.DataFrame, default=None
        The cellwise QC frame: one boolean column per rule (True = removed) and ``pass_qc``.
    calibration : pandas.DataFrame or dict, default=None
        The NTC results (:func:`sklcrt.runners.run_ntc_groups` or ``run_ntc_ensemble``), or
        ``{method: table}`` for several methods.
    power : pandas.DataFrame, default=None
        Positive-control results (:func:`sklcrt.runners.power_check`).
    discovery : pandas.DataFrame, default=None
        Discovery results (:func:`sklcrt.runners.discovery_analysis`).
    params : dict
        Every parameter the analysis ran with (written to ``summary.json``).
    alpha : float, default=0.1
        False discovery rate of the Benjamini-Hochberg counts.
    power_threshold : float, default=1e-6
        The power check counts positive controls with a p-value below it.
    assignment_data : dict, default=None
        What the assignment figure needs: ``grna_counts``, ``assignment``, ``guide_names``,
        ``guide_targets``, ``threshold`` (set by :meth:`from_adata`).
    qc_covariates : pandas.DataFrame, default=None
        Covariates drawn next to the QC removals (e.g. ``obsm["covar"]``).
    qc_bounds : dict, default=None
        ``{covariate: (lower, upper)}`` of the QC rules, for the QC figure.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from sklcrt.report import AnalysisReport
    >>> rng = np.random.default_rng(0)
    >>> ntc = pd.DataFrame({"pvalue": rng.uniform(size=1000), "effect": rng.normal(0, .1, 1000)})
    >>> report = AnalysisReport(calibration=ntc, params={"n_resamples": 499})
    >>> print(report)  # doctest: +NORMALIZE_WHITESPACE
    sklcrt analysis
      calibration (NTC pairs, all null):
        NTC pairs: 1,000 pairs; p < 0.01: 0.0110 (95% CI 0.0055-0.0196; expect 0.01); BH
        discoveries at FDR 0.1: 0
    """

    screen: dict = field(default_factory=dict)
    assignment: pd.DataFrame | None = None
    qc: pd.DataFrame | None = None
    calibration: pd.DataFrame | dict | None = None
    power: pd.DataFrame | None = None
    discovery: pd.DataFrame | None = None
    params: dict = field(default_factory=dict)
    alpha: float = 0.1
    power_threshold: float = 1e-6
    assignment_data: dict | None = field(default=None, repr=False)
    qc_covariates: pd.DataFrame | None = field(default=None, repr=False)
    qc_bounds: dict | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def from_adata(
        cls,
        adata,
        *,
        qc: pd.DataFrame | None = None,
        calibration=None,
        power: pd.DataFrame | None = None,
        discovery: pd.DataFrame | None = None,
        params: Mapping | None = None,
        counts_key: str = "grna_counts",
        assignment_key: str = "guide_assignment",
        covar_key: str = "covar",
        ntc_labels: Iterable[str] = DEFAULT_NTC_LABELS,
        **kwargs,
    ) -> AnalysisReport:
        """A report of an analysis of ``adata``, with the screen's numbers and assignment.

        Parameters
        ----------
        adata : AnnData
            The screen, in the data contract's layout (see :mod:`sklcrt.io`).
        qc, calibration, power, discovery : tables, default=None
            As in :class:`AnalysisReport`.
        params : dict, default=None
            The parameters of the analysis; the assignment's (``uns[assignment_key +
            "_params"]``) are added under ``"assignment"`` when absent.
        counts_key, assignment_key, covar_key : str
            Keys of the gRNA counts, the assignment and the covariates.
        ntc_labels : iterable of str
            Targets that mark non-targeting gRNAs.
        **kwargs
            Other fields of :class:`AnalysisReport` (``alpha``, ``qc_bounds``...).

        Returns
        -------
        AnalysisReport
        """
        ntc = ntc_set(ntc_labels)
        screen = {"n_cells": int(adata.n_obs), "n_responses": int(adata.n_vars)}
        params = dict(params or {})
        assignment = assignment_data = None
        ids = adata.uns.get("grna_ids", adata.uns.get("guide_names"))
        targets = adata.uns.get("grna_target")
        if targets is None and ids is not None and "guide2gene" in adata.uns:
            targets = [adata.uns["guide2gene"].get(str(g), "?") for g in ids]
        if ids is not None and targets is not None:
            targets = [str(t) for t in targets]
            screen["n_grnas"] = len(targets)
            screen["n_targets"] = len({t for t in targets if t.strip().lower() not in ntc})
            screen["n_ntc_grnas"] = sum(t.strip().lower() in ntc for t in targets)
        if counts_key in adata.obsm and assignment_key in adata.obsm and ids is not None:
            counts, assigned = adata.obsm[counts_key], adata.obsm[assignment_key]
            if np.shape(counts) == np.shape(assigned) and targets is not None:
                assignment = assignment_summary(
                    counts, assigned, ids, targets, ntc_labels=ntc_labels
                )
                per_cell = np.asarray((sp.csr_matrix(assigned) != 0).sum(axis=1)).ravel()
                screen["n_cells_with_grna"] = int(np.sum(per_cell > 0))
                screen["mean_grnas_per_cell"] = float(per_cell.mean())
                run = dict(adata.uns.get(f"{assignment_key}_params", {}))
                params.setdefault("assignment", run)
                assignment_data = {
                    "grna_counts": counts,
                    "assignment": assigned,
                    "guide_names": [str(g) for g in ids],
                    "guide_targets": targets,
                    "threshold": run.get("threshold") if run.get("method") == "threshold" else None,
                }
        covar = adata.obsm.get(covar_key)
        if qc is not None and kwargs.get("qc_bounds") and isinstance(covar, pd.DataFrame):
            kwargs.setdefault("qc_covariates", covar)
        return cls(
            screen=screen,
            assignment=assignment,
            qc=qc,
            calibration=calibration,
            power=power,
            discovery=discovery,
            params=params,
            assignment_data=assignment_data,
            **kwargs,
        )

    def _calibration_sets(self) -> dict[str, pd.DataFrame]:
        if self.calibration is None:
            return {}
        if isinstance(self.calibration, pd.DataFrame):
            return {"NTC pairs": self.calibration}
        return {str(k): v for k, v in self.calibration.items()}

    # ------------------------------------------------------------------ numbers
    def to_dict(self) -> dict:
        """The summary's numbers, JSON-ready (what ``summary.json`` holds under ``"summary"``).

        Returns
        -------
        dict
            Keys ``screen``, ``assignment``, ``qc``, ``calibration``, ``power``, ``discovery``
            for the parts the report holds.
        """
        out: dict = {"screen": dict(self.screen)}
        if self.assignment is not None:
            a = self.assignment
            out["assignment"] = {
                "n_grnas": len(a),
                "median_cells_per_grna": float(a["n_cells_assigned"].median()),
                "grnas_without_cells": int((a["n_cells_assigned"] == 0).sum()),
            }
        if self.qc is not None:
            passed = (
                self.qc["pass_qc"].to_numpy(dtype=bool)
                if "pass_qc" in self.qc
                else ~self.qc.select_dtypes(bool).to_numpy().any(axis=1)
            )
            rules = [c for c in self.qc.columns if c != "pass_qc" and self.qc[c].dtype == bool]
            out["qc"] = {
                "n_cells": len(self.qc),
                "n_pass": int(passed.sum()),
                "n_removed": int((~passed).sum()),
                "removed_by_rule": {str(r): int(self.qc[r].sum()) for r in rules},
            }
        if self.calibration is not None:
            cal = {}
            for label, frame in self._calibration_sets().items():
                p = pd.to_numeric(frame[pvalue_column(frame, "pvalue")], errors="coerce").to_numpy(
                    dtype=float
                )
                p = p[np.isfinite(p)]
                n, k = int(p.size), int(np.sum(p < 0.01))
                lo, hi = _binomial_ci(k, n) if n else (np.nan, np.nan)
                cal[label] = {
                    "n_pairs": len(frame),
                    "n_tested": n,
                    "frac_below_0.01": k / n if n else None,
                    "frac_below_0.01_ci95": [lo, hi],
                    "frac_below_0.05": float(np.mean(p < 0.05)) if n else None,
                    "n_bh_discoveries": _bh_hits(frame, self.alpha) if n else 0,
                    "mean_effect": float(np.nanmean(frame["effect"]))
                    if "effect" in frame
                    else None,
                }
            out["calibration"] = cal
        if self.power is not None:
            p = pd.to_numeric(
                self.power[pvalue_column(self.power, "pvalue")], errors="coerce"
            ).to_numpy(dtype=float)
            tested = np.isfinite(p)
            out["power"] = {
                "n_pairs": len(self.power),
                "n_tested": int(tested.sum()),
                "threshold": self.power_threshold,
                "n_below_threshold": int(np.sum(p[tested] < self.power_threshold)),
                "n_significant": int(_significant(self.power, self.alpha).sum()),
                "median_pvalue": float(np.median(p[tested])) if tested.any() else None,
            }
        if self.discovery is not None:
            d = self.discovery
            sig = _significant(d, self.alpha)
            p = pd.to_numeric(d[pvalue_column(d, "pvalue")], errors="coerce").to_numpy(dtype=float)
            top = d[sig].assign(_p=p[sig]).sort_values("_p", kind="stable").head(5)
            out["discovery"] = {
                "n_pairs": len(d),
                "n_tested": int(np.isfinite(p).sum()),
                "n_significant": int(sig.sum()),
                "alpha": self.alpha,
                "top": [
                    {
                        "pair": _pair_label(row),
                        "effect": float(row["effect"]) if "effect" in row else None,
                        "pvalue": float(row["_p"]),
                    }
                    for _, row in top.iterrows()
                ],
            }
        return json_safe(out)

    # ------------------------------------------------------------------ text
    def summary(self) -> str:
        """The readable summary that ``print(report)`` shows.

        Returns
        -------
        str
        """
        d = self.to_dict()
        s = d["screen"]
        lines = ["sklcrt analysis"]
        if s.get("n_cells") is not None:
            head = f"  screen: {s['n_cells']:,} cells x {s.get('n_responses', 0):,} responses"
            if "n_grnas" in s:
                head += (
                    f"; {s['n_grnas']} gRNAs on {s['n_targets']} targets and "
                    f"{s['n_ntc_grnas']} non-targeting"
                )
            lines.append(head)
        if "assignment" in d:
            run = self.params.get("assignment", {})
            rule = ", ".join(f"{k}={v}" for k, v in run.items() if k != "counts_key") or "given"
            text = f"  guide assignment ({rule}):"
            if "n_cells_with_grna" in s:
                frac = s["n_cells_with_grna"] / max(s["n_cells"], 1)
                text += (
                    f" {s['n_cells_with_grna']:,} cells ({frac:.1%}) carry a gRNA, "
                    f"{s['mean_grnas_per_cell']:.2f} per cell on average;"
                )
            a = d["assignment"]
            text += f" median {a['median_cells_per_grna']:g} cells per gRNA"
            if a["grnas_without_cells"]:
                text += f", {a['grnas_without_cells']} gRNA(s) in no cell"
            lines.append(text)
        if "qc" in d:
            q = d["qc"]
            rules = ", ".join(f"{r} {n:,}" for r, n in q["removed_by_rule"].items())
            lines.append(
                f"  cellwise QC: {q['n_pass']:,} of {q['n_cells']:,} cells pass "
                f"({q['n_removed']:,} removed" + (f": {rules})" if rules else ")")
            )
        if "calibration" in d:
            lines.append("  calibration (NTC pairs, all null):")
            for label, c in d["calibration"].items():
                if not c["n_tested"]:
                    lines.append(f"    {label}: no tested pair")
                    continue
                lo, hi = c["frac_below_0.01_ci95"]
                lines.append(
                    f"    {label}: {c['n_tested']:,} pairs; p < 0.01: {c['frac_below_0.01']:.4f} "
                    f"(95% CI {lo:.4f}-{hi:.4f}; expect 0.01); BH discoveries at FDR "
                    f"{self.alpha:g}: {c['n_bh_discoveries']}"
                )
        if "power" in d:
            w = d["power"]
            lines.append(
                f"  power (positive controls): {w['n_tested']} of {w['n_pairs']} tested; "
                f"{w['n_below_threshold']} with p < {w['threshold']:g}; {w['n_significant']} "
                f"found at FDR {self.alpha:g}"
            )
        if "discovery" in d:
            x = d["discovery"]
            lines.append(
                f"  discovery: {x['n_tested']:,} of {x['n_pairs']:,} pairs tested; "
                f"{x['n_significant']:,} discoveries at FDR {self.alpha:g}"
            )
            for t in x["top"]:
                effect = "" if t["effect"] is None else f"log2 fold change {t['effect']:+.2f}, "
                lines.append(f"    {t['pair']}: {effect}p = {t['pvalue']:.2g}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    # ------------------------------------------------------------------ figures
    def figures(self) -> dict:
        """Every relevant figure, ``{file stem: matplotlib Figure}`` (close them when done).

        Returns
        -------
        dict
            ``assignment``, ``qc``, ``calibration``, ``power``, ``volcano`` for the parts the
            report holds.
        """
        from sklcrt import plotting

        figs = {}
        if self.assignment_data is not None:
            data = self.assignment_data
            figs["assignment"] = plotting.assignment_figure(
                data["grna_counts"],
                data.get("assignment"),
                data.get("threshold"),
                guide_names=data.get("guide_names"),
                guide_targets=data.get("guide_targets"),
            )
        if self.qc is not None:
            figs["qc"] = plotting.qc_figure(self.qc, self.qc_covariates, self.qc_bounds)
        sets = self._calibration_sets()
        if sets:
            figs["calibration"] = plotting.calibration_figure(
                sets if len(sets) > 1 else next(iter(sets.values())), alpha=self.alpha
            )
        if self.power is not None:
            ntc = next(iter(sets.values())) if sets else None
            ax = plotting.power_plot(
                self.power,
                ntc,
                threshold=self.power_threshold,
                label_cols=("grna_target", "response"),
            )
            ax.set_title("Power check: positive controls")
            figs["power"] = ax.figure
        if self.discovery is not None:
            tested = pd.to_numeric(
                self.discovery[pvalue_column(self.discovery, "pvalue")], errors="coerce"
            ).notna()
            if tested.any():
                import matplotlib.pyplot as plt

                fig, ax = plt.subplots(figsize=(7.5, 5.5))
                plotting.volcano_plot(
                    self.discovery, ax=ax, alpha=self.alpha, label_cols=("grna_target", "response")
                )
                ax.set_title("Discovery analysis")
                figs["volcano"] = fig
        return figs

    # ------------------------------------------------------------------ output folder
    def _tables(self) -> dict[str, pd.DataFrame]:
        tables = {}
        if self.assignment is not None:
            tables["assignment"] = self.assignment
        if self.qc is not None:
            tables["qc"] = self.qc
        sets = self._calibration_sets()
        if sets:
            if isinstance(self.calibration, pd.DataFrame):
                tables["calibration"] = self.calibration
            else:
                tables["calibration"] = pd.concat(
                    [f.assign(method=label) for label, f in sets.items()], ignore_index=True
                )
        if self.power is not None:
            tables["power"] = self.power
        if self.discovery is not None:
            tables["discovery"] = self.discovery
        return tables

    def write(
        self,
        out_dir,
        *,
        overwrite: bool = False,
        figures: bool = True,
        dpi: int = 150,
        extra: Mapping | None = None,
        extra_text: str | None = None,
    ):
        """Write the tables, the figures and ``summary.json`` into ``out_dir``, all or nothing.

        Everything is written into a temporary folder next to ``out_dir`` and moved into place
        at the end, so an error leaves ``out_dir`` as it was. An existing ``out_dir`` is replaced
        when it is empty or an earlier sklcrt output (its ``summary.json`` says so); any other
        folder is kept unless ``overwrite=True``.

        Parameters
        ----------
        out_dir : str or Path
            The output folder.
        overwrite : bool, default=False
            Replace ``out_dir`` even when it is not an sklcrt output.
        figures : bool, default=True
            Draw and write the figures (PNG).
        dpi : int, default=150
            Resolution of the figures.
        extra : dict, default=None
            More entries of ``summary.json`` (e.g. the command line's ``command``, ``config`` and
            ``table``); the report's own keys win.
        extra_text : str, default=None
            Appended to ``summary.txt``.

        Returns
        -------
        Path
            ``out_dir``, holding ``<table>.csv``, ``<figure>.png``, ``summary.txt`` (the printed
            summary) and ``summary.json`` (``generator``, ``created``, ``versions``, ``params``,
            ``alpha``, ``summary``, ``files``).

        Raises
        ------
        FileExistsError
            When ``out_dir`` exists, is not empty, is not an sklcrt output and ``overwrite`` is
            False, or is a file.
        """
        out = Path(out_dir)
        if out.exists():
            if not out.is_dir():
                raise FileExistsError(f"{out} exists and is not a folder.")
            if any(out.iterdir()) and not overwrite and not _is_sklcrt_output(out):
                raise FileExistsError(
                    f"{out} exists and is not an sklcrt output folder (no summary.json written "
                    "by sklcrt); choose another folder or pass overwrite=True."
                )
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            self._write_into(tmp, figures=figures, dpi=dpi, extra=extra, extra_text=extra_text)
            old = None
            if out.exists():
                old = out.with_name(f".{out.name}.{os.getpid()}.old")
                out.rename(old)
            tmp.rename(out)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return out

    def _write_into(
        self, folder: Path, *, figures: bool, dpi: int, extra=None, extra_text=None
    ) -> list[str]:
        files = []
        for name, table in self._tables().items():
            table.to_csv(folder / f"{name}.csv", index=name == "qc")
            files.append(f"{name}.csv")
        if figures:
            import matplotlib.pyplot as plt

            for name, fig in self.figures().items():
                try:
                    fig.savefig(folder / f"{name}.png", dpi=dpi, bbox_inches="tight")
                finally:
                    plt.close(fig)
                files.append(f"{name}.png")
        text = self.summary() + "\n" + (f"\n{extra_text.rstrip()}\n" if extra_text else "")
        (folder / "summary.txt").write_text(text)
        files += ["summary.txt", "summary.json"]
        payload = {
            **json_safe(dict(extra or {})),
            "generator": _GENERATOR,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": dependency_versions(),
            "params": json_safe(self.params),
            "alpha": self.alpha,
            "power_threshold": self.power_threshold,
            "summary": self.to_dict(),
            "files": files,
        }
        with open(folder / "summary.json", "w") as fh:
            json.dump(payload, fh, indent=2, allow_nan=True)
        return files


def _is_sklcrt_output(folder: Path) -> bool:
    path = folder / "summary.json"
    if not path.is_file():
        return False
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict):
        return False
    # ours, or the summary the command line wrote before it used this class
    return data.get("generator") == _GENERATOR or {"command", "screen"} <= set(data)
