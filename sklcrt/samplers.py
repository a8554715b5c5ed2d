"""Samplers of synthetic treatment vectors (layer 3).

Every sampler follows one protocol (:class:`BaseSampler`): ``fit(x_obs, strata=None, p_hat=None)``
learns what to preserve from the observed 0/1 treatment, then ``sample(n_resamples, random_state)``
returns the resamples as a ``scipy.sparse.csr_matrix`` of shape ``(n_resamples, n_cells)`` with
float64 ones at the treated cells and sorted column indices in every row. Nothing builds a dense
``n_resamples x n_cells`` array: the work is proportional to the number of treated cells drawn,
``O(B * m)``, not ``O(B * N)``.

- :class:`StratifiedPermutationSampler` permutes within strata: every resample has exactly the
  observed treated count ``m_s`` in every stratum ``s``.
- :class:`PermutationSampler` permutes over all cells (one stratum; classic permutation test).
- :class:`BernoulliSampler` draws ``x*_i ~ Bernoulli(p_hat_i)`` independently (classic CRT).

How the draws are made, without a loop over cells or resamples:

- A stratum with ``m_s <= n_s / 4`` ("sparse") draws ``B * m_s`` cells with replacement, then
  redraws the duplicates within each (resample, stratum) in a few vectorised rounds until all are
  distinct. The redraw rule does not depend on the cells' labels, so the resulting set is a uniform
  ``m_s``-subset. All sparse strata are drawn together; each round touches only the duplicates.
- A stratum with ``m_s > n_s / 4`` ("dense") takes the ``m_s`` smallest of ``n_s`` uniform keys
  per resample (``argpartition``), which costs ``O(B * n_s) = O(B * m_s)`` there.
- The Bernoulli sampler groups cells into buckets ``p in (2**-((k+1)/4), 2**-(k/4)]``. In a
  sparse bucket (largest p ``q <= 1/4``) it draws ``K ~ Binomial(n_b, q)`` distinct candidates
  per resample (a uniform ``K``-subset, i.e. iid ``Bernoulli(q)`` inclusions) and keeps candidate
  ``i`` with probability ``p_i / q`` (thinning), which gives exact iid ``Bernoulli(p_i)`` draws;
  dense buckets compare uniforms directly.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from sklcrt._binary import shared_ones
from sklcrt._random import as_generator
from sklcrt._validation import (
    check_1d_numeric,
    check_binary_treatment,
    check_int,
    check_same_length,
)
from sklcrt.strata import factorize_batch

__all__ = [
    "BaseSampler",
    "BernoulliSampler",
    "PermutationSampler",
    "StratifiedPermutationSampler",
]

# Above this treated fraction a stratum (or a Bernoulli bucket's max p) is drawn densely.
_DENSE_RATIO = 0.25
# Bernoulli buckets span a factor 2 ** (1 / _BUCKETS_PER_OCTAVE) in p: acceptance >= 0.84.
_BUCKETS_PER_OCTAVE = 4
# Dense draws are made in row blocks of about this many random numbers (bounded memory).
_BLOCK_ELEMENTS = 1 << 22
# Expected candidates per geometric walk of a sparse Bernoulli bucket (see _sample_any).
_WALK_DRAWS = 1 << 19
# _in_rows searches blocks of rows of about this many keys (1 MB: cache-resident).
_DISTINCT_BLOCK = 1 << 17


class BaseSampler(BaseEstimator, metaclass=ABCMeta):
    """Base class of sklcrt samplers: ``fit`` then ``sample``.

    Subclasses implement ``_fit(x, strata, p_hat)`` (``x`` a boolean array, ``strata`` and
    ``p_hat`` as given, already length-checked) and ``_sample_keys(n_resamples, rng)`` returning the
    sorted, unique flat positions ``row * n_cells + cell`` of the treated entries, and
    :meth:`inclusion_probabilities`.

    The recommended high-MOI resampling (not a default) is :class:`StratifiedPermutationSampler`
    on strata from ``StratumEncoder(n_bins=20, n_burden_bins=8, burden_bin_method="quantile",
    stratify_by_batch=True)`` with burden ``log1p_non_ntc_guides_per_cell`` (or
    ``log1p_grna_n_nonzero_assign``).

    A sampler declares what its :meth:`fit` needs besides the treatment in the class attribute
    ``_required_inputs`` (any of ``"strata"``, ``"p_hat"``); :class:`~sklcrt.crt.CRTTest` reads
    it through :meth:`required_inputs` and builds exactly those (strata from its encoder,
    propensities from its classifier), so a user's sampler is one class::

        class MySampler(BaseSampler):
            _required_inputs = frozenset({"strata"})
            _null_law = None  # or "permutation" / "bernoulli" when the law is exact

            def _fit(self, x, strata, p_hat): ...
            def _sample_keys(self, n_resamples, rng): ...
            def inclusion_probabilities(self): ...

    Attributes
    ----------
    n_cells_ : int
        Number of cells ``N`` seen in :meth:`fit`.
    n_treated_ : int
        Number of observed treated cells ``m``.
    """

    #: What :meth:`fit` needs besides the treatment: any of ``"strata"``, ``"p_hat"``.
    _required_inputs: frozenset[str] = frozenset()
    #: The exact law of the resamples, for saddlepoint p-values: ``"bernoulli"`` (independent
    #: ``Bernoulli(p_hat_i)``), ``"permutation"`` (a uniform choice of the observed treated count
    #: within each stratum, one stratum without strata) or ``None`` (unknown: resampling only).
    _null_law: str | None = None

    def required_inputs(self) -> frozenset[str]:
        """The inputs :meth:`fit` needs besides the treatment (``"strata"``, ``"p_hat"``).

        Returns
        -------
        frozenset of str
            The class's declaration ``_required_inputs``.
        """
        return frozenset(self._required_inputs)

    def fit(self, x_obs, strata=None, p_hat=None) -> BaseSampler:
        """Learn what the resamples must preserve.

        Parameters
        ----------
        x_obs : array-like of shape (n_cells,)
            Observed binary (0/1 or bool) treatment.
        strata : array-like of shape (n_cells,), default=None
            Stratum label of every cell (e.g. from :class:`sklcrt.strata.StratumEncoder`); used by
            :class:`StratifiedPermutationSampler`, ignored by the others.
        p_hat : array-like of shape (n_cells,), default=None
            Propensities in ``[0, 1]``; used by :class:`BernoulliSampler`, ignored by the others.

        Returns
        -------
        self : BaseSampler
            The fitted sampler.
        """
        x = check_binary_treatment(x_obs, "x_obs")
        check_same_length(x_obs=x, strata=strata, p_hat=p_hat)
        if x.size == 0:
            raise ValueError("x_obs is empty; a sampler needs at least one cell.")
        self.n_cells_ = int(x.size)
        self.n_treated_ = int(np.count_nonzero(x))
        self._fit(x, strata, p_hat)
        return self

    def sample(self, n_resamples: int, random_state=None) -> sp.csr_matrix:
        """Draw ``n_resamples`` synthetic treatment vectors.

        Parameters
        ----------
        n_resamples : int
            Number of resamples ``B >= 1``.
        random_state : None, int, numpy SeedSequence or Generator, default=None
            Seed of the draws (see :func:`sklcrt._random.as_generator`); the same seed gives the
            same resamples. A Generator is used as is and advances.

        Returns
        -------
        resamples : scipy.sparse.csr_matrix of shape (n_resamples, n_cells), dtype float64
            Row ``b`` holds ones at the cells treated in resample ``b``; column indices are sorted
            within each row (canonical format).
        """
        R = _as_csr(self._draw(n_resamples, random_state))
        if not R.data.flags.writeable:  # the draws' shared ones: the caller gets its own
            R.data = np.ones(R.nnz)
        return R

    def _draw(self, n_resamples: int, random_state=None) -> sp.csr_matrix | sp.csc_matrix:
        """The resamples of :meth:`sample` (the same draws), as canonical CSR or CSC.

        The format is the one the sampler builds at least cost (CSC for
        :class:`BernoulliSampler`, whose draws come out cell by cell), so that the gather, which
        reads the resamples cell by cell, does not pay for a conversion to CSR and back.
        """
        check_is_fitted(self)
        n_resamples = check_int(n_resamples, "n_resamples", min_value=1)
        n_cells = self.n_cells_
        if n_resamples * n_cells >= 2**62:
            raise ValueError(
                f"n_resamples * n_cells = {n_resamples * n_cells} is too large; draw the "
                "resamples in smaller batches."
            )
        rng = as_generator(random_state)
        return self._sample_any(n_resamples, rng)

    def _sample_any(self, n_resamples: int, rng: np.random.Generator):
        """The resamples as canonical CSR or CSC (by default :meth:`_sample_matrix`)."""
        return self._sample_matrix(n_resamples, rng)

    def _sample_matrix(self, n_resamples: int, rng: np.random.Generator) -> sp.csr_matrix:
        """The resamples as a canonical CSR matrix (by default from :meth:`_sample_keys`)."""
        keys = self._sample_keys(n_resamples, rng)
        return _keys_to_csr(keys, n_resamples, self.n_cells_)

    @abstractmethod
    def inclusion_probabilities(self) -> np.ndarray:
        """Probability that each cell is treated in one resample, shape (n_cells,)."""

    @abstractmethod
    def _fit(self, x: np.ndarray, strata, p_hat) -> None:
        """Sampler-specific part of :meth:`fit`."""

    @abstractmethod
    def _sample_keys(self, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
        """Sorted unique int64 keys ``row * n_cells + cell`` of the treated entries."""


class _Groups:
    """Cells grouped by a code: ``members[starts[g]:starts[g] + sizes[g]]`` are group ``g``'s cells
    (increasing); ``group_of_cell[i]`` is the group of cell ``i`` (-1: in no group)."""

    def __init__(self, codes: np.ndarray, n_groups: int):
        n_cells = codes.size
        inside = codes >= 0
        inner = codes[inside]
        if n_groups <= np.iinfo(np.int16).max:
            # Same (stable) order; numpy radix-sorts 16-bit keys in O(n).
            inner = inner.astype(np.int16)
        self.members = np.flatnonzero(inside)[np.argsort(inner, kind="stable")]
        self.sizes = np.bincount(codes[inside], minlength=n_groups).astype(np.int64)
        self.starts = np.concatenate(([0], np.cumsum(self.sizes)[:-1])).astype(np.int64)
        self.group_of_cell = np.full(n_cells, -1, dtype=np.int64)
        self.group_of_cell[inside] = codes[inside]

    def cells(self, g: int) -> np.ndarray:
        return self.members[self.starts[g] : self.starts[g] + self.sizes[g]]

    def draw(self, rng: np.random.Generator, groups: np.ndarray, repeat: int = 1) -> np.ndarray:
        """One uniform cell of each listed group (with replacement), the list taken ``repeat``
        times (its bounds tiled rather than gathered again: the same numbers, less work)."""
        starts, sizes = self.starts[groups], self.sizes[groups]
        if repeat > 1:
            starts, sizes = np.tile(starts, repeat), np.tile(sizes, repeat)
        return self.members[starts + rng.integers(0, sizes)]


def _redraw_repeats(rng: np.random.Generator, cells: np.ndarray, grp: _Groups) -> None:
    """Make the cells of every row of ``cells`` distinct, in place; the rows stay increasing.

    ``cells`` (resamples x slots, each row sorted) holds, for every slot (a row and a group), a
    uniform draw from the group. Every repeat of a value within its row is redrawn uniformly
    from its group until none is left, a rule that ignores the labels of the cells, so within
    every (row, group) the cells form a uniform subset of the slot count. Needs
    ``slots <= size`` per (row, group); it is fast when slots are at most a fraction of the
    group.

    The redraws are drawn in the order of the keys ``row * n_cells + cell`` of the repeats, and
    accepted where neither the row's first draws nor an earlier redraw holds the cell (binary
    searches within the sorted rows: no array of keys over all draws); the accepted ones fill
    the repeats' slots and the rows that got any are sorted again.
    """
    repeat = cells[:, 1:] == cells[:, :-1]
    if not repeat.any():
        return
    n_cells = grp.group_of_cell.size
    slot_row, slot_col = np.nonzero(repeat)
    slot_col += 1
    pending = slot_row * n_cells + cells[slot_row, slot_col]
    # Accepted redraws are kept apart (few, sorted) and placed once at the end.
    extra = np.empty(0, dtype=np.int64)
    while pending.size:
        prow = pending // n_cells
        new = prow * n_cells + grp.draw(rng, grp.group_of_cell[pending - prow * n_cells])
        new.sort()
        first = np.ones(new.size, dtype=bool)
        first[1:] = new[1:] != new[:-1]
        ok = first & ~_in_rows(cells, new, n_cells) & ~_in_sorted(extra, new)
        extra = np.insert(extra, np.searchsorted(extra, new[ok]), new[ok])
        pending = new[~ok]
    # A row has as many accepted redraws as repeats, both in row order.
    cells[slot_row, slot_col] = extra - (extra // n_cells) * n_cells
    rows = np.unique(slot_row)
    if rows.size == cells.shape[0]:
        cells.sort(axis=1)
    else:
        block = cells[rows]
        block.sort(axis=1)
        cells[rows] = block


def _in_rows(cells: np.ndarray, keys: np.ndarray, n_cells: int) -> np.ndarray:
    """Whether each of the sorted keys ``row * n_cells + cell`` has its cell in the sorted row
    ``cells[row]``.

    Many keys: the keys of their rows' cells, a cache-sized block of rows at a time, searched
    with ``np.searchsorted``; few: a vectorised binary search of each cell within its row
    (measured 0.4-0.7 us per key at 3,000 slots, against 3-6 ns per cell of a block of rows).
    """
    width = cells.shape[1]
    if keys.size == 0 or width == 0:
        return np.zeros(keys.size, dtype=bool)
    rows = keys // n_cells
    values = keys - rows * n_cells
    halvings = width.bit_length()
    touched = np.flatnonzero(np.diff(rows, prepend=-1))  # each row's first key
    if 10 * keys.size * halvings > touched.size * width:
        found = np.empty(keys.size, dtype=bool)
        step = max(1, _DISTINCT_BLOCK // width)
        for k0 in range(0, touched.size, step):
            first = touched[k0]
            stop = touched[k0 + step] if k0 + step < touched.size else keys.size
            block_rows = rows[touched[k0 : k0 + step]]
            block = cells[block_rows].astype(np.int64)
            block += block_rows[:, None] * n_cells
            found[first:stop] = _in_sorted(block.ravel(), keys[first:stop])
        return found
    flat = cells.ravel()
    base = rows * width
    lo = np.zeros(rows.size, dtype=np.int64)
    hi = np.full(rows.size, width, dtype=np.int64)
    for _ in range(halvings):
        mid = (lo + hi) >> 1
        right = flat[base + np.minimum(mid, width - 1)] < values
        right &= mid < hi
        lo = np.where(right, mid + 1, lo)
        hi = np.where(right, hi, mid)
    return (lo < width) & (flat[base + np.minimum(lo, width - 1)] == values)


def _in_sorted(sorted_values: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Whether each of ``values`` occurs in the sorted array ``sorted_values``."""
    if sorted_values.size == 0:
        return np.zeros(values.size, dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_values, values), sorted_values.size - 1)
    return sorted_values[pos] == values


