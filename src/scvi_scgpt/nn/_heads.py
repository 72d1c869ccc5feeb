"""Output heads: expression (GEP), cell-embedding expression (GEPC/MVC), classifiers."""

from __future__ import annotations

import torch
from torch import nn


class ExprDecoder(nn.Module):
    """Per-token expression prediction (official ``decoder``).

    ``fc``: Linear(d_in, d) - LeakyReLU - Linear(d, d) - LeakyReLU - Linear(d, 1). With
    ``explicit_zero_prob`` a parallel ``zero_logit`` MLP gives the probability that the value is
    **non-zero** (the official semantics, despite the name).
    """

    def __init__(self, d_model: int, explicit_zero_prob: bool = False, d_in: int | None = None):
        super().__init__()
        d_in = d_in or d_model
        self.fc = self._mlp(d_in, d_model)
        self.explicit_zero_prob = explicit_zero_prob
        if explicit_zero_prob:
            self.zero_logit = self._mlp(d_in, d_model)

    @staticmethod
    def _mlp(d_in: int, d_model: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Linear(d_in, d_model),
            nn.LeakyReLU(),
            nn.Linear(d_model, d_model),
            nn.LeakyReLU(),
            nn.Linear(d_model, 1),
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, L, d_in)`` -> ``{"pred": (B, L)[, "zero_probs": (B, L)]}``."""
        out = {"pred": self.fc(x).squeeze(-1)}
        if self.explicit_zero_prob:
            out["zero_probs"] = torch.sigmoid(self.zero_logit(x).squeeze(-1))
        return out


class MVCDecoder(nn.Module):
    """Gene expression from the cell embedding (GEPC; official ``mvc_decoder``).

    ``pred[b, l] = (W sigmoid(gene2query(gene_emb[b, l]))) . cell_emb[b]`` where ``gene_emb``
    are the LayerNorm-ed gene-token embeddings. Styles ``"inner product"`` and
    ``"inner product, detach"`` (gene embeddings detached) are supported.
    """

    STYLES = ("inner product", "inner product, detach")

    def __init__(
        self,
        d_model: int,
        style: str = "inner product",
        explicit_zero_prob: bool = False,
        d_cell: int | None = None,
    ) -> None:
        super().__init__()
        if style not in self.STYLES:
            raise ValueError(
                f"mvc_decoder_style {style!r} is not supported; use one of {self.STYLES}."
            )
        d_cell = d_cell or d_model
        self.style = style
        self.gene2query = nn.Linear(d_model, d_model)
        self.query_activation = nn.Sigmoid()
        self.W = nn.Linear(d_model, d_cell, bias=False)
        self.explicit_zero_prob = explicit_zero_prob
        if explicit_zero_prob:
            self.W_zero_logit = nn.Linear(d_model, d_cell)

    def forward(self, cell_emb: torch.Tensor, gene_embs: torch.Tensor) -> dict[str, torch.Tensor]:
        """``cell_emb (B, d_cell)``, ``gene_embs (B, L, d)`` -> ``{"pred": (B, L), ...}``."""
        if self.style.endswith("detach"):
            gene_embs = gene_embs.detach()
        query = self.query_activation(self.gene2query(gene_embs))
        cell = cell_emb.unsqueeze(2)
        out = {"pred": torch.bmm(self.W(query), cell).squeeze(2)}
        if self.explicit_zero_prob:
            out["zero_probs"] = torch.sigmoid(torch.bmm(self.W_zero_logit(query), cell).squeeze(2))
        return out


class ClsDecoder(nn.Module):
    """MLP classifier on the cell embedding (official ``cls_decoder``).

    ``(n_layers - 1) x [Linear(d, d), activation, LayerNorm(d)]`` then ``out_layer``.
    """

    def __init__(
        self,
        d_model: int,
        n_cls: int,
        n_layers: int = 3,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for _ in range(n_layers - 1):
            layers += [nn.Linear(d_model, d_model), activation(), nn.LayerNorm(d_model)]
        self._decoder = nn.ModuleList(layers)
        self.out_layer = nn.Linear(d_model, n_cls)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, d)`` -> logits ``(B, n_cls)``."""
        for layer in self._decoder:
            x = layer(x)
        return self.out_layer(x)


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lambd: float) -> torch.Tensor:
        ctx.lambd = lambd
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return -ctx.lambd * grad_output, None


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    """Identity forward; gradient multiplied by ``-lambd`` backward."""
    return _GradReverse.apply(x, lambd)


class AdversarialDiscriminator(ClsDecoder):
    """Batch classifier behind a gradient-reversal layer (DAR).

    Official name: ``grad_reverse_discriminator``.
    """

    def __init__(
        self,
        d_model: int,
        n_cls: int,
        n_layers: int = 3,
        reverse_grad: bool = True,
        lambd: float = 1.0,
    ) -> None:
        super().__init__(d_model, n_cls, n_layers, activation=nn.LeakyReLU)
        self.reverse_grad = reverse_grad
        self.lambd = lambd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, d)`` -> batch logits ``(B, n_batch)``."""
        if self.reverse_grad:
            x = grad_reverse(x, self.lambd)
        return super().forward(x)
