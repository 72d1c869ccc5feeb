"""Multi-omic integration scored with scib-metrics: SCGPT vs. totalVI, WNN and PCA.

    flock /tmp/scvi_scgpt_cpu.lock .venv/bin/python benchmarks/multiomic_cite.py

Three experiments per seed, every method on the same cells and the same features:

- **paired** CITE-seq: the bundled ``cite_pbmc_2batch`` (400 PBMCs, two 10x runs = batches,
  RNA + 14 antibodies). Genes: those of the census vocabulary, of which ``--n-hvg`` highly
  variable ones (seurat_v3 on counts, per batch; SCGPT picks them itself through
  ``n_top_genes`` and the script checks it picked the same). Methods:
  SCGPT multiomic (``train("multiomic")``: RNA + ``p_`` protein tokens with modality tokens),
  SCGPT RNA-only (``train("integration")`` on the RNA), totalVI, WNN (muon), PCA of RNA PCs +
  CLR proteins, and PCA of the RNA alone;
- **mosaic**: the same cells with the proteins of one batch (``--withhold``) withheld. SCGPT:
  those cells are absent from the protein modality, and ``tl.measured_modalities`` is the
  DAR batch key (here the same partition as the batch). totalVI: their protein counts are
  zeros, which its protein batch mask treats as unmeasured. Also scored: kNN (k=10) label
  transfer from the protein batch to the RNA-only batch;
- **atac**: a synthetic RNA + ATAC MuData (``_synthetic_multiome.py``: ``--atac-cells``
  cells, 2 batches, 5 types, 400 genes, 2,000 peaks, types 0/1 separated by the peaks more
  than by the RNA).
  SCGPT multiomic on every gene and ``--atac-peaks`` highly variable peaks (binarised
  variance) vs PCA (RNA), LSI (ATAC) and PCA of RNA PCs + LSI.

SCGPT: the harness's D64 shape (d_model 64, 4 layers, 4 heads, d_hid 128, dropout 0.1, no
attention dropout, for the fused CPU kernels), from scratch; every SCGPT fit gets the same
epochs, lr and batch size (``--scgpt-*``) and otherwise its preset (multiomic: GEP + GEPC +
DAR on the expressed features, StepLR 0.95; integration: GEP + GEPC + ECS + DAR + DSBN), the
preset's 9:1 validation split and best validation epoch. The RNA-only fit tokenizes the
expressed genes only, as the multiomic fit does, so that the two differ by the proteins (and
the objectives); ``--rna-zeros`` restores the integration preset's zero tokens. totalVI:
``TOTALVI(n_latent=20)``, ``--totalvi-epochs``. WNN: ``muon.pp.neighbors`` of L2-normalised
RNA PCs and CLR proteins (20 neighbours per modality, a 90-neighbour WNN graph).

Scoring (cells with a silver label, ``obs["adt_cell_type"]`` without "ambiguous": 383):
scib-metrics ``Benchmarker``, default metrics plus Leiden NMI/ARI, raw scores, Total = 0.4 x
batch + 0.6 x bio; the pre-integration embedding is the joint PCA. WNN is a graph: it is
scored on the graph metrics only (Leiden NMI/ARI, cLISI, iLISI, kBET, graph connectivity)
and every method also gets graph-only aggregates ("... (graph)"). Mean ± sd over ``--seeds``.
``--quick``: one seed, SCGPT 1 epoch, totalVI 10, a 300-cell synthetic set (a smoke run).
"""

from __future__ import annotations

import shutil
import time

import _harness as h
import _multiomic_methods as mm
import _multiomic_scoring as ms
import numpy as np
import pandas as pd
from integration_scib import hvg_subset

QUICK = {"seeds": [0], "scgpt_epochs": 1, "totalvi_epochs": 10, "atac_cells": 300}
SHAPE = h.D64
#: Mosaic: kNN (k=10) label accuracy of the RNA-only batch's cells from the protein batch's.
TRANSFER = "Label transfer to the RNA-only batch"


def load_cite():
    """RNA (census genes) and protein counts, obs (batch, cell_type) and the scored cells."""
    from scvi_scgpt.data import GeneVocab

    mdata = h.read_dataset("cite_pbmc_2batch.h5mu")
    rna, prot = mdata["rna"], mdata["prot"]
    in_vocab = np.isin(rna.var_names, GeneVocab.census().tokens)
    rna = rna[:, in_vocab].copy()
    obs = pd.DataFrame(index=rna.obs_names)
    obs["batch"] = pd.Categorical(rna.obs["batch"].astype(str))
    obs["cell_type"] = pd.Categorical(rna.obs["adt_cell_type"].astype(str))
    rna.obs, prot = obs.copy(), prot[rna.obs_names].copy()
    prot.obs = obs.copy()
    return rna, prot, obs, (obs["cell_type"] != "ambiguous").to_numpy()


