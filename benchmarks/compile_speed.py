"""``torch.compile`` (opt-in) on a CPU: compilation time and steady speed beside eager.

    flock /tmp/scvi_scgpt_cpu.lock .venv/bin/python benchmarks/compile_speed.py
    .venv/bin/python benchmarks/compile_speed.py --quick      # smoke run, RESULTS.md untouched

``compile=True`` compiles each transformer layer's residual / LayerNorm / feed-forward block
(``nn/_compile.CompiledLayers``); attention stays eager. Two parts, each variant on the same
model, alternating in one process:

- **Embedding**: whole-human shape (d_model 512, 12 layers, random weights, census
  vocabulary) on ``--n-cells`` pbmc68k cells, ``get_latent_representation(precision=...,
  compile=...)``, fp32 and bf16. The first compiled call includes the compilation; the
  steady figure is the median of ``--rounds`` later calls.
- **Training step**: the ``train_step_speed`` integration case (d_model 256, 4 layers,
  8 x 1,201 tokens, GEP + GEPC, fused Adam, dropout 0), fp32 and bf16 autocast, eager vs
  the training plan's compiled layers; the first step includes the compilation, the steady
  figure is the median of ``--steps`` later steps.

Inductor's on-disk caches are disabled (``TORCHINDUCTOR_FORCE_DISABLE_CACHES=1``), so the
first call pays a cold compilation, as on a new machine.

Writes ``benchmarks/output/compile_speed/results.json`` and (full runs) the marked
"torch.compile" section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import os
import statistics
import time

import _harness as h

# a cold compilation every run: inductor's on-disk caches would hide the compile time
os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")
SECTION = "compile_speed"
QUICK = {"n_cells": 32, "rounds": 1, "steps": 1}
log = h.setup_logging("compile_speed", quiet=False)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def measure(variants: dict, repeats: int) -> dict:
    """First call and median of ``repeats`` later calls of each variant, alternating."""
    first = {name: timed(fn) for name, fn in variants.items()}
    later = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            later[name].append(timed(fn))
    return {
        name: {"first_s": first[name], "steady_s": statistics.median(ts), "all_s": ts}
        for name, ts in later.items()
    }


def embedding_part(args) -> dict:
    import embed_throughput as et

    import scvi_scgpt as s
    from scvi_scgpt.datasets import pbmc68k_700

    model_dir = et.make_model("whole-human", args.out / "models", args.ours_python, 0)
    adata = pbmc68k_700()[: args.n_cells].copy()
    s.SCGPT.setup_anndata(adata)
    model = s.SCGPT.from_pretrained(model_dir, adata, max_seq_len=1200)

    def embed(precision, compiled):
        return lambda: model.get_latent_representation(
            adata, batch_size=64, precision=precision, compile=compiled, progress_bar=False
        )

    variants = {
        f"{tag}, {'compiled' if c else 'eager'}": embed(p, c)
        for p, tag in (("32", "fp32"), ("bf16", "bf16"))
        for c in (False, True)
    }
    rows = measure(variants, args.rounds)
    for row in rows.values():
        row["cells_per_s"] = args.n_cells / row["steady_s"]
    return {"n_cells": args.n_cells, "rows": rows}


def training_part(args) -> dict:
    import torch
    import train_step_speed as tss

    from scvi_scgpt.module import ObjectiveConfig, SCGPTModule
    from scvi_scgpt.module._config import ArchitectureConfig
    from scvi_scgpt.nn._compile import CompiledLayers
    from scvi_scgpt.train import make_optimizer

    n_tokens, pad_id, cls_id = tss.census_ids()
    spec = tss.CASES["integration"]
    batch = tss.make_batch(spec, n_tokens, pad_id, cls_id, seed=args.seed)
    tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
    objectives = ObjectiveConfig(gep=True, gepc=True, mask_ratio=tss.MASK_RATIO)
    config = ArchitectureConfig(
        n_tokens=n_tokens, pad_id=pad_id, dropout=0.0, use_flash=False, **tss.SHAPES["small"]
    )

    def make_step(precision, compiled):
        torch.manual_seed(args.seed)
        module = SCGPTModule(config).train()
        opt = make_optimizer(module.parameters(), "Adam", lr=1e-4)
        layers = CompiledLayers(module.transformer_encoder) if compiled else None

        def step():
            if layers is not None:
                layers.__enter__()
            try:
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    _, _, loss = module(tensors, loss_kwargs={"objectives": objectives})
                loss.loss.backward()
                torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
                opt.step()
            finally:
                if layers is not None:
                    layers.__exit__(None, None, None)

        return step

    variants = {
        f"{tag}, {'compiled' if c else 'eager'}": make_step(p, c)
        for p, tag in (("32", "fp32"), ("bf16", "bf16"))
        for c in (False, True)
    }
    rows = measure(variants, args.steps)
    tokens = int((~batch["padding_mask"]).sum())
    for row in rows.values():
        row["tokens_per_s"] = tokens / row["steady_s"]
    return {"tokens": tokens, "rows": rows}


def render(res: dict) -> str:
    lines = [
        "## torch.compile (issue #13)",
        "",
        f"Command: `{res['command']}`  ",
        f"{h.machine_line(res)}. `compile=True` compiles each layer's residual / "
        "LayerNorm / feed-forward block (attention stays eager); first = the first call "
        "(a cold compilation included: inductor's caches off), steady = median of the later "
        "calls, alternating in one process.",
        "",
    ]
    for part, unit, scale in (
        ("embedding", "cells/s", "cells_per_s"),
        ("training", "tokens/s", "tokens_per_s"),
    ):
        rows = res[part]["rows"]
        table = []
        for name, r in rows.items():
            eager = rows[name.replace("compiled", "eager")]
            table.append(
                [
                    name,
                    f"{r['first_s']:.1f}",
                    f"{r['steady_s']:.2f}",
                    f"{r[scale]:,.1f}",
                    f"{eager['steady_s'] / r['steady_s']:.2f}x",
                    f"{max(r['first_s'] - r['steady_s'], 0):.1f}" if "compiled" in name else "—",
                ]
            )
        what = (
            f"{res['embedding']['n_cells']} pbmc68k cells, whole-human shape"
            if part == "embedding"
            else f"one step of the integration case ({res['training']['tokens']:,} tokens, "
            "d_model 256, 4 layers)"
        )
        lines += [
            f"**{part.capitalize()}**, {what}:",
            "",
            h.markdown_table(
                [
                    "variant",
                    "first s",
                    "steady s",
                    unit,
                    "steady vs eager",
                    "compilation s (first - steady)",
                ],
                table,
            ),
            "",
        ]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = h.parser(__doc__, "compile_speed", results_md=True)
    h.add_options(
        p,
        n_cells=(128, "pbmc68k cells to embed"),
        rounds=(3, "embedding calls after the first, per variant"),
        steps=(4, "training steps after the first, per variant"),
    )
    h.add_python_args(p)
    args = h.parse(p, argv, quick=QUICK)
    parts = {"embedding": embedding_part, "training": training_part}
    h.report(args, h.run_parts(args, parts, log), render, SECTION)


if __name__ == "__main__":
    main()
