"""UMAP panels of several cell embeddings side by side."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from anndata import AnnData


def embedding_panels(
    adata: AnnData,
    representations: Sequence[str],
    color: str | Sequence[str],
    *,
    titles: Sequence[str] | None = None,
    n_neighbors: int = 15,
    seed: int = 0,
    panel_size: float = 4.2,
):
    """One UMAP per representation (rows: ``color`` keys, columns: representations).

    The neighbour graph and UMAP of each ``adata.obsm`` representation are computed on a
    private copy, so ``adata`` is not modified.

    Parameters
    ----------
    adata
        Cells with the representations in ``obsm``.
    representations
        ``adata.obsm`` keys (e.g. ``["X_scGPT", "X_pca"]``).
    color
        ``adata.obs`` column(s) to colour by (one row of panels each).
    titles
        Column titles (default: the representation keys).
    n_neighbors, seed
        Neighbour graph size and UMAP seed.
    panel_size
        Size of each panel in inches.

    Returns
    -------
    The matplotlib figure.
    """
    import matplotlib.pyplot as plt
    import scanpy as sc

    colors = [color] if isinstance(color, str) else list(color)
    missing = [k for k in representations if k not in adata.obsm]
    missing += [c for c in colors if c not in adata.obs]
    if missing:
        raise KeyError(f"Not in adata.obsm / adata.obs: {missing}.")
    titles = list(titles) if titles is not None else list(representations)
    fig, axes = plt.subplots(
        len(colors),
        len(representations),
        figsize=(panel_size * len(representations), panel_size * len(colors)),
        squeeze=False,
    )
    for j, key in enumerate(representations):
        view = AnnData(np.zeros((adata.n_obs, 0), dtype=np.float32), obs=adata.obs[colors].copy())
        view.obsm["rep"] = np.asarray(adata.obsm[key])
        sc.pp.neighbors(view, use_rep="rep", n_neighbors=n_neighbors, random_state=seed)
        sc.tl.umap(view, random_state=seed)
        for i, c in enumerate(colors):
            legend = "right margin" if j == len(representations) - 1 else "none"
            sc.pl.umap(view, color=c, ax=axes[i, j], show=False, frameon=False, legend_loc=legend)
            axes[i, j].set_title(f"{titles[j]} — {c}" if len(colors) > 1 else titles[j])
    fig.tight_layout()
    return fig
