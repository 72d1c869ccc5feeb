"""Methods of the multi-omic benchmark (``multiomic_cite.py``): SCGPT, totalVI, WNN, PCA.

Each ``run_*`` takes the data and returns an embedding (or, for WNN, a neighbour graph) with a
dict of facts about the fit. Nothing here chooses a setting by looking at the labels.
"""

from __future__ import annotations

import time

import numpy as np
from integration_scib import clr

#: scvi-tools / Lightning options that keep a benchmark fit quiet and file-free.
QUIET = {"enable_progress_bar": False, "enable_checkpointing": False}
#: ``setup_mudata`` mapping of the CITE data.
CITE_MODALITIES = {"rna_layer": "rna", "protein_layer": "prot"}


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)


# ----------------------------------------------------------------------------- SCGPT
def _history(model) -> dict:
    return {
        k: [float(x) for x in v.iloc[:, 0].to_numpy()]
        for k, v in (model.history_ or {}).items()
        if k.endswith(("_train", "_validation", "loss_epoch"))
    }


def run_scgpt(data, *, task: str, setup: dict, shape: dict, train: dict, seed: int):
    """Fit an SCGPT from scratch on ``data`` (MuData for ``"multiomic"``, else AnnData).

    ``setup`` goes to ``setup_mudata`` / ``setup_anndata``, ``shape`` to the constructor and
    ``train`` to ``model.train(task, ...)``. Returns the embedding (in ``obs_names`` order)
    and the fit's record.
    """
    import scvi

    from scvi_scgpt import SCGPT

    scvi.settings.seed = seed
    if task == "multiomic":
        SCGPT.setup_mudata(data, **setup)
    else:
        SCGPT.setup_anndata(data, **setup)
    model = SCGPT(data, seed=seed, **shape)
    t0 = time.perf_counter()
    model.train(task, **train, **QUIET)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    emb = model.get_latent_representation(data, batch_size=64)
    info = {
        "task": task,
        "fit_s": fit_s,
        "embed_s": time.perf_counter() - t0,
        "n_features_trained": len(model.gene_subset_ or []),
        "n_params": int(sum(p.numel() for p in model.module.parameters())),
        "modality_vocab": model.modality_vocab_,
        "history": _history(model),
        "training_task": model.training_task_,
    }
    return np.asarray(emb, dtype=np.float32), info, model


# ----------------------------------------------------------------------------- totalVI
def run_totalvi(rna, prot, *, epochs: int, n_latent: int, seed: int):
    """totalVI on RNA counts (``rna.X``) and protein counts; ``rna.obs["batch"]`` the batch.

    Proteins that are all zero in a batch are treated as unmeasured there (totalVI's protein
    batch mask), which is how the mosaic variant withholds them.
    """
    import mudata as md
    import scvi

    scvi.settings.seed = seed
    prot = prot.copy()
    prot.X = _dense(prot.X).astype(np.float32)  # totalVI's protein prior needs dense counts
    mdata = md.MuData({"rna": rna.copy(), "prot": prot})
    scvi.model.TOTALVI.setup_mudata(
        mdata, batch_key="batch", modalities={**CITE_MODALITIES, "batch_key": "rna"}
    )
    model = scvi.model.TOTALVI(mdata, n_latent=n_latent)
    t0 = time.perf_counter()
    model.train(max_epochs=epochs, enable_progress_bar=False)  # its LR monitor needs a logger
    fit_s = time.perf_counter() - t0
    emb = model.get_latent_representation()
    order = mdata.obs_names.get_indexer(rna.obs_names)
    mask = getattr(model.protein_state_registry, "protein_batch_mask", None)
    return np.asarray(emb, dtype=np.float32)[order], {
        "fit_s": fit_s,
        "epochs": epochs,
        "n_latent": n_latent,
        "protein_batch_mask": None
        if mask is None
        else {str(k): int(np.sum(v)) for k, v in mask.items()},
    }


# ----------------------------------------------------------------------------- PCA
def rna_pcs(counts, n_pcs: int, seed: int) -> np.ndarray:
    """PCs of log-normalised (1e4, log1p), scaled (max 10) counts."""
    import anndata
    import scanpy as sc

    a = anndata.AnnData(_dense(counts).astype(np.float32))
    sc.pp.normalize_total(a, target_sum=1e4)
    sc.pp.log1p(a)
    sc.pp.scale(a, max_value=10)
    n = min(n_pcs, a.n_obs - 1, a.n_vars - 1)
    sc.pp.pca(a, n_comps=n, svd_solver="arpack", random_state=seed)
    return a.obsm["X_pca"].astype(np.float32)


