"""Attention scores on request: padded and packed paths against a manual computation."""

from __future__ import annotations

import math

import pytest
import torch

from scvi_scgpt.nn import TransformerEncoder


def _encoder(n_layers: int = 3) -> TransformerEncoder:
    torch.manual_seed(0)
    return TransformerEncoder(n_layers, d_model=16, n_heads=4, d_hid=32, dropout=0.0).eval()


def _batch():
    torch.manual_seed(1)
    x = torch.randn(5, 9, 16)
    lengths = torch.tensor([9, 3, 6, 2, 9])
    padding = torch.arange(9)[None, :] >= lengths[:, None]
    return x, padding, lengths


def _manual(layer, h, padding):
    """softmax(QKᵀ/√d)·V of one layer, written out."""
    attn = layer.self_attn
    q, k, v = attn.project_qkv(h).permute(2, 0, 3, 1, 4).unbind(0)
    raw = q @ k.transpose(-1, -2)
    logits = (raw / math.sqrt(attn.head_dim)).masked_fill(padding[:, None, None, :], -math.inf)
    weights = logits.softmax(-1)
    out = attn.out_proj((weights @ v).transpose(1, 2).flatten(2))
    return raw, weights, out


@pytest.mark.parametrize("packed", [False, True])
def test_scores_equal_the_manual_attention(packed):
    enc = _encoder()
    x, padding, lengths = _batch()
    y, scores = enc(
        x, padding, packed=packed, attention_layer=1, attention_kinds=("raw", "softmax")
    )
    h = enc.layers[0](x, padding)
    raw, weights, out = _manual(enc.layers[1], h, padding)
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(scores["raw"][b, :, :n, :n], raw[b, :, :n, :n])
        torch.testing.assert_close(scores["softmax"][b, :, :n, :n], weights[b, :, :n, :n])
        # zeros wherever the query or the key is padding
        assert scores["raw"][b, :, n:].abs().sum() == 0
        assert scores["raw"][b, :, :, n:].abs().sum() == 0
    # each real query's weights sum to one over the real keys
    real = ~padding
    sums = scores["softmax"].sum(-1).permute(0, 2, 1)[real]
    torch.testing.assert_close(sums, torch.ones_like(sums))
    # the layer output with scores equals the normal (SDPA) path
    plain = enc(x, padding, packed=False)
    torch.testing.assert_close(y[real], plain[real], atol=1e-5, rtol=1e-5)
    # and the manual attention output feeds the same layer result
    torch.testing.assert_close(
        enc.layers[1]._finish(h, out)[real], enc.layers[1](h, padding)[real]
    )


def test_scores_of_the_last_layer_with_cls_only_and_negative_index():
    enc = _encoder()
    x, padding, _ = _batch()
    y, scores = enc(x, padding, cls_only=True, attention_layer=-1)
    assert set(scores) == {"raw"} and scores["raw"].shape == (5, 4, 9, 9)
    torch.testing.assert_close(y[:, 0], enc(x, padding, packed=False)[:, 0], atol=1e-5, rtol=0)


def test_off_by_default_and_bad_requests_raise():
    enc = _encoder()
    x, padding, _ = _batch()
    assert isinstance(enc(x, padding), torch.Tensor)
    with pytest.raises(ValueError, match="outside"):
        enc(x, padding, attention_layer=3)
    with pytest.raises(ValueError, match="kinds"):
        enc(x, padding, attention_layer=0, attention_kinds=("logits",))
