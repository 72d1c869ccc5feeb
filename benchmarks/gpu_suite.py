"""GPU suite (issue #21): one command for the minutes a GPU is lent; ``--dry-run`` on a CPU.

    python benchmarks/gpu_suite.py --install-flash   # on the GPU machine
    python benchmarks/gpu_suite.py --dry-run         # tiny shapes, any machine, seconds (CI)

Rows, each on the same cells (``datasets.pbmc68k_700``, 700 real PBMCs) and a random-weight
model of the whole-human shape (d_model 512, 12 layers, 8 heads, census vocabulary):

1. **Embedding** with ``get_latent_representation`` in fp32, bf16 and bf16 + flash-attn
   (when ``flash_attn`` imports): cells/s after a warm-up call, peak GPU memory
   (``torch.cuda.max_memory_allocated``), fidelity against fp32 (per-cell cosine of centred
   embeddings, min and mean).
2. **A fine-tuning step** (``train("annotation")``, bf16-mixed on a GPU): training tokens/s
   over a fixed number of steps after a warm-up.
3. **``embed_atlas``** of the cells written as ``.h5ad``, ``devices=1``: cells/s, and the
   largest difference to ``get_latent_representation``.
4. **Official scGPT** (``scgpt`` from PyPI) on the same cells, if it is installed (the suite
   never installs it: its pins would replace this environment's torch).

``--install-flash`` runs ``pip install flash-attn --no-build-isolation`` first (only a
prebuilt wheel is worth the minutes; the step is skipped after 120 s). Writes
``results.json`` in ``--out`` and, on a full run, the "GPU suite (issue #21)" section of
``RESULTS.md``. With ``--dry-run`` the shapes are tiny (d_model 32, 2 layers, 64 cells),
the device is whatever is there (CPU in CI), nothing is written to ``RESULTS.md``, and every
row must still produce its numbers: the suite is known to work before a GPU minute is spent.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import _harness as h
import numpy as np

FULL = {**h.WHOLE_HUMAN, "n_cells": 700, "batch_size": 64, "train_steps": 20}
DRY = {"d_model": 32, "n_layers": 2, "n_heads": 2, "d_hid": 32, "n_cells": 64,
       "batch_size": 16, "train_steps": 3}  # fmt: skip
QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


def _sync(torch) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _centred_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    b = b - b.mean(0)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def _timed_embedding(torch, model, adata, precision: str, batch_size: int) -> tuple:
    model.get_latent_representation(adata[:batch_size].copy(), precision=precision)  # warm-up
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    _sync(torch)
    start = time.perf_counter()
    emb = model.get_latent_representation(adata, precision=precision, batch_size=batch_size)
    _sync(torch)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return emb, adata.n_obs / seconds, peak


def _use_flash(model, on: bool) -> None:
    """Switch flash-attn (used on CUDA whenever it imports) on or off in every layer."""
    for layer in model.module.modules():
        if hasattr(layer, "use_flash"):
            layer.use_flash = on


def _install_flash() -> str:
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "flash-attn",
             "--no-build-isolation"],
            check=True, timeout=120,
        )  # fmt: skip
        return "installed"
    except (subprocess.SubprocessError, OSError) as err:
        return f"not installed ({type(err).__name__})"


def run(args) -> dict:
    import torch

    import scvi_scgpt as s
    from scvi_scgpt import SCGPT

    shape = DRY if args.dry_run else FULL
    warnings.filterwarnings("ignore")
    flash_status = _install_flash() if args.install_flash else "not requested"
    try:
        import flash_attn  # noqa: F401

        has_flash = True
    except ImportError:
        has_flash = False
    cells = s.datasets.pbmc68k_700()[: shape["n_cells"]].copy()
    SCGPT.setup_anndata(cells)
    arch = {k: shape[k] for k in ("d_model", "n_layers", "n_heads", "d_hid")}
    vocab = None if args.dry_run else s.GeneVocab.census()
    model = SCGPT(cells, vocab=vocab, max_seq_len=1200, dropout=0.0, **arch)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to_device(device)
    res = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "dry_run": bool(args.dry_run),
        "shape": shape,
        "torch": torch.__version__,
        "flash_attn": {"install": flash_status, "importable": has_flash},
        "embedding": {},
    }

    # 1. embedding in each precision
    bs = shape["batch_size"]
    _use_flash(model, False)
    ref, ref_speed, ref_peak = _timed_embedding(torch, model, cells, "32", bs)
    res["embedding"]["fp32"] = {"cells_per_s": ref_speed, "peak_mib": ref_peak}
    variants = [("bf16", False)]
    if has_flash and device == "cuda":
        variants.append(("bf16+flash", True))
    for name, flash in variants:
        try:
            _use_flash(model, flash)
            emb, speed, peak = _timed_embedding(torch, model, cells, "bf16", bs)
            cos = _centred_cosine(emb, ref)
            res["embedding"][name] = {
                "cells_per_s": speed,
                "peak_mib": peak,
                "speedup_vs_fp32": speed / ref_speed,
                "centred_cosine_min": float(cos.min()),
                "centred_cosine_mean": float(cos.mean()),
            }
        except Exception as err:  # noqa: BLE001 - a row that fails is recorded, not fatal
            res["embedding"][name] = {"error": f"{type(err).__name__}: {err}"}

    # 2. a fine-tuning step (annotation head, bf16-mixed on a GPU)
    labelled = cells.copy()
    SCGPT.setup_anndata(labelled, labels_key="bulk_labels")
    tuner = SCGPT(labelled, vocab=vocab, max_seq_len=1200, dropout=0.0, **arch)
    precision = "bf16-mixed" if device == "cuda" else "32-true"
    steps = shape["train_steps"]
    start = time.perf_counter()
    tuner.train("annotation", max_steps=steps, max_epochs=100, batch_size=bs, train_size=1.0,
                best_epoch=False, accelerator=device, precision=precision, **QUIET)  # fmt: skip
    _sync(torch)
    seconds = time.perf_counter() - start
    tokens = float(np.minimum((cells.X > 0).sum(1).A1 + 1, 1200).mean()) * bs * steps
    res["fine_tune"] = {"steps": steps, "precision": precision, "seconds": seconds,
                        "tokens_per_s": tokens / seconds}  # fmt: skip

    # 3. embed_atlas on one device
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cells.h5ad"
        cells.write_h5ad(path)
        start = time.perf_counter()
        out = model.embed_atlas(path, Path(tmp) / "out.zarr", accelerator=device, devices=1,
                                batch_size=bs, progress_bar=False)  # fmt: skip
        seconds = time.perf_counter() - start
        import anndata as ad

        written = ad.read_zarr(out)
        order = cells.obs_names.get_indexer(written.obs_names)
        diff = float(np.abs(written.obsm["X_scGPT"] - ref[order]).max())
    res["embed_atlas"] = {"cells_per_s": cells.n_obs / seconds, "max_abs_diff_vs_fp32": diff}

    # 4. official scGPT, when installed
    try:
        import scgpt  # noqa: F401

        res["official"] = {"installed": True, "note": "run benchmarks/embed_throughput.py"}
    except ImportError:
        res["official"] = {"installed": False}
    return res


def render(res: dict) -> str:
    rows = []
    for name, row in res["embedding"].items():
        if "error" in row:
            rows.append([name, "error", "", "", row["error"][:60]])
            continue
        rows.append([
            name, h.fmt(row["cells_per_s"]), h.fmt(row.get("peak_mib"), 0),
            h.fmt(row.get("speedup_vs_fp32"), 2), h.fmt(row.get("centred_cosine_min"), 4),
        ])  # fmt: skip
    ft, atlas = res["fine_tune"], res["embed_atlas"]
    return "\n".join([
        "## GPU suite (issue #21)", "",
        f"Device: {res['device']}; torch {res['torch']}; flash-attn: "
        f"{res['flash_attn']}; shape: {res['shape']}.", "",
        h.markdown_table(
            ["embedding", "cells/s", "peak MiB", "x fp32", "min centred cosine"], rows
        ),
        "",
        f"Fine-tuning ({ft['precision']}, {ft['steps']} steps): "
        f"{h.fmt(ft['tokens_per_s'], 0)} tokens/s. `embed_atlas` (devices=1): "
        f"{h.fmt(atlas['cells_per_s'])} cells/s, max abs difference to fp32 "
        f"`get_latent_representation` {atlas['max_abs_diff_vs_fp32']:.2e}. Official scGPT "
        f"installed: {res['official']['installed']}.",
    ])  # fmt: skip


def main() -> None:
    p = h.parser(__doc__, "gpu_suite", quick_help="same as --dry-run", results_md=True)
    p.add_argument("--dry-run", action="store_true", help="tiny shapes, any device (CI)")
    p.add_argument("--install-flash", action="store_true", help="pip install flash-attn first")
    args = h.parse(p)
    args.dry_run = args.dry_run or args.quick
    if args.dry_run:
        args.results_md = None
    h.set_threads(args.threads)
    res = run(args)
    h.report(args, res, render, "gpu_suite")


if __name__ == "__main__":
    main()
