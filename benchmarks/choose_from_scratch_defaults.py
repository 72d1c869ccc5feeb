"""Choose the from-scratch training defaults of the task presets on training cells only.

    flock /tmp/scvi_scgpt_cpu.lock .venv/bin/python benchmarks/choose_from_scratch_defaults.py

The procedure behind ``TaskPreset.from_scratch`` (issue #12). Nothing here reads a test cell
or, for integration, a cell-type label.

Annotation (``--part annotation``)
----------------------------------
- Data: the bundled ``datasets.pbmc68k_700()`` (700 cells x 765 HVGs, counts,
  ``bulk_labels``). The outer split is the annotation benchmark's seed-0 stratified 70/30
  split (``annotation_pbmc.stratified_split``); only its 491 training cells are used.
- Inner splits: ``--inner-seeds`` stratified 80/20 splits of those training cells
  (split seed 1000 + inner seed).
- Model: the new user's model of issue #12, ``SCGPT(train, d_model=64, n_layers=2,
  n_heads=4, d_hid=64)`` (everything else at its default); ``scvi.settings.seed`` = inner
  seed.
- Grid: ``lr`` in ``--lrs`` x ``max_epochs`` in ``--epochs``, the preset's other values
  (batch 32, StepLR 0.9 per epoch). The step schedule does not depend on the run length, so
  one run of ``max(--epochs)`` epochs per lr gives every shorter run too: the inner
  validation cells are scored after each candidate epoch count (``train_size=1.0``, no
  best-epoch selection, so the score is that of the run length itself).
- Criterion: inner-validation macro-F1, mean over the inner splits; ties (within 0.005) go
  to fewer epochs, then to the smaller lr.

Integration (``--part integration``)
------------------------------------
- Data: the bundled ``datasets.cite_pbmc_2batch()`` RNA modality (two 10x runs as batches);
  no cell-type label is read.
- Model: ``SCGPT(adata, d_model=64, n_layers=2, n_heads=4, d_hid=64)``;
  ``train("integration", n_top_genes=--cite-hvg)`` with its 90/10 split of the cells.
- Grid: ``lr`` in ``--int-lrs`` x ``max_epochs`` in ``--int-epochs``.
- Criterion (label-free): the validation GEP MSE of the restored epoch relative to the
  per-gene-mean predictor on the same validation minibatches (``training_task_
  ["trivial_check"]``; below 1 = the model has left the per-gene-mean plateau); lowest
  ratio wins, ties (within 0.01) to fewer epochs.

Writes ``<--out>/results.json`` with every score and prints the chosen values.
"""

from __future__ import annotations

import time

import _harness as h
import numpy as np
from annotation_pbmc import stratified_split

