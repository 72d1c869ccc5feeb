"""Batch integration scored with scib-metrics: SCGPT (from scratch) vs. scVI, Harmony and PCA.

    flock /tmp/scvi_scgpt_cpu.lock .venv/bin/python benchmarks/integration_scib.py

Datasets (each method runs on the same cells and the same highly variable genes):

- ``cite``: ``cite_pbmc_2batch.h5mu`` (bundled: ``scvi_scgpt.datasets.cite_pbmc_2batch()``),
  RNA counts of 400 PBMCs from two 10x CITE-seq runs (``pbmc10k`` / ``pbmc5k``). Silver
  coarse cell types come from the antibody panel (see :func:`silver_labels`); cells without a
  clear type are dropped.
- ``synthetic``: 1,500 cells x 1,000 genes, 3 batches x 5 cell types, negative-binomial
  counts with strong batch effects (:mod:`_synthetic_batches`).

Genes: ``--n-hvg`` highly variable genes (scanpy ``seurat_v3`` on counts, per batch); the
same set is used by every method (SCGPT selects it itself through ``n_top_genes`` and the
script checks that it picked the same genes).

Methods:

- **SCGPT**: ``_harness.D64``: d_model 64, 4 layers, 4 heads, d_hid 128, dropout 0.1 (none on
  the attention probabilities, for the fused CPU kernels), from scratch,
  ``train("integration")`` (GEP + GEPC + ECS + DAR + DSBN, zeros included), lr and epochs from
  the command line (no tuning on labels), all cells for training (``train_size=1.0``).
  ``--scgpt-defaults`` passes nothing but the task and the shared HVGs:
  ``train("integration", n_top_genes=...)`` with the preset's from-scratch values, its
  90/10 split of the cells and the best validation epoch restored.
- **scVI**: ``SCVI(n_latent=10)`` (defaults otherwise) on the HVG counts, ``--scvi-epochs``.
- **Harmony**: ``sc.external.pp.harmony_integrate`` on ``X_pca`` (falls back to calling
  ``harmonypy`` directly where scanpy's wrapper fails, and records why), library defaults;
  and **Harmony (20 rounds)**, ``harmonypy`` forced to run all 20 rounds, because harmonypy
  2.x can stop after one round on strongly separated batches.
- **PCA**: 50 components of log-normalised (1e4, log1p), scaled (max 10) HVGs; also the
  pre-integration embedding of the benchmark.

Scoring: ``scib_metrics.benchmark.Benchmarker`` with default metrics, raw (not min-max
scaled) scores; Total = 0.4 x batch correction + 0.6 x bio conservation.
Outputs go to ``benchmarks/output/integration/``. ``--quick``: the CITE data only, SCGPT 1
epoch, scVI 5 epochs (a smoke run).
"""

from __future__ import annotations

import time
from pathlib import Path

import _harness as h
import numpy as np
import pandas as pd

QUICK = {"datasets": ["cite"], "scgpt_epochs": 1, "scvi_epochs": 5}
KEYS = {
    "SCGPT": "X_scGPT",
    "scVI": "X_scVI",
    "Harmony": "X_pca_harmony",
    "Harmony (20 rounds)": "X_pca_harmony20",
    "PCA": "X_pca",
}

# ----------------------------------------------------------------------------- CITE data
# Gating on CLR-normalised antibody counts. A marker is "+" when its 2-component Gaussian
# mixture (fit per batch on the CLR values) gives the high component posterior > 0.5.
GATING_RULE = [
    ("CD4 T", "CD3+ CD19- CD4+ CD8a-"),
    ("CD8 T", "CD3+ CD19- CD8a+ CD4-"),
    ("B", "CD3- CD19+ CD14-"),
    ("CD14 mono", "CD3- CD19- CD14+"),
    ("NK", "CD3- CD19- CD14- CD56+"),
    ("CD16 mono", "CD3- CD19- CD14- CD56- CD16+"),
]
RNA_MARKERS = [
    "CD3E",
    "CD4",
    "CD8A",
    "MS4A1",
    "CD79A",
    "CD14",
    "LYZ",
    "FCGR3A",
    "MS4A7",
    "NKG7",
    "GNLY",
]


def clr(x: np.ndarray) -> np.ndarray:
    """Per-cell centred log-ratio: ``log1p(x) - mean over antibodies of log1p(x)``."""
    lx = np.log1p(x)
    return lx - lx.mean(1, keepdims=True)


