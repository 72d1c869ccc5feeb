"""The multi-omic model: official MultiOmicTransformerModel weights, names and outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scvi_scgpt._constants import TOKEN_KEYS
from scvi_scgpt._exceptions import CheckpointError
from scvi_scgpt.data import GeneVocab
from scvi_scgpt.model import load_into_module, read_args, read_state_dict
from scvi_scgpt.module import ArchitectureConfig, SCGPTModule, infer_architecture, official_args


def _official(official_dir):
    model_dir = official_dir / "multiomic_model"
    vocab = GeneVocab.from_file(model_dir / "vocab.json")
    state = read_state_dict(model_dir / "best_model.pt")
    args = read_args(model_dir / "args.json")
    return vocab, state, args


def test_official_multiomic_model_loads_strictly_and_matches(official_dir):
    vocab, state, args = _official(official_dir)
    config = infer_architecture(state, args, n_tokens=len(vocab), pad_id=vocab.pad_id)
    # modality vocabulary ["Protein", "RNA", "<pad>", "<cls>", "<eoc>"]: pad from its zero row
    assert config.use_mod and config.n_mod_tokens == 5 and config.mod_pad_id == 2
    assert config.use_batch_labels and config.do_dab and config.do_mvc
    module = SCGPTModule(config).eval()
    audit = load_into_module(module, state)  # strict: every key has its place
    assert not audit.unexpected and not audit.initialised and not audit.mismatched
    assert list(module.state_dict()) == list(state)  # same names, same order
    ref = np.load(official_dir / "multiomic_forward.npz")
    tensors = {
        TOKEN_KEYS.GENE_IDS: torch.from_numpy(ref["gene_ids"]),
        TOKEN_KEYS.VALUES: torch.from_numpy(ref["values"]),
        TOKEN_KEYS.PADDING_MASK: torch.from_numpy(ref["padding_mask"]),
        TOKEN_KEYS.BATCH: torch.from_numpy(ref["batch"]),
        TOKEN_KEYS.MODALITY_IDS: torch.from_numpy(ref["mod_types"]),
    }
    with torch.no_grad():
        inf = module.inference(**module._get_inference_input(tensors))
        gen = module.generative(**module._get_generative_input(tensors, inf))
    keep = ~ref["padding_mask"]
    tol = {"atol": 2e-5, "rtol": 1e-4}
    np.testing.assert_allclose(inf["cell_emb"].numpy(), ref["cell_emb"], **tol)
    np.testing.assert_allclose(gen["expr"].numpy()[keep], ref["mlm_output"][keep], **tol)
    np.testing.assert_allclose(gen["mvc"].numpy()[keep], ref["mvc_output"][keep], **tol)
    np.testing.assert_allclose(gen["dab_logits"].numpy(), ref["dab_output"], **tol)


def _small(**kw) -> SCGPTModule:
    torch.manual_seed(0)
    arch = {"n_tokens": 12, "pad_id": 11, "d_model": 16, "n_heads": 2, "d_hid": 16}
    arch.update(n_layers=1, dropout=0.0, use_mod=True, n_mod_tokens=5, mod_pad_id=2)
    arch.update(kw)
    return SCGPTModule(ArchitectureConfig(**arch)).eval()


def _inputs(modality):
    ids = torch.tensor([[10, 1, 2, 3, 4]])
    values = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])
    mods = torch.tensor([[3, modality, modality, 0, 0]])
    return ids, values, torch.zeros_like(ids, dtype=torch.bool), mods


def test_modality_does_not_enter_the_encoder_by_default():
    module = _small()
    with torch.no_grad():
        a = module.inference(*_inputs(1)[:3], modality_ids=_inputs(1)[3])
        b = module.inference(*_inputs(0)[:3], modality_ids=_inputs(0)[3])
        torch.testing.assert_close(a["encoded"], b["encoded"])
        ga = module.generative(
            a["encoded"], a["cell_emb"], a["gene_embs"], modality_ids=_inputs(1)[3]
        )
        gb = module.generative(
            b["encoded"], b["cell_emb"], b["gene_embs"], modality_ids=_inputs(0)[3]
        )
    assert not torch.allclose(ga["expr"], gb["expr"])  # the decoders are conditioned


def test_mod_in_input_adds_the_modality_embedding():
    module = _small(mod_in_input=True)
    with torch.no_grad():
        a = module.inference(*_inputs(1)[:3], modality_ids=_inputs(1)[3])
        b = module.inference(*_inputs(0)[:3], modality_ids=_inputs(0)[3])
    assert not torch.allclose(a["encoded"], b["encoded"])


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"n_mod_tokens": 0}, "modality vocabulary"),
        ({"mod_pad_id": 7}, "modality vocabulary"),
        ({"use_mod": False, "mod_in_input": True}, "mod_in_input"),
        ({"cell_emb_style": "w-pool"}, "w-pool"),
    ],
)
def test_bad_multiomic_config_raises(options, match):
    with pytest.raises(ValueError, match=match):
        _small(**options)


def test_missing_modality_ids_raise():
    module = _small()
    ids, values, padding, _ = _inputs(1)
    with torch.no_grad():
        out = module.inference(ids, values, padding)
        with pytest.raises(ValueError, match="modality ids"):
            module.generative(out["encoded"], out["cell_emb"], out["gene_embs"])


def test_official_args_round_trip(official_dir):
    vocab, state, args = _official(official_dir)
    sizes = {"n_tokens": len(vocab), "pad_id": vocab.pad_id}
    config = infer_architecture(state, args, **sizes)
    exported = official_args(config)
    assert exported["use_mod"] and exported["ntokens_mod"] == 5 and exported["mod_pad_id"] == 2
    assert infer_architecture(state, exported, **sizes) == config
    deviating = infer_architecture(state, args, mod_in_input=True, **sizes)
    assert infer_architecture(state, official_args(deviating), **sizes).mod_in_input
    # without args or a zero row, the official layout: <pad> after the sorted modality names
    state = dict(state)
    state["mod_encoder.embedding.weight"] = state["mod_encoder.embedding.weight"] + 1.0
    assert infer_architecture(state, {"nheads": 4}, **sizes).mod_pad_id == 2
    with pytest.raises(CheckpointError, match="ntokens_mod"):
        infer_architecture(state, {**args, "ntokens_mod": 6}, **sizes)


def test_multiomic_model_without_use_mod_is_refused(official_dir):
    vocab, state, args = _official(official_dir)
    state = {k: v for k, v in state.items() if not k.startswith("mod_encoder.")}
    with pytest.raises(CheckpointError, match="use_mod=False"):
        infer_architecture(state, args, n_tokens=len(vocab), pad_id=vocab.pad_id)


def test_modality_only_conditioning_and_avg_pool():
    """No batch labels: the decoders see the modality embedding alone (official branch)."""
    module = _small(cell_emb_style="avg-pool", explicit_zero_prob=True)
    assert module.decoder.fc[0].in_features == 32
    assert module.mvc_decoder.gene2query.in_features == 32
    assert module.mvc_decoder.W.out_features == 32
    ids, values, padding, mods = _inputs(1)
    with torch.no_grad():
        inf = module.inference(ids, values, padding, modality_ids=mods)
        gen = module.generative(
            inf["encoded"], inf["cell_emb"], inf["gene_embs"], modality_ids=mods
        )
        mod_emb = module.mod_encoder(mods)
        tokens = torch.cat([inf["encoded"], mod_emb], dim=2)
        torch.testing.assert_close(gen["expr"], module.decoder(tokens)["pred"])
        cell = torch.cat([inf["cell_emb"], mod_emb.mean(1)], dim=1)
        genes = torch.cat([inf["gene_embs"], mod_emb], dim=2)
        expected = module.mvc_decoder(cell, genes)
        torch.testing.assert_close(gen["mvc"], expected["pred"])
        torch.testing.assert_close(gen["mvc_zero_probs"], expected["zero_probs"])
    assert gen["expr_zero_probs"].shape == ids.shape
    assert torch.count_nonzero(module.mod_encoder.embedding.weight[2]) == 0  # <pad> row
