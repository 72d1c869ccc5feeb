from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import scvi
import torch

from scvi_scgpt import SCGPT
from scvi_scgpt.train import ObjectiveConfig, TokenCollator, mask_values
from tests._builders import make_structured_counts

TINY = {"d_model": 32, "n_heads": 2, "d_hid": 32, "n_layers": 2, "dropout": 0.0}
QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


@pytest.fixture(autouse=True)
def _quiet():
    scvi.settings.seed = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _model(adata=None, **kwargs):
    adata = adata if adata is not None else make_structured_counts()
    SCGPT.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    return SCGPT(adata, max_seq_len=128, **{**TINY, **kwargs})


def test_mask_values_counts_and_excludes_cls_and_padding():
    rng = np.random.default_rng(0)
    pad = np.zeros((3, 10), dtype=bool)
    pad[1, 6:] = True
    masked = mask_values(np.ones((3, 10)), pad, 0.4, rng)
    assert masked[:, 0].sum() == 0 and not (masked & pad).any()
    np.testing.assert_array_equal(masked.sum(1), [3, 2, 3])  # int((L - 1) * 0.4)


def test_collator_masks_values_and_keeps_targets():
    torch.manual_seed(0)
    from scvi_scgpt.data import TokenizerConfig

    x = np.random.default_rng(0).poisson(3.0, size=(5, 40)).astype(np.float32)
    collate = TokenCollator(
        np.arange(40), TokenizerConfig(max_seq_len=64), cls_id=100, pad_id=101, mask_ratio=0.5
    )
    out = collate({"X": x, "batch": np.zeros((5, 1)), "labels": np.ones((5, 1))})
    masked = out["values"] == -1
    assert masked.any()
    assert torch.all(out["target_values"][masked] >= 1)
    assert torch.equal(out["values"][~masked], out["target_values"][~masked])
    assert out["batch"].shape == (5,) and out["labels"].dtype == torch.long


@pytest.mark.parametrize(
    ("name", "objectives", "freeze"),
    [
        ("gep", {"gep": True, "mask_ratio": 0.4}, None),
        ("gepc", {"gep": False, "gepc": True, "mask_ratio": 0.4}, None),
        ("gep_zero", {"gep": True, "explicit_zero_prob": True, "mask_ratio": 0.4}, None),
        ("ecs", {"gep": False, "ecs": True, "mask_ratio": 0.0, "ecs_threshold": 0.3}, None),
        # the encoder maximises the adversary's loss; with it frozen the adversary must learn
        ("dar", {"gep": False, "dar": True, "mask_ratio": 0.0}, "transformer"),
        ("cls", {"gep": False, "cls": True, "mask_ratio": 0.0}, None),
    ],
)
def test_each_objective_is_finite_and_decreases(name, objectives, freeze):
    model = _model()
    config = ObjectiveConfig(**objectives)
    model.train(
        "gep",
        objectives=config,
        max_epochs=6,
        lr=3e-3,
        batch_size=32,
        n_top_genes=None,
        freeze=freeze,
        **QUIET,
    )
    history = model.history_[f"{name}_train"].to_numpy().ravel().astype(float)
    assert np.isfinite(history).all()
    assert history[-1] < history[0], history


def test_dar_lowers_batch_predictability():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    adata = make_structured_counts(300, batch_shift=6.0, seed=1)
    batch = adata.obs["batch"].to_numpy()
    scores = {}
    for dar in (False, True):
        scvi.settings.seed = 0
        model = _model(adata.copy())
        objectives = {"gep": True, "gepc": True, "dar": dar, "dar_weight": 5.0, "mask_ratio": 0.4}
        model.train(
            "gep",
            objectives=objectives,
            max_epochs=15,
            lr=2e-3,
            batch_size=32,
            n_top_genes=None,
            **QUIET,
        )
        emb = model.get_latent_representation()
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        scores[dar] = cross_val_score(probe, emb, batch, cv=5).mean()
    # measured: 0.953 without DAR, 0.910 with it
    assert scores[True] < scores[False] - 0.02, scores


def test_integration_preset_builds_heads_and_subsets_genes(tmp_path):
    model = _model()
    # the official recipe (the fine-tune regime; a new model trains the count objective)
    model.train(
        "integration", max_epochs=1, n_top_genes=40, batch_size=32, regime="fine_tune", **QUIET
    )
    arch = model.architecture
    assert arch.domain_spec_batchnorm and arch.use_batch_labels and arch.do_dab
    assert arch.explicit_zero_prob and arch.do_mvc and arch.n_batch == 2
    assert len(model.gene_subset_) == 40
    assert model.tokenizer_config.include_zero_genes and model.tokenizer_config.cls_value == 0
    emb = model.get_latent_representation()
    assert np.isfinite(emb).all()
    for key in ("gep_train", "gepc_train", "ecs_train", "dar_train", "validation_loss"):
        assert key in model.history_
    model.save(tmp_path / "m")
    loaded = SCGPT.load(tmp_path / "m", model.adata)
    assert loaded.architecture == model.architecture
    assert loaded.gene_subset_ == model.gene_subset_
    np.testing.assert_array_equal(loaded.get_latent_representation(), emb)


