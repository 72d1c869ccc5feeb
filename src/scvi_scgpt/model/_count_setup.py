"""Building the count decoder for a model's data: which genes, which batches, counts checked."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import scipy.sparse as sp
import torch
from scvi import REGISTRY_KEYS

from scvi_scgpt.data import match_genes
from scvi_scgpt.train import PRESETS

#: Collators whose minibatches carry the registered AnnData rows (and so the counts).
COUNT_COLLATORS = ("masked", "generative")

NO_COUNT_DECODER = (
    "This model has no count decoder. Train one with the count objective, e.g. "
    "model.train('integration', objectives={'count': True}) (on by default when training "
    "from scratch), on raw counts."
)


def check_raw_counts(matrix, where: str) -> None:
    """Raise unless ``matrix`` holds integer counts (every stored value checked)."""
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
    if values.size and not np.array_equal(values, np.round(values)):
        raise ValueError(
            f"The count decoder models raw counts, but {where} is not integer (normalised or "
            "log-transformed?). Register the raw counts: SCGPT.setup_anndata(adata, "
            "layer='counts')."
        )


def decoded_gene_columns(names: np.ndarray, vocab, *, source: str) -> np.ndarray:
    """Columns of the genes a new count decoder decodes: every vocabulary gene, once each."""
    ids = match_genes(names, vocab, source=source).vocab_ids
    columns = np.flatnonzero(ids >= 0)
    if not len(columns):
        raise ValueError(f"No gene of {source} is in the model vocabulary: nothing to decode.")
    _, first = np.unique(ids[columns], return_index=True)
    return np.sort(columns[first])


def columns_of_decoded_genes(
    names: np.ndarray, vocab, decoded_vocab_ids: np.ndarray, *, source: str
) -> np.ndarray:
    """The column of ``names`` holding each decoded gene (``-1`` where absent)."""
    ids = match_genes(names, vocab, source=source).vocab_ids
    lookup = np.full(len(vocab), -1, dtype=np.int64)
    present = np.flatnonzero(ids >= 0)[::-1]  # the first column wins on duplicates
    lookup[ids[present]] = present
    return lookup[np.asarray(decoded_vocab_ids, dtype=np.int64)]


class CountSetupMixin:
    """Adds the count decoder when a task trains the ``count`` objective."""

    def _count_default(self, task: str, objectives, given, datamodule):
        """The objectives to train: the preset's count default dropped where it cannot run.

        The from-scratch presets switch the count objective on. Where the user did not ask
        for it and it cannot run (streamed files, or registered values that are not raw
        counts), training falls back to the task's official objectives, with a warning.
        """
        if not objectives.count:
            return objectives
        asked = given is not None and (
            (isinstance(given, dict) and given.get("count")) or getattr(given, "count", False)
        )
        why = None
        if datamodule is not None and not asked:
            why = "training streams files (the count objective reads an in-memory AnnData)"
        else:
            try:  # the one pass over the values: the decoder is built after this
                self._check_registered_counts()
            except ValueError:
                if asked:
                    raise
                why = (
                    "the registered expression is not raw counts (register them with "
                    "setup_anndata(adata, layer='counts'))"
                )
        if why is None:
            return objectives
        official = PRESETS[task].objectives
        fields = {f.name: getattr(official, f.name) for f in dataclasses.fields(official)}
        if isinstance(given, dict):
            fields.update(given)
        fields["count"] = False
        warnings.warn(
            f"train({task!r}): the from-scratch default objective 'count' is switched off "
            f"because {why}; training with the official objectives instead, which learn "
            "much weaker cell embeddings from scratch (docs: training.md).",
            UserWarning,
            stacklevel=3,
        )
        return dataclasses.replace(official, **fields)

    def _check_registered_counts(self) -> None:
        """Raise unless the registered expression of the model's AnnData is raw counts."""
        manager = self.adata_manager
        layer = manager.registry["setup_args"].get("layer")
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        check_raw_counts(manager.get_from_registry(REGISTRY_KEYS.X_KEY), where)

    def _configure_for(self, objectives, preset, n_top_genes, tokenizer_changes=None) -> None:
        if objectives.count:
            if preset.collator not in COUNT_COLLATORS:
                raise ValueError(
                    f"The count objective is not available for this task (its {preset.collator!r} "
                    "minibatches do not carry the AnnData rows)."
                )
            self._build_count_decoder()
        super()._configure_for(objectives, preset, n_top_genes, tokenizer_changes)

    def _build_count_decoder(self) -> None:
        """Add a count decoder over every vocabulary gene of the model's AnnData (once).

        The values were checked to be counts by :meth:`_count_default`.
        """
        manager = self.adata_manager
        if self.architecture.count_decoder:
            self._count_columns(self.adata, require_all=True)
            return
        names, source = self._gene_names(self.adata)
        columns = decoded_gene_columns(names, self.vocab_, source=source)
        has_batches = manager.registry["setup_args"].get("batch_key") is not None
        self._rebuild_module(
            count_decoder=True,
            n_count_genes=len(columns),
            count_n_batch=self.summary_stats.n_batch if has_batches else 0,
        )
        vocab_ids = match_genes(names[columns], self.vocab_, source=source).vocab_ids
        with torch.no_grad():
            self.module.count_decoder.gene_ids.copy_(torch.as_tensor(vocab_ids))

    def _collator_inputs(self, collator: str) -> dict:
        inputs = super()._collator_inputs(collator)
        if self.architecture.count_decoder and collator in COUNT_COLLATORS:
            columns = self._count_columns(self.adata, require_all=True)
            inputs.setdefault("collator", {})["count_columns"] = columns
        return inputs

    # ------------------------------------------------------------------ genes
    def _require_count_decoder(self) -> None:
        if not self.architecture.count_decoder:
            raise ValueError(NO_COUNT_DECODER)

    @property
    def count_genes(self) -> list[str]:
        """The genes the count decoder decodes (vocabulary tokens, the decoder's order)."""
        self._require_count_decoder()
        ids = self.module.count_decoder.gene_ids.cpu().numpy()
        tokens = self.vocab_.tokens
        return [tokens[i] for i in ids]

    def _count_columns(self, adata, *, require_all: bool = False) -> np.ndarray:
        """The column of ``adata`` of each decoded gene (``-1`` where absent)."""
        self._require_count_decoder()
        names, source = self._gene_names(adata)
        ids = self.module.count_decoder.gene_ids.cpu().numpy()
        columns = columns_of_decoded_genes(names, self.vocab_, ids, source=source)
        missing = int((columns < 0).sum())
        if require_all and missing:
            raise ValueError(
                f"{missing} of the count decoder's {len(ids)} genes are not in {source}; "
                "this needs every decoded gene (model.count_genes)."
            )
        return columns
