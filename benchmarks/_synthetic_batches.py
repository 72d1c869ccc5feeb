"""Synthetic scRNA-seq counts with known cell types and strong batch effects.

Generative model (all parameters drawn from one seeded ``numpy`` generator):

- genes: ``n_genes`` real gene symbols from the scGPT census vocabulary (plain symbols
  ``[A-Z][A-Z0-9]{1,7}``, drawn at random), so the data match a gene vocabulary;
- baseline relative abundance per gene: ``log p_g ~ N(0, 1.2^2)``, normalised to sum 1;
- cell types: each type up-regulates ``n_markers`` genes (log fold change ``N(1.6, 0.4^2)``)
  and down-regulates ``n_markers // 2`` genes (``-N(1.0, 0.3^2)``); types 0 and 1 share half
  their up-regulated markers (two related types, harder to separate than the others);
- batches (strong effects): every gene gets a batch-specific multiplicative factor
  ``exp(N(0, batch_sd^2))``, each batch strongly over-expresses its own ``n_batch_genes``
  genes (``+N(2.0, 0.3^2)`` log fold change), batches have different mean library sizes
  (``library_means``, log-normal per cell with sd 0.35) and different cell-type compositions;
- counts: negative binomial (gamma-Poisson) with mean ``library x p_cell,g`` and gene-wise
  inverse dispersion ``theta_g = exp(N(log 4, 0.5^2))``.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

DEFAULT_COMPOSITION = np.array(
    [
        [0.30, 0.25, 0.20, 0.15, 0.10],
        [0.10, 0.30, 0.25, 0.20, 0.15],
        [0.20, 0.10, 0.15, 0.25, 0.30],
    ]
)


def census_symbols(n: int, rng: np.random.Generator) -> list[str]:
    """``n`` distinct plain gene symbols of the census vocabulary, in random order."""
    from scvi_scgpt.data import GeneVocab

    tokens = [t for t in GeneVocab.census().tokens if re.fullmatch(r"[A-Z][A-Z0-9]{1,7}", t)]
    return list(rng.choice(np.asarray(tokens, dtype=object), size=n, replace=False))


def simulate(
    n_cells: int = 1500,
    n_genes: int = 1000,
    n_types: int = 5,
    n_batches: int = 3,
    *,
    n_markers: int = 30,
    n_batch_genes: int = 40,
    batch_sd: float = 0.6,
    library_means: tuple[float, ...] = (1500.0, 3500.0, 7000.0),
    composition: np.ndarray | None = None,
    seed: int = 0,
):
    """Simulate an AnnData: counts in ``X`` (CSR int32), ``obs['batch']``, ``obs['cell_type']``.

    ``uns['simulation']`` records the parameters; ``var['marker_of']`` and ``var['batch_gene_of']``
    name the type / batch each gene marks (empty string if none).
    """
    import anndata
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    comp = DEFAULT_COMPOSITION if composition is None else np.asarray(composition, dtype=float)
    if comp.shape != (n_batches, n_types):
        raise ValueError(f"composition must be {n_batches} x {n_types}.")
    comp = comp / comp.sum(1, keepdims=True)
    genes = census_symbols(n_genes, rng)

    log_p = rng.normal(0.0, 1.2, n_genes)
    # cell-type log fold changes
    type_lfc = np.zeros((n_types, n_genes))
    marker_of = np.full(n_genes, "", dtype=object)
    perm = rng.permutation(n_genes)
    pos = 0
    up_sets = []
    for t in range(n_types):
        if t == 1:  # related to type 0: half of its up-markers shared
            shared = up_sets[0][: n_markers // 2]
            own = perm[pos : pos + n_markers - len(shared)]
            pos += len(own)
            up = np.concatenate([shared, own])
        else:
            up = perm[pos : pos + n_markers]
            pos += n_markers
        down = perm[pos : pos + n_markers // 2]
        pos += n_markers // 2
        up_sets.append(up)
        type_lfc[t, up] = rng.normal(1.6, 0.4, len(up))
        type_lfc[t, down] = -rng.normal(1.0, 0.3, len(down))
        for g in up:
            marker_of[g] = f"type{t}" if not marker_of[g] else marker_of[g] + f",type{t}"
    # batch log fold changes: global gene-wise factor + batch-specific genes
    batch_lfc = rng.normal(0.0, batch_sd, (n_batches, n_genes))
    batch_gene_of = np.full(n_genes, "", dtype=object)
    for b in range(n_batches):
        g = perm[pos : pos + n_batch_genes]
        pos += n_batch_genes
        batch_lfc[b, g] += rng.normal(2.0, 0.3, len(g))
        batch_gene_of[g] = f"batch{b}"
    theta = np.exp(rng.normal(np.log(4.0), 0.5, n_genes))

    # cells
    per_batch = np.full(n_batches, n_cells // n_batches)
    per_batch[: n_cells - per_batch.sum()] += 1
    batch = np.repeat(np.arange(n_batches), per_batch)
    ctype = np.concatenate(
        [rng.choice(n_types, size=n, p=comp[b]) for b, n in enumerate(per_batch)]
    )
    lib = np.exp(rng.normal(np.log(np.asarray(library_means)[batch]), 0.35))
    logits = log_p[None, :] + type_lfc[ctype] + batch_lfc[batch]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    mean = lib[:, None] * p
    lam = mean * rng.gamma(theta[None, :], 1.0 / theta[None, :], size=mean.shape)
    counts = rng.poisson(lam).astype(np.int32)

    obs = pd.DataFrame(
        {
            "batch": pd.Categorical([f"batch{b}" for b in batch]),
            "cell_type": pd.Categorical([f"type{t}" for t in ctype]),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(
        {"marker_of": marker_of.astype(str), "batch_gene_of": batch_gene_of.astype(str)},
        index=pd.Index(genes, dtype=str),
    )
    adata = anndata.AnnData(sp.csr_matrix(counts), obs=obs, var=var)
    adata.uns["simulation"] = {
        "n_cells": n_cells,
        "n_genes": n_genes,
        "n_types": n_types,
        "n_batches": n_batches,
        "n_markers": n_markers,
        "n_batch_genes": n_batch_genes,
        "batch_sd": batch_sd,
        "library_means": list(library_means),
        "composition": comp.tolist(),
        "seed": seed,
    }
    return adata
