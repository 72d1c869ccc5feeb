from __future__ import annotations

import pytest
import torch
from torch import nn

import scvi_scgpt.nn._attention as attention
from scvi_scgpt.nn import (
    AdversarialDiscriminator,
    DomainSpecificBatchNorm1d,
    TransformerEncoder,
    TransformerEncoderLayer,
    grad_reverse,
)


def _torch_layer(ours: TransformerEncoderLayer, d, h, d_hid) -> nn.TransformerEncoderLayer:
    ref = nn.TransformerEncoderLayer(d, h, d_hid, dropout=0.0, batch_first=True)
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=True)
    assert not missing and not unexpected
    return ref.eval()


@pytest.mark.parametrize("norm_first", [False, True])
def test_layer_matches_torch_transformer_layer(norm_first):
    torch.manual_seed(0)
    d, h, d_hid = 32, 4, 48
    ours = TransformerEncoderLayer(d, h, d_hid, dropout=0.0, norm_first=norm_first).eval()
    ref = nn.TransformerEncoderLayer(
        d, h, d_hid, dropout=0.0, batch_first=True, norm_first=norm_first
    )
    ref.load_state_dict(ours.state_dict(), strict=True)
    ref.eval()
    x = torch.randn(3, 10, d)
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[1, 6:] = True
    mask[2, 3:] = True
    with torch.enable_grad():  # keep torch off its nested-tensor fast path
        expected = ref(x, src_key_padding_mask=mask)
    got = ours(x, mask)
    keep = ~mask
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-5, rtol=1e-5)


def test_cls_only_equals_full_pass():
    torch.manual_seed(1)
    enc = TransformerEncoder(3, d_model=16, n_heads=2, d_hid=32, dropout=0.0).eval()
    x = torch.randn(4, 9, 16)
    mask = torch.zeros(4, 9, dtype=torch.bool)
    mask[0, 4:] = True
    full = enc(x, mask)[:, 0]
    cls = enc(x, mask, cls_only=True)[:, 0]
    torch.testing.assert_close(cls, full, atol=1e-6, rtol=1e-6)


def test_padding_does_not_change_real_tokens():
    torch.manual_seed(2)
    enc = TransformerEncoder(2, d_model=16, n_heads=4, d_hid=16, dropout=0.0).eval()
    x = torch.randn(1, 5, 16)
    padded = torch.cat([x, torch.randn(1, 7, 16)], dim=1)
    mask = torch.zeros(1, 12, dtype=torch.bool)
    mask[0, 5:] = True
    torch.testing.assert_close(enc(padded, mask)[:, :5], enc(x), atol=1e-5, rtol=1e-5)


def test_flash_varlen_path_unpads_and_repads(monkeypatch):
    """The flash path (CUDA-only) is checked on CPU with a reference varlen kernel."""

    def reference_varlen(qkv, cu_seqlens, max_len, dropout):
        out = torch.empty_like(qkv[:, 0])
        for s, e in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
            q, k, v = qkv[s:e].permute(1, 2, 0, 3)  # (H, n, Dh)
            out[s:e] = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(0, 1)
        return out

    torch.manual_seed(3)
    attn = attention.SelfAttention(16, 4).eval()
    x = torch.randn(3, 7, 16)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[0, 5:] = True
    mask[2, 2:] = True
    expected = attn(x, mask)
    monkeypatch.setattr(attention, "_flash_varlen", reference_varlen)
    got = attn.out_proj(attn._flash_forward(attn.project_qkv(x), mask, 0.0))
    keep = ~mask
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-5, rtol=1e-5)


def test_grad_reverse_and_discriminator():
    x = torch.randn(4, 8, requires_grad=True)
    grad_reverse(x, 2.0).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, -2.0))
    disc = AdversarialDiscriminator(8, 3)
    assert disc(torch.randn(5, 8)).shape == (5, 3)


def test_dsbn_per_cell_domains_match_single_domain_batches():
    torch.manual_seed(4)
    dsbn = DomainSpecificBatchNorm1d(6, 2, affine=False)
    for bn in dsbn.bns:
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    dsbn.eval()
    x = torch.randn(5, 4, 6)
    domains = torch.tensor([0, 1, 1, 0, 1])
    mixed = dsbn(x, domains)
    for d in (0, 1):
        rows = domains == d
        alone = dsbn.bns[d](x[rows].permute(0, 2, 1)).permute(0, 2, 1)
        torch.testing.assert_close(mixed[rows], alone)
    with pytest.raises(ValueError, match="Domain labels"):
        dsbn(x, torch.tensor([0, 1, 2, 0, 1]))