def gmm_positive(values: np.ndarray, seed: int = 0) -> tuple[np.ndarray, float]:
    """High-component posterior > 0.5 of a 1-D two-component Gaussian mixture; threshold."""
    from sklearn.mixture import GaussianMixture

    v = values.reshape(-1, 1)
    gm = GaussianMixture(2, random_state=seed, n_init=3).fit(v)
    hi = int(np.argmax(gm.means_.ravel()))
    pos = gm.predict_proba(v)[:, hi] > 0.5
    grid = np.linspace(values.min(), values.max(), 2001).reshape(-1, 1)
    post = gm.predict_proba(grid)[:, hi]
    lo_mean = gm.means_.ravel().min()
    cross = grid.ravel()[(post > 0.5) & (grid.ravel() > lo_mean)]
    return pos, float(cross.min()) if len(cross) else float("nan")


def silver_labels(prot_counts: np.ndarray, names: list[str], batches: np.ndarray):
    """Coarse cell types from the antibody panel (``GATING_RULE``); ``None`` = ambiguous."""
    values = clr(prot_counts)
    markers = ["CD3", "CD4", "CD8a", "CD14", "CD16", "CD56", "CD19"]
    pos = {m: np.zeros(len(values), dtype=bool) for m in markers}
    thresholds = {}
    for b in np.unique(batches):
        sel = batches == b
        for m in markers:
            p, thr = gmm_positive(values[sel, names.index(m)])
            pos[m][sel] = p
            thresholds[f"{b}:{m}"] = thr
    labels = np.full(len(values), None, dtype=object)
    for name, rule in GATING_RULE:
        ok = np.ones(len(values), dtype=bool)
        for term in rule.split():
            marker, sign = term[:-1], term[-1]
            ok &= pos[marker] if sign == "+" else ~pos[marker]
        labels[ok & (labels == None)] = name  # noqa: E711
    return labels, thresholds, pd.DataFrame(values, columns=names)


def load_cite():
    import anndata

    mdata = h.read_dataset("cite_pbmc_2batch.h5mu")
    rna, prot = mdata["rna"], mdata["prot"]
    px = prot.X.toarray() if hasattr(prot.X, "toarray") else np.asarray(prot.X)
    names = [v.split("_")[0] for v in prot.var_names]
    batches = rna.obs["batch"].astype(str).to_numpy()
    labels, thresholds, clr_df = silver_labels(px, names, batches)
    keep = labels != None  # noqa: E711
    adata = anndata.AnnData(rna.X.copy(), obs=rna.obs[["batch"]].copy(), var=rna.var[[]].copy())
    adata.var_names_make_unique()
    adata.obs["batch"] = adata.obs["batch"].astype(str).astype("category")
    adata.obs["cell_type"] = pd.Categorical(labels.astype(str))
    # validation of the silver labels: mean CLR of each antibody and mean log-normalised RNA
    # of classic markers per label (on all cells, ambiguous included)
    xl = h.log_normalize(adata.X)
    genes = [g for g in RNA_MARKERS if g in adata.var_names]
    rna_df = pd.DataFrame(xl[:, [adata.var_names.get_loc(g) for g in genes]], columns=genes)
    lab = pd.Series(labels.astype(str), name="silver_label")
    validation = pd.concat(
        [
            clr_df.groupby(lab.values).mean().add_prefix("ADT_"),
            rna_df.groupby(lab.values).mean().add_prefix("RNA_"),
        ],
        axis=1,
    )
    validation.insert(0, "n_cells", lab.value_counts())
    info = {
        "gating_rule": GATING_RULE,
        "gmm_thresholds_clr": thresholds,
        "label_counts_all": lab.value_counts().to_dict(),
        "label_counts_by_batch": pd.crosstab(lab.values, batches).to_dict(),
        "n_dropped_ambiguous": int((~keep).sum()),
    }
    adata = adata[keep].copy()
    adata.obs["cell_type"] = adata.obs["cell_type"].cat.remove_unused_categories()
    return adata, info, validation


def load_synthetic(seed: int):
    from _synthetic_batches import simulate

    adata = simulate(seed=seed)
    return adata, {"simulation": adata.uns["simulation"]}, None


# ----------------------------------------------------------------------------- methods
def hvg_subset(adata, n_hvg: int):
    import scanpy as sc

    if n_hvg >= adata.n_vars:
        return np.asarray(adata.var_names)
    hvg = sc.pp.highly_variable_genes(
        adata, flavor="seurat_v3", n_top_genes=n_hvg, batch_key="batch", inplace=False
    )
    return np.asarray(adata.var_names[np.asarray(hvg["highly_variable"], dtype=bool)])


