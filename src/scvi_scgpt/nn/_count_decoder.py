"""Count decoder: a cell's whole expression profile from its cell embedding (not official).

The shape follows scVI's decoder: a hidden layer, optionally conditioned on the batch (the
one-hot batch is concatenated to its input and to the output layer's input), a softmax over
the decoded genes (the normalised expression, scvi-tools' ``"scale"``), per-gene inverse
dispersions (optionally per batch) and, for the zero-inflated likelihood, per-gene dropout
logits. The negative-binomial mean is ``scale * library``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Likelihoods of the count decoder.
COUNT_LIKELIHOODS = ("nb", "zinb")
#: Dispersion layouts: one inverse dispersion per gene, or per gene and batch.
COUNT_DISPERSIONS = ("gene", "gene-batch")


class CountDecoder(nn.Module):
    """Negative-binomial (or zero-inflated) decoder of counts from a cell embedding.

    Parameters
    ----------
    d_in
        Width of the cell embedding.
    n_genes
        Genes decoded (the rows of :attr:`gene_ids`, a buffer saved with the weights: the
        vocabulary id of each decoded gene).
    n_batch
        Batches the decoder is conditioned on (``0``: not conditioned).
    n_hidden
        Width of the hidden layer.
    likelihood
        ``"nb"`` or ``"zinb"``.
    dispersion
        ``"gene"`` or ``"gene-batch"`` (needs ``n_batch >= 1``).
    """

    def __init__(
        self,
        d_in: int,
        n_genes: int,
        *,
        n_batch: int = 0,
        n_hidden: int = 128,
        likelihood: str = "nb",
        dispersion: str = "gene",
    ) -> None:
        super().__init__()
        if likelihood not in COUNT_LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {COUNT_LIKELIHOODS}, not {likelihood!r}.")
        if dispersion not in COUNT_DISPERSIONS:
            raise ValueError(f"dispersion must be one of {COUNT_DISPERSIONS}, not {dispersion!r}.")
        if dispersion == "gene-batch" and n_batch < 1:
            raise ValueError("dispersion='gene-batch' needs a batch-conditioned decoder.")
        self.n_batch = n_batch
        self.likelihood = likelihood
        self.dispersion = dispersion
        self.register_buffer("gene_ids", torch.full((n_genes,), -1, dtype=torch.long))
        self.hidden = nn.Linear(d_in + n_batch, n_hidden)
        self.norm = nn.LayerNorm(n_hidden)
        self.scale_logits = nn.Linear(n_hidden + n_batch, n_genes)
        if likelihood == "zinb":
            self.dropout_logits = nn.Linear(n_hidden + n_batch, n_genes)
        rows = (n_batch, n_genes) if dispersion == "gene-batch" else (n_genes,)
        self.log_theta = nn.Parameter(torch.zeros(rows))

    def _with_batch(self, x: torch.Tensor, batch_index: torch.Tensor | None) -> torch.Tensor:
        if not self.n_batch:
            return x
        if batch_index is None:
            raise ValueError("This count decoder is conditioned on the batch: pass batch codes.")
        one_hot = F.one_hot(batch_index.reshape(-1).long(), self.n_batch).to(x.dtype)
        return torch.cat([x, one_hot], dim=-1)

    def forward(
        self, cell_emb: torch.Tensor, batch_index: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Decode ``(B, d_in)`` cell embeddings.

        Returns
        -------
        ``{"scale": (B, G), "theta": (B, G)}`` (float32; ``scale`` rows sum to 1) and, for
        ``"zinb"``, ``"dropout_logits": (B, G)``.
        """
        x = cell_emb.float()
        h = F.relu(self.norm(self.hidden(self._with_batch(x, batch_index))))
        h = self._with_batch(h, batch_index)
        out = {"scale": torch.softmax(self.scale_logits(h).float(), dim=-1)}
        if self.dispersion == "gene-batch":
            theta = self.log_theta[batch_index.reshape(-1).long()].exp()
        else:
            theta = self.log_theta.exp().expand_as(out["scale"])
        out["theta"] = theta.float()
        if self.likelihood == "zinb":
            out["dropout_logits"] = self.dropout_logits(h).float()
        return out
