"""scvi-scgpt: the scGPT single-cell foundation model as an scvi-tools model."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

from scvi_scgpt import data, dataloaders, datasets, hub, model, module, nn, pl, tl, train
from scvi_scgpt._exceptions import CheckpointError
from scvi_scgpt.data import GeneVocab, TokenizerConfig, bin_expression, tokenize_cells
from scvi_scgpt.model import SCGPT
from scvi_scgpt.module import ArchitectureConfig, ObjectiveConfig, SCGPTModule

# Streaming moved from data/ (numpy and AnnData only) to dataloaders/ in 0.2. The old
# `scvi_scgpt.data.StreamingAnnDataModule` path keeps working: importing any submodule runs
# this file first. Set here, not imported in data/, so data/ never imports torch plumbing.
data.StreamingAnnDataModule = dataloaders.StreamingAnnDataModule
data.AnnDataFileStream = dataloaders.AnnDataFileStream

try:
    __version__ = version("scvi-scgpt")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

_logger = logging.getLogger(__name__)
if not _logger.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    _logger.addHandler(_handler)
    _logger.setLevel(logging.INFO)
    _logger.propagate = False

__all__ = [
    "SCGPT",
    "ArchitectureConfig",
    "CheckpointError",
    "GeneVocab",
    "ObjectiveConfig",
    "SCGPTModule",
    "TokenizerConfig",
    "bin_expression",
    "data",
    "dataloaders",
    "hub",
    "datasets",
    "model",
    "module",
    "nn",
    "pl",
    "tl",
    "tokenize_cells",
    "train",
]
