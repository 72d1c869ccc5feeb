"""The perturbation benchmark's reverse perturbation keeps held-out and training targets apart.

A training single of an additive-residual model is predicted as its observed mean, so its
top-1 is trivially right; pooled with the held-out doubles it inflated the reported top-1
(issue #30, item 14).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from scvi_scgpt import SCGPT, tl
from scvi_scgpt.datasets import simulate_perturbseq

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TINY = {"d_model": 16, "n_heads": 2, "d_hid": 16, "n_layers": 1, "attention_dropout": 0.0}


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield importlib.import_module("perturbation")
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_reverse_accuracy_reports_held_out_and_training_targets_apart(bench):
    adata = simulate_perturbseq(
        n_genes=30,
        n_regulators=6,
        n_doubles=10,
        n_control_cells=40,
        cells_per_perturbation=8,
        seed=1,
    )
    split = tl.perturbation_split(adata, seed=1)
    held_out = list(split["test_subgroup"]["combo_seen2"])
    training = [c for c in split["train"] if c.endswith("+ctrl")]
    assert held_out and training
    data = adata.copy()
    SCGPT.setup_anndata(data, perturbation_key="condition")
    torch.manual_seed(0)
    model = SCGPT(data, **TINY)
    model.train(
        "perturbation",
        combination="additive_residual",
        max_epochs=1,
        batch_size=32,
        accelerator="cpu",
    )
    out = bench.reverse_accuracy(
        {"scgpt_residual": model}, {}, adata, split, SimpleNamespace(n_control_predict=20)
    )
    assert out["n_targets"] == {"held_out": len(held_out), "training": len(training)}
    for method in ("scgpt_residual", "additive", "de"):
        assert set(out[method]) == {"held_out", "training"}
        for part in out[method].values():
            assert set(part) == {"top1", "top5"} and 0.0 <= part["top1"] <= part["top5"] <= 1
    # training singles are their observed means: trivially first, hence reported apart
    assert out["scgpt_residual"]["training"]["top1"] == 1.0
    assert out["additive"]["training"]["top1"] == 1.0
