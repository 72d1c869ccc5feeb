"""Reference mapping: query models with new batches, and kNN label transfer."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from scvi import REGISTRY_KEYS

from scvi_scgpt.model._batchnorm import refresh_domain_statistics
from scvi_scgpt.model._checkpoint import load_into_module
from scvi_scgpt.model._multiomic import KEEP_VOCAB, is_mudata
from scvi_scgpt.module import PER_BATCH_ROWS
from scvi_scgpt.tl import knn_label_transfer

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)


class ReferenceMappingMixin:
    """Map query data onto a trained reference (scArches-style) and transfer labels."""

    @classmethod
    def load_query_data(
        cls,
        adata: AnnData,
        reference_model,
        *,
        adapt_batchnorm: bool = True,
        batch_size: int = 64,
    ):
        """A copy of ``reference_model`` that also knows the new batches of ``adata``.

        The query is set up like the reference (same layer, keys and label categories); its
        batches unknown to the reference are appended as new categories. Per-batch
        parameters grow by "architecture surgery": the batch-token embedding of a new batch
        starts as the mean of the reference batches', the adversarial classifier gains
        outputs, and a new DSBN domain gets its running statistics estimated from the query
        cells of that batch (``adapt_batchnorm``). Everything else is copied unchanged, so
        reference cells embed exactly as before.

        Genes are matched by name through the vocabulary: reference genes the query did not
        measure are simply absent from its token sequences (masked), never zeros.

        Parameters
        ----------
        adata
            Query AnnData (any genes, new batches allowed).
        reference_model
            Trained reference :class:`SCGPT`.
        adapt_batchnorm
            Estimate DSBN statistics of the new batches from the query.
        batch_size
            Cells per forward pass when estimating statistics.

        Returns
        -------
        A new :class:`SCGPT` attached to ``adata`` (``adata`` is registered; its values are
        not changed).
        """
        ref = reference_model
        registry = ref.adata_manager.registry
        if is_mudata(adata):
            ref._check_query_modalities(adata)
        cls._setup_from_registry(adata, registry, extend_categories=True)
        init = ref.init_params_
        kwargs = {k: v for g in init["kwargs"].values() for k, v in g.items()}
        non_kwargs = {k: v for k, v in init["non_kwargs"].items() if k != "vocab"}
        uses_batches = ref._uses_batches()
        if uses_batches:
            kwargs["n_batch"] = len(_categories(adata, cls))
        token = KEEP_VOCAB.set(True)
        try:
            model = cls(adata, vocab=ref.vocab_, **non_kwargs, **kwargs)
        finally:
            KEEP_VOCAB.reset(token)
        model.gene_subset_ = ref.gene_subset_
        state = {k: v.detach().clone() for k, v in ref.module.state_dict().items()}
        own = model.module.state_dict()
        for key in PER_BATCH_ROWS:
            if key in state and own[key].shape[0] > state[key].shape[0]:
                grown = own[key].clone()
                n_old = state[key].shape[0]
                grown[:n_old] = state[key]
                if key == "batch_encoder.embedding.weight":
                    grown[n_old:] = state[key].mean(0, keepdim=True)
                state[key] = grown
        load_into_module(model.module, state, strict=True, resized_heads=True)
        model.is_trained_ = ref.is_trained_
        model.to_device(ref.device)
        n_ref = ref.architecture.n_batch
        if uses_batches and adapt_batchnorm and hasattr(model.module, "dsbn"):
            new_domains = list(range(n_ref, model.architecture.n_batch))
            refresh_domain_statistics(model, new_domains, batch_size)
        model.module.eval()
        return model

    def transfer_labels(
        self,
        query: AnnData,
        *,
        reference: AnnData | None = None,
        labels_key: str,
        n_neighbors: int = 10,
        key_added: str = "scgpt_transferred",
        batch_size: int | None = None,
    ) -> None:
        """Label query cells by majority vote of their nearest reference cells.

        As in the official reference-mapping tutorial: both datasets are embedded (L2-
        normalised ``<cls>`` embeddings), each query cell takes the most frequent label among
        its ``n_neighbors`` nearest reference cells (Euclidean on normalised embeddings, i.e.
        cosine), ties going to the nearer neighbours (:func:`scvi_scgpt.tl.knn_label_transfer`).

        Parameters
        ----------
        query
            AnnData to label (set up with :meth:`setup_anndata`, or transferable).
        reference
            Labelled reference AnnData (default: the model's AnnData).
        labels_key
            Column of ``reference.obs`` with the labels.
        n_neighbors
            Neighbours voting (official: 10).
        key_added
            Prefix of the written fields.
        batch_size
            Cells per forward pass.

        Returns
        -------
        Nothing; sets ``query.obs[key_added]`` (categorical label) and
        ``query.obs[key_added + "_confidence"]`` (fraction of neighbours agreeing).
        """
        reference = self.adata if reference is None else reference
        if labels_key not in reference.obs:
            raise KeyError(f"labels_key={labels_key!r} is not a column of reference.obs.")
        labels = reference.obs[labels_key]
        known = labels.notna().to_numpy()
        if known.sum() < n_neighbors:
            raise ValueError(
                f"Only {known.sum()} reference cells have a label; need >= n_neighbors."
            )
        ref_emb = self.get_latent_representation(
            reference, indices=np.flatnonzero(known), batch_size=batch_size
        )
        query_emb = self.get_latent_representation(query, batch_size=batch_size)
        predicted, confidence = knn_label_transfer(
            ref_emb, labels[known].astype(str).to_numpy(), query_emb, n_neighbors=n_neighbors
        )
        query.obs[key_added] = predicted
        query.obs[f"{key_added}_confidence"] = confidence


def _categories(adata, cls) -> list:
    manager = cls._get_most_recent_anndata_manager(adata, required=True)
    return list(manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping)