def run_pca_harmony(adata, n_pcs: int, seed: int, info: dict):
    import scanpy as sc

    a = adata.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.scale(a, max_value=10)
    sc.pp.pca(a, n_comps=n_pcs, svd_solver="arpack", random_state=seed)
    adata.obsm["X_pca"] = a.obsm["X_pca"].astype(np.float32)
    t0 = time.perf_counter()
    try:
        sc.external.pp.harmony_integrate(a, "batch", basis="X_pca", random_state=seed)
        z = a.obsm["X_pca_harmony"]
        info["harmony_path"] = "sc.external.pp.harmony_integrate"
    except Exception as err:  # noqa: BLE001
        import harmonypy

        info["harmony_path"] = "harmonypy.run_harmony (scanpy wrapper failed)"
        info["harmony_wrapper_error"] = f"{type(err).__name__}: {err}"
        ho = harmonypy.run_harmony(a.obsm["X_pca"], a.obs, "batch", random_state=seed)
        z = np.asarray(ho.Z_corr)
        if z.shape[0] != a.n_obs:  # harmonypy < 2 returns (n_pcs, n_cells)
            z = z.T
    adata.obsm["X_pca_harmony"] = np.asarray(z, dtype=np.float32)
    info["harmony_s"] = time.perf_counter() - t0
    # harmonypy 2.x can declare convergence after one round on strongly separated batches;
    # this variant runs all 20 rounds (epsilon below any objective change)
    import harmonypy

    ho = harmonypy.run_harmony(
        a.obsm["X_pca"],
        a.obs,
        "batch",
        random_state=seed,
        max_iter_harmony=20,
        epsilon_harmony=-np.inf,
        verbose=False,
    )
    z20 = np.asarray(ho.Z_corr)
    adata.obsm["X_pca_harmony20"] = np.asarray(
        z20 if z20.shape[0] == a.n_obs else z20.T, dtype=np.float32
    )


def run_scvi(adata, n_latent: int, epochs: int, seed: int) -> dict:
    import scvi

    scvi.settings.seed = seed
    a = adata.copy()
    scvi.model.SCVI.setup_anndata(a, layer="counts", batch_key="batch")
    model = scvi.model.SCVI(a, n_latent=n_latent)
    t0 = time.perf_counter()
    model.train(
        max_epochs=epochs, enable_progress_bar=False, logger=False, enable_checkpointing=False
    )
    fit = time.perf_counter() - t0
    adata.obsm["X_scVI"] = model.get_latent_representation().astype(np.float32)
    hist = model.history
    elbo = float(hist["elbo_train"].iloc[-1, 0]) if "elbo_train" in hist else None
    return {"fit_s": fit, "epochs": epochs, "n_latent": n_latent, "final_elbo_train": elbo}


def run_scgpt(adata_full, hvgs, args, seed: int) -> tuple[np.ndarray, dict]:
    import scvi

    from scvi_scgpt import SCGPT

    scvi.settings.seed = seed
    a = adata_full.copy()
    SCGPT.setup_anndata(a, layer="counts", batch_key="batch")
    model = SCGPT(a, max_seq_len=1201, **{**h.D64, "n_layers": args.scgpt_layers})
    t0 = time.perf_counter()
    n_top_genes = len(hvgs) if len(hvgs) < a.n_vars else None
    if args.scgpt_defaults:
        model.train(
            "integration",
            n_top_genes=n_top_genes,
            enable_progress_bar=False,
            enable_checkpointing=False,
        )
        values = model.training_task_["hyperparameters"]
        args.scgpt_epochs, args.scgpt_lr = values["max_epochs"], values["lr"]
        args.scgpt_batch_size = values["batch_size"]
    else:
        model.train(
            "integration",
            max_epochs=args.scgpt_epochs,
            lr=args.scgpt_lr,
            batch_size=args.scgpt_batch_size,
            n_top_genes=n_top_genes,
            train_size=1.0,
            enable_progress_bar=False,
            logger=False,
            enable_checkpointing=False,
        )
    fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    emb = model.get_latent_representation(a, batch_size=64)
    embed_s = time.perf_counter() - t0
    subset = model.gene_subset_
    same = subset is None or set(subset) == set(hvgs)
    hist = {
        k: [float(x) for x in v.iloc[:, 0].to_numpy()]
        for k, v in (model.history_ or {}).items()
        if k.endswith("_train") and k.split("_")[0] in ("train", "gep", "gepc", "ecs", "dar")
    }
    return emb, {
        "fit_s": fit,
        "embed_s": embed_s,
        "epochs": args.scgpt_epochs,
        "lr": args.scgpt_lr,
        "batch_size": args.scgpt_batch_size,
        "n_genes_trained": len(subset) if subset is not None else a.n_vars,
        "same_genes_as_baselines": bool(same),
        "n_params": int(sum(p.numel() for p in model.module.parameters())),
        "history": hist,
        "defaults": bool(args.scgpt_defaults),
        "training_task": model.training_task_,
    }


