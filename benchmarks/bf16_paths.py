"""bf16 / fp32 through every public path, for models built every way, with a profile.

    flock /tmp/scvi_scgpt_cpu.lock .venv/bin/python benchmarks/bf16_paths.py
    .venv/bin/python benchmarks/bf16_paths.py --quick     # smoke run (tiny model, seconds)

Whole-human shape (d_model 512, 12 layers, 8 heads, d_hid 512, random weights) on pbmc68k
cells, batch 64, one process. For each row the path runs once in fp32 and once in
``precision="bf16"`` (after one warm-up call of each precision on the same model), on the
first 64, 256 and 700 cells (``--sizes``):

1. **Public paths**, model from the constructor (``SCGPT(adata, ...)``: the data's genes as
   vocabulary): ``get_latent_representation``, ``embed``, ``annotate`` (classifier trained for
   one epoch first), ``gene_embeddings(adata=...)`` (contextual) and ``embed_atlas`` (the cells
   as an in-memory source, one CPU process, into a zarr store).
2. **Ways of building the model**, ``get_latent_representation`` at every size: the
   constructor; ``from_pretrained`` of an official-format directory with the 60,697-gene
   census vocabulary and ``max_seq_len=1200`` (``embed_throughput.make_model``; the model of
   ``bf16_inference.py``); after ``train`` (one annotation epoch on 128 cells at lr 1e-4);
   after ``save`` + ``load``. Also the machine's matmul peak, fp32 and bf16, on one linear
   layer's shape.
3. **Fidelity**: centred cosine (per cell, after subtracting the fp32 mean) of bf16 against
   fp32 for every path that returns embeddings; label agreement for ``annotate``.
4. **Profile** (``torch.profiler``) of ``get_latent_representation`` on 256 cells in each
   precision: self CPU time per kind of operator, and the time outside operators
   (tokenisation, batching, Python), to show what bounds the bf16 speed-up.

Writes ``benchmarks/output/bf16_paths/results.json`` and (full runs) the RESULTS.md section
``bf16_paths``.
"""

from __future__ import annotations

import tempfile
import time
import warnings
from pathlib import Path

import _harness as h
import numpy as np

SECTION = "bf16_paths"
WHOLE_HUMAN = {"d_model": 512, "n_layers": 12, "n_heads": 8, "d_hid": 512}
QUICK = {"sizes": "16,32", "profile_cells": 32}
PATHS = ("get_latent_representation", "embed", "annotate", "gene_embeddings", "embed_atlas")
#: operator name fragments -> kind, first match wins (profile summary)
KINDS = (
    ("matmul", ("linear", "addmm", "mm", "matmul", "mkldnn", "onednn", "baddbmm")),
    ("attention", ("attention", "softmax", "bmm")),
    ("layer_norm", ("layer_norm", "native_layer_norm")),
    ("dtype copies", ("to_copy", "copy_", "_to_dtype", "convert")),
    ("activation", ("relu", "gelu")),
)
log = h.setup_logging(SECTION, quiet=False)


def centred_cosine(ref: np.ndarray, other: np.ndarray) -> np.ndarray:
    mean = ref.mean(0)
    a, b = ref - mean, other - mean
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def call(model, path: str, cells, precision: str, workdir: Path):
    """Run one public path; returns what it computed (array, labels or None)."""
    if path == "get_latent_representation":
        return model.get_latent_representation(
            cells, batch_size=64, precision=precision, progress_bar=False
        )
    if path == "embed":
        model.embed(cells, batch_size=64, precision=precision, progress_bar=False)
        return np.asarray(cells.obsm["X_scGPT"])
    if path == "annotate":
        model.annotate(cells, batch_size=64, precision=precision)
        return cells.obs["scgpt_prediction"].to_numpy()
    if path == "gene_embeddings":
        return model.gene_embeddings(
            adata=cells, batch_size=64, precision=precision, progress_bar=False
        ).to_numpy()
    if path == "embed_atlas":
        import anndata as ad

        out = workdir / f"atlas_{precision}_{cells.n_obs}_{time.perf_counter_ns()}.zarr"
        model.embed_atlas(
            cells, out, batch_size=64, precision=precision, accelerator="cpu", devices=1,
            progress_bar=False,
        )  # fmt: skip
        return np.asarray(ad.read_zarr(out).obsm["X_scGPT"])
    raise ValueError(path)


