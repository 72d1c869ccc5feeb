"""Gene vocabulary: token <-> id maps compatible with the official ``vocab.json``."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from scvi_scgpt._constants import CLS_TOKEN, EOC_TOKEN, PAD_TOKEN, SPECIAL_TOKENS
from scvi_scgpt.data._files import read_gene_names

_BUNDLED_CENSUS_VOCAB = "census_vocab.json.gz"


class GeneVocab:
    """Ordered gene vocabulary mapping gene tokens to embedding rows.

    The id of a token is the row of the gene-embedding matrix that represents it, so a
    vocabulary must match the checkpoint it came with. The official ``<pad>``, ``<cls>`` and
    ``<eoc>`` specials are appended (in that order) when missing.

    Parameters
    ----------
    tokens
        Tokens in id order (``tokens[i]`` has id ``i``). Must be unique.
    add_specials
        Append the special tokens that are missing.

    Examples
    --------
    >>> vocab = GeneVocab.from_genes(["CD3E", "MS4A1"])
    >>> vocab["MS4A1"], vocab.pad_id, len(vocab)
    (1, 2, 5)
    """

    def __init__(self, tokens: Iterable[str], *, add_specials: bool = True) -> None:
        tokens = [str(t) for t in tokens]
        index: dict[str, int] = {}
        duplicates = []
        for i, tok in enumerate(tokens):
            if tok in index:
                duplicates.append(tok)
            index[tok] = i
        if duplicates:
            raise ValueError(
                f"Gene vocabulary has {len(duplicates)} duplicated tokens "
                f"(e.g. {duplicates[:5]}); every token must be unique."
            )
        if add_specials:
            for special in SPECIAL_TOKENS:
                if special not in index:
                    index[special] = len(tokens)
                    tokens.append(special)
        self._tokens = tokens
        self._index = index

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_genes(cls, genes: Iterable[str], *, add_specials: bool = True) -> GeneVocab:
        """Build a vocabulary from gene names, keeping their order and dropping repeats."""
        return cls(dict.fromkeys(str(g) for g in genes), add_specials=add_specials)

    @classmethod
    def from_dict(cls, mapping: dict[str, int], *, add_specials: bool = True) -> GeneVocab:
        """Build a vocabulary from an official ``{token: id}`` mapping.

        Ids must be exactly ``0 .. n-1`` (each once), as in the official ``vocab.json``.
        """
        if not isinstance(mapping, dict) or not mapping:
            raise ValueError("A vocabulary must be a non-empty JSON object {token: id}.")
        ids = []
        for token, idx in mapping.items():
            if isinstance(idx, bool) or not isinstance(idx, int | np.integer):
                raise ValueError(f"Vocabulary id of {token!r} is {idx!r}, expected an integer.")
            ids.append(int(idx))
        order = np.argsort(ids, kind="stable")
        sorted_ids = np.asarray(ids)[order]
        if not np.array_equal(sorted_ids, np.arange(len(ids))):
            raise ValueError(
                "Vocabulary ids must be consecutive integers 0..n-1, each used once "
                f"(got {len(ids)} tokens with ids from {sorted_ids.min()} to {sorted_ids.max()})."
            )
        tokens = list(mapping)
        return cls([tokens[i] for i in order], add_specials=add_specials)

    @classmethod
    def from_file(cls, path: str | Path, *, add_specials: bool = True) -> GeneVocab:
        """Read an official ``vocab.json`` (``{token: id}``); ``.json.gz`` also works."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Vocabulary file {str(path)!r} does not exist.")
        opener = gzip.open if path.suffix == ".gz" else open
        try:
            with opener(path, "rt", encoding="utf-8") as fh:
                mapping = json.load(fh)
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
            raise ValueError(f"Could not read vocabulary {str(path)!r}: {err}") from err
        return cls.from_dict(mapping, add_specials=add_specials)

    @classmethod
    def from_anndata_files(cls, files, *, gene_symbols_key: str | None = None) -> GeneVocab:
        """Build a vocabulary of every gene in several on-disk AnnData files.

        Files are ``.h5ad`` or ``.zarr``; genes keep their order of first appearance, the
        specials follow, and no expression matrix is loaded.
        """
        if not files:
            raise ValueError("No files given.")
        genes: dict[str, None] = {}
        for path in files:
            genes.update(dict.fromkeys(str(g) for g in read_gene_names(path, gene_symbols_key)))
        return cls.from_genes(genes)

    @classmethod
    def census(cls) -> GeneVocab:
        """The 60,697-token vocabulary of the official whole-human model (bundled).

        60,694 CellxGene census gene symbols followed by ``<pad>``, ``<cls>``, ``<eoc>``.
        """
        return cls(_census_tokens(), add_specials=True)

    # ------------------------------------------------------------------ io
    def to_dict(self) -> dict[str, int]:
        """The official ``{token: id}`` mapping."""
        return {tok: i for i, tok in enumerate(self._tokens)}

    def save(self, path: str | Path) -> None:
        """Write the vocabulary as an official ``vocab.json``."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")

    # ------------------------------------------------------------------ lookups
    @property
    def tokens(self) -> list[str]:
        """Tokens in id order (a copy)."""
        return list(self._tokens)

    @property
    def pad_id(self) -> int:
        """Id of ``<pad>``."""
        return self._index[PAD_TOKEN]

    @property
    def cls_id(self) -> int:
        """Id of ``<cls>``."""
        return self._index[CLS_TOKEN]

    @property
    def eoc_id(self) -> int:
        """Id of ``<eoc>``."""
        return self._index[EOC_TOKEN]

    def lookup(self, tokens: Sequence[str], *, default: int = -1) -> np.ndarray:
        """Ids of ``tokens`` as an ``int64`` array; unknown tokens get ``default``."""
        get = self._index.get
        return np.fromiter(
            (get(str(t), default) for t in tokens), dtype=np.int64, count=len(tokens)
        )

    def __getitem__(self, token: str) -> int:
        try:
            return self._index[token]
        except KeyError:
            raise KeyError(f"{token!r} is not in the gene vocabulary.") from None

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def __len__(self) -> int:
        return len(self._tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GeneVocab) and self._tokens == other._tokens

    def __hash__(self) -> int:
        return hash(tuple(self._tokens))

    def __repr__(self) -> str:
        return f"GeneVocab({len(self)} tokens, pad={self.pad_id}, cls={self.cls_id})"


@lru_cache(maxsize=1)
def _census_tokens() -> tuple[str, ...]:
    ref = resources.files("scvi_scgpt.resources").joinpath(_BUNDLED_CENSUS_VOCAB)
    with ref.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as fh:
        mapping = json.load(fh)
    return tuple(GeneVocab.from_dict(mapping, add_specials=False).tokens)


def vocab_from_anndata_files(
    files: Sequence[str | Path], *, gene_symbols_key: str | None = None
) -> GeneVocab:
    """A vocabulary of every gene in ``files`` (order of first appearance) plus specials.

    Same as :meth:`GeneVocab.from_anndata_files`.
    """
    return GeneVocab.from_anndata_files(files, gene_symbols_key=gene_symbols_key)