def clr_scaled(prot_counts) -> np.ndarray:
    """Per-cell CLR of protein counts, each protein scaled to mean 0, sd 1."""
    v = clr(_dense(prot_counts))
    sd = v.std(0)
    return ((v - v.mean(0)) / np.where(sd > 0, sd, 1.0)).astype(np.float32)


def lsi(peaks, n_comps: int, seed: int) -> np.ndarray:
    """Latent semantic indexing of binary peaks: TF-IDF, truncated SVD, first component dropped.

    Each component is scaled to sd 1 (Signac's convention for LSI before neighbours).
    """
    import scipy.sparse as sp
    from sklearn.decomposition import TruncatedSVD

    x = sp.csr_matrix(peaks, dtype=np.float64)
    x.data[:] = 1.0
    tf = sp.diags(1.0 / np.maximum(np.asarray(x.sum(1)).ravel(), 1.0)) @ x
    idf = x.shape[0] / np.maximum(np.asarray(x.sum(0)).ravel(), 1.0)
    tfidf = (tf @ sp.diags(idf)).tocsr()
    tfidf.data = np.log1p(tfidf.data * 1e4)
    svd = TruncatedSVD(n_components=n_comps + 1, random_state=seed).fit_transform(tfidf)[:, 1:]
    return ((svd - svd.mean(0)) / svd.std(0)).astype(np.float32)


def joint_pca(blocks: list[np.ndarray], n_comps: int, seed: int) -> np.ndarray:
    """PCA of concatenated blocks, each weighted to the same total variance."""
    from sklearn.decomposition import PCA

    weighted = [b / np.sqrt(max(float(b.var(0).sum()), 1e-12)) for b in blocks]
    z = np.hstack(weighted)
    n = min(n_comps, z.shape[0] - 1, z.shape[1])
    return PCA(n_components=n, random_state=seed).fit_transform(z).astype(np.float32)


# ----------------------------------------------------------------------------- WNN
def run_wnn(rna_pcs_: np.ndarray, prot_rep: np.ndarray, *, n_neighbors: int, seed: int):
    """Weighted nearest neighbours (muon's WNN) of RNA PCs and CLR proteins.

    Per modality: L2-normalised representation, ``sc.pp.neighbors`` with 20 neighbours
    (Seurat's ``k.nn``); then ``muon.pp.neighbors`` with ``n_neighbors`` neighbours, enough
    for the 90-neighbour metrics. Returns the graph as ``(indices, distances)`` rows sorted
    by WNN distance, the cell itself first (distance 0), as scib-metrics' neighbour search,
    the per-cell RNA weights and the fit's record.
    """
    import anndata
    import muon as mu
    import scanpy as sc

    t0 = time.perf_counter()
    mods = {}
    for name, rep in (("rna", rna_pcs_), ("prot", prot_rep)):
        a = anndata.AnnData(np.zeros((rep.shape[0], 0), dtype=np.float32))
        a.obsm["X_rep"] = rep / np.linalg.norm(rep, axis=1, keepdims=True).clip(1e-12)
        sc.pp.neighbors(a, use_rep="X_rep", n_neighbors=20, random_state=seed)
        mods[name] = a
    mdata = mu.MuData(mods)
    mu.pp.neighbors(mdata, n_neighbors=n_neighbors, key_added="wnn", random_state=seed)
    dist = mdata.obsp["wnn_distances"].tocsr()
    n = dist.shape[0]
    indices = np.empty((n, n_neighbors), dtype=np.int64)
    distances = np.empty((n, n_neighbors), dtype=np.float32)
    for i in range(n):
        row = slice(dist.indptr[i], dist.indptr[i + 1])
        cols, vals = dist.indices[row], dist.data[row]
        keep = cols != i
        cols, vals = cols[keep], vals[keep]
        order = np.argsort(vals, kind="stable")[: n_neighbors - 1]
        indices[i] = np.r_[i, cols[order]]
        distances[i] = np.r_[0.0, vals[order]]
    mu.tl.umap(mdata, neighbors_key="wnn", random_state=seed)
    weights = mdata.obs["rna:mod_weight"].to_numpy()
    return (
        (indices, distances),
        mdata.obsm["X_umap"].astype(np.float32),
        {
            "wnn_s": time.perf_counter() - t0,
            "n_neighbors": n_neighbors,
            "per_modality_neighbors": 20,
            "rna_weight_mean": float(np.mean(weights)),
        },
    )