# ----------------------------------------------------------------------------- scoring
def benchmark(adata, out_dir: Path, tag: str) -> pd.DataFrame:
    from scib_metrics.benchmark import Benchmarker

    bm = Benchmarker(
        adata,
        batch_key="batch",
        label_key="cell_type",
        embedding_obsm_keys=list(KEYS.values()),
        pre_integrated_embedding_obsm_key="X_pca",
        n_jobs=1,
        progress_bar=False,
    )
    bm.benchmark()
    df = bm.get_results(min_max_scale=False)
    df.to_csv(out_dir / f"{tag}_scib_results.csv")
    try:
        import matplotlib.pyplot as plt

        bm.plot_results_table(min_max_scale=False, show=False, save_dir=str(out_dir))
        src = out_dir / "scib_results.svg"
        if src.exists():
            src.replace(out_dir / f"{tag}_scib_results.svg")
        plt.close("all")
    except Exception as err:  # noqa: BLE001
        print(f"[{tag}] plot_results_table failed: {type(err).__name__}: {err}", flush=True)
    return df


# ----------------------------------------------------------------------------- main
def run_dataset(name: str, args) -> dict:
    from scvi_scgpt.pl import embedding_panels

    timings: dict = {}
    t0 = time.perf_counter()
    if name == "cite":
        adata, data_info, validation = load_cite()
        n_hvg = args.cite_hvg
    else:
        adata, data_info, validation = load_synthetic(args.seed)
        n_hvg = args.synthetic_hvg
    adata.layers["counts"] = adata.X.copy()
    if validation is not None:
        validation.round(3).to_csv(args.out / f"{name}_silver_label_validation.csv")
    hvgs = hvg_subset(adata, n_hvg)
    adata_full = adata
    adata = adata_full[:, hvgs].copy()
    timings["load_s"] = time.perf_counter() - t0
    print(
        f"[{name}] {adata.n_obs} cells, {adata.n_vars} HVGs; labels "
        f"{adata.obs['cell_type'].value_counts().to_dict()}",
        flush=True,
    )

    info: dict = {}
    t0 = time.perf_counter()
    run_pca_harmony(adata, args.n_pcs, args.seed, info)
    timings["pca_harmony_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scvi_info = run_scvi(adata, args.scvi_latent, args.scvi_epochs, args.seed)
    timings["scvi_s"] = time.perf_counter() - t0
    print(f"[{name}] scVI done in {timings['scvi_s']:.0f} s", flush=True)
    t0 = time.perf_counter()
    emb, scgpt_info = run_scgpt(adata_full, hvgs, args, args.seed)
    adata.obsm["X_scGPT"] = emb
    timings["scgpt_s"] = time.perf_counter() - t0
    print(
        f"[{name}] SCGPT done in {timings['scgpt_s']:.0f} s "
        f"(same genes as baselines: {scgpt_info['same_genes_as_baselines']})",
        flush=True,
    )
    t0 = time.perf_counter()
    df = benchmark(adata, args.out, name)
    timings["scib_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    fig = embedding_panels(
        adata, list(KEYS.values()), ["batch", "cell_type"], titles=list(KEYS), seed=args.seed
    )
    fig.suptitle(f"{name}: UMAP of each embedding (top: batch, bottom: label)")
    h.save_figure(fig, args.out / f"{name}_umap.png", dpi=110)
    timings["umap_s"] = time.perf_counter() - t0
    print(f"[{name}] scib {timings['scib_s']:.0f} s, UMAP {timings['umap_s']:.0f} s", flush=True)

    scores = df.drop(index="Metric Type").astype(float)
    inv = {v: k for k, v in KEYS.items()}
    scores.index = [inv.get(i, i) for i in scores.index]
    metric_type = df.loc["Metric Type"].to_dict()
    return {
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "label_counts": adata.obs["cell_type"].value_counts().to_dict(),
        "batch_counts": adata.obs["batch"].value_counts().to_dict(),
        "data": data_info,
        "harmony": info,
        "scvi": scvi_info,
        "scgpt": scgpt_info,
        "scores": scores.to_dict(orient="index"),
        "metric_type": metric_type,
        "timings_s": timings,
    }


def results_table(res: dict) -> str:
    scores = pd.DataFrame(res["scores"]).T
    agg = ["Total", "Batch correction", "Bio conservation"]
    others = [c for c in scores.columns if c not in agg]
    bio = [c for c in others if res["metric_type"].get(c) == "Bio conservation"]
    batch = [c for c in others if res["metric_type"].get(c) == "Batch correction"]
    cols = agg + bio + batch
    rows = [[m] + [f"{scores.loc[m, c]:.3f}" for c in cols] for m in KEYS if m in scores.index]
    header = ["method"] + [
        c if c in agg else f"{c} ({'bio' if c in bio else 'batch'})" for c in cols
    ]
    return h.markdown_table(header, rows)


def main() -> None:
    p = h.parser(
        __doc__,
        "integration",
        quick_help="CITE only, SCGPT 1 epoch, scVI 5 (a smoke run)",
        results_md=True,
    )
    p.add_argument(
        "--datasets", nargs="+", default=["cite", "synthetic"], choices=["cite", "synthetic"]
    )
    h.add_options(
        p,
        cite_hvg=1000,
        synthetic_hvg=500,
        n_pcs=50,
        scgpt_epochs=15,
        scgpt_lr=1e-3,
        scgpt_batch_size=32,
        scvi_epochs=200,
        scvi_latent=10,
        scgpt_layers=(4, "SCGPT transformer layers (the rest of the shape is _harness.D64)"),
    )
    p.add_argument(
        "--scgpt-defaults",
        action="store_true",
        help="train SCGPT with train('integration') and only the shared HVGs given",
    )
    args = h.parse(p, quick=QUICK)

    h.setup_logging("integration_scib")
    h.set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    results = {}
    for name in args.datasets:
        results[name] = run_dataset(name, args)
        results[name]["markdown_table"] = results_table(results[name])
        print(f"\n### {name}\n\n{results[name]['markdown_table']}\n", flush=True)
    wall = time.perf_counter() - t_start
    for name, res in results.items():
        s = res["scores"]
        res["target_scgpt_total_ge_pca"] = bool(s["SCGPT"]["Total"] >= s["PCA"]["Total"])
        print(
            f"[{name}] SCGPT Total {s['SCGPT']['Total']:.3f} vs PCA {s['PCA']['Total']:.3f} "
            f"(scVI {s['scVI']['Total']:.3f}, Harmony {s['Harmony']['Total']:.3f})"
        )
    shape = {**h.D64, "n_layers": args.scgpt_layers}
    payload = {"scgpt_architecture": shape, "datasets": results, "wall_s": wall}
    h.write_results(args, payload)
    print(f"total {wall:.0f} s", flush=True)
    if args.scgpt_defaults:
        payload["machine"] = h.machine_info()
        h.publish(args, SECTION, render_defaults(payload), payload)


#: The RESULTS.md section of a ``--scgpt-defaults`` run.
SECTION = "integration_count_decoder"


def render_defaults(payload: dict) -> str:
    """Markdown of a ``--scgpt-defaults`` run: per dataset, the scores and training times."""
    lines = [
        "## Integration with the count decoder (issue #29)",
        "",
        h.machine_line(payload),
        "",
        "`benchmarks/integration_scib.py --scgpt-defaults`: SCGPT from scratch with "
        "`train('integration')` and nothing given but the shared HVGs (the from-scratch "
        "defaults: the count objective, 128 expressed genes per cell, constant lr 1e-3, about "
        f"2,000 steps), shape {payload['scgpt_architecture']}; scVI `n_latent=10`, "
        "200 epochs; Harmony (harmonypy defaults, and forced to 20 rounds); PCA. "
        "scib-metrics Benchmarker, raw scores.",
    ]
    for name, res in payload["datasets"].items():
        fit = {
            "SCGPT": res["scgpt"]["fit_s"],
            "scVI": res["scvi"]["fit_s"],
            "Harmony": res["harmony"].get("harmony_s"),
        }
        times = ", ".join(f"{k} {v:.0f} s" for k, v in fit.items() if v is not None)
        lines += [
            "",
            f"### {name} ({res['n_cells']:,} cells, {res['n_genes']:,} genes)",
            "",
            res["markdown_table"],
            "",
            f"Training time: {times}.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
