"""Gene similarity networks from gene embeddings (cosine kNN graph or threshold)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scvi_scgpt.tl._programs import gene_programs

if TYPE_CHECKING:
    import networkx as nx

SIMILARITY_KEY = "similarity"
PROGRAM_KEY = "program"


def as_embedding_frame(embeddings: pd.DataFrame | Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Validate a gene-embedding table: unique gene names, finite numbers, 2-d.

    Parameters
    ----------
    embeddings
        A DataFrame (genes as index, one column per dimension) or a mapping gene -> vector.

    Returns
    -------
    A float32 DataFrame indexed by gene (a copy; the input is never modified).
    """
    if isinstance(embeddings, Mapping):
        dims = {np.asarray(v).reshape(-1).shape[0] for v in embeddings.values()}
        if len(dims) > 1:
            raise ValueError(f"Gene embeddings have mixed dimensions: {sorted(dims)}.")
        embeddings = pd.DataFrame(
            {str(k): np.asarray(v, dtype=np.float64).reshape(-1) for k, v in embeddings.items()}
        ).T
    if not isinstance(embeddings, pd.DataFrame):
        raise TypeError(
            "Gene embeddings must be a pandas DataFrame (genes as index) or a mapping "
            f"gene -> vector, not {type(embeddings).__name__}."
        )
    if embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
        raise ValueError(f"Gene-embedding table is empty (shape {embeddings.shape}).")
    index = embeddings.index.astype(str)
    duplicated = index[index.duplicated()].unique()
    if len(duplicated):
        raise ValueError(
            f"{len(duplicated)} gene(s) appear more than once in the gene-embedding table: "
            f"{list(duplicated[:10])}."
        )
    try:
        values = embeddings.to_numpy(dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"Gene embeddings must be numeric: {err}") from err
    if not np.isfinite(values).all():
        bad = index[~np.isfinite(values).all(1)]
        raise ValueError(
            f"{len(bad)} gene(s) have missing or non-finite embedding values (mixed dimensions?): "
            f"{list(bad[:10])}."
        )
    return pd.DataFrame(values, index=pd.Index(index, name="gene"), columns=embeddings.columns)


def cosine_similarity(embeddings: np.ndarray) -> np.ndarray:
    """Cosine similarity between the rows of ``embeddings``.

    Parameters
    ----------
    embeddings
        ``(n_genes, d)`` array without all-zero rows.

    Returns
    -------
    ``(n_genes, n_genes)`` float32 matrix with ones on the diagonal.
    """
    x = _unit_rows(embeddings)
    sim = x @ x.T
    np.clip(sim, -1.0, 1.0, out=sim)
    np.fill_diagonal(sim, 1.0)
    return sim


def _unit_rows(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1)
    if (norms == 0).any():
        raise ValueError(
            f"{int((norms == 0).sum())} embedding row(s) are all zeros; cosine similarity is "
            "undefined for them."
        )
    return x / norms[:, None]


def similarity_graph(
    embeddings: np.ndarray,
    *,
    n_neighbors: int = 15,
    threshold: float | None = None,
    chunk_size: int = 1024,
) -> sp.csr_matrix:
    """Sparse, symmetric, positive cosine-similarity graph without self-loops.

    Computed in blocks of ``chunk_size`` genes, so memory grows with ``chunk_size x n_genes``
    (plus the kept edges), never ``n_genes x n_genes``.

    Parameters
    ----------
    embeddings
        ``(n_genes, d)`` gene embeddings.
    n_neighbors
        Each gene keeps its ``n_neighbors`` most similar genes; the graph is the union
        (symmetrised by the larger weight). Ignored when ``threshold`` is set.
    threshold
        Keep every pair with similarity ``>= threshold`` instead (the official
        ``generate_network(threshold)``, but without self-loops).
    chunk_size
        Genes per block.

    Returns
    -------
    CSR matrix of the kept similarities (non-positive similarities are dropped).
    """
    x = _unit_rows(embeddings)
    n = x.shape[0]
    if threshold is not None:
        if not 0.0 <= float(threshold) < 1.0:
            raise ValueError(f"threshold={threshold} must be in [0, 1).")
    elif not 1 <= int(n_neighbors) < n:
        raise ValueError(
            f"n_neighbors={n_neighbors} needs at least {int(n_neighbors) + 1} genes; "
            f"got {n}. Pass fewer neighbours or more genes."
        )
    k = int(n_neighbors)
    rows_all, cols_all, vals_all = [], [], []
    for start in range(0, n, int(chunk_size)):
        block = np.clip(x[start : start + int(chunk_size)] @ x.T, -1.0, 1.0)
        local = np.arange(block.shape[0])
        block[local, start + local] = -np.inf  # no self-loops
        if threshold is not None:
            rows, cols = np.nonzero(block >= float(threshold))
        else:
            cols = np.argpartition(-block, k - 1, axis=1)[:, :k].ravel()
            rows = np.repeat(local, k)
        rows_all.append(rows + start)
        cols_all.append(cols)
        vals_all.append(block[rows, cols])
    rows, cols = np.concatenate(rows_all), np.concatenate(cols_all)
    graph = sp.csr_matrix((np.concatenate(vals_all), (rows, cols)), shape=(n, n))
    if threshold is None:
        graph = graph.maximum(graph.T).tocsr()
    graph.data[graph.data <= 0] = 0.0
    graph.eliminate_zeros()
    graph.sort_indices()
    return graph.astype(np.float32)


