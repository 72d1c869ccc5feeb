"""Generative-pretraining throughput: two-SDPA generative attention vs one dense-mask SDPA.

    flock /tmp/scvi_scgpt_cpu.lock .venv/bin/python benchmarks/pretrain_throughput.py
    # share of a step spent in attention (torch.profiler), 1 timed step per run:
    flock /tmp/scvi_scgpt_cpu.lock .venv/bin/python benchmarks/pretrain_throughput.py \\
        --steps 1 --pairs 0 --profile 1 --out benchmarks/output/pretrain/profile
    # on a GPU (not measured here): whole-human shape in bf16
    .venv/bin/python benchmarks/pretrain_throughput.py --device cuda --precision bf16 \\
        --d-model 512 --n-layers 12 --n-heads 8 --d-hid 512 --batch-size 32

The scGPT generative attention: known tokens (``<cls>`` + genes with values) attend to all
known tokens; each generated token (gene + flag, no value) attends to the known tokens and to
itself only. Two implementations of *the same math*:

- ``two_sdpa`` (the library's ``SelfAttention.generative_forward``): one SDPA call for the
  known queries against the known keys (padding mask only), one for the generated queries
  against ``[known keys, generated keys]`` with a ``(B, 1, Lg, Lk + Lg)`` mask;
- ``dense``: the reference formulation, written here as a replacement of
  ``SelfAttention.generative_forward``: the sequence ``[known, generated]`` of length
  ``L = Lk + Lg``, a dense ``(B, 1, L, L)`` boolean mask, and a single SDPA call.

Before timing, the two are checked to give the same outputs and gradients (attention stack,
and the full pretraining loss of ``SCGPTModule`` with its parameter gradients).

One training step = what ``SCGPT.train("pretrain")`` does per minibatch, without Lightning:
``SCGPTModule(tensors, loss_kwargs={"objectives": pretrain objectives})`` (generated-gene
MSE + GEPC + the cell-prompt second pass), ``backward``, ``clip_grad_norm_(1.0)``, Adam step.
The minibatches are built by the library's ``GenerativeCollator`` from synthetic counts with
~1,150-1,400 expressed genes per cell, tokenized to ``max_seq_len`` (1,200 tokens with
``<cls>``) and split into known / generated genes at a fixed generated fraction; the same
batches (seeded) for both variants. Each (variant, fraction) runs in its own subprocess, so
the peak resident memory (``ru_maxrss``; on CUDA ``max_memory_allocated``) is its own.

Writes ``throughput_<device>_<precision>.json`` in ``--out`` (default
``benchmarks/output/pretrain/``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _harness as h
import _measure as m

#: d_model 256, 4 layers, 8 heads, d_hid 512; no dropout: attention dropout makes CPU SDPA
#: use its math kernel
SHAPE = {"d_model": 256, "n_layers": 4, "n_heads": 8, "d_hid": 512, "dropout": 0.0}
QUICK = {
    "ratios": [0.5],
    "steps": 1,
    "pairs": 1,
    "n_batches": 1,
    "seq_len": 256,
    "min_expressed": 200,
    "max_expressed": 300,
}
WORKER_ARGS = (
    "device",
    "precision",
    "d_model",
    "n_layers",
    "n_heads",
    "d_hid",
    "dropout",
    "n_tokens",
    "batch_size",
    "seq_len",
    "min_expressed",
    "max_expressed",
    "n_batches",
    "warmup",
    "steps",
    "pairs",
    "threads",
    "profile",
    "seed",
)


# ----------------------------------------------------------------------------- dense variant
def dense_generative_forward(
    self, known, generated, known_padding_mask=None, *, project_generated=False
):
    """``SelfAttention.generative_forward`` as ONE SDPA over ``[known, generated]``.

    Mask ``(B, 1, L, L)``, ``True`` = may attend: every query sees the non-padded known keys;
    a generated query also sees its own key (the diagonal of the generated block).
    """
    import torch
    import torch.nn.functional as F

    dropout = self.dropout if self.training else 0.0
    batch, n_known = known.shape[:2]
    n_gen = generated.shape[1]
    n = n_known + n_gen
    x = torch.cat([known, generated], dim=1)
    q, k, v = self.project_qkv(x).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, L, Dh)
    allowed_known = (
        torch.ones(batch, n_known, dtype=torch.bool, device=x.device)
        if known_padding_mask is None
        else ~known_padding_mask
    )
    mask = torch.zeros(batch, n, n, dtype=torch.bool, device=x.device)
    mask[:, :, :n_known] = allowed_known[:, None, :]
    diag = torch.arange(n_known, n, device=x.device)
    mask[:, diag, diag] = True
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], dropout_p=dropout)
    out = out.transpose(1, 2).flatten(2)
    out_k = self.out_proj(out[:, :n_known])
    out_g = out[:, n_known:]
    if project_generated:
        out_g = self.out_proj(out_g)
    return out_k, out_g


def use_variant(variant: str) -> None:
    """Install the attention variant (``two_sdpa``: the library's; ``dense``: the above)."""
    from scvi_scgpt.nn import SelfAttention

    if not hasattr(SelfAttention, "_library_generative_forward"):
        SelfAttention._library_generative_forward = SelfAttention.generative_forward
    if variant == "two_sdpa":
        SelfAttention.generative_forward = SelfAttention._library_generative_forward
    elif variant == "dense":
        SelfAttention.generative_forward = dense_generative_forward
    else:
        raise ValueError(variant)


# ----------------------------------------------------------------------------- batches
def make_batches(args, ratio: float, n_batches: int, seed: int = 0):
    """Seeded generative minibatches from synthetic counts (library collator)."""
    import numpy as np
    import scipy.sparse as sp
    import torch

    from scvi_scgpt.data import TokenizerConfig
    from scvi_scgpt.dataloaders import GenerativeCollator

    rng = np.random.default_rng(seed)
    n_genes = 4000
    n_tokens = args.n_tokens
    pad_id, cls_id = n_tokens - 3, n_tokens - 2
    column_ids = np.sort(rng.choice(n_tokens - 3, n_genes, replace=False))
    rows = []
    for _ in range(args.batch_size * n_batches):
        n_expr = int(rng.integers(args.min_expressed, args.max_expressed + 1))
        genes = np.sort(rng.choice(n_genes, n_expr, replace=False))
        counts = rng.negative_binomial(2, 0.3, n_expr) + 1.0
        rows.append(sp.csr_matrix((counts, (np.zeros(n_expr, int), genes)), shape=(1, n_genes)))
    x = sp.vstack(rows).tocsr().astype(np.float32)
    collate = GenerativeCollator(
        column_ids,
        TokenizerConfig(max_seq_len=args.seq_len),
        cls_id=cls_id,
        pad_id=pad_id,
        gen_ratios=(ratio,),
    )
    torch.manual_seed(seed)
    b = args.batch_size
    return [collate({"X": x[i * b : (i + 1) * b]}) for i in range(n_batches)], pad_id


def build_module(args, pad_id: int, seed: int = 0):
    import torch

    from scvi_scgpt.module import ArchitectureConfig, SCGPTModule

    torch.manual_seed(seed)
    config = ArchitectureConfig(
        n_tokens=args.n_tokens,
        pad_id=pad_id,
        d_model=args.d_model,
        n_heads=args.n_heads,
        d_hid=args.d_hid,
        n_layers=args.n_layers,
        dropout=args.dropout,
        do_mvc=True,
        use_generative_flag=True,
    )
    return SCGPTModule(config)


def pretrain_objectives():
    from scvi_scgpt.train import PRESETS

    return PRESETS["pretrain"].objectives


# ----------------------------------------------------------------------------- equality
def check_equal(args) -> dict:
    """Two-SDPA and dense variants: same attention outputs, loss and gradients."""
    import torch

    from scvi_scgpt.nn import TransformerEncoder

    torch.set_num_threads(args.threads)
    report = {}
    # 1) the attention stack, with padding, both project_generated settings, + input grads
    torch.manual_seed(0)
    enc = TransformerEncoder(
        2, d_model=args.d_model, n_heads=args.n_heads, d_hid=args.d_hid, dropout=0.0
    ).eval()
    b, n_known, n_gen = 3, 37, 29
    known0 = torch.randn(b, n_known, args.d_model)
    gen0 = torch.randn(b, n_gen, args.d_model)
    pad = torch.zeros(b, n_known, dtype=torch.bool)
    pad[1, 20:] = True
    pad[2, 31:] = True
    # a random linear read-out (a sum of squares of LayerNorm outputs would be ~constant)
    w_known = torch.randn(b, n_known, args.d_model)
    w_gen = torch.randn(b, n_gen, args.d_model)
    for project in (False, True):
        outs = {}
        for variant in ("two_sdpa", "dense"):
            use_variant(variant)
            known = known0.clone().requires_grad_(True)
            gen = gen0.clone().requires_grad_(True)
            enc.zero_grad()
            out_k, out_g = enc.generative_forward(known, gen, pad, project_generated=project)
            keep = ~pad
            ((out_k * w_known)[keep].sum() + (out_g * w_gen).sum()).backward()
            outs[variant] = (
                out_k[keep].detach(),
                out_g.detach(),
                known.grad[keep],
                gen.grad,
                torch.cat([p.grad.ravel() for p in enc.parameters()]),
            )
        diffs = [
            float((a - c).abs().max() / c.abs().max().clamp_min(1e-12))
            for a, c in zip(outs["two_sdpa"], outs["dense"])
        ]
        report[f"encoder_project_generated={project}_max_rel_diff"] = max(diffs)
    # 2) the full pretraining loss and every parameter gradient, on a real collated batch
    small = argparse.Namespace(
        **{
            **vars(args),
            "batch_size": 4,
            "seq_len": 160,
            "min_expressed": 100,
            "max_expressed": 220,
        }
    )
    batches, pad_id = make_batches(small, 0.5, 1, seed=1)
    batch = batches[0]
    res = {}
    for variant in ("two_sdpa", "dense"):
        use_variant(variant)
        module = build_module(small, pad_id)
        module.train()
        _, _, out = module(batch, loss_kwargs={"objectives": pretrain_objectives()})
        out.loss.backward()
        res[variant] = (
            float(out.loss),
            torch.cat([p.grad.ravel() for p in module.parameters() if p.grad is not None]),
        )
    use_variant("two_sdpa")
    ga, gd = res["two_sdpa"][1], res["dense"][1]
    report["module_loss_two_sdpa"] = res["two_sdpa"][0]
    report["module_loss_dense"] = res["dense"][0]
    report["module_loss_rel_diff"] = abs(res["two_sdpa"][0] - res["dense"][0]) / abs(
        res["dense"][0]
    )
    report["module_grad_max_rel_diff"] = float((ga - gd).abs().max() / gd.abs().max())
    ok = all(v < 1e-4 for k, v in report.items() if "diff" in k)
    report["equal"] = bool(ok)
    if not ok:
        raise AssertionError(f"variants differ: {report}")
    return report


# ----------------------------------------------------------------------------- worker
def _setup(args):
    """Device, batches (moved), their shapes, autocast context and a sync function."""
    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batches, pad_id = make_batches(args, args.ratio, args.n_batches, seed=args.seed)
    shapes = [
        {
            "known_len": int(b["gene_ids"].shape[1]),
            "generated_len": int(b["gen_gene_ids"].shape[1]),
            "known_tokens": int((~b["padding_mask"]).sum()),
            "generated_tokens": int((~b["gen_padding_mask"]).sum()),
        }
        for b in batches
    ]
    batches = [
        {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}
        for b in batches
    ]
    if args.precision == "bf16":
        autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    else:
        autocast = torch.autocast(device.type, enabled=False)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    return device, batches, pad_id, shapes, autocast, sync


def _step(module, opt, batch, objectives, autocast, sync) -> tuple[float, float, float]:
    """One pretraining step; returns (wall seconds, process CPU seconds, loss)."""
    import torch

    sync()
    t, c = time.perf_counter(), time.process_time()
    opt.zero_grad(set_to_none=True)
    with autocast:
        _, _, out = module(batch, loss_kwargs={"objectives": objectives})
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
    opt.step()
    sync()
    return time.perf_counter() - t, time.process_time() - c, float(out.loss)


def _profile_step(module, opt, batch, objectives, autocast, sync, device) -> dict:
    """Share of one step's self time spent in attention (SDPA) kernels, by profiler."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        _step(module, opt, batch, objectives, autocast, sync)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total = attention = 0.0
    per_op = {}
    for event in prof.key_averages():
        t = float(getattr(event, attr, 0.0))
        total += t
        if "attention" in event.key or "sdpa" in event.key or "softmax" in event.key:
            attention += t
            per_op[event.key] = t / 1e6
    return {
        "total_s": total / 1e6,
        "attention_s": attention / 1e6,
        "attention_share": attention / total if total else float("nan"),
        "attention_ops_s": per_op,
    }


def worker(args) -> dict:
    """One variant in this process: step times and peak memory."""
    import torch

    device, batches, pad_id, shapes, autocast, sync = _setup(args)
    use_variant(args.variant)
    module = build_module(args, pad_id, args.seed).to(device)
    module.train()
    opt = torch.optim.Adam(module.parameters(), lr=1e-4, eps=1e-8)
    objectives = pretrain_objectives()
    setup_rss = m.current_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        setup_cuda = torch.cuda.memory_allocated() / 2**20
    times, cpu_times, losses = [], [], []
    load_before = os.getloadavg()
    for i in range(args.warmup + args.steps):
        wall, cpu, loss = _step(module, opt, batches[i % len(batches)], objectives, autocast, sync)
        if i >= args.warmup:
            times.append(wall)
            cpu_times.append(cpu)
            losses.append(loss)
    peak_rss = m.rusage_peaks_mb()["peak_rss_self_mb"]
    if args.profile:
        times_profile = _profile_step(module, opt, batches[0], objectives, autocast, sync, device)
    result = {
        "variant": args.variant,
        "ratio": args.ratio,
        "device": str(device),
        "precision": args.precision,
        "step_seconds": times,
        "step_cpu_seconds": cpu_times,
        "median_step_seconds": statistics.median(times),
        "min_step_seconds": min(times),
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "cells_per_second": args.batch_size * len(times) / sum(times),
        "losses": losses,
        "batch_shapes": shapes,
        "parameters": int(sum(p.numel() for p in module.parameters())),
        "setup_rss_mb": setup_rss,
        "peak_rss_mb": peak_rss,
    }
    if args.profile:
        result["profile"] = times_profile
    if device.type == "cuda":
        result["cuda_setup_allocated_mb"] = setup_cuda
        result["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["gpu"] = torch.cuda.get_device_name(device)
    return result


def paired_worker(args) -> dict:
    """Both variants in one process, steps alternated (AB BA AB ...).

    Two identical modules (same seed) with their own Adam; each pair of steps sees the same
    batch and the same machine load, so the per-pair time ratio is robust on a shared
    machine. The two loss trajectories must agree (same math).
    """
    import torch

    device, batches, pad_id, shapes, autocast, sync = _setup(args)
    objectives = pretrain_objectives()
    modules, opts = {}, {}
    for variant in ("two_sdpa", "dense"):
        modules[variant] = build_module(args, pad_id, args.seed).to(device).train()
        opts[variant] = torch.optim.Adam(modules[variant].parameters(), lr=1e-4, eps=1e-8)
    times = {"two_sdpa": [], "dense": []}
    losses = {"two_sdpa": [], "dense": []}
    load_before = os.getloadavg()
    for i in range(args.warmup + args.pairs):
        order = ("two_sdpa", "dense") if i % 2 == 0 else ("dense", "two_sdpa")
        for variant in order:
            use_variant(variant)
            wall, _, loss = _step(
                modules[variant],
                opts[variant],
                batches[i % len(batches)],
                objectives,
                autocast,
                sync,
            )
            losses[variant].append(loss)
            if i >= args.warmup:
                times[variant].append(wall)
    use_variant("two_sdpa")
    ratios = [d / a for a, d in zip(times["two_sdpa"], times["dense"])]
    loss_diff = max(abs(a - d) / abs(d) for a, d in zip(losses["two_sdpa"], losses["dense"]))
    return {
        "ratio": args.ratio,
        "device": str(device),
        "precision": args.precision,
        "step_seconds": times,
        "losses": losses,
        "max_rel_loss_diff_over_steps": loss_diff,
        "speedup_per_pair": ratios,
        "speedup_median": statistics.median(ratios),
        "cells_per_second_median": {
            v: args.batch_size / statistics.median(t) for v, t in times.items()
        },
        "load_average_before_after": [load_before[0], os.getloadavg()[0]],
        "batch_shapes": shapes,
    }


# ----------------------------------------------------------------------------- main


def main() -> None:
    p = h.parser(
        __doc__,
        "pretrain",
        quick_help="one generated fraction, short sequences, 1 warm-up + 1 timed step, 1 pair",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=("32", "bf16"), default="32")
    h.add_shape_args(p, SHAPE)
    h.add_options(
        p,
        n_tokens=h.CENSUS_TOKENS,
        batch_size=8,
        seq_len=(1200, "max_seq_len incl. <cls>"),
        min_expressed=1150,
        max_expressed=1400,
    )
    p.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    p.add_argument("--variants", nargs="+", default=["two_sdpa", "dense"])
    h.add_options(
        p,
        n_batches=3,
        warmup=1,
        steps=3,
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="separate subprocesses per (fraction, variant), alternated A B A B",
    )
    p.add_argument(
        "--pairs",
        type=int,
        default=4,
        help="timed step pairs of the paired (both variants in one process) run; 0: none",
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        help="1: profile one extra step per own-process run (attention share of the time)",
    )
    # internal
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    p.add_argument("--ratio", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = h.parse(p, quick=QUICK)
    args.threads = args.threads or h.usable_cores()
    h.setup_logging("pretrain_throughput")

    if args.worker:
        run = paired_worker if args.variant == "paired" else worker
        h.write_json(args.result, run(args))
        return

    t0 = time.perf_counter()
    out = args.out / f"throughput_{args.device.split(':')[0]}_{args.precision}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    equality = check_equal(args)
    print(f"equality check: {json.dumps(equality)}", flush=True)
    runs = []
    paired = []

    def launch(variant: str, ratio: float) -> dict:
        res_path = out.with_name(f".{out.stem}_{variant}_{ratio}.json")
        cmd = [sys.executable, __file__, "--worker", "--variant", variant]
        cmd += ["--ratio", str(ratio), "--result", str(res_path)]
        for key in WORKER_ARGS:
            cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
        env = {**h.worker_env("ours"), "PYTHONWARNINGS": "ignore"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"worker {variant} {ratio} failed")
        res = h.read_json(res_path)
        res_path.unlink()
        return res

    for ratio in args.ratios:
        for rep, variant in [(r, v) for r in range(args.repeats) for v in args.variants]:
            res = launch(variant, ratio)
            res["repeat"] = rep
            runs.append(res)
            cuda = res.get("cuda_peak_allocated_mb")
            print(
                f"ratio {ratio} {variant:8s} #{rep}: {res['cells_per_second']:.2f} cells/s, "
                f"steps {[round(x, 2) for x in res['step_seconds']]} s, load "
                f"{[round(x, 1) for x in res['load_average_before_after']]}, peak RSS "
                f"{res['peak_rss_mb']:.0f} MiB (setup {res['setup_rss_mb']:.0f})"
                + (f", CUDA peak {cuda:.0f} MiB" if cuda is not None else "")
                + (
                    f", attention {100 * res['profile']['attention_share']:.0f}% of a "
                    "profiled step"
                    if "profile" in res
                    else ""
                ),
                flush=True,
            )
        if args.pairs > 0:
            res = launch("paired", ratio)
            paired.append(res)
            print(
                f"ratio {ratio} paired: two-SDPA / dense speed-up per pair "
                f"{[round(x, 2) for x in res['speedup_per_pair']]}, median "
                f"{res['speedup_median']:.2f}x; loss trajectories differ by at most "
                f"{res['max_rel_loss_diff_over_steps']:.1e} (relative)",
                flush=True,
            )
    report = {
        "equality": equality,
        "runs": runs,
        "paired": paired,
        "seconds": time.perf_counter() - t0,
    }
    report["summary"] = summarize(report, args.batch_size)
    h.write_results(args, report, out.name, indent=1)
    print(table(report))
    print(f"total {report['seconds']:.0f} s -> {out}")


def summarize(report: dict, bs: int) -> list[dict]:
    """Per (fraction, variant): all timed steps of all repeats pooled (batch size ``bs``)."""
    rows = []
    keys = sorted({(r["ratio"], r["variant"]) for r in report["runs"]})
    for ratio, variant in keys:
        rs = [r for r in report["runs"] if r["ratio"] == ratio and r["variant"] == variant]
        wall = [t for r in rs for t in r["step_seconds"]]
        cpu = [t for r in rs for t in r["step_cpu_seconds"]]
        row = {
            "ratio": ratio,
            "variant": variant,
            "steps": len(wall),
            "cells_per_s_median": bs / statistics.median(wall),
            "cells_per_s_best": bs / min(wall),
            "cpu_s_per_step_median": statistics.median(cpu),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            "setup_rss_mb": max(r["setup_rss_mb"] for r in rs),
            "known_tokens_per_cell": statistics.mean(
                s["known_tokens"] for s in rs[0]["batch_shapes"]
            )
            / bs,
            "generated_tokens_per_cell": statistics.mean(
                s["generated_tokens"] for s in rs[0]["batch_shapes"]
            )
            / bs,
        }
        if "cuda_peak_allocated_mb" in rs[0]:
            row["cuda_peak_allocated_mb"] = max(r["cuda_peak_allocated_mb"] for r in rs)
        rows.append(row)
    return rows


def table(report: dict) -> str:
    """Markdown: separate-process runs (speed, memory) and the paired speed-up."""
    rows = {(r["ratio"], r["variant"]): r for r in report["summary"]}
    paired = {r["ratio"]: r for r in report.get("paired", [])}
    cuda = any("cuda_peak_allocated_mb" in r for r in report["summary"])
    mem_key = "cuda_peak_allocated_mb" if cuda else "peak_rss_mb"
    mem_name = "CUDA peak alloc." if cuda else "peak RSS"
    lines = [
        "| gen. fraction | known / generated tokens per cell | variant "
        "| cells/s, own process (median step) | cells/s, paired run (median step) "
        f"| {mem_name} (MiB) | paired speed-up two-SDPA vs dense (median of pairs) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for ratio in sorted({r["ratio"] for r in report["summary"]}):
        pr = paired.get(ratio)
        for variant in ("two_sdpa", "dense"):
            r = rows.get((ratio, variant))
            if r is None:
                continue
            in_pair = f"{pr['cells_per_second_median'][variant]:.3f}" if pr else "-"
            speed = ""
            if pr and variant == "two_sdpa":
                lo, hi = min(pr["speedup_per_pair"]), max(pr["speedup_per_pair"])
                speed = f"**{pr['speedup_median']:.2f}x** ({lo:.2f}-{hi:.2f})"
            lines.append(
                f"| {ratio} | {r['known_tokens_per_cell']:.0f} / "
                f"{r['generated_tokens_per_cell']:.0f} | {variant} | "
                f"{r['cells_per_s_median']:.3f} | {in_pair} | {r[mem_key]:.0f} | {speed} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
