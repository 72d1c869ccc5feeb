"""The count decoder's likelihood (scvi-tools' negative-binomial distributions)."""

from __future__ import annotations

import torch
from scvi.distributions import NegativeBinomial, ZeroInflatedNegativeBinomial


def count_distribution(
    decoded: dict[str, torch.Tensor], library: torch.Tensor
) -> NegativeBinomial | ZeroInflatedNegativeBinomial:
    """The count distribution of decoded cells: mean ``scale * library``.

    Parameters
    ----------
    decoded
        Output of :class:`~scvi_scgpt.nn.CountDecoder` (``scale``, ``theta`` and, zero-inflated,
        ``dropout_logits``), ``(B, G)`` each.
    library
        ``(B,)`` or ``(B, 1)`` library sizes (observed total counts of the decoded genes).
    """
    mu = decoded["scale"] * library.reshape(-1, 1).to(decoded["scale"].dtype)
    if "dropout_logits" in decoded:
        return ZeroInflatedNegativeBinomial(
            mu=mu,
            theta=decoded["theta"],
            zi_logits=decoded["dropout_logits"],
            scale=decoded["scale"],
        )
    return NegativeBinomial(mu=mu, theta=decoded["theta"], scale=decoded["scale"])


def count_nll(decoded: dict[str, torch.Tensor], counts: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of ``counts`` ``(B, G)``, mean over genes and cells.

    The library size is each cell's observed total over the decoded genes. The mean over genes
    (scVI sums) keeps the term's scale independent of the number of genes, so its weight
    against the token objectives means the same on any data.
    """
    counts = counts.float()
    dist = count_distribution(decoded, counts.sum(1).clamp(min=1.0))
    return -dist.log_prob(counts).mean()
