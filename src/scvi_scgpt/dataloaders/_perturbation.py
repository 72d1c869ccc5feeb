"""Minibatches of the perturbation task: each perturbed cell paired with a control cell.

As in the official perturbation tutorial (GEARS ``PertData`` batches), the input of a
perturbed cell is the log-normalised expression of a randomly drawn control cell with a
per-gene perturbation flag (1 on the perturbed genes), the target is the perturbed cell's
expression, and every gene is a token (no ``<cls>``, no padding). With more genes than
``max_seq_len``, each minibatch uses a random subset of genes shared by its cells (official);
unlike the official code, the minibatch's perturbed genes are always in the subset, so their
flags are always seen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
import torch

from scvi_scgpt._constants import TOKEN_KEYS
from scvi_scgpt.data import TokenizerConfig
from scvi_scgpt.dataloaders._collate import TokenCollator

if TYPE_CHECKING:
    pass

#: Registry key of the condition codes (``setup_anndata(perturbation_key=...)``).
PERTURBATION_KEY = "perturbation"


def pair_control_cells(
    n_targets: int,
    n_controls: int,
    rng: np.random.Generator,
    *,
    target_labels: np.ndarray | None = None,
    control_labels: np.ndarray | None = None,
) -> np.ndarray:
    """A random control cell (row of the control matrix) for each target cell.

    Parameters
    ----------
    n_targets, n_controls
        Numbers of target (perturbed) and control cells.
    rng
        Random generator; the same seed gives the same pairs.
    target_labels, control_labels
        Cell-type codes of the targets and the controls; a target is then paired with a
        control of its own type. ``None``: any control.

    Returns
    -------
    ``(n_targets,)`` control rows.
    """
    if target_labels is None or control_labels is None:
        return rng.integers(0, n_controls, size=n_targets)
    target_labels = np.asarray(target_labels).ravel()
    control_labels = np.asarray(control_labels).ravel()
    out = np.empty(len(target_labels), dtype=np.int64)
    for label in np.unique(target_labels):
        pool = np.flatnonzero(control_labels == label)
        if not len(pool):
            raise ValueError(f"No control cell of cell type code {label} to pair with.")
        where = np.flatnonzero(target_labels == label)
        out[where] = pool[rng.integers(0, len(pool), size=len(where))]
    return out


def perturbation_flags(
    columns: np.ndarray, perturbed: list[np.ndarray], codes: np.ndarray
) -> np.ndarray:
    """``(B, L)`` int64 flags: 1 where ``columns[j]`` is perturbed in cell ``i``'s condition.

    Parameters
    ----------
    columns
        ``(L,)`` matrix columns of the tokens.
    perturbed
        Per condition code, the perturbed columns.
    codes
        ``(B,)`` condition code of each cell.
    """
    flags = np.zeros((len(codes), len(columns)), dtype=np.int64)
    position = {int(c): j for j, c in enumerate(columns)}
    for i, code in enumerate(np.asarray(codes).ravel()):
        for col in perturbed[int(code)]:
            j = position.get(int(col))
            if j is not None:
                flags[i, j] = 1
    return flags


class PairedControlCollator(TokenCollator):
    """Perturbed cells (targets) with paired control cells (inputs) and perturbation flags.

    Parameters
    ----------
    column_vocab_ids
        Vocabulary id of each matrix column (``-1``: not used).
    tokenizer
        Tokenizer settings; ``max_seq_len`` is the number of genes per minibatch.
    cls_id, pad_id
        Special token ids (``<cls>`` is not used by this task).
    controls
        ``(n_controls, n_genes)`` expression of the control cells (same columns).
    control_labels
        Cell-type code of each control cell, or ``None`` to pair with any control.
    perturbed_columns
        Per condition code, the columns of its perturbed genes.
    input_offsets
        ``(n_codes, n_genes)`` added to the control cell of each code's targets (the additive
        prior ``delta_A + delta_B`` of a double with ``combination="additive_residual"``;
        zero rows elsewhere), or ``None``.
    gene_weights
        ``(n_codes, n_genes)`` per-gene loss weights of each code (``"wmse"``), or ``None``.
    """

    objective_options: tuple[str, ...] = ()

    def __init__(
        self,
        column_vocab_ids: np.ndarray,
        tokenizer: TokenizerConfig,
        *,
        cls_id: int,
        pad_id: int,
        controls=None,
        control_labels: np.ndarray | None = None,
        perturbed_columns: list[np.ndarray] | None = None,
        input_offsets: np.ndarray | None = None,
        gene_weights: np.ndarray | None = None,
        mask_ratio: float = 0.0,
    ) -> None:
        super().__init__(column_vocab_ids, tokenizer, cls_id=cls_id, pad_id=pad_id)
        if controls is None or perturbed_columns is None:
            raise ValueError(
                "The paired-control collator needs control cells and perturbed genes: set up "
                "the AnnData with SCGPT.setup_anndata(..., perturbation_key=...)."
            )
        self.controls = sp.csr_matrix(controls, dtype=np.float32)
        if self.controls.shape[0] == 0:
            raise ValueError("No control cells to pair with.")
        self.control_labels = None if control_labels is None else np.asarray(control_labels)
        self.perturbed_columns = [np.asarray(c, dtype=np.int64) for c in perturbed_columns]
        self.usable = np.flatnonzero(self.column_vocab_ids >= 0)
        self.input_offsets = None if input_offsets is None else np.asarray(input_offsets)
        self.gene_weights = None if gene_weights is None else np.asarray(gene_weights)

    def select_columns(self, codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The minibatch's gene columns.

        All usable columns, or a random subset of ``max_seq_len`` holding every perturbed
        gene of the minibatch, so a perturbed gene is always a token of the cells that carry
        it, however many genes are expressed (the official sampling may drop it, scGPT #298).
        """
        limit = self.tokenizer.max_seq_len
        if len(self.usable) <= limit:
            return self.usable
        wanted = np.unique(
            np.concatenate([self.perturbed_columns[int(c)] for c in np.unique(codes)] + [[]])
        ).astype(np.int64)
        wanted = wanted[np.isin(wanted, self.usable)]
        if len(wanted) > limit:
            raise ValueError(
                f"A minibatch perturbs {len(wanted)} distinct genes but max_seq_len is {limit}: "
                "every perturbed gene must be a token of its cells (official scGPT #298). Use "
                "a smaller batch_size or a larger tokenizer max_seq_len."
            )
        rest = np.setdiff1d(self.usable, wanted)
        extra = rng.choice(rest, size=limit - len(wanted), replace=False)
        return np.sort(np.concatenate([wanted, extra]))

    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        """Collate one minibatch of target cells."""
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,)).item()))
        x = batch[TOKEN_KEYS.X]
        if isinstance(x, torch.Tensor):
            x = x.to_dense().numpy() if x.is_sparse or x.layout != torch.strided else x.numpy()
        x = x.toarray() if sp.issparse(x) else np.asarray(x)
        codes = np.asarray(batch[PERTURBATION_KEY]).reshape(-1).astype(np.int64)
        labels = None
        if self.control_labels is not None:
            labels = np.asarray(batch[TOKEN_KEYS.LABELS]).reshape(-1)
        pairs = pair_control_cells(
            len(codes),
            self.controls.shape[0],
            rng,
            target_labels=labels,
            control_labels=self.control_labels,
        )
        columns = self.select_columns(codes, rng)
        inputs = self.controls[pairs][:, columns].toarray()
        if self.input_offsets is not None:
            inputs = inputs + self.input_offsets[codes][:, columns]
        ids = np.broadcast_to(self.column_vocab_ids[columns], inputs.shape).copy()
        out = {
            TOKEN_KEYS.GENE_IDS: torch.from_numpy(ids),
            TOKEN_KEYS.VALUES: torch.from_numpy(inputs.astype(np.float32)),
            TOKEN_KEYS.TARGET_VALUES: torch.from_numpy(x[:, columns].astype(np.float32)),
            TOKEN_KEYS.PADDING_MASK: torch.zeros(inputs.shape, dtype=torch.bool),
            TOKEN_KEYS.PERT_FLAGS: torch.from_numpy(
                perturbation_flags(columns, self.perturbed_columns, codes)
            ),
        }
        if self.gene_weights is not None:
            weights = self.gene_weights[codes][:, columns].astype(np.float32)
            out[TOKEN_KEYS.DE_WEIGHTS] = torch.from_numpy(weights)
        for key in (TOKEN_KEYS.BATCH, TOKEN_KEYS.LABELS, TOKEN_KEYS.CELL_INDEX):
            if key in batch:
                out[key] = torch.as_tensor(np.asarray(batch[key])).reshape(-1).long()
        return out
