"""Training-step speed and peak memory: ours (``SCGPTModule``) vs official ``TransformerModel``.

Both sides compute the same function: the official model (``scgpt==0.2.4``) is built with a
fixed seed and its ``state_dict`` is loaded into our module (``read_state_dict`` +
``infer_architecture`` + ``load_into_module``). Both then train on the *same* token batch
(same gene ids, values, padding and masked positions) with the same step: forward, GEP +
GEPC loss (masked MSE of the expression and MVC heads at the masked positions, the official
tutorial loss), backward, gradient clipping at 1.0 and an Adam step (lr 1e-4; ours: the
fused Adam of ``SCGPTTrainingPlan``), float32,
dropout 0. Each side runs in its own subprocess (``benchmarks/_train_step_worker.py``): 2
warm-up steps, then ``--steps`` timed steps; reported are the median seconds per step, the
non-padding tokens per second and the peak RSS (``ru_maxrss``).

Cases (the vocabulary is the 60,697-token census vocabulary of the official models):

- ``integration``: the integration recipe's input, 1,200 genes with their zeros + ``<cls>``
  (1,201 tokens, no padding), batch 8;
- ``annotation``: expressed genes only, 200-1,200 per cell (+ ``<cls>``), padded to the
  longest, batch 16.

Model: d_model 256, 4 heads, d_hid 256, 4 layers (``--shape whole-human`` for 512/8/512/12).

Usage (from the repository root; serialise with other CPU benchmarks)::

    flock /tmp/scvi_scgpt_cpu.lock .venv/bin/python benchmarks/train_step_speed.py
    .venv/bin/python benchmarks/train_step_speed.py --quick      # smoke run, no RESULTS.md

Needs the official side's interpreter (``.official-venv``, ``scripts/official_env/setup.sh``).
Writes ``benchmarks/output/train_step_speed/results.json`` and (full runs) the marked
"Training-step speed (issue #3)" section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from pathlib import Path

import _harness as h
import numpy as np

SHAPES = {
    "small": {"d_model": 256, "n_heads": 4, "d_hid": 256, "n_layers": 4},
    "whole-human": h.WHOLE_HUMAN,
}
CASES = {
    "integration": {
        "batch_size": 8,
        "min_genes": 1200,
        "max_genes": 1200,
        "include_zeros": True,
        "description": "1,200 genes incl. zeros + <cls> = 1,201 tokens, no padding, batch 8",
    },
    "annotation": {
        "batch_size": 16,
        "min_genes": 200,
        "max_genes": 1200,
        "include_zeros": False,
        "description": "200-1,200 expressed genes + <cls>, padded to the longest, batch 16",
    },
}
N_BINS = 51
MASK_RATIO = 0.4
TARGET_SPEEDUP = 1.5
SECTION = "train_step_speed"
SECTION_TITLE = "## Training-step speed (issue #3)"
QUICK = {"warmup": 1, "steps": 2, "repeats": 1}
log = h.setup_logging("train_step_speed", quiet=False)


def census_ids() -> tuple[int, int, int]:
    """(vocabulary size, pad id, cls id) of the census vocabulary."""
    from scvi_scgpt.data import GeneVocab

    vocab = GeneVocab.census()
    return len(vocab), vocab.pad_id, vocab.cls_id


def make_batch(case: dict, n_tokens: int, pad_id: int, cls_id: int, seed: int) -> dict:
    """A random token batch shaped like the tokenizer's output (binned values, <cls> first).

    Values are bins: 0 for a non-expressed gene (about 70% of the 1,200 HVGs of the
    integration case), 1..50 for expressed genes. ``<cls>`` has value 0 (fine-tuning), padding
    id ``pad_id`` and value -2. ``MASK_RATIO`` of each cell's gene tokens get value -1 (the
    mask value; ``target_values`` keep the truth).
    """
    rng = np.random.default_rng(seed)
    n_genes_vocab = n_tokens - 3  # census: genes first, then <pad>, <cls>, <eoc>
    bsz = case["batch_size"]
    lengths = rng.integers(case["min_genes"], case["max_genes"] + 1, size=bsz)
    if case["include_zeros"]:
        shared = rng.choice(n_genes_vocab, size=case["max_genes"], replace=False)
    max_len = int(lengths.max()) + 1
    gene_ids = np.full((bsz, max_len), pad_id, dtype=np.int64)
    values = np.full((bsz, max_len), -2.0, dtype=np.float32)
    for i, n in enumerate(lengths):
        genes = shared if case["include_zeros"] else rng.choice(n_genes_vocab, n, replace=False)
        vals = rng.integers(1, N_BINS, size=n).astype(np.float32)
        if case["include_zeros"]:
            vals[rng.random(n) < 0.7] = 0.0
        gene_ids[i, 0], values[i, 0] = cls_id, 0.0
        gene_ids[i, 1 : n + 1], values[i, 1 : n + 1] = genes, vals
    padding_mask = gene_ids == pad_id
    target = values.copy()
    masked = np.zeros_like(padding_mask)
    for i, n in enumerate(lengths):
        pos = 1 + rng.choice(n, size=int(n * MASK_RATIO), replace=False)
        masked[i, pos] = True
    values[masked] = -1.0
    return {
        "gene_ids": gene_ids,
        "values": values,
        "target_values": target,
        "padding_mask": padding_mask,
    }


def run_worker(side: str, python: str, run_dir: Path, tag: str, precision: str = "32") -> dict:
    out_json = run_dir / f"{side}_{precision}{tag}.json"
    cmd = [
        python,
        str(h.BENCH_DIR / "_train_step_worker.py"),
        "--side",
        side,
        "--case",
        str(run_dir / "case.json"),
        "--batch",
        str(run_dir / "batch.npz"),
        "--weights",
        str(run_dir / "official_weights.pt"),
        "--out-json",
        str(out_json),
        "--precision",
        precision,
    ]
    proc = subprocess.run(cmd, env=h.worker_env(side), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} worker failed:\n{proc.stdout}\n{proc.stderr[-4000:]}")
    log("  " + proc.stdout.strip().splitlines()[-1])
    return h.read_json(out_json)


def compare_losses(ours: dict, official: dict) -> dict:
    """Agreement of the per-step losses (same weights, batch and masked positions)."""

    def rel(a, b):
        return abs(a - b) / max(abs(b), 1e-12)

    s0o, s0r = ours["steps"][0], official["steps"][0]
    per_step = [rel(o["loss"], r["loss"]) for o, r in zip(ours["steps"], official["steps"])]
    return {
        "step0_loss_ours": s0o["loss"],
        "step0_loss_official": s0r["loss"],
        "step0_rel_diff": rel(s0o["loss"], s0r["loss"]),
        "step0_gep_rel_diff": rel(s0o["gep"], s0r["gep"]),
        "step0_gepc_rel_diff": rel(s0o["gepc"], s0r["gepc"]),
        "step0_grad_norm_rel_diff": rel(s0o["grad_norm"], s0r["grad_norm"]),
        "max_rel_diff_all_steps": max(per_step),
        "last_loss_ours": ours["steps"][-1]["loss"],
        "last_loss_official": official["steps"][-1]["loss"],
    }


def summarise(runs: list[dict]) -> dict:
    """Median over repeats of each run's median step time; max peak RSS."""
    med = statistics.median(r["median_step_s"] for r in runs)
    return {
        "median_step_s": med,
        "tokens_per_s": runs[0]["non_pad_tokens"] / med,
        "per_repeat_median_step_s": [r["median_step_s"] for r in runs],
        "median_forward_s": statistics.median(r["median_forward_s"] for r in runs),
        "median_backward_s": statistics.median(r["median_backward_s"] for r in runs),
        "median_optimizer_s": statistics.median(r["median_optimizer_s"] for r in runs),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "added_rss_mb": max(r["added_rss_mb"] for r in runs),
        "other_cpu_cores_max": max(r["other_cpu_cores"] for r in runs),
    }


