"""An unperturbed single-cell atlas from one gene regulatory network, with its truth stored.

The pretraining counterpart of :func:`simulate_perturbseq` (same network and count model):
cell types are different activity patterns of the master regulators of one shared GRN; the
rest of the network follows through its signed edges; genes outside the GRN vary on their
own. Everything a pretrained model could learn is known: the edges, the programmes
(targets sharing their strongest regulator), the cell types.
"""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scvi_scgpt.datasets._simulate import (
    _activities,
    _gene_names,
    _grn,
    _n_masters,
    _sample_counts,
    _strongest_edges,
)

_CHUNK = 4096  # cells generated at a time (bounds memory for large atlases)


def simulate_atlas(
    *,
    n_cells: int = 20_000,
    n_genes: int = 2_000,
    n_grn_genes: int = 300,
    n_regulators: int = 30,
    n_master_regulators: int | None = None,
    n_cell_types: int = 6,
    cell_type_shift: float = 1.0,
    activation_fraction: float = 0.75,
    regulator_noise: float = 0.5,
    target_noise: float = 0.2,
    background_noise: float = 0.3,
    library_size: float = 3000.0,
    library_size_sd: float = 0.35,
    dispersion: float = 5.0,
    dropout: float = 0.2,
    gene_names: Sequence[str] | None = None,
    seed: int = 0,
) -> ad.AnnData:
    """Simulate an unperturbed atlas: cell types as activity patterns over one known GRN.

    Genes ``0 .. n_grn_genes - 1`` form the network of :func:`simulate_perturbseq`
    (regulators first, a hierarchy under ``n_master_regulators`` masters, every target
    with one or two signed regulators). Each cell type shifts the masters' log activities by
    its own random offset (scale ``cell_type_shift``), which propagates through the edges;
    per-cell noise (``regulator_noise``, ``target_noise``) propagates too, so co-expression
    carries the edges. The other ``n_genes - n_grn_genes`` genes have independent log-normal
    noise (``background_noise``) and no cell-type effect. Counts: negative binomial around
    log-normal library sizes, then mean-dependent dropout, as :func:`simulate_perturbseq`.
    The same ``seed`` gives the same data; generation is vectorized per gene over chunks of
    cells (about 10 s for the default 20,000 cells x 2,000 genes on 2 cores).

    Parameters
    ----------
    n_cells, n_genes
        Size of the atlas.
    n_grn_genes, n_regulators, n_master_regulators
        Genes in the network, of which regulators (default masters: a quarter of them).
    n_cell_types, cell_type_shift
        Cell types (``"type0"``, ...; drawn uniformly per cell) and the scale of their
        master-regulator offsets.
    activation_fraction, regulator_noise, target_noise
        As in :func:`simulate_perturbseq`.
    background_noise
        Standard deviation of the log activity of genes outside the network.
    library_size, library_size_sd, dispersion, dropout
        Count model, as in :func:`simulate_perturbseq`.
    gene_names
        ``n_genes`` unique names (default ``TF00``.. regulators, ``G0000``.. network
        targets, ``B0000``.. background genes); pass vocabulary symbols to use a pretrained
        vocabulary.
    seed
        Random seed.

    Returns
    -------
    AnnData
        Cells x genes:

        - ``X``: integer counts (float32 CSR), the input :meth:`SCGPT.setup_anndata` expects;
        - ``obs["cell_type"]``, ``obs["total_counts"]``;
        - ``var["is_regulator"]``, ``var["in_grn"]``, ``var["programme"]`` (a target's
          strongest regulator, i.e. its co-regulated module; missing outside the network and
          for master regulators);
        - ``uns["grn"]``: the true edges (``source``, ``target``, ``weight``; positive
          activates); ``uns["cell_type_offsets"]``: ``{type: offsets of the masters}``;
          ``uns["simulation"]``: the parameters.
    """
    rng = np.random.default_rng(seed)
    n_cells, n_genes, n_grn, n_reg = (
        int(n_cells),
        int(n_genes),
        int(n_grn_genes),
        int(n_regulators),
    )
    if not 1 <= n_reg < n_grn <= n_genes:
        raise ValueError(
            f"Need 1 <= n_regulators ({n_reg}) < n_grn_genes ({n_grn}) <= n_genes ({n_genes})."
        )
    n_master = _n_masters(n_master_regulators, n_reg)
    if n_cells < 1 or n_cell_types < 1:
        raise ValueError("n_cells and n_cell_types must be >= 1.")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout={dropout} must be in [0, 1).")
    default = (
        [f"TF{i:02d}" for i in range(n_reg)]
        + [f"G{i:04d}" for i in range(n_grn - n_reg)]
        + [f"B{i:04d}" for i in range(n_genes - n_grn)]
    )
    names = _gene_names(gene_names, n_genes, default)
    edges = _grn(rng, n_grn, n_reg, n_master, float(activation_fraction), names[:n_grn])
    base = rng.lognormal(0.0, 1.0, size=n_genes)
    base /= base.sum()
    type_offsets = rng.normal(0.0, float(cell_type_shift), size=(int(n_cell_types), n_master))
    types = rng.integers(0, int(n_cell_types), size=n_cells)

    blocks, libraries, scale = [], [], None
    for start in range(0, n_cells, _CHUNK):
        chunk = types[start : start + _CHUNK]
        log_a = np.empty((len(chunk), n_genes))
        log_a[:, :n_grn] = _activities(
            rng, edges, n_grn, n_master, n_reg, type_offsets[chunk], (), 0.5,
            float(regulator_noise), float(target_noise),
        )  # fmt: skip
        log_a[:, n_grn:] = rng.normal(0.0, float(background_noise), (len(chunk), n_genes - n_grn))
        weights = base * np.exp(log_a)
        if scale is None:  # the first chunk fixes the mRNA scale
            scale = float(weights.sum(1).mean())
        weights /= scale
        counts = _sample_counts(rng, weights, library_size, library_size_sd, dispersion, dropout)
        blocks.append(counts)
        libraries.append(np.asarray(counts.sum(1)).ravel())

    strongest = _strongest_edges(edges)
    programme = pd.Series(pd.NA, index=names, dtype=object)
    is_target = strongest["target_idx"].to_numpy() >= n_reg
    programme.iloc[strongest["target_idx"].to_numpy()[is_target]] = strongest["source"].to_numpy()[
        is_target
    ]
    var = pd.DataFrame(
        {
            "is_regulator": np.arange(n_genes) < n_reg,
            "in_grn": np.arange(n_genes) < n_grn,
            "programme": pd.Categorical(programme.to_numpy(), categories=list(names[:n_reg])),
        },
        index=names,
    )
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type{t}" for t in types]),
            "total_counts": np.concatenate(libraries).astype(np.float32),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    adata = ad.AnnData(sp.vstack(blocks, format="csr"), obs=obs, var=var)
    adata.uns["grn"] = edges[["source", "target", "weight"]].reset_index(drop=True)
    adata.uns["cell_type_offsets"] = {
        f"type{t}": type_offsets[t].tolist() for t in range(int(n_cell_types))
    }
    adata.uns["simulation"] = {
        "n_cells": n_cells,
        "n_genes": n_genes,
        "n_grn_genes": n_grn,
        "n_regulators": n_reg,
        "n_master_regulators": n_master,
        "n_cell_types": int(n_cell_types),
        "cell_type_shift": float(cell_type_shift),
        "activation_fraction": float(activation_fraction),
        "regulator_noise": float(regulator_noise),
        "target_noise": float(target_noise),
        "background_noise": float(background_noise),
        "library_size": float(library_size),
        "library_size_sd": float(library_size_sd),
        "dispersion": float(dispersion),
        "dropout": float(dropout),
        "seed": int(seed),
    }
    return adata
