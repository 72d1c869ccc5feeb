"""Reduced-precision inference: the matmul weights held in bfloat16.

:class:`LowPrecisionWeights` swaps the matmul weights of a module (the ``nn.Linear``
layers and the fused attention projection) for a bfloat16 copy while it is active, and
restores the original tensors on exit. The layers cast their inputs to their weights'
dtype, so the matmuls and the attention run in bfloat16 while LayerNorm, the residual
stream and the softmax statistics stay in float32. With float32 weights every cast is a
no-op and nothing changes (official parity).

On a CPU with oneDNN, each bfloat16 weight matrix is also pre-packed once into oneDNN's
blocked layout (``torch.ops.mkldnn._reorder_linear_weight``), and :func:`linear` runs the
layer through oneDNN's linear kernel with the bias and a ReLU fused
(``torch.ops.mkldnn._linear_pointwise``, the kernel ``torch.compile`` uses for frozen CPU
models): no per-call repacking and no separate bias pass. Each packed weight is checked
against ``F.linear`` on a probe when it is made; where packing is unavailable or disagrees,
the plain bfloat16 ``F.linear`` is used.
"""

from __future__ import annotations

from types import TracebackType

import torch
import torch.nn.functional as F
from torch import nn

#: Pre-pack the bfloat16 weights for oneDNN by default (``LowPrecisionWeights(pack=None)``).
PACK_WEIGHTS = True
#: Attribute a weight parameter carries while its pre-packed bfloat16 copy is active.
PACKED_ATTR = "_scgpt_packed_weight"


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


def _packing_available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


def pack_linear_weight(weight: torch.Tensor) -> torch.Tensor | None:
    """oneDNN-packed copy of a bfloat16 ``(out, in)`` CPU weight, or ``None``.

    ``None`` where oneDNN packing is unavailable, fails, or the packed kernel disagrees with
    ``F.linear`` on a random probe (relative error above 1e-2).
    """
    if weight.dim() != 2 or weight.device.type != "cpu" or not _packing_available():
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight)
        probe = torch.randn(
            8, weight.shape[1], dtype=weight.dtype, generator=torch.Generator().manual_seed(0)
        )
        got = torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [], "").float()
    except (RuntimeError, TypeError, NotImplementedError):
        return None
    want = F.linear(probe.float(), weight.float())
    if not float((got - want).norm()) <= 1e-2 * float(want.norm()) + 1e-6:
        return None
    return packed


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: nn.Module | None = None,
) -> torch.Tensor:
    """``activation(x @ weight.T + bias)``, through the pre-packed kernel when one is active.

    Outside autocast, ``x`` is cast to the weight's dtype first (a no-op in float32; under
    autocast the autocast rules decide). The packed kernel runs only without gradients and
    outside ``torch.compile``; a ``nn.ReLU`` activation is fused into it.
    """
    packed = getattr(weight, PACKED_ATTR, None)
    fuse = activation is None or isinstance(activation, nn.ReLU)
    eager = not torch.compiler.is_compiling()  # torch.compile traces the plain F.linear
    if packed is not None and fuse and eager and not torch.is_grad_enabled():
        attr = "none" if activation is None else "relu"
        # 2-D input: oneDNN runs a 3-D input several times slower
        rows = x.reshape(-1, x.shape[-1]).to(weight.dtype)
        y = torch.ops.mkldnn._linear_pointwise(rows, packed, bias, attr, [], "")
        return y.view(*x.shape[:-1], y.shape[-1])
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        x = x.to(weight.dtype)
    y = F.linear(x, weight, bias)
    return y if activation is None else activation(y)


class LowPrecisionWeights:
    """While active, ``module``'s matmul weights are a ``dtype`` copy (made once, on entry).

    Re-entrant across batches: the copy (and, on a CPU, each weight matrix's oneDNN-packed
    form) is made on the first entry and reused; each exit puts the original tensors back,
    so training, saving and float32 inference never see the copy.

    Parameters
    ----------
    module
        Usually the transformer encoder.
    dtype
        Reduced dtype (``torch.bfloat16``).
    pack
        Pre-pack the weight matrices for oneDNN's linear kernel where possible (default
        :data:`PACK_WEIGHTS`).
    """

    def __init__(
        self,
        module: nn.Module,
        dtype: torch.dtype = torch.bfloat16,
        *,
        pack: bool | None = None,
    ) -> None:
        self.dtype = dtype
        self.pack = PACK_WEIGHTS if pack is None else pack
        self._params = matmul_parameters(module)
        self._low: list[torch.Tensor] | None = None
        self._packed: list[torch.Tensor | None] | None = None
        self._saved: list[torch.Tensor] | None = None

    @property
    def n_packed(self) -> int:
        """How many weight matrices run through the packed kernel (after the first entry)."""
        return sum(p is not None for p in self._packed or [])

    def __enter__(self) -> LowPrecisionWeights:
        if self._saved is not None:
            raise RuntimeError("LowPrecisionWeights is already active.")
        if self._low is None:
            self._low = [p.detach().to(self.dtype) for p in self._params]
            self._packed = [pack_linear_weight(low) if self.pack else None for low in self._low]
        self._saved = [p.data for p in self._params]
        for p, low, packed in zip(self._params, self._low, self._packed or []):
            p.data = low
            if packed is not None:
                setattr(p, PACKED_ATTR, packed)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for p, saved in zip(self._params, self._saved or []):
            p.data = saved
            p.__dict__.pop(PACKED_ATTR, None)
        self._saved = None
