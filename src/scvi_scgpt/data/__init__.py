"""Vocabulary, gene matching, binning and tokenization (numpy and AnnData only)."""

from __future__ import annotations

from scvi_scgpt.data._annbatch import AnnbatchSource, is_annbatch_collection
from scvi_scgpt.data._atlas_lock import AtlasOutputLocked
from scvi_scgpt.data._atlas_store import AtlasStore
from scvi_scgpt.data._binning import bin_expression, quantile_edges
from scvi_scgpt.data._files import close_store, open_anndata_file, read_gene_names
from scvi_scgpt.data._genes import GeneMatch, ensembl_to_symbol, is_ensembl_id, match_genes
from scvi_scgpt.data._modalities import (
    MODALITY_NAMES,
    feature_tokens,
    modality_vocabulary,
    peak_tokens,
    protein_tokens,
)
from scvi_scgpt.data._open_source import is_soma_uri, open_source
from scvi_scgpt.data._soma import SomaSource
from scvi_scgpt.data._sources import (
    AnnDataFileSource,
    BlockSpec,
    CellSource,
    InMemorySource,
    RowBlock,
    SourcePart,
)
from scvi_scgpt.data._tokenize import (
    ModalityLayout,
    TokenizedCells,
    TokenizerConfig,
    check_expression_values,
    tokenize_cells,
)
from scvi_scgpt.data._vocab import GeneVocab, vocab_from_anndata_files

__all__ = [
    "AnnbatchSource",
    "is_annbatch_collection",
    "AnnDataFileSource",
    "AtlasOutputLocked",
    "AtlasStore",
    "BlockSpec",
    "CellSource",
    "InMemorySource",
    "RowBlock",
    "SomaSource",
    "SourcePart",
    "is_soma_uri",
    "open_source",
    "vocab_from_anndata_files",
    "GeneMatch",
    "GeneVocab",
    "MODALITY_NAMES",
    "ModalityLayout",
    "TokenizedCells",
    "TokenizerConfig",
    "bin_expression",
    "close_store",
    "check_expression_values",
    "ensembl_to_symbol",
    "feature_tokens",
    "is_ensembl_id",
    "match_genes",
    "modality_vocabulary",
    "open_anndata_file",
    "peak_tokens",
    "protein_tokens",
    "quantile_edges",
    "read_gene_names",
    "tokenize_cells",
]
