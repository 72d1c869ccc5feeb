"""Gene programs: Leiden clusters of a gene network, and their per-cell scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp


def gene_programs(
    graph: sp.spmatrix | np.ndarray,
    genes: Sequence[str] | pd.Index,
    *,
    resolution: float = 1.0,
    min_program_size: int = 5,
    seed: int = 0,
) -> pd.Series:
    """Leiden communities of a weighted gene graph (scanpy, igraph backend).

    Parameters
    ----------
    graph
        Square, symmetric, non-negative adjacency matrix over ``genes``.
    genes
        Gene names, in the order of the graph's rows.
    resolution
        Leiden resolution.
    min_program_size
        Communities with fewer genes become missing (unassigned).
    seed
        Random state of the Leiden run.

    Returns
    -------
    Categorical Series indexed by gene: programs named ``"0"``, ``"1"``, ... by decreasing
    size (ties by first gene), missing for genes of small communities.
    """
    import scanpy as sc

    genes = pd.Index([str(g) for g in genes])
    graph = sp.csr_matrix(graph, dtype=np.float64)
    if graph.shape != (len(genes), len(genes)):
        raise ValueError(f"Graph of shape {graph.shape} does not match {len(genes)} genes.")
    holder = ad.AnnData(obs=pd.DataFrame(index=genes))
    sc.tl.leiden(
        holder,
        resolution=float(resolution),
        adjacency=graph,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=int(seed),
        key_added="cluster",
    )
    clusters = holder.obs["cluster"].astype(str).to_numpy()
    sizes = pd.Series(clusters).value_counts()
    first = {c: i for i, c in reversed(list(enumerate(clusters)))}
    order = sorted(sizes.index, key=lambda c: (-sizes[c], first[c]))
    kept = [c for c in order if sizes[c] >= int(min_program_size)]
    names = {c: str(i) for i, c in enumerate(kept)}
    labels = [names.get(c) for c in clusters]
    return pd.Series(
        pd.Categorical(labels, categories=[str(i) for i in range(len(kept))]),
        index=genes,
        name="program",
    )


def program_genes(
    programs: ad.AnnData | pd.Series | Mapping[str, Sequence[str]],
) -> dict[str, list[str]]:
    """Genes of each program.

    Parameters
    ----------
    programs
        A gene network AnnData (``obs["program"]``), a Series gene -> program, or a mapping
        program -> genes (returned as lists).

    Returns
    -------
    ``{program: [genes]}`` in program order; unassigned genes are left out.
    """
    if isinstance(programs, ad.AnnData):
        if "program" not in programs.obs:
            raise ValueError("The gene network has no obs['program'] column.")
        programs = programs.obs["program"]
    if isinstance(programs, pd.Series):
        labels = programs.dropna()
        order = (
            list(labels.cat.categories)
            if isinstance(labels.dtype, pd.CategoricalDtype)
            else list(pd.unique(labels))
        )
        out = {str(p): [str(g) for g in labels.index[labels == p]] for p in order}
        return {p: g for p, g in out.items() if g}
    if isinstance(programs, Mapping):
        out = {}
        for name, genes in programs.items():
            if isinstance(genes, str):
                raise TypeError(f"Program {name!r} must be a list of genes, not a string.")
            out[str(name)] = [str(g) for g in genes]
        return out
    raise TypeError(
        "programs must be a gene network AnnData, a Series gene -> program or a mapping "
        f"program -> genes, not {type(programs).__name__}."
    )


def score_gene_programs(
    adata: ad.AnnData,
    programs: ad.AnnData | pd.Series | Mapping[str, Sequence[str]],
    *,
    key_added: str = "program_score",
    layer: str | None = None,
    min_genes: int = 1,
    scale: bool = True,
    seed: int = 0,
) -> list[str]:
    """Per-cell score of each gene program (scanpy ``score_genes``).

    As the official tutorial, each program is scored with :func:`scanpy.tl.score_genes`
    (mean expression minus a matched random control set) and, with ``scale``, min-max scaled
    to ``[0, 1]`` over the cells.

    Parameters
    ----------
    adata
        Cells x genes; values should be log-normalised expression.
    programs
        A gene network AnnData (``obs["program"]``), a Series gene -> program, or a mapping
        program -> genes.
    key_added
        Prefix of the written columns.
    layer
        Layer to score instead of ``X`` (``adata.raw`` is never used).
    min_genes
        Programs with fewer genes present in ``adata`` are skipped (they are listed in a
        warning).
    scale
        Min-max scale each score to ``[0, 1]``.
    seed
        Random state of the control gene sets.

    Returns
    -------
    The names of the written columns. Writes ``adata.obs[f"{key_added}_{program}"]`` (float)
    for each scored program and nothing else.
    """
    import warnings

    import scanpy as sc

    if not isinstance(adata, ad.AnnData):
        raise TypeError(f"adata must be an AnnData, not {type(adata).__name__}.")
    if layer is not None and layer not in adata.layers:
        raise ValueError(f"Layer {layer!r} not in adata.layers ({list(adata.layers)}).")
    sets = program_genes(programs)
    if not sets:
        raise ValueError("No gene program to score.")
    present = set(adata.var_names.astype(str))
    usable = {p: [g for g in genes if g in present] for p, genes in sets.items()}
    skipped = [p for p, genes in usable.items() if len(genes) < max(int(min_genes), 1)]
    if len(skipped) == len(usable):
        raise ValueError(
            f"No program has at least {max(int(min_genes), 1)} gene(s) in adata.var_names."
        )
    if skipped:
        warnings.warn(
            f"Skipped {len(skipped)} program(s) with too few genes in adata: {skipped[:10]}.",
            UserWarning,
            stacklevel=2,
        )
    holder = ad.AnnData(
        X=adata.layers[layer] if layer is not None else adata.X,
        obs=pd.DataFrame(index=adata.obs_names.copy()),
        var=pd.DataFrame(index=adata.var_names.astype(str)),
    )
    scores = {}
    for program, genes in usable.items():
        if program in skipped:
            continue
        sc.tl.score_genes(holder, genes, score_name="score", random_state=int(seed), use_raw=False)
        values = holder.obs["score"].to_numpy(dtype=np.float64)
        if scale:
            span = values.max() - values.min()
            values = (values - values.min()) / span if span > 0 else np.zeros_like(values)
        scores[f"{key_added}_{program}"] = values
    for column, values in scores.items():
        adata.obs[column] = values
    return list(scores)
