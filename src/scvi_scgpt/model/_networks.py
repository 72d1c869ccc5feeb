"""Gene embeddings, gene networks and attention-based targets of perturbed genes."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData

from scvi_scgpt._constants import TOKEN_KEYS
from scvi_scgpt.tl import (
    AttentionAccumulator,
    attention_target_table,
    gene_similarity_network,
    normalize_attention,
)
from scvi_scgpt.tl._conditions import parse_condition

logger = logging.getLogger(__name__)

NETWORK_METHODS = ("embedding", "contextual")
#: Raw attention floats per batch in :meth:`attention_targets` (bounds its memory).
_ATTENTION_BUDGET = 2**25


def _listed(names: Sequence[str], limit: int = 10) -> str:
    names = list(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"{names[:limit]}{more}"


class GeneNetworkMixin:
    """``gene_embeddings``, ``gene_network`` and ``attention_targets``."""

    # ------------------------------------------------------------------ genes
    def _vocab_gene_ids(self, genes: Sequence[str]) -> np.ndarray:
        genes = [str(g) for g in genes]
        if len(set(genes)) != len(genes):
            raise ValueError("genes must be unique.")
        ids = self.vocab_.lookup(genes)
        missing = [g for g, i in zip(genes, ids) if i < 0]
        if missing:
            raise ValueError(
                f"{len(missing)} gene(s) are not in the model vocabulary: {_listed(missing)}."
            )
        return ids

    def _default_genes(self) -> list[str]:
        subset = getattr(self, "gene_subset_", None)
        if subset is not None:
            return [str(g) for g in subset]
        specials = {self.vocab_.pad_id, self.vocab_.cls_id, self.vocab_.eoc_id}
        return [t for i, t in enumerate(self.vocab_.tokens) if i not in specials]

    def _adata_genes(self, adata: AnnData, genes: Sequence[str] | None) -> tuple[list, np.ndarray]:
        """Vocabulary genes of ``adata`` (or the requested ones) and the columns' vocab ids."""
        column_ids = self._column_vocab_ids(adata)
        names, source = self._gene_names(adata)
        names = np.asarray(names).astype(str)
        usable = {n: i for n, i in zip(names, column_ids) if i >= 0}
        if genes is None:
            return [n for n in names if n in usable], column_ids
        genes = [str(g) for g in genes]
        if len(set(genes)) != len(genes):
            raise ValueError("genes must be unique.")
        missing = [g for g in genes if g not in usable]
        if missing:
            raise ValueError(
                f"{len(missing)} gene(s) are not genes of {source} in the model vocabulary: "
                f"{_listed(missing)}."
            )
        return genes, column_ids

    # ------------------------------------------------------------------ embeddings
    @torch.inference_mode()
    def gene_embeddings(
        self,
        genes: Sequence[str] | None = None,
        *,
        adata: AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        batch_size: int | None = None,
        precision: Literal["32", "bf16", "16"] = "32",
        max_tokens_per_batch: int | None = 8192,
        progress_bar: bool | None = None,
    ) -> pd.DataFrame:
        """Gene embeddings: the gene-token embeddings, or contextual ones from cells.

        Without ``adata``: the model's gene-token embeddings (the embedding table followed by
        its LayerNorm, ``model.encoder`` in the official GRN tutorial). With ``adata``: the
        contextual embedding of each gene, the mean transformer output at its token over the
        cells that express it (one batched pass, memory bounded by ``batch_size`` and
        ``max_tokens_per_batch``).

        Parameters
        ----------
        genes
            Genes to return (default: without ``adata``, every vocabulary gene, or the model's
            training genes after training on a subset; with ``adata``, its vocabulary genes).
        adata
            AnnData set up with :meth:`setup_anndata` for contextual embeddings.
        indices
            Cells of ``adata`` to use (default: all).
        batch_size, precision, max_tokens_per_batch, progress_bar
            Batching of the contextual pass (as :meth:`get_latent_representation`).

        Returns
        -------
        DataFrame ``genes x d_model`` (float32). With ``adata``, genes that no cell
        expresses are dropped (with a warning). Nothing is written to ``adata``.
        """
        self.module.eval()
        if adata is None:
            genes = self._default_genes() if genes is None else [str(g) for g in genes]
            ids = torch.as_tensor(self._vocab_gene_ids(genes), device=self.device)
            rows = [
                self.module.encoder(ids[s : s + 8192]).float().cpu()
                for s in range(0, len(ids), 8192)
            ]
            values = torch.cat(rows).numpy() if rows else np.zeros((0, 0), np.float32)
            return pd.DataFrame(values, index=pd.Index(genes, name="gene"))
        adata = self._validate_anndata(adata)
        genes, column_ids = self._adata_genes(adata, genes)
        cells = self._as_indices(adata, indices)
        gene_ids = self._vocab_gene_ids(genes)
        lookup = torch.full((len(self.vocab_),), -1, dtype=torch.long, device=self.device)
        lookup[torch.as_tensor(gene_ids, device=self.device)] = torch.arange(
            len(genes), device=self.device
        )
        d = self.architecture.d_model
        sums = torch.zeros((len(genes), d), dtype=torch.float64, device=self.device)
        counts = torch.zeros(len(genes), dtype=torch.float64, device=self.device)
        module = self.module

        def step(t, _positions):
            out = module.inference(**module._get_inference_input(t))
            rows = lookup[t[TOKEN_KEYS.GENE_IDS]]
            keep = (rows >= 0) & ~t[TOKEN_KEYS.PADDING_MASK] & (t[TOKEN_KEYS.VALUES] > 0)
            keep[:, 0] = False  # <cls>
            sums.index_add_(0, rows[keep], out["encoded"][keep].double())
            counts.index_add_(0, rows[keep], torch.ones_like(rows[keep], dtype=torch.float64))

        for _ in self._run_batches(
            adata,
            cells,
            step,
            batch_size=batch_size,
            precision=precision,
            max_tokens=max_tokens_per_batch,
            progress_bar=progress_bar,
            desc="Contextual gene embeddings",
            column_ids=column_ids,
        ):
            pass
        counts = counts.cpu().numpy()
        unseen = [g for g, c in zip(genes, counts) if c == 0]
        if unseen:
            warnings.warn(
                f"{len(unseen)} gene(s) are expressed in none of the cells and are left out: "
                f"{_listed(unseen)}.",
                UserWarning,
                stacklevel=2,
            )
        mean = (sums.cpu().numpy() / np.maximum(counts, 1)[:, None]).astype(np.float32)
        seen = counts > 0
        return pd.DataFrame(mean[seen], index=pd.Index(np.asarray(genes)[seen], name="gene"))

    # ------------------------------------------------------------------ networks
    def gene_network(
        self,
        adata: AnnData | None = None,
        *,
        genes: Sequence[str] | None = None,
        method: Literal["embedding", "contextual"] = "embedding",
        n_neighbors: int = 15,
        threshold: float | None = None,
        resolution: float = 1.0,
        min_program_size: int = 5,
        key_added: str = "scgpt_gene_network",
        seed: int = 0,
        **embedding_kwargs,
    ) -> AnnData:
        """Gene network from gene-embedding similarity, with Leiden gene programs.

        Cosine similarities between gene embeddings (``method="embedding"``: the gene-token
        embeddings as in the official GRN tutorial; ``"contextual"``: the contextual
        embeddings from ``adata``'s cells), kept as a kNN graph or above ``threshold``
        (the official ``generate_network``), clustered into programs with Leiden (scanpy).

        Parameters
        ----------
        adata
            AnnData set up with :meth:`setup_anndata`. Its vocabulary genes are the default
            genes, and the result is also written to it (see Returns). Required by
            ``method="contextual"``.
        genes
            Genes of the network (default: ``adata``'s vocabulary genes, else every vocabulary
            gene or the model's training genes).
        method
            ``"embedding"`` or ``"contextual"``.
        n_neighbors, threshold, resolution, min_program_size, seed
            See :func:`scvi_scgpt.tl.gene_similarity_network`.
        key_added
            ``adata.uns`` key written when ``adata`` is given.
        **embedding_kwargs
            Passed to :meth:`gene_embeddings` (``batch_size``, ``precision``, ...).

        Returns
        -------
        A genes-as-observations AnnData (``obs_names`` = genes): ``X`` the gene embeddings,
        ``obsp["similarity"]`` the sparse cosine similarities, ``obs["program"]`` the
        programs (missing for genes of programs under ``min_program_size``),
        ``uns["params"]``. Export it with :func:`scvi_scgpt.tl.network_edges` or
        :func:`scvi_scgpt.tl.network_to_networkx`. When ``adata`` is given,
        ``adata.uns[key_added]`` is written and nothing else: a dict with ``genes``,
        ``similarity`` (CSR), ``programs`` (``""`` when unassigned) and ``params``.
        """
        if method not in NETWORK_METHODS:
            raise ValueError(f"method={method!r} must be one of {NETWORK_METHODS}.")
        if method == "contextual" and adata is None:
            raise ValueError("method='contextual' needs the cells: pass adata.")
        if adata is not None:
            adata = self._validate_anndata(adata)
            genes, _ = self._adata_genes(adata, genes)
        if genes is not None and threshold is None and len(genes) <= int(n_neighbors):
            raise ValueError(
                f"n_neighbors={n_neighbors} needs at least {int(n_neighbors) + 1} genes; got "
                f"{len(genes)}."
            )
        if method == "contextual":
            table = self.gene_embeddings(genes, adata=adata, **embedding_kwargs)
        else:
            table = self.gene_embeddings(genes)
        network = gene_similarity_network(
            table,
            n_neighbors=n_neighbors,
            threshold=threshold,
            resolution=resolution,
            min_program_size=min_program_size,
            seed=seed,
        )
        network.uns["params"]["method"] = method
        if adata is not None:
            programs = (
                network.obs["program"].astype(object).where(network.obs["program"].notna(), "")
            )
            adata.uns[key_added] = {
                "genes": np.asarray(network.obs_names, dtype=str),
                "similarity": sp.csr_matrix(network.obsp["similarity"]),
                "programs": np.asarray(programs, dtype=str),
                "params": dict(network.uns["params"]),
            }
        return network

    # ------------------------------------------------------------------ attention targets
    @torch.inference_mode()
    def attention_targets(
        self,
        adata: AnnData,
        *,
        groupby: str,
        control: str,
        perturbed: str | Sequence[str],
        layer: int = -1,
        mode: Literal["control", "perturbed", "difference"] = "difference",
        top_k: int | None = 20,
        genes: Sequence[str] | None = None,
        max_cells: int | None = None,
        batch_size: int | None = None,
        precision: Literal["32", "bf16", "16"] = "32",
        seed: int = 0,
        progress_bar: bool | None = None,
    ) -> pd.DataFrame:
        """Genes most influenced by each perturbed gene, from attention maps.

        The official attention-GRN procedure: every cell is tokenized with the same genes
        (zeros included), the raw per-head scores q·kᵀ of ``layer`` (no scaling, no softmax;
        ``<cls>`` left out) are rank-normalised along rows then columns, averaged over heads
        and over the cells of each condition. The score of gene ``g`` for a perturbed gene
        ``t`` is entry ``[g, t]`` (how much ``g`` attends to ``t``) of the control, perturbed
        or difference matrix; a double averages its genes' columns.

        Parameters
        ----------
        adata
            AnnData set up with :meth:`setup_anndata`.
        groupby
            ``adata.obs`` column of the conditions (e.g. ``"condition"``).
        control
            The control condition (e.g. ``"ctrl"``).
        perturbed
            One perturbed condition or a list; GEARS spelling (``"A+ctrl"``, ``"A+B"``), the
            perturbed genes are read from the name.
        layer
            Transformer layer (negative counts from the end).
        mode
            ``"difference"`` (perturbed minus control), ``"perturbed"`` or ``"control"``.
        top_k
            Genes kept per perturbation (``None``: all).
        genes
            Genes of the attention matrices (default: ``adata``'s vocabulary genes); must hold
            the perturbed genes.
        max_cells
            Use at most this many cells per condition (a seeded random subset).
        batch_size
            Cells per forward pass (default: as many as keep the raw scores of a batch under
            2**25 floats).
        precision, progress_bar
            As :meth:`get_latent_representation`.
        seed
            Seed of the ``max_cells`` subsets.

        Returns
        -------
        Long DataFrame with columns ``perturbation``, ``gene``, ``score``, ``rank`` (rank 1 =
        most influenced; the perturbed genes themselves are left out), ``top_k`` rows per
        perturbed condition. ``adata`` is not modified.
        """
        adata = self._validate_anndata(adata)
        if groupby not in adata.obs:
            raise ValueError(f"{groupby!r} is not a column of adata.obs.")
        conditions = [perturbed] if isinstance(perturbed, str) else list(perturbed)
        labels = adata.obs[groupby].astype(str).to_numpy()
        present = set(labels)
        absent = [c for c in [control, *conditions] if c not in present]
        if absent:
            raise ValueError(f"Condition(s) {absent} not found in adata.obs[{groupby!r}].")
        if not conditions:
            raise ValueError("No perturbed condition given.")
        targets = {c: parse_condition(c) for c in conditions}
        empty = [c for c, g in targets.items() if not g]
        if empty:
            raise ValueError(f"Condition(s) {empty} perturb no gene.")
        n_layers = self.architecture.n_layers
        if not -n_layers <= int(layer) < n_layers:
            raise ValueError(f"layer={layer} is outside the model's {n_layers} layers.")
        genes, column_ids = self._adata_genes(adata, genes)
        missing = sorted({g for t in targets.values() for g in t} - set(genes))
        if missing:
            raise ValueError(
                f"Perturbed gene(s) {missing} are not among the genes of the attention "
                "matrices (adata's vocabulary genes, or `genes`)."
            )
        names, _ = self._gene_names(adata)
        chosen = set(genes)
        column_ids = np.where(np.isin(np.asarray(names).astype(str), list(chosen)), column_ids, -1)
        # the matrices follow the column order of adata
        order = [str(n) for n, i in zip(names, column_ids) if i >= 0]
        n_genes = len(order)
        tokenizer = dataclasses.replace(
            self.tokenizer_config,
            include_zero_genes=True,
            max_seq_len=max(self.tokenizer_config.max_seq_len, n_genes + 1),
            allow_empty_cells=True,
        )
        heads = self.architecture.n_heads
        if batch_size is None:
            batch_size = int(max(1, min(64, _ATTENTION_BUDGET // (heads * n_genes * n_genes))))
        lookup = torch.full((len(self.vocab_),), -1, dtype=torch.long, device=self.device)
        lookup[torch.as_tensor(self.vocab_.lookup(order), device=self.device)] = torch.arange(
            n_genes, device=self.device
        )
        module = self.module
        module.eval()

        def step(t, _positions):
            if t[TOKEN_KEYS.PADDING_MASK].any():
                raise RuntimeError("Cells of unequal token lengths in attention_targets.")
            out = module.inference(
                t[TOKEN_KEYS.GENE_IDS],
                t[TOKEN_KEYS.VALUES],
                t[TOKEN_KEYS.PADDING_MASK],
                t.get(TOKEN_KEYS.BATCH),
                attention_layer=int(layer),
                attention_kinds=("raw",),
            )
            raw = out["attention"]["raw"][:, :, 1:, 1:].float()  # drop <cls>
            perm = lookup[t[TOKEN_KEYS.GENE_IDS][:, 1:]].argsort(dim=1)  # to column order
            b, h, m, _ = raw.shape
            raw = raw.gather(2, perm[:, None, :, None].expand(b, h, m, m))
            raw = raw.gather(3, perm[:, None, None, :].expand(b, h, m, m))
            return normalize_attention(raw).double().sum(0)

        accumulator = AttentionAccumulator(n_genes)
        rng = np.random.default_rng(seed)
        for condition in [control, *conditions]:
            cells = np.flatnonzero(labels == condition)
            if max_cells is not None and len(cells) > int(max_cells):
                cells = np.sort(rng.choice(cells, size=int(max_cells), replace=False))
            total = None
            for _, summed in self._run_batches(
                adata,
                cells,
                step,
                batch_size=batch_size,
                precision=precision,
                max_tokens=None,
                progress_bar=progress_bar,
                desc=f"Attention ({condition})",
                column_ids=column_ids,
                tokenizer=tokenizer,
            ):
                total = summed if total is None else total + summed
            accumulator.add_sum(condition, total, len(cells))
        return attention_target_table(
            accumulator.means(),
            order,
            control=control,
            perturbed=conditions,
            mode=mode,
            top_k=top_k,
        )
