"""Minibatch collation for training: tokenization and value masking on CPU workers."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from scvi_scgpt._constants import MASK_VALUE, TOKEN_KEYS
from scvi_scgpt.data import ModalityLayout, TokenizerConfig, tokenize_cells

if TYPE_CHECKING:
    from scvi_scgpt.module import ObjectiveConfig


def mask_values(
    values: np.ndarray, padding_mask: np.ndarray, mask_ratio: float, rng: np.random.Generator
) -> np.ndarray:
    """Boolean ``(B, L)`` array of positions to mask: ``int(n * mask_ratio)`` per cell.

    Candidates are a cell's gene tokens; ``<cls>`` (position 0) and padding never are. (The
    official ``random_mask_value`` can also mask ``<cls>``; we do not.)
    """
    candidates = ~padding_mask
    candidates[:, 0] = False
    n_mask = np.floor(candidates.sum(1) * mask_ratio).astype(np.int64)
    keys = rng.random(values.shape)
    keys[~candidates] = np.inf
    rank = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1, kind="stable")
    return rank < n_mask[:, None]


class TokenCollator:
    """Turn an AnnDataLoader minibatch into token tensors.

    The minibatch is the scvi-tools ``{"X": ..., "batch": ..., "labels": ...}`` dictionary
    (one call per minibatch).

    Each minibatch draws a fresh tokenization seed (gene sampling, tie spreading) and mask
    from torch's global generator, so training is reproducible under
    ``scvi.settings.seed`` while cells are re-sampled every epoch.

    Parameters
    ----------
    column_vocab_ids
        Vocabulary id of each column of ``X`` (``-1``: not used).
    tokenizer
        Tokenizer settings.
    cls_id, pad_id
        Special token ids.
    mask_ratio
        Fraction of gene tokens to mask (0: none).
    count_columns
        Columns of ``X`` whose raw counts the count objective decodes, in the count decoder's
        gene order (``TOKEN_KEYS.COUNTS``, ``(B, G)`` float32); ``None``: no counts.
    """

    def __init__(
        self,
        column_vocab_ids: np.ndarray,
        tokenizer: TokenizerConfig,
        *,
        cls_id: int,
        pad_id: int,
        mask_ratio: float = 0.0,
        count_columns: np.ndarray | None = None,
    ) -> None:
        self.column_vocab_ids = np.asarray(column_vocab_ids, dtype=np.int64)
        self.tokenizer = replace(tokenizer, allow_empty_cells=True)
        self.cls_id = cls_id
        self.pad_id = pad_id
        self.mask_ratio = mask_ratio
        self.count_columns = None if count_columns is None else np.asarray(count_columns)

    #: Constructor arguments read from the objectives (see :meth:`for_objectives`).
    objective_options: tuple[str, ...] = ("mask_ratio",)

    @classmethod
    def for_objectives(
        cls,
        column_vocab_ids: np.ndarray,
        tokenizer: TokenizerConfig,
        objectives: ObjectiveConfig,
        *,
        cls_id: int,
        pad_id: int,
        **inputs,
    ) -> TokenCollator:
        """The collator of a task with these objectives.

        The objectives' fields named in :attr:`objective_options` (``mask_ratio`` here,
        ``gen_ratios`` for generative pretraining) become constructor arguments, and so do
        ``inputs`` (data a collator needs beyond the minibatch, e.g. control cells).
        """
        options = {name: getattr(objectives, name) for name in cls.objective_options}
        return cls(column_vocab_ids, tokenizer, cls_id=cls_id, pad_id=pad_id, **options, **inputs)

    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        """Collate one minibatch."""
        x = batch[TOKEN_KEYS.X]
        if isinstance(x, torch.Tensor):
            x = x.to_dense().numpy() if x.is_sparse or x.layout != torch.strided else x.numpy()
        column_ids = batch.get(TOKEN_KEYS.COLUMN_VOCAB_IDS, self.column_vocab_ids)
        out = self.collate_cells(x, column_ids, batch)
        if self.count_columns is not None:
            if TOKEN_KEYS.COLUMN_VOCAB_IDS in batch:
                raise ValueError(
                    "The count objective reads the counts of an in-memory AnnData; streamed "
                    "files are not supported yet (train without a datamodule)."
                )
            out[TOKEN_KEYS.COUNTS] = count_matrix(x, self.count_columns)
        return out

    def collate_cells(
        self,
        x,
        column_ids: np.ndarray,
        batch: dict,
        modalities: ModalityLayout | None = None,
    ) -> dict[str, torch.Tensor]:
        """Token tensors of the cells ``x`` (rows), with ``batch``'s codes passed through.

        ``modalities`` (multi-omic cells) adds ``TOKEN_KEYS.MODALITY_IDS``.
        """
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        config = replace(self.tokenizer, seed=seed)
        tokens = tokenize_cells(x, column_ids, config, cls_id=self.cls_id, modalities=modalities)
        padded = tokens.pad(
            None,
            pad_id=self.pad_id,
            pad_value=config.pad_value,
            modality_pad_id=0 if modalities is None else modalities.pad_id,
        )
        target = padded[TOKEN_KEYS.VALUES]
        values = target.copy()
        if self.mask_ratio > 0:
            rng = np.random.default_rng(seed)
            masked = mask_values(values, padded[TOKEN_KEYS.PADDING_MASK], self.mask_ratio, rng)
            values[masked] = MASK_VALUE
        out = {
            TOKEN_KEYS.GENE_IDS: torch.from_numpy(padded[TOKEN_KEYS.GENE_IDS]),
            TOKEN_KEYS.VALUES: torch.from_numpy(values),
            TOKEN_KEYS.TARGET_VALUES: torch.from_numpy(target),
            TOKEN_KEYS.PADDING_MASK: torch.from_numpy(padded[TOKEN_KEYS.PADDING_MASK]),
        }
        if TOKEN_KEYS.MODALITY_IDS in padded:
            out[TOKEN_KEYS.MODALITY_IDS] = torch.from_numpy(padded[TOKEN_KEYS.MODALITY_IDS])
        for key in (TOKEN_KEYS.BATCH, TOKEN_KEYS.LABELS, TOKEN_KEYS.CELL_INDEX):
            if key in batch:
                out[key] = torch.as_tensor(np.asarray(batch[key])).reshape(-1).long()
        return out


def count_matrix(x, columns: np.ndarray) -> torch.Tensor:
    """Dense ``(B, len(columns))`` float32 counts of the rows ``x`` (dense or sparse)."""
    rows = x[:, columns]
    rows = rows.toarray() if hasattr(rows, "toarray") else np.asarray(rows)
    return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))


def split_generated(
    padding_mask: np.ndarray, ratio: float, rng: np.random.Generator
) -> np.ndarray:
    """Boolean ``(B, L)``: the gene tokens to generate, ``int(n * ratio)`` per cell.

    ``<cls>`` (position 0) and padding are never generated; at least one gene stays known.
    """
    candidates = ~padding_mask
    candidates[:, 0] = False
    n_genes = candidates.sum(1)
    n_gen = np.minimum(np.floor(n_genes * ratio).astype(np.int64), np.maximum(n_genes - 1, 0))
    keys = rng.random(padding_mask.shape)
    keys[~candidates] = np.inf
    rank = np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1, kind="stable")
    return rank < n_gen[:, None]


def _compact(mask: np.ndarray, *arrays: np.ndarray, fill: tuple) -> list[np.ndarray]:
    """Move the ``mask`` entries of each row to the left; return arrays of the max width."""
    order = np.argsort(~mask, axis=1, kind="stable")
    width = max(int(mask.sum(1).max()), 1)
    keep = np.take_along_axis(mask, order, 1)[:, :width]
    out = []
    for arr, value in zip(arrays, fill):
        moved = np.take_along_axis(arr, order, 1)[:, :width].copy()
        moved[~keep] = value
        out.append(moved)
    out.append(~keep)
    return out


class GenerativeCollator(TokenCollator):
    """Minibatches for generative pretraining: known tokens and tokens to generate.

    Each minibatch draws the generated fraction from ``gen_ratios``; per cell that fraction
    of the expressed genes (chosen at random) becomes generated tokens whose binned values are
    the targets. ``<cls>`` stays known.
    """

    def __init__(self, *args, gen_ratios=(0.25, 0.5, 0.75), **kwargs) -> None:
        kwargs.pop("mask_ratio", None)
        super().__init__(*args, mask_ratio=0.0, **kwargs)
        self.gen_ratios = tuple(gen_ratios)

    #: Constructor arguments read from the objectives (see :meth:`for_objectives`).
    objective_options = ("gen_ratios",)

    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        """Collate one minibatch."""
        out = super().__call__(batch)
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,)).item()))
        ratio = float(rng.choice(self.gen_ratios))
        genes = out[TOKEN_KEYS.GENE_IDS].numpy()
        values = out[TOKEN_KEYS.TARGET_VALUES].numpy()
        padding = out[TOKEN_KEYS.PADDING_MASK].numpy()
        generated = split_generated(padding, ratio, rng)
        known = ~padding & ~generated
        pad_value = self.tokenizer.pad_value
        k_genes, k_values, k_pad = _compact(known, genes, values, fill=(self.pad_id, pad_value))
        g_genes, g_values, g_pad = _compact(
            generated, genes, values, fill=(self.pad_id, pad_value)
        )
        out[TOKEN_KEYS.GENE_IDS] = torch.from_numpy(k_genes)
        out[TOKEN_KEYS.VALUES] = torch.from_numpy(k_values)
        out[TOKEN_KEYS.TARGET_VALUES] = torch.from_numpy(k_values)
        out[TOKEN_KEYS.PADDING_MASK] = torch.from_numpy(k_pad)
        out[TOKEN_KEYS.GEN_GENE_IDS] = torch.from_numpy(g_genes)
        out[TOKEN_KEYS.GEN_TARGETS] = torch.from_numpy(g_values)
        out[TOKEN_KEYS.GEN_PADDING_MASK] = torch.from_numpy(g_pad)
        return out


#: Collators by name: a task preset names the one it trains with (``TaskPreset.collator``).
#: A new task with a new minibatch layout adds its collator here.
COLLATORS: dict[str, type[TokenCollator]] = {
    "masked": TokenCollator,
    "generative": GenerativeCollator,
}
