"""Checkpoints of a run's finished units: files that say what they hold, checked when read.

A checkpoint directory holds ``config.json`` (the run's fingerprint, and the fingerprints of its
parts: data, input options, test, run options) and one file per finished unit. A unit file is a
text table: one JSON header line (format, unit, run fingerprint, job fingerprint, columns, dtypes,
row count and the SHA-256 of the table) followed by the table as CSV, floats written with 17
significant digits, so the table read back equals the one written bit for bit, dtypes included.
Nothing is unpickled: reading a checkpoint runs no code.

:class:`CheckpointStore` is what :func:`sklcrt.execution.run_units` uses:
:meth:`~CheckpointStore.open` refuses a directory from another run (unless it holds no unit),
:meth:`~CheckpointStore.load` returns a unit's table only when its file is intact and was
written by this run for this unit (else ``None``, with a warning naming the file, and the unit
is recomputed), and :meth:`~CheckpointStore.save` writes a unit's table atomically.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import warnings
from collections.abc import Mapping

import numpy as np
import pandas as pd

from sklcrt._fingerprint import array_fingerprint, content_fingerprint

__all__ = [
    "CheckpointError",
    "CheckpointStore",
    "CheckpointWarning",
    "job_fingerprint",
    "read_table",
    "run_fingerprint",
    "write_table",
]

FORMAT = "sklcrt-unit-checkpoint"
VERSION = 1
CONFIG = "config.json"
_UNIT_PREFIX = "unit_"
_SUFFIX = ".csv"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be trusted (unreadable, corrupt, or from elsewhere)."""


class CheckpointWarning(UserWarning):
    """A checkpoint file was not used (it is recomputed or rewritten); the message names it."""


