"""Scores of a pretrained model against the simulated atlas's truth (``pretrain_evidence.py``).

Every function takes a model (``SCGPT``) whose weights are the ones to score, the held-out
cells and, where needed, the truth stored by ``datasets.simulate_atlas``; none trains.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def log_normalized(adata) -> np.ndarray:
    """Dense log1p of counts scaled to 1e4 per cell (small evaluation sets only)."""
    import scipy.sparse as sp

    x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    x = x.astype(np.float64)
    total = np.maximum(x.sum(1, keepdims=True), 1.0)
    return np.log1p(x / total * 1e4)


# ----------------------------------------------------------------------------- masked values
def _tokens(model, adata, max_seq_len: int, seed: int, gen_ratio: float):
    """Generative minibatches of every cell of ``adata`` (fixed seed: same tokens each call)."""
    import dataclasses

    import scipy.sparse as sp
    import torch

    from scvi_scgpt.dataloaders import COLLATORS

    config = dataclasses.replace(
        model.tokenizer_config, max_seq_len=max_seq_len, include_zero_genes=False
    )
    adata = model._validate_anndata(adata)
    collator = COLLATORS["generative"](
        model._column_vocab_ids(adata),
        config,
        cls_id=model.vocab_.cls_id,
        pad_id=model.vocab_.pad_id,
        gen_ratios=(gen_ratio,),
    )
    x = adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)
    batches = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for start in range(0, adata.n_obs, 64):
            batch = collator({"X": x[start : start + 64].astype(np.float32)})
            batch["cell"] = torch.arange(start, min(start + 64, adata.n_obs))
            batches.append(batch)
    return batches


def masked_value_errors(
    model,
    train,
    held_out,
    *,
    max_seq_len: int,
    type_key: str | None = None,
    gen_ratio: float = 0.5,
    seed: int = 0,
) -> dict[str, float]:
    """Held-out MSE of generated values: the model, the per-gene mean and (with truth) oracle.

    Half of each held-out cell's expressed genes (``gen_ratio``) are generated from the
    other half, as in pretraining; the errors of the model's GEP head, of each gene's mean
    bin in ``train`` and of its mean bin within the cell's true type (``type_key``) are
    taken on the same tokens.
    """
    import torch

    from scvi_scgpt._constants import TOKEN_KEYS

    module = model.module.eval()
    n_vocab = len(model.vocab_)
    sums = np.zeros(n_vocab)
    counts = np.zeros(n_vocab)
    types_train = types_test = None
    if type_key is not None:
        codes = pd.Categorical(
            pd.concat([train.obs[type_key], held_out.obs[type_key]]).astype(str)
        ).codes.astype(np.int64)
        types_train, types_test = codes[: train.n_obs], codes[train.n_obs :]
        n_types = int(codes.max()) + 1
        type_sums = np.zeros(n_vocab * n_types)
        type_counts = np.zeros(n_vocab * n_types)
    for batch in _tokens(model, train, max_seq_len, seed + 1, gen_ratio):
        for ids_key, val_key, pad_key in (
            (TOKEN_KEYS.GENE_IDS, TOKEN_KEYS.VALUES, TOKEN_KEYS.PADDING_MASK),
            (TOKEN_KEYS.GEN_GENE_IDS, TOKEN_KEYS.GEN_TARGETS, TOKEN_KEYS.GEN_PADDING_MASK),
        ):
            keep = ~batch[pad_key].numpy()
            keep &= batch[ids_key].numpy() != model.vocab_.cls_id
            ids, vals = batch[ids_key].numpy()[keep], batch[val_key].numpy()[keep]
            np.add.at(sums, ids, vals)
            np.add.at(counts, ids, 1)
            if types_train is not None:
                cell = np.broadcast_to(batch["cell"].numpy()[:, None], keep.shape)[keep]
                key = types_train[cell] * n_vocab + ids
                np.add.at(type_sums, key, vals)
                np.add.at(type_counts, key, 1)
    gene_mean = sums / np.maximum(counts, 1)
    errors = {"model": [], "gene_mean": [], "type_oracle": []}
    with torch.inference_mode():
        for batch in _tokens(model, held_out, max_seq_len, seed, gen_ratio):
            inference = module.inference(**module._get_inference_input(batch))
            out = module.generative(**module._get_generative_input(batch, inference))
            keep = ~batch[TOKEN_KEYS.GEN_PADDING_MASK].numpy()
            target = batch[TOKEN_KEYS.GEN_TARGETS].numpy()[keep]
            ids = batch[TOKEN_KEYS.GEN_GENE_IDS].numpy()[keep]
            errors["model"].append((out["expr"].float().numpy()[keep] - target) ** 2)
            errors["gene_mean"].append((gene_mean[ids] - target) ** 2)
            if types_test is not None:
                cell = np.broadcast_to(batch["cell"].numpy()[:, None], keep.shape)[keep]
                key = types_test[cell] * n_vocab + ids
                oracle = type_sums[key] / np.maximum(type_counts[key], 1)
                errors["type_oracle"].append((oracle - target) ** 2)
    return {k: float(np.concatenate(v).mean()) for k, v in errors.items() if v}


# ----------------------------------------------------------------------------- cells
def knn_type_accuracy(embedding: np.ndarray, labels) -> float:
    """5-fold cross-validated kNN (k=15) accuracy of the true types on held-out cells."""
    from scvi_scgpt.tl import knn_accuracy

    return float(knn_accuracy(embedding, np.asarray(labels))["accuracy_mean"])


def pca_embedding(train, held_out, n_comps: int = 50) -> np.ndarray:
    """Held-out cells in the PCA of the training cells' log-normalised expression."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=n_comps, random_state=0).fit(log_normalized(train))
    return pca.transform(log_normalized(held_out))


