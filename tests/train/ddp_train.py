"""Train SCGPT with 2 CPU processes (DDP, gloo); run by tests/train/test_ddp.py.

Usage: python ddp_train.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import scvi
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from scvi_scgpt import SCGPT  # noqa: E402
from tests._builders import make_structured_counts  # noqa: E402


def main(out: Path) -> None:
    warnings.simplefilter("ignore")
    scvi.settings.seed = 0
    adata = make_structured_counts(128)
    SCGPT.setup_anndata(adata, batch_key="batch")
    model = SCGPT(adata, max_seq_len=64, d_model=16, n_heads=2, d_hid=16, n_layers=1, dropout=0.0)
    model.train(
        "gep",
        max_epochs=2,
        batch_size=16,
        lr=1e-3,
        n_top_genes=None,
        accelerator="cpu",
        devices=2,
        strategy="ddp_find_unused_parameters_true",
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    weights = np.concatenate([p.detach().numpy().ravel() for p in model.module.parameters()])
    np.save(out / f"weights_rank{rank}.npy", weights)
    if rank == 0:
        (out / "result.json").write_text(
            json.dumps(
                {
                    "world_size": world,
                    "epochs": len(model.history_["train_loss"]),
                    "final_loss": float(model.history_["train_loss"].to_numpy().ravel()[-1]),
                }
            )
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
