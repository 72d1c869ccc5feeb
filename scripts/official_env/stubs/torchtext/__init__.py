"""Minimal stand-in for ``torchtext`` used only by the side environment.

The real torchtext wheels are no longer maintained and fail to load against
recent torch builds.  The official ``scgpt`` package only needs the small
vocabulary API from ``torchtext.vocab``; this package provides a pure-Python
re-implementation of just that surface (written from scratch for this repo).
It is never installed into the project's own environment.
"""

from __future__ import annotations

from . import vocab

__version__ = "0.0.0+stub"

__all__ = ["vocab"]
