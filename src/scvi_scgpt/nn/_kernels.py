"""The attention kernel each case gets: SDPA, or a faster path where SDPA is slow on a CPU.

:func:`attend` is ``scaled_dot_product_attention`` except on a CPU in two cases, both
measured in ``benchmarks/RESULTS.md`` (issue #13) and described in ``docs/performance.md``:

- **bfloat16 inference, short sequences** (at most :data:`EXPLICIT_BF16_MAX_LEN` keys):
  an explicit ``softmax(q·kᵀ)·v`` on batched matmuls in cache-sized chunks
  (:func:`explicit_attention`), faster than the CPU flash kernel there;
- **training with attention-probability dropout**: the flash kernel takes no dropout and
  SDPA's math kernel materialises every layer's ``(B, H, L, L)`` tensors;
  :func:`~scvi_scgpt.nn._chunked_attention.chunked_attention` computes the same function in
  chunks with recompute. :data:`CPU_DROPOUT_KERNEL` switches back to SDPA.

float32 inference without dropout always runs SDPA (official parity).

:func:`attend_generated` is the generative-pretraining attention of the generated tokens
(to the known tokens and to themselves): on a CPU under autograd the own-key kernel
:func:`~scvi_scgpt.nn._chunked_attention.generated_attention`, elsewhere SDPA with the
generative mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scvi_scgpt.nn._chunked_attention import (
    chunked_attention,
    generated_attention,
    mask_scores,
)

#: Longest key sequence for which bfloat16 CPU inference uses the explicit attention; above
#: it the CPU flash kernel is faster (measured on AVX-512-BF16 cores without AMX).
EXPLICIT_BF16_MAX_LEN = 512
#: Most attention scores one explicit-attention chunk holds (4 MiB in bfloat16): small
#: enough to stay in cache between the two matmuls and the softmax, and to be reused by the
#: allocator (larger chunks were slower than the flash kernel).
SCORES_PER_CHUNK = 1 << 21
#: Attention with dropout under autograd on a CPU: ``"chunked"`` (default) or ``"sdpa"``
#: (PyTorch's math kernel).
CPU_DROPOUT_KERNEL = "chunked"


def _explicit_applies(q: torch.Tensor, k: torch.Tensor) -> bool:
    return (
        q.dtype == torch.bfloat16
        and q.device.type == "cpu"
        and not torch.is_grad_enabled()
        and q.shape[-2] > 1
        and k.shape[-2] <= EXPLICIT_BF16_MAX_LEN
    )


def _chunked_applies(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    return (
        CPU_DROPOUT_KERNEL == "chunked"
        and q.device.type == "cpu"
        and torch.is_grad_enabled()
        and (q.requires_grad or k.requires_grad or v.requires_grad)
    )


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """``softmax(q·kᵀ/√d)·v`` in chunks of cells, without gradients.

    Parameters
    ----------
    q, k, v
        ``(B, H, Lq, Dh)``, ``(B, H, Lk, Dh)``, ``(B, H, Lk, Dh)``.
    attn_mask
        Boolean mask broadcastable to ``(B, H, Lq, Lk)``, ``True`` where attending is
        allowed; every query must be allowed at least one key.

    Returns
    -------
    ``(B, H, Lq, Dh)``. The softmax reduces in float32 internally; the scores and
    probabilities are stored in ``q``'s dtype.
    """
    batch = q.shape[0]
    per_cell = q.shape[1] * q.shape[2] * k.shape[2]
    step = max(1, SCORES_PER_CHUNK // max(per_cell, 1))
    scale = q.shape[-1] ** -0.5
    outputs = []
    for start in range(0, batch, step):
        part = slice(start, start + step)
        scores = torch.matmul(q[part] * scale, k[part].transpose(-1, -2))
        if attn_mask is not None:
            mask = attn_mask[part] if attn_mask.shape[0] == batch else attn_mask
            mask_scores(scores, mask)
        outputs.append(torch.matmul(scores.softmax(-1), v[part]))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Scaled dot-product attention (SDPA; see the module docstring for the exceptions).

    Parameters
    ----------
    q, k, v
        ``(B, H, L, Dh)`` queries, keys and values.
    attn_mask
        Boolean mask, ``True`` where attending is allowed, or ``None``.
    dropout_p
        Dropout of the attention probabilities.

    Returns
    -------
    ``(B, H, Lq, Dh)`` attention outputs.
    """
    if dropout_p == 0.0 and _explicit_applies(q, k):
        return explicit_attention(q, k, v, attn_mask)
    if dropout_p > 0.0 and _chunked_applies(q, k, v):
        return chunked_attention(q, k, v, attn_mask, dropout_p)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)


def attend_generated(
    q: torch.Tensor,
    k_known: torch.Tensor,
    v_known: torch.Tensor,
    k_self: torch.Tensor,
    v_self: torch.Tensor,
    known_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Generated tokens' attention: to the allowed known keys and to their own key only.

    On a CPU under autograd (training, with or without attention dropout) this is
    :func:`~scvi_scgpt.nn._chunked_attention.generated_attention`: no ``(Lg, Lg)`` block, no
    mask of the generated keys, recompute in the backward pass. Together with the chunked
    attention of the known tokens, a d_model-64 pretraining step at 1,200 tokens runs 5.5x
    faster with 8x less added memory than through SDPA with dropout, and 1.3x faster without
    dropout ("Pretraining memory" in ``benchmarks/RESULTS.md``). Elsewhere, or with
    :data:`CPU_DROPOUT_KERNEL` set to ``"sdpa"``, SDPA over ``[known keys, generated keys]``
    with the generative mask.

    Parameters
    ----------
    q, k_self, v_self
        ``(B, H, Lg, Dh)`` of the generated tokens.
    k_known, v_known
        ``(B, H, Lk, Dh)`` of the known tokens.
    known_mask
        ``(B, 1, 1, Lk)`` bool, ``True`` at the known keys that may be attended, or ``None``.
    dropout_p
        Dropout of the attention probabilities.
    """
    if _chunked_applies(q, k_known, v_known):
        return generated_attention(q, k_known, v_known, k_self, v_self, known_mask, dropout_p)
    batch, n_gen, n_known = q.shape[0], q.shape[2], k_known.shape[2]
    allowed = (
        torch.ones(batch, 1, 1, n_known, dtype=torch.bool, device=q.device)
        if known_mask is None
        else known_mask
    )
    eye = torch.eye(n_gen, dtype=torch.bool, device=q.device)
    mask = torch.cat(
        [allowed.expand(batch, 1, n_gen, n_known), eye.expand(batch, 1, n_gen, n_gen)], dim=3
    )  # (B, 1, Lg, Lk + Lg)
    keys, values = torch.cat([k_known, k_self], 2), torch.cat([v_known, v_self], 2)
    return attend(q, keys, values, mask, dropout_p)
