"""The perturbation objective of the official ``TransformerGenerator`` tutorial."""

from __future__ import annotations

import torch
from scvi.module.base import LossOutput

from scvi_scgpt._constants import TOKEN_KEYS
from scvi_scgpt.module._losses import masked_mse


def perturbation_loss(
    tensors: dict[str, torch.Tensor],
    generative_outputs: dict[str, torch.Tensor],
    loss: str = "mse",
) -> LossOutput:
    """MSE (or DE-weighted MSE) between predicted and perturbed-cell expression.

    Parameters
    ----------
    tensors
        Minibatch of the paired-control collator: ``values`` (the control cell),
        ``pert_flags``, ``target_values`` (the perturbed cell) and ``padding_mask``.
    generative_outputs
        Module outputs with ``expr``.
    loss
        ``"mse"`` over every gene token, or ``"wmse"``: per cell, the squared errors
        weighted by ``tensors[TOKEN_KEYS.DE_WEIGHTS]`` (normalised to sum 1 over the
        cell's tokens), averaged over cells.

    Returns
    -------
    :class:`~scvi.module.base.LossOutput` with ``extra_metrics["perturbation_mse"]`` and
    ``extra_metrics["perturbation_pearson"]`` (mean over cells of the Pearson correlation
    over genes of prediction and target; the model-selection metric of the preset).
    """
    if TOKEN_KEYS.PERT_FLAGS not in tensors:
        raise ValueError(
            "The perturbation objective needs paired minibatches (task='perturbation')."
        )
    target = tensors[TOKEN_KEYS.TARGET_VALUES]
    keep = ~tensors[TOKEN_KEYS.PADDING_MASK]
    pred = generative_outputs["expr"]
    mse = masked_mse(pred, target, keep)
    extra = {}
    if loss == "wmse":
        if TOKEN_KEYS.DE_WEIGHTS not in tensors:
            raise ValueError("The DE-weighted MSE needs per-token weights from the collator.")
        w = tensors[TOKEN_KEYS.DE_WEIGHTS].to(pred.dtype) * keep.to(pred.dtype)
        w = w / w.sum(1, keepdim=True).clamp(min=1e-12)
        value = ((pred - target) ** 2 * w).sum(1).mean()
        extra["perturbation_wmse"] = value.detach()
    else:
        value = mse
    return LossOutput(
        loss=value,
        n_obs_minibatch=target.shape[0],
        extra_metrics={
            "perturbation_mse": mse.detach(),
            **extra,
            "perturbation_pearson": cell_pearson(pred.detach(), target, keep),
        },
    )


def cell_pearson(pred: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean over cells of the Pearson correlation over the kept genes (0 for a constant row)."""
    m = keep.to(pred.dtype)
    n = m.sum(1).clamp(min=1.0)
    p = pred - (pred * m).sum(1, keepdim=True) / n[:, None]
    t = target - (target * m).sum(1, keepdim=True) / n[:, None]
    cov = (p * t * m).sum(1)
    denom = torch.sqrt((p * p * m).sum(1) * (t * t * m).sum(1))
    return torch.where(denom > 0, cov / denom.clamp(min=1e-12), torch.zeros_like(cov)).mean()
