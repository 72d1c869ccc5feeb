"""Pretrain with 2 CPU processes (DDP, gloo) on streamed files; run by test_streaming.py.

Usage: python ddp_pretrain.py OUT_DIR FILE [FILE ...]
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import scvi
from lightning.pytorch import Callback

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scvi_scgpt import SCGPT, GeneVocab  # noqa: E402
from scvi_scgpt.data import StreamingAnnDataModule  # noqa: E402


class RecordCells(Callback):
    def __init__(self):
        self.cells: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.cells.extend(batch["cell_index"].tolist())


def main(out: Path, files: list[str]) -> None:
    warnings.simplefilter("ignore")
    scvi.settings.seed = 0
    vocab = GeneVocab.from_anndata_files(files)
    dm = StreamingAnnDataModule(files, vocab, batch_size=16, block_size=32, seed=1)
    example = dm.example_adata()
    SCGPT.setup_anndata(example)
    model = SCGPT(
        example,
        vocab=vocab,
        max_seq_len=48,
        d_model=16,
        n_heads=2,
        d_hid=16,
        n_layers=1,
        dropout=0.0,
    )
    recorder = RecordCells()
    model.train(
        "pretrain",
        datamodule=dm,
        max_epochs=1,
        lr=1e-3,
        warmup_steps=2,
        accelerator="cpu",
        devices=2,
        strategy="ddp_find_unused_parameters_true",
        callbacks=[recorder],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    rank = model.trainer.global_rank
    (out / f"cells_rank{rank}.json").write_text(json.dumps(recorder.cells))
    weights = np.concatenate([p.detach().numpy().ravel() for p in model.module.parameters()])
    np.save(out / f"weights_rank{rank}.npy", weights)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
