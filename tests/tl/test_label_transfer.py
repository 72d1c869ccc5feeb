from __future__ import annotations

import numpy as np
import pytest

from scvi_scgpt.tl import knn_accuracy, knn_label_transfer


def test_majority_vote_and_confidence_by_hand():
    reference = np.array([[0.0], [0.1], [0.2], [10.0], [10.1]])
    labels = ["a", "a", "b", "b", "b"]
    query = np.array([[0.05], [10.05]])
    predicted, confidence = knn_label_transfer(reference, labels, query, n_neighbors=3)
    assert list(predicted) == ["a", "b"]
    np.testing.assert_allclose(confidence, [2 / 3, 1.0])
    assert list(predicted.categories) == ["a", "b"]


def test_ties_go_to_the_nearer_neighbours():
    reference = np.array([[0.0], [1.0]])
    predicted, confidence = knn_label_transfer(reference, ["near", "far"], [[0.2]], n_neighbors=2)
    assert list(predicted) == ["near"] and confidence[0] == 0.5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labels": ["a", None, "b"]}, "missing"),
        ({"labels": ["a", "b"]}, "labels for"),
        ({"query": np.zeros((2, 3))}, "same width"),
        ({"n_neighbors": 4}, "n_neighbors"),
    ],
)
def test_bad_input(kwargs, match):
    args = {"reference": np.zeros((3, 2)), "labels": ["a", "b", "a"], "query": np.zeros((1, 2))}
    args.update(kwargs)
    n = args.pop("n_neighbors", 1)
    with pytest.raises(ValueError, match=match):
        knn_label_transfer(args["reference"], args["labels"], args["query"], n_neighbors=n)


def test_knn_accuracy_separates_informative_from_random_embeddings():
    rng = np.random.default_rng(0)
    labels = np.repeat(["x", "y", "z"], 30)
    informative = rng.normal(size=(90, 4)) + np.repeat(np.eye(3, 4) * 6, 30, axis=0)
    noise = rng.normal(size=(90, 4))
    good = knn_accuracy(informative, labels, n_neighbors=5)
    bad = knn_accuracy(noise, labels, n_neighbors=5)
    assert good["accuracy_mean"] > 0.95 > bad["accuracy_mean"]
    assert len(good["accuracy_folds"]) == 5 and 0 <= bad["macro_f1_mean"] <= 1
