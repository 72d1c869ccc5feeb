"""Roofline: FLOPs per cell, measured matmul peak, achieved GFLOP/s and where the time goes.

For the whole-human shape (d_model 512, 12 layers, 8 heads, d_hid 512, census vocabulary,
random weights) embedding real pbmc68k cells, and for one training step of the
``train_step_speed`` cases (d_model 256, 4 layers), in float32 and in bfloat16:

1. **Peak**: the best GFLOP/s of ``torch.matmul`` over a few shapes (the model's own
   projection shapes and a square one), float32 and bfloat16, measured in the same process
   just before the model runs.
2. **FLOPs** from the architecture and each cell's token count ``L`` (matmul FLOPs only,
   2 per multiply-add; the formula is :func:`encoder_flops` / :func:`step_flops`):

   - full encoder layer: ``2·L·(4·d² + 2·d·d_hid) + 4·L²·d`` (q, k, v, out projections and
     the feed-forward; q·kᵀ and the weighted sum of v);
   - last layer of a ``<cls>`` embedding (only ``<cls>`` is queried):
     ``2·L·2·d² + 2·(2·d² + 2·d·d_hid) + 4·L·d``;
   - value encoder ``2·L·(d + d²)``;
   - training step: every layer full, plus the GEP head ``2·L·(2·d² + d)`` and the GEPC
     head ``2·L·(2·d² + d)``, forward; backward counted as twice the forward.

   The count is checked against ``torch.utils.flop_counter.FlopCounterMode`` on one batch.
3. **Achieved**: FLOPs / wall time, and the share of the measured peak.
4. **Profile** (``torch.profiler``, self CPU time per operator, grouped): matmul,
   attention, LayerNorm, casts and copies, element-wise, indexing and packing, optimizer;
   tokenization is host (numpy) work outside torch and is timed on its own.

Usage (serialise with the other CPU benchmarks)::

    flock /tmp/scvi_scgpt_cpu.lock .venv/bin/python benchmarks/roofline.py
    .venv/bin/python benchmarks/roofline.py --quick     # smoke run, RESULTS.md untouched

Writes ``benchmarks/output/roofline/results.json`` and (full runs) the marked "Roofline"
section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import statistics
import time

import _harness as h
import numpy as np

SECTION = "roofline"
QUICK = {"n_cells": 64, "rounds": 1, "steps": 2}
log = h.setup_logging("roofline", quiet=False)
GROUPS = {
    "matmul (linear layers)": (
        "aten::addmm",
        "aten::mm",
        "aten::linear",
        "aten::addmv",
        "mkldnn::_linear_pointwise",
    ),
    "attention": (
        "aten::_scaled_dot_product_flash_attention_for_cpu",
        "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
        "aten::bmm",
        "aten::baddbmm",
        "aten::_softmax",
        "aten::_softmax_backward_data",
        "aten::masked_fill_",
        "aten::masked_fill",
        "aten::_masked_softmax",
    ),
    "LayerNorm": ("aten::native_layer_norm", "aten::native_layer_norm_backward"),
    "casts and copies": ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous"),
    "indexing and packing": (
        "aten::index",
        "aten::index_select",
        "aten::index_copy",
        "aten::index_put_",
        "aten::cat",
        "aten::embedding",
        "aten::embedding_dense_backward",
        "aten::index_add_",
        "aten::nonzero",
        "aten::scatter_add_",
    ),
    "optimizer and clipping": (
        "aten::_fused_adam_",
        "aten::_foreach_norm",
        "aten::_foreach_mul_",
        "aten::linalg_vector_norm",
        "aten::_foreach_add_",
    ),
}


# ----------------------------------------------------------------------------- FLOPs
def encoder_flops(lengths, d: int, d_hid: int, n_layers: int, cls_only: bool) -> float:
    """Matmul FLOPs of the value encoder and the transformer for cells of ``lengths`` tokens."""
    L = np.asarray(lengths, dtype=float)
    full = 2 * L * (4 * d * d + 2 * d * d_hid) + 4 * L**2 * d
    last = 2 * L * 2 * d * d + 2 * (2 * d * d + 2 * d * d_hid) + 4 * L * d
    value_encoder = 2 * L * (d + d * d)
    layers = (n_layers - 1) * full + (last if cls_only else full)
    return float(np.sum(layers + value_encoder))


def step_flops(lengths, d: int, d_hid: int, n_layers: int) -> float:
    """Matmul FLOPs of one training step (forward + heads, backward = 2 x forward)."""
    L = np.asarray(lengths, dtype=float)
    heads = float(np.sum(2 * 2 * L * (2 * d * d + d)))
    forward = encoder_flops(lengths, d, d_hid, n_layers, cls_only=False) + heads
    return 3 * forward


def counted_flops(fn) -> float:
    """FLOPs ``FlopCounterMode`` counts while ``fn()`` runs.

    SDPA runs its math kernel here: the counter does not count the CPU flash kernel, and the
    math kernel's matmuls are counted. Length buckets pad attention to each bucket's longest
    cell, so the count can exceed the formula's per-cell ``L²``.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        fn()
    return float(counter.get_total_flops())


