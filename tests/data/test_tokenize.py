from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from scvi_scgpt.data import TokenizerConfig, tokenize_cells

CLS = 10_000


def _cells(tokens, i):
    sl = slice(tokens.indptr[i], tokens.indptr[i + 1])
    return tokens.gene_ids[sl], tokens.values[sl]


def _matrix(n_cells=60, n_genes=300, seed=0):
    rng = np.random.default_rng(seed)
    x = sp.random(
        n_cells,
        n_genes,
        density=0.3,
        format="csr",
        random_state=seed,
        data_rvs=lambda n: rng.integers(1, 20, n),
    ).astype(np.float32)
    x[:, 1] = 3.0
    return sp.csr_matrix(x)


def test_structure_cls_first_and_only_expressed_vocab_genes():
    x = _matrix()
    ids = np.arange(300) + 5
    ids[::7] = -1
    tok = tokenize_cells(x, ids, TokenizerConfig(max_seq_len=1000), cls_id=CLS)
    dense = x.toarray()
    for i in range(x.shape[0]):
        genes, values = _cells(tok, i)
        assert genes[0] == CLS and values[0] == -2
        expected_cols = np.flatnonzero((dense[i] > 0) & (ids >= 0))
        np.testing.assert_array_equal(genes[1:], ids[expected_cols])  # column order kept
        assert values[1:].min() >= 1 and values[1:].max() <= 50


def test_sampling_caps_length_and_is_a_subset():
    x = _matrix()
    ids = np.arange(300)
    tok = tokenize_cells(x, ids, TokenizerConfig(max_seq_len=20), cls_id=CLS)
    full = tokenize_cells(x, ids, TokenizerConfig(max_seq_len=1000), cls_id=CLS)
    assert tok.lengths.max() == 20
    for i in range(x.shape[0]):
        genes, values = _cells(tok, i)
        fgenes, fvalues = _cells(full, i)
        pos = np.searchsorted(fgenes[1:], genes[1:]) + 1
        np.testing.assert_array_equal(fgenes[pos], genes[1:])
        # bins are computed before sampling, over all expressed genes
        np.testing.assert_array_equal(fvalues[pos], values[1:])


def test_chunk_order_and_neighbour_invariance():
    x = _matrix()
    ids = np.arange(300)
    cfg = TokenizerConfig(max_seq_len=25, seed=7)
    whole = tokenize_cells(x, ids, cfg, cls_id=CLS)
    perm = np.random.default_rng(0).permutation(60)[:17]
    part = tokenize_cells(x[perm], ids, cfg, cls_id=CLS)
    for j, i in enumerate(perm):
        for a, b in zip(_cells(whole, i), _cells(part, j)):
            np.testing.assert_array_equal(a, b)
    # the gene order of the AnnData does not matter either (hash uses vocabulary ids)
    cols = np.random.default_rng(1).permutation(300)
    shuffled = tokenize_cells(x[:, cols], ids[cols], cfg, cls_id=CLS)
    for i in range(5):
        g1, v1 = _cells(whole, i)
        g2, v2 = _cells(shuffled, i)
        np.testing.assert_array_equal(np.sort(g1), np.sort(g2))
        np.testing.assert_array_equal(v1[np.argsort(g1)], v2[np.argsort(g2)])


def test_seed_changes_random_choices():
    x = _matrix()
    ids = np.arange(300)
    a = tokenize_cells(x, ids, TokenizerConfig(max_seq_len=25, seed=0), cls_id=CLS)
    b = tokenize_cells(x, ids, TokenizerConfig(max_seq_len=25, seed=1), cls_id=CLS)
    assert not np.array_equal(a.gene_ids, b.gene_ids)


def test_dense_and_sparse_inputs_agree():
    x = _matrix()
    ids = np.arange(300)
    cfg = TokenizerConfig(max_seq_len=30)
    a = tokenize_cells(x, ids, cfg, cls_id=CLS)
    b = tokenize_cells(x.toarray(), ids, cfg, cls_id=CLS)
    c = tokenize_cells(x.tocsc(), ids, cfg, cls_id=CLS)
    for other in (b, c):
        np.testing.assert_array_equal(a.gene_ids, other.gene_ids)
        np.testing.assert_array_equal(a.values, other.values)


