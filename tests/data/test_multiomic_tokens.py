"""Multi-omic tokens: modality vocabulary, feature names, per-modality binning, mosaic cells."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from scvi_scgpt._constants import TOKEN_KEYS
from scvi_scgpt.data import (
    ModalityLayout,
    TokenizerConfig,
    feature_tokens,
    modality_vocabulary,
    peak_tokens,
    protein_tokens,
    tokenize_cells,
)

# modality vocabulary ["Protein", "RNA", "<pad>", "<cls>", "<eoc>"]
PROT, RNA, PAD, CLS = 0, 1, 2, 3


def test_modality_vocabulary_is_sorted_names_then_specials():
    assert modality_vocabulary(["RNA", "Protein"]) == ["Protein", "RNA", "<pad>", "<cls>", "<eoc>"]
    assert modality_vocabulary(["RNA", "ATAC", "Protein"])[:3] == ["ATAC", "Protein", "RNA"]
    with pytest.raises(ValueError, match="special"):
        modality_vocabulary(["RNA", "<cls>"])


def test_feature_tokens():
    assert protein_tokens(["CD4"]) == ["p_CD4"]
    assert peak_tokens(["chr1:1000-1500", "chr1-1000-1500", "chrX_5_9"]) == [
        "chr1:1000-1500",
        "chr1:1000-1500",
        "chrX:5-9",
    ]
    assert feature_tokens("RNA", ["CD4"]) == ["CD4"]
    with pytest.raises(ValueError, match="not a region"):
        peak_tokens(["CD4"])
    with pytest.raises(ValueError, match="ends before"):
        peak_tokens(["chr1:1500-1000"])


def _layout(measured):
    # columns 0-4 RNA, 5-6 protein
    return ModalityLayout(np.array([RNA] * 5 + [PROT] * 2), measured, cls_id=CLS, pad_id=PAD)


def _cells(protein_scale: float = 1.0):
    rna = np.array([[1, 2, 3, 4, 5], [0, 3, 0, 1, 0]], dtype=np.float32)
    prot = np.array([[100, 900], [40, 0]], dtype=np.float32) * protein_scale
    return sp.csr_matrix(np.hstack([rna, prot]))


def _tokens(matrix, measured, **config):
    cfg = TokenizerConfig(n_bins=11, **config)
    ids = np.arange(10, 17)
    return tokenize_cells(matrix, ids, cfg, cls_id=99, modalities=_layout(measured))


def test_each_modality_is_binned_on_its_own():
    tokens = _tokens(_cells(), np.ones((2, 5), dtype=bool))
    cell0 = slice(tokens.indptr[0], tokens.indptr[1])
    mods = tokens.modality_ids[cell0]
    values = tokens.values[cell0]
    assert mods[0] == CLS
    # each modality spans the bins on its own: the proteins (100, 900) are all larger than
    # the RNA values (1..5), so one joint binning would give the smaller protein a high bin
    for modality in (RNA, PROT):
        assert values[mods == modality].min() == 1
        assert values[mods == modality].max() == 10
    np.testing.assert_array_equal(mods[1:], [RNA] * 5 + [PROT] * 2)


def test_modality_ids_padded_with_the_pad_id():
    tokens = _tokens(_cells(), np.ones((2, 5), dtype=bool))
    padded = tokens.pad(None, pad_id=0, pad_value=-2.0, modality_pad_id=PAD)
    mods = padded[TOKEN_KEYS.MODALITY_IDS]
    assert mods.shape == padded[TOKEN_KEYS.GENE_IDS].shape
    np.testing.assert_array_equal(mods[padded[TOKEN_KEYS.PADDING_MASK]], PAD)
    np.testing.assert_array_equal(mods[:, 0], CLS)


@pytest.mark.parametrize("include_zero_genes", [False, True])
def test_unmeasured_modality_has_no_tokens(include_zero_genes):
    measured = np.ones((2, 5), dtype=bool)
    measured[1, PROT] = False
    matrix = _cells()
    tokens = _tokens(matrix, measured, include_zero_genes=include_zero_genes)
    cell1 = tokens.modality_ids[tokens.indptr[1] : tokens.indptr[2]]
    assert PROT not in cell1  # its protein value 40 is dropped: not measured
    cell0 = tokens.modality_ids[tokens.indptr[0] : tokens.indptr[1]]
    assert (cell0 == PROT).sum() == 2
    if include_zero_genes:
        assert (cell1 == RNA).sum() == 5  # measured modality keeps its zeros


def test_layout_must_fit_the_matrix():
    with pytest.raises(ValueError, match="does not fit"):
        _tokens(_cells(), np.ones((3, 5), dtype=bool))


def test_presence_only_modality_gets_the_top_bin_for_every_entry():
    """Binary peaks: no tie-spread random bins; the other modality is binned as before."""
    matrix = sp.csr_matrix(
        np.hstack(
            [np.array([[1, 2, 3, 4, 5], [0, 3, 0, 1, 0]]), np.array([[1, 1], [1, 0]])]
        ).astype(np.float32)
    )
    measured = np.ones((2, 5), dtype=bool)
    cfg = TokenizerConfig(n_bins=11)
    ids = np.arange(10, 17)
    plain = tokenize_cells(matrix, ids, cfg, cls_id=99, modalities=_layout(measured))
    layout = ModalityLayout(_layout(measured).column_modality, measured, CLS, PAD, (PROT,))
    presence = tokenize_cells(matrix, ids, cfg, cls_id=99, modalities=layout)
    is_prot = presence.modality_ids == PROT
    assert is_prot.sum() == 3
    assert set(presence.values[is_prot]) == {10.0}
    assert len(set(plain.values[plain.modality_ids == PROT])) > 1  # ties spread at random
    rna = presence.modality_ids == RNA
    np.testing.assert_array_equal(presence.values[rna], plain.values[plain.modality_ids == RNA])
    assert layout.rows(np.array([1])).presence_only == (PROT,)
