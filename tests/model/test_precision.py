"""``precision=`` of embedding: bf16 agrees with fp32; fp32 stays exact; ``"auto"``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scvi_scgpt import SCGPT
from scvi_scgpt.model._precision import fast_bf16_available, resolve_precision


def _pretrained(official_dir, adata):
    SCGPT.setup_anndata(adata)
    return SCGPT.from_pretrained(official_dir / "zeroshot_model", adata, max_seq_len=512)


def _centred_cosine(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Per-cell cosine after subtracting the reference's mean embedding from both."""
    mean = reference.mean(0)
    a, b = reference - mean, other - mean
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_bf16_embedding_agrees_with_fp32_and_leaves_fp32_exact(official_dir, official_cells):
    model = _pretrained(official_dir, official_cells)
    fp32 = model.get_latent_representation(batch_size=16)
    bf16 = model.get_latent_representation(batch_size=16, precision="bf16")
    centred = _centred_cosine(fp32, bf16)
    assert centred.mean() >= 0.99
    assert centred.min() >= 0.98
    assert not np.array_equal(fp32, bf16)  # bf16 really ran
    # the float32 weights are back, untouched: fp32 is bit-identical afterwards
    assert all(p.dtype == torch.float32 for p in model.module.parameters())
    np.testing.assert_array_equal(model.get_latent_representation(batch_size=16), fp32)


def test_auto_precision_resolves_by_hardware(official_dir, official_cells):
    expected = "bf16" if fast_bf16_available("cpu") else "32"
    assert resolve_precision("auto", torch.device("cpu")) == expected
    model = _pretrained(official_dir, official_cells)
    auto = model.get_latent_representation(batch_size=16, precision="auto")
    explicit = model.get_latent_representation(batch_size=16, precision=expected)
    np.testing.assert_array_equal(auto, explicit)
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("8", torch.device("cpu"))
    with pytest.raises(ValueError, match="GPU"):
        resolve_precision("16", torch.device("cpu"))


@pytest.mark.slow
def test_compiled_embedding_matches_eager(official_dir, official_cells):
    model = _pretrained(official_dir, official_cells)
    eager = model.get_latent_representation(batch_size=16)
    compiled = model.get_latent_representation(batch_size=16, compile=True)
    np.testing.assert_allclose(compiled, eager, atol=1e-4)
    # bf16: the compiled blocks trace F.linear (the pre-packed kernel is eager-only)
    low = model.get_latent_representation(batch_size=16, precision="bf16")
    low_compiled = model.get_latent_representation(batch_size=16, precision="bf16", compile=True)
    assert float(np.min(np.sum(low * low_compiled, axis=1))) > 0.999
    layers = model.module.transformer_encoder.layers
    assert all("_finish" not in layer.__dict__ for layer in layers)


def test_annotation_takes_precision(counts_adata):
    """``predict`` / ``annotate`` run in bf16 like embedding, and agree with fp32."""
    SCGPT.setup_anndata(counts_adata, labels_key="cell_type")
    model = SCGPT(counts_adata, d_model=32, n_layers=1, n_heads=2, d_hid=32, seed=0)
    model.train("annotation", max_epochs=1, accelerator="cpu")
    fp32 = model.predict(return_probabilities=True)
    bf16 = model.predict(return_probabilities=True, precision="bf16")
    assert not np.array_equal(fp32.to_numpy(), bf16.to_numpy())  # bf16 really ran
    np.testing.assert_allclose(bf16.to_numpy(), fp32.to_numpy(), atol=0.05)
    model.annotate(counts_adata, key_added="bf16_types", precision="bf16")
    assert (counts_adata.obs["bf16_types"].to_numpy() == bf16.idxmax(1).to_numpy()).all()
    with pytest.raises(ValueError, match="precision"):
        model.predict(precision="8")