def test_include_zero_genes_and_unbinned():
    x = _matrix(n_cells=4, n_genes=30)
    ids = np.arange(30)
    ids[3] = -1
    tok = tokenize_cells(
        x, ids, TokenizerConfig(include_zero_genes=True, cls_value=0.0), cls_id=CLS
    )
    assert np.all(tok.lengths == 30)  # 29 vocabulary genes + cls
    genes, values = _cells(tok, 0)
    assert values[0] == 0.0
    np.testing.assert_array_equal(genes[1:], ids[ids >= 0])
    assert np.array_equal(values[1:] == 0, x.toarray()[0, ids >= 0] == 0)
    raw = tokenize_cells(x, ids, TokenizerConfig(n_bins=None), cls_id=CLS)
    _, raw_values = _cells(raw, 0)
    row = x.toarray()[0]
    np.testing.assert_array_equal(raw_values[1:], row[(row > 0) & (ids >= 0)])


def test_padding():
    x = _matrix()
    tok = tokenize_cells(x, np.arange(300), TokenizerConfig(max_seq_len=1000), cls_id=CLS)
    rows = np.array([3, 0, 5])
    padded = tok.pad(rows, pad_id=99, pad_value=-2.0)
    width = tok.lengths[rows].max()
    assert padded["gene_ids"].shape == (3, width)
    for k, i in enumerate(rows):
        n = tok.lengths[i]
        assert not padded["padding_mask"][k, :n].any() and padded["padding_mask"][k, n:].all()
        assert np.all(padded["gene_ids"][k, n:] == 99) and np.all(padded["values"][k, n:] == -2)


@pytest.mark.parametrize(
    ("value", "match"),
    [(np.nan, "NaN"), (np.inf, "NaN or infinite"), (-1.0, "negative")],
)
def test_bad_values_raise(value, match):
    x = _matrix(n_cells=5, n_genes=20).toarray()
    x[2, 4] = value
    with pytest.raises(ValueError, match=match):
        tokenize_cells(x, np.arange(20), TokenizerConfig(), cls_id=CLS)


def test_empty_cells_raise_or_are_allowed():
    x = _matrix(n_cells=5, n_genes=20).toarray()
    x[3] = 0
    with pytest.raises(ValueError, match="no expressed gene"):
        tokenize_cells(
            x,
            np.arange(20),
            TokenizerConfig(),
            cls_id=CLS,
            cell_labels=np.array([f"c{i}" for i in range(5)]),
        )
    tok = tokenize_cells(x, np.arange(20), TokenizerConfig(allow_empty_cells=True), cls_id=CLS)
    assert tok.lengths[3] == 1


def test_config_validation():
    with pytest.raises(ValueError):
        TokenizerConfig(max_seq_len=1)
    with pytest.raises(ValueError):
        TokenizerConfig(n_bins=2)


def test_empty_cells_follow_the_tokenizer_rule_for_every_matrix_layout():
    from scvi_scgpt.data import ModalityLayout, RowBlock
    from scvi_scgpt.model._atlas_blocks import find_empty_cells

    # genes 0-2 in the vocabulary, gene 3 not; modalities: genes 0-1 RNA (1), 2-3 ADT (2)
    ids = np.array([5, 6, 7, -1])
    x = sp.csr_matrix(
        np.array(
            [
                [0, 0, 0, 0],  # nothing
                [0, 0, 0, 4],  # only a gene outside the vocabulary
                [3, 0, 0, 0],  # one vocabulary gene
                [0, 0, 2, 1],  # one vocabulary gene (ADT)
                [1, 2, 0, 0],
            ],
            dtype=np.float32,
        )
    )
    x[4, 2] = 0.0  # an explicit zero is not expressed
    layout = ModalityLayout(
        column_modality=np.array([1, 1, 2, 2]),
        measured=np.array([[1, 1, 1]] * 3 + [[1, 1, 0], [1, 1, 1]], dtype=bool),
        cls_id=0,
        pad_id=3,
    )
    config = TokenizerConfig(max_seq_len=10, allow_empty_cells=True)
    for modalities, expected in ((None, [1, 1, 0, 0, 0]), (layout, [1, 1, 0, 1, 0])):
        tokens = tokenize_cells(x, ids, config, cls_id=CLS, modalities=modalities)
        only_cls = (np.diff(tokens.indptr) == 1).tolist()
        assert only_cls == [bool(e) for e in expected]
        for matrix in (x, x.tocsc(), x.toarray()):
            seg = RowBlock(0, np.arange(5), matrix, np.array(list("abcde")), {}, modalities)
            assert find_empty_cells(seg, ids).tolist() == [bool(e) for e in expected]