def _mudata(mods: dict, obs: pd.DataFrame):
    import mudata as md

    mdata = md.MuData({k: v.copy() for k, v in mods.items()})
    for key in obs.columns:
        mdata.obs[key] = pd.Categorical(obs[key].reindex(mdata.obs_names).astype(str))
    return mdata


def _train(args, n_top) -> dict:
    return {
        "max_epochs": args.scgpt_epochs,
        "lr": args.scgpt_lr,
        "batch_size": args.scgpt_batch_size,
        "n_top_genes": n_top,
    }


def _scgpt_genes(model, modality: str = "RNA") -> set:
    """The trained features of one modality of a multiomic model."""
    specs = [s for s in model._specs() if s.name == modality]
    _, tokens = model._modality_vocab_ids(model.adata, specs[0])
    return set(model.gene_subset_) & set(tokens)


def paired(args, seed, rna, prot, obs, keep, hvgs, log):
    embs, info, coords = {}, {}, {}
    mdata = _mudata({"rna": rna, "prot": prot}, obs)
    setup = {"batch_key": "batch", "modalities": mm.CITE_MODALITIES}
    train = _train(args, {"RNA": len(hvgs)})
    embs["SCGPT multiomic"], info["SCGPT multiomic"], model = mm.run_scgpt(
        mdata, task="multiomic", setup=setup, shape=SHAPE, train=train, seed=seed
    )
    info["SCGPT multiomic"]["same_genes_as_baselines"] = _scgpt_genes(model) == set(hvgs)
    log(f"seed {seed}: SCGPT multiomic {info['SCGPT multiomic']['fit_s']:.0f} s")
    a = rna.copy()
    embs["SCGPT RNA-only"], info["SCGPT RNA-only"], model = mm.run_scgpt(
        a,
        task="integration",
        setup={"batch_key": "batch"},
        shape=SHAPE,
        train={**_train(args, len(hvgs)), "tokenizer": {"include_zero_genes": args.rna_zeros}},
        seed=seed,
    )
    info["SCGPT RNA-only"]["same_genes_as_baselines"] = set(model.gene_subset_) == set(hvgs)
    log(f"seed {seed}: SCGPT RNA-only {info['SCGPT RNA-only']['fit_s']:.0f} s")
    embs["totalVI"], info["totalVI"] = mm.run_totalvi(
        rna[:, hvgs], prot, epochs=args.totalvi_epochs, n_latent=20, seed=seed
    )
    log(f"seed {seed}: totalVI {info['totalVI']['fit_s']:.0f} s")
    pcs = mm.rna_pcs(rna[:, hvgs].X, args.n_pcs, seed)
    clr = mm.clr_scaled(prot.X)
    embs["PCA (RNA + protein)"] = mm.joint_pca([pcs, clr], args.n_pcs, seed)
    embs["PCA (RNA)"] = pcs
    graph, wnn_umap, info["WNN"] = mm.run_wnn(pcs[keep], clr[keep], n_neighbors=90, seed=seed)
    scored = {k: v[keep] for k, v in embs.items()}
    table, kinds = ms.score(
        obs[keep], scored, scored["PCA (RNA + protein)"], graphs={"WNN": graph}
    )
    if args.figures:
        coords = {k: ms.umap_of(v, seed) for k, v in scored.items() if k != "PCA (RNA)"}
        coords["WNN"] = wnn_umap
    order = ["SCGPT multiomic", "SCGPT RNA-only", "totalVI", "WNN", "PCA (RNA + protein)"]
    return table.loc[[*order, "PCA (RNA)"]], kinds, info, coords, embs


