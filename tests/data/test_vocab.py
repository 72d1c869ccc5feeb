from __future__ import annotations

import json

import numpy as np
import pytest

from scvi_scgpt.data import GeneVocab


def test_specials_appended_once_in_order():
    vocab = GeneVocab.from_genes(["A", "B", "A"])
    assert vocab.tokens == ["A", "B", "<pad>", "<cls>", "<eoc>"]
    again = GeneVocab(vocab.tokens)
    assert again.tokens == vocab.tokens
    assert (vocab.pad_id, vocab.cls_id, vocab.eoc_id) == (2, 3, 4)


def test_roundtrip_official_json(tmp_path):
    vocab = GeneVocab.from_dict({"B": 1, "A": 0, "<pad>": 2})
    assert vocab.tokens == ["A", "B", "<pad>", "<cls>", "<eoc>"]
    path = tmp_path / "vocab.json"
    vocab.save(path)
    assert json.loads(path.read_text()) == {"A": 0, "B": 1, "<pad>": 2, "<cls>": 3, "<eoc>": 4}
    assert GeneVocab.from_file(path) == vocab


@pytest.mark.parametrize(
    "mapping",
    [{"A": 0, "B": 2}, {"A": 1, "B": 1}, {"A": "0"}, {}, ["A"]],
)
def test_bad_vocab_json_rejected(tmp_path, mapping):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(mapping))
    with pytest.raises(ValueError):
        GeneVocab.from_file(path)


def test_corrupt_and_missing_files(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="Could not read"):
        GeneVocab.from_file(path)
    with pytest.raises(FileNotFoundError):
        GeneVocab.from_file(tmp_path / "missing.json")


def test_duplicate_tokens_rejected():
    with pytest.raises(ValueError, match="duplicated"):
        GeneVocab(["A", "A"])


def test_census_vocab_matches_shipped_file(official_dir):
    vocab = GeneVocab.census()
    assert len(vocab) == 60_697
    assert (vocab.pad_id, vocab.cls_id, vocab.eoc_id) == (60694, 60695, 60696)
    shared = official_dir.parents[3] / "shared" / "data" / "scgpt_census_vocab.json"
    if shared.is_file():
        mapping = json.loads(shared.read_text())
        for token in ("ZZZ3", "bP-2171C21.3", "ZBED1_ENSG00000214717"):
            assert vocab[token] == mapping[token]


def test_lookup_defaults():
    vocab = GeneVocab.from_genes(["A", "B"])
    np.testing.assert_array_equal(vocab.lookup(["B", "Z", "A"]), [1, -1, 0])
    with pytest.raises(KeyError, match="not in the gene vocabulary"):
        vocab["Z"]