def test_annotation_predict_annotate_and_roundtrip(tmp_path):
    model = _model()
    model.train("annotation", max_epochs=8, lr=2e-3, batch_size=32, **QUIET)
    adata = model.adata
    pred = model.predict()
    assert isinstance(pred, pd.Series) and len(pred) == adata.n_obs
    assert set(pred.cat.categories) == {"type0", "type1", "type2"}
    assert (pred.to_numpy() == adata.obs["cell_type"].to_numpy()).mean() > 0.8
    probs = model.predict(indices=[0, 5], return_probabilities=True)
    assert probs.shape == (2, 3)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    query = adata[:30].copy()
    query.obs = query.obs[[]]
    SCGPT.setup_anndata(query)
    before = set(query.obs)
    model.annotate(query, key_added="ct", probabilities=True)
    assert set(query.obs) - before == {"ct", "ct_confidence"}
    assert query.obsm["ct_probabilities"].shape == (30, 3)
    model.save(tmp_path / "ann")
    loaded = SCGPT.load(tmp_path / "ann", adata)
    pd.testing.assert_series_equal(loaded.predict(), pred)


def test_training_from_pretrained_adds_new_head_and_freezes(official_dir, official_cells):
    adata = official_cells.copy()
    SCGPT.setup_anndata(adata, labels_key="cell_type")
    model = SCGPT.from_pretrained(official_dir / "zeroshot_model", adata, max_seq_len=512)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    model.train("annotation", max_epochs=1, batch_size=16, freeze="transformer", **QUIET)
    after = model.module.state_dict()
    assert after["cls_decoder.out_layer.weight"].shape == (3, 64)
    for key in ("encoder.embedding.weight", "transformer_encoder.layers.1.linear2.weight"):
        torch.testing.assert_close(after[key], before[key])
    assert not torch.equal(
        after["cls_decoder._decoder.0.weight"], before["cls_decoder._decoder.0.weight"]
    )


def test_train_input_errors():
    adata = make_structured_counts(40)
    SCGPT.setup_anndata(adata)
    model = SCGPT(adata, max_seq_len=64, **TINY)
    with pytest.raises(ValueError, match="labels_key"):
        model.train("annotation", max_epochs=1)
    with pytest.raises(ValueError, match="batch_key"):
        model.train("integration", max_epochs=1)
    with pytest.raises(ValueError, match="Unknown task"):
        model.train("nope")
    with pytest.raises(ValueError, match="freeze"):
        model.train("gep", max_epochs=1, freeze="bogus")
    with pytest.raises(ValueError, match="mask_ratio"):
        ObjectiveConfig(gep=True, mask_ratio=0.0)
    lognorm = adata.copy()
    lognorm.X = lognorm.X.log1p()
    SCGPT.setup_anndata(lognorm, batch_key="batch")
    with pytest.raises(ValueError, match="raw counts"):
        SCGPT(lognorm, max_seq_len=64, **TINY).train("integration", n_top_genes=10)
    with pytest.raises(ValueError, match="Unknown tokenizer"):
        model.train("gep", max_epochs=1, tokenizer={"max_len": 10})
    with pytest.raises(ValueError, match="no validation"):
        model.train("gep", max_epochs=1, train_size=1.0, early_stopping=True)


def test_train_on_all_cells_and_tokenizer_override():
    adata = make_structured_counts(48)
    SCGPT.setup_anndata(adata)
    model = SCGPT(adata, max_seq_len=128, **TINY)
    model.train(
        "gep",
        max_epochs=2,
        batch_size=16,
        train_size=1.0,
        tokenizer={"max_seq_len": 17, "include_zero_genes": True},
        **QUIET,
    )
    assert model.tokenizer_config.max_seq_len == 17
    assert model.tokenizer_config.include_zero_genes
    assert "validation_loss" not in model.history_
    assert len(model.history_["train_loss"]) == 2
    # the tokenizer chosen for training is kept for embedding and survives save/load
    assert model.get_latent_representation().shape == (48, 32)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_fused_optimizer_matches_default(name):
    from scvi_scgpt.train import make_optimizer

    torch.manual_seed(0)
    start = [torch.randn(50, 8), torch.randn(8)]
    results = []
    for fused in (True, False):
        params = [torch.nn.Parameter(t.clone()) for t in start]
        opt = make_optimizer(params, name, lr=1e-2, weight_decay=0.01, fused=fused)
        assert bool(opt.defaults.get("fused")) is fused
        for step in range(5):
            for i, p in enumerate(params):
                g = torch.sin(torch.arange(p.numel(), dtype=torch.float32) + step + i)
                p.grad = g.reshape(p.shape)
            opt.step()
        results.append([p.detach() for p in params])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert make_optimizer([torch.nn.Parameter(torch.ones(2))]).defaults["fused"]
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer([torch.nn.Parameter(torch.ones(2))], "SGD")


def test_bf16_mixed_training_with_attention_dropout_learns_and_keeps_fp32_weights():
    """CPU bf16 autocast through Lightning, with the chunked dropout-attention kernel."""
    model = _model(dropout=0.2)
    model.train(
        "gep",
        max_epochs=6,
        lr=3e-3,
        batch_size=32,
        n_top_genes=None,
        precision="bf16-mixed",
        **QUIET,
    )
    history = model.history_["gep_train"].to_numpy().ravel().astype(float)
    assert np.isfinite(history).all()
    assert history[-1] < history[0], history
    assert {p.dtype for p in model.module.parameters()} == {torch.float32}


def test_bf16_clipping_with_the_fused_optimizer_clips():
    from types import SimpleNamespace

    from scvi_scgpt.train import SCGPTTrainingPlan, make_optimizer

    model = _model()
    plan = SCGPTTrainingPlan(model.module)
    plan._trainer = SimpleNamespace(precision="bf16-mixed")
    params = [p for p in model.module.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.full_like(p, 10.0)
    opt = make_optimizer(params, "Adam", fused=True)
    plan.configure_gradient_clipping(opt, 1.0, "norm")
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
    assert float(total) == pytest.approx(1.0, rel=1e-3)
