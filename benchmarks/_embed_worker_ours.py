"""One end-to-end embedding measurement of *our* pipeline (``scvi_scgpt``), in its own process.

Run by ``benchmarks/embed_throughput.py`` with ``.venv/bin/python`` and ``PYTHONPATH=src``:

    python benchmarks/_embed_worker_ours.py --h5ad X.h5ad --model-dir DIR \
        --out-json R.json --out-npy E.npy

Timed region (``time.perf_counter``): AnnData already in memory ->
``SCGPT.setup_anndata`` + ``SCGPT.from_pretrained`` + ``get_latent_representation`` ->
embeddings in memory. The embedding-only part (``get_latent_representation``) is also
reported. Memory: ``ru_maxrss`` (self + children) and the sampled PSS of the process tree,
absolute and minus the post-import, post-read baseline.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import platform
import pstats
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench_common as bc  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--h5ad", required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-npy", default=None)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-len", type=int, default=1200)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--precision", default="32", choices=("32", "bf16", "16"))
    p.add_argument("--profile", default=None, help="write cProfile stats of the timed region")
    p.add_argument(
        "--seed-check-npy",
        default=None,
        help="after the measurement (untimed), embed again with seed=1 and save here: the "
        "run-to-run spread of the random gene sampling / tie spreading",
    )
    args = p.parse_args()

    t_import = time.perf_counter()
    import anndata
    import numpy as np
    import torch

    import scvi_scgpt as s

    warnings.filterwarnings("ignore")
    import_s = time.perf_counter() - t_import

    t_read = time.perf_counter()
    adata = anndata.read_h5ad(args.h5ad)
    read_s = time.perf_counter() - t_read
    gc.collect()
    baseline_rss, baseline_pss = bc.current_rss_mb(), bc.current_pss_mb()

    accelerator = "gpu" if args.device == "cuda" else "cpu"
    profiler = cProfile.Profile() if args.profile else None
    with bc.TreeMemorySampler() as sampler, bc.CpuContention() as cpu:
        if profiler is not None:
            profiler.enable()
        watch = bc.Stopwatch()
        s.SCGPT.setup_anndata(adata)
        model = s.SCGPT.from_pretrained(
            args.model_dir, adata, max_seq_len=args.max_len, accelerator=accelerator
        )
        watch.lap("load")
        emb = model.get_latent_representation(
            adata, batch_size=args.batch_size, precision=args.precision, progress_bar=False
        )
        if args.device == "cuda":
            torch.cuda.synchronize()
        watch.lap("total")
        if profiler is not None:
            profiler.disable()
    memory = bc.memory_report(baseline_rss, baseline_pss, sampler)

    emb = np.asarray(emb, dtype=np.float32)
    if args.out_npy:
        np.save(args.out_npy, emb)
    total_s = watch.laps["total"]
    embed_s = total_s - watch.laps["load"]
    result = {
        "pipeline": "ours",
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "d_model": int(emb.shape[1]),
        "device": args.device,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "max_len": args.max_len,
        "import_s": import_s,
        "read_s": read_s,
        "load_s": watch.laps["load"],
        "embed_s": embed_s,
        "total_s": total_s,
        "cells_per_s": adata.n_obs / total_s,
        "embed_cells_per_s": adata.n_obs / embed_s,
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "finite": bool(np.isfinite(emb).all()),
        **memory,
        **cpu.report(),
    }
    audit = model.checkpoint_audit_
    if audit is not None:
        result["checkpoint_audit"] = audit.summary()
    if args.device == "cuda":
        result["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["cuda_device"] = torch.cuda.get_device_name()
    if profiler is not None:
        result["profile_top"] = bc.profile_top(profiler)
        profiler.dump_stats(args.profile)
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(25)
        Path(args.profile).with_suffix(".txt").write_text(buf.getvalue(), encoding="utf-8")
    if args.seed_check_npy:
        other = s.SCGPT.from_pretrained(
            args.model_dir, adata, max_seq_len=args.max_len, seed=1, accelerator=accelerator
        )
        np.save(
            args.seed_check_npy,
            other.get_latent_representation(
                adata, batch_size=args.batch_size, precision=args.precision, progress_bar=False
            ),
        )
    bc.write_json(args.out_json, result)
    print(
        f"ours: {result['n_cells']} cells in {total_s:.2f}s "
        f"({result['cells_per_s']:.1f} cells/s), peak RSS {memory['peak_rss_mb']:.0f} MiB"
    )


if __name__ == "__main__":
    main()