# ----------------------------------------------------------------------------- genes
def true_programs(edges: pd.DataFrame) -> pd.Series:
    """Each target's programme: its strongest regulator (largest |weight|)."""
    strongest = edges.loc[edges["weight"].abs().groupby(edges["target"]).idxmax()]
    return pd.Series(strongest["source"].to_numpy(), index=strongest["target"].to_numpy())


def program_ari(found: pd.Series, truth: pd.Series) -> float:
    """ARI of found programmes (missing: each gene its own) against the true ones."""
    from sklearn.metrics import adjusted_rand_score

    found = found.reindex(truth.index).astype(object)
    singles = found.isna()
    found[singles] = [f"single_{i}" for i in range(int(singles.sum()))]
    return float(adjusted_rand_score(truth.astype(str), found.astype(str)))


def embedding_scores(table: pd.DataFrame) -> pd.DataFrame:
    """Cosine similarities of gene embeddings as an edge-score matrix."""
    from scvi_scgpt.tl import cosine_similarity

    sim = cosine_similarity(table.to_numpy(dtype=np.float64))
    return pd.DataFrame(sim, index=table.index, columns=table.index)


def embedding_programs(table: pd.DataFrame, seed: int = 0) -> pd.Series:
    """Leiden programmes of a gene-embedding kNN graph (``tl.gene_similarity_network``)."""
    from scvi_scgpt.tl import gene_similarity_network

    net = gene_similarity_network(table, n_neighbors=15, min_program_size=3, seed=seed)
    return net.obs["program"]


def expression_table(adata, genes) -> pd.DataFrame:
    """Genes x cells table of centred, unit-norm log expression: cosine = Pearson."""
    x = log_normalized(adata[:, list(genes)])
    x = x - x.mean(0)
    x = x / np.maximum(np.linalg.norm(x, axis=0), 1e-12)
    return pd.DataFrame(x.T, index=list(genes))


def gene_scores(edges: pd.DataFrame, scores: pd.DataFrame, programs: pd.Series | None) -> dict:
    """AUPRC / AUROC (and ratio to random) of the true edges, and programme ARI."""
    from scvi_scgpt.tl import evaluate_edges

    res = evaluate_edges(scores, edges, directed=False)
    out = {k: float(res[k]) for k in ("auprc", "auroc", "auprc_ratio")}
    if programs is not None:
        targets = true_programs(edges)
        out["program_ari"] = program_ari(programs, targets)
    return out


# ----------------------------------------------------------------------------- attention
def regulator_groups(n_cells: int, regulators, seed: int = 0) -> pd.Categorical:
    """Condition labels spreading unperturbed cells over ``"<regulator>+ctrl"`` and ``ctrl``.

    ``SCGPT.attention_targets`` averages attention over the cells of a condition; an
    unperturbed atlas has no perturbed cells, so each regulator's column is read from its
    own share of the held-out cells (``mode="perturbed"``).
    """
    names = ["ctrl", *[f"{r}+ctrl" for r in regulators]]
    labels = np.asarray(names)[np.random.default_rng(seed).permutation(n_cells) % len(names)]
    return pd.Categorical(labels)


def precision_at_k(ranked: pd.DataFrame, edges: pd.DataFrame, k: int = 20) -> float:
    """Mean over regulators of the share of true targets among the ``k`` top genes."""
    truth = edges.groupby("source")["target"].apply(set).to_dict()
    hits = []
    for regulator, genes in ranked.groupby("regulator")["gene"]:
        hits.append(len(set(list(genes)[:k]) & truth.get(regulator, set())) / k)
    return float(np.mean(hits))


def coexpression_ranking(adata, regulators, k: int = 20) -> pd.DataFrame:
    """Top ``k`` genes per regulator by |Pearson| (the baseline of attention targets)."""
    from scvi_scgpt.tl import coexpression_network

    corr = coexpression_network(_log_adata(adata))
    rows = []
    for r in regulators:
        top = corr.loc[r].drop(r).sort_values(ascending=False).index[:k]
        rows += [(r, g) for g in top]
    return pd.DataFrame(rows, columns=["regulator", "gene"])


def _log_adata(adata):
    import anndata as ad

    return ad.AnnData(log_normalized(adata), var=adata.var[[]].copy())