def results_section(payload: dict) -> str:
    m = payload["machine"]
    lines = [
        SECTION_TITLE,
        "",
        f"Command: `{payload['command']}`  ",
        f"Machine: {m['cpu_model']}, {m['usable_cores']} cores, {m['memory_gib']} GiB, "
        f"torch {payload['torch']} ({payload['threads']} threads), official `scgpt` "
        f"{payload['scgpt']}; run {payload['date']}.",
        "",
        "One training step on the same batch with the same weights: forward, GEP + GEPC "
        "masked-MSE loss (mask ratio 0.4), backward, `clip_grad_norm_(1.0)`, Adam step "
        "(official: `torch.optim.Adam` as its tutorials build it; ours: the fused Adam that "
        "`SCGPTTrainingPlan` builds, same update); float32, dropout 0. Official: "
        "`scgpt.model.TransformerModel(..., use_fast_transformer=False)` + "
        "`scgpt.loss.masked_mse_loss`; ours: "
        "`SCGPTModule(tensors, loss_kwargs={'objectives': ObjectiveConfig(gep=True, "
        "gepc=True)})` (inference + generative + loss, as the training plan calls it). "
        f"Model {payload['shape_desc']}, census vocabulary ({payload['n_tokens']:,} tokens; "
        f"{payload['n_parameters']:,} parameters). {payload['n_warmup']} warm-up + "
        f"{payload['n_steps']} timed steps per process, {payload['repeats']} process(es) per "
        "side; median s/step (median over processes), tokens/s = non-padding tokens / "
        "median s/step, peak RSS = `ru_maxrss` of the worker process (its model, optimizer "
        "state and activations; 'added' = growth during the steps).",
        "",
        "| case | tokens/step | official s/step | ours s/step | official tokens/s | "
        "ours tokens/s | speed-up | official peak RSS (added) | ours peak RSS (added) | "
        "step-0 loss rel. diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    where = [
        "",
        "Where the time goes (median seconds per step: forward / backward / clip + Adam):",
        "",
    ]
    for name, res in payload["cases"].items():
        o, r = res["official"], res["ours"]
        lines.append(
            f"| {name} ({res['batch_shape'][0]} x {res['batch_shape'][1]}) | "
            f"{res['non_pad_tokens']:,} | {o['median_step_s']:.3f} | {r['median_step_s']:.3f} | "
            f"{o['tokens_per_s']:,.0f} | {r['tokens_per_s']:,.0f} | "
            f"**{res['speedup']:.2f}x** | {o['peak_rss_mb']:,.0f} MiB "
            f"({o['added_rss_mb']:+,.0f}) | {r['peak_rss_mb']:,.0f} MiB "
            f"({r['added_rss_mb']:+,.0f}) | {res['loss_check']['step0_rel_diff']:.1e} |"
        )
        where.append(
            f"- {name}: official {o['median_forward_s']:.3f} / {o['median_backward_s']:.3f} / "
            f"{o['median_optimizer_s']:.3f}; ours {r['median_forward_s']:.3f} / "
            f"{r['median_backward_s']:.3f} / {r['median_optimizer_s']:.3f}"
        )
    lines += [*where, "", payload["verdict"], ""]
    if payload.get("notes"):
        lines += [payload["notes"], ""]
    return "\n".join(lines)


