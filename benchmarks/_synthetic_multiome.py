"""A synthetic 10x-Multiome-like MuData: RNA counts and binary ATAC peaks of the same cells.

No real ATAC data is available offline; this exercises the peak path of ``SCGPT`` end to end.

- RNA: :func:`_synthetic_batches.simulate` (negative-binomial counts over census gene
  symbols, cell types with marker genes, batch effects); types 0 and 1 share half of their
  up-regulated markers, so RNA separates them less well than the other types.
- ATAC (given each cell's type and batch): every peak has a base accessibility rate
  ``r_p ~ Gamma(1, 0.05)``; each type opens ``n_type_peaks`` peaks of its own (rate + 0.6),
  types 0 and 1 get disjoint sets (the chromatin separates what the RNA blurs); each batch
  opens ``n_batch_peaks`` peaks of its own (+0.5) and has its own sequencing depth
  ``d_c ~ LogNormal(log depth_b, 0.3)``; a peak is open with probability
  ``1 - exp(-d_c r_p)``. Peaks are named ``chr{k}-{start}-{end}`` (the dash spelling, which
  the model parses as the region ``chr{k}:{start}-{end}``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def simulate_multiome(
    n_cells: int = 800,
    n_genes: int = 400,
    n_peaks: int = 2000,
    *,
    n_types: int = 5,
    n_type_peaks: int = 60,
    n_batch_peaks: int = 80,
    depths: tuple[float, float] = (0.8, 1.6),
    seed: int = 0,
):
    """Simulate a MuData with ``"rna"`` and ``"atac"``; ``obs``: ``batch``, ``cell_type``.

    Two batches. ``uns["simulation"]`` records the parameters.
    """
    import anndata
    import mudata as md
    import scipy.sparse as sp
    from _synthetic_batches import simulate

    composition = np.array([[0.3, 0.25, 0.2, 0.15, 0.1], [0.1, 0.2, 0.25, 0.25, 0.2]])
    rna = simulate(
        n_cells,
        n_genes,
        n_types,
        2,
        n_markers=20,
        n_batch_genes=20,
        batch_sd=0.4,
        library_means=(1500.0, 4000.0),
        composition=composition[:, :n_types] / composition[:, :n_types].sum(1, keepdims=True),
        seed=seed,
    )
    rng = np.random.default_rng(seed + 1000)
    types = rna.obs["cell_type"].cat.codes.to_numpy()
    batches = rna.obs["batch"].cat.codes.to_numpy()
    base = rng.gamma(1.0, 0.05, n_peaks)
    perm = rng.permutation(n_peaks)
    type_peaks = [perm[t * n_type_peaks : (t + 1) * n_type_peaks] for t in range(n_types)]
    start = n_types * n_type_peaks
    batch_peaks = [
        perm[start + b * n_batch_peaks : start + (b + 1) * n_batch_peaks] for b in range(2)
    ]
    rate = np.tile(base, (n_cells, 1))
    for t, cols in enumerate(type_peaks):
        rate[np.ix_(types == t, cols)] += 0.6
    for b, cols in enumerate(batch_peaks):
        rate[np.ix_(batches == b, cols)] += 0.5
    depth = np.exp(rng.normal(np.log(np.asarray(depths)[batches]), 0.3))
    opened = rng.random((n_cells, n_peaks)) < 1.0 - np.exp(-depth[:, None] * rate)
    opened[:, perm[-1]] = True  # no cell without an open peak
    chrom = np.sort(rng.integers(1, 23, n_peaks))
    starts = np.zeros(n_peaks, dtype=np.int64)
    for c in np.unique(chrom):
        sel = np.flatnonzero(chrom == c)
        starts[sel] = np.cumsum(rng.integers(2_000, 50_000, len(sel)))
    names = [f"chr{c}-{s}-{s + 500}" for c, s in zip(chrom, starts)]
    atac = anndata.AnnData(
        sp.csr_matrix(opened.astype(np.float32)),
        obs=rna.obs[["batch", "cell_type"]].copy(),
        var=pd.DataFrame(index=names),
    )
    peak_of = np.full(n_peaks, "", dtype=object)
    for t, cols in enumerate(type_peaks):
        peak_of[cols] = f"type{t}"
    for b, cols in enumerate(batch_peaks):
        peak_of[cols] = f"batch{b}"
    atac.var["peak_of"] = peak_of
    rna.X = sp.csr_matrix(rna.X, dtype=np.float32)
    mdata = md.MuData({"rna": rna, "atac": atac})
    for key in ("batch", "cell_type"):
        mdata.obs[key] = pd.Categorical(rna.obs[key].reindex(mdata.obs_names).astype(str))
    mdata.uns["simulation"] = {
        "n_cells": n_cells,
        "n_genes": n_genes,
        "n_peaks": n_peaks,
        "n_types": n_types,
        "n_type_peaks": n_type_peaks,
        "n_batch_peaks": n_batch_peaks,
        "depths": list(depths),
        "seed": seed,
        "open_fraction": float(opened.mean()),
    }
    return mdata
