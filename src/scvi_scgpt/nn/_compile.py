"""Opt-in ``torch.compile`` of the transformer layers' per-token work.

:class:`CompiledLayers` compiles, for every layer of a :class:`TransformerEncoder`, the
block after attention: residual, LayerNorm, feed-forward (``TransformerEncoderLayer._finish``)
-- the element-wise work that compilation can fuse. Attention and the q/k/v projections stay
eager: their kernels (SDPA, the packed length buckets, the chunked dropout attention) are
already fused, and the packed execution's data-dependent shapes would make compilation
break and recompile. Shapes are compiled as dynamic, so batches of new lengths do not
recompile.

Compilation happens on the first forward pass (seconds to minutes on a CPU) and is never
on by default; see ``docs/performance.md`` for the measured effect.
"""

from __future__ import annotations

from types import TracebackType

import torch
from torch import nn


class CompiledLayers:
    """While active, each encoder layer's ``_finish`` runs through ``torch.compile``.

    Re-entrant: the compiled callables are made on the first entry and reused; each exit
    restores the eager methods (nothing compiled stays attached to the module, so it
    pickles and saves as before).

    Parameters
    ----------
    encoder
        A :class:`~scvi_scgpt.nn.TransformerEncoder` (anything with ``.layers``).
    **compile_kwargs
        Passed to :func:`torch.compile` (default ``dynamic=True``).
    """

    def __init__(self, encoder: nn.Module, **compile_kwargs) -> None:
        self.layers = list(encoder.layers)
        self.compile_kwargs = {"dynamic": True, **compile_kwargs}
        self._compiled: list | None = None

    def __enter__(self) -> CompiledLayers:
        if self._compiled is None:
            self._compiled = [
                torch.compile(layer._finish, **self.compile_kwargs) for layer in self.layers
            ]
        for layer, fn in zip(self.layers, self._compiled):
            layer._finish = fn
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for layer in self.layers:
            layer.__dict__.pop("_finish", None)