def measure(model, path: str, adata, sizes, workdir: Path) -> list[dict]:
    """fp32 and bf16 of ``path`` at each size, after one warm-up of each precision."""
    for precision in ("32", "bf16"):
        call(model, path, adata[: sizes[0]].copy(), precision, workdir)
    rows = []
    for n in sizes:
        row, outs = {"path": path, "cells": n}, {}
        for precision in ("32", "bf16"):
            cells = adata[:n].copy()
            t = time.perf_counter()
            outs[precision] = call(model, path, cells, precision, workdir)
            row[f"s_{precision}"] = time.perf_counter() - t
        row["ratio"] = row["s_32"] / row["s_bf16"]
        a, b = outs["32"], outs["bf16"]
        if a.dtype.kind == "f":
            a, b = a.astype(np.float64), b.astype(np.float64)
            cos = centred_cosine(a, b)
            row["centred_cosine_mean"], row["centred_cosine_min"] = cos.mean(), cos.min()
            # how far the cells are from their mean, relative to the embedding's length
            spread = (
                np.linalg.norm(a - a.mean(0), axis=1).mean() / np.linalg.norm(a, axis=1).mean()
            )
            row["spread"] = float(spread)
        else:
            row["label_agreement"] = float(np.mean(a == b))
        log(f"{path} {n} cells: fp32 {row['s_32']:.1f} s, bf16 {row['s_bf16']:.1f} s")
        rows.append(row)
    return rows


def matmul_peak(rows: int = 8192, k: int = 512, n: int = 1536, repeats: int = 10) -> dict:
    """GFLOP/s of one linear layer's matmul in fp32 (``F.linear``) and bf16 (packed oneDNN)."""
    import torch
    import torch.nn.functional as F

    from scvi_scgpt.nn._precision import pack_linear_weight

    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(rows, k, generator=gen), torch.randn(n, k, generator=gen)
    xb, wb = x.bfloat16(), w.bfloat16()
    packed = pack_linear_weight(wb)

    def bf16():
        if packed is None:
            return F.linear(xb, wb)
        return torch.ops.mkldnn._linear_pointwise(xb, packed, None, "none", [], "")

    out = {}
    for name, fn in (("fp32", lambda: F.linear(x, w)), ("bf16", bf16)):
        for _ in range(3):
            fn()
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        out[name] = 2 * rows * k * n * repeats / (time.perf_counter() - t) / 1e9
    out["shape"] = f"{rows}x{k}x{n}"
    return out


