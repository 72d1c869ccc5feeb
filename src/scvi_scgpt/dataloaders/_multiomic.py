"""Multi-omic training minibatches: cells read by row, tokenized with modality ids."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from scvi_scgpt._constants import TOKEN_KEYS
from scvi_scgpt.data import ModalityLayout, TokenizerConfig
from scvi_scgpt.dataloaders._collate import TokenCollator


class MultiOmicCollator(TokenCollator):
    """Minibatches of multi-omic cells: every measured modality's tokens, with modality ids.

    A minibatch arrives as row numbers (``TOKEN_KEYS.CELL_INDEX``) of the joint matrix; each
    cell is tokenized from the modalities it was measured in only (a mosaic cell has no
    token, and so no loss term, of an unmeasured modality), each modality binned on its own.

    Parameters
    ----------
    column_vocab_ids
        Vocabulary id of each joint column (``-1``: not used).
    tokenizer
        Tokenizer settings.
    cls_id, pad_id
        Special token ids.
    mask_ratio
        Fraction of tokens whose value is masked (GEP/GEPC).
    matrix
        ``(n_cells, n_columns)`` joint expression (CSR).
    modalities
        Column modalities and measured cells of ``matrix``.
    batch_codes, label_codes
        Per-row batch and label codes.
    """

    def __init__(
        self,
        column_vocab_ids: np.ndarray,
        tokenizer: TokenizerConfig,
        *,
        cls_id: int,
        pad_id: int,
        mask_ratio: float = 0.0,
        matrix=None,
        modalities: ModalityLayout | None = None,
        batch_codes: np.ndarray | None = None,
        label_codes: np.ndarray | None = None,
    ) -> None:
        super().__init__(
            column_vocab_ids, tokenizer, cls_id=cls_id, pad_id=pad_id, mask_ratio=mask_ratio
        )
        if matrix is None or modalities is None:
            raise ValueError(
                "The multi-omic collator needs the joint matrix and its modalities: train a "
                "model set up with SCGPT.setup_mudata."
            )
        self.matrix = sp.csr_matrix(matrix)
        self.modalities = modalities
        n = self.matrix.shape[0]
        self.batch_codes = np.zeros(n, np.int64) if batch_codes is None else batch_codes
        self.label_codes = np.zeros(n, np.int64) if label_codes is None else label_codes

    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        """Collate the cells whose rows are ``batch[TOKEN_KEYS.CELL_INDEX]``."""
        rows = np.asarray(batch[TOKEN_KEYS.CELL_INDEX]).reshape(-1).astype(np.int64)
        codes = {
            TOKEN_KEYS.BATCH: self.batch_codes[rows],
            TOKEN_KEYS.LABELS: self.label_codes[rows],
            TOKEN_KEYS.CELL_INDEX: rows,
        }
        return self.collate_cells(
            self.matrix[rows], self.column_vocab_ids, codes, self.modalities.rows(rows)
        )


class _Rows(Dataset):
    def __init__(self, rows: np.ndarray) -> None:
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> int:
        return int(self.rows[i])


class CellRowsDataModule(LightningDataModule):
    """Train / validation / test split of row numbers, collated by a row-reading collator.

    The split follows scvi-tools' ``DataSplitter``: a seeded permutation, ``train_size`` of the
    cells for training and ``validation_size`` (default: the rest) for validation.

    Parameters
    ----------
    n_cells
        Number of rows.
    collate_fn
        Collator receiving ``{TOKEN_KEYS.CELL_INDEX: rows}``.
    train_size, validation_size
        Fractions of the cells.
    batch_size
        Cells per minibatch.
    seed
        Seed of the split.
    external_indexing
        ``[train, validation, test]`` row arrays instead of a random split.
    """

    def __init__(
        self,
        n_cells: int,
        collate_fn,
        *,
        train_size: float = 0.9,
        validation_size: float | None = None,
        batch_size: int = 128,
        seed: int = 0,
        external_indexing: list[np.ndarray] | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < train_size <= 1.0:
            raise ValueError(f"train_size must be in (0, 1], got {train_size}.")
        validation_size = 1.0 - train_size if validation_size is None else validation_size
        if validation_size < 0 or train_size + validation_size > 1.0 + 1e-9:
            raise ValueError("train_size + validation_size must be at most 1.")
        self.collate_fn = collate_fn
        self.batch_size = batch_size
        if external_indexing is not None:
            parts = [np.asarray(p, dtype=np.int64) for p in external_indexing]
            parts += [np.zeros(0, np.int64)] * (3 - len(parts))
            self.train_idx, self.val_idx, self.test_idx = parts[:3]
        else:
            order = np.random.default_rng(seed).permutation(n_cells)
            n_train = int(np.ceil(train_size * n_cells))
            n_val = int(np.floor(validation_size * n_cells))
            n_val = min(n_val, n_cells - n_train)
            self.train_idx = np.sort(order[:n_train])
            self.val_idx = np.sort(order[n_train : n_train + n_val])
            self.test_idx = np.sort(order[n_train + n_val :])
        if not len(self.train_idx):
            raise ValueError("No training cells in the split.")

    def _collate(self, rows: list[int]) -> dict[str, torch.Tensor]:
        return self.collate_fn({TOKEN_KEYS.CELL_INDEX: np.asarray(rows, dtype=np.int64)})

    def _loader(self, rows: np.ndarray, shuffle: bool) -> DataLoader:
        return DataLoader(
            _Rows(rows), batch_size=self.batch_size, shuffle=shuffle, collate_fn=self._collate
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training minibatches."""
        return self._loader(self.train_idx, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        """Validation minibatches (empty without validation cells)."""
        return self._loader(self.val_idx, shuffle=False) if len(self.val_idx) else []

    def test_dataloader(self) -> DataLoader | list:
        """Test minibatches (empty without test cells)."""
        return self._loader(self.test_idx, shuffle=False) if len(self.test_idx) else []