def gene_similarity_network(
    embeddings: pd.DataFrame | Mapping[str, np.ndarray],
    *,
    n_neighbors: int = 15,
    threshold: float | None = None,
    resolution: float = 1.0,
    min_program_size: int = 5,
    seed: int = 0,
) -> ad.AnnData:
    """Genes-as-observations network of cosine similarities and Leiden gene programs.

    Parameters
    ----------
    embeddings
        Gene embeddings: a DataFrame (genes as index) or a mapping gene -> vector.
    n_neighbors
        Neighbours per gene of the kNN graph (scanpy's default, 15).
    threshold
        Keep all pairs with cosine similarity ``>= threshold`` instead of a kNN graph.
    resolution
        Leiden resolution (higher: more, smaller programs; the official tutorial uses 40 on
        thousands of genes).
    min_program_size
        Programs with fewer genes are left unassigned (missing), as the official tutorial
        keeps programs of at least 5 genes.
    seed
        Leiden random state.

    Returns
    -------
    A new AnnData with ``obs_names`` = genes and

    - ``X``: the gene embeddings (float32),
    - ``obsp["similarity"]``: sparse symmetric cosine similarities of the kept edges,
    - ``obs["program"]``: categorical gene program (``"0"`` the largest; missing when the
      gene's Leiden cluster has fewer than ``min_program_size`` genes),
    - ``uns["params"]``: the parameters above.
    """
    frame = as_embedding_frame(embeddings)
    if int(min_program_size) < 1:
        raise ValueError(f"min_program_size={min_program_size} must be at least 1.")
    if float(resolution) <= 0:
        raise ValueError(f"resolution={resolution} must be positive.")
    graph = similarity_graph(frame.to_numpy(), n_neighbors=n_neighbors, threshold=threshold)
    network = ad.AnnData(
        frame.to_numpy(dtype=np.float32),
        obs=pd.DataFrame(index=frame.index.copy()),
        var=pd.DataFrame(index=[str(c) for c in frame.columns]),
    )
    network.obsp[SIMILARITY_KEY] = graph
    network.obs[PROGRAM_KEY] = gene_programs(
        graph,
        frame.index,
        resolution=resolution,
        min_program_size=min_program_size,
        seed=seed,
    )
    network.uns["params"] = {
        "metric": "cosine",
        "graph": "threshold" if threshold is not None else "knn",
        "n_neighbors": int(n_neighbors),
        "threshold": float(threshold) if threshold is not None else None,
        "resolution": float(resolution),
        "min_program_size": int(min_program_size),
        "seed": int(seed),
    }
    return network


def _check_network(network: ad.AnnData, key: str) -> sp.csr_matrix:
    if not isinstance(network, ad.AnnData) or key not in network.obsp:
        raise ValueError(
            f"Expected a gene network AnnData with obsp[{key!r}] (from gene_similarity_network "
            "or SCGPT.gene_network)."
        )
    return sp.csr_matrix(network.obsp[key])


def network_edges(
    network: ad.AnnData, *, min_weight: float | None = None, key: str = SIMILARITY_KEY
) -> pd.DataFrame:
    """Undirected edge list of a gene network, strongest first.

    Parameters
    ----------
    network
        Gene network AnnData (``obsp[key]``).
    min_weight
        Drop edges weaker than this.
    key
        ``obsp`` key of the weights.

    Returns
    -------
    DataFrame with columns ``source``, ``target``, ``weight`` (each pair once).
    """
    graph = sp.triu(_check_network(network, key), k=1).tocoo()
    genes = np.asarray(network.obs_names)
    edges = pd.DataFrame(
        {"source": genes[graph.row], "target": genes[graph.col], "weight": graph.data}
    )
    if min_weight is not None:
        edges = edges[edges["weight"] >= float(min_weight)]
    return edges.sort_values("weight", ascending=False, kind="stable").reset_index(drop=True)


def network_to_networkx(
    network: ad.AnnData,
    *,
    min_weight: float | None = None,
    program: str | None = None,
    key: str = SIMILARITY_KEY,
) -> nx.Graph:
    """Export a gene network to :mod:`networkx`.

    Parameters
    ----------
    network
        Gene network AnnData (``obsp[key]``, optional ``obs["program"]``).
    min_weight
        Drop edges weaker than this.
    program
        Keep only the genes of this program.
    key
        ``obsp`` key of the weights.

    Returns
    -------
    An undirected :class:`networkx.Graph`; nodes carry a ``program`` attribute, edges a
    ``weight``.
    """
    import networkx as nx

    edges = network_edges(network, min_weight=min_weight, key=key)
    programs = network.obs[PROGRAM_KEY] if PROGRAM_KEY in network.obs else None
    nodes = list(network.obs_names)
    if program is not None:
        if programs is None:
            raise ValueError("The network has no obs['program'] column.")
        known = set(programs.dropna().astype(str))
        if str(program) not in known:
            raise ValueError(f"Program {program!r} not in the network; known: {sorted(known)}.")
        nodes = list(programs.index[programs.astype(str) == str(program)])
        keep = set(nodes)
        edges = edges[edges["source"].isin(keep) & edges["target"].isin(keep)]
    graph = nx.Graph()
    for gene in nodes:
        label = None if programs is None or pd.isna(programs[gene]) else str(programs[gene])
        graph.add_node(gene, program=label)
    graph.add_weighted_edges_from(edges.itertuples(index=False, name=None))
    return graph
