"""Our module reproduces the official TransformerModel outputs on the committed fixtures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scvi_scgpt.data import GeneVocab
from scvi_scgpt.model import load_into_module, read_args, read_state_dict
from scvi_scgpt.module import SCGPTModule, infer_architecture


def _load(model_dir):
    vocab = GeneVocab.from_file(model_dir / "vocab.json")
    state = read_state_dict(model_dir / "best_model.pt")
    args = read_args(model_dir / "args.json")
    config = infer_architecture(state, args, n_tokens=len(vocab), pad_id=vocab.pad_id)
    module = SCGPTModule(config)
    audit = load_into_module(module, state)
    assert not audit.unexpected and not audit.initialised
    return module.eval(), config


def _run(module, ref, batch=None):
    gene_ids = torch.from_numpy(ref["gene_ids"])
    values = torch.from_numpy(ref["values"])
    mask = torch.from_numpy(ref["padding_mask"])
    with torch.no_grad():
        inf = module.inference(gene_ids, values, mask, batch)
        gen = module.generative(inf["encoded"], inf["cell_emb"], inf["gene_embs"], batch)
    return inf, gen, ~ref["padding_mask"]


def test_zeroshot_forward_parity(official_dir):
    module, config = _load(official_dir / "zeroshot_model")
    assert config.use_generative_flag and config.do_mvc and config.n_cls == 1
    ref = np.load(official_dir / "zeroshot_forward.npz")
    inf, gen, keep = _run(module, ref)
    tol = {"atol": 2e-5, "rtol": 1e-4}
    np.testing.assert_allclose(inf["gene_embs"].numpy(), ref["gene_embeddings"], **tol)
    np.testing.assert_allclose(inf["encoded"].numpy()[keep], ref["encoded"][keep], **tol)
    np.testing.assert_allclose(inf["cell_emb"].numpy(), ref["cell_emb"], **tol)
    np.testing.assert_allclose(gen["expr"].numpy()[keep], ref["mlm_output"][keep], **tol)
    np.testing.assert_allclose(gen["mvc"].numpy()[keep], ref["mvc_output"][keep], **tol)


def test_finetune_forward_parity_all_heads(official_dir):
    module, config = _load(official_dir / "finetune_model")
    assert config.domain_spec_batchnorm and config.use_batch_labels and config.do_dab
    assert config.explicit_zero_prob and config.n_cls == 5 and config.n_batch == 3
    ref = np.load(official_dir / "finetune_forward.npz")
    batch = torch.from_numpy(ref["batch_labels"])
    inf, gen, keep = _run(module, ref, batch)
    tol = {"atol": 2e-5, "rtol": 1e-4}
    np.testing.assert_allclose(inf["encoded"].numpy()[keep], ref["encoded"][keep], **tol)
    np.testing.assert_allclose(inf["cell_emb"].numpy(), ref["cell_emb"], **tol)
    np.testing.assert_allclose(gen["expr"].numpy()[keep], ref["mlm_output"][keep], **tol)
    np.testing.assert_allclose(
        gen["expr_zero_probs"].numpy()[keep], ref["mlm_zero_probs"][keep], **tol
    )
    np.testing.assert_allclose(gen["mvc"].numpy()[keep], ref["mvc_output"][keep], **tol)
    np.testing.assert_allclose(
        gen["mvc_zero_probs"].numpy()[keep], ref["mvc_zero_probs"][keep], **tol
    )
    np.testing.assert_allclose(gen["cls_logits"].numpy(), ref["cls_output"], **tol)
    np.testing.assert_allclose(gen["dab_logits"].numpy(), ref["dab_output"], **tol)
    # DSBN really uses the batch: another domain changes the embedding
    other, _, _ = _run(module, ref, torch.zeros_like(batch))
    assert not torch.allclose(other["cell_emb"], inf["cell_emb"], atol=1e-3)


def test_gep_loss_uses_masked_positions_only():
    from scvi_scgpt.module import ArchitectureConfig

    torch.manual_seed(0)
    module = SCGPTModule(
        ArchitectureConfig(n_tokens=30, pad_id=29, d_model=16, n_heads=2, d_hid=16, n_layers=1)
    )
    gene_ids = torch.randint(0, 28, (4, 6))
    target = torch.randint(1, 51, (4, 6)).float()
    values = target.clone()
    values[:, 2] = -1.0
    tensors = {
        "gene_ids": gene_ids,
        "values": values,
        "target_values": target,
        "padding_mask": torch.zeros(4, 6, dtype=torch.bool),
    }
    _, gen, loss = module(tensors)
    expected = ((gen["expr"][:, 2] - target[:, 2]) ** 2).mean()
    torch.testing.assert_close(loss.extra_metrics["gep"], expected)
    assert torch.isfinite(loss.loss) and "gepc" in loss.extra_metrics
    with pytest.raises(NotImplementedError):
        module.sample()
