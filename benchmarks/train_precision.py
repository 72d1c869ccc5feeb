"""Training on a CPU: bf16-mixed vs fp32 and official, attention dropout, loss curves.

    flock /tmp/scvi_scgpt_cpu.lock .venv/bin/python benchmarks/train_precision.py
    .venv/bin/python benchmarks/train_precision.py --quick      # smoke run

Three parts (``--parts``):

- ``steps``: ``benchmarks/train_step_speed.py --precisions 32,bf16`` (official and ours, each
  in its own process, same weights and batch, dropout 0), summarised as ours bf16-mixed
  against the official fp32 step (the issue #13 target: >= 1.5x tokens/s).
- ``dropout``: our training step (the ``train_step_speed`` cases, d_model 256, 4 layers, and
  the D64 fine-tuning shape at 1,201 tokens) with attention-probability dropout 0, and 0.2
  through SDPA (its math kernel: the library before issue #13) or through the library's
  chunked attention, fp32 and bf16, alternating in one process; the feed-forward dropout is
  0 throughout so that only the attention differs.
- ``loss``: a toy problem (two cell types with opposite programmes over 200 genes, 512
  cells, tokenized by the library's collator with masking), a d_model-64 2-layer model
  trained with GEP + GEPC for ``--loss-steps`` steps in fp32 and in bf16 autocast, two seeds
  each: the fp32-vs-bf16 gap against the seed-to-seed gap.

Writes ``benchmarks/output/train_precision/results.json``, the loss-curve figure
``benchmarks/figures/train_precision_loss_curves.png`` and (full runs) the marked "Training
precision" section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
import warnings

import _harness as h
import numpy as np

SECTION = "train_precision"
QUICK = {"steps": 1, "repeats": 1, "loss_steps": 20, "dropout_steps": 1}
log = h.setup_logging("train_precision", quiet=False)
FIGURE = h.BENCH_DIR / "figures" / "train_precision_loss_curves.png"


# ----------------------------------------------------------------------------- steps
def steps_part(args) -> dict:
    out = args.out / "steps"
    cmd = [
        sys.executable,
        str(h.BENCH_DIR / "train_step_speed.py"),
        "--precisions",
        "32,bf16",
        "--steps",
        str(args.steps),
        "--repeats",
        str(args.repeats),
        "--no-results-md",
        "--out",
        str(out),
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    subprocess.run(cmd, check=True, env=h.worker_env("ours"))
    payload = h.read_json(out / "results.json")
    rows = {}
    for key, case in payload["cases"].items():
        name = key.split(",")[0]
        row = rows.setdefault(name, {"tokens": case["non_pad_tokens"]})
        tag = "bf16" if case["precision"] == "bf16" else "fp32"
        row[f"official_{tag}_tokens_per_s"] = case["official"]["tokens_per_s"]
        row[f"ours_{tag}_tokens_per_s"] = case["ours"]["tokens_per_s"]
        row[f"ours_{tag}_split"] = [
            case["ours"][k]
            for k in ("median_forward_s", "median_backward_s", "median_optimizer_s")
        ]
    for row in rows.values():
        row["ours_bf16_vs_official_fp32"] = (
            row["ours_bf16_tokens_per_s"] / row["official_fp32_tokens_per_s"]
        )
    return {"command": " ".join(cmd[1:]), "rows": rows}


# ----------------------------------------------------------------------------- dropout
def dropout_part(args) -> dict:
    import torch
    import train_step_speed as tss

    import scvi_scgpt.nn._kernels as kernels
    from scvi_scgpt.module import ObjectiveConfig, SCGPTModule
    from scvi_scgpt.module._config import ArchitectureConfig
    from scvi_scgpt.train import make_optimizer

    n_tokens, pad_id, cls_id = tss.census_ids()
    d64 = {k: h.D64[k] for k in h.SHAPE_KEYS}
    cases = {
        "integration, d256 x 4 (8 x 1201)": (tss.CASES["integration"], tss.SHAPES["small"]),
        "annotation, d256 x 4 (16 x <=1201)": (tss.CASES["annotation"], tss.SHAPES["small"]),
        "integration, D64 x 4 (8 x 1201)": (tss.CASES["integration"], d64),
    }
    variants = {
        "no attention dropout": (0.0, "chunked"),
        "0.2, SDPA math kernel (before)": (0.2, "sdpa"),
        "0.2, chunked (now)": (0.2, "chunked"),
    }
    out = {}
    for label, (spec, shape) in cases.items():
        batch = tss.make_batch(spec, n_tokens, pad_id, cls_id, seed=args.seed)
        tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
        modules = {}
        for name, (p_attn, _) in variants.items():
            torch.manual_seed(args.seed)
            config = ArchitectureConfig(
                n_tokens=n_tokens,
                pad_id=pad_id,
                dropout=0.0,
                attention_dropout=p_attn,
                use_flash=False,
                **shape,
            )
            module = SCGPTModule(config).train()
            modules[name] = (module, make_optimizer(module.parameters(), "Adam", lr=1e-4))
        objectives = ObjectiveConfig(gep=True, gepc=True, mask_ratio=tss.MASK_RATIO)

        def step(name, precision, tensors=tensors, modules=modules, objectives=objectives):
            module, opt = modules[name]
            kernels.CPU_DROPOUT_KERNEL = variants[name][1]
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                _, _, loss = module(tensors, loss_kwargs={"objectives": objectives})
            loss.loss.backward()
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
            opt.step()
            kernels.CPU_DROPOUT_KERNEL = "chunked"

        rows = {}
        for precision in ("32", "bf16"):
            times = {n: [] for n in variants}
            for n in variants:
                step(n, precision)  # warm-up
            for _ in range(args.dropout_steps):
                for n in variants:
                    t = time.perf_counter()
                    step(n, precision)
                    times[n].append(time.perf_counter() - t)
            base = statistics.median(times["no attention dropout"])
            for n, ts in times.items():
                sec = statistics.median(ts)
                rows[f"{n}, {'fp32' if precision == '32' else 'bf16'}"] = {
                    "seconds": sec,
                    "all_seconds": ts,
                    "vs_no_dropout": sec / base,
                }
        out[label] = {"tokens": int((~batch["padding_mask"]).sum()), "rows": rows}
        log(f"dropout {label} done")
    return out


# ----------------------------------------------------------------------------- loss curves
def toy_cells(n_cells: int = 512, n_genes: int = 200, seed: int = 0):
    """Two cell types with opposite programmes: type A high on the first half of the genes."""
    import anndata as ad
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 2, n_cells)
    rate = np.where((np.arange(n_genes) < n_genes // 2)[None, :] == (kind[:, None] == 0), 6, 0.4)
    x = rng.poisson(rate * rng.gamma(4, 0.25, (n_cells, 1))).astype(np.float32)
    adata = ad.AnnData(sp.csr_matrix(x))
    adata.var_names = [f"g{i}" for i in range(n_genes)]
    return adata


def loss_part(args) -> dict:
    import torch

    from scvi_scgpt.data import GeneVocab, TokenizerConfig
    from scvi_scgpt.dataloaders import TokenCollator
    from scvi_scgpt.module import ArchitectureConfig, ObjectiveConfig, SCGPTModule
    from scvi_scgpt.train import make_optimizer

    adata = toy_cells(seed=0)
    vocab = GeneVocab.from_genes(adata.var_names)
    column_ids = np.array([vocab[g] for g in adata.var_names])
    collate = TokenCollator(
        column_ids,
        TokenizerConfig(max_seq_len=201),
        cls_id=vocab.cls_id,
        pad_id=vocab.pad_id,
        mask_ratio=0.4,
    )
    x = adata.X.tocsr()
    objectives = ObjectiveConfig(gep=True, gepc=True, mask_ratio=0.4)
    curves = {}
    for seed in (0, 1):
        for precision in ("fp32", "bf16"):
            torch.manual_seed(seed)
            config = ArchitectureConfig(
                n_tokens=len(vocab),
                pad_id=vocab.pad_id,
                dropout=0.0,
                **{k: h.D64_PRETRAIN[k] for k in h.SHAPE_KEYS},
            )
            module = SCGPTModule(config).train()
            opt = make_optimizer(module.parameters(), "Adam", lr=1e-3)
            rng = np.random.default_rng(seed)
            losses = []
            for _ in range(args.loss_steps):
                rows = np.sort(rng.choice(x.shape[0], 32, replace=False))
                batch = collate({"X": x[rows].toarray()})
                opt.zero_grad(set_to_none=True)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    _, _, out = module(batch, loss_kwargs={"objectives": objectives})
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
                opt.step()
                losses.append(float(out.loss))
            curves[f"{precision}, seed {seed}"] = losses
        log(f"loss curves seed {seed} done")
    w = max(1, args.loss_steps // 5)

    def tail(name):
        return float(np.mean(curves[name][-w:]))

    def gap(a, b):
        return float(np.mean(np.abs(np.array(curves[a]) - np.array(curves[b]))))

    summary = {
        "window": w,
        "final_mean": {k: tail(k) for k in curves},
        "mean_abs_gap_fp32_vs_bf16_same_seed": [
            gap("fp32, seed 0", "bf16, seed 0"),
            gap("fp32, seed 1", "bf16, seed 1"),
        ],
        "mean_abs_gap_seed0_vs_seed1": [
            gap("fp32, seed 0", "fp32, seed 1"),
            gap("bf16, seed 0", "bf16, seed 1"),
        ],
    }
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, losses in curves.items():
        ax.plot(losses, label=name, lw=1, ls="-" if "fp32" in name else "--")
    ax.set_xlabel("step")
    ax.set_ylabel("GEP + GEPC loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("toy problem: fp32 vs bf16 autocast")
    fig.tight_layout()
    h.save_figure(fig, args.out / FIGURE.name if args.quick else FIGURE)
    return {"curves": curves, "summary": summary}


# ----------------------------------------------------------------------------- report
def render(res: dict) -> str:
    lines = [
        "## Training precision and attention dropout (issue #13)",
        "",
        f"Command: `{res['command']}`{res.get('command_note', '')}  ",
        h.machine_line(res) + ".",
        "",
    ]
    if "steps" in res:
        s = res["steps"]
        lines += [
            f"**bf16-mixed step vs the official fp32 step** (`{s['command']}`; each side in "
            "its own process, same weights and batch, dropout 0; tokens/s):",
            "",
        ]
        rows = []
        for name, r in s["rows"].items():
            rows.append(
                [
                    name,
                    f"{r['tokens']:,}",
                    f"{r['official_fp32_tokens_per_s']:,.0f}",
                    f"{r['ours_fp32_tokens_per_s']:,.0f}",
                    f"{r.get('official_bf16_tokens_per_s', float('nan')):,.0f}",
                    f"{r['ours_bf16_tokens_per_s']:,.0f}",
                    f"**{r['ours_bf16_vs_official_fp32']:.2f}x**",
                    " / ".join(f"{x:.3f}" for x in r["ours_bf16_split"]),
                ]
            )
        lines += [
            h.markdown_table(
                [
                    "case",
                    "tokens",
                    "official fp32",
                    "ours fp32",
                    "official bf16",
                    "ours bf16",
                    "ours bf16 / official fp32",
                    "ours bf16 fwd / bwd / opt s",
                ],
                rows,
            ),
            "",
        ]
    if "dropout" in res:
        lines += [
            "**Attention dropout** (our step, feed-forward dropout 0, alternating in one "
            "process; s/step and the ratio to no attention dropout):",
            "",
        ]
        variants = list(next(iter(res["dropout"].values()))["rows"])
        rows = []
        for case, r in res["dropout"].items():
            rows.append(
                [case]
                + [
                    f"{r['rows'][v]['seconds']:.2f} ({r['rows'][v]['vs_no_dropout']:.1f}x)"
                    for v in variants
                ]
            )
        lines += [h.markdown_table(["case", *variants], rows), ""]
    if "loss" in res:
        s = res["loss"]["summary"]
        fm = s["final_mean"]
        lines += [
            f"**Loss curves** on the toy problem ({len(res['loss']['curves']['fp32, seed 0'])} "
            f"steps; figure `benchmarks/figures/{FIGURE.name}`): mean of the last "
            f"{s['window']} steps "
            + ", ".join(f"{k} {v:.2f}" for k, v in fm.items())
            + "; mean |fp32 - bf16| per step at the same seed "
            + " / ".join(f"{x:.2f}" for x in s["mean_abs_gap_fp32_vs_bf16_same_seed"])
            + ", between seeds 0 and 1 "
            + " / ".join(f"{x:.2f}" for x in s["mean_abs_gap_seed0_vs_seed1"])
            + " (fp32 / bf16).",
            "",
        ]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = h.parser(__doc__, "train_precision", results_md=True)
    h.add_options(
        p,
        parts=("steps,dropout,loss", "comma-separated parts to run"),
        steps=(5, "timed steps per train_step_speed process"),
        repeats=(2, "train_step_speed processes per side"),
        dropout_steps=(3, "timed steps per dropout variant"),
        loss_steps=(300, "steps of each loss curve"),
    )
    args = h.parse(p, argv, quick=QUICK)
    warnings.filterwarnings("ignore")
    h.set_threads(args.threads)
    parts = args.parts.split(",")
    previous = args.out / "results.json"
    # parts not run this time keep their figures from the previous run (a rerun of one part)
    old = h.read_json(previous) if previous.exists() and not args.quick else {}
    res = {k: old[k] for k in ("steps", "dropout", "loss") if k in old and k not in parts}
    if "steps" in parts:
        res["steps"] = steps_part(args)
    if "dropout" in parts:
        res["dropout"] = dropout_part(args)
    if "loss" in parts:
        res["loss"] = loss_part(args)
    kept = [k for k in ("steps", "dropout", "loss") if k not in parts and k in res]
    if kept:
        origin = old.get("command_of_kept") or old["command"]
        res["command_of_kept"] = origin
        res["command_note"] = f" (parts {', '.join(kept)} from `{origin}`)"
    h.report(args, res, render, SECTION)


if __name__ == "__main__":
    main()
