"""Which numeric precision a forward pass without gradients runs in (``precision=``).

- ``"32"``: float32 everywhere (the default; official parity).
- ``"bf16"`` on a CPU: the transformer's matmul weights are held in bfloat16 for the whole
  call (:class:`~scvi_scgpt.nn._precision.LowPrecisionWeights`: converted and pre-packed
  for oneDNN once, no per-batch casts of the weights); matmuls and attention run in
  bfloat16, LayerNorm, the residual stream, the input encoders and the heads in float32.
- ``"bf16"`` / ``"16"`` on CUDA: ``torch.autocast``.
- ``"auto"``: ``"bf16"`` where the hardware has fast bfloat16 matmuls (a CPU with AMX or
  AVX-512-BF16, a CUDA device that supports bfloat16), else ``"32"``.

The measured speed and fidelity of each choice are in ``docs/performance.md``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from scvi_scgpt.nn._precision import LowPrecisionWeights

#: Values ``precision=`` accepts.
PRECISIONS = ("32", "bf16", "16", "auto")


def fast_bf16_available(device: torch.device | str) -> bool:
    """Whether ``device`` has fast bfloat16 matmuls.

    CPU: AMX tiles or AVX-512-BF16 (as torch reports them); CUDA: bfloat16 support.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``precision`` with ``"auto"`` replaced by ``"bf16"`` or ``"32"``; checks the value."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if precision == "auto":
        return "bf16" if fast_bf16_available(device) else "32"
    if device.type == "cpu" and precision == "16":
        raise ValueError("float16 autocast needs a GPU; use precision='bf16' on CPU.")
    return precision


def inference_precision(
    module: torch.nn.Module, precision: str, device: torch.device | str
) -> contextlib.AbstractContextManager[Any]:
    """A re-enterable context to run ``module``'s forward passes in ``precision``.

    Enter it around each batch; the bfloat16 weight copy (CPU) is made on the first entry
    and dropped with the returned object.

    Parameters
    ----------
    module
        The :class:`~scvi_scgpt.module.SCGPTModule` (its ``transformer_encoder`` is
        converted; anything else stays float32).
    precision
        ``"32"``, ``"bf16"``, ``"16"`` (CUDA only) or ``"auto"``.
    device
        Where the module runs.
    """
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    if precision == "32":
        return torch.autocast(device.type, enabled=False)
    if device.type == "cpu":
        return LowPrecisionWeights(getattr(module, "transformer_encoder", module))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)
