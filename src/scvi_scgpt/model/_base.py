"""What every SCGPT capability builds on: AnnData validation, gene resolution, the batch loop."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS, settings
from scvi.data import AnnDataManager
from tqdm.auto import tqdm

from scvi_scgpt.data import GeneMatch, GeneVocab, InMemorySource, TokenizerConfig, match_genes
from scvi_scgpt.dataloaders import iter_token_batches
from scvi_scgpt.model._precision import inference_precision
from scvi_scgpt.model._scvi_compat import anndata_uuid, give_own_uuid

logger = logging.getLogger(__name__)

#: The setup methods a saved scvi-tools registry may name (``setup_method_name``).
SETUP_METHODS = ("setup_anndata", "setup_mudata")

#: Set while ``from_pretrained`` builds a model whose weights come from a checkpoint.
BUILD_ON_META: contextvars.ContextVar[bool] = contextvars.ContextVar("meta", default=False)


def resolve_vocab(vocab, adata: AnnData, gene_symbols_key: str | None) -> GeneVocab:
    """The model vocabulary from the ``vocab`` argument of :class:`SCGPT`."""
    if isinstance(vocab, GeneVocab):
        return vocab
    if vocab is None:
        names = adata.var[gene_symbols_key] if gene_symbols_key else adata.var_names
        return GeneVocab.from_genes(names)
    if isinstance(vocab, str) and vocab == "census":
        return GeneVocab.census()
    if isinstance(vocab, str | Path):
        return GeneVocab.from_file(vocab)
    return GeneVocab(vocab)


class BaseMixin:
    """Validation, per-AnnData gene resolution and the one loop that runs cells in batches.

    Every capability that runs cells through the module does it with :meth:`_run_batches`
    (or :meth:`_map_cells` for one row per cell), so batching by length, the token budget,
    device transfer, autocast and the progress bar live here only.
    """

    def _validate_anndata(self, adata: AnnData | None = None, copy_if_view: bool = True):
        # An AnnData set up by the user with SCGPT.setup_anndata keeps its own setup (its own
        # genes and gene_symbols_key); scvi-tools would otherwise re-apply the model's setup.
        if adata is not None and self.get_anndata_manager(adata) is None:
            manager = self._setup_adata_manager_store.get(anndata_uuid(adata))
            if manager is not None and manager.adata is adata:
                self._check_batches_compatible(manager)
                self._register_manager_for_instance(manager)
            elif manager is not None:
                # a copy of a set-up AnnData: give it its own id, then transfer the setup
                give_own_uuid(adata)
        return super()._validate_anndata(adata, copy_if_view=copy_if_view)

    @classmethod
    def _setup_from_registry(cls, adata, registry: dict, **kwargs) -> None:
        """Set ``adata`` up as the registry's data was (``setup_anndata`` or ``setup_mudata``).

        Raises
        ------
        ValueError
            The registry names another method (:data:`SETUP_METHODS` are the only ones run).
        """
        name = registry.get("setup_method_name") or "setup_anndata"
        if name not in SETUP_METHODS:
            raise ValueError(
                f"The saved registry names setup method {name!r}; only {list(SETUP_METHODS)} "
                "set data up. The model file was not written by SCGPT.save or was changed "
                'since; save the model again, or set "setup_method_name" to one of those.'
            )
        setup = getattr(cls, name)
        setup(adata, source_registry=registry, **kwargs, **registry["setup_args"])

    def _uses_batches(self) -> bool:
        a = self.architecture
        return a.domain_spec_batchnorm or a.use_batch_labels or a.do_dab

    def _check_batches_compatible(self, manager: AnnDataManager) -> None:
        if not self._uses_batches():
            return
        own = self.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping
        new = manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping
        unknown = [b for b in new if b not in set(own)]
        if unknown or list(new) != list(own[: len(new)]):
            raise ValueError(
                f"This model was trained on batches {list(own)}; the AnnData has {list(new)}. "
                "Set it up with the same batch categories (in the same order)."
            )

    # ------------------------------------------------------------------ genes
    def _gene_names(self, adata: AnnData) -> tuple[np.ndarray, str]:
        manager = self.get_anndata_manager(adata, required=True)
        key = manager.registry["setup_args"].get("gene_symbols_key")
        if key is None:
            return np.asarray(adata.var_names), "adata.var_names"
        return np.asarray(adata.var[key].astype(str)), f"adata.var[{key!r}]"

    def gene_coverage(self, adata: AnnData | None = None) -> GeneMatch:
        """Match ``adata``'s genes to the model vocabulary.

        Returns
        -------
        :class:`~scvi_scgpt.data.GeneMatch` with per-gene vocabulary ids and counts
        (``.summary()`` gives e.g. ``"matched 14,203 / 16,727 genes (84.9%)"``).
        """
        adata = self._validate_anndata(adata)
        names, source = self._gene_names(adata)
        return match_genes(names, self.vocab_, source=source)

    def _column_vocab_ids(self, adata: AnnData) -> np.ndarray:
        """Vocabulary id per gene of ``adata``.

        ``-1`` marks genes outside the vocabulary or, after training on a gene subset (HVGs),
        outside that subset.
        """
        names, source = self._gene_names(adata)
        return self._vocab_ids_of(names, source=source)

    def _vocab_ids_of(self, names: np.ndarray, *, source: str) -> np.ndarray:
        """Vocabulary id per gene name (``-1``: unknown, or outside ``gene_subset_``)."""
        ids = match_genes(names, self.vocab_, source=source).vocab_ids.copy()
        subset = getattr(self, "gene_subset_", None)
        if subset is not None:
            ids[~np.isin(names, np.asarray(subset, dtype=object))] = -1
            if not (ids >= 0).any():
                raise ValueError(
                    f"None of the model's training genes (gene_subset_) is in {source}."
                )
        return ids

    def _log_gene_coverage(self, adata: AnnData) -> GeneMatch:
        match = self.gene_coverage(adata)
        logger.info("SCGPT vocabulary: %s.", match.summary())
        return match

    # ------------------------------------------------------------------ the batch loop
    @staticmethod
    def _as_indices(adata: AnnData, indices) -> np.ndarray:
        """Row numbers from ``None`` (all), integers or a boolean mask."""
        if indices is None:
            return np.arange(adata.n_obs)
        indices = np.asarray(indices)
        if indices.dtype == bool:
            if len(indices) != adata.n_obs:
                raise ValueError(f"A boolean mask of {len(indices)} for {adata.n_obs} cells.")
            return np.flatnonzero(indices)
        if len(indices) and (indices.min() < -adata.n_obs or indices.max() >= adata.n_obs):
            raise IndexError(f"indices outside the {adata.n_obs} cells.")
        return indices

    def _token_batches(
        self,
        adata: AnnData,
        indices: np.ndarray,
        batch_size: int,
        chunk_size: int = 4096,
        *,
        column_ids: np.ndarray | None = None,
        tokenizer: TokenizerConfig | None = None,
        max_tokens: int | None = None,
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Token arrays of ``adata``'s cells (:func:`~scvi_scgpt.dataloaders.iter_token_batches`).

        ``column_ids`` and ``tokenizer`` default to the model's gene matching and settings.
        """
        source = self._cell_source(adata)
        return iter_token_batches(
            source,
            indices,
            source.column_vocab_ids if column_ids is None else column_ids,
            tokenizer or self.tokenizer_config,
            cls_id=self.vocab_.cls_id,
            pad_id=self.vocab_.pad_id,
            batch_size=batch_size,
            chunk_size=chunk_size,
            max_tokens=max_tokens,
            cell_labels=np.asarray(adata.obs_names),
            batch_codes=source.batch_codes if self._uses_batches() else None,
            modalities=source.modalities,
        )

    def _cell_source(self, adata: AnnData) -> InMemorySource:
        """What tokenization reads of ``adata``: the matrix, column ids, batch codes."""
        manager = self.get_anndata_manager(adata, required=True)
        names, _ = self._gene_names(adata)
        return InMemorySource(
            manager.get_from_registry(REGISTRY_KEYS.X_KEY),
            adata.obs_names,
            names,
            adata.obs,
            column_vocab_ids=self._column_vocab_ids(adata),
            batch_codes=np.asarray(manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel(),
            label_codes=np.asarray(manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).ravel(),
        )

    def _collator_inputs(self, collator: str) -> dict:
        """Data a training collator needs beyond the minibatch, by collator name.

        Returns ``{"collator": constructor arguments, "splitter": data-splitter arguments}``
        (both optional); ``{"cell_rows": True}`` makes ``train`` send only row numbers to the
        collator, which then reads the cells itself (multi-omic data). Capabilities that add
        a collator extend this (and call ``super()``).
        """
        return {}

    def _run_batches(
        self,
        adata: AnnData,
        indices: np.ndarray,
        step: Callable[[dict[str, torch.Tensor], np.ndarray], Any],
        *,
        batch_size: int | None = None,
        chunk_size: int = 4096,
        max_tokens: int | None = None,
        precision: str = "32",
        progress_bar: bool | None = None,
        desc: str = "Processing cells",
        column_ids: np.ndarray | None = None,
        tokenizer: TokenizerConfig | None = None,
    ) -> Iterator[tuple[np.ndarray, Any]]:
        """Run ``step(tensors, positions)`` on every batch of cells; yield its results.

        ``tensors`` are the batch's token tensors on the model's device
        (:data:`~scvi_scgpt._constants.TOKEN_KEYS`); ``positions`` are the batch's places in
        ``indices``. Results may be per cell, per token or anything else: callers collect
        them. Gradients are off; the module's train/eval mode is the caller's choice.
        """
        batch_size = batch_size or settings.batch_size
        show = len(indices) > 10 * batch_size if progress_bar is None else progress_bar
        batches = self._token_batches(
            adata,
            indices,
            batch_size,
            chunk_size,
            column_ids=column_ids,
            tokenizer=tokenizer,
            max_tokens=max_tokens,
        )
        with tqdm(total=len(indices), desc=desc, disable=not show, unit="cell") as bar:
            for positions, result in self._run_token_batches(batches, step, precision):
                yield positions, result
                bar.update(len(positions))

    def _run_token_batches(
        self,
        batches: Iterator[tuple[np.ndarray, dict[str, np.ndarray]]],
        step: Callable[[dict[str, torch.Tensor], np.ndarray], Any],
        precision: str = "32",
    ) -> Iterator[tuple[np.ndarray, Any]]:
        """``step`` on each ``(positions, token arrays)`` batch, on the model's device."""
        device = self.device
        autocast = self._autocast(precision, device)
        for positions, arrays in batches:
            tensors = {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}
            with torch.no_grad(), autocast:
                result = step(tensors, positions)
            yield positions, result

    def _map_cells(
        self,
        adata: AnnData,
        indices: np.ndarray,
        head: Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], torch.Tensor],
        *,
        n_out: int,
        **loop,
    ) -> np.ndarray:
        """``(len(indices), n_out)`` float32: ``head(inference outputs, tensors)`` per cell.

        The encoder runs in eval mode on the ``<cls>`` query of its last layer only (all a
        cell-level head needs). ``loop`` goes to :meth:`_run_batches`.
        """
        self.module.eval()
        module = self.module

        def step(t, _positions):
            result = module.inference(**module._get_inference_input(t), cls_only=True)
            return head(result, t)

        out = np.empty((len(indices), n_out), dtype=np.float32)
        for positions, values in self._run_batches(adata, indices, step, **loop):
            out[positions] = values.float().cpu().numpy()
        return out

    def _autocast(self, precision: str, device: torch.device):
        """Context for one batch's forward pass in ``precision`` (see ``model/_precision``)."""
        return inference_precision(self.module, precision, device)
