from __future__ import annotations

import numpy as np
import pytest
import torch

from scvi_scgpt import tl


def test_rank_normalisation_hand_computed():
    scores = np.array([[3.0, 1.0, 2.0], [0.0, 5.0, 4.0], [7.0, 6.0, 8.0]])
    # rows: ranks / 3
    np.testing.assert_allclose(
        tl.rank_normalize(scores, axis=-1), np.array([[2, 0, 1], [0, 2, 1], [1, 0, 2]]) / 3
    )
    # then columns of the row-normalised matrix (ties broken by position)
    expected = np.array([[2, 0, 0], [0, 2, 1], [1, 1, 2]]) / 3
    np.testing.assert_allclose(tl.normalize_attention(scores, head_axis=None), expected)
    # two heads are averaged; raw scale and softmax do not matter (ranks only)
    heads = np.stack([scores, np.exp(scores * 10.0)])[None]  # (cells=1, heads=2, 3, 3)
    np.testing.assert_allclose(tl.normalize_attention(heads)[0], expected, atol=1e-7)
    other = -scores
    both = np.stack([scores, other])
    np.testing.assert_allclose(
        tl.normalize_attention(both, head_axis=0),
        (expected + tl.normalize_attention(other, head_axis=None)) / 2,
    )


def test_rank_normalisation_torch_matches_numpy():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(2, 3, 5, 5)).astype(np.float32)
    ours = tl.normalize_attention(torch.from_numpy(scores))
    assert isinstance(ours, torch.Tensor) and ours.shape == (2, 5, 5)
    np.testing.assert_allclose(ours.numpy(), tl.normalize_attention(scores), atol=1e-6)


def test_accumulator_means_per_condition():
    acc = tl.AttentionAccumulator(2)
    acc.add("ctrl", np.ones((3, 2, 2)))
    acc.add("ctrl", torch.zeros(1, 2, 2))
    acc.add("A+ctrl", np.full((2, 2, 2), 0.5))
    means = acc.means()
    np.testing.assert_allclose(means["ctrl"], 0.75)
    np.testing.assert_allclose(means["A+ctrl"], 0.5)
    assert acc.counts() == {"ctrl": 4, "A+ctrl": 2}
    with pytest.raises(ValueError, match="side 2"):
        acc.add("ctrl", np.ones((1, 3, 3)))


def test_target_table_recovers_planted_dependency():
    genes = ["A", "B", "t1", "t2", "x1", "x2"]
    rng = np.random.default_rng(0)
    control = rng.uniform(0.3, 0.5, size=(6, 6))
    pert_a = control.copy()
    pert_a[[2, 3], 0] += [0.4, 0.3]  # t1, t2 attend more to A when A is perturbed
    pert_ab = control.copy()
    pert_ab[4, [0, 1]] += 0.5
    means = {"ctrl": control, "A+ctrl": pert_a, "A+B": pert_ab}
    table = tl.attention_target_table(
        means, genes, control="ctrl", perturbed=["A+ctrl", "A+B"], top_k=2
    )
    assert list(table.columns) == ["perturbation", "gene", "score", "rank"]
    a = table[table["perturbation"] == "A+ctrl"]
    assert list(a["gene"]) == ["t1", "t2"] and list(a["rank"]) == [1, 2]
    np.testing.assert_allclose(a["score"], [0.4, 0.3])
    ab = table[table["perturbation"] == "A+B"]
    assert ab["gene"].iloc[0] == "x1" and not {"A", "B"} & set(ab["gene"])
    full = tl.attention_target_table(
        means, genes, control="ctrl", perturbed="A+ctrl", mode="perturbed", top_k=None
    )
    assert len(full) == 5 and "A" not in set(full["gene"])
    np.testing.assert_allclose(full.set_index("gene").loc["t1", "score"], pert_a[2, 0])
    ctrl = tl.attention_target_table(
        means, genes, control="ctrl", perturbed="A+ctrl", mode="control", top_k=1
    )
    assert ctrl["score"].iloc[0] == pytest.approx(np.delete(control[:, 0], 0).max())


def test_target_table_bad_inputs():
    means = {"ctrl": np.zeros((2, 2)), "A+ctrl": np.zeros((2, 2))}
    kwargs = {"control": "ctrl"}
    with pytest.raises(ValueError, match="No attention matrix"):
        tl.attention_target_table(means, ["A", "B"], perturbed="C+ctrl", **kwargs)
    with pytest.raises(ValueError, match="not among the genes"):
        tl.attention_target_table(
            {**means, "C+ctrl": means["ctrl"]}, ["A", "B"], perturbed="C+ctrl", **kwargs
        )
    with pytest.raises(ValueError, match="mode"):
        tl.attention_target_table(means, ["A", "B"], perturbed="A+ctrl", mode="x", **kwargs)
    with pytest.raises(ValueError, match="Malformed"):
        tl.attention_target_table(
            {**means, "A++B": means["ctrl"]}, ["A", "B"], perturbed="A++B", **kwargs
        )
    with pytest.raises(ValueError, match="perturbs no gene"):
        tl.attention_target_table(means, ["A", "B"], perturbed="ctrl", **kwargs)
