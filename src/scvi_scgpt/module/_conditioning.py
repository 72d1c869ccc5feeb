"""What the decoders see besides the transformer output: batch and modality embeddings.

Official semantics. A ``TransformerModel`` with batch labels concatenates the batch embedding
onto each token's output (GEP decoder) and onto the cell embedding (GEPC cell side). A
``MultiOmicTransformerModel`` concatenates ``batch_emb + mod_emb`` (or either alone) onto
each token's output and onto the gene-token embeddings (GEPC gene side), and
``batch_emb + mod_emb[<cls>]`` onto the cell embedding; the modality embedding never enters
the encoder unless ``mod_in_input`` asks for it (a deviation).
"""

from __future__ import annotations

import torch
from torch import nn


def decoder_inputs(
    module: nn.Module,
    encoded: torch.Tensor,
    cell_emb: torch.Tensor,
    gene_embs: torch.Tensor,
    batch_index: torch.Tensor | None,
    modality_ids: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs ``(tokens, cell, genes)`` of the GEP decoder and of both GEPC sides.

    Parameters
    ----------
    module
        The :class:`~scvi_scgpt.module.SCGPTModule`.
    encoded
        ``(B, L, d)`` transformer output.
    cell_emb
        ``(B, d)`` cell embedding.
    gene_embs
        ``(B, L, d)`` LayerNorm-ed gene-token embeddings.
    batch_index
        ``(B,)`` batch codes (models with batch labels).
    modality_ids
        ``(B, L)`` modality ids (multi-omic models).
    """
    config = module.config
    batch_emb = None
    if config.use_batch_labels:
        batch_emb = module.batch_encoder(module._batch(batch_index, encoded))
    if not config.use_mod:
        if batch_emb is None:
            return encoded, cell_emb, gene_embs
        tokens = torch.cat([encoded, batch_emb.unsqueeze(1).expand_as(encoded)], dim=2)
        return tokens, torch.cat([cell_emb, batch_emb], dim=1), gene_embs
    if modality_ids is None:
        raise ValueError("This multi-omic model needs the tokens' modality ids.")
    mod_emb = module.mod_encoder(modality_ids.long())
    token_cond = mod_emb
    cell_cond = module.cell_embedding(mod_emb, None, None)
    if batch_emb is not None:
        token_cond = token_cond + batch_emb.unsqueeze(1)
        cell_cond = cell_cond + batch_emb
    return (
        torch.cat([encoded, token_cond.to(encoded.dtype)], dim=2),
        torch.cat([cell_emb, cell_cond.to(cell_emb.dtype)], dim=1),
        torch.cat([gene_embs, token_cond.to(gene_embs.dtype)], dim=2),
    )
