"""Peak memory of a generative-pretraining step vs sequence length, per attention kernel.

    flock /tmp/scvi_scgpt_cpu.lock .venv/bin/python benchmarks/pretrain_memory.py
    .venv/bin/python benchmarks/pretrain_memory.py --quick      # smoke run

One pretraining step as ``SCGPT.train("pretrain")`` runs it (generated-gene MSE + GEPC +
the cell-prompt second pass, backward, clipping, Adam) on the pretraining-evidence model:
d_model 64, 2 layers, 4 heads, d_hid 128, dropout 0.1, the census vocabulary, batch 32,
half of each cell's genes generated (the library's ``GenerativeCollator`` on synthetic
counts with more expressed genes than ``max_seq_len``, so every cell has ``max_seq_len``
tokens). Each configuration runs in its own subprocess: peak RSS is its ``ru_maxrss``,
"added" the growth over the RSS after building the model and the batch.

Configurations:

- ``before``: attention dropout 0.1 (``ArchitectureConfig``'s default, ``attention_dropout``
  = ``dropout``) through ``scaled_dot_product_attention`` (``CPU_DROPOUT_KERNEL = "sdpa"``),
  which on a CPU falls back to its math kernel with dropout, and attends the generated
  tokens over ``[known, generated]`` keys with an ``(Lg, Lk + Lg)`` mask (the library before
  issue #13);
- ``after``: the same model as the library runs it now on a CPU: the known tokens through
  the chunked attention with recompute (``nn/_chunked_attention.chunked_attention``), the
  generated tokens through the own-key kernel (``generated_attention``: known keys plus
  each token's own key, no ``(Lg, Lg)`` block);
- ``no attention dropout (before)``: ``attention_dropout=0`` through SDPA (fused flash
  kernel for the known tokens, the masked ``[known, generated]`` attention for the rest);
- ``no attention dropout (after)``: ``attention_dropout=0`` as the library runs it now (SDPA
  flash for the known tokens, the own-key kernel for the generated ones).

Writes ``benchmarks/output/pretrain_memory/results.json`` and (full runs) the marked
"Pretraining memory" section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _harness as h
import _measure as m

SECTION = "pretrain_memory"
CONFIGS = {
    "before": {"attention_dropout": 0.1, "kernel": "sdpa"},
    "after": {"attention_dropout": 0.1, "kernel": "chunked"},
    "no attention dropout (before)": {"attention_dropout": 0.0, "kernel": "sdpa"},
    "no attention dropout (after)": {"attention_dropout": 0.0, "kernel": "chunked"},
}
QUICK = {"seq_lens": "128,256", "batch_size": 8, "steps": 1}
log = h.setup_logging("pretrain_memory", quiet=False)


def worker(args) -> dict:
    import torch
    from pretrain_throughput import make_batches

    import scvi_scgpt.nn._kernels as kernels
    from scvi_scgpt.module import ArchitectureConfig, SCGPTModule
    from scvi_scgpt.train import PRESETS, make_optimizer

    torch.set_num_threads(args.threads)
    config = CONFIGS[args.config]
    kernels.CPU_DROPOUT_KERNEL = config["kernel"]
    ns = argparse.Namespace(
        n_tokens=h.CENSUS_TOKENS,
        seq_len=args.seq_len,
        min_expressed=args.seq_len + 50,
        max_expressed=args.seq_len + 200,
        batch_size=args.batch_size,
    )
    batches, pad_id = make_batches(ns, 0.5, 1, seed=args.seed)
    batch = batches[0]
    torch.manual_seed(args.seed)
    module = SCGPTModule(
        ArchitectureConfig(
            n_tokens=h.CENSUS_TOKENS,
            pad_id=pad_id,
            **{k: h.D64_PRETRAIN[k] for k in (*h.SHAPE_KEYS, "dropout")},
            attention_dropout=config["attention_dropout"],
            do_mvc=True,
            use_generative_flag=True,
        )
    ).train()
    objectives = PRESETS["pretrain"].objectives
    opt = make_optimizer(module.parameters(), "Adam", lr=1e-4)
    baseline = m.current_rss_mb()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        _, _, out = module(batch, loss_kwargs={"objectives": objectives})
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "config": args.config,
        "seq_len": args.seq_len,
        "known_len": int(batch["gene_ids"].shape[1]),
        "generated_len": int(batch["gen_gene_ids"].shape[1]),
        "batch_size": args.batch_size,
        "baseline_rss_mib": baseline,
        "peak_rss_mib": peak,
        "added_rss_mib": peak - baseline,
        "step_s": statistics.median(times),
        "all_step_s": times,
        "loss": float(out.loss.detach()),
    }


def render(res: dict) -> str:
    lines = [
        "## Pretraining memory (issue #13)",
        "",
        f"Command: `{res['command']}`  ",
        f"Model: d_model 64, 2 layers, 4 heads, d_hid 128, dropout 0.1, census vocabulary; "
        f"batch {res['args']['batch_size']}, half of the genes generated; one process per "
        f"row, {res['args']['steps']} step(s). Peak RSS = `ru_maxrss`; added = peak minus the "
        "RSS after building the model and batch.",
        "",
    ]
    seq = sorted({r["seq_len"] for r in res["rows"]})
    header = ["configuration", *[f"L={s}: peak (added) MiB, s/step" for s in seq]]
    rows = []
    for name in CONFIGS:
        cells = [name]
        for s in seq:
            r = next((r for r in res["rows"] if r["config"] == name and r["seq_len"] == s), None)
            cells.append(
                "n/a"
                if r is None
                else f"{r['peak_rss_mib']:,.0f} ({r['added_rss_mib']:,.0f}), {r['step_s']:.2f}"
            )
        rows.append(cells)
    lines.append(h.markdown_table(header, rows))
    return "\n".join(lines) + "\n"


def main() -> None:
    p = h.parser(__doc__, "pretrain_memory", results_md=True)
    h.add_options(
        p,
        seq_lens=("256,512,800,1200", "max_seq_len values, <cls> included"),
        batch_size=32,
        steps=2,
    )
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", default=None, help=argparse.SUPPRESS)
    p.add_argument("--seq-len", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = h.parse(p, quick=QUICK)
    args.threads = args.threads or h.usable_cores()
    if args.worker:
        h.write_json(args.result, worker(args))
        return
    rows = []
    for seq_len in [int(s) for s in args.seq_lens.split(",")]:
        for name in args.configs.split(","):
            result = args.out / f"{name.replace(' ', '_')}_{seq_len}.json"
            cmd = [
                sys.executable,
                __file__,
                "--worker",
                "--config",
                name,
                "--seq-len",
                str(seq_len),
                "--batch-size",
                str(args.batch_size),
                "--steps",
                str(args.steps),
                "--threads",
                str(args.threads),
                "--seed",
                str(args.seed),
                "--result",
                str(result),
                "--out",
                str(args.out),
            ]
            subprocess.run(cmd, check=True, env=h.worker_env("ours"))
            row = h.read_json(result)
            log(
                f"{name} L={seq_len}: peak {row['peak_rss_mib']:,.0f} MiB "
                f"(+{row['added_rss_mib']:,.0f}), {row['step_s']:.2f} s/step"
            )
            rows.append(row)
    h.report(args, {"rows": rows}, render, SECTION)


if __name__ == "__main__":
    main()
