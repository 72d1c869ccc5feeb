"""Domain-specific batch normalisation (DSBN)."""

from __future__ import annotations

import torch
from torch import nn


class DomainSpecificBatchNorm1d(nn.Module):
    """One ``BatchNorm1d`` per domain (batch); each cell is normalised by its own domain's.

    The official implementation normalises a whole minibatch with the statistics of the domain
    of its first cell and relies on a sampler that never mixes domains. Here every cell uses its
    own domain: in training the statistics of each domain are computed over that domain's cells
    (and their tokens) in the minibatch, and in evaluation each cell uses its domain's running
    statistics. For single-domain minibatches both are identical.

    Parameters
    ----------
    num_features
        Channels (``d_model``).
    num_domains
        Number of domains.
    eps, momentum, affine
        As in :class:`torch.nn.BatchNorm1d` (official: ``eps=6.1e-5``, ``affine=False``).
    """

    def __init__(
        self,
        num_features: int,
        num_domains: int,
        eps: float = 6.1e-5,
        momentum: float = 0.1,
        affine: bool = False,
    ) -> None:
        super().__init__()
        self.num_domains = num_domains
        self.bns = nn.ModuleList(
            nn.BatchNorm1d(num_features, eps=eps, momentum=momentum, affine=affine)
            for _ in range(num_domains)
        )

    def forward(
        self,
        x: torch.Tensor,
        domains: torch.Tensor,
        token_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Normalise ``x (B, L, d)`` cell by cell with the BatchNorm of ``domains (B,)``.

        ``token_mask (B, L)``, ``True`` for real tokens: in training only those enter the
        statistics (the official code also counts padding).
        """
        domains = domains.reshape(-1).long()
        if (domains < 0).any() or (domains >= self.num_domains).any():
            raise ValueError(f"Domain labels must be in [0, {self.num_domains}).")
        out = torch.empty_like(x)
        for d in torch.unique(domains).tolist():
            rows = domains == d
            xs = x[rows]
            bn = self.bns[d]
            if self.training and token_mask is not None:
                keep = token_mask[rows]
                normed = torch.zeros_like(xs)
                normed[keep] = bn(xs[keep])
                out[rows] = normed
            else:
                out[rows] = bn(xs.permute(0, 2, 1)).permute(0, 2, 1)
        return out
