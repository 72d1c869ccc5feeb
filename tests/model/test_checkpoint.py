from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch

from scvi_scgpt import SCGPT
from scvi_scgpt.model import CheckpointError, read_state_dict, to_torch_layout


@pytest.fixture
def model_copy(tmp_path, official_dir):
    dst = tmp_path / "model"
    shutil.copytree(official_dir / "zeroshot_model", dst)
    return dst


def _state(model_dir):
    return torch.load(model_dir / "best_model.pt", weights_only=True)


def _embed(model_dir, adata, **kwargs):
    adata = adata.copy()
    SCGPT.setup_anndata(adata)
    model = SCGPT.from_pretrained(model_dir, adata, max_seq_len=512, **kwargs)
    return model, model.get_latent_representation(batch_size=16)


@pytest.mark.parametrize("layout", ["Wqkv", "_impl"])
def test_flash_attention_layouts_load_identically(model_copy, official_cells, layout):
    _, reference = _embed(model_copy, official_cells)
    state = _state(model_copy)
    renamed = {}
    for key, value in state.items():
        if layout == "Wqkv":
            key = key.replace("self_attn.in_proj_", "self_attn.Wqkv.")
        else:
            key = key.replace("self_attn.in_proj_", "self_attn._impl.Wqkv.")
            key = key.replace("self_attn.out_proj.", "self_attn._impl.out_proj.")
        renamed[key] = value
    torch.save(renamed, model_copy / "best_model.pt")
    model, emb = _embed(model_copy, official_cells)
    np.testing.assert_array_equal(emb, reference)
    assert len(model.checkpoint_audit_.renamed) == 4 if layout == "Wqkv" else 8


def test_ddp_prefix_wrapped_and_safetensors(model_copy, official_cells):
    _, reference = _embed(model_copy, official_cells)
    state = _state(model_copy)
    torch.save(
        {"model_state_dict": {f"module.{k}": v for k, v in state.items()}},
        model_copy / "best_model.pt",
    )
    np.testing.assert_array_equal(_embed(model_copy, official_cells)[1], reference)
    from safetensors.torch import save_file

    os.remove(model_copy / "best_model.pt")
    save_file(state, model_copy / "model.safetensors")
    np.testing.assert_array_equal(_embed(model_copy, official_cells)[1], reference)


def test_extra_heads_are_loaded_not_dropped(model_copy, official_cells):
    model, _ = _embed(model_copy, official_cells)
    audit = model.checkpoint_audit_
    assert not audit.unexpected and not audit.initialised
    assert "flag_encoder.weight" in audit.loaded and "mvc_decoder.W.weight" in audit.loaded
    torch.testing.assert_close(
        model.module.flag_encoder.weight, _state(model_copy)["flag_encoder.weight"]
    )


def test_hostile_pickle_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "best_model.pt"
    torch.save({"encoder.embedding.weight": torch.zeros(2, 2), "evil": Payload()}, path)
    with pytest.raises(CheckpointError, match="Refusing to load"):
        read_state_dict(path)
    assert not (tmp_path / "pwned").exists()


def test_truncated_and_garbage_files(model_copy, official_cells):
    data = (model_copy / "best_model.pt").read_bytes()
    (model_copy / "best_model.pt").write_bytes(data[: len(data) // 2])
    adata = official_cells.copy()
    SCGPT.setup_anndata(adata)
    with pytest.raises(CheckpointError, match="truncated"):
        SCGPT.from_pretrained(model_copy, adata)
    (model_copy / "best_model.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        SCGPT.from_pretrained(model_copy, adata)
    torch.save([1, 2, 3], model_copy / "best_model.pt")
    with pytest.raises(CheckpointError, match="state dict"):
        SCGPT.from_pretrained(model_copy, adata)


def test_vocab_size_mismatch(model_copy, official_cells):
    import json

    vocab = json.loads((model_copy / "vocab.json").read_text())
    vocab["EXTRA_GENE"] = len(vocab)
    (model_copy / "vocab.json").write_text(json.dumps(vocab))
    adata = official_cells.copy()
    SCGPT.setup_anndata(adata)
    with pytest.raises(CheckpointError, match="does not belong to this checkpoint"):
        SCGPT.from_pretrained(model_copy, adata)


def test_strict_audit_unexpected_missing_and_mismatched(model_copy, official_cells):
    adata = official_cells.copy()
    SCGPT.setup_anndata(adata)
    state = _state(model_copy)
    state["mystery_head.weight"] = torch.zeros(3)
    torch.save(state, model_copy / "best_model.pt")
    with pytest.raises(CheckpointError, match="mystery_head"):
        SCGPT.from_pretrained(model_copy, adata)
    with pytest.warns(UserWarning, match="Ignored 1"):
        model = SCGPT.from_pretrained(model_copy, adata, strict=False)
    assert model.checkpoint_audit_.unexpected == ["mystery_head.weight"]

    state.pop("mystery_head.weight")
    broken = dict(state)
    broken.pop("transformer_encoder.layers.1.linear2.weight")
    torch.save(broken, model_copy / "best_model.pt")
    with pytest.raises(CheckpointError, match="lacks 1 required"):
        SCGPT.from_pretrained(model_copy, adata)

    bad = dict(state)
    bad["value_encoder.linear2.weight"] = torch.zeros(64, 32)
    torch.save(bad, model_copy / "best_model.pt")
    with pytest.raises(CheckpointError, match="wrong shape"):
        SCGPT.from_pretrained(model_copy, adata)


def test_new_head_is_initialised_and_reported(model_copy, official_cells):
    adata = official_cells.copy()
    SCGPT.setup_anndata(adata)
    with pytest.warns(UserWarning, match="Re-initialised 2 head tensors"):
        model = SCGPT.from_pretrained(model_copy, adata, n_cls=4)
    audit = model.checkpoint_audit_
    assert model.module.cls_decoder.out_layer.out_features == 4
    assert set(audit.mismatched) == {"cls_decoder.out_layer.weight", "cls_decoder.out_layer.bias"}
    assert "cls_decoder.out_layer.weight" in audit.initialised
    # same-shape parts of the head and the whole backbone are loaded
    assert "cls_decoder._decoder.0.weight" in audit.loaded
    assert "transformer_encoder.layers.0.self_attn.in_proj_weight" in audit.loaded


def test_inconsistent_args_json(model_copy, official_cells):
    import json

    args = json.loads((model_copy / "args.json").read_text())
    args["embsize"] = 128
    (model_copy / "args.json").write_text(json.dumps(args))
    adata = official_cells.copy()
    SCGPT.setup_anndata(adata)
    with pytest.raises(CheckpointError, match="embsize=128"):
        SCGPT.from_pretrained(model_copy, adata)
    (model_copy / "args.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="JSON object"):
        SCGPT.from_pretrained(model_copy, adata)


def test_to_torch_layout_rejects_duplicates():
    state = {
        "a.self_attn.Wqkv.weight": torch.zeros(1),
        "a.self_attn.in_proj_weight": torch.zeros(1),
    }
    with pytest.raises(CheckpointError, match="both"):
        to_torch_layout(state)
