"""Pure-Python token <-> index vocabulary mimicking the ``torchtext.vocab`` API.

Only the behaviour needed by the official ``scgpt`` package is implemented:
consecutive integer ids, an optional default index for unknown tokens,
insertion/appending of tokens and bulk look-ups.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping


class _TokenTable:
    """Backing store: an ordered list of tokens plus a reverse map."""

    def __init__(self, tokens: Iterable[str] = ()) -> None:
        self.itos: list[str] = []
        self.stoi: dict[str, int] = {}
        self.default_index: int | None = None
        for tok in tokens:
            self.append(tok)

    def append(self, token: str) -> None:
        if token in self.stoi:
            raise RuntimeError(f"token {token!r} already exists in the vocabulary")
        self.stoi[token] = len(self.itos)
        self.itos.append(token)

    def insert(self, token: str, index: int) -> None:
        if token in self.stoi:
            raise RuntimeError(f"token {token!r} already exists in the vocabulary")
        if index < 0 or index > len(self.itos):
            raise RuntimeError(
                f"index {index} is out of range for a vocabulary of size {len(self.itos)}"
            )
        self.itos.insert(index, token)
        self.stoi = {tok: i for i, tok in enumerate(self.itos)}

    def lookup(self, token: str) -> int:
        idx = self.stoi.get(token)
        if idx is not None:
            return idx
        if self.default_index is None:
            raise RuntimeError(f"token {token!r} not found and no default index is set")
        return self.default_index


class Vocab:
    """Mapping between string tokens and consecutive integer indices."""

    def __init__(self, vocab: _TokenTable | None = None) -> None:
        self.vocab = vocab if vocab is not None else _TokenTable()

    # -- container protocol -------------------------------------------------
    def __len__(self) -> int:
        return len(self.vocab.itos)

    def __contains__(self, token: object) -> bool:
        return token in self.vocab.stoi

    def __getitem__(self, token: str) -> int:
        return self.vocab.lookup(token)

    def __call__(self, tokens: Iterable[str]) -> list[int]:
        return self.lookup_indices(list(tokens))

    def __iter__(self):
        return iter(self.vocab.itos)

    # -- default index ------------------------------------------------------
    def set_default_index(self, index: int | None) -> None:
        self.vocab.default_index = index

    def get_default_index(self) -> int | None:
        return self.vocab.default_index

    # -- mutation -----------------------------------------------------------
    def insert_token(self, token: str, index: int) -> None:
        self.vocab.insert(token, index)

    def append_token(self, token: str) -> None:
        self.vocab.append(token)

    # -- look-ups -----------------------------------------------------------
    def lookup_token(self, index: int) -> str:
        if index < 0 or index >= len(self.vocab.itos):
            raise RuntimeError(f"index {index} out of range")
        return self.vocab.itos[index]

    def lookup_tokens(self, indices: Iterable[int]) -> list[str]:
        return [self.lookup_token(i) for i in indices]

    def lookup_indices(self, tokens: Iterable[str]) -> list[int]:
        return [self.vocab.lookup(t) for t in tokens]

    def get_stoi(self) -> dict[str, int]:
        return dict(self.vocab.stoi)

    def get_itos(self) -> list[str]:
        return list(self.vocab.itos)


def vocab(
    ordered_dict: Mapping[str, int],
    min_freq: int = 1,
    specials: list[str] | None = None,
    special_first: bool = True,
) -> Vocab:
    """Build a :class:`Vocab` from an (ordered) token -> frequency mapping."""
    specials = list(specials or [])
    tokens = [
        tok for tok, freq in ordered_dict.items() if freq >= min_freq and tok not in specials
    ]
    tokens = specials + tokens if special_first else tokens + specials
    return Vocab(_TokenTable(tokens))


def build_vocab_from_iterator(
    iterator: Iterable[Iterable[str]],
    min_freq: int = 1,
    specials: list[str] | None = None,
    special_first: bool = True,
    max_tokens: int | None = None,
) -> Vocab:
    """Count tokens from an iterator of token sequences and build a :class:`Vocab`."""
    counts: dict[str, int] = {}
    for seq in iterator:
        for tok in seq:
            counts[tok] = counts.get(tok, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if max_tokens is not None:
        ranked = ranked[: max(0, max_tokens - len(specials or []))]
    return vocab(OrderedDict(ranked), min_freq, specials, special_first)


__all__ = ["Vocab", "build_vocab_from_iterator", "vocab"]