def _bernoulli_positions(rng: np.random.Generator, size: int, q: float) -> np.ndarray:
    """The increasing positions in ``range(size)`` of iid ``Bernoulli(q)`` successes, from
    geometric gaps drawn in batches of about the expected count plus a margin."""
    parts, last, remaining = [], -1, size
    scale = -1.0 / np.log1p(-q)
    while True:
        expected = remaining * q
        n_draw = int(expected + 6.0 * np.sqrt(expected * (1.0 - q)) + 16)
        # Geometric(q) gaps by inversion of exponentials: ceil(E / -log(1 - q)).
        gaps = rng.standard_exponential(n_draw)
        gaps *= scale
        np.ceil(gaps, out=gaps)
        np.maximum(gaps, 1.0, out=gaps)  # E = 0 (probability ~2**-53) would repeat a point
        # A gap past the end ends the walk; capped, a tiny q (scale ~1/q) cannot overflow int64.
        np.minimum(gaps, float(size + 1), out=gaps)
        pos = np.cumsum(gaps.astype(np.int64))
        pos += last
        if pos[-1] >= size:
            parts.append(pos[: np.searchsorted(pos, size)])
            break
        parts.append(pos)
        last = int(pos[-1])
        remaining = size - 1 - last
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _cell_major_to_sparse(cells, rows, n_resamples: int, n_cells: int) -> sp.spmatrix:
    """Canonical CSC (CSR for few entries) of the entries ``(rows, cells)`` given cell by cell:
    each cell's entries contiguous with increasing rows, the cells in any order."""
    nnz = cells.size
    if nnz < 2 * n_cells:
        # Few draws: sorting their keys costs less than arrays over all cells (and CSR has no
        # array over all cells).
        return _keys_to_csr(np.sort(rows.astype(np.int64) * n_cells + cells), n_resamples, n_cells)
    index_dtype = np.int32 if max(n_cells, n_resamples, nnz) < 2**31 - 1 else np.int64
    counts = np.bincount(cells, minlength=n_cells)
    indptr = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    # Each entry's place in CSC order: its run's start there minus the run's start in the input.
    offset = np.zeros(n_cells, dtype=np.int64)
    first = np.flatnonzero(np.concatenate(([True], cells[1:] != cells[:-1])))
    offset[cells[first]] = indptr[cells[first]] - first
    dest = offset[cells]
    dest += np.arange(nnz, dtype=np.int64)
    indices = np.empty(nnz, dtype=index_dtype)
    indices[dest] = rows.astype(index_dtype, copy=False)
    out = sp.csc_matrix(
        (shared_ones(nnz), indices, indptr.astype(index_dtype)), shape=(n_resamples, n_cells)
    )
    out.has_sorted_indices = True
    out.has_canonical_format = True
    return out