# ----------------------------------------------------------------------------- peak
def matmul_peak(shapes, seconds: float = 1.0) -> dict:
    """Best GFLOP/s of ``a @ b`` per dtype over ``shapes`` ``(m, k, n)``."""
    import torch

    out = {}
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        rows = []
        for m_, k_, n_ in shapes:
            a, b = torch.randn(m_, k_, dtype=dtype), torch.randn(k_, n_, dtype=dtype)
            c = torch.empty(m_, n_, dtype=dtype)
            for _ in range(2):
                torch.matmul(a, b, out=c)
            times, t_end = [], time.perf_counter() + seconds
            while time.perf_counter() < t_end or len(times) < 3:
                t0 = time.perf_counter()
                torch.matmul(a, b, out=c)
                times.append(time.perf_counter() - t0)
            rows.append({"shape": [m_, k_, n_], "gflops": 2 * m_ * k_ * n_ / min(times) / 1e9})
        out[name] = {"best_gflops": max(r["gflops"] for r in rows), "shapes": rows}
    return out


# ----------------------------------------------------------------------------- profile
def grouped_profile(fn) -> dict:
    """Self CPU seconds per group of operators while ``fn()`` runs."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    groups = dict.fromkeys([*GROUPS, "element-wise and other"], 0.0)
    top = []
    for ev in prof.key_averages():
        s = ev.self_cpu_time_total / 1e6
        name = next((g for g, ops in GROUPS.items() if ev.key in ops), "element-wise and other")
        groups[name] += s
        top.append((s, ev.key))
    total = sum(groups.values())
    top.sort(reverse=True)
    return {
        "total_s": total,
        "groups_s": groups,
        "top_ops": [{"op": k, "self_s": s} for s, k in top[:8]],
    }


# ----------------------------------------------------------------------------- embedding
def embedding_part(args) -> dict:
    import embed_throughput as et
    import torch

    import scvi_scgpt as s
    from scvi_scgpt.datasets import pbmc68k_700

    model_dir = et.make_model("whole-human", args.out / "models", args.ours_python, 0)
    adata = pbmc68k_700()[: args.n_cells].copy()
    s.SCGPT.setup_anndata(adata)
    model = s.SCGPT.from_pretrained(model_dir, adata, max_seq_len=1200)
    cfg = model.architecture
    idx = np.arange(adata.n_obs)
    t0 = time.perf_counter()
    lengths = []
    for _, arrays in model._token_batches(adata, idx, 64, max_tokens=8192):
        lengths += list((~arrays["padding_mask"]).sum(1))
    tokenize_s = time.perf_counter() - t0
    flops = encoder_flops(lengths, cfg.d_model, cfg.d_hid, cfg.n_layers, cls_only=True)

    def embed(precision):
        return model.get_latent_representation(
            adata, batch_size=64, precision=precision, progress_bar=False
        )

    one = adata[:16].copy()
    s.SCGPT.setup_anndata(one)
    counted = counted_flops(
        lambda: model.get_latent_representation(one, batch_size=64, progress_bar=False)
    )
    one_lengths = []
    for _, arrays in model._token_batches(one, np.arange(16), 64, max_tokens=8192):
        one_lengths += list((~arrays["padding_mask"]).sum(1))
    formula_16 = encoder_flops(one_lengths, cfg.d_model, cfg.d_hid, cfg.n_layers, True)
    times = {"32": [], "bf16": []}
    for p in times:
        embed(p)  # warm-up (and the bf16 weight copy's first use)
    for _ in range(args.rounds):
        for p in times:
            t = time.perf_counter()
            embed(p)
            times[p].append(time.perf_counter() - t)
    peak = matmul_peak([(8192, 512, 1536), (8192, 512, 512), (2048, 2048, 2048)])
    rows = {}
    for p, ts in times.items():
        sec = statistics.median(ts)
        gflops = flops / sec / 1e9
        key = "fp32" if p == "32" else "bf16"
        rows[key] = {
            "seconds": sec,
            "all_seconds": ts,
            "cells_per_s": args.n_cells / sec,
            "gflops": gflops,
            "pct_of_peak": 100 * gflops / peak[key]["best_gflops"],
            "profile": grouped_profile(lambda p=p: embed(p)),
        }
    return {
        "model": str(model_dir),
        "shape": {k: getattr(cfg, k) for k in h.SHAPE_KEYS},
        "n_cells": args.n_cells,
        "mean_tokens": float(np.mean(lengths)),
        "gflop_per_cell": flops / args.n_cells / 1e9,
        "formula_vs_counter_16_cells": {"formula": formula_16, "counter": counted},
        "tokenize_s": tokenize_s,
        "peak": peak,
        "runs": rows,
        "threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------- training
def training_part(args) -> dict:
    import torch
    import train_step_speed as tss

    from scvi_scgpt.module import ObjectiveConfig, SCGPTModule
    from scvi_scgpt.module._config import ArchitectureConfig
    from scvi_scgpt.train import make_optimizer

    n_tokens, pad_id, cls_id = tss.census_ids()
    shape = tss.SHAPES["small"]
    out = {"shape": shape}
    peak = matmul_peak([(9608, 256, 768), (9608, 256, 256), (2048, 2048, 2048)])
    out["peak"] = peak
    for name, spec in tss.CASES.items():
        batch = tss.make_batch(spec, n_tokens, pad_id, cls_id, seed=args.seed)
        tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
        lengths = (~batch["padding_mask"]).sum(1)
        flops = step_flops(lengths, shape["d_model"], shape["d_hid"], shape["n_layers"])
        torch.manual_seed(args.seed)
        config = ArchitectureConfig(
            n_tokens=n_tokens, pad_id=pad_id, dropout=0.0, use_flash=False, **shape
        )
        module = SCGPTModule(config).train()
        objectives = ObjectiveConfig(gep=True, gepc=True, mask_ratio=tss.MASK_RATIO)
        params = [p for p in module.parameters() if p.requires_grad]
        opt = make_optimizer(params, "Adam", lr=1e-4)

        def step(
            precision,
            module=module,
            tensors=tensors,
            objectives=objectives,
            opt=opt,
            params=params,
        ):
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                _, _, loss = module(tensors, loss_kwargs={"objectives": objectives})
            loss.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()

        counted = counted_flops(lambda: step("32"))
        case = {"tokens": int(lengths.sum()), "gflop_per_step": flops / 1e9}
        case["formula_vs_counter"] = {"formula": flops, "counter": counted}
        times = {"32": [], "bf16": []}
        for p in times:
            step(p)
        for _ in range(args.steps):
            for p in times:
                t = time.perf_counter()
                step(p)
                times[p].append(time.perf_counter() - t)
        for p, ts in times.items():
            sec = statistics.median(ts)
            key = "fp32" if p == "32" else "bf16"
            gflops = flops / sec / 1e9
            case[key] = {
                "seconds": sec,
                "all_seconds": ts,
                "tokens_per_s": case["tokens"] / sec,
                "gflops": gflops,
                "pct_of_peak": 100 * gflops / peak[key]["best_gflops"],
                "profile": grouped_profile(lambda p=p: step(p)),
            }
        out[name] = case
    return out


# ----------------------------------------------------------------------------- report
def profile_table(named: dict) -> str:
    groups = [*GROUPS, "element-wise and other"]
    header = ["run", "profiled s", *groups]
    rows = []
    for label, prof in named.items():
        total = prof["total_s"]
        cells = [
            f"{prof['groups_s'][g]:.2f} ({100 * prof['groups_s'][g] / total:.0f}%)" for g in groups
        ]
        rows.append([label, f"{total:.2f}", *cells])
    return h.markdown_table(header, rows)


def render(res: dict) -> str:
    e, t = res["embedding"], res["training"]
    lines = [
        "## Roofline (issue #13)",
        "",
        f"Command: `{res['command']}`  ",
        f"{h.machine_line(res)} ({e['threads']} threads). Matmul FLOPs only (2 per "
        "multiply-add); the formulas are in the script's docstring.",
        "",
        "Measured matmul peak (best of the shapes listed, same process, just before the runs):",
        "",
    ]
    rows = []
    for label, peak in (("embedding", e["peak"]), ("training", t["peak"])):
        for dt in ("fp32", "bf16"):
            shapes = ", ".join(
                f"{'x'.join(map(str, r['shape']))}: {r['gflops']:.0f}" for r in peak[dt]["shapes"]
            )
            rows.append([label, dt, f"{peak[dt]['best_gflops']:.0f}", shapes])
    lines += [
        h.markdown_table(
            ["measured before", "dtype", "peak GFLOP/s", "per shape (m x k x n)"], rows
        )
    ]
    fc = e["formula_vs_counter_16_cells"]
    lines += [
        "",
        f"**Embedding**, whole-human shape, {e['n_cells']} pbmc68k cells, "
        f"{e['mean_tokens']:.0f} tokens per cell: {e['gflop_per_cell']:.2f} GFLOP per cell "
        f"(formula; FlopCounterMode on 16 cells: {fc['counter'] / 1e9:.1f} vs formula "
        f"{fc['formula'] / 1e9:.1f} GFLOP). Tokenization alone: {e['tokenize_s']:.3f} s for "
        f"the {e['n_cells']} cells.",
        "",
    ]
    rows = []
    for dt in ("fp32", "bf16"):
        r = e["runs"][dt]
        rows.append(
            [
                dt,
                f"{r['seconds']:.2f}",
                f"{r['cells_per_s']:.1f}",
                f"{r['gflops']:.0f}",
                f"{r['pct_of_peak']:.0f}%",
                f"{e['peak'][dt]['best_gflops'] / e['gflop_per_cell']:.1f}",
            ]
        )
    lines.append(
        h.markdown_table(
            ["precision", "s (median)", "cells/s", "GFLOP/s", "% of peak", "ceiling cells/s"],
            rows,
        )
    )
    lines += [
        "",
        "**Training step** (`train_step_speed` cases, d_model 256, 4 layers, "
        "GEP + GEPC, fused Adam, dropout 0; bf16 = autocast):",
        "",
    ]
    rows = []
    for name in ("integration", "annotation"):
        c = t[name]
        for dt in ("fp32", "bf16"):
            r = c[dt]
            rows.append(
                [
                    name,
                    dt,
                    f"{c['tokens']:,}",
                    f"{c['gflop_per_step']:.0f}",
                    f"{r['seconds']:.3f}",
                    f"{r['tokens_per_s']:,.0f}",
                    f"{r['gflops']:.0f}",
                    f"{r['pct_of_peak']:.0f}%",
                ]
            )
    lines.append(
        h.markdown_table(
            [
                "case",
                "precision",
                "tokens",
                "GFLOP/step",
                "s/step",
                "tokens/s",
                "GFLOP/s",
                "% of peak",
            ],
            rows,
        )
    )
    fc = t["integration"]["formula_vs_counter"]
    lines += [
        "",
        f"FLOP check (integration step, fp32): FlopCounterMode {fc['counter'] / 1e9:.0f} vs "
        f"formula {fc['formula'] / 1e9:.0f} GFLOP.",
        "",
        "Where the time goes (torch.profiler, self CPU seconds; `aten::bmm` is counted as "
        "attention, `copy_` includes the bias broadcast of `addmm`):",
        "",
    ]
    named = {f"embedding {dt}": e["runs"][dt]["profile"] for dt in ("fp32", "bf16")}
    for name in ("integration", "annotation"):
        for dt in ("fp32", "bf16"):
            named[f"{name} step {dt}"] = t[name][dt]["profile"]
    lines.append(profile_table(named))
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = h.parser(__doc__, "roofline", results_md=True)
    h.add_options(
        p,
        n_cells=(256, "pbmc68k cells to embed"),
        rounds=(3, "alternating fp32/bf16 embedding rounds"),
        steps=(4, "alternating fp32/bf16 timed training steps per case"),
    )
    h.add_python_args(p)
    args = h.parse(p, argv, quick=QUICK)
    parts = {"embedding": embedding_part, "training": training_part}
    h.report(args, h.run_parts(args, parts, log), render, SECTION)


if __name__ == "__main__":
    main()
