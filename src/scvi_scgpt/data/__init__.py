"""Vocabulary, gene matching, binning and tokenization."""

from __future__ import annotations

from scvi_scgpt.data._binning import bin_expression, quantile_edges
from scvi_scgpt.data._genes import GeneMatch, ensembl_to_symbol, is_ensembl_id, match_genes
from scvi_scgpt.data._stream import (
    AnnDataFileStream,
    StreamingAnnDataModule,
    vocab_from_anndata_files,
)
from scvi_scgpt.data._tokenize import (
    TokenizedCells,
    TokenizerConfig,
    check_expression_values,
    tokenize_cells,
)
from scvi_scgpt.data._vocab import GeneVocab

__all__ = [
    "AnnDataFileStream",
    "StreamingAnnDataModule",
    "vocab_from_anndata_files",
    "GeneMatch",
    "GeneVocab",
    "TokenizedCells",
    "TokenizerConfig",
    "bin_expression",
    "check_expression_values",
    "ensembl_to_symbol",
    "is_ensembl_id",
    "match_genes",
    "quantile_edges",
    "tokenize_cells",
]
