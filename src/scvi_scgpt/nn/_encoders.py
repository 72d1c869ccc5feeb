"""Input encoders: gene tokens, expression values, batch labels."""

from __future__ import annotations

import torch
from torch import nn


class GeneEncoder(nn.Module):
    """Gene-token embedding followed by LayerNorm (official ``encoder``)."""

    def __init__(self, n_tokens: int, d_model: int, padding_idx: int | None = None) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_tokens, d_model, padding_idx=padding_idx)
        self.enc_norm = nn.LayerNorm(d_model)

    def forward(self, gene_ids: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` ids -> ``(B, L, d)`` normalised embeddings."""
        return self.enc_norm(self.embedding(gene_ids))


class ContinuousValueEncoder(nn.Module):
    """Scalar value -> vector: clamp (max only), Linear-ReLU-Linear, LayerNorm, dropout."""

    def __init__(self, d_model: int, dropout: float = 0.1, max_value: float = 512.0) -> None:
        super().__init__()
        self.max_value = max_value
        self.linear1 = nn.Linear(1, d_model)
        self.activation = nn.ReLU()
        self.linear2 = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` values -> ``(B, L, d)``; -1 (mask) and -2 (pad/cls) pass through."""
        x = values.unsqueeze(-1).clamp(max=self.max_value)
        x = self.linear2(self.activation(self.linear1(x)))
        return self.dropout(self.norm(x))


class CategoryValueEncoder(nn.Module):
    """Binned value as a category: embedding + LayerNorm (``input_emb_style="category"``)."""

    def __init__(self, n_categories: int, d_model: int, padding_idx: int | None = None) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_categories, d_model, padding_idx=padding_idx)
        self.enc_norm = nn.LayerNorm(d_model)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` bins -> ``(B, L, d)``."""
        return self.enc_norm(self.embedding(values.long()))


class BatchLabelEncoder(nn.Module):
    """Batch (or modality) label embedding + LayerNorm (official ``batch_encoder``)."""

    def __init__(self, n_labels: int, d_model: int, padding_idx: int | None = None) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_labels, d_model, padding_idx=padding_idx)
        self.enc_norm = nn.LayerNorm(d_model)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """``(B,)`` labels -> ``(B, d)``."""
        return self.enc_norm(self.embedding(labels))