def profile(model, adata, n: int) -> dict:
    """Self CPU seconds per kind of operator, and wall time, in each precision."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    cells = adata[:n].copy()
    out = {}
    for precision in ("32", "bf16"):
        model.get_latent_representation(cells, batch_size=64, precision=precision)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            model.get_latent_representation(
                cells, batch_size=64, precision=precision, progress_bar=False
            )
            wall = time.perf_counter() - t
        kinds: dict[str, float] = {}
        top = []
        for ev in prof.key_averages():
            seconds = ev.self_cpu_time_total / 1e6
            name = ev.key.lower()
            kind = next((k for k, frags in KINDS if any(f in name for f in frags)), "other ops")
            kinds[kind] = kinds.get(kind, 0.0) + seconds
            top.append((seconds, ev.key))
        kinds["outside operators"] = max(0.0, wall - sum(kinds.values()))
        top.sort(reverse=True)
        out[precision] = {"wall_s": wall, "kinds": kinds, "top_ops": top[:8]}
    return out


def run(args) -> dict:
    import scvi_scgpt as s
    from scvi_scgpt.datasets import pbmc68k_700

    warnings.filterwarnings("ignore")
    shape = {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_hid": 32} if args.quick else None
    shape = shape or WHOLE_HUMAN
    sizes = [int(n) for n in args.sizes.split(",")]
    adata = pbmc68k_700()[: max(sizes)].copy()
    s.SCGPT.setup_anndata(adata, labels_key="bulk_labels")
    workdir = Path(tempfile.mkdtemp(prefix="bf16_paths_"))
    res = {"shape": shape, "sizes": sizes, "paths": [], "builds": []}

    res["matmul_peak"] = matmul_peak()
    log(f"matmul GFLOP/s: {res['matmul_peak']}")
    log("constructor model")
    built = s.SCGPT(adata, **shape, seed=args.seed)
    for path in ("get_latent_representation", "embed", "gene_embeddings", "embed_atlas"):
        res["paths"] += measure(built, path, adata, sizes, workdir)
    res["builds"] += [dict(r, build="constructor") for r in res["paths"][: len(sizes)]]

    log("profile")
    res["profile"] = profile(built, adata, args.profile_cells)

    log("trained model (one annotation epoch on 128 cells, lr 1e-4)")
    trained = s.SCGPT(adata, **shape, seed=args.seed)
    trained.train(
        "annotation", max_epochs=1, batch_size=64, lr=1e-4, train_size=min(0.5, 128 / adata.n_obs),
        validation_size=min(0.25, 64 / adata.n_obs), accelerator="cpu",
    )  # fmt: skip
    res["paths"] += measure(trained, "annotate", adata, sizes, workdir)
    res["builds"] += [
        dict(r, build="after train")
        for r in measure(trained, "get_latent_representation", adata, sizes, workdir)
    ]
    trained.save(workdir / "saved", overwrite=True)
    loaded = s.SCGPT.load(workdir / "saved", adata=adata)
    res["builds"] += [
        dict(r, build="after save + load")
        for r in measure(loaded, "get_latent_representation", adata, sizes, workdir)
    ]
    del trained, loaded

    if not args.quick:
        import embed_throughput as et

        model_dir = et.make_model("whole-human", args.out / "models", args.ours_python, 0)
        pretrained = s.SCGPT.from_pretrained(model_dir, adata, max_seq_len=1200)
        res["builds"] += [
            dict(r, build="from_pretrained (census vocabulary)")
            for r in measure(pretrained, "get_latent_representation", adata, sizes, workdir)
        ]
    return res


def render(res: dict) -> str:
    def fidelity(r):
        if "label_agreement" in r:
            return f"labels agree {r['label_agreement']:.3f}"
        spread = f" (spread {r['spread']:.3f})" if "spread" in r else ""
        return f"{r['centred_cosine_mean']:.4f} / {r['centred_cosine_min']:.4f}{spread}"

    def rows(table, first):
        return [
            [r[first], r["cells"], f"{r['s_32']:.2f}", f"{r['s_bf16']:.2f}",
             f"**{r['ratio']:.2f}x**", fidelity(r)]
            for r in table
        ]  # fmt: skip

    head = ["s fp32", "s bf16", "bf16 / fp32", "centred cosine mean / min"]
    shape = res["shape"]
    lines = [
        "## bf16 through every public path (issue #21)",
        "",
        f"Command: `{res['command']}`  ",
        f"{h.machine_line(res)}. Shape d_model {shape['d_model']}, {shape['n_layers']} "
        f"layers, {shape['n_heads']} heads, random weights; pbmc68k cells, batch 64, one "
        "process, each precision warmed up first.",
        "",
        "**Public paths** (model from the constructor; `annotate` after one training epoch). "
        "Spread: the cells' mean distance from their mean embedding over the embeddings' "
        "length; where it is tiny the centred cosine measures bf16 rounding only.",
        "",
        h.markdown_table(["path", "cells", *head], rows(res["paths"], "path")),
        "",
        "**Ways of building the model** (`get_latent_representation`):",
        "",
        h.markdown_table(["model", "cells", *head], rows(res["builds"], "build")),
        "",
    ]
    peak = res.get("matmul_peak")
    if peak:
        lines += [
            f"**Matmul peak** of this machine (one linear layer, {peak['shape']}): fp32 "
            f"{peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s, "
            f"**{peak['bf16'] / peak['fp32']:.2f}x**: the bound on any bf16 / fp32 ratio of "
            "matmul-bound work.",
            "",
        ]
    prof = res["profile"]
    kinds = sorted(set(prof["32"]["kinds"]) | set(prof["bf16"]["kinds"]))
    kinds.sort(key=lambda k: -prof["32"]["kinds"].get(k, 0.0))
    table = []
    for kind in kinds:
        a, b = prof["32"]["kinds"].get(kind, 0.0), prof["bf16"]["kinds"].get(kind, 0.0)
        table.append([kind, f"{a:.2f}", f"{b:.2f}", f"{a / b:.2f}x" if b > 0 else "—"])
    table.append(
        ["**wall**", f"{prof['32']['wall_s']:.2f}", f"{prof['bf16']['wall_s']:.2f}",
         f"{prof['32']['wall_s'] / prof['bf16']['wall_s']:.2f}x"]
    )  # fmt: skip
    lines += [
        f"**Profile** of `get_latent_representation` on {res['args']['profile_cells']} cells "
        "(self CPU seconds by kind of operator, under the profiler):",
        "",
        h.markdown_table(["kind", "fp32 s", "bf16 s", "fp32 / bf16"], table),
        "",
        "Top bf16 operators: "
        + ", ".join(f"{name} {sec:.2f} s" for sec, name in prof["bf16"]["top_ops"][:5])
        + ".",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = h.parser(__doc__, SECTION, quick_help="tiny model, 16 and 32 cells", results_md=True)
    h.add_options(
        p,
        sizes=("64,256,700", "comma-separated cell counts"),
        profile_cells=(256, "cells of the profiled calls"),
    )
    h.add_python_args(p)
    args = h.parse(p, argv, quick=QUICK)
    h.set_threads(args.threads)
    res = run(args)
    h.report(args, res, render, SECTION)


if __name__ == "__main__":
    main()
