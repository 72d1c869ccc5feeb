"""The perturbation objective of the official ``TransformerGenerator`` tutorial."""

from __future__ import annotations

import torch
from scvi.module.base import LossOutput

from scvi_scgpt._constants import TOKEN_KEYS
from scvi_scgpt.module._losses import masked_mse


def perturbation_loss(
    tensors: dict[str, torch.Tensor], generative_outputs: dict[str, torch.Tensor]
) -> LossOutput:
    """MSE between predicted and perturbed-cell expression over every gene token.

    Parameters
    ----------
    tensors
        Minibatch of the paired-control collator: ``values`` (the control cell),
        ``pert_flags``, ``target_values`` (the perturbed cell) and ``padding_mask``.
    generative_outputs
        Module outputs with ``expr``.

    Returns
    -------
    :class:`~scvi.module.base.LossOutput` with ``extra_metrics["perturbation_mse"]``.
    """
    if TOKEN_KEYS.PERT_FLAGS not in tensors:
        raise ValueError(
            "The perturbation objective needs paired minibatches (task='perturbation')."
        )
    target = tensors[TOKEN_KEYS.TARGET_VALUES]
    keep = ~tensors[TOKEN_KEYS.PADDING_MASK]
    mse = masked_mse(generative_outputs["expr"], target, keep)
    return LossOutput(
        loss=mse,
        n_obs_minibatch=target.shape[0],
        extra_metrics={"perturbation_mse": mse.detach()},
    )
