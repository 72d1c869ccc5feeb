"""Perturbation prediction: SCGPT against the no-change, mean, additive and linear baselines.

    flock /tmp/scvi_scgpt_cpu.lock .venv/bin/python benchmarks/perturbation.py

No Perturb-seq screen and no pretrained weights are available offline, so the data come from
``scvi_scgpt.datasets.simulate_perturbseq`` (a GRN with a knockout of every regulator and
random doubles; ``--n-genes``, ``--n-regulators``, ``--n-doubles``) and SCGPT is a small model
(``_harness.D64`` with ``--n-layers`` layers) trained from scratch with
``train("perturbation")`` (the official tutorial recipe except ``--lr`` and ``--epochs``).

Per seed (``--seeds``; the simulation, the GEARS "simulation" split and the training all use
it): SCGPT and ``tl.perturbation_baselines`` predict every test condition;
``tl.evaluate_perturbation_predictions`` scores them per subgroup (``combo_seen2``: held-out
doubles whose two genes were perturbed alone in training; ``unseen_single``).

Reverse perturbation: every held-out ``combo_seen2`` double and every training single (the
model was trained on these singles' cells) is a target; candidates are the singles and pairs
of the genes perturbed alone in training or validation. Top-1 / top-5 accuracy of
``reverse_perturbation`` against chance and a DE baseline (candidates ranked by the sum of
their genes' Welch t statistics, observed vs control: knocked-down genes drop).

Memory: peak resident memory added by ``predict_perturbation`` (one fresh process per point;
Linux ``VmHWM`` reset just before the call, minus ``VmRSS`` then) at ``--memory-genes``
genes, in chunks of ``--chunk`` genes against one dense all-gene forward
(``gene_chunk_size`` = all genes, what the official code does).

Writes ``benchmarks/output/perturbation/results.json`` and the RESULTS.md section.
``--quick``: a reduced screen (100 genes, 12 regulators, 24 doubles, 300 control and 30
cells per condition) and 10 epochs, the same seeds and memory curve (fits a shared 2-core
machine in a few minutes).
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
from itertools import combinations

import _harness as h
import numpy as np
import pandas as pd

QUICK = {
    "n_genes": 100,
    "n_regulators": 12,
    "n_doubles": 24,
    "control_cells": 300,
    "cells_per_perturbation": 30,
    "epochs": 10,
}
METHODS = ("scgpt", "no_change", "train_mean", "additive", "linear")


def simulate(args, seed: int):
    from scvi_scgpt.datasets import simulate_perturbseq

    return simulate_perturbseq(
        n_genes=args.n_genes,
        n_regulators=args.n_regulators,
        n_doubles=args.n_doubles,
        n_control_cells=args.control_cells,
        cells_per_perturbation=args.cells_per_perturbation,
        seed=seed,
    )


def run_seed(args, seed: int, log) -> dict:
    import scvi
    import torch

    from scvi_scgpt import SCGPT, tl

    adata = simulate(args, seed)
    split = tl.perturbation_split(adata, seed=seed)
    scvi.settings.seed = seed
    torch.manual_seed(seed)
    SCGPT.setup_anndata(adata, perturbation_key="condition", labels_key="cell_type")
    shape = {**h.D64, "n_layers": args.n_layers}
    model = SCGPT(adata, **shape, seed=seed)
    t0 = time.perf_counter()
    model.train(
        "perturbation",
        max_epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        accelerator="cpu",
    )
    train_s = time.perf_counter() - t0
    test = split["test"]
    t0 = time.perf_counter()
    preds = {"scgpt": model.predict_perturbation(test, n_control_cells=args.n_control_predict)}
    predict_s = time.perf_counter() - t0
    preds |= tl.perturbation_baselines(adata, test, train_conditions=split["train"])
    table = tl.evaluate_perturbation_predictions(preds, adata, subgroups=tl.split_subgroups(split))
    log(f"seed {seed}: trained {train_s:.0f} s, predicted {len(test)} in {predict_s:.0f} s")
    reverse = reverse_accuracy(model, adata, split, args)
    return {
        "seed": seed,
        "n_conditions": {k: len(split[k]) for k in ("train", "val", "test")},
        "subgroups": {k: len(v) for k, v in split["test_subgroup"].items()},
        "metrics": table.to_dict(orient="records"),
        "reverse": reverse,
        "train_s": train_s,
        "predict_s": predict_s,
        "best_epoch": model.training_task_.get("best_epoch"),
    }


def reverse_accuracy(model, adata, split, args) -> dict:
    from scipy import stats

    labels = adata.obs["condition"].astype(str)
    # the genes perturbed alone at the test level (training and validation singles)
    seen = [c for c in split["train"] + split["val"] if c.endswith("+ctrl")]
    train_genes = sorted(c.split("+")[0] for c in seen)

    candidates = [f"{g}+ctrl" for g in train_genes] + [
        f"{a}+{b}" for a, b in combinations(train_genes, 2)
    ]
    targets = list(split["test_subgroup"]["combo_seen2"]) + [
        c for c in split["train"] if c.endswith("+ctrl")
    ]
    spelling = {frozenset(c.split("+")) - {"ctrl"}: c for c in candidates}
    ctrl_cells = adata[labels.to_numpy() == "ctrl"]
    hits = {"scgpt": [], "de": []}
    predicted = model.predict_perturbation(
        candidates, n_control_cells=args.n_control_predict, key_added=None
    )
    for target in targets:
        cells = adata[labels.to_numpy() == target]
        ranking = model.reverse_perturbation(cells, predictions=predicted, top_k=None)
        name = spelling[frozenset(target.split("+")) - {"ctrl"}]
        hits["scgpt"].append(_rank_of(list(ranking.index), name))
        t = stats.ttest_ind(cells.X.toarray(), ctrl_cells.X.toarray(), equal_var=False).statistic
        t = np.nan_to_num(t)
        col = {g: i for i, g in enumerate(adata.var_names)}
        score = {c: sum(t[col[g]] for g in c.split("+") if g != "ctrl") for c in candidates}
        de_order = sorted(candidates, key=lambda c: (score[c], c))
        hits["de"].append(_rank_of(de_order, name))
    n = len(candidates)
    out = {"n_targets": len(targets), "n_candidates": n}
    for method, ranks in hits.items():
        ranks = np.asarray(ranks)
        out[method] = {"top1": float((ranks == 1).mean()), "top5": float((ranks <= 5).mean())}
    out["chance"] = {"top1": 1 / n, "top5": min(5 / n, 1.0)}
    return out


def _rank_of(order: list[str], target: str) -> int:
    return order.index(target) + 1


# ----------------------------------------------------------------------------- memory
def memory_worker(n_genes: int, chunk: int | None, seed: int) -> dict:
    import torch

    from scvi_scgpt import SCGPT
    from scvi_scgpt.datasets import simulate_perturbseq

    torch.set_num_threads(1)
    adata = simulate_perturbseq(
        n_genes=n_genes,
        n_regulators=4,
        n_doubles=0,
        n_control_cells=16,
        cells_per_perturbation=2,
        seed=seed,
    )
    SCGPT.setup_anndata(adata, perturbation_key="condition")
    model = SCGPT(adata, **h.D64, use_pert_flags=True, pert_pad_id=0)
    gc.collect()
    before = _reset_peak_rss()
    t0 = time.perf_counter()
    model.predict_perturbation(
        "TF00+ctrl", gene_chunk_size=chunk or n_genes, batch_size=4, key_added=None
    )
    wall = time.perf_counter() - t0
    after = _status_kib("VmHWM")
    return {"added_mib": (after - before) / 1024, "wall_s": wall}


def _status_kib(field: str) -> int:
    for line in open("/proc/self/status", encoding="ascii"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> int:
    """Reset the peak resident set size (``VmHWM``, Linux) and return the current one."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")
    return _status_kib("VmRSS")


