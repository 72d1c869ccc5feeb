"""Attention-probability dropout on a CPU without the math kernel: chunks and recompute.

PyTorch's fused CPU attention (the flash kernel) takes no dropout: with ``dropout_p > 0``
``scaled_dot_product_attention`` falls back to its math kernel, which materialises the
``(B, H, L, L)`` scores, probabilities and dropout mask of every layer for the backward
pass. :func:`chunked_attention` computes the same function (``dropout(softmax(q·kᵀ/√d))·v``)
a few heads at a time, so each chunk's scores stay in cache, and saves only ``q``, ``k``,
``v`` and one random seed: the backward pass recomputes each chunk's probabilities and
regenerates its dropout mask from the seed. The dropout mask is drawn as 16-bit integers
(four per 64-bit draw; the dropout probability is rounded to a multiple of 1/65,536), which
halves the cost of the random numbers against ``torch.rand``.

:func:`generated_attention` is the generative-pretraining variant: generated tokens attend
to the known tokens and to their own key only, computed as the known-key scores plus one
own-key column, without the ``(Lg, Lg)`` block that a masked attention over
``[known, generated]`` keys would hold (measured in ``benchmarks/RESULTS.md``, "Pretraining
memory").
"""

from __future__ import annotations

import torch

#: Most attention scores one chunk holds (4 MiB in float32).
SCORES_PER_CHUNK = 1 << 20


