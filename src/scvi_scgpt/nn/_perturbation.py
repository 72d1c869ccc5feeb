"""Layers of the official perturbation model (``TransformerGenerator``)."""

from __future__ import annotations

import torch
from torch import nn

from scvi_scgpt.nn._heads import ExprDecoder

#: Perturbation flag ids: 0 = not perturbed, 1 = perturbed; the official embedding has 3 rows
#: (the third is the default padding id).
PERT_FLAG_IDS = 3


def activation_module(name: str | None) -> nn.Module | None:
    """An activation layer named as in ``torch.nn`` (e.g. ``"ReLU"``), or ``None``."""
    if name is None:
        return None
    layer = getattr(nn, name, None)
    if not (isinstance(layer, type) and issubclass(layer, nn.Module)):
        raise ValueError(f"decoder_activation={name!r} is not a torch.nn activation.")
    return layer()


class AffineExprDecoder(nn.Module):
    """Expression as an affine function of the input value (official ``AffineExprDecoder``).

    ``pred = coeff(x) * value + bias(x)``, where ``coeff_decoder`` and ``bias_decoder`` are
    :class:`ExprDecoder` MLPs of the token outputs ``x``. ``activation`` is applied to both;
    ``adaptive_bias`` scales the bias by the cell's mean non-zero input value.

    Parameters
    ----------
    d_model
        Width of the token outputs.
    explicit_zero_prob
        Also predict the probability that a value is non-zero (from ``coeff_decoder``).
    activation
        Name of a ``torch.nn`` activation, or ``None``.
    adaptive_bias
        Multiply the bias by each cell's mean non-zero input value.
    """

    def __init__(
        self,
        d_model: int,
        explicit_zero_prob: bool = False,
        activation: str | None = None,
        adaptive_bias: bool = False,
    ) -> None:
        super().__init__()
        self.coeff_decoder = ExprDecoder(d_model, explicit_zero_prob)
        self.bias_decoder = ExprDecoder(d_model, False)
        self.activation = activation_module(activation)
        self.adaptive_bias = adaptive_bias

    def forward(self, x: torch.Tensor, values: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(B, L, d)`` outputs and ``(B, L)`` input values -> ``{"pred": (B, L), ...}``."""
        coeff = self.coeff_decoder(x)
        bias = self.bias_decoder(x)["pred"]
        scale = coeff["pred"]
        if self.activation is not None:
            scale = self.activation(scale)
            bias = self.activation(bias)
        if self.adaptive_bias:
            nonzero = (values != 0).sum(1, keepdim=True).clamp(min=1)
            bias = bias * (values.sum(1, keepdim=True) / nonzero)
        out = {"pred": scale * values + bias}
        if "zero_probs" in coeff:
            out["zero_probs"] = coeff["zero_probs"]
        return out


class PerturbationFlagEncoder(nn.Embedding):
    """Embedding of the per-gene perturbation flag (official ``pert_encoder``).

    Three ids (0 not perturbed, 1 perturbed, and a padding id); the row of ``pad_id`` is
    zero and never trained. The official tutorial uses ``pad_id=0``, so unperturbed genes add
    nothing to their token.
    """

    def __init__(self, d_model: int, pad_id: int = 2) -> None:
        if not 0 <= pad_id < PERT_FLAG_IDS:
            raise ValueError(f"pert_pad_id must be 0, 1 or 2, got {pad_id}.")
        super().__init__(PERT_FLAG_IDS, d_model, padding_idx=pad_id)