def _runs_to_sparse(runs, n_resamples: int, n_cells: int, order) -> sp.spmatrix:
    """Canonical CSC (CSR for few entries) of draws given in runs of consecutive places.

    Each run ``(start, size, local, rows)`` holds entries of the cells ``order[start + local]``
    (``local`` in ``range(size)``, non-decreasing, rows increasing within a cell). Every run's
    rows are scattered straight to their CSC positions: no concatenation of all draws and no
    array of destinations over all of them (both cost more than the scatter itself).
    """
    nnz = sum(run[3].size for run in runs)
    if nnz < 2 * n_cells:
        if not runs:
            return _cell_major_to_sparse(
                np.empty(0, np.int64), np.empty(0, np.int64), n_resamples, n_cells
            )
        places = np.concatenate([run[0] + run[2] for run in runs])
        rows = np.concatenate([run[3] for run in runs])
        return _cell_major_to_sparse(order[places], rows, n_resamples, n_cells)
    index_dtype = np.int32 if max(n_cells, n_resamples, nnz) < 2**31 - 1 else np.int64
    # A run's cells are non-decreasing: its counts from the boundaries of each cell's entries.
    run_counts = [
        np.diff(np.searchsorted(local, np.arange(size + 1))) for _, size, local, _ in runs
    ]
    counts = np.zeros(n_cells, dtype=np.int64)
    for (start, size, _, _), rc in zip(runs, run_counts, strict=True):
        counts[order[start : start + size]] = rc
    indptr = np.zeros(n_cells + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    indices = np.empty(nnz, dtype=index_dtype)
    ramp = np.arange(max(run[3].size for run in runs), dtype=np.int64)
    for (start, size, local, rows), rc in zip(runs, run_counts, strict=True):
        # The k-th entry of a run goes to its cell's start in CSC plus its rank in the cell's
        # run: k minus the number of the run's entries before that cell.
        offset = indptr[order[start : start + size]]
        offset[1:] -= np.cumsum(rc[:-1])
        dest = offset.take(local)
        dest += ramp[: local.size]
        indices[dest] = rows.astype(index_dtype, copy=False)
    out = sp.csc_matrix(
        (shared_ones(nnz), indices, indptr.astype(index_dtype)), shape=(n_resamples, n_cells)
    )
    out.has_sorted_indices = True
    out.has_canonical_format = True
    return out


def _cell_major_to_csr(cells, rows, n_resamples: int, n_cells: int) -> sp.csr_matrix:
    """Canonical CSR of the entries ``(rows, cells)`` given cell by cell (see
    :func:`_cell_major_to_sparse`)."""
    return _as_csr(_cell_major_to_sparse(cells, rows, n_resamples, n_cells))


def _as_csr(R) -> sp.csr_matrix:
    """Canonical CSR of canonical CSR or CSC resamples (the conversion sorts the rows)."""
    if R.format == "csr":
        return R
    out = R.tocsr()
    out.has_sorted_indices = True
    out.has_canonical_format = True
    return out


def _row_blocks(n_resamples: int, width: int):
    """Row ranges ``(r0, r1)`` covering ``n_resamples`` with about ``_BLOCK_ELEMENTS`` per block."""
    step = max(1, _BLOCK_ELEMENTS // max(width, 1))
    for r0 in range(0, n_resamples, step):
        yield r0, min(n_resamples, r0 + step)


def _keys_to_csr(keys: np.ndarray, n_resamples: int, n_cells: int) -> sp.csr_matrix:
    """CSR of the sorted keys ``row * n_cells + cell``."""
    rows = keys // n_cells
    cols = keys - rows * n_cells
    indptr = np.searchsorted(rows, np.arange(n_resamples + 1))
    return _csr(cols, indptr, n_resamples, n_cells)


def _csr(cols, indptr, n_resamples: int, n_cells: int) -> sp.csr_matrix:
    index_dtype = np.int32 if max(n_cells, cols.size) < 2**31 - 1 else np.int64
    out = sp.csr_matrix(
        (np.ones(cols.size), cols.astype(index_dtype), indptr.astype(index_dtype)),
        shape=(n_resamples, n_cells),
    )
    out.has_sorted_indices = True
    out.has_canonical_format = True
    return out


class _WithinStrataPermutation(BaseSampler):
    """Shared engine: permute the treated count within each stratum (codes ``0..S-1``)."""

    def _fit_codes(self, x: np.ndarray, codes: np.ndarray, labels: np.ndarray) -> None:
        n_strata = int(labels.size)
        self.strata_ = codes
        self.stratum_labels_ = labels
        self.n_strata_ = n_strata
        self.stratum_sizes_ = np.bincount(codes, minlength=n_strata).astype(np.int64)
        self.n_treated_per_stratum_ = np.bincount(codes[x], minlength=n_strata).astype(np.int64)
        self._groups = _Groups(codes, n_strata)
        m, n = self.n_treated_per_stratum_, self.stratum_sizes_
        treated = m > 0
        dense = treated & (m > _DENSE_RATIO * n)
        self._dense_strata = np.flatnonzero(dense)
        sparse = np.flatnonzero(treated & ~dense)
        self._sparse_strata = sparse

    def _sample_matrix(self, n_resamples: int, rng: np.random.Generator) -> sp.csr_matrix:
        cells = self._sample_cells(n_resamples, rng)
        # Every resample treats the observed count: the sorted rows are the CSR's indices.
        width = cells.shape[1]
        index_dtype = np.int32 if max(self.n_cells_, cells.size) < 2**31 - 1 else np.int64
        indptr = np.arange(n_resamples + 1, dtype=index_dtype) * width
        out = sp.csr_matrix(
            (shared_ones(cells.size), cells.astype(index_dtype, copy=False).ravel(), indptr),
            shape=(n_resamples, self.n_cells_),
        )
        out.has_sorted_indices = True
        out.has_canonical_format = True
        return out

    def inclusion_probabilities(self) -> np.ndarray:
        """``m_s / n_s`` for every cell of stratum ``s``, shape (n_cells,)."""
        check_is_fitted(self)
        frac = self.n_treated_per_stratum_ / self.stratum_sizes_
        return frac[self.strata_]

    def _sample_keys(self, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
        cells = self._sample_cells(n_resamples, rng).astype(np.int64)
        cells += np.arange(n_resamples, dtype=np.int64)[:, None] * self.n_cells_
        return cells.ravel()

    def _sample_cells(self, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
        """The treated cells of every resample, shape (n_resamples, n_treated), rows increasing
        (int32 below 2**31 cells)."""
        n_cells, grp, m = self.n_cells_, self._groups, self.n_treated_per_stratum_
        dense, sparse = self._dense_strata, self._sparse_strata
        # Every resample treats m_s cells of every stratum: one row of slots per resample, the
        # dense strata's first, sorted row by row at the end (cheaper than one global sort).
        width = int(m[dense].sum() + m[sparse].sum())
        dtype = np.int32 if n_cells < 2**31 - 1 else np.int64
        cells = np.empty((n_resamples, width), dtype=dtype)
        col = 0
        for s in dense:
            members, m_s = grp.cells(s), int(m[s])
            for r0, r1 in _row_blocks(n_resamples, members.size):
                if m_s == members.size:
                    cells[r0:r1, col : col + m_s] = members
                else:
                    u = rng.random((r1 - r0, members.size))
                    cells[r0:r1, col : col + m_s] = members[
                        np.argpartition(u, m_s - 1, axis=1)[:, :m_s]
                    ]
            col += m_s
        # Sparse strata: per stratum one draw of B x m_s integers with the stratum's size as the
        # (scalar) bound, much cheaper than a bound per slot; duplicates are redrawn below.
        for s in sparse:
            m_s = int(m[s])
            pos = rng.integers(0, int(grp.sizes[s]), size=(n_resamples, m_s))
            pos += int(grp.starts[s])
            cells[:, col : col + m_s] = grp.members[pos]
            col += m_s
        if width == 0:
            return cells
        cells.sort(axis=1)
        # A dense stratum's cells are distinct and no stratum shares a cell with another, so
        # every duplicate is one of a sparse stratum: the redraws are those of its slots alone.
        _redraw_repeats(rng, cells, grp)
        return cells


class StratifiedPermutationSampler(_WithinStrataPermutation):
    """Permute the treatment within strata (stratified permutation test).

    In each stratum ``s`` every resample treats ``m_s = sum(x_obs[s])`` cells chosen uniformly
    without replacement, so every resample has exactly the observed treated count in every stratum
    (and globally). Cost ``O(B * m)``.

    Recommended at high MOI (not the defaults): strata from
    ``StratumEncoder(n_bins=20, n_burden_bins=8, burden_bin_method="quantile",
    stratify_by_batch=True)`` fitted with burden ``log1p_non_ntc_guides_per_cell`` (or
    ``log1p_grna_n_nonzero_assign``) -- in the string API ``resampling_method="stratified_perm"``
    with ``resampling_kwargs=dict(n_bins=20, n_burden_bins=8,
    burden_key="log1p_non_ntc_guides_per_cell", stratify_by_batch=True,
    burden_bin_method="quantile")``.

    Attributes
    ----------
    n_cells_ : int
        Number of cells ``N``.
    n_treated_ : int
        Observed treated count ``m``.
    strata_ : ndarray of shape (n_cells,), dtype int64
        Compact stratum code ``0..n_strata_-1`` of every cell (sorted labels).
    stratum_labels_ : ndarray of shape (n_strata_,)
        The stratum label of each code.
    n_strata_ : int
        Number of strata.
    stratum_sizes_ : ndarray of shape (n_strata_,)
        ``n_s``, cells per stratum.
    n_treated_per_stratum_ : ndarray of shape (n_strata_,)
        ``m_s``, observed treated cells per stratum (preserved in every resample).

    See Also
    --------
    sklcrt.strata.StratumEncoder : builds the strata.
    PermutationSampler : one stratum.
    BernoulliSampler : independent draws from the propensity.

    Examples
    --------
    >>> import numpy as np
    >>> from sklcrt.samplers import StratifiedPermutationSampler
    >>> x = np.array([1, 0, 0, 0, 1, 1, 0, 0])
    >>> strata = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    >>> R = StratifiedPermutationSampler().fit(x, strata=strata).sample(5, random_state=0)
    >>> R.shape, R[:, :4].sum(axis=1).A1.tolist(), R[:, 4:].sum(axis=1).A1.tolist()
    ((5, 8), [1.0, 1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0, 2.0])
    """

    _required_inputs = frozenset({"strata"})
    _null_law = "permutation"

    def _fit(self, x, strata, p_hat) -> None:
        if strata is None:
            raise ValueError(
                "strata is required by StratifiedPermutationSampler (e.g. "
                "StratumEncoder().fit_transform(p_hat, batch, burden)); use PermutationSampler "
                "for one stratum."
            )
        codes, labels = factorize_batch(strata, "strata")
        self._fit_codes(x, codes, labels)


class PermutationSampler(_WithinStrataPermutation):
    """Permute the treatment over all cells (classic permutation test, one stratum).

    Every resample treats exactly ``m = sum(x_obs)`` cells chosen uniformly without replacement;
    ``strata`` and ``p_hat`` are ignored. Suited to low MOI; at high MOI prefer
    :class:`StratifiedPermutationSampler` with burden strata.

    Attributes
    ----------
    n_cells_ : int
        Number of cells ``N``.
    n_treated_ : int
        Observed treated count ``m`` (preserved in every resample).
    strata_ : ndarray of shape (n_cells,), dtype int64
        All zeros (one stratum).
    n_strata_ : int
        1.
    stratum_labels_, stratum_sizes_, n_treated_per_stratum_ : ndarray of shape (1,)
        As in :class:`StratifiedPermutationSampler`, for the single stratum.

    See Also
    --------
    StratifiedPermutationSampler, BernoulliSampler

    Examples
    --------
    >>> import numpy as np
    >>> from sklcrt.samplers import PermutationSampler
    >>> R = PermutationSampler().fit(np.array([1, 1, 0, 0, 0, 0])).sample(3, random_state=0)
    >>> R.sum(axis=1).A1.tolist()
    [2.0, 2.0, 2.0]
    """

    _null_law = "permutation"

    def _fit(self, x, strata, p_hat) -> None:
        self._fit_codes(x, np.zeros(x.size, dtype=np.int64), np.array([0]))


class BernoulliSampler(BaseSampler):
    """Draw ``x*_i ~ Bernoulli(p_hat_i)`` independently (classic conditional randomization test).

    Exact iid draws by thinning within propensity buckets, cost ``O(B * sum(p_hat))``; cells with
    ``p_hat = 0`` are never treated and cells with ``p_hat = 1`` always. The treated count varies
    between resamples. ``strata`` is ignored; ``x_obs`` only sets ``n_treated_``.

    This is the default of the string API (``resampling_method="bernoulli_index"``, alias
    ``"crt"``). At high MOI prefer :class:`StratifiedPermutationSampler` with burden strata
    (``n_bins=20, n_burden_bins=8, burden_key="log1p_non_ntc_guides_per_cell",
    stratify_by_batch=True, burden_bin_method="quantile"``).

    Attributes
    ----------
    n_cells_ : int
        Number of cells ``N``.
    n_treated_ : int
        Observed treated count.
    p_hat_ : ndarray of shape (n_cells,)
        The propensities sampled from.
    expected_n_treated_ : float
        ``sum(p_hat_)``, the mean treated count of a resample.

    See Also
    --------
    StratifiedPermutationSampler, PermutationSampler

    Examples
    --------
    >>> import numpy as np
    >>> from sklcrt.samplers import BernoulliSampler
    >>> p_hat = np.array([0.0, 1.0, 0.5, 0.5])
    >>> R = BernoulliSampler().fit(np.array([0, 1, 1, 0]), p_hat=p_hat).sample(4, random_state=0)
    >>> R[:, :2].toarray().tolist()
    [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]
    """

    _required_inputs = frozenset({"p_hat"})
    _null_law = "bernoulli"

    def _fit(self, x, strata, p_hat) -> None:
        if p_hat is None:
            raise ValueError(
                "p_hat is required by BernoulliSampler (the propensity P(x = 1 | C) of every "
                "cell, e.g. from sklcrt.propensity.fit_propensity)."
            )
        p = check_1d_numeric(p_hat, "p_hat")
        if p.min() < 0.0 or p.max() > 1.0:
            raise ValueError(
                f"p_hat must lie in [0, 1], got values in [{p.min():.4g}, {p.max():.4g}]."
            )
        self.p_hat_ = p
        self.expected_n_treated_ = float(p.sum())
        positive = p > 0
        level = np.full(p.size, -1, dtype=np.int64)
        level[positive] = np.floor(-_BUCKETS_PER_OCTAVE * np.log2(p[positive])).astype(np.int64)
        # The occupied levels, in increasing order, and each cell's rank among them (what
        # np.unique(return_inverse=True) gives, without its sort: levels are small integers).
        occupied = np.bincount(level[positive]) > 0
        codes = (np.cumsum(occupied) - 1)[level[positive]]
        bucket = np.full(p.size, -1, dtype=np.int64)
        bucket[positive] = codes
        n_buckets = int(np.count_nonzero(occupied))
        q = np.zeros(n_buckets)
        np.maximum.at(q, codes, p[positive])
        self._groups = _Groups(bucket, n_buckets)
        self._bucket_q = q
        self._dense_buckets = np.flatnonzero(q > _DENSE_RATIO)
        self._sparse_buckets = np.flatnonzero(q <= _DENSE_RATIO)

    def inclusion_probabilities(self) -> np.ndarray:
        """``p_hat`` itself, shape (n_cells,)."""
        check_is_fitted(self)
        return self.p_hat_

    def _sample_keys(self, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
        R = self._sample_matrix(n_resamples, rng)
        rows = np.repeat(np.arange(n_resamples, dtype=np.int64), np.diff(R.indptr))
        return rows * self.n_cells_ + R.indices

    def _sample_matrix(self, n_resamples: int, rng: np.random.Generator) -> sp.csr_matrix:
        return _as_csr(self._sample_any(n_resamples, rng))

    def _sample_any(self, n_resamples: int, rng: np.random.Generator):
        """All draws cell by cell (cell-major), scattered into a canonical CSC matrix (CSR when
        there are fewer draws than twice the cells).

        Within a bucket the (cell, resample) grid is walked cell-major: a dense bucket compares
        one uniform per grid point with ``p_i``; a sparse bucket (largest p ``q <= 1/4``) picks
        the grid points of iid ``Bernoulli(q)`` inclusions by geometric gaps (no duplicates to
        redraw) and keeps each with probability ``p_i / q`` (thinning): exact iid
        ``Bernoulli(p_i)`` draws. A large bucket is walked in runs of its cells of about
        ``_WALK_DRAWS`` candidates, whose arrays stay in cache. Each cell's resamples come out
        increasing, so the CSC matrix needs no sort: every run's draws are scattered to their
        places from the cells' counts (:func:`_runs_to_sparse`). :meth:`sample` converts it to
        CSR (a counting transpose sorts the rows); the gather reads it as it is.
        """
        B, n_cells, grp, p, q = (
            n_resamples,
            self.n_cells_,
            self._groups,
            self.p_hat_,
            self._bucket_q,
        )
        # Every bucket's draws as (local index of the cell in the bucket, resample), cell by
        # cell: the cells of a bucket are consecutive in grp.members.
        runs = []
        for b in range(q.size):
            start, size = int(grp.starts[b]), int(grp.sizes[b])
            if size == 0:
                continue
            p_b = p[grp.members[start : start + size]]
            if q[b] > _DENSE_RATIO:
                step = max(1, _BLOCK_ELEMENTS // B)
                for c0 in range(0, size, step):
                    c, r = np.nonzero(
                        rng.random((min(step, size - c0), B)) < p_b[c0 : c0 + step, None]
                    )
                    runs.append((start + c0, min(step, size - c0), c, r))
                continue
            # Large buckets are walked in runs of cells with about _WALK_DRAWS candidates each,
            # so that the walk's arrays stay in cache (the law is the same: the grid points are
            # iid, and a run of cells is a run of the grid).
            step = max(1, int(_WALK_DRAWS / (B * q[b])))
            for c0 in range(0, size, step):
                n_c = min(step, size - c0)
                pos = _bernoulli_positions(rng, n_c * B, q[b])
                u = rng.random(pos.size)
                u *= q[b]
                local = pos // B
                # One compaction by indices (cheaper than a boolean mask of unpredictable
                # values).
                kept = np.flatnonzero(u < p_b[c0 : c0 + n_c][local])
                local = local.take(kept)
                rows = np.multiply(local, B)
                np.subtract(pos.take(kept), rows, out=rows)  # the resample
                runs.append((start + c0, n_c, local, rows))
        return _runs_to_sparse(runs, B, n_cells, grp.members)