def memory_curve(args, log) -> list[dict]:
    rows = []
    for n in [int(x) for x in args.memory_genes.split(",")]:
        for mode, chunk in (("chunked", args.chunk), ("dense", None)):
            cmd = [sys.executable, __file__, "--memory-worker", str(n), str(chunk or 0)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            rows.append({"n_genes": n, "mode": mode, **result})
            log(f"memory {n} genes {mode}: +{result['added_mib']:.0f} MiB")
    return rows


# ----------------------------------------------------------------------------- report
def summary(seeds: list[dict]) -> pd.DataFrame:
    frames = []
    for r in seeds:
        df = pd.DataFrame(r["metrics"])
        df["seed"] = r["seed"]
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _cell(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "n/a"
    sd = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.3f} ± {sd:.3f}"


def report(args, seeds, memory, wall) -> str:
    table = summary(seeds)
    blocks = []
    for group in ("combo_seen2", "unseen_single"):
        part = table[table["subgroup"] == group]
        rows = []
        for method in METHODS:
            m = part[part["method"] == method]
            n = int(m["n_conditions"].mean()) if len(m) else 0
            rows.append(
                [method, n, _cell(m["pearson_delta"]), _cell(m["pearson_de_delta"]),
                 _cell(m["mse_de"])]
            )  # fmt: skip
        header = ["method", "conditions / seed", "pearson_delta", "pearson_de_delta", "mse_de"]
        blocks.append(f"**{group}**\n\n{h.markdown_table(header, rows)}")
    rev_rows = []
    for key in ("scgpt", "de", "chance"):
        top1 = [r["reverse"][key]["top1"] for r in seeds]
        top5 = [r["reverse"][key]["top5"] for r in seeds]
        rev_rows.append([key, f"{np.mean(top1):.3f}", f"{np.mean(top5):.3f}"])
    reading = _reading(table, seeds, memory)
    n_cand = seeds[0]["reverse"]["n_candidates"]
    n_tgt = np.mean([r["reverse"]["n_targets"] for r in seeds])
    mem_rows = [
        [m["n_genes"], m["mode"], f"{m['added_mib']:.0f}", f"{m['wall_s']:.1f}"] for m in memory
    ]
    return f"""## Perturbation prediction (issue #10)

Command: `{args.command}` ({wall / 60:.1f} min on {h.usable_cores()} shared CPU cores).
Simulated screens (`simulate_perturbseq`: {args.n_genes} genes, {args.n_regulators} regulators
each knocked out, {args.n_doubles} doubles; one per seed, seeds {args.seeds}), GEARS
"simulation" split. SCGPT: d_model 64, {args.n_layers} layers, trained from scratch with
`train("perturbation")` for {args.epochs} epochs at lr {args.lr:g} (batch {args.batch_size});
no pretrained weights exist offline, so these are not the figures of the published model.
Mean ± sd over seeds; `pearson_delta` of "no change" is undefined (its change is zero).

{blocks[0]}

{blocks[1]}

**Reverse perturbation** ({n_tgt:.0f} targets per seed: held-out seen-2 doubles and the
training singles; {n_cand} candidates = singles and pairs of the training genes)

{h.markdown_table(["ranking", "top-1 accuracy", "top-5 accuracy"], rev_rows)}

**Peak memory of `predict_perturbation`** (untrained D64 model, 16 control cells, batch 4;
resident memory added, one process per row)

{h.markdown_table(["genes", "mode", "added MiB", "wall s"], mem_rows)}

{reading}
"""


def _mean(table: pd.DataFrame, group: str, method: str, metric: str) -> float:
    part = table[(table["subgroup"] == group) & (table["method"] == method)]
    return float(part[metric].mean())


def _reading(table: pd.DataFrame, seeds: list[dict], memory: list[dict]) -> str:
    """Plain sentences comparing the figures with the issue's targets."""
    lines = []
    for metric in ("pearson_delta", "pearson_de_delta"):
        ours = _mean(table, "combo_seen2", "scgpt", metric)
        mean = _mean(table, "combo_seen2", "train_mean", metric)
        best = max(("additive", "linear"), key=lambda m: _mean(table, "combo_seen2", m, metric))
        verdict = "at or above" if ours >= mean else "below"
        lines.append(
            f"- Held-out doubles, {metric}: SCGPT {ours:.3f} is {verdict} the training mean "
            f"({mean:.3f}) and below {best} ({_mean(table, 'combo_seen2', best, metric):.3f})."
        )
    ours = _mean(table, "unseen_single", "scgpt", "pearson_delta")
    lin = _mean(table, "unseen_single", "linear", "pearson_delta")
    lines.append(f"- Unseen singles, pearson_delta: SCGPT {ours:.3f}, linear model {lin:.3f}.")
    top1 = np.mean([r["reverse"]["scgpt"]["top1"] for r in seeds])
    de1 = np.mean([r["reverse"]["de"]["top1"] for r in seeds])
    lines.append(f"- Reverse perturbation top-1: SCGPT {top1:.3f}, DE baseline {de1:.3f}.")
    chunked = [m["added_mib"] for m in memory if m["mode"] == "chunked"]
    dense = [m["added_mib"] for m in memory if m["mode"] == "dense"]
    if chunked and dense:
        lines.append(
            f"- Memory: chunked prediction added {min(chunked):.0f}-{max(chunked):.0f} MiB "
            f"at every size; the dense all-gene forward grew to {max(dense):.0f} MiB."
        )
    lines.append(
        "- The simulator's activities are linear in the log activities of their regulators, "
        "so double-knockout effects are close to additive on the log scale, which favours "
        "the additive and linear baselines; a small model trained from scratch for a few "
        "epochs is far from the published fine-tuned whole-human model."
    )
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-worker":
        n, chunk = int(sys.argv[2]), int(sys.argv[3])
        print(json.dumps(memory_worker(n, chunk or None, 0)))
        return
    p = h.parser(__doc__, "perturbation", quick_help="a reduced screen, 10 epochs",
                 results_md=True)  # fmt: skip
    h.add_options(
        p,
        n_genes=200,
        n_regulators=20,
        n_doubles=40,
        control_cells=400,
        cells_per_perturbation=40,
        seeds=("0,1,2", "comma-separated seeds"),
        epochs=(20, "training epochs"),
        lr=1e-3,
        batch_size=64,
        n_layers=2,
        n_control_predict=(100, "control cells per prediction"),
        memory_genes=("1000,2000,5000", "gene counts of the memory curve"),
        chunk=(512, "genes per chunk in the memory curve"),
    )
    args = h.parse(p, quick=QUICK)
    log = h.setup_logging("perturbation")
    h.set_threads(args.threads)
    t0 = time.perf_counter()
    seeds = [run_seed(args, int(s), log) for s in args.seeds.split(",")]
    memory = memory_curve(args, log)
    wall = time.perf_counter() - t0
    h.write_results(args, {"seeds": seeds, "memory": memory, "wall_s": wall})
    body = report(args, seeds, memory, wall)
    print(body)
    if args.results_md:
        h.write_section("perturbation", body, args.results_md)


if __name__ == "__main__":
    main()
