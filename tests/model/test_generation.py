from __future__ import annotations

import warnings

import numpy as np
import pytest
import scvi
import torch
import torch.nn.functional as F

from scvi_scgpt import SCGPT
from scvi_scgpt.data import TokenizerConfig
from scvi_scgpt.nn import TransformerEncoder
from scvi_scgpt.train import GenerativeCollator, split_generated
from tests._builders import make_structured_counts

TINY = {"d_model": 32, "n_heads": 2, "d_hid": 32, "n_layers": 2, "dropout": 0.0}
QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


@pytest.mark.parametrize("project_generated", [True, False])
def test_generative_attention_equals_dense_mask(project_generated):
    torch.manual_seed(0)
    enc = TransformerEncoder(2, d_model=16, n_heads=4, d_hid=32, dropout=0.0).eval()
    b, n_known, n_gen = 3, 6, 5
    known, gen = torch.randn(b, n_known, 16), torch.randn(b, n_gen, 16)
    pad = torch.zeros(b, n_known, dtype=torch.bool)
    pad[1, 4:] = True
    out_k, out_g = enc.generative_forward(known, gen, pad, project_generated=project_generated)
    # reference: one sequence [known, generated] with an explicit (L x L) mask per cell
    allow = torch.zeros(b, n_known + n_gen, n_known + n_gen, dtype=torch.bool)
    allow[:, :, :n_known] = ~pad[:, None, :]
    allow[:, n_known:, n_known:] = torch.eye(n_gen, dtype=torch.bool)
    h = torch.cat([known, gen], 1)
    for layer in enc.layers:
        attn = layer.self_attn
        q, k, v = attn.project_qkv(h).permute(2, 0, 3, 1, 4).unbind(0)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=allow[:, None])
        o = o.transpose(1, 2).flatten(2)
        proj = attn.out_proj(o)
        if not project_generated:
            proj = torch.cat([proj[:, :n_known], o[:, n_known:]], 1)
        h = layer.norm1(h + proj)
        h = layer.norm2(h + layer._ffn(h))
    keep = torch.cat([~pad, torch.ones(b, n_gen, dtype=torch.bool)], 1)
    torch.testing.assert_close(torch.cat([out_k, out_g], 1)[keep], h[keep], atol=1e-5, rtol=1e-5)
    # a generated token does not see the other generated tokens
    gen2 = gen.clone()
    gen2[:, 1:] += 5.0
    _, out_g2 = enc.generative_forward(known, gen2, pad)
    torch.testing.assert_close(out_g2[:, 0], enc.generative_forward(known, gen, pad)[1][:, 0])


def test_split_generated_counts():
    pad = np.zeros((4, 9), dtype=bool)
    pad[2, 3:] = True
    pad[3, 2:] = True  # one gene only: it stays known
    gen = split_generated(pad, 0.5, np.random.default_rng(0))
    assert not gen[:, 0].any() and not (gen & pad).any()
    np.testing.assert_array_equal(gen.sum(1), [4, 4, 1, 0])


def test_generative_collator_partitions_each_cell():
    torch.manual_seed(0)
    x = np.random.default_rng(0).poisson(2.0, size=(6, 50)).astype(np.float32)
    collate = GenerativeCollator(
        np.arange(50), TokenizerConfig(max_seq_len=64), cls_id=100, pad_id=101, gen_ratios=(0.5,)
    )
    out = collate({"X": x})
    for i in range(6):
        known = out["gene_ids"][i][~out["padding_mask"][i]].tolist()
        gen = out["gen_gene_ids"][i][~out["gen_padding_mask"][i]].tolist()
        assert known[0] == 100 and not set(known) & set(gen)
        assert sorted(known[1:] + gen) == sorted(np.flatnonzero(x[i]).tolist())
        assert len(gen) == int(np.count_nonzero(x[i]) * 0.5)
    assert torch.all(out["gen_targets"][~out["gen_padding_mask"]] >= 1)


def test_pretrain_losses_decrease_and_export_official(tmp_path):
    scvi.settings.seed = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = make_structured_counts(160)
        SCGPT.setup_anndata(adata)
        model = SCGPT(adata, max_seq_len=64, **TINY)
        model.train("pretrain", max_epochs=5, lr=2e-3, batch_size=32, warmup_steps=5, **QUIET)
    for key in ("gep_train", "gepc_train", "gep_cell_prompt_train"):
        history = model.history_[key].to_numpy().ravel().astype(float)
        assert np.isfinite(history).all() and history[-1] < history[0], (key, history)
    assert model.architecture.use_generative_flag
    emb = model.get_latent_representation()
    model.save_pretrained(tmp_path / "pretrained")
    state = torch.load(tmp_path / "pretrained/best_model.pt", weights_only=True)
    assert "flag_encoder.weight" in state
    other = make_structured_counts(20, seed=3)
    SCGPT.setup_anndata(other)
    again = SCGPT.from_pretrained(tmp_path / "pretrained", other)
    assert again.architecture.use_generative_flag
    SCGPT.setup_anndata(adata)
    np.testing.assert_allclose(again.get_latent_representation(adata), emb, atol=1e-6)


def test_continue_pretraining_from_official_checkpoint(official_dir, official_cells):
    scvi.settings.seed = 0
    SCGPT.setup_anndata(official_cells)
    model = SCGPT.from_pretrained(official_dir / "zeroshot_model", official_cells, max_seq_len=128)
    before = model.module.flag_encoder.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train("pretrain", max_epochs=1, batch_size=16, **QUIET)
    assert not torch.equal(model.module.flag_encoder.weight, before)  # the official key trains


def test_generate_gene_and_cell_prompts():
    scvi.settings.seed = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adata = make_structured_counts(240, n_batches=1)
        SCGPT.setup_anndata(adata)
        model = SCGPT(adata, max_seq_len=96, **TINY)
        model.train("pretrain", max_epochs=12, lr=3e-3, batch_size=32, warmup_steps=5, **QUIET)
    # marker genes of type 0 (first block): hide them and generate them back
    targets = list(adata.var_names[2:12])
    one_step = model.generate(adata, targets, n_steps=1)
    three = model.generate(adata, targets, n_steps=3)
    assert one_step.shape == (240, 10) and list(one_step.columns) == targets
    assert np.isfinite(three.to_numpy()).all()
    assert three.to_numpy().min() >= 0 and three.to_numpy().max() <= 50
    assert not np.allclose(one_step.to_numpy(), three.to_numpy())
    again = model.generate(adata, targets, n_steps=3)
    np.testing.assert_array_equal(again.to_numpy(), three.to_numpy())  # deterministic
    # type-0 cells get higher predictions for their own markers than other cells
    is_type0 = (adata.obs["cell_type"] == "type0").to_numpy()
    score = three.to_numpy().mean(1)
    assert score[is_type0].mean() > score[~is_type0].mean()
    emb = model.get_latent_representation(normalize=False)
    from_cells = model.generate(adata, targets, cell_prompt=emb, n_steps=2)
    assert from_cells.shape == (240, 10) and np.isfinite(from_cells.to_numpy()).all()
    with pytest.raises(ValueError, match="not in the vocabulary"):
        model.generate(adata, ["NOT_A_GENE"])
    with pytest.raises(ValueError, match="cell_prompt"):
        model.generate(adata, targets, cell_prompt=emb[:5])


def test_generate_needs_generative_model(counts_adata):
    SCGPT.setup_anndata(counts_adata)
    model = SCGPT(counts_adata, max_seq_len=32, **TINY)
    with pytest.raises(ValueError, match="generatively pretrained"):
        model.generate(counts_adata, list(counts_adata.var_names[:2]))
