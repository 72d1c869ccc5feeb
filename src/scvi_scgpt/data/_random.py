"""Counter-based random numbers seeded per cell.

Every random choice made for a cell (tie spreading in binning, gene sampling, masking) is a
pure function of ``(seed, the cell's content, the gene, a stream id)``. A cell therefore gets
the same tokens whatever the batch size, the cell order or the other cells present.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)

#: Stream ids: independent random sequences for independent decisions.
STREAM_TIES = 1
STREAM_SAMPLING = 2
STREAM_MASKING = 3


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser applied element-wise (``uint64`` in, ``uint64`` out)."""
    z = np.asarray(x, dtype=np.uint64) + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def cell_seeds(
    indptr: np.ndarray, gene_ids: np.ndarray, values: np.ndarray, seed: int
) -> np.ndarray:
    """One 64-bit seed per cell from its non-zero ``(gene id, value)`` pairs and ``seed``.

    The hash is order-independent within a cell (a wrapping sum of per-entry hashes), depends on
    the vocabulary ids of the genes rather than on column positions, and on the values rounded
    to float32.

    Parameters
    ----------
    indptr
        CSR row pointer (``n_cells + 1``).
    gene_ids
        Vocabulary id of every stored entry.
    values
        Value of every stored entry.
    seed
        The model seed.
    """
    value_bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    entry = splitmix64(splitmix64(gene_ids.astype(np.uint64)) ^ value_bits.astype(np.uint64))
    csum = np.zeros(len(entry) + 1, dtype=np.uint64)
    np.cumsum(entry, dtype=np.uint64, out=csum[1:])
    per_cell = csum[indptr[1:]] - csum[indptr[:-1]]
    nnz = np.diff(indptr).astype(np.uint64)
    base = splitmix64(np.full(1, seed & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64))
    return splitmix64(per_cell ^ splitmix64(nnz) ^ base)


def entry_uniform(cell_seed: np.ndarray, gene_ids: np.ndarray, stream: int) -> np.ndarray:
    """Uniform ``[0, 1)`` float64 draws, one per ``(cell, gene)`` entry, for a given stream.

    ``cell_seed`` and ``gene_ids`` are aligned per entry (the seed of the entry's cell).
    """
    key = splitmix64(gene_ids.astype(np.uint64) * _GOLDEN + np.uint64(stream))
    bits = splitmix64(cell_seed ^ key)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)
