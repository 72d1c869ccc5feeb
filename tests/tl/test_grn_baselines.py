from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from scvi_scgpt import tl


def chain_adata(n_cells=300, seed=0) -> ad.AnnData:
    """r drives t1 and t2; n1, n2 are independent noise."""
    rng = np.random.default_rng(seed)
    r = rng.normal(size=n_cells)
    x = np.stack(
        [
            r,
            2 * r + 0.3 * rng.normal(size=n_cells),
            -r + 0.3 * rng.normal(size=n_cells),
            rng.normal(size=n_cells),
            rng.normal(size=n_cells),
        ],
        axis=1,
    )
    return ad.AnnData(x.astype(np.float32), var=pd.DataFrame(index=["r", "t1", "t2", "n1", "n2"]))


TRUE = pd.DataFrame({"source": ["r", "r"], "target": ["t1", "t2"]})


def test_coexpression_hand_case_and_recovery():
    x = np.array([[1.0, 2.0, 5.0], [2.0, 4.0, 5.0], [3.0, 7.0, 5.0]])
    net = tl.coexpression_network(ad.AnnData(x, var=pd.DataFrame(index=["a", "b", "c"])))
    assert net.loc["a", "b"] == pytest.approx(np.corrcoef(x[:, 0], x[:, 1])[0, 1], rel=1e-5)
    assert net.loc["a", "c"] == 0.0 and net.loc["a", "a"] == 0.0
    adata = chain_adata()
    for method in ("pearson", "spearman"):
        metrics = tl.evaluate_edges(tl.coexpression_network(adata, method=method), TRUE)
        assert metrics["auroc"] > 0.9
        assert metrics["n_true"] == 2 and metrics["n_pairs"] == 10


def test_genie3_directed_scores():
    adata = chain_adata()
    scores = tl.genie3_network(adata, regulators=["r", "n1"], n_estimators=20)
    assert scores.shape == (2, 5) and scores.loc["r", "r"] == 0.0
    assert scores.loc["r", "t1"] > scores.loc["n1", "t1"]
    assert scores.loc["r", "t2"] > scores.loc["n1", "t2"]
    metrics = tl.evaluate_edges(scores[["t1", "t2"]], TRUE, directed=True)
    assert metrics["auroc"] == 1.0 and metrics["early_precision"] == 1.0
    with pytest.raises(ValueError, match="Regulators not in"):
        tl.genie3_network(adata, regulators=["zz"])


def test_evaluate_edges_hand_case_and_random():
    genes = ["a", "b", "c"]
    scores = pd.DataFrame(
        [[0, 0.9, 0.1], [0.2, 0, 0.3], [0.8, 0.4, 0]], index=genes, columns=genes
    )
    truth = pd.DataFrame({"source": ["a"], "target": ["b"]})
    # undirected pairs: ab=0.9, ac=0.8, bc=0.4 -> the true pair ranks first
    m = tl.evaluate_edges(scores, truth)
    assert m == pytest.approx(
        {
            "auprc": 1.0,
            "auroc": 1.0,
            "auprc_ratio": 3.0,
            "early_precision": 1.0,
            "density": 1 / 3,
            "n_true": 1,
            "n_pairs": 3,
            "n_true_unscored": 0,
        }
    )
    # directed: a->b is 0.9, the best of 6 ordered pairs
    assert tl.evaluate_edges(scores, truth, directed=True)["n_pairs"] == 6
    truth_ba = pd.DataFrame({"source": ["c"], "target": ["b"]})  # c->b = 0.4: 3rd of 6
    md = tl.evaluate_edges(scores, truth_ba, directed=True)
    assert md["auroc"] == pytest.approx(3 / 5) and md["auprc"] == pytest.approx(1 / 3)
    rand = tl.random_network([f"g{i}" for i in range(60)], seed=1)
    truth = pd.DataFrame(
        {"source": [f"g{i}" for i in range(30)], "target": [f"g{i + 30}" for i in range(30)]}
    )
    assert abs(tl.evaluate_edges(rand, truth)["auroc"] - 0.5) < 0.15
    with pytest.raises(ValueError, match="both true and false"):
        tl.evaluate_edges(scores, pd.DataFrame({"source": ["x"], "target": ["y"]}))
