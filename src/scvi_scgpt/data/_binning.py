"""Per-cell quantile binning of expression values, vectorized over CSR entries."""

from __future__ import annotations

import numpy as np

from scvi_scgpt._constants import N_BINS


def _row_of_entry(indptr: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))


def _sort_within_rows(indptr: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Permutation sorting ``values`` within each row, rows kept in order."""
    rows = _row_of_entry(indptr)
    if values.dtype == np.float32 or (
        np.issubdtype(values.dtype, np.floating)
        and np.array_equal(values.astype(np.float32), values)
    ):
        # non-negative float32 bit patterns sort like the numbers: one 64-bit key per entry
        bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
        key = (rows.astype(np.uint64) << np.uint64(32)) | bits
        return np.argsort(key, kind="stable")
    return np.lexsort((values, rows))


def quantile_edges(indptr: np.ndarray, values: np.ndarray, n_bins: int = N_BINS) -> np.ndarray:
    """Per-cell bin edges: ``n_bins - 1`` quantiles of each cell's values.

    Equal, value for value, to ``np.quantile(cell_values, np.linspace(0, 1, n_bins - 1))``
    (linear interpolation) computed cell by cell, the edges the official scGPT binning uses.
    As in numpy, differences between neighbouring values are taken in the input dtype, so
    float32 and float64 inputs give (very slightly) different edges. Cells without values get a
    row of ``nan``.

    Parameters
    ----------
    indptr
        Row pointer of the cells' values (``n_cells + 1``).
    values
        Values of all cells, concatenated (only the non-zero values of each cell).
    n_bins
        Number of bins, including the zero bin.

    Returns
    -------
    ``float64`` array of shape ``(n_cells, n_bins - 1)``.
    """
    values = np.asarray(values)
    return _edges_from_sorted(indptr, values[_sort_within_rows(indptr, values)], n_bins)


def _edges_from_sorted(indptr: np.ndarray, sorted_values: np.ndarray, n_bins: int) -> np.ndarray:
    counts = np.diff(indptr)
    q = np.linspace(0.0, 1.0, n_bins - 1)
    # numpy's "linear" method: virtual index (n - 1) * q, lerp with a switch at gamma = 0.5
    virtual = (counts[:, None] - 1) * q[None, :]
    prev = np.floor(virtual)
    at_end = virtual >= (counts[:, None] - 1)
    gamma = virtual - prev
    start = indptr[:-1, None]
    prev_i = prev.astype(np.int64)
    last = np.maximum(counts[:, None] - 1, 0)
    lo_idx = np.where(at_end, last, np.minimum(prev_i, last))
    hi_idx = np.where(at_end, last, np.minimum(prev_i + 1, last))
    empty = counts == 0
    safe = np.where(empty[:, None], 0, start)
    if len(sorted_values) == 0:
        return np.full((len(counts), n_bins - 1), np.nan)
    a = sorted_values[np.minimum(safe + lo_idx, len(sorted_values) - 1)]
    b = sorted_values[np.minimum(safe + hi_idx, len(sorted_values) - 1)]
    diff = b - a  # in the input dtype, as numpy does
    edges = np.where(gamma >= 0.5, b - diff * (1.0 - gamma), a + diff * gamma).astype(np.float64)
    edges[empty] = np.nan
    return edges


def _edge_counts(
    indptr: np.ndarray, sorted_values: np.ndarray, edges: np.ndarray, *, inclusive: bool
) -> np.ndarray:
    """For every sorted value, how many edges of its cell are ``<= v`` (or ``< v``).

    Each edge is placed among its cell's sorted values by a vectorized binary search (cheap:
    ``n_bins - 1`` edges per cell); a cumulative sum then gives the count for every value.
    """
    n_cells, n_edges = edges.shape
    starts = np.repeat(indptr[:-1], n_edges)
    lo = starts.copy()
    hi = np.repeat(indptr[1:], n_edges)
    e = edges.ravel()
    max_len = int(np.diff(indptr).max()) if n_cells else 0
    for _ in range(max(max_len, 1).bit_length() + 1):
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        v = sorted_values[np.minimum(mid, len(sorted_values) - 1)]
        # first value with v >= e (edge <= value: inclusive) or v > e (edge < value)
        before = (v < e) if inclusive else (v <= e)
        lo = np.where(active & before, mid + 1, lo)
        hi = np.where(active & ~before, mid, hi)
    first = lo[lo < np.repeat(indptr[1:], n_edges)]
    hist = np.bincount(first, minlength=len(sorted_values))
    csum = np.zeros(len(sorted_values) + 1, dtype=np.int64)
    np.cumsum(hist, out=csum[1:])
    cell_start = np.repeat(indptr[:-1], np.diff(indptr))
    return csum[1:] - csum[cell_start]


def bin_expression(
    indptr: np.ndarray,
    values: np.ndarray,
    *,
    n_bins: int = N_BINS,
    uniforms: np.ndarray | None = None,
) -> np.ndarray:
    """Bin each cell's non-zero values into bins 1 to ``n_bins - 1`` by per-cell quantiles.

    Official scGPT semantics: the edges are the ``n_bins - 1`` quantiles of the cell's non-zero
    values; a value gets the bin ``l = #{edges <= v}`` unless it is tied with edges, in which case
    it is spread over the tied bins ``r + 1 .. l`` (``r = #{edges < v}``) as
    ``ceil(u * (r - l) + l)`` with ``u`` uniform in ``[0, 1)``. The cell minimum lands in bin 1
    and, without ties, the maximum in bin ``n_bins - 1``. Zeros are not passed here; they keep
    bin 0.

    Parameters
    ----------
    indptr
        Row pointer (``n_cells + 1``) of the cells' non-zero values.
    values
        Positive values of all cells, concatenated.
    n_bins
        Number of bins including the zero bin (51 in every official model).
    uniforms
        One ``[0, 1)`` draw per value for tie spreading. ``None`` puts every tied value in its
        highest bin ``l``.

    Returns
    -------
    ``int64`` array of bins, aligned with ``values``.
    """
    values = np.asarray(values)
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    order = _sort_within_rows(indptr, values)
    sorted_values = values[order]
    edges = _edges_from_sorted(indptr, sorted_values, n_bins)
    sorted_values = sorted_values.astype(np.float64)
    upper = np.empty(len(values), dtype=np.int64)
    upper[order] = _edge_counts(indptr, sorted_values, edges, inclusive=True)
    if uniforms is None:
        return upper
    lower = np.empty(len(values), dtype=np.int64)
    lower[order] = _edge_counts(indptr, sorted_values, edges, inclusive=False)
    spread = np.ceil(uniforms * (lower - upper) + upper).astype(np.int64)
    return np.where(lower == upper, upper, spread)
