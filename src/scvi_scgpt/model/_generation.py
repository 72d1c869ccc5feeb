"""Generating expression of unmeasured genes with a generatively pretrained model."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from scvi_scgpt._constants import TOKEN_KEYS

if TYPE_CHECKING:
    from anndata import AnnData


class GenerationMixin:
    """``generate``: iterative prediction of genes under the generative attention mask."""

    @torch.inference_mode()
    def generate(
        self,
        adata: AnnData | None = None,
        genes: Sequence[str] | None = None,
        *,
        n_steps: int = 1,
        cell_prompt: np.ndarray | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        batch_size: int = 64,
    ) -> pd.DataFrame:
        """Predict the (binned) expression of ``genes`` for each cell.

        Gene prompt (default): the cell's expressed vocabulary genes, minus the target genes,
        are the known tokens and the target genes are generated. Cell prompt: pass
        ``cell_prompt`` (``(n_cells, d_model)``, e.g. embeddings from
        :meth:`get_latent_representation` with ``normalize=False``); the known tokens are
        then ``<cls>`` alone, carrying that embedding.

        Generation runs in ``n_steps`` rounds (paper, Methods): each round predicts every gene
        still to generate and fixes the most confident ``1 / (rounds left)`` of them, which
        become known tokens (with their predicted values) for the next rounds. Confidence is
        the agreement of the two expression heads (``-|GEP - GEPC|``) when the model has the
        GEPC head, else the certainty of the non-zero probability, else the predicted value.

        Parameters
        ----------
        adata
            Cells to generate for (set up with :meth:`setup_anndata`; default: the model's).
        genes
            Target genes (names in the model vocabulary).
        n_steps
            Generation rounds ``K``.
        cell_prompt
            Optional cell embeddings to prompt with instead of the measured genes.
        indices
            Cells to use (default: all).
        batch_size
            Cells per forward pass.

        Returns
        -------
        :class:`pandas.DataFrame` (cells x genes) of predicted values on the bin scale
        (0 .. ``n_bins - 1``). Nothing is written into ``adata``.
        """
        if not hasattr(self.module, "flag_encoder"):
            raise ValueError(
                "generate() needs a generatively pretrained model (flag_encoder): "
                "train(task='pretrain') or load a checkpoint that has it."
            )
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}.")
        if not genes:
            raise ValueError("Give the genes to generate.")
        target_ids = self.vocab_.lookup(list(genes))
        unknown = [g for g, i in zip(genes, target_ids) if i < 0]
        if unknown:
            raise ValueError(
                f"{len(unknown)} target genes are not in the vocabulary: {unknown[:5]}"
            )
        adata = self._validate_anndata(adata)
        idx = self._as_indices(adata, indices)
        if cell_prompt is not None:
            cell_prompt = np.asarray(cell_prompt, dtype=np.float32)
            if cell_prompt.shape != (len(idx), self.architecture.d_model):
                raise ValueError(
                    f"cell_prompt must have shape ({len(idx)}, {self.architecture.d_model}), "
                    f"got {cell_prompt.shape}."
                )
        self.module.eval()
        targets = torch.as_tensor(target_ids, device=self.device)
        max_bin = float((self.tokenizer_config.n_bins or 51) - 1)
        prompts = None if cell_prompt is None else torch.from_numpy(cell_prompt)

        def step(t, positions):
            prompt = None
            if prompts is not None:
                prompt = prompts[positions].to(self.device)
                keep_cls = torch.zeros_like(t[TOKEN_KEYS.PADDING_MASK])
                keep_cls[:, 1:] = True  # known tokens: <cls> only
                t[TOKEN_KEYS.PADDING_MASK] = t[TOKEN_KEYS.PADDING_MASK] | keep_cls
            return self._generate_batch(t, targets, n_steps, prompt, max_bin)

        # the target genes are removed from the known tokens
        column_ids = self._column_vocab_ids(adata)
        column_ids[np.isin(column_ids, target_ids)] = -1
        out = np.empty((len(idx), len(target_ids)), dtype=np.float32)
        for positions, values in self._run_batches(
            adata,
            idx,
            step,
            batch_size=batch_size,
            column_ids=column_ids,
            tokenizer=dataclasses.replace(self.tokenizer_config, allow_empty_cells=True),
            desc="Generating",
        ):
            out[positions] = values.cpu().numpy()
        return pd.DataFrame(out, index=adata.obs_names[idx], columns=list(genes))

    def _generate_batch(self, t, targets, n_steps, prompt, max_bin) -> torch.Tensor:
        module = self.module
        n_cells, n_genes = t[TOKEN_KEYS.GENE_IDS].shape[0], len(targets)
        gen_ids = targets.expand(n_cells, n_genes)
        fixed = torch.zeros(n_cells, n_genes, dtype=torch.bool, device=gen_ids.device)
        result = torch.zeros(n_cells, n_genes, device=gen_ids.device)
        for step in range(n_steps):
            known_ids = torch.cat([t[TOKEN_KEYS.GENE_IDS], gen_ids], 1)
            known_values = torch.cat([t[TOKEN_KEYS.VALUES], result], 1)
            known_pad = torch.cat([t[TOKEN_KEYS.PADDING_MASK], ~fixed], 1)
            inf = module.inference(
                known_ids,
                known_values,
                known_pad,
                t.get(TOKEN_KEYS.BATCH),
                gen_gene_ids=gen_ids,
                cell_prompt=prompt,
            )
            gen = module.generative(
                inf["gen_encoded"], inf["cell_emb"], inf["gen_gene_embs"], t.get(TOKEN_KEYS.BATCH)
            )
            pred = gen["expr"].float().clamp(0.0, max_bin)
            if "mvc" in gen:
                confidence = -(gen["expr"] - gen["mvc"]).abs().float()
            elif "expr_zero_probs" in gen:
                confidence = (gen["expr_zero_probs"].float() - 0.5).abs()
            else:
                confidence = pred
            remaining = (~fixed).sum(1, keepdim=True)
            n_take = torch.ceil(remaining / (n_steps - step)).long()
            confidence = confidence.masked_fill(fixed, float("-inf"))
            rank = confidence.argsort(1, descending=True).argsort(1)
            take = (rank < n_take) & ~fixed
            result = torch.where(take, pred, result)
            fixed = fixed | take
        return result
