"""One end-to-end embedding measurement, ours or official, in its own process.

Run by ``benchmarks/embed_throughput.py``::

    # ours (project venv)
    python benchmarks/_embed_worker.py --pipeline ours --h5ad X.h5ad --model-dir DIR \\
        --out-json R.json --out-npy E.npy
    # official scgpt==0.2.4 (.official-venv)
    .official-venv/bin/python benchmarks/_embed_worker.py --pipeline official ...

Timed region (``time.perf_counter``): AnnData already in memory -> embeddings in memory,
model loading included:

- ours: ``SCGPT.setup_anndata`` + ``SCGPT.from_pretrained`` + ``get_latent_representation``
  (the last alone is the "embed-only" time);
- official: ``scgpt.tasks.embed_data(adata, model_dir, gene_col="index", max_length,
  batch_size, device, use_fast_transformer=False, return_new_adata=True)``, which matches the
  genes, builds and loads the model and embeds.

Memory: ``ru_maxrss`` (self + children) and the sampled PSS of the process tree, absolute and
minus the post-import, post-read baseline.

The official code is called unchanged. Two thin wrappers are installed around names that
``scgpt.tasks.cell_emb`` looks up at call time, only to *observe*:

- ``load_pretrained``: counts how many checkpoint tensors the (non-strict) official loader
  really copied into the model, so a silently ignored tensor cannot go unnoticed;
- ``get_batch_cell_embeddings``: times the embedding loop alone (densify + DataLoader +
  forward passes).

One work-around, outside the official package: the side environment has no real
``torchtext`` (its wheels no longer load against current torch) but a pure-Python stand-in
(``scripts/official_env/stubs/torchtext``) whose ``insert`` rebuilds the whole token->index
dict on every call. ``scgpt.tokenizer.GeneVocab.from_dict`` inserts the 60,697 census tokens
one by one in increasing index order, which real torchtext (C++) does in O(1) per token but
the stand-in in O(n): about 300 s per model load. :func:`_fast_stub_insert` gives the
stand-in an O(1) path for exactly that case (appending at the end), with the same result,
so the official timings are not inflated by our stand-in.

Nothing else was needed on CPU: ``os.sched_getaffinity`` exists on Linux,
``pin_memory=True`` without CUDA only warns, and ``torch.cuda.amp.autocast`` without CUDA
only warns and does nothing (the forward passes run in float32).
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import platform
import pstats
import time
import warnings
from pathlib import Path

import _harness as h
import _measure as m


def _fast_stub_insert() -> str | None:
    """Give the torchtext stand-in an O(1) append path (see the module docstring)."""
    import torchtext
    import torchtext.vocab as tv

    table = getattr(tv, "_TokenTable", None)
    if not str(getattr(torchtext, "__version__", "")).endswith("+stub") or table is None:
        return None
    slow_insert = table.insert

    def insert(self, token: str, index: int) -> None:
        if index == len(self.itos) and token not in self.stoi:
            self.stoi[token] = index
            self.itos.append(token)
            return
        slow_insert(self, token, index)

    table.insert = insert
    return "torchtext stand-in: O(1) _TokenTable.insert when appending at the end"


class Official:
    """The official pipeline, with the observing wrappers of the module docstring."""

    def __init__(self, args: argparse.Namespace) -> None:
        import scgpt
        import scgpt.tasks.cell_emb as cell_emb
        import torch

        warnings.filterwarnings("ignore")
        self.args = args
        self.cell_emb = cell_emb
        self.workaround = _fast_stub_insert()
        if args.no_fastpath:
            torch.backends.mha.set_fastpath_enabled(False)
        self.load_info: dict = {}
        self.embed_s = float("nan")
        original_load, original_loop = cell_emb.load_pretrained, cell_emb.get_batch_cell_embeddings

        def observed_load_pretrained(model, pretrained_params, *a, **kw):
            own = model.state_dict()
            renamed = {k.replace("Wqkv.", "in_proj_"): v for k, v in pretrained_params.items()}
            matched = [k for k, v in renamed.items() if k in own and v.shape == own[k].shape]
            self.load_info.update(
                file_tensors=len(pretrained_params),
                model_tensors=len(own),
                loaded_tensors=len(matched),
                ignored_file_tensors=sorted(set(renamed) - set(matched)),
                model_tensors_not_in_file=sorted(set(own) - set(matched)),
            )
            return original_load(model, pretrained_params, *a, **kw)

        def timed_loop(*a, **kw):
            t = time.perf_counter()
            out = original_loop(*a, **kw)
            self.embed_s = time.perf_counter() - t
            return out

        cell_emb.load_pretrained = observed_load_pretrained
        cell_emb.get_batch_cell_embeddings = timed_loop
        self.extra = {
            "pipeline": "official-no-fastpath" if args.no_fastpath else "official",
            "mha_fastpath": torch.backends.mha.get_fastpath_enabled(),
            "scgpt_version": scgpt.__version__,
            "precision": "32 (torch.cuda.amp.autocast is a no-op on CPU)",
        }

    def embed(self, adata, watch: m.Stopwatch):
        a = self.args
        out = self.cell_emb.embed_data(
            adata,
            a.model_dir,
            gene_col="index",
            max_length=a.max_len,
            batch_size=a.batch_size,
            device=a.device,
            use_fast_transformer=False,
            return_new_adata=True,
        )
        return out.X

    def report(self, total_s: float) -> dict:
        return {
            **self.extra,
            "load_s": total_s - self.embed_s,
            "embed_s": self.embed_s,
            "load_pretrained": self.load_info,
            "workarounds": [w for w in (self.workaround,) if w],
        }

    def after(self, adata) -> None:
        pass


class Ours:
    """Our pipeline: ``setup_anndata`` + ``from_pretrained`` + ``get_latent_representation``."""

    def __init__(self, args: argparse.Namespace) -> None:
        import scvi_scgpt

        warnings.filterwarnings("ignore")
        self.args = args
        self.scgpt = scvi_scgpt.SCGPT
        self.accelerator = "gpu" if args.device == "cuda" else "cpu"
        self.model = None
        self.load_s = float("nan")

    def _embed(self, model, adata):
        a = self.args
        return model.get_latent_representation(
            adata, batch_size=a.batch_size, precision=a.precision, progress_bar=False
        )

    def embed(self, adata, watch: m.Stopwatch):
        import torch

        self.scgpt.setup_anndata(adata)
        self.model = self.scgpt.from_pretrained(
            self.args.model_dir, adata, max_seq_len=self.args.max_len, accelerator=self.accelerator
        )
        self.load_s = watch.lap("load")
        emb = self._embed(self.model, adata)
        if self.args.device == "cuda":
            torch.cuda.synchronize()
        return emb

    def report(self, total_s: float) -> dict:
        import torch

        out = {
            "pipeline": "ours",
            "precision": self.args.precision,
            "load_s": self.load_s,
            "embed_s": total_s - self.load_s,
        }
        audit = self.model.checkpoint_audit_
        if audit is not None:
            out["checkpoint_audit"] = audit.summary()
        if self.args.device == "cuda":
            out["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
            out["cuda_device"] = torch.cuda.get_device_name()
        return out

    def after(self, adata) -> None:
        """Untimed: embed again with seed 1 (the spread of the random gene sampling)."""
        import numpy as np

        if self.args.seed_check_npy:
            other = self.scgpt.from_pretrained(
                self.args.model_dir,
                adata,
                max_seq_len=self.args.max_len,
                seed=1,
                accelerator=self.accelerator,
            )
            np.save(self.args.seed_check_npy, self._embed(other, adata))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--pipeline", choices=("ours", "official"), required=True)
    p.add_argument("--h5ad", required=True)
    p.add_argument("--model-dir", required=True)
    p.add_argument("--out-json", required=True)
    p.add_argument("--out-npy", default=None)
    h.add_options(
        p,
        batch_size=64,
        max_len=1200,
    )
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--profile", default=None, help="write cProfile stats of the timed region")
    ours = p.add_argument_group("ours only")
    ours.add_argument("--precision", default="32", choices=("32", "bf16", "16"))
    ours.add_argument(
        "--seed-check-npy",
        default=None,
        help="after the measurement (untimed), embed again with seed=1 and save here: the "
        "run-to-run spread of the random gene sampling / tie spreading",
    )
    official = p.add_argument_group("official only")
    official.add_argument(
        "--no-fastpath",
        action="store_true",
        help="sensitivity variant (not the official default): disable torch's fused "
        "TransformerEncoderLayer inference fast path (torch.backends.mha)",
    )
    return p.parse_args()


def main() -> None:
    args = parse_args()
    t_import = time.perf_counter()
    warnings.filterwarnings("ignore")
    import anndata
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    pipeline = Ours(args) if args.pipeline == "ours" else Official(args)
    import_s = time.perf_counter() - t_import

    t_read = time.perf_counter()
    adata = anndata.read_h5ad(args.h5ad)
    read_s = time.perf_counter() - t_read
    gc.collect()
    baseline_rss, baseline_pss = m.current_rss_mb(), m.current_pss_mb()

    profiler = cProfile.Profile() if args.profile else None
    with m.TreeMemorySampler() as sampler, m.CpuContention() as cpu:
        if profiler is not None:
            profiler.enable()
        watch = m.Stopwatch()
        emb = np.asarray(pipeline.embed(adata, watch), dtype=np.float32)
        total_s = watch.lap("total")
        if profiler is not None:
            profiler.disable()
    memory = m.memory_report(baseline_rss, baseline_pss, sampler)

    if args.out_npy:
        np.save(args.out_npy, emb)
    result = {
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "d_model": int(emb.shape[1]),
        "device": args.device,
        "batch_size": args.batch_size,
        "max_len": args.max_len,
        "import_s": import_s,
        "read_s": read_s,
        "total_s": total_s,
        **pipeline.report(total_s),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "finite": bool(np.isfinite(emb).all()),
        **memory,
        **cpu.report(),
    }
    result["cells_per_s"] = adata.n_obs / total_s
    result["embed_cells_per_s"] = adata.n_obs / result["embed_s"]
    if profiler is not None:
        result["profile_top"] = m.profile_top(profiler)
        profiler.dump_stats(args.profile)
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(25)
        Path(args.profile).with_suffix(".txt").write_text(buf.getvalue(), encoding="utf-8")
    pipeline.after(adata)
    h.write_json(args.out_json, result)
    line = (
        f"{result['pipeline']}: {result['n_cells']} cells in {total_s:.2f}s "
        f"({result['cells_per_s']:.1f} cells/s), peak RSS {memory['peak_rss_mb']:.0f} MiB"
    )
    info = result.get("load_pretrained")
    if info:
        line += f"; loaded {info.get('loaded_tensors')}/{info.get('model_tensors')} tensors"
    print(line)


if __name__ == "__main__":
    main()
