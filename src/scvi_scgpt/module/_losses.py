"""scGPT loss functions (official formulas)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the positions where ``mask`` is true."""
    m = mask.to(pred.dtype)
    return ((pred - target) ** 2 * m).sum() / m.sum().clamp(min=1.0)


def masked_bernoulli_nll(
    nonzero_prob: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Bernoulli negative log-likelihood of ``target > 0``, averaged over masked positions.

    ``nonzero_prob`` is the predicted probability that the value is non-zero.
    """
    m = mask.to(nonzero_prob.dtype)
    nll = F.binary_cross_entropy(
        nonzero_prob.float().clamp(1e-6, 1 - 1e-6), (target > 0).float(), reduction="none"
    )
    return (nll * m).sum() / m.sum().clamp(min=1.0)


def elastic_cell_similarity(cell_emb: torch.Tensor, threshold: float) -> torch.Tensor:
    """ECS: ``mean(1 - (relu(cos) - threshold)^2)`` over all cell pairs, diagonal set to 0."""
    normed = F.normalize(cell_emb, p=2, dim=1)
    cos = normed @ normed.t()
    eye = torch.eye(cos.shape[0], dtype=torch.bool, device=cos.device)
    cos = F.relu(cos.masked_fill(eye, 0.0))
    return torch.mean(1.0 - (cos - threshold) ** 2)
