"""bf16 weights for inference, the explicit short attention and the chunked attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import scvi_scgpt.nn._chunked_attention as chunked
from scvi_scgpt.nn import TransformerEncoder
from scvi_scgpt.nn._kernels import attend, explicit_attention
from scvi_scgpt.nn._precision import LowPrecisionWeights, matmul_parameters


def _qkv(shape=(3, 2, 9, 4), dtype=torch.float64, grad=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g, dtype=dtype, requires_grad=grad) for _ in range(3)]


def _key_mask(batch=3, length=9):
    mask = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    mask[1, ..., 6:] = False
    return mask


def _encoder():
    torch.manual_seed(0)
    return TransformerEncoder(2, d_model=16, n_heads=2, d_hid=24, dropout=0.0).eval()


def test_low_precision_weights_swap_and_restore():
    enc = _encoder()
    before = {n: (p.data_ptr(), p.dtype) for n, p in enc.named_parameters()}
    held = LowPrecisionWeights(enc)
    matmul = {id(p) for p in matmul_parameters(enc)}
    for _ in range(2):  # re-entered once per batch
        with held:
            for p in enc.parameters():
                expect = torch.bfloat16 if id(p) in matmul else torch.float32
                assert p.dtype == expect
    for n, p in enc.named_parameters():
        assert (p.data_ptr(), p.dtype) == before[n]  # the original storage
    assert any("norm" in n for n, p in enc.named_parameters() if id(p) not in matmul)


def test_encoder_under_bf16_weights_is_float32_and_close():
    enc = _encoder()
    x = torch.randn(4, 12, 16)
    pad = torch.zeros(4, 12, dtype=torch.bool)
    pad[2, 7:] = True
    with torch.no_grad():
        ref = enc(x, pad)
        with LowPrecisionWeights(enc):
            low = enc(x, pad)
        again = enc(x, pad)
    assert low.dtype == torch.float32
    assert torch.equal(again, ref)
    rel = (low - ref)[~pad].norm() / ref[~pad].norm()
    assert rel < 3e-2


@pytest.mark.parametrize("mask", [None, "keys", "full"])
def test_explicit_attention_matches_sdpa(mask, monkeypatch):
    q, k, v = _qkv()
    if mask == "keys":
        mask = _key_mask()
    elif mask == "full":
        mask = torch.ones(3, 1, 9, 9, dtype=torch.bool).tril()
    monkeypatch.setattr("scvi_scgpt.nn._kernels.SCORES_PER_CHUNK", 2 * 9 * 9)  # 1 cell
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(explicit_attention(q, k, v, mask), expected)


def test_attend_uses_explicit_path_for_short_bf16_inference(monkeypatch):
    q, k, v = (t.to(torch.bfloat16) for t in _qkv())
    calls = []
    monkeypatch.setattr(
        "scvi_scgpt.nn._kernels.explicit_attention", lambda *a: calls.append(1) or a[0]
    )
    with torch.no_grad():
        attend(q, k, v)
    attend(q.float(), k.float(), v.float())
    assert calls == [1]


@pytest.mark.parametrize("mask", [None, "keys", "full"])
def test_chunked_attention_matches_sdpa_values_and_gradients(mask, monkeypatch):
    q, k, v = _qkv(grad=True)
    if mask == "keys":
        mask = _key_mask()
    elif mask == "full":
        mask = torch.ones(3, 1, 9, 9, dtype=torch.bool).tril()
    monkeypatch.setattr(chunked, "SCORES_PER_CHUNK", 9 * 9)  # one head per chunk
    out = chunked.chunked_attention(q, k, v, mask)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    for a, b in zip(
        torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)
    ):
        torch.testing.assert_close(a, b)


def test_chunked_attention_dropout_gradients_and_seed():
    q, k, v = _qkv(shape=(2, 2, 6, 3), grad=True)
    mask = torch.ones(2, 1, 1, 6, dtype=torch.bool)
    mask[0, ..., 4:] = False

    def fn(q, k, v):
        return chunked._ChunkedAttention.apply(q, k, v, mask, 0.3, 1234)

    assert torch.autograd.gradcheck(fn, (q, k, v))
    torch.manual_seed(5)
    a = chunked.chunked_attention(q, k, v, mask, 0.3)
    torch.manual_seed(5)
    b = chunked.chunked_attention(q, k, v, mask, 0.3)
    torch.testing.assert_close(a, b)
    ones = torch.ones(2, 2, 64, 8)
    dropped = chunked.chunked_attention(ones, ones, ones, None, 0.25)
    assert abs(float(dropped.mean()) - 1.0) < 0.05  # inverted dropout keeps the mean
    assert not torch.equal(dropped, ones)


def test_attend_sends_cpu_training_with_dropout_to_the_chunked_kernel(monkeypatch):
    import scvi_scgpt.nn._kernels as kernels

    calls = []
    monkeypatch.setattr(kernels, "chunked_attention", lambda *a: calls.append(a[-1]) or a[0])
    q, k, v = _qkv(dtype=torch.float32, grad=True)
    attend(q, k, v, None, 0.2)
    with torch.no_grad():
        attend(q, k, v, None, 0.2)  # no autograd: SDPA
    attend(q, k, v, None, 0.0)  # no dropout: SDPA
    monkeypatch.setattr(kernels, "CPU_DROPOUT_KERNEL", "sdpa")
    attend(q, k, v, None, 0.2)
    assert calls == [0.2]


def test_encoder_trains_with_attention_dropout():
    torch.manual_seed(0)
    enc = TransformerEncoder(2, d_model=16, n_heads=2, d_hid=24, dropout=0.0)
    enc.layers[0].self_attn.dropout = enc.layers[1].self_attn.dropout = 0.2
    enc.train()
    x = torch.randn(3, 10, 16)
    pad = torch.zeros(3, 10, dtype=torch.bool)
    pad[1, 7:] = True
    enc(x, pad)[~pad].square().sum().backward()
    grads = [p.grad for p in enc.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_compiled_layers_install_and_remove_without_compiling():
    from scvi_scgpt.nn._compile import CompiledLayers

    enc = _encoder()
    compiled = CompiledLayers(enc)
    with compiled:  # torch.compile is lazy: nothing compiles until a forward pass
        assert all("_finish" in layer.__dict__ for layer in enc.layers)
    assert all("_finish" not in layer.__dict__ for layer in enc.layers)
    import pickle

    pickle.dumps(enc)  # nothing compiled stays attached


def test_packed_weights_match_plain_bf16_and_leave_nothing_behind():
    from scvi_scgpt.nn._precision import PACKED_ATTR, linear

    enc = _encoder()
    x = torch.randn(3, 10, 16)
    with torch.no_grad():
        packed = LowPrecisionWeights(enc)
        plain = LowPrecisionWeights(enc, pack=False)
        with plain:
            want = enc(x)
            layer = enc.layers[0]
            ref = linear(x, layer.linear1.weight, layer.linear1.bias, layer.activation)
        with packed:
            got = enc(x)
            out = linear(x, layer.linear1.weight, layer.linear1.bias, layer.activation)
            assert out.shape == (3, 10, 24) and out.dtype == torch.bfloat16
            assert bool((out >= 0).all())  # the fused ReLU
    if packed.n_packed:  # oneDNN available: every weight matrix of the encoder is packed
        assert packed.n_packed == 2 * 4
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
    assert not any(hasattr(p, PACKED_ATTR) for p in enc.parameters())
    # with gradients the packed kernel is never used (it has no backward)
    with packed:
        y = linear(x.requires_grad_(), layer.linear1.weight, layer.linear1.bias)
    assert y.grad_fn is not None


@pytest.mark.parametrize("padded", [False, True])
def test_generated_attention_matches_the_generative_mask(padded, monkeypatch):
    """Own-key attention equals SDPA over [known, generated] keys with the eye block."""
    from scvi_scgpt.nn._kernels import attend_generated

    q, k_self, v_self = _qkv(shape=(3, 2, 5, 4), grad=True, seed=1)
    k, v, _ = _qkv(shape=(3, 2, 7, 4), grad=True, seed=2)
    mask = None
    if padded:
        mask = torch.ones(3, 1, 1, 7, dtype=torch.bool)
        mask[1, ..., 4:] = False
    monkeypatch.setattr(chunked, "SCORES_PER_CHUNK", 5 * 7)  # one head per chunk
    out = chunked.generated_attention(q, k, v, k_self, v_self, mask)
    known = torch.ones(3, 1, 5, 7, dtype=torch.bool) if mask is None else mask.expand(3, 1, 5, 7)
    eye = torch.eye(5, dtype=torch.bool).expand(3, 1, 5, 5)
    ref = F.scaled_dot_product_attention(
        q, torch.cat([k, k_self], 2), torch.cat([v, v_self], 2), torch.cat([known, eye], 3)
    )
    monkeypatch.setattr("scvi_scgpt.nn._kernels.CPU_DROPOUT_KERNEL", "sdpa")
    torch.testing.assert_close(attend_generated(q, k, v, k_self, v_self, mask), ref)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    inputs = (q, k, v, k_self, v_self)
    for a, b in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(a, b)

    def fn(*t):
        return chunked._GeneratedAttention.apply(*t, mask, 0.3, 99)

    assert torch.autograd.gradcheck(fn, inputs)


def test_generative_forward_takes_the_own_key_kernel_in_cpu_training(monkeypatch):
    import scvi_scgpt.nn._kernels as kernels

    calls = []
    real = kernels.generated_attention
    monkeypatch.setattr(kernels, "generated_attention", lambda *a: calls.append(a[-1]) or real(*a))
    torch.manual_seed(0)
    enc = TransformerEncoder(1, d_model=8, n_heads=2, d_hid=8, dropout=0.2).train()
    known, gen = torch.randn(2, 6, 8), torch.randn(2, 4, 8)
    a, b = enc.generative_forward(known, gen)
    (a.sum() + b.sum()).backward()
    assert calls == [0.2]
    with torch.no_grad():
        enc.generative_forward(known, gen)
    assert calls == [0.2]  # no gradients: the SDPA path
    enc.eval()  # no dropout, still under autograd: the own-key kernel
    enc.generative_forward(known, gen)[1].sum().backward()
    assert calls == [0.2, 0.0]