def _chunks(q: torch.Tensor, k: torch.Tensor):
    """``(cells, heads)`` slices, each holding at most ``SCORES_PER_CHUNK`` scores."""
    n_cells, n_heads, n_q = q.shape[:3]
    per_head = n_q * k.shape[2]
    heads = max(1, min(n_heads, SCORES_PER_CHUNK // max(per_head, 1)))
    cells = max(1, SCORES_PER_CHUNK // max(per_head * n_heads, 1)) if heads == n_heads else 1
    for c0 in range(0, n_cells, cells):
        for h0 in range(0, n_heads, heads):
            yield slice(c0, c0 + cells), slice(h0, h0 + heads)


def mask_scores(scores: torch.Tensor, allowed: torch.Tensor) -> None:
    """Set disallowed scores to ``-inf`` in place, touching only the masked key columns.

    ``allowed`` broadcasts to ``scores`` (``True`` where attending is allowed). Key columns
    every query may attend to are skipped: with length-sorted cells the padding sits in the
    last few columns, so the fill pass covers a sliver of the scores.
    """
    if allowed.shape[-1] < scores.shape[-1]:  # broadcast along the keys: no columns to skip
        scores.masked_fill_(~allowed, float("-inf"))
        return
    masked = (~allowed.reshape(-1, allowed.shape[-1]).all(0)).nonzero()
    if len(masked) == 0:
        return
    first = int(masked[0])
    scores[..., first:].masked_fill_(~allowed[..., first:], float("-inf"))


def _softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the keys, float32 statistics for reduced dtypes."""
    reduced = scores.dtype in (torch.bfloat16, torch.float16)
    return torch.softmax(scores, -1, dtype=torch.float32) if reduced else scores.softmax(-1)


def _scores(q_scaled, k, mask):
    """One chunk's ``q·kᵀ`` scores, ``-inf`` where ``mask`` disallows the key."""
    scores = torch.matmul(q_scaled, k.transpose(-1, -2))
    if mask is not None:
        mask_scores(scores, mask)
    return scores


def _probabilities(q_scaled, k, mask):
    """Softmax of one chunk's scores (float32 statistics for reduced dtypes)."""
    return _softmax(_scores(q_scaled, k, mask))


def _keep(shape, dropout_p: float, seed: int, index: int, device) -> torch.Tensor:
    """Boolean keep-mask of one chunk, the same on every call with the same seed and index."""
    n = 1
    for s in shape:
        n *= s
    gen = torch.Generator(device=device)
    gen.manual_seed(seed + index)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    bits.random_(-(2**63), 2**63 - 1, generator=gen)
    threshold = round(dropout_p * 65536) - 32768
    return (bits.view(torch.int16)[:n] >= threshold).view(shape)


def _chunk_mask(mask, cells):
    return None if mask is None else (mask[cells] if mask.shape[0] > 1 else mask)


class _ChunkedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, mask, dropout_p, seed):
        scale = q.shape[-1] ** -0.5
        out = torch.empty_like(q)
        for i, (cells, heads) in enumerate(_chunks(q, k)):
            p = _probabilities(q[cells, heads] * scale, k[cells, heads], _chunk_mask(mask, cells))
            if dropout_p > 0:
                p = p.mul_(_keep(p.shape, dropout_p, seed, i, q.device))
            out[cells, heads] = torch.matmul(p.to(v.dtype), v[cells, heads])
        if dropout_p > 0:
            out.mul_(1.0 / (1.0 - dropout_p))
        ctx.save_for_backward(q, k, v, mask)
        ctx.dropout_p, ctx.seed, ctx.scale = dropout_p, seed, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, mask = ctx.saved_tensors
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        p_drop = ctx.dropout_p
        grad_out = grad_out.to(q.dtype)
        if p_drop > 0:
            grad_out = grad_out * (1.0 / (1.0 - p_drop))
        for i, (cells, heads) in enumerate(_chunks(q, k)):
            qc, kc, vc = q[cells, heads], k[cells, heads], v[cells, heads]
            go = grad_out[cells, heads]
            p = _probabilities(qc * ctx.scale, kc, _chunk_mask(mask, cells))
            grad_p = torch.matmul(go, vc.transpose(-1, -2))
            if p_drop > 0:
                keep = _keep(p.shape, p_drop, ctx.seed, i, q.device)
                dv[cells, heads] = torch.matmul((p * keep).to(v.dtype).transpose(-1, -2), go)
                grad_p = grad_p * keep
            else:
                dv[cells, heads] = torch.matmul(p.to(v.dtype).transpose(-1, -2), go)
            grad_p = grad_p.to(p.dtype)
            grad_s = torch.ops.aten._softmax_backward_data(grad_p, p, -1, p.dtype).to(q.dtype)
            dq[cells, heads] = torch.matmul(grad_s, kc)
            dk[cells, heads] = torch.matmul(grad_s.transpose(-1, -2), qc)
        return dq.mul_(ctx.scale), dk.mul_(ctx.scale), dv, None, None, None


def chunked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """``dropout(softmax(q·kᵀ/√d))·v`` in chunks, differentiable, with recompute.

    Parameters
    ----------
    q, k, v
        ``(B, H, Lq, Dh)``, ``(B, H, Lk, Dh)``, ``(B, H, Lk, Dh)``.
    attn_mask
        Boolean mask broadcastable to ``(B, H, Lq, Lk)`` with a batch dimension of ``B`` or
        1, ``True`` where attending is allowed; every query needs at least one allowed key.
    dropout_p
        Dropout of the attention probabilities (the mask is drawn from one seed per call,
        taken from torch's global generator, so ``torch.manual_seed`` fixes it).

    Returns
    -------
    ``(B, H, Lq, Dh)``. Softmax statistics are float32 whatever the dtype of ``q``.
    """
    attn_mask, seed = _mask_and_seed(attn_mask, dropout_p)
    return _ChunkedAttention.apply(q, k, v, attn_mask, float(dropout_p), seed)


def _mask_and_seed(attn_mask: torch.Tensor | None, dropout_p: float):
    """The mask as 4-D, and the call's dropout seed (from torch's global generator)."""
    if attn_mask is not None and attn_mask.dim() < 4:
        attn_mask = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
    return attn_mask, int(torch.randint(0, 2**62, (1,))) if dropout_p > 0 else 0


def _generated_probabilities(q_scaled, k_known, k_self, mask):
    """Softmax over ``[known keys, own key]`` of one chunk: ``(..., Lg, Lk + 1)``."""
    own = (q_scaled * k_self).sum(-1, keepdim=True)
    return _softmax(torch.cat([_scores(q_scaled, k_known, mask), own], -1))


class _GeneratedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, k_self, v_self, mask, dropout_p, seed):
        scale = q.shape[-1] ** -0.5
        n_known = k.shape[2]
        out = torch.empty_like(q)
        for i, (cells, heads) in enumerate(_chunks(q, k)):
            idx = (cells, heads)
            p = _generated_probabilities(
                q[idx] * scale, k[idx], k_self[idx], _chunk_mask(mask, cells)
            )
            if dropout_p > 0:
                p = p.mul_(_keep(p.shape, dropout_p, seed, i, q.device))
            p = p.to(v.dtype)
            out[idx] = torch.matmul(p[..., :n_known], v[idx]).add_(p[..., n_known:] * v_self[idx])
        if dropout_p > 0:
            out.mul_(1.0 / (1.0 - dropout_p))
        ctx.save_for_backward(q, k, v, k_self, v_self, mask)
        ctx.dropout_p, ctx.seed, ctx.scale = dropout_p, seed, scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, k_self, v_self, mask = ctx.saved_tensors
        grads = [torch.empty_like(t) for t in (q, k, v, k_self, v_self)]
        dq, dk, dv, dk_self, dv_self = grads
        p_drop, n_known = ctx.dropout_p, k.shape[2]
        grad_out = grad_out.to(q.dtype)
        if p_drop > 0:
            grad_out = grad_out * (1.0 / (1.0 - p_drop))
        for i, (cells, heads) in enumerate(_chunks(q, k)):
            idx = (cells, heads)
            qc, kc, vc, ks, vs = q[idx], k[idx], v[idx], k_self[idx], v_self[idx]
            go = grad_out[idx]
            p = _generated_probabilities(qc * ctx.scale, kc, ks, _chunk_mask(mask, cells))
            grad_p = torch.cat(
                [torch.matmul(go, vc.transpose(-1, -2)), (go * vs).sum(-1, keepdim=True)], -1
            )
            kept = p
            if p_drop > 0:
                keep = _keep(p.shape, p_drop, ctx.seed, i, q.device)
                kept, grad_p = p * keep, grad_p * keep
            kept = kept.to(v.dtype)
            dv[idx] = torch.matmul(kept[..., :n_known].transpose(-1, -2), go)
            dv_self[idx] = kept[..., n_known:] * go
            grad_s = torch.ops.aten._softmax_backward_data(grad_p.to(p.dtype), p, -1, p.dtype)
            grad_s = grad_s.to(q.dtype)
            g_known, g_own = grad_s[..., :n_known], grad_s[..., n_known:]
            dq[idx] = torch.matmul(g_known, kc).add_(g_own * ks)
            dk[idx] = torch.matmul(g_known.transpose(-1, -2), qc)
            dk_self[idx] = g_own * qc
        for g in (dq, dk, dk_self):
            g.mul_(ctx.scale)
        return dq, dk, dv, dk_self, dv_self, None, None, None


def generated_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_self: torch.Tensor,
    v_self: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Attention of generated tokens to the known tokens and to themselves only.

    The same function as SDPA over keys ``[k, k_self]`` with the generative mask (each
    generated query sees the allowed known keys and its own key), without the
    ``(Lg, Lg)`` block: the own-key score is a row-wise dot product. Chunked with
    recompute, like :func:`chunked_attention`.

    Parameters
    ----------
    q, k_self, v_self
        ``(B, H, Lg, Dh)`` queries, keys and values of the generated tokens.
    k, v
        ``(B, H, Lk, Dh)`` keys and values of the known tokens.
    attn_mask
        Boolean ``(B or 1, 1, 1, Lk)`` mask of the known keys, ``True`` where allowed.
    dropout_p
        Dropout of the attention probabilities (one seed per call from torch's global
        generator).

    Returns
    -------
    ``(B, H, Lg, Dh)``.
    """
    attn_mask, seed = _mask_and_seed(attn_mask, dropout_p)
    return _GeneratedAttention.apply(q, k, v, k_self, v_self, attn_mask, float(dropout_p), seed)
