"""Exceptions raised by scvi-scgpt."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file or directory that cannot be used (corrupt, unsafe, inconsistent)."""
