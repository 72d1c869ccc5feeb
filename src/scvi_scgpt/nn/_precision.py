"""Reduced-precision inference: the matmul weights held in bfloat16.

:class:`LowPrecisionWeights` swaps the matmul weights of a module (the ``nn.Linear``
  layers and the fused attention projection) for a bfloat16 copy while it is active, and
  restores the original tensors on exit. The layers cast their inputs to their weights'
  dtype, so the matmuls and the attention run in bfloat16 while LayerNorm, the residual
  stream and the softmax statistics stay in float32. With float32 weights every cast is a
  no-op and nothing changes (official parity).
"""

from __future__ import annotations

from types import TracebackType

import torch
from torch import nn


def matmul_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters of ``module``'s matmuls: every ``nn.Linear`` and fused ``in_proj``.

    LayerNorm, embedding and normalisation parameters are left out: they stay in float32.
    """
    found: dict[int, nn.Parameter] = {}
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            params = [sub.weight, sub.bias]
        else:
            params = [getattr(sub, "in_proj_weight", None), getattr(sub, "in_proj_bias", None)]
        for p in params:
            if isinstance(p, nn.Parameter):
                found[id(p)] = p
    return list(found.values())


class LowPrecisionWeights:
    """While active, ``module``'s matmul weights are a ``dtype`` copy (made once, on entry).

    Re-entrant across batches: the copy is made on the first entry and reused; each exit
    puts the original tensors back, so training, saving and float32 inference never see
    the copy.

    Parameters
    ----------
    module
        Usually the transformer encoder.
    dtype
        Reduced dtype (``torch.bfloat16``).
    """

    def __init__(self, module: nn.Module, dtype: torch.dtype = torch.bfloat16) -> None:
        self.dtype = dtype
        self._params = matmul_parameters(module)
        self._low: list[torch.Tensor] | None = None
        self._saved: list[torch.Tensor] | None = None

    def __enter__(self) -> LowPrecisionWeights:
        if self._saved is not None:
            raise RuntimeError("LowPrecisionWeights is already active.")
        if self._low is None:
            self._low = [p.detach().to(self.dtype) for p in self._params]
        self._saved = [p.data for p in self._params]
        for p, low in zip(self._params, self._low):
            p.data = low
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for p, saved in zip(self._params, self._saved or []):
            p.data = saved
        self._saved = None
