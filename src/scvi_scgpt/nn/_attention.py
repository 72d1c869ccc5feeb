"""Multi-head self-attention with the parameter layout of ``torch.nn.MultiheadAttention``.

The fused ``in_proj_weight`` (rows ``q | k | v``, heads contiguous) equals the layout of the
official flash-attn ``Wqkv`` weights, so official checkpoints load by renaming keys only.
Attention runs through :func:`torch.nn.functional.scaled_dot_product_attention`; on CUDA with
half precision and flash-attn installed, the variable-length flash kernel is used instead.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from scvi_scgpt.nn._kernels import attend, attend_generated
from scvi_scgpt.nn._precision import linear

_FLASH_AVAILABLE = importlib.util.find_spec("flash_attn") is not None


def flash_attn_available() -> bool:
    """Whether the optional ``flash-attn`` package is importable."""
    return _FLASH_AVAILABLE


def _flash_varlen(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_len: int, dropout: float):
    from flash_attn import flash_attn_varlen_qkvpacked_func

    return flash_attn_varlen_qkvpacked_func(qkv, cu_seqlens, max_len, dropout_p=dropout)


def keys_attention_mask(key_padding_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Turn a ``(B, L)`` padding mask (``True`` = pad) into an SDPA key mask.

    Returns ``(B, 1, 1, L)`` bool, ``True`` where attending is allowed, or ``None`` when
    nothing is padded.
    """
    if key_padding_mask is None or not key_padding_mask.any():
        return None
    return (~key_padding_mask)[:, None, None, :]


#: Most length buckets attention is split into in packed execution without flash-attn.
MAX_LENGTH_BUCKETS = 4


