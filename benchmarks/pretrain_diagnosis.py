"""Diagnosis of the pretraining plateau (issue #19) on a simulated atlas with a known truth.

    .venv/bin/python benchmarks/pretrain_diagnosis.py encoder
    .venv/bin/python benchmarks/pretrain_diagnosis.py baselines
    .venv/bin/python benchmarks/pretrain_diagnosis.py train --task gep --epochs 10
    .venv/bin/python benchmarks/pretrain_diagnosis.py train --task gep --epochs 10 \
        --value-init-scale 50
    .venv/bin/python benchmarks/pretrain_diagnosis.py train --task pretrain --epochs 30 \
        --schedule constant [--value-init-scale 50]

Data: ``datasets.simulate_atlas(n_cells=6000, n_genes=500, n_grn_genes=300,
n_regulators=30, seed=0)`` (6 cell types over one GRN). Model: ``SCGPT(adata, d_model=64,
n_layers=2, n_heads=4, d_hid=128, dropout=0, max_seq_len=256)`` from scratch, every gene
(``n_top_genes=None``), batch 32, 10 % of the cells held out by ``train`` for validation.

- ``encoder``: cosine similarity between the continuous value encoder's outputs for bins
  -2 .. 50 of a freshly initialised model (official initialisation), and with its first
  linear layer's weight divided by ``--value-init-scale``.
- ``baselines``: held-out MSE of predicting each token's bin (the pretraining tokenization:
  per-cell bins of the expressed genes, 256 tokens) by its gene's mean bin in the other 90 %
  of the cells, by one global mean, and by the gene's mean bin *within the cell's true type*
  (an oracle that knows the cell type: what a model that recognises cell types could reach).
- ``train``: ``train(task)`` and the per-epoch validation MSE of the generated (``pretrain``)
  or masked (``gep``) values, to read against the baselines.

Prints one JSON line per run; ``--out`` (default ``benchmarks/output/pretrain_diagnosis``)
collects them in ``runs.jsonl``. Not a timed benchmark: run on a quiet machine only for the
printed seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np

ATLAS = {"n_cells": 6000, "n_genes": 500, "n_grn_genes": 300, "n_regulators": 30, "seed": 0}
SHAPE = {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_hid": 128, "dropout": 0.0}
MAX_SEQ_LEN = 256


def _model(adata):
    from scvi_scgpt import SCGPT

    SCGPT.setup_anndata(adata)
    return SCGPT(adata, max_seq_len=MAX_SEQ_LEN, **SHAPE)


def _scale_value_init(model, scale: float) -> None:
    import torch

    if scale and scale != 1:
        with torch.no_grad():
            model.module.value_encoder.linear1.weight.div_(scale)


def encoder(scale: float) -> dict:
    import scvi
    import torch

    from scvi_scgpt.datasets import simulate_atlas

    bins = [-2.0, -1.0, 0.0, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0]
    result = {"bins": bins}
    for name, s in (("official_init", 1.0), (f"scaled_init_{scale:g}", scale)):
        scvi.settings.seed = 0
        model = _model(simulate_atlas(**{**ATLAS, "n_cells": 50}))
        _scale_value_init(model, s)
        enc = model.module.value_encoder.eval()
        with torch.no_grad():
            e = torch.nn.functional.normalize(enc(torch.tensor([bins]))[0], dim=-1)
        result[name] = np.round((e @ e.T).numpy().astype(float), 3).tolist()
    return result


def baselines() -> dict:
    from scvi_scgpt import GeneVocab
    from scvi_scgpt.data import TokenizerConfig, tokenize_cells
    from scvi_scgpt.datasets import simulate_atlas

    adata = simulate_atlas(**ATLAS)
    vocab = GeneVocab.from_genes(adata.var_names)
    ids = np.asarray(vocab.lookup(list(adata.var_names)))
    config = TokenizerConfig(max_seq_len=MAX_SEQ_LEN, seed=0, cls_value=-2.0)
    t = tokenize_cells(adata.X, ids, config, cls_id=vocab.cls_id)
    cell = np.repeat(np.arange(adata.n_obs), np.diff(t.indptr))
    is_cls = np.zeros(len(t.gene_ids), dtype=bool)
    is_cls[t.indptr[:-1]] = True
    held_out = np.random.default_rng(0).random(adata.n_obs) < 0.1
    train, test = ~is_cls & ~held_out[cell], ~is_cls & held_out[cell]
    n = len(vocab)

    def mean_by(key, size):
        counts = np.bincount(key[train], minlength=size)
        sums = np.bincount(key[train], weights=t.values[train], minlength=size)
        return sums / np.maximum(counts, 1)

    def mse(pred):
        return float(np.mean((t.values[test] - pred) ** 2))

    types = adata.obs["cell_type"].cat.codes.to_numpy().astype(np.int64)
    by_type = types[cell] * n + t.gene_ids
    return {
        "tokens_per_cell": float(np.diff(t.indptr).mean()),
        "global_mean_mse": mse(t.values[train].mean()),
        "gene_mean_mse": mse(mean_by(t.gene_ids, n)[t.gene_ids[test]]),
        "type_oracle_mse": mse(mean_by(by_type, n * 6)[by_type[test]]),
    }


def train(args) -> dict:
    import scvi

    from scvi_scgpt.datasets import simulate_atlas

    scvi.settings.seed = 0
    model = _model(simulate_atlas(**ATLAS))
    _scale_value_init(model, args.value_init_scale)
    kwargs = {
        "n_top_genes": None,
        "max_epochs": args.epochs,
        "lr": args.lr,
        "batch_size": 32,
        "tokenizer": {"max_seq_len": MAX_SEQ_LEN},
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    if args.schedule:
        kwargs["lr_schedule"] = args.schedule
    start = time.perf_counter()
    model.train(args.task, **kwargs)
    history = model.history_
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "gep_validation": np.round(
            history["gep_validation"].to_numpy(dtype=float).ravel(), 2
        ).tolist(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("part", choices=["encoder", "baselines", "train"])
    p.add_argument("--task", default="pretrain", choices=["pretrain", "gep"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--schedule", choices=["step", "cosine", "constant"], default=None)
    p.add_argument("--value-init-scale", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("benchmarks/output/pretrain_diagnosis"))
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    if args.part == "encoder":
        result = encoder(args.value_init_scale if args.value_init_scale != 1 else 50.0)
    elif args.part == "baselines":
        result = baselines()
    else:
        result = train(args)
    record = {**{k: v for k, v in vars(args).items() if k != "out"}, **result}
    line = json.dumps(record, default=str)
    print(line, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "runs.jsonl", "a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    main()
