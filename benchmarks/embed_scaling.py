"""How our embedding time grows with the number of cells (1k to 20k), small shape.

Usage: python benchmarks/embed_scaling.py [MODEL_DIR]
(MODEL_DIR defaults to the small random model written by embed_throughput.py.)
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np

from scvi_scgpt import SCGPT

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "pbmc68k_700_counts.h5ad"
SIZES = (1000, 2000, 5000, 10000, 20000)


def main(model_dir: Path) -> None:
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    base = ad.read_h5ad(DATA)
    rows, model = [], None
    for n in SIZES:
        adata = ad.concat([base] * -(-n // base.n_obs))[:n].copy()
        adata.obs_names_make_unique()
        SCGPT.setup_anndata(adata)
        if model is None:
            model = SCGPT.from_pretrained(model_dir, adata)
            model.get_latent_representation(adata, indices=np.arange(64), progress_bar=False)
        start = time.perf_counter()
        model.get_latent_representation(adata, progress_bar=False)
        seconds = time.perf_counter() - start
        rows.append({"n_cells": n, "seconds": seconds, "cells_per_s": n / seconds})
        print(rows[-1], flush=True)
    x = np.array([r["n_cells"] for r in rows], dtype=float)
    y = np.array([r["seconds"] for r in rows])
    slope, intercept = np.polyfit(x, y, 1)
    r2 = 1 - ((y - (slope * x + intercept)) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    summary = {"slope_ms_per_cell": slope * 1e3, "intercept_s": intercept, "r2": r2}
    print(json.dumps({"rows": rows, **summary}))


if __name__ == "__main__":
    default = ROOT / "benchmarks" / "output" / "models" / "small_seed0"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default)
