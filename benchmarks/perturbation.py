"""Perturbation prediction: SCGPT variants against six baselines on two simulated screens.

    flock /tmp/scvi_scgpt_cpu.lock .venv/bin/python benchmarks/perturbation.py

No Perturb-seq screen and no pretrained weights are available offline, so the data come from
``scvi_scgpt.datasets.simulate_perturbseq`` and SCGPT is a small model (``_harness.D64`` with
``--n-layers`` layers) trained from scratch with ``train("perturbation")`` (the official
tutorial recipe except ``--lr`` and ``--epochs``).

Screens (``--screens``): ``grn`` (a GRN with a knockout of every regulator and random doubles;
doubles are close to additive on the log scale) and ``interaction`` (the same with
``--n-interactions`` of the doubles given synergy, buffering or epistasis). Per screen and seed
(``--seeds``; the simulation, the GEARS "simulation" split and the training all use it): the
SCGPT variants (``--variants``: ``scgpt`` official, ``scgpt_wmse`` with the DE-weighted loss,
``scgpt_residual`` with ``combination="additive_residual"``) and the six
``tl.perturbation_baselines`` predict every test condition;
``tl.evaluate_perturbation_predictions`` (GEARS, Systema, Ahlmann-Eltze, WMSE, interaction
recovery) and ``tl.cell_eval_metrics`` (cell-eval, with its split-half ceiling) score them per
subgroup (``combo_seen2``: held-out doubles whose two genes were perturbed alone in training;
``combo_seen2_interacting``: those with a simulated interaction; ``unseen_single``).

Reverse perturbation: every held-out ``combo_seen2`` double and every training single is a
target; candidates are the singles and pairs of the genes perturbed alone in training or
validation. Top-1 / top-5 accuracy of ``reverse_perturbation`` with each variant's and the
additive baseline's predictions, against chance and a DE baseline (candidates ranked by the
sum of their genes' Welch t statistics, observed vs control), reported for the held-out
targets and the training targets apart: an additive-residual model (and the additive
baseline) predicts a training single as its observed mean, so pooling those targets would
inflate top-1.

Memory (issue #10, ``--memory-genes 1000,2000,5000``; skipped by default): peak resident
memory added by ``predict_perturbation`` (one fresh process per point) in chunks of
``--chunk`` genes against one dense all-gene forward.

Writes ``benchmarks/output/perturbation/results.json`` and the RESULTS.md section
``perturbation_round2`` (the issue #10 section stays as it was). ``--quick``: a reduced
screen (100 genes, 12 regulators, 24 doubles of which 12 interact, 300 control and 30 cells
per condition) and 10 epochs.
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
    "n_interactions": 12,
    "control_cells": 300,
    "cells_per_perturbation": 30,
    "epochs": 10,
    "memory_genes": "",
}
#: The SCGPT variants: train("perturbation", **kwargs).
VARIANTS = {
    "scgpt": {},
    "scgpt_wmse": {"objectives": {"perturbation_loss": "wmse"}},
    "scgpt_residual": {"combination": "additive_residual"},
}
BASELINES = ("no_change", "train_mean", "additive", "scaled_additive", "matching_mean", "linear")
OURS = (
    "pearson_delta",
    "pearson_de_delta",
    "pearson_delta_centroid",
    "l2_top_expressed",
    "wmse",
    "mse_de",
    "interaction_pearson",
    "interaction_sign",
)
CELL_EVAL = ("pearson_delta", "mae", "mse", "discrimination_score_l1", "overlap_at_N")
SCREENS = ("grn", "interaction")


def simulate(args, seed: int, screen: str = "grn"):
    from scvi_scgpt.datasets import simulate_perturbseq

    return simulate_perturbseq(
        n_genes=args.n_genes,
        n_regulators=args.n_regulators,
        n_doubles=args.n_doubles,
        n_control_cells=args.control_cells,
        cells_per_perturbation=args.cells_per_perturbation,
        n_interactions=args.n_interactions if screen == "interaction" else 0,
        seed=seed,
    )


def both_singles_trained(subgroups: pd.Series, train: list[str]) -> pd.Series:
    """``combo_seen2`` kept for doubles whose two singles are training conditions.

    GEARS counts a gene as seen when any training condition perturbs it; the validation
    level of the split can move one of the two singles to validation. Such doubles become
    ``combo_seen2_val_single`` (the additive prior then lacks that single's observed change).
    """
    singles = {c.split("+")[0] for c in train if c.endswith("+ctrl")}
    trained = subgroups.index.map(lambda c: all(g in singles for g in c.split("+")))
    moved = (subgroups == "combo_seen2") & ~np.asarray(trained, dtype=bool)
    return subgroups.where(~moved, "combo_seen2_val_single")


def run_seed(args, seed: int, log, screen: str = "grn") -> dict:
    import scvi
    import torch

    from scvi_scgpt import SCGPT, tl

    adata = simulate(args, seed, screen)
    split = tl.perturbation_split(adata, seed=seed)
    subgroups = both_singles_trained(tl.split_subgroups(split), split["train"])
    interacting = set(adata.uns["interactions"]["condition"])
    extra = {
        c: "combo_seen2_interacting"
        for c in subgroups.index[subgroups == "combo_seen2"]
        if c in interacting
    }
    test = split["test"]
    preds, timing, models = {}, {}, {}
    variants = [v for v in args.variants.split(",") if v]
    for name in variants:
        scvi.settings.seed = seed
        torch.manual_seed(seed)
        data = adata.copy()
        SCGPT.setup_anndata(
            data, perturbation_key="condition", labels_key="cell_type", split_key="split"
        )
        model = SCGPT(data, **{**h.D64, "n_layers": args.n_layers}, seed=seed)
        t0 = time.perf_counter()
        model.train(
            "perturbation",
            max_epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            accelerator="cpu",
            **VARIANTS[name],
        )
        train_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        preds[name] = model.predict_perturbation(
            test, n_control_cells=args.n_control_predict, key_added=None
        )
        state = getattr(model, "perturbation_combination_", None) or {}
        timing[name] = {
            "train_s": train_s,
            "predict_s": time.perf_counter() - t0,
            "gate": state.get("gate"),
        }
        models[name] = model
        log(f"{screen} seed {seed} {name}: trained {train_s:.0f} s, gate {state.get('gate')}")
    preds |= tl.perturbation_baselines(adata, test, train_conditions=split["train"])
    ours = tl.evaluate_perturbation_predictions(preds, adata, subgroups=subgroups)
    extra_ours = (
        tl.evaluate_perturbation_predictions(
            {m: p.loc[list(extra)] for m, p in preds.items()}, adata
        ).assign(subgroup="combo_seen2_interacting")
        if extra
        else None
    )
    t0 = time.perf_counter()
    cells = tl.cell_eval_metrics(preds, adata, ceiling=True, seed=seed)
    log(f"{screen} seed {seed}: cell-eval {time.perf_counter() - t0:.0f} s")
    reverse = reverse_accuracy(models, preds, adata, split, args)
    return {
        "screen": screen,
        "seed": seed,
        "n_conditions": {k: len(split[k]) for k in ("train", "val", "test")},
        "subgroups": subgroups.value_counts().to_dict(),
        "n_interacting_held_out": len(extra),
        "metrics": pd.concat([ours, extra_ours]).to_dict(orient="records")
        if extra_ours is not None
        else ours.to_dict(orient="records"),
        "cell_eval": cell_eval_by_group(cells, subgroups, extra),
        "ceiling": cells.attrs.get("ceiling", {}),
        "reverse": reverse,
        "timing": timing,
    }


def cell_eval_by_group(cells: pd.DataFrame, subgroups: pd.Series, extra: dict) -> list[dict]:
    records = []
    groups = {"all": cells["condition"].unique()}
    for name in pd.unique(subgroups):
        groups[name] = subgroups.index[subgroups == name]
    if extra:
        groups["combo_seen2_interacting"] = list(extra)
    for (method, group), _ in [((m, g), None) for m in cells["method"].unique() for g in groups]:
        part = cells[(cells["method"] == method) & cells["condition"].isin(groups[group])]
        records.append(
            {"method": method, "subgroup": group, "n_conditions": len(part)}
            | part[list(CELL_EVAL)].mean().to_dict()
        )
    return records


def reverse_accuracy(models, preds, adata, split, args) -> dict:
    """Top-1 / top-5 of reverse perturbation, held-out and training targets apart.

    Held-out targets: the test ``combo_seen2`` doubles. Training targets: the training singles;
    an additive-residual model (and the additive baseline) predicts those as their observed
    means, so their top-1 is near-trivial and is reported on its own, never pooled with the
    held-out one.
    """
    from scipy import stats

    from scvi_scgpt import tl

    labels = adata.obs["condition"].astype(str)
    # the genes perturbed alone at the test level (training and validation singles)
    seen = [c for c in split["train"] + split["val"] if c.endswith("+ctrl")]
    train_genes = sorted(c.split("+")[0] for c in seen)

    candidates = [f"{g}+ctrl" for g in train_genes] + [
        f"{a}+{b}" for a, b in combinations(train_genes, 2)
    ]
    targets = {
        "held_out": list(split["test_subgroup"]["combo_seen2"]),
        "training": [c for c in split["train"] if c.endswith("+ctrl")],
    }
    spelling = {frozenset(c.split("+")) - {"ctrl"}: c for c in candidates}
    ctrl_cells = adata[labels.to_numpy() == "ctrl"]
    methods = [*models, "additive", "de"]
    hits = {m: {part: [] for part in targets} for m in methods}
    predicted = {
        name: model.predict_perturbation(
            candidates, n_control_cells=args.n_control_predict, key_added=None
        )
        for name, model in models.items()
    }
    predicted["additive"] = tl.perturbation_baselines(
        adata, candidates, train_conditions=split["train"] + split["val"], methods=["additive"]
    )["additive"]
    first = next(iter(models.values()))
    col = {g: i for i, g in enumerate(adata.var_names)}
    for part, conditions in targets.items():
        for target in conditions:
            cells = adata[labels.to_numpy() == target]
            name = spelling[frozenset(target.split("+")) - {"ctrl"}]
            for method, table in predicted.items():
                ranking = first.reverse_perturbation(cells, predictions=table, top_k=None)
                hits[method][part].append(_rank_of(list(ranking.index), name))
            t = stats.ttest_ind(
                cells.X.toarray(), ctrl_cells.X.toarray(), equal_var=False
            ).statistic
            t = np.nan_to_num(t)
            score = {c: sum(t[col[g]] for g in c.split("+") if g != "ctrl") for c in candidates}
            de_order = sorted(candidates, key=lambda c: (score[c], c))
            hits["de"][part].append(_rank_of(de_order, name))
    n = len(candidates)
    out = {"n_targets": {part: len(c) for part, c in targets.items()}, "n_candidates": n}
    for method, parts in hits.items():
        out[method] = {}
        for part, ranks in parts.items():
            ranks = np.asarray(ranks)
            top1 = float((ranks == 1).mean()) if len(ranks) else float("nan")
            top5 = float((ranks <= 5).mean()) if len(ranks) else float("nan")
            out[method][part] = {"top1": top1, "top5": top5}
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
    """One row per screen, seed, method and subgroup: our metrics and cell-eval's (``ce_``)."""
    frames = []
    for r in seeds:
        ours = pd.DataFrame(r["metrics"])
        cells = pd.DataFrame(r["cell_eval"]).drop(columns="n_conditions")
        cells = cells.rename(columns={m: f"ce_{m}" for m in CELL_EVAL})
        df = ours.merge(cells, on=["method", "subgroup"], how="outer")
        df["seed"], df["screen"] = r["seed"], r["screen"]
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _cell(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "n/a"
    sd = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{values.mean():.3f} ± {sd:.3f}"


COLUMNS = [*OURS, *(f"ce_{m}" for m in CELL_EVAL)]


def metric_table(table: pd.DataFrame, screen: str, group: str, methods: list[str]) -> str:
    part = table[(table["screen"] == screen) & (table["subgroup"] == group)]
    rows = []
    for method in methods:
        m = part[part["method"] == method]
        if m.empty:
            continue
        n = int(m["n_conditions"].mean()) if m["n_conditions"].notna().any() else 0
        rows.append([method, n, *(_cell(m[c]) if c in m else "n/a" for c in COLUMNS)])
    return h.markdown_table(["method", "conditions / seed", *COLUMNS], rows)


def reverse_table(screen: str, rev: list[dict], methods: list[str]) -> str:
    """Mean top-1 / top-5 over seeds, held-out doubles and training singles apart."""
    parts = ("held_out", "training")
    cells = [(p, k) for p in parts for k in ("top1", "top5")]
    rows = [
        [m, *(f"{np.nanmean([r[m][p][k] for r in rev]):.3f}" for p, k in cells)] for m in methods
    ]
    rows.append(["chance", *(f"{rev[0]['chance'][k]:.3f}" for _, k in cells)])
    n = rev[0]["n_targets"]
    return (
        f"**{screen} screen, reverse perturbation** ({n['held_out']} held-out double "
        f"targets, {n['training']} training single targets, {rev[0]['n_candidates']} "
        "candidates; a training single of `scgpt_residual` and `additive` is its observed "
        "mean, so its top-1 is near-trivial: read the held-out columns)\n\n"
        + h.markdown_table(
            ["ranking", "held-out top-1", "held-out top-5", "training top-1", "training top-5"],
            rows,
        )
    )


def report(args, seeds, memory, wall) -> str:
    table = summary(seeds)
    variants = [v for v in args.variants.split(",") if v]
    methods = [*variants, *BASELINES, "ceiling"]
    blocks = []
    for screen in sorted(table["screen"].unique(), key=SCREENS.index):
        for group in ("combo_seen2", "combo_seen2_interacting", "unseen_single"):
            if not ((table["screen"] == screen) & (table["subgroup"] == group)).any():
                continue
            blocks.append(f"**{screen} screen, {group}**\n\n" + metric_table(
                table, screen, group, methods))  # fmt: skip
        rev = [r["reverse"] for r in seeds if r["screen"] == screen]
        blocks.append(reverse_table(screen, rev, [*variants, "additive", "de"]))
    ceiling_rows = []
    for screen in SCREENS:
        rows = [r["ceiling"] for r in seeds if r["screen"] == screen]
        if rows:
            ceiling_rows.append(
                [screen, *(_cell(pd.Series([c.get(m) for c in rows], dtype=float))
                           for m in CELL_EVAL)]
            )  # fmt: skip
    gates = {
        screen: [r["timing"]["scgpt_residual"]["gate"] for r in seeds if r["screen"] == screen]
        for screen in SCREENS
        if "scgpt_residual" in variants
    }
    train_s = np.mean([t["train_s"] for r in seeds for t in r["timing"].values()])
    mem = ""
    if memory:
        mem_rows = [
            [m["n_genes"], m["mode"], f"{m['added_mib']:.0f}", f"{m['wall_s']:.1f}"]
            for m in memory
        ]
        mem = "**Peak memory of `predict_perturbation`**\n\n" + h.markdown_table(
            ["genes", "mode", "added MiB", "wall s"], mem_rows
        )
    body = "\n\n".join(blocks)
    return f"""## Perturbation: additive-residual doubles, WMSE, calibrated metrics (issue #20)

Command: `{args.command}` ({wall / 60:.1f} min on {h.usable_cores()} shared CPU cores).
Two simulated screens per seed (seeds {args.seeds}; `simulate_perturbseq`: {args.n_genes}
genes, {args.n_regulators} regulators each knocked out alone, {args.n_doubles} doubles,
{args.control_cells} control and {args.cells_per_perturbation} cells per condition): `grn`
(the GRN alone: doubles close to additive on the log scale) and `interaction`
({args.n_interactions} of the doubles given synergy, buffering or epistasis,
`n_interactions`). GEARS "simulation" split; `combo_seen2`: held-out doubles whose two
genes were perturbed alone in training (GEARS's `combo_seen2` less the doubles one of whose
singles the split moved to validation); `combo_seen2_interacting`: those of them with a
simulated interaction; `unseen_single`: singles of genes never perturbed in training.
SCGPT variants (d_model 64, {args.n_layers} layers, from scratch, {args.epochs} epochs, lr
{args.lr:g}, batch {args.batch_size}): `scgpt` (official recipe), `scgpt_wmse`
(`objectives={{"perturbation_loss": "wmse"}}`), `scgpt_residual`
(`combination="additive_residual"`; residual gate fitted on the validation doubles:
{", ".join(f"{k} {np.round(v, 2).tolist()}" for k, v in gates.items())}); mean training
time {train_s:.0f} s per model. Mean ± sd over seeds.

Columns: ours (`tl.evaluate_perturbation_predictions`): GEARS `pearson_delta`,
`pearson_de_delta` (top-20 DE genes), Systema's `pearson_delta_centroid`, Ahlmann-Eltze's
`l2_top_expressed` (1,000 most expressed genes, here all {args.n_genes}), the DE-weighted
`wmse`, `mse_de`, and interaction recovery on doubles (`interaction_pearson`,
`interaction_sign`: predicted vs observed `AB - (A + B - ctrl)` on the genes where the
observed one exceeds 0.1); cell-eval 0.8 (`tl.cell_eval_metrics`, `ce_`): `pearson_delta`,
`mae`, `mse`, `discrimination_score_l1` (PDS), `overlap_at_N` (DES). The `ceiling` row is
cell-eval's split-half replicate of the real cells (half depth); its Spearman-Brown
corrected aggregate per screen is in the last table. Lower is better for `l2`, `wmse`,
`mse*`, `mae`; higher for the rest. `no_change` and `additive` have no interaction
(correlation n/a, sign agreement 0 by construction).

{body}

**cell-eval ceiling (Spearman-Brown corrected, all test conditions)**

{h.markdown_table(["screen", *CELL_EVAL], ceiling_rows)}

{mem}

{_reading(table, variants)}
"""


def _mean(table: pd.DataFrame, screen: str, group: str, method: str, metric: str) -> float:
    part = table[
        (table["screen"] == screen) & (table["subgroup"] == group) & (table["method"] == method)
    ]
    return float(part[metric].mean())


def _per_seed(table, screen, group, method, metric) -> np.ndarray:
    part = table[
        (table["screen"] == screen) & (table["subgroup"] == group) & (table["method"] == method)
    ]
    return part.sort_values("seed")[metric].to_numpy(dtype=float)


def _reading(table: pd.DataFrame, variants: list[str]) -> str:
    """Plain sentences: the issue's target on the interaction screen's held-out doubles."""
    lines = ["**Reading**", ""]
    if "scgpt_residual" not in variants:
        return ""
    for screen in SCREENS:
        if screen not in set(table["screen"]):
            continue
        g = "combo_seen2"
        res = {m: _per_seed(table, screen, g, "scgpt_residual", m) for m in OURS}
        add = {m: _per_seed(table, screen, g, "additive", m) for m in OURS}
        pd_ok = (res["pearson_delta"] >= add["pearson_delta"] - 1e-9).sum()
        l2_ok = (res["l2_top_expressed"] <= add["l2_top_expressed"] + 1e-9).sum()
        n = len(res["pearson_delta"])
        inter = res["interaction_pearson"]
        add_inter = add["interaction_pearson"]
        add_inter = "none" if np.isnan(add_inter).all() else f"{np.nanmean(add_inter):.3f}"
        lines.append(
            f"- {screen} screen, held-out doubles: additive-residual pearson_delta "
            f"{np.nanmean(res['pearson_delta']):.3f} vs additive "
            f"{np.nanmean(add['pearson_delta']):.3f} (at least as good in {pd_ok}/{n} "
            f"seeds); L2 {np.nanmean(res['l2_top_expressed']):.3f} vs "
            f"{np.nanmean(add['l2_top_expressed']):.3f} (at most in {l2_ok}/{n}); interaction "
            f"correlation {np.nanmean(inter):.3f} (additive: {add_inter}), sign agreement "
            f"{np.nanmean(res['interaction_sign']):.3f} vs "
            f"{np.nanmean(add['interaction_sign']):.3f}; official recipe pearson_delta "
            f"{_mean(table, screen, g, 'scgpt', 'pearson_delta'):.3f}."
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
        n_interactions=(20, "doubles of the interaction screen given an interaction"),
        control_cells=400,
        cells_per_perturbation=40,
        seeds=("0,1,2", "comma-separated seeds"),
        screens=("grn,interaction", "screens to run"),
        variants=(",".join(VARIANTS), "SCGPT variants"),
        epochs=(20, "training epochs"),
        lr=1e-3,
        batch_size=64,
        n_layers=2,
        n_control_predict=(100, "control cells per prediction"),
        memory_genes=("", "gene counts of the memory curve (issue #10; empty: skipped)"),
        chunk=(512, "genes per chunk in the memory curve"),
    )
    args = h.parse(p, quick=QUICK)
    log = h.setup_logging("perturbation")
    h.set_threads(args.threads)
    t0 = time.perf_counter()
    seeds = [
        run_seed(args, int(s), log, screen)
        for screen in args.screens.split(",")
        for s in args.seeds.split(",")
    ]
    memory = memory_curve(args, log) if args.memory_genes else []
    wall = time.perf_counter() - t0
    res = {"seeds": seeds, "memory": memory, "wall_s": wall}
    h.write_results(args, res)
    h.publish(args, "perturbation_round2", report(args, seeds, memory, wall), res)


if __name__ == "__main__":
    main()
