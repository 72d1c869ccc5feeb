"""Matching an AnnData's genes to a :class:`GeneVocab` (symbols or Ensembl ids)."""

from __future__ import annotations

import gzip
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np

from scvi_scgpt.data._vocab import GeneVocab

_ENSEMBL_GENE = re.compile(r"^ENS[A-Z]*G\d{11}(\.\d+)?(_PAR_Y)?$")
_GENCODE_TABLE = "gencode_v44_gene_id2name.csv.gz"
#: Below this fraction of matched genes a warning is emitted.
LOW_COVERAGE_WARNING = 0.5


@dataclass(frozen=True)
class GeneMatch:
    """Result of matching a list of genes to a vocabulary.

    Attributes
    ----------
    vocab_ids
        ``int64`` array, one entry per input gene: its vocabulary id, or ``-1`` when unmatched.
    n_genes
        Number of input genes.
    n_matched
        Number of genes with a vocabulary id.
    n_via_ensembl
        How many matches were made by translating an Ensembl id to a symbol.
    n_duplicate_matches
        Genes dropped because another gene already matched the same vocabulary token.
    """

    vocab_ids: np.ndarray
    n_genes: int
    n_matched: int
    n_via_ensembl: int = 0
    n_duplicate_matches: int = 0

    @property
    def coverage(self) -> float:
        """Fraction of input genes found in the vocabulary."""
        return self.n_matched / max(self.n_genes, 1)

    def summary(self) -> str:
        """One line such as ``"matched 14,203 / 16,727 genes (84.9%)"``."""
        text = f"matched {self.n_matched:,} / {self.n_genes:,} genes ({100 * self.coverage:.1f}%)"
        if self.n_via_ensembl:
            text += f", {self.n_via_ensembl:,} through Ensembl ids"
        if self.n_duplicate_matches:
            text += f", {self.n_duplicate_matches:,} dropped as duplicates"
        return text


def is_ensembl_id(name: str) -> bool:
    """Whether ``name`` looks like an Ensembl gene id (versioned or not)."""
    return bool(_ENSEMBL_GENE.match(name))


@lru_cache(maxsize=1)
def ensembl_to_symbol() -> dict[str, str]:
    """Unversioned Ensembl gene id -> gene symbol, from the bundled GENCODE v44 table."""
    ref = resources.files("scvi_scgpt.resources").joinpath(_GENCODE_TABLE)
    table: dict[str, str] = {}
    with ref.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as fh:
        for line in fh:
            gene_id, _, symbol = line.rstrip("\n").partition(",")
            if gene_id and symbol:
                table.setdefault(gene_id.split(".")[0], symbol)
    return table


def _strip_version(gene_id: str) -> str:
    return gene_id.split(".")[0]


def match_genes(
    genes: Sequence[str],
    vocab: GeneVocab,
    *,
    source: str = "var_names",
) -> GeneMatch:
    """Map gene names to vocabulary ids.

    A gene matches when its name is a vocabulary token. A name that is an Ensembl gene id
    (``ENSG00000141510`` or ``ENSG00000141510.18``) that is not itself a token is translated to
    its symbol with the bundled GENCODE v44 table; ``SYMBOL_ENSG...`` (the form the official
    vocabulary uses for symbols shared by several genes) is tried before the bare symbol.

    Parameters
    ----------
    genes
        Gene names, one per variable.
    vocab
        The vocabulary to match against.
    source
        Where the names come from, used in messages only.

    Returns
    -------
    The :class:`GeneMatch`.

    Raises
    ------
    ValueError
        When the names are not unique, or when no gene matches.
    """
    names = np.asarray([str(g) for g in genes], dtype=object)
    if len(names) == 0:
        raise ValueError("The AnnData has no genes (n_vars == 0).")
    uniq, counts = np.unique(names, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1]
        raise ValueError(
            f"{len(dup)} gene names in {source} are duplicated (e.g. {list(dup[:5])}). Gene "
            "tokens must be unique: aggregate or drop the duplicates, or call "
            "`adata.var_names_make_unique()` (renamed copies are then left unmatched)."
        )
    ids = vocab.lookup(names)
    via_ensembl = np.zeros(len(names), dtype=bool)
    unmatched = np.flatnonzero(ids < 0)
    if len(unmatched):
        table = None
        for i in unmatched:
            name = names[i]
            if not is_ensembl_id(name):
                continue
            if table is None:
                table = ensembl_to_symbol()
            base = _strip_version(name)
            symbol = table.get(base)
            # the disambiguated SYMBOL_ENSG... token names exactly this gene: try it first
            for candidate in (base, f"{symbol}_{base}" if symbol else None, symbol):
                if candidate is not None and candidate in vocab:
                    ids[i] = vocab[candidate]
                    via_ensembl[i] = candidate != base
                    break
    # Several Ensembl ids can translate to one symbol: keep the first, drop the others.
    matched = np.flatnonzero(ids >= 0)
    _, first = np.unique(ids[matched], return_index=True)
    repeated = np.setdiff1d(np.arange(len(matched)), first)
    n_dup = len(repeated)
    if n_dup:
        ids[matched[repeated]] = -1
        warnings.warn(
            f"{n_dup} genes in {source} map to a vocabulary token already taken by another "
            "gene (e.g. two Ensembl ids with one symbol); only the first is used.",
            UserWarning,
            stacklevel=3,
        )
    result = GeneMatch(
        vocab_ids=ids,
        n_genes=len(names),
        n_matched=int((ids >= 0).sum()),
        n_via_ensembl=int((via_ensembl & (ids >= 0)).sum()),
        n_duplicate_matches=n_dup,
    )
    if result.n_matched == 0:
        raise ValueError(
            f"No gene in {source} is in the model vocabulary ({len(vocab):,} tokens; first genes "
            f"given: {list(names[:5])}). The official vocabularies use HGNC/CellxGene symbols: "
            "pass `gene_symbols_key=` in setup_anndata to use a var column of symbols, or "
            "use Ensembl gene ids as var_names."
        )
    if result.coverage < LOW_COVERAGE_WARNING:
        warnings.warn(
            f"Low gene coverage: {result.summary()} of {source}. Embeddings from so few genes "
            "may be unreliable; check that the names are symbols of the model's species.",
            UserWarning,
            stacklevel=3,
        )
    return result
