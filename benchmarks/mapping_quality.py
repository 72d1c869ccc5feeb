"""Diagnosis for issue #23: does reference mapping keep cell-type structure? (not a benchmark row)

Trains the tiny reference model of ``tests/model/test_mapping.py`` (200 synthetic cells, 2
batches, 3 types) with a task preset, maps a new batch (``load_query_data``) and prints, per
seed, the kNN (k=10) accuracy of the reference embedding on itself (half / half), of the
query's transferred labels, and of PCA on log-normalised counts for the same query.

Usage::

    .venv/bin/python benchmarks/mapping_quality.py integration 3          # 3 epochs
    .venv/bin/python benchmarks/mapping_quality.py integration 3 ecs,dar  # objectives off
    .venv/bin/python benchmarks/mapping_quality.py integration 0          # untrained
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scvi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests._builders import make_structured_counts  # noqa: E402

from scvi_scgpt import SCGPT  # noqa: E402

TINY = {"d_model": 32, "n_heads": 2, "d_hid": 32, "n_layers": 2, "dropout": 0.0}
QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


def knn_accuracy(ref, ref_labels, query, query_labels) -> float:
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(10).fit(ref, ref_labels)
    return float((knn.predict(query) == query_labels).mean())


def log_normalised(adata) -> np.ndarray:
    x = adata.X.toarray()
    return np.log1p(x / x.sum(1, keepdims=True) * 1e4)


def main(task: str, epochs: int, off: list[str]) -> None:
    from sklearn.decomposition import PCA

    warnings.filterwarnings("ignore")
    logging.disable(logging.INFO)
    for seed in (0, 1, 2):
        scvi.settings.seed = seed
        ref = make_structured_counts(200, n_batches=2, seed=0)
        SCGPT.setup_anndata(ref, batch_key="batch", labels_key="cell_type")
        model = SCGPT(ref, max_seq_len=128, **TINY)
        if epochs:
            objectives = {"objectives": dict.fromkeys(off, False)} if off else {}
            model.train(task, max_epochs=epochs, n_top_genes=60, batch_size=32, lr=1e-3,
                        **objectives, **QUIET)  # fmt: skip
        query = make_structured_counts(270, n_batches=3, seed=5)
        query = query[query.obs["batch"] == "b2"].copy()
        query.obs["batch"] = pd.Categorical(["new_site"] * query.n_obs)
        query = query[:, 5:].copy()
        y_ref = ref.obs["cell_type"].astype(str).to_numpy()
        y_query = query.obs["cell_type"].astype(str).to_numpy()
        emb = model.get_latent_representation(ref)
        half = np.arange(ref.n_obs) % 2 == 0
        self_acc = knn_accuracy(emb[half], y_ref[half], emb[~half], y_ref[~half])
        mapped = SCGPT.load_query_data(query, model)
        query_acc = knn_accuracy(
            mapped.get_latent_representation(ref.copy()),
            y_ref,
            mapped.get_latent_representation(query),
            y_query,
        )
        pca = PCA(20).fit(log_normalised(ref)[:, 5:])
        pca_acc = knn_accuracy(
            pca.transform(log_normalised(ref)[:, 5:]),
            y_ref,
            pca.transform(log_normalised(query)),
            y_query,
        )
        print(
            f"{task} epochs={epochs} off={off} seed={seed}: reference self {self_acc:.2f}, "
            f"query transfer {query_acc:.2f}, PCA query {pca_acc:.2f} ({query.n_obs} cells)",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",") if len(sys.argv) > 3 else [])
