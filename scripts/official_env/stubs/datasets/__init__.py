"""Placeholder for Hugging Face ``datasets`` in the side environment.

The official ``scgpt`` package imports ``datasets`` only from its ``scbank``
sub-package (on-disk cell databanks), which our fixture scripts never use.
The real package drags in pyarrow and friends, so this tiny module just makes
the import succeed and fails loudly if anything actually tries to use it.
"""

from __future__ import annotations

__version__ = "0.0.0+stub"


class Dataset:
    """Unusable placeholder for ``datasets.Dataset``."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("datasets is stubbed in the scGPT side environment")

    @classmethod
    def from_dict(cls, *args: object, **kwargs: object) -> Dataset:
        """Raise: the stand-in cannot build datasets."""
        raise RuntimeError("datasets is stubbed in the scGPT side environment")


def load_dataset(*args: object, **kwargs: object) -> Dataset:
    """Raise: the stand-in cannot load datasets."""
    raise RuntimeError("datasets is stubbed in the scGPT side environment")