LABEL_KEY = "bulk_labels"
ARCH = {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_hid": 64}
QUICK = {"inner_seeds": [0], "lrs": [1e-3], "epochs": [1, 2], "int_lrs": [1e-3], "int_epochs": [1]}


# ----------------------------------------------------------------------------- annotation
def annotation_run(a_tr, a_val, y_val, lr: float, epochs: list[int], seed: int) -> dict:
    """One run of ``max(epochs)`` epochs; inner-validation scores after each candidate."""
    import scvi
    from lightning.pytorch import Callback
    from sklearn.metrics import accuracy_score, f1_score, log_loss

    from scvi_scgpt import SCGPT

    scvi.settings.seed = seed
    SCGPT.setup_anndata(a_tr, labels_key=LABEL_KEY)
    model = SCGPT(a_tr, **ARCH)
    scores: dict[int, dict] = {}
    wanted = set(epochs)

    class Score(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            epoch = trainer.current_epoch + 1
            if epoch not in wanted:
                return
            probs = model.predict(a_val, return_probabilities=True, batch_size=128)
            pred = probs.columns.to_numpy()[probs.to_numpy().argmax(1)].astype(str)
            full = probs.reindex(columns=sorted(set(probs.columns) | set(y_val)), fill_value=0)
            scores[epoch] = {
                "macro_f1": float(f1_score(y_val, pred, average="macro", zero_division=0)),
                "accuracy": float(accuracy_score(y_val, pred)),
                "log_loss": float(
                    log_loss(y_val, np.clip(full.to_numpy(), 1e-7, 1), labels=full.columns)
                ),
            }
            pl_module.module.train()

    t0 = time.perf_counter()
    model.train(
        "annotation",
        lr=lr,
        max_epochs=max(epochs),
        train_size=1.0,
        callbacks=[Score()],
        enable_progress_bar=False,
        logger=False,
        enable_checkpointing=False,
    )
    return {"scores": scores, "fit_s": time.perf_counter() - t0}


def choose_annotation(args, log) -> dict:
    """Grid over lr x epochs on inner splits of the seed-0 training cells."""
    from scvi_scgpt import SCGPT, datasets

    adata = datasets.pbmc68k_700()
    adata.obs[LABEL_KEY] = adata.obs[LABEL_KEY].astype(str).astype("category")
    y = adata.obs[LABEL_KEY].to_numpy().astype(str)
    train, _test = stratified_split(y, 0.3, 0)  # the benchmark's seed-0 split; test unused
    a_train, y_train = adata[train].copy(), y[train]
    runs = []
    for inner in args.inner_seeds:
        tr, val = stratified_split(y_train, 0.2, 1000 + inner)
        a_tr, a_val = a_train[tr].copy(), a_train[val].copy()
        SCGPT.setup_anndata(a_val)
        values, counts = np.unique(y_train[tr], return_counts=True)
        majority = float(np.mean(y_train[val] == values[np.argmax(counts)]))
        for lr in args.lrs:
            got = annotation_run(a_tr, a_val, y_train[val], lr, args.epochs, inner)
            runs.append({"inner_seed": inner, "lr": lr, "majority_rate": majority, **got})
            log(f"annotation inner {inner} lr {lr:g} ({got['fit_s']:.0f} s): {got['scores']}")
    table = []
    for lr in args.lrs:
        for ep in args.epochs:
            got = [r["scores"][ep] for r in runs if r["lr"] == lr]
            table.append(
                {"lr": lr, "epochs": ep, "n_inner": len(got)}
                | {k: float(np.mean([g[k] for g in got])) for k in got[0]}
            )
    best = max(table, key=lambda r: (round(r["macro_f1"] / 0.005), -r["epochs"], -r["lr"]))
    return {"runs": runs, "table": table, "chosen": best}


# ----------------------------------------------------------------------------- integration
def choose_integration(args, log) -> dict:
    """Grid over lr x epochs on the CITE RNA cells, scored against the per-gene mean."""
    import scvi

    from scvi_scgpt import SCGPT, datasets

    mdata = datasets.cite_pbmc_2batch()
    adata = mdata.mod["rna"].copy()
    adata.obs["batch"] = mdata.obs["batch"].reindex(adata.obs_names).astype(str).to_numpy()
    table = []
    for lr in args.int_lrs:
        for ep in args.int_epochs:
            scvi.settings.seed = args.seed
            SCGPT.setup_anndata(adata, batch_key="batch")
            model = SCGPT(adata, **ARCH)
            t0 = time.perf_counter()
            model.train(
                "integration",
                lr=lr,
                max_epochs=ep,
                n_top_genes=args.cite_hvg,
                enable_progress_bar=False,
                enable_checkpointing=False,
            )
            check = model.training_task_.get("trivial_check") or {}
            row = {
                "lr": lr,
                "epochs": ep,
                "fit_s": time.perf_counter() - t0,
                "gep_mse": check.get("value"),
                "per_gene_mean_mse": check.get("trivial"),
                "ratio": check["value"] / check["trivial"] if check else float("nan"),
                "best_epoch": model.training_task_.get("best_epoch"),
            }
            table.append(row)
            log(f"integration lr {lr:g} epochs {ep}: {row}")
    best = min(table, key=lambda r: (round(r["ratio"] / 0.01), r["epochs"], r["lr"]))
    return {"table": table, "chosen": best}


def main() -> None:
    """Run the chosen parts and write the JSON."""
    p = h.parser(__doc__, "choose_defaults", quick_help="one inner split, 2 epochs (smoke run)")
    p.add_argument("--part", choices=["annotation", "integration", "both"], default="annotation")
    p.add_argument("--inner-seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3])
    p.add_argument("--epochs", type=int, nargs="+", default=[20, 40])
    p.add_argument("--int-lrs", type=float, nargs="+", default=[1e-4, 1e-3])
    p.add_argument("--int-epochs", type=int, nargs="+", default=[15, 40])
    h.add_options(p, cite_hvg=1000)
    args = h.parse(p, quick=QUICK)
    log = h.setup_logging("choose_defaults")
    h.set_threads(args.threads)
    t0 = time.perf_counter()
    result: dict = {"architecture": ARCH}
    if args.part in ("annotation", "both"):
        result["annotation"] = choose_annotation(args, log)
        log(f"annotation chosen: {result['annotation']['chosen']}")
    if args.part in ("integration", "both"):
        result["integration"] = choose_integration(args, log)
        log(f"integration chosen: {result['integration']['chosen']}")
    result["wall_s"] = time.perf_counter() - t0
    h.write_results(args, result)


if __name__ == "__main__":
    main()