def measure(args, name: str, spec: dict, run_dir: Path, precision: str, payload: dict) -> dict:
    """Alternate official and ours ``args.repeats`` times; summarise and check the losses."""
    runs: dict[str, list] = {"official": [], "ours": []}
    for rep in range(args.repeats):
        # the official worker (re)writes the weights that ours loads (same seed: same weights)
        runs["official"].append(
            run_worker("official", args.official_python, run_dir, f"_r{rep}", precision)
        )
        runs["ours"].append(run_worker("ours", args.ours_python, run_dir, f"_r{rep}", precision))
    checks = [compare_losses(o, r) for o, r in zip(runs["ours"], runs["official"])]
    official, ours = summarise(runs["official"]), summarise(runs["ours"])
    first = runs["ours"][0]
    payload["n_parameters"] = first["n_parameters"]
    payload["torch"] = first["torch"]
    payload["threads"] = first["threads"]
    payload["scgpt"] = runs["official"][0]["scgpt"]
    res = {
        "description": spec["description"],
        "precision": precision,
        "batch_shape": first["batch_shape"],
        "non_pad_tokens": first["non_pad_tokens"],
        "official": official,
        "ours": ours,
        "speedup": official["median_step_s"] / ours["median_step_s"],
        "memory_ratio": ours["peak_rss_mb"] / official["peak_rss_mb"],
        "loss_check": max(checks, key=lambda c: c["max_rel_diff_all_steps"]),
        "runs": runs,
    }
    log(
        f"{name} ({precision}): official {official['median_step_s']:.3f} s/step, ours "
        f"{ours['median_step_s']:.3f} s/step -> {res['speedup']:.2f}x; step-0 loss rel diff "
        f"{checks[0]['step0_rel_diff']:.1e}"
    )
    return res


