from __future__ import annotations

import numpy as np
import pytest

from scvi_scgpt.data import GeneVocab, ensembl_to_symbol, is_ensembl_id, match_genes


def test_symbols_and_coverage():
    vocab = GeneVocab.from_genes(["CD3E", "MS4A1", "LYZ"])
    match = match_genes(["LYZ", "FOO", "CD3E", "BAR"], vocab)
    np.testing.assert_array_equal(match.vocab_ids, [2, -1, 0, -1])
    assert match.n_matched == 2 and match.n_genes == 4
    assert match.summary().startswith("matched 2 / 4 genes")


def test_ensembl_ids_versioned_and_not():
    table = ensembl_to_symbol()
    assert table["ENSG00000141510"] == "TP53"
    vocab = GeneVocab.from_genes(["TP53", "GAPDH"])
    match = match_genes(["ENSG00000141510.18", "ENSG00000111640", "TP53X"], vocab)
    np.testing.assert_array_equal(match.vocab_ids, [0, 1, -1])
    assert match.n_via_ensembl == 2
    assert is_ensembl_id("ENSG00000141510") and not is_ensembl_id("TP53")


def test_ensembl_to_disambiguated_census_token():
    vocab = GeneVocab.census()
    token = "ZBED1_ENSG00000214717"
    match = match_genes(["ENSG00000214717"], vocab)
    assert match.vocab_ids[0] == vocab[token]


def test_duplicate_names_raise():
    vocab = GeneVocab.from_genes(["A", "B"])
    with pytest.raises(ValueError, match="duplicated"):
        match_genes(["A", "B", "A"], vocab)


def test_no_match_raises_and_low_coverage_warns():
    vocab = GeneVocab.from_genes(["A", "B"])
    with pytest.raises(ValueError, match="No gene"):
        match_genes(["X", "Y"], vocab)
    with pytest.warns(UserWarning, match="Low gene coverage"):
        match_genes(["A", "X", "Y"], vocab)


def test_two_ensembl_ids_for_one_symbol_keep_first():
    table = ensembl_to_symbol()
    by_symbol: dict[str, list[str]] = {}
    for gene_id, symbol in table.items():
        by_symbol.setdefault(symbol, []).append(gene_id)
    symbol, ids = next((s, i) for s, i in by_symbol.items() if len(i) > 1)
    vocab = GeneVocab.from_genes([symbol])
    with pytest.warns(UserWarning, match="already taken"):
        match = match_genes(ids[:2], vocab)
    np.testing.assert_array_equal(match.vocab_ids, [0, -1])
