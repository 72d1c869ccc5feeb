"""The perturbation model: official TransformerGenerator weights, names and outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scvi_scgpt._constants import TOKEN_KEYS
from scvi_scgpt.data import GeneVocab
from scvi_scgpt.model import load_into_module, read_args, read_state_dict
from scvi_scgpt.module import ArchitectureConfig, ObjectiveConfig, SCGPTModule, infer_architecture
from scvi_scgpt.nn import AffineExprDecoder


def test_official_transformer_generator_loads_strictly_and_matches(official_dir):
    model_dir = official_dir / "perturbation_model"
    vocab = GeneVocab.from_file(model_dir / "vocab.json")
    state = read_state_dict(model_dir / "best_model.pt")
    config = infer_architecture(
        state, read_args(model_dir / "args.json"), n_tokens=len(vocab), pad_id=vocab.pad_id
    )
    assert config.use_pert_flags and config.pert_pad_id == 0
    assert config.uses_affine_decoder and config.decoder_adaptive_bias
    module = SCGPTModule(config)
    audit = load_into_module(module, state)  # strict: every key has its place
    assert not audit.unexpected and not audit.initialised and not audit.mismatched
    assert set(module.state_dict()) == set(state)
    ref = np.load(official_dir / "perturbation_forward.npz")
    module.eval()
    with torch.no_grad():
        inf = module.inference(
            torch.from_numpy(ref["gene_ids"]),
            torch.from_numpy(ref["values"]),
            torch.from_numpy(ref["padding_mask"]),
            pert_flags=torch.from_numpy(ref["pert_flags"]),
        )
        tensors = {TOKEN_KEYS.VALUES: torch.from_numpy(ref["values"])}
        gen = module.generative(**module._get_generative_input(tensors, inf))
    np.testing.assert_allclose(gen["expr"].numpy(), ref["mlm_output"], atol=2e-5, rtol=1e-4)


def test_pad_id_inferred_from_the_zero_row_without_args(official_dir):
    model_dir = official_dir / "perturbation_model"
    vocab = GeneVocab.from_file(model_dir / "vocab.json")
    state = read_state_dict(model_dir / "best_model.pt")
    config = infer_architecture(state, {"nheads": 4}, n_tokens=len(vocab), pad_id=vocab.pad_id)
    assert config.pert_pad_id == 0 and config.affine_decoder


def small(**kw) -> SCGPTModule:
    torch.manual_seed(0)
    arch = {"n_tokens": 12, "pad_id": 11, "d_model": 16, "n_heads": 2, "d_hid": 16}
    arch.update(n_layers=1, dropout=0.0, do_mvc=False, use_pert_flags=True, pert_pad_id=0)
    arch.update(kw)
    return SCGPTModule(ArchitectureConfig(**arch))


def test_flags_change_the_output_and_pad_row_is_zero():
    module = small().eval()
    assert torch.count_nonzero(module.pert_encoder.weight[0]) == 0
    ids = torch.arange(6).repeat(2, 1)
    values = torch.rand(2, 6)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    flags = torch.zeros(2, 6, dtype=torch.long)
    with torch.no_grad():
        plain = module.inference(ids, values, mask)["encoded"]
        zero = module.inference(ids, values, mask, pert_flags=flags)["encoded"]
        flags[:, 2] = 1
        flagged = module.inference(ids, values, mask, pert_flags=flags)["encoded"]
    assert torch.allclose(plain, zero)  # flag 0 is the padding row: adds nothing
    assert not torch.allclose(plain, flagged, atol=1e-4)
    with pytest.raises(ValueError, match="use_pert_flags"):
        small(use_pert_flags=False).inference(ids, values, mask, pert_flags=flags)


def test_affine_decoder_is_affine_in_the_input_value():
    torch.manual_seed(0)
    decoder = AffineExprDecoder(8, activation="ReLU")
    x = torch.randn(1, 3, 8)
    one, two = decoder(x, torch.ones(1, 3))["pred"], decoder(x, 2 * torch.ones(1, 3))["pred"]
    zero = decoder(x, torch.zeros(1, 3))["pred"]
    assert torch.allclose(two - one, one - zero, atol=1e-6)
    with pytest.raises(ValueError, match="activation"):
        AffineExprDecoder(8, activation="NotALayer")


def test_perturbation_loss_is_mse_over_all_genes():
    module = small(affine_decoder=True)
    tensors = {
        TOKEN_KEYS.GENE_IDS: torch.arange(5).repeat(3, 1),
        TOKEN_KEYS.VALUES: torch.rand(3, 5),
        TOKEN_KEYS.TARGET_VALUES: torch.rand(3, 5),
        TOKEN_KEYS.PADDING_MASK: torch.zeros(3, 5, dtype=torch.bool),
        TOKEN_KEYS.PERT_FLAGS: torch.zeros(3, 5, dtype=torch.long),
    }
    inf = module.inference(**module._get_inference_input(tensors))
    gen = module.generative(**module._get_generative_input(tensors, inf))
    objectives = ObjectiveConfig(gep=False, perturbation=True, mask_ratio=0.0)
    loss = module.loss(tensors, inf, gen, objectives=objectives)
    target = tensors[TOKEN_KEYS.TARGET_VALUES]
    expected = ((gen["expr"] - target) ** 2).mean()
    assert torch.isclose(loss.loss, expected)
    corr = np.mean(
        [np.corrcoef(p, t)[0, 1] for p, t in zip(gen["expr"].detach().numpy(), target.numpy())]
    )
    assert loss.extra_metrics["perturbation_pearson"].item() == pytest.approx(corr, rel=1e-4)
    loss.loss.backward()
    assert module.pert_encoder.weight.grad is not None
    del tensors[TOKEN_KEYS.PERT_FLAGS]
    with pytest.raises(ValueError, match="paired minibatches"):
        module.loss(tensors, inf, gen, objectives=objectives)
