"""Transformer encoder layers (post-norm, ReLU, no positional encoding)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from scvi_scgpt.nn._attention import (
    AttentionKinds,
    MaybeWithScores,
    PackedTokens,
    SelfAttention,
    keys_attention_mask,
)
from scvi_scgpt.nn._precision import linear

#: Share of padding above which the encoder runs packed (see ``TransformerEncoder``).
PACKING_MIN_PADDING = 0.1


class TransformerEncoderLayer(nn.Module):
    """One encoder layer with the parameter names of ``torch.nn.TransformerEncoderLayer``.

    Post-norm (official scGPT): ``x = norm1(x + attn(x)); x = norm2(x + ffn(x))``; pre-norm
    when ``norm_first``.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_hid: int,
        dropout: float = 0.1,
        *,
        attention_dropout: float | None = None,
        norm_first: bool = False,
        layer_norm_eps: float = 1e-5,
        use_flash: bool = True,
    ) -> None:
        super().__init__()
        attention_dropout = dropout if attention_dropout is None else attention_dropout
        self.self_attn = SelfAttention(
            d_model, n_heads, dropout=attention_dropout, use_flash=use_flash
        )
        self.linear1 = nn.Linear(d_model, d_hid)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_hid, d_model)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.activation = nn.ReLU()
        self.norm_first = norm_first

    def _ffn(self, x: torch.Tensor) -> torch.Tensor:
        # inputs follow the weights' dtype (bfloat16 under LowPrecisionWeights, else a no-op)
        h = linear(x, self.linear1.weight, self.linear1.bias, self.activation)
        return self.dropout2(linear(self.dropout(h), self.linear2.weight, self.linear2.bias))

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        *,
        attn_mask: torch.Tensor | None = None,
        query_index: int | None = None,
        return_attention: AttentionKinds = None,
    ) -> MaybeWithScores:
        """``(B, L, d)`` -> ``(B, L, d)``, or ``(B, 1, d)`` for ``query_index``.

        With ``return_attention``, also the attention scores (see
        :meth:`SelfAttention.forward`).
        """
        residual = x if query_index is None else x[:, query_index : query_index + 1]
        kwargs = {"attn_mask": attn_mask, "query_index": query_index}
        if return_attention is not None:
            kwargs["return_attention"] = return_attention
        h = self.self_attn(self.norm1(x) if self.norm_first else x, key_padding_mask, **kwargs)
        return self._finish(residual, h)

    def _finish(self, residual: torch.Tensor, h) -> torch.Tensor | tuple:
        """Residual, norms and feed-forward after the attention output ``h``."""
        h, scores = h if isinstance(h, tuple) else (h, None)
        if self.norm_first:
            x = residual + self.dropout1(h)
            x = x + self._ffn(self.norm2(x))
        else:
            x = self.norm1(residual + self.dropout1(h))
            x = self.norm2(x + self._ffn(x))
        return x if scores is None else (x, scores)

    def packed_forward(
        self, x: torch.Tensor, tokens: PackedTokens, return_attention: AttentionKinds = None
    ) -> MaybeWithScores:
        """The layer on packed real tokens ``(N, d)`` (same result as :meth:`forward`)."""
        h = self.self_attn.packed_forward(
            self.norm1(x) if self.norm_first else x, tokens, return_attention
        )
        return self._finish(x, h)

    def generative_forward(
        self,
        known: torch.Tensor,
        generated: torch.Tensor,
        known_padding_mask: torch.Tensor | None = None,
        *,
        project_generated: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer under the generative attention mask (feed-forward and norms shared)."""
        a_k, a_g = self.self_attn.generative_forward(
            self.norm1(known) if self.norm_first else known,
            self.norm1(generated) if self.norm_first else generated,
            known_padding_mask,
            project_generated=project_generated,
        )
        return self._finish(known, a_k), self._finish(generated, a_g)


class TransformerEncoder(nn.Module):
    """A stack of :class:`TransformerEncoderLayer` (official ``transformer_encoder``)."""

    def __init__(self, n_layers: int, **layer_kwargs) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(**layer_kwargs) for _ in range(n_layers)
        )

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        *,
        cls_only: bool = False,
        packed: bool | None = None,
        attention_layer: int | None = None,
        attention_kinds: Sequence[str] = ("raw",),
    ) -> MaybeWithScores:
        """Run all layers.

        With ``cls_only`` the last layer computes position 0 only and ``(B, 1, d)`` is returned,
        which gives the same CLS output with less work.

        With ``packed`` (default: when more than ``PACKING_MIN_PADDING`` of the positions are
        padding) the per-token layers run on the real tokens only. Real positions get the
        same outputs either way (up to float rounding); padding positions of a packed run are
        zeros, so use it only where padding outputs are ignored (``<cls>`` embeddings, masked
        losses).

        With ``attention_layer`` (an index; negative counts from the end), that layer also
        returns its per-head attention scores ``{kind: (B, H, L, L)}`` (``attention_kinds``:
        ``"raw"`` q·kᵀ and/or ``"softmax"`` weights) and ``(output, scores)`` is returned.
        That layer then runs an explicit attention; the other layers are unchanged, and
        nothing changes when ``attention_layer`` is ``None``.
        """
        last = len(self.layers) - 1
        want = None
        if attention_layer is not None:
            want = attention_layer + len(self.layers) if attention_layer < 0 else attention_layer
            if not 0 <= want <= last:
                raise ValueError(
                    f"attention_layer={attention_layer} outside the {last + 1} layers."
                )
            if cls_only and want == last:
                cls_only = False  # the scores need every query of the last layer
        scores = None
        attn_mask = keys_attention_mask(key_padding_mask)
        if attn_mask is None:
            key_padding_mask = None
        if packed is None:
            packed = (
                key_padding_mask is not None
                and float(key_padding_mask.float().mean()) > PACKING_MIN_PADDING
            )
        n_packed = 0
        if packed and key_padding_mask is not None:
            n_packed = last if cls_only else last + 1
        if n_packed:
            tokens = PackedTokens(key_padding_mask)
            h = tokens.pack(x)
            for i, layer in enumerate(self.layers[:n_packed]):
                h = layer.packed_forward(h, tokens, attention_kinds if i == want else None)
                if i == want:
                    h, scores = h
            x = tokens.pad(h)
        for i in range(n_packed, last + 1):
            query = 0 if cls_only and i == last else None
            kinds = attention_kinds if i == want else None
            x = self.layers[i](
                x, key_padding_mask, attn_mask=attn_mask, query_index=query, return_attention=kinds
            )
            if i == want:
                x, scores = x
        return x if want is None else (x, scores)

    def generative_forward(
        self,
        known: torch.Tensor,
        generated: torch.Tensor,
        known_padding_mask: torch.Tensor | None = None,
        *,
        project_generated: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run all layers under the generative attention mask."""
        if known_padding_mask is not None and not known_padding_mask.any():
            known_padding_mask = None
        for layer in self.layers:
            known, generated = layer.generative_forward(
                known, generated, known_padding_mask, project_generated=project_generated
            )
        return known, generated