def mosaic(args, seed, rna, prot, obs, keep, hvgs, paired_embs, log):
    from scvi_scgpt import tl

    measured_batch = obs["batch"] != args.withhold
    embs, info, extra = {}, {}, {}
    mdata = _mudata({"rna": rna, "prot": prot[measured_batch.to_numpy()]}, obs)
    mdata.obs["measured"] = tl.measured_modalities(mdata, mm.CITE_MODALITIES)
    info["measured_counts"] = mdata.obs["measured"].value_counts().to_dict()
    same = pd.crosstab(mdata.obs["measured"], mdata.obs["batch"]).to_dict()
    info["measured_vs_batch"] = same
    setup = {"batch_key": "measured", "modalities": mm.CITE_MODALITIES}
    train = _train(args, {"RNA": len(hvgs)})
    embs["SCGPT multiomic (mosaic)"], info["SCGPT multiomic (mosaic)"], _ = mm.run_scgpt(
        mdata, task="multiomic", setup=setup, shape=SHAPE, train=train, seed=seed
    )
    log(f"seed {seed}: SCGPT mosaic {info['SCGPT multiomic (mosaic)']['fit_s']:.0f} s")
    zeroed = prot.copy()
    x = zeroed.X.toarray() if hasattr(zeroed.X, "toarray") else np.asarray(zeroed.X)
    x[~measured_batch.to_numpy()] = 0
    zeroed.X = x
    embs["totalVI (mosaic)"], info["totalVI (mosaic)"] = mm.run_totalvi(
        rna[:, hvgs], zeroed, epochs=args.totalvi_epochs, n_latent=20, seed=seed
    )
    embs["SCGPT RNA-only"] = paired_embs["SCGPT RNA-only"]
    embs["PCA (RNA)"] = paired_embs["PCA (RNA)"]
    scored = {k: v[keep] for k, v in embs.items()}
    table, kinds = ms.score(obs[keep], scored, scored["PCA (RNA)"])
    from scvi_scgpt.tl import knn_label_transfer

    ref, query = (measured_batch.to_numpy() & keep), (~measured_batch.to_numpy() & keep)
    truth = obs["cell_type"].astype(str).to_numpy()
    for name, emb in embs.items():
        pred, _ = knn_label_transfer(emb[ref], truth[ref], emb[query], n_neighbors=10)
        extra[name] = float(np.mean(np.asarray(pred, dtype=str) == truth[query]))
    table.insert(0, TRANSFER, pd.Series(extra))
    kinds[TRANSFER] = "Mosaic"
    coords = {}
    if args.figures:
        coords = {k: ms.umap_of(v, seed) for k, v in scored.items() if k != "PCA (RNA)"}
    return table, kinds, info, coords


def atac(args, seed, log):
    from _synthetic_multiome import simulate_multiome

    mdata = simulate_multiome(n_cells=args.atac_cells, seed=seed)
    obs = mdata.obs[["batch", "cell_type"]].copy()
    n_genes = mdata["rna"].n_vars
    setup = {"batch_key": "batch", "modalities": {"rna_layer": "rna", "atac_layer": "atac"}}
    train = _train(args, {"RNA": n_genes, "ATAC": args.atac_peaks})
    embs, info = {}, {}
    embs["SCGPT multiomic"], info["SCGPT multiomic"], model = mm.run_scgpt(
        mdata, task="multiomic", setup=setup, shape=SHAPE, train=train, seed=seed
    )
    peaks = _scgpt_genes(model, "ATAC")
    info["SCGPT multiomic"]["n_peaks_trained"] = len(peaks)
    info["SCGPT multiomic"]["peak_example"] = sorted(peaks)[:2]
    log(f"seed {seed}: SCGPT RNA + ATAC {info['SCGPT multiomic']['fit_s']:.0f} s")
    rna, peaks_x = mdata["rna"][obs.index], mdata["atac"][obs.index]
    pcs = mm.rna_pcs(rna.X, args.n_pcs, seed)
    lsi = mm.lsi(peaks_x.X, args.n_pcs, seed)
    embs["PCA (RNA) + LSI (ATAC)"] = mm.joint_pca([pcs, lsi], args.n_pcs, seed)
    embs["PCA (RNA)"], embs["LSI (ATAC)"] = pcs, lsi
    table, kinds = ms.score(obs, embs, embs["PCA (RNA) + LSI (ATAC)"])
    coords = {k: ms.umap_of(v, seed) for k, v in embs.items()} if args.figures else {}
    return table, kinds, info, coords, obs, mdata.uns["simulation"]


def _figure(coords, obs, title, path):
    fig = ms.umap_panels(coords, obs, ["batch", "cell_type"], title)
    return h.save_figure(fig, path, dpi=110)