def test_attention_dropout_separate_from_dropout():
    from scvi_scgpt.module import ArchitectureConfig, SCGPTModule

    torch.manual_seed(3)
    layer = TransformerEncoderLayer(16, 2, 16, dropout=0.5, attention_dropout=0.0).train()
    assert layer.self_attn.dropout == 0.0 and layer.dropout.p == 0.5
    # no randomness left inside attention: two training passes of the attention agree
    x = torch.randn(2, 6, 16)
    torch.testing.assert_close(layer.self_attn(x), layer.self_attn(x))
    module = SCGPTModule(
        ArchitectureConfig(
            n_tokens=10, pad_id=9, d_model=16, n_heads=2, d_hid=16, n_layers=1, dropout=0.3
        )
    )
    assert module.transformer_encoder.layers[0].self_attn.dropout == 0.3  # official default
    with pytest.raises(ValueError, match="attention_dropout"):
        ArchitectureConfig(n_tokens=10, pad_id=9, attention_dropout=1.5)


@pytest.mark.parametrize("norm_first", [False, True])
@pytest.mark.parametrize("cls_only", [False, True])
def test_packed_encoder_matches_padded(norm_first, cls_only):
    torch.manual_seed(4)
    enc = TransformerEncoder(
        3, d_model=16, n_heads=4, d_hid=24, dropout=0.0, norm_first=norm_first
    ).eval()
    x = torch.randn(4, 11, 16, requires_grad=True)
    mask = torch.zeros(4, 11, dtype=torch.bool)
    mask[0, 5:] = True
    mask[2, 2:] = True
    mask[3, 8:] = True
    padded = enc(x, mask, cls_only=cls_only, packed=False)
    packed = enc(x, mask, cls_only=cls_only, packed=True)
    keep = ~mask[:, : padded.shape[1]]
    torch.testing.assert_close(packed[keep], padded[keep], atol=1e-5, rtol=1e-5)
    if not cls_only:
        assert torch.all(packed[mask] == 0)
    # gradients of the real tokens agree too
    (g_pad,) = torch.autograd.grad(padded[keep].square().sum(), x)
    (g_pack,) = torch.autograd.grad(packed[keep].square().sum(), x)
    torch.testing.assert_close(g_pack[~mask], g_pad[~mask], atol=1e-5, rtol=1e-4)
    # the default packs when padding exceeds the threshold
    torch.testing.assert_close(enc(x, mask, cls_only=cls_only), packed)


def test_packed_flash_path_uses_cu_seqlens(monkeypatch):
    """Packed attention hands flash-attn the real tokens and cumulative lengths directly."""
    seen = {}

    def reference_varlen(qkv, cu_seqlens, max_len, dropout):
        seen.update(n=qkv.shape[0], cu=cu_seqlens.tolist(), max_len=max_len)
        out = torch.empty_like(qkv[:, 0])
        for s, e in zip(cu_seqlens[:-1].tolist(), cu_seqlens[1:].tolist()):
            q, k, v = qkv[s:e].permute(1, 2, 0, 3)  # (H, n, Dh)
            out[s:e] = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(0, 1)
        return out

    torch.manual_seed(5)
    enc = TransformerEncoder(2, d_model=16, n_heads=2, d_hid=16, dropout=0.0).eval()
    x = torch.randn(3, 7, 16)
    mask = torch.zeros(3, 7, dtype=torch.bool)
    mask[1, 3:] = True
    mask[2, 6:] = True
    expected = enc(x, mask, packed=False)
    monkeypatch.setattr(attention, "_flash_varlen", reference_varlen)
    for layer in enc.layers:
        monkeypatch.setattr(layer.self_attn, "_flash_applies", lambda qkv: True)
    got = enc(x, mask, packed=True)
    assert seen == {"n": 16, "cu": [0, 7, 10, 16], "max_len": 7}
    keep = ~mask
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-5, rtol=1e-5)


def test_packed_tokens_buckets_round_trip_and_match_padded_attention():
    torch.manual_seed(6)
    lengths = torch.tensor([3, 9, 1, 7, 7, 2, 9, 5, 4])
    mask = torch.arange(9)[None, :] >= lengths[:, None]
    tokens = attention.PackedTokens(mask, max_buckets=4)
    assert len(tokens.buckets) == 4
    # each bucket is padded to its own longest cell only
    widths = sorted(index.shape[1] for index, _, _ in tokens.buckets)
    assert widths == [3, 5, 7, 9]
    x = torch.randn(9, 9, 6)
    packed = tokens.pack(x)
    assert packed.shape[0] == int(lengths.sum())
    torch.testing.assert_close(tokens.unbucket(tokens.bucketed(packed)), packed)
    attn = attention.SelfAttention(6, 2).eval()
    expected = attn(x, mask)
    got = tokens.pad(attn.packed_forward(packed, tokens))
    torch.testing.assert_close(got[~mask], expected[~mask], atol=1e-5, rtol=1e-5)
