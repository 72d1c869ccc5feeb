"""Domain batch-norm statistics recomputed with a model's current weights."""

from __future__ import annotations

import logging

import numpy as np
import torch
from scvi import REGISTRY_KEYS

from scvi_scgpt._constants import TOKEN_KEYS

logger = logging.getLogger(__name__)


@torch.no_grad()
def refresh_domain_statistics(
    model,
    domains: list[int],
    batch_size: int,
    cells: np.ndarray | None = None,
) -> None:
    """Recompute the DSBN running mean/variance of ``domains`` from the model's AnnData.

    Each domain's statistics become the average over its cells (``cells``: row indices to
    use, default every cell) of the batch statistics of its real tokens, computed with the
    weights the model has now. Training keeps exponential running averages (momentum 0.1)
    of embeddings that changed as it went, so after training they describe earlier
    weights; a new batch estimated from fresh statistics would then sit apart from the
    reference batches (measured by ``benchmarks/mapping_quality.py``). Only the input
    embedding runs, not the transformer. Models without DSBN are left as they are.

    Parameters
    ----------
    model
        An SCGPT model whose AnnData holds the cells of ``domains``.
    domains
        Batch codes whose statistics are recomputed; the others are not touched.
    batch_size
        Cells per forward pass.
    cells
        Row indices of the model's AnnData to use (e.g. the training cells).
    """
    module = model.module
    if not domains or not hasattr(module, "dsbn"):
        return
    codes = np.asarray(model.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel()
    rows = np.arange(len(codes)) if cells is None else np.asarray(cells)
    was_training = module.training
    module.eval()

    def update_statistics(tokens, _positions):
        # in train mode, the one domain of these cells updates its running statistics
        module.embed_inputs(
            tokens[TOKEN_KEYS.GENE_IDS],
            tokens[TOKEN_KEYS.VALUES],
            tokens[TOKEN_KEYS.PADDING_MASK],
            tokens.get(TOKEN_KEYS.BATCH),
        )

    try:
        for d in domains:
            domain_cells = rows[codes[rows] == d]
            if len(domain_cells) == 0:
                continue
            bn = module.dsbn.bns[d]
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over all the domain's cells
            module.dsbn.training = True  # statistics of real tokens only (other bns stay)
            bn.train()
            try:
                for _ in model._run_batches(
                    model.adata,
                    domain_cells,
                    update_statistics,
                    batch_size=batch_size,
                    progress_bar=False,
                ):
                    pass
            finally:
                bn.momentum = 0.1
                bn.eval()
                module.dsbn.training = False
            logger.info(
                "DSBN statistics of batch %d recomputed from %d cells.", d, len(domain_cells)
            )
    finally:
        module.train(was_training)