def main() -> None:
    p = h.parser(
        __doc__,
        "multiomic",
        quick_help="one seed, SCGPT 1 epoch, totalVI 10, 300 synthetic cells (a smoke run)",
        results_md=True,
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--experiments",
        nargs="+",
        default=["paired", "mosaic", "atac"],
        choices=["paired", "mosaic", "atac"],
    )
    h.add_options(
        p,
        n_hvg=(1200, "RNA HVGs (the multiomic preset's count)"),
        n_pcs=30,
        scgpt_epochs=(15, "epochs of every SCGPT fit (presets: multiomic 25, integration 15)"),
        scgpt_lr=1e-3,
        scgpt_batch_size=(16, "the multiomic preset's batch size"),
        totalvi_epochs=(400, "scvi-tools' default for a data set this small"),
        withhold=("pbmc5k", "mosaic: the batch whose proteins are withheld"),
        atac_cells=600,
        atac_peaks=(1000, "highly variable peaks SCGPT keeps of the 2,000"),
    )
    p.add_argument(
        "--rna-zeros",
        action="store_true",
        help="SCGPT RNA-only with the integration preset's zero tokens (default: the "
        "expressed genes only, as the multiomic run; 4x the tokens)",
    )
    args = h.parse(p, quick=QUICK)
    args.figures = True
    log = h.setup_logging("multiomic_cite")
    h.set_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if "mosaic" in args.experiments and "paired" not in args.experiments:
        args.experiments = ["paired", *args.experiments]
    t_start = time.perf_counter()
    rna, prot, obs, keep = load_cite()
    hvgs = list(hvg_subset(rna, args.n_hvg))
    log(f"CITE: {rna.n_obs} cells ({keep.sum()} scored), {rna.n_vars} genes, {len(hvgs)} HVGs")
    runs: dict = {e: {"tables": [], "info": []} for e in args.experiments}
    for i, seed in enumerate(args.seeds):
        args.figures = i == 0
        t0 = time.perf_counter()
        if "paired" in args.experiments:
            table, kinds, info, coords, embs = paired(args, seed, rna, prot, obs, keep, hvgs, log)
            runs["paired"].update(kinds=kinds)
            runs["paired"]["tables"].append(table)
            runs["paired"]["info"].append(info)
            if coords:
                title = "Paired CITE-seq (400 PBMCs, 2 runs): UMAPs"
                _figure(coords, obs[keep], title, args.out / "multiomic_cite_umap.png")
        if "mosaic" in args.experiments:
            table, kinds, info, coords = mosaic(args, seed, rna, prot, obs, keep, hvgs, embs, log)
            runs["mosaic"].update(kinds=kinds)
            runs["mosaic"]["tables"].append(table)
            runs["mosaic"]["info"].append(info)
            if coords:
                title = f"Mosaic CITE-seq ({args.withhold} without proteins): UMAPs"
                _figure(coords, obs[keep], title, args.out / "multiomic_mosaic_umap.png")
        if "atac" in args.experiments:
            table, kinds, info, coords, a_obs, sim = atac(args, seed, log)
            runs["atac"].update(kinds=kinds, simulation=sim)
            runs["atac"]["tables"].append(table)
            runs["atac"]["info"].append(info)
            if coords:
                title = "Synthetic RNA + ATAC: UMAPs"
                _figure(coords, a_obs, title, args.out / "multiomic_atac_umap.png")
        log(f"seed {seed} done in {time.perf_counter() - t0:.0f} s")
    wall = time.perf_counter() - t_start
    payload = {"scgpt_shape": SHAPE, "n_hvg": len(hvgs), "wall_s": wall, "experiments": {}}
    for name, run in runs.items():
        mean, sd = ms.mean_sd(run["tables"])
        run["markdown"] = ms.markdown(mean, sd, run["kinds"], len(run["tables"]))
        print(f"\n### {name}\n\n{run['markdown']}\n", flush=True)
        payload["experiments"][name] = {
            "mean": mean.to_dict(orient="index"),
            "sd": sd.to_dict(orient="index"),
            "per_seed": [t.to_dict(orient="index") for t in run["tables"]],
            "metric_type": run["kinds"],
            "info": run["info"],
            "simulation": run.get("simulation"),
            "markdown": run["markdown"],
        }
    h.write_results(args, payload)
    if args.results_md is not None:
        from _multiomic_report import report

        figures = h.BENCH_DIR / "figures"
        for png in sorted(args.out.glob("multiomic_*_umap.png")):
            shutil.copy(png, figures / png.name)
        h.publish(args, "multiomic", report(args, payload, runs, wall), payload, echo=False)
        log(f"wrote the 'multiomic' section of {args.results_md}")
    log(f"total {wall:.0f} s")


if __name__ == "__main__":
    main()
