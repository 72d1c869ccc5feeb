"""scvi-scgpt: the scGPT single-cell foundation model as an scvi-tools model."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version

from scvi_scgpt import data, datasets, model, module, nn
from scvi_scgpt.data import GeneVocab, TokenizerConfig, bin_expression, tokenize_cells
from scvi_scgpt.model import SCGPT, CheckpointError
from scvi_scgpt.module import ArchitectureConfig, SCGPTModule

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
    "SCGPTModule",
    "TokenizerConfig",
    "bin_expression",
    "data",
    "datasets",
    "model",
    "module",
    "nn",
    "tokenize_cells",
]