# ---------------------------------------------------------------------- fingerprints
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _canonical(value):
    """A JSON-able form of a parameter value that does not depend on dict order or addresses."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | float | np.integer | np.floating | np.bool_):
        item = value.item() if isinstance(value, np.generic) else value
        return repr(item) if isinstance(item, float) else item
    if isinstance(value, Mapping):
        return {"dict": sorted([str(k), _canonical(v)] for k, v in value.items())}
    if isinstance(value, list | tuple):
        return [type(value).__name__, [_canonical(v) for v in value]]
    if isinstance(value, set | frozenset):
        return ["set", sorted(map(repr, value))]
    if isinstance(value, np.ndarray):
        return ["ndarray", str(value.dtype), content_fingerprint(value)]
    if hasattr(value, "get_params") and not isinstance(value, type):
        params = value.get_params(deep=False)
        kept = {k: v for k, v in params.items() if not _irrelevant(k)}
        return [_class_name(value), _canonical(kept)]
    return _ADDRESS.sub("", repr(value))


def _irrelevant(name: str) -> bool:
    """Parameters that do not change results (threads, verbosity, the memory budget): not
    fingerprinted, so a run resumes with another ``n_jobs`` or ``memory_budget_mb``."""
    return name.rpartition("__")[2] in ("n_jobs", "verbose", "memory_budget_mb")


def _class_name(obj) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def _digest(obj) -> str:
    text = json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _fingerprint_or_none(obj) -> str | None:
    if obj is None:
        return None
    if isinstance(obj, np.ndarray) or hasattr(obj, "tocsr"):
        return array_fingerprint(obj)
    return content_fingerprint(obj)


def run_fingerprint(
    inputs: dict,
    jobs,
    *,
    template,
    statistic,
    batch,
    burden,
    control_cells,
    random_state,
    min_nonzero,
    extra: Mapping,
) -> dict[str, dict]:
    """The parts of a run that decide its results, each as fingerprints.

    Parameters
    ----------
    inputs : dict
        The run's inputs (:func:`sklcrt.inputs.prepare_crt_inputs`).
    jobs : list of (unit, target, guides, columns)
        The run's units.
    template : CRTTest
        The test; its parameters (``get_params(deep=True)``) except the statistic object.
    statistic : BaseStatistic
        The fitted null model: its class, parameters and the fingerprints of the data it was
        fitted on.
    batch, burden : ndarray or None
        The raw batch labels and burden values the units read.
    control_cells : ndarray of bool or None
        The control group.
    random_state : int
        The run's seed.
    min_nonzero : int
        The QC threshold.
    extra : mapping
        The runner's own options (pairs, targets, responses, grouping...).

    Returns
    -------
    dict
        ``{"data": {...}, "options": {...}, "test": {...}, "run": {...}}``, each a dict of
        name -> fingerprint (str) or canonical value; see :func:`fingerprint_of`.
    """
    data = {
        "responses Y": _fingerprint_or_none(inputs.get("Y")),
        "covariates C": _fingerprint_or_none(inputs["C"]),
        "guides matrix": _fingerprint_or_none(inputs["guides"]),
        "guide names": content_fingerprint(np.asarray(inputs["guide_names"], dtype=object)),
        "response names": content_fingerprint(np.asarray(inputs["response_names"], dtype=object)),
        "batch": _fingerprint_or_none(None if batch is None else np.asarray(batch)),
        "burden": _fingerprint_or_none(None if burden is None else np.asarray(burden)),
        "control cells": _fingerprint_or_none(control_cells),
    }
    options = {
        "response_kind": inputs.get("response_kind"),
        "covariate names": _digest(list(map(str, inputs.get("C_names", [])))),
        "non-targeting guides": _digest(sorted(map(str, inputs.get("ntc_guides", [])))),
        "guide2gene": _digest(sorted((str(k), str(v)) for k, v in inputs["guide2gene"].items()))
        if "guide2gene" in inputs
        else None,
        "units": _digest([[str(u), list(map(str, g))] for u, g in inputs.get("units", {}).items()]),
        "jobs": _digest([job_fingerprint(*job) for job in jobs]),
    }
    params = {
        k: _canonical(v)
        for k, v in template.get_params(deep=True).items()
        if k != "statistic" and not k.startswith("statistic__") and not _irrelevant(k)
    }
    test = {
        "parameters": _digest(params),
        "statistic": _digest(
            [
                _class_name(statistic),
                _canonical(
                    {k: v for k, v in statistic.get_params(deep=True).items() if not _irrelevant(k)}
                ),
            ]
            if hasattr(statistic, "get_params")
            else _canonical(statistic)
        ),
        "statistic fitted on responses": getattr(statistic, "responses_fingerprint_", None),
        "statistic fitted on covariates": getattr(statistic, "covariates_fingerprint_", None),
    }
    run = {
        "random_state": _canonical(random_state),
        "min_nonzero": _canonical(min_nonzero),
        "runner options": _digest(_canonical(dict(extra))),
    }
    return {"data": data, "options": options, "test": test, "run": run}


def fingerprint_of(parts: Mapping) -> str:
    """One fingerprint (32 hex characters) of the parts from :func:`run_fingerprint`."""
    return _digest(parts)


def job_fingerprint(unit, target, guides, columns) -> str:
    """The fingerprint of one job ``(unit, target, guides, columns)``: what its table answers."""
    cols = np.asarray(columns).astype(np.int64).tolist()
    return _digest([str(unit), str(target), [str(g) for g in guides], cols])


# ---------------------------------------------------------------------- one table
def _encode(frame: pd.DataFrame) -> tuple[bytes, list[str], dict[str, str]]:
    """The CSV body of ``frame``, its dtypes and how object columns are encoded."""
    dtypes, encodings = [], {}
    out = frame.copy()
    for name in frame.columns:
        dtype = frame[name].dtype
        if not isinstance(dtype, np.dtype) or dtype.kind not in "biufO":
            raise TypeError(
                f"checkpoint tables hold bool, integer, float and object columns; column "
                f"{name!r} has dtype {dtype}."
            )
        dtypes.append(str(dtype))
        if dtype.kind == "O" and not all(isinstance(v, str) for v in frame[name]):
            encodings[str(name)] = "json"  # e.g. None or NaN among strings
            out[name] = [json.dumps(_canonical_cell(v)) for v in frame[name]]
    body = out.to_csv(index=False, float_format="%.17g", na_rep="", lineterminator="\n")
    return body.encode("utf-8"), dtypes, encodings


def _canonical_cell(value):
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_table(path: str, frame: pd.DataFrame, **meta) -> None:
    """Write ``frame`` (with a RangeIndex) to ``path`` atomically, with ``meta`` in its header.

    Parameters
    ----------
    path : str
        The file; written to ``path + ".tmp"`` first, then moved into place.
    frame : DataFrame
        Columns of dtype bool, integer, float or object (str; other values as JSON).
    **meta
        JSON-able values stored in the header (e.g. ``unit``, ``run``, ``job``).
    """
    body, dtypes, encodings = _encode(frame)
    header = {
        "format": FORMAT,
        "version": VERSION,
        **meta,
        "columns": [str(c) for c in frame.columns],
        "dtypes": dtypes,
        "encodings": encodings,
        "n_rows": len(frame),
        "sha256": hashlib.sha256(body).hexdigest(),
    }
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(json.dumps(header, sort_keys=True).encode("utf-8") + b"\n")
        fh.write(body)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_table(path: str) -> tuple[dict, pd.DataFrame]:
    """Read a table written by :func:`write_table` and check it.

    Parameters
    ----------
    path : str

    Returns
    -------
    meta : dict
        The header.
    frame : DataFrame
        The table, dtypes restored, equal to the one written.

    Raises
    ------
    CheckpointError
        If the file is empty, not a checkpoint, truncated or edited (checksum), or unreadable;
        the message names the file and what is wrong.
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err}).") from err
    if not raw:
        raise CheckpointError(f"{path}: the file is empty.")
    first, newline, body = raw.partition(b"\n")
    try:
        meta = json.loads(first.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not newline:
        raise CheckpointError(f"{path}: not an sklcrt checkpoint file (no valid header line).")
    if meta.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {meta.get('version')!r}, this sklcrt reads "
            f"version {VERSION}."
        )
    if hashlib.sha256(body).hexdigest() != meta.get("sha256"):
        raise CheckpointError(f"{path}: the table's checksum does not match (truncated or edited).")
    try:
        frame = _decode(body, meta)
    except (ValueError, TypeError, KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: the table cannot be parsed ({err}).") from err
    return meta, frame


def _decode(body: bytes, meta: dict) -> pd.DataFrame:
    columns, dtypes, encodings = meta["columns"], meta["dtypes"], meta["encodings"]
    if len(columns) != len(dtypes):
        raise ValueError("columns and dtypes disagree")
    read_as = {c: (object if d == "object" else d) for c, d in zip(columns, dtypes, strict=True)}
    floats = [c for c, d in zip(columns, dtypes, strict=True) if np.dtype(d).kind == "f"]
    frame = pd.read_csv(
        io.BytesIO(body),
        dtype=read_as,
        keep_default_na=False,
        na_values={c: [""] for c in floats},
        float_precision="round_trip",
        encoding="utf-8",
    )
    if list(frame.columns) != columns:
        raise ValueError(f"columns {list(frame.columns)} instead of {columns}")
    if len(frame) != meta["n_rows"]:
        raise ValueError(f"{len(frame)} rows instead of {meta['n_rows']}")
    for name, how in encodings.items():
        if how != "json":
            raise ValueError(f"unknown encoding {how!r}")
        frame[name] = pd.Series([json.loads(v) for v in frame[name]], dtype=object)
    for name, dtype in zip(columns, dtypes, strict=True):
        if str(frame[name].dtype) != dtype:
            frame[name] = frame[name].astype(dtype)
    return frame


# ---------------------------------------------------------------------- a directory
class CheckpointStore:
    """The checkpoint directory of one run.

    Parameters
    ----------
    directory : str
        Created if missing.
    parts : dict
        The run's fingerprint parts (:func:`run_fingerprint`).

    Attributes
    ----------
    fingerprint : str
        The run's fingerprint (:func:`fingerprint_of` of ``parts``).
    """

    def __init__(self, directory: str, parts: dict):
        self.directory = str(directory)
        self.parts = parts
        self.fingerprint = fingerprint_of(parts)

    # picklable and small: workers write the units they finish
    def __getstate__(self):
        return {"directory": self.directory, "parts": None, "fingerprint": self.fingerprint}

    def path(self, unit: str) -> str:
        """The file of ``unit``."""
        digest = hashlib.sha256(str(unit).encode()).hexdigest()[:20]
        return os.path.join(self.directory, f"{_UNIT_PREFIX}{digest}{_SUFFIX}")

    def _unit_files(self) -> list[str]:
        return sorted(
            name
            for name in os.listdir(self.directory)
            if name.startswith(_UNIT_PREFIX) and ".tmp" not in name
        )

    def open(self) -> None:
        """Check that the directory belongs to this run (or holds no unit) and stamp it.

        Raises
        ------
        ValueError
            If the directory holds units of a run with other data, options or test (or whose
            ``config.json`` is missing or corrupt while its unit files name another run).
        """
        os.makedirs(self.directory, exist_ok=True)
        stamp = os.path.join(self.directory, CONFIG)
        files = self._unit_files()
        stored, problem = self._read_config(stamp)
        if stored is not None:
            if stored.get("fingerprint") == self.fingerprint:
                return
            if files:
                raise ValueError(self._other_run_message(stored.get("parts")))
            # a directory of another run that holds no unit: it becomes this run's
        elif files or problem != "missing":
            foreign = self._foreign_units(files)
            if foreign:
                raise ValueError(
                    f"checkpoint_dir {self.directory!r}: {stamp} is {problem} and unit file(s) "
                    f"{foreign[:3]} come from a run with other arguments (data, options or test); "
                    "use a new checkpoint_dir, or delete this one to start over."
                )
            warnings.warn(
                f"checkpoint file {stamp} is {problem}; it is rewritten, and each unit file "
                "is checked against this run before it is used.",
                CheckpointWarning,
                stacklevel=3,
            )
        self._write_config(stamp)

    def _read_config(self, stamp: str) -> tuple[dict | None, str]:
        if not os.path.exists(stamp):
            return None, "missing"
        try:
            with open(stamp, encoding="utf-8") as fh:
                stored = json.load(fh)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None, "corrupt (not readable JSON)"
        if not isinstance(stored, dict) or not isinstance(stored.get("fingerprint"), str):
            return None, "corrupt (no fingerprint)"
        return stored, ""

    def _write_config(self, stamp: str) -> None:
        tmp = f"{stamp}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(
                {"format": FORMAT, "version": VERSION, "fingerprint": self.fingerprint,
                 "parts": self.parts},
                fh,
                indent=1,
                sort_keys=True,
            )  # fmt: skip
        os.replace(tmp, stamp)

    def _foreign_units(self, files: list[str]) -> list[str]:
        """Unit files that are intact but were written by another run."""
        foreign = []
        for name in files:
            try:
                meta, _ = read_table(os.path.join(self.directory, name))
            except CheckpointError:
                continue  # corrupt: recomputed when its unit comes
            if meta.get("run") != self.fingerprint:
                foreign.append(name)
        return foreign

    def _other_run_message(self, stored_parts) -> str:
        differ = []
        if isinstance(stored_parts, dict):
            for part, values in self.parts.items():
                old = stored_parts.get(part)
                if not isinstance(old, dict):
                    differ.append(part)
                    continue
                names = [k for k in values if old.get(k) != values[k]]
                names += [k for k in old if k not in values]
                differ.extend(f"{part}: {k}" for k in names)
        what = f" (differs: {', '.join(differ)})" if differ else ""
        return (
            f"checkpoint_dir {self.directory!r} holds units from a run with other arguments"
            f"{what}; use a new checkpoint_dir (or delete this one), or rerun with the same data, "
            "input options, test and arguments to resume."
        )

    def load(self, unit: str, job: str) -> pd.DataFrame | None:
        """The stored table of ``unit``, or ``None`` when there is none or it is not trusted.

        A file that is corrupt, or holds another unit, another job or another run's result, is
        not used: a :class:`CheckpointWarning` names it and the unit is recomputed.

        Parameters
        ----------
        unit : str
        job : str
            :func:`job_fingerprint` of the unit's job.
        """
        path = self.path(unit)
        if not os.path.exists(path):
            return None
        try:
            meta, frame = read_table(path)
            if meta.get("unit") != unit:
                raise CheckpointError(
                    f"{path}: holds unit {meta.get('unit')!r}, not {unit!r} (a copied file?)."
                )
            if meta.get("run") != self.fingerprint:
                raise CheckpointError(f"{path}: written by a run with other arguments.")
            if meta.get("job") != job:
                raise CheckpointError(f"{path}: answers other guides or responses of {unit!r}.")
        except CheckpointError as err:
            warnings.warn(
                f"checkpoint file not used, unit {unit!r} is recomputed: {err}",
                CheckpointWarning,
                stacklevel=3,
            )
            return None
        return frame

    def save(self, unit: str, job: str, frame: pd.DataFrame) -> None:
        """Write the table of ``unit`` (atomically)."""
        write_table(self.path(unit), frame, unit=str(unit), run=self.fingerprint, job=job)