def parse_args(argv=None) -> argparse.Namespace:
    p = h.parser(
        __doc__,
        "train_step_speed",
        quick_help="1 warm-up + 2 timed steps, 1 repeat; leaves RESULTS.md alone",
        results_md=True,
    )
    p.add_argument("--cases", default=",".join(CASES), help="subset of: " + ", ".join(CASES))
    p.add_argument("--shape", default="small", choices=sorted(SHAPES))
    p.add_argument(
        "--precisions",
        default="32,bf16",
        help="comma-separated: 32 (float32, the comparison), bf16 (CPU autocast, both sides)",
    )
    h.add_options(
        p,
        warmup=2,
        steps=(7, "timed steps per process (>= 5)"),
        repeats=(2, "processes per side (alternating)"),
    )
    h.add_python_args(p)
    args = h.parse(p, argv, quick=QUICK)
    args.threads = args.threads or h.usable_cores()
    h.require_python(args.official_python, "official")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    shape = SHAPES[args.shape]
    n_tokens, pad_id, cls_id = census_ids()
    payload: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "shape": args.shape,
        "shape_desc": (
            f"d_model {shape['d_model']}, {shape['n_heads']} heads, d_hid {shape['d_hid']}, "
            f"{shape['n_layers']} layers"
        ),
        "n_tokens": n_tokens,
        "n_warmup": args.warmup,
        "n_steps": args.steps,
        "repeats": args.repeats,
        "target_speedup": TARGET_SPEEDUP,
        "cases": {},
    }
    for name in args.cases.split(","):
        spec = CASES[name]
        run_dir = args.out / "runs" / f"{args.shape}_{name}"
        run_dir.mkdir(parents=True, exist_ok=True)
        case = {
            "name": name,
            **shape,
            "n_tokens": n_tokens,
            "pad_id": pad_id,
            "mask_ratio": MASK_RATIO,
            "seed": args.seed,
            "threads": args.threads,
            "n_warmup": args.warmup,
            "n_steps": args.steps,
        }
        h.write_json(run_dir / "case.json", case)
        batch = make_batch(spec, n_tokens, pad_id, cls_id, args.seed)
        np.savez(run_dir / "batch.npz", **batch)
        log(f"{name}: batch {batch['gene_ids'].shape}, {spec['description']}")
        for precision in args.precisions.split(","):
            key = name if precision == "32" else f"{name}, bf16 autocast"
            payload["cases"][key] = measure(args, name, spec, run_dir, precision, payload)
    speedups = {k: v["speedup"] for k, v in payload["cases"].items() if v["precision"] == "32"}
    met = all(s >= TARGET_SPEEDUP for s in speedups.values())
    payload["target_met"] = met
    payload["verdict"] = (
        f"Target >= {TARGET_SPEEDUP}x official tokens/s on CPU: "
        + ("**met**" if met else "**not met**")
        + " ("
        + ", ".join(f"{k} {v:.2f}x" for k, v in speedups.items())
        + ")."
    )
    out = h.write_results(args, payload)
    log(f"wrote {out}")
    h.publish(args, SECTION, results_section(payload), payload)
    if args.results_md is not None:
        log(f"updated {args.results_md}")


if __name__ == "__main__":
    main()