class PackedTokens:
    """Where the real (non-padding) tokens of a padded ``(B, L)`` batch are.

    Packed execution runs the per-token layers (projections, feed-forward, norms) on the
    ``N`` real tokens only. Without flash-attn, attention runs on cells grouped into up to
    ``max_buckets`` buckets of similar length, each padded to its own longest cell, which
    saves most of the quadratic work the batch-wide padding would cost.

    Parameters
    ----------
    key_padding_mask
        ``(B, L)`` bool, ``True`` at padding.
    max_buckets
        Most length buckets for attention.
    """

    def __init__(self, key_padding_mask: torch.Tensor, max_buckets: int = MAX_LENGTH_BUCKETS):
        keep = ~key_padding_mask
        self.shape = tuple(key_padding_mask.shape)
        self.index = keep.flatten().nonzero().squeeze(1)
        self._lengths = keep.sum(1)
        self.cu_seqlens = F.pad(self._lengths.cumsum(0, dtype=torch.int32), (1, 0))
        self.max_buckets = max(int(max_buckets), 1)

    @functools.cached_property
    def buckets(self) -> list:
        """``(token index (nb, Lb), valid (nb, Lb), key mask)`` per bucket of similar lengths.

        Built on first use (the flash-attn path never needs them). Token indices point into
        the packed ``(N, ...)`` array; padding slots point at row ``N`` (a zero row appended
        before gathering). Each bucket also carries its SDPA key mask, ``None`` when it has no
        padding.
        """
        lengths = self._lengths
        n_tokens = int(lengths.sum())
        starts = self.cu_seqlens[:-1].long()
        cells = torch.argsort(lengths, stable=True)
        buckets = []
        for group in torch.tensor_split(cells, min(self.max_buckets, len(cells))):
            if len(group) == 0:
                continue
            lens = lengths[group]
            width = int(lens.max())
            pos = torch.arange(width, device=lengths.device)
            valid = pos[None, :] < lens[:, None]
            index = (starts[group][:, None] + pos[None, :]).masked_fill(~valid, n_tokens)
            mask = None if int(lens.min()) == width else valid[:, None, None, :]
            buckets.append((index, valid, mask))
        return buckets

    @functools.cached_property
    def bucket_positions(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``(cells (nb,), padded positions (nb, Lb))`` of each bucket's rows and slots.

        Slot ``p`` of a bucket row is the ``p``-th real token of that cell; for padding slots
        the position is one of the cell's padding positions (its values are zeros).
        """
        lengths = self._lengths
        n_cells, n_pos = self.shape
        real = torch.zeros(n_cells * n_pos, dtype=torch.bool, device=lengths.device)
        real[self.index] = True
        # real positions first, in order, then the padding positions
        order = torch.argsort(~real.view(n_cells, n_pos), dim=1, stable=True)
        cells = torch.argsort(lengths, stable=True)
        out = []
        for group in torch.tensor_split(cells, min(self.max_buckets, len(cells))):
            if len(group) == 0:
                continue
            width = int(lengths[group].max())
            out.append((group, order[group, :width]))
        return out

    def scatter_scores(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Per-bucket ``(nb, H, Lb, Lb)`` scores -> ``(B, H, L, L)``, zeros at padding."""
        n_cells, n_pos = self.shape
        first = parts[0]
        full = first.new_zeros((n_cells, first.shape[1], n_pos, n_pos))
        for part, (_, valid, _), (cells, positions) in zip(
            parts, self.buckets, self.bucket_positions
        ):
            pair = valid[:, :, None] & valid[:, None, :]  # (nb, Lb, Lb)
            values = part.permute(0, 2, 3, 1) * pair[..., None]  # (nb, Lb, Lb, H)
            full[cells[:, None, None], :, positions[:, :, None], positions[:, None, :]] = values
        return full

    @property
    def max_len(self) -> int:
        """Longest sequence (flash-attn's ``max_seqlen``)."""
        return int(self._lengths.max())

    def pack(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, ...)`` -> ``(N, ...)`` real tokens, cell after cell."""
        return x.flatten(0, 1).index_select(0, self.index)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, ...)`` -> ``(B, L, ...)`` with zeros at the padding."""
        full = x.new_zeros((self.shape[0] * self.shape[1], *x.shape[1:]))
        return full.index_copy(0, self.index, x).unflatten(0, self.shape)

    def bucketed(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(N, ...)`` -> one ``(nb, Lb, ...)`` tensor per length bucket (zero padding)."""
        extended = torch.cat([x, x.new_zeros((1, *x.shape[1:]))])
        return [extended[index] for index, _, _ in self.buckets]

    @functools.cached_property
    def _from_buckets(self) -> torch.Tensor:
        order = torch.cat([index[valid] for index, valid, _ in self.buckets])
        return torch.argsort(order)

    def unbucket(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`bucketed`: per-bucket outputs -> ``(N, ...)``."""
        flat = torch.cat([part[valid] for part, (_, valid, _) in zip(parts, self.buckets)])
        return flat.index_select(0, self._from_buckets)


#: Kinds of attention scores a layer can return.
ATTENTION_KINDS = ("raw", "softmax")
#: Which attention scores to return (``None``: none, the fast path).
AttentionKinds = Sequence[str] | None
#: An output, or ``(output, {kind: (B, H, L, L) scores})`` when scores were asked for.
MaybeWithScores = torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]


def _check_kinds(kinds: Sequence[str]) -> tuple[str, ...]:
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    unknown = [k for k in kinds if k not in ATTENTION_KINDS]
    if unknown or not kinds:
        raise ValueError(f"Attention kinds must be among {ATTENTION_KINDS}, got {kinds!r}.")
    return kinds


def attention_with_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_padding_mask: torch.Tensor | None,
    kinds: Sequence[str],
    dropout: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Explicit ``softmax(q·kᵀ/√d)·v`` that also returns the scores.

    Parameters
    ----------
    q, k, v
        ``(B, H, L, Dh)``.
    key_padding_mask
        ``(B, L)`` bool, ``True`` at padding, or ``None``.
    kinds
        ``"raw"`` (q·kᵀ, unscaled: the official attention-GRN input) and/or ``"softmax"``
        (the attention weights).
    dropout
        Dropout of the attention weights (the returned weights are before dropout).

    Returns
    -------
    The attention output ``(B, H, L, Dh)`` and ``{kind: (B, H, L, L)}``; scores are zero
    wherever the query or the key is padding.
    """
    raw = q @ k.transpose(-1, -2)
    logits = raw / math.sqrt(q.shape[-1])
    pad = None
    if key_padding_mask is not None and key_padding_mask.any():
        logits = logits.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        pad = (key_padding_mask[:, :, None] | key_padding_mask[:, None, :])[:, None]
    weights = logits.float().softmax(-1).to(q.dtype)
    out = F.dropout(weights, dropout) @ v if dropout > 0 else weights @ v
    scores = {}
    for kind in kinds:
        value = raw if kind == "raw" else weights
        scores[kind] = value if pad is None else value.masked_fill(pad, 0.0)
    return out, scores


class SelfAttention(nn.Module):
    """Multi-head self-attention over ``(B, L, d)`` inputs.

    Parameters
    ----------
    d_model
        Model width.
    n_heads
        Number of heads (``d_model`` must be divisible by it).
    dropout
        Attention-probability dropout (training only).
    use_flash
        Use flash-attn's varlen kernel when possible (CUDA, fp16/bf16, package installed).
    """

    def __init__(
        self, d_model: int, n_heads: int, dropout: float = 0.0, use_flash: bool = True
    ) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads}).")
        self.d_model = d_model
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.dropout = dropout
        self.use_flash = use_flash
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as ``torch.nn.MultiheadAttention`` does."""
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def project_qkv(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, d)`` -> ``(B, L, 3, H, Dh)`` fused projections."""
        qkv = linear(x, self.in_proj_weight, self.in_proj_bias)
        return qkv.unflatten(-1, (3, self.n_heads, self.head_dim))

    def forward(
        self,
        x: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        *,
        attn_mask: torch.Tensor | None = None,
        query_index: int | None = None,
        return_attention: AttentionKinds = None,
    ) -> MaybeWithScores:
        """Attend.

        Parameters
        ----------
        x
            ``(B, L, d)`` inputs.
        key_padding_mask
            ``(B, L)`` bool, ``True`` at padding (ignored as keys).
        attn_mask
            Precomputed ``(B, 1, 1, L)`` bool mask, ``True`` where attention is allowed (the
            inverse of ``key_padding_mask``); saves rebuilding it in every layer.
        query_index
            When given, compute the output of this position only (``(B, 1, d)``); the last
            layer of a CLS-embedding pass needs nothing else.
        return_attention
            Also return per-head scores ``{kind: (B, H, L, L)}`` (kinds ``"raw"``,
            ``"softmax"``; see :func:`attention_with_scores`). This runs an explicit
            attention instead of SDPA / flash-attn, so ask only when the scores are needed.
        """
        dropout = self.dropout if self.training else 0.0
        qkv = self.project_qkv(x)
        if return_attention is not None:
            if query_index is not None:
                raise ValueError("Attention scores need every query: no query_index.")
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            out, scores = attention_with_scores(
                q, k, v, key_padding_mask, _check_kinds(return_attention), dropout
            )
            return self._project_out(out.transpose(1, 2).flatten(2)), scores
        if query_index is None and self._flash_applies(qkv):
            return self._project_out(self._flash_forward(qkv, key_padding_mask, dropout))
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, L, Dh)
        if query_index is not None:
            q = q[:, :, query_index : query_index + 1]
        if attn_mask is None and key_padding_mask is not None:
            attn_mask = keys_attention_mask(key_padding_mask)
        out = attend(q, k, v, attn_mask, dropout)
        return self._project_out(out.transpose(1, 2).flatten(2))

    def _project_out(self, x: torch.Tensor) -> torch.Tensor:
        """``out_proj`` (through the packed bfloat16 kernel when one is active)."""
        return linear(x, self.out_proj.weight, self.out_proj.bias)

    def _flash_applies(self, qkv: torch.Tensor) -> bool:
        """flash-attn is wanted, installed, and takes this tensor (CUDA, half precision)."""
        return (
            self.use_flash
            and _FLASH_AVAILABLE
            and qkv.is_cuda
            and qkv.dtype in (torch.float16, torch.bfloat16)
        )

    def packed_forward(
        self, x: torch.Tensor, tokens: PackedTokens, return_attention: AttentionKinds = None
    ) -> MaybeWithScores:
        """Attend over packed tokens: ``(N, d)`` real tokens of ``tokens`` -> ``(N, d)``.

        The projections run on the real tokens only; the attention runs per length bucket
        (SDPA) or, with flash-attn on CUDA half precision, directly on the packed sequences.
        With ``return_attention``, each bucket runs the explicit attention and the scores are
        returned as ``{kind: (B, H, L, L)}`` in the padded layout (as :meth:`forward`).
        """
        dropout = self.dropout if self.training else 0.0
        qkv = linear(x, self.in_proj_weight, self.in_proj_bias)
        if return_attention is not None:
            kinds = _check_kinds(return_attention)
            outputs, parts = [], {kind: [] for kind in kinds}
            for part, (_, valid, _) in zip(tokens.bucketed(qkv), tokens.buckets):
                q, k, v = part.unflatten(-1, (3, self.n_heads, self.head_dim)).permute(
                    2, 0, 3, 1, 4
                )
                out, scores = attention_with_scores(q, k, v, ~valid, kinds, dropout)
                outputs.append(out.transpose(1, 2).flatten(2))
                for kind in kinds:
                    parts[kind].append(scores[kind])
            full = {kind: tokens.scatter_scores(parts[kind]) for kind in kinds}
            return self._project_out(tokens.unbucket(outputs)), full
        if self._flash_applies(qkv):
            packed = qkv.unflatten(-1, (3, self.n_heads, self.head_dim))
            out = _flash_varlen(packed, tokens.cu_seqlens, tokens.max_len, dropout)
            return self._project_out(out.flatten(1))
        outputs = []
        for part, (_, _, mask) in zip(tokens.bucketed(qkv), tokens.buckets):
            q, k, v = part.unflatten(-1, (3, self.n_heads, self.head_dim)).permute(2, 0, 3, 1, 4)
            out = attend(q, k, v, mask, dropout)
            outputs.append(out.transpose(1, 2).flatten(2))
        return self._project_out(tokens.unbucket(outputs))

    def generative_forward(
        self,
        known: torch.Tensor,
        generated: torch.Tensor,
        known_padding_mask: torch.Tensor | None = None,
        *,
        project_generated: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention with the scGPT generative mask.

        Known tokens attend to all known tokens; a generated token attends to the known tokens
        and to itself only. Two SDPA calls: known queries against known keys, and generated
        queries against ``[known keys, generated keys]`` with a mask that keeps only the
        generated token's own key in the second block.

        Parameters
        ----------
        known
            ``(B, Lk, d)`` known (perception) tokens, ``<cls>`` first.
        generated
            ``(B, Lg, d)`` tokens to generate (gene embedding + flag, no value).
        known_padding_mask
            ``(B, Lk)`` bool, ``True`` at padding of the known tokens. Padded generated
            tokens need no mask: nothing attends to them and their outputs are ignored.
        project_generated
            Apply ``out_proj`` to the generated tokens' output. The official pretraining code
            does not (its generated branch has no output projection), which is the default.

        Returns
        -------
        Outputs for the known and the generated tokens.
        """
        dropout = self.dropout if self.training else 0.0
        qkv_k = self.project_qkv(known).permute(2, 0, 3, 1, 4)  # (3, B, H, Lk, Dh)
        qkv_g = self.project_qkv(generated).permute(2, 0, 3, 1, 4)
        q_k, k_k, v_k = qkv_k.unbind(0)
        q_g, k_g, v_g = qkv_g.unbind(0)
        known_mask = keys_attention_mask(known_padding_mask)
        out_k = attend(q_k, k_k, v_k, known_mask, dropout)
        out_g = attend_generated(q_g, k_k, v_k, k_g, v_g, known_mask, dropout)
        out_k = self._project_out(out_k.transpose(1, 2).flatten(2))
        out_g = out_g.transpose(1, 2).flatten(2)
        if project_generated:
            out_g = self._project_out(out_g)
        return out_k, out_g

    def _flash_forward(self, qkv, key_padding_mask, dropout):
        if key_padding_mask is None:
            key_padding_mask = torch.zeros(qkv.shape[:2], dtype=torch.bool, device=qkv.device)
        tokens = PackedTokens(key_padding_mask)
        out = _flash_varlen(tokens.pack(qkv), tokens.cu_seqlens, tokens.max_len, dropout)
        return tokens.pad(out).flatten(2)
