"""Cell embeddings: the transformer's ``<cls>`` output."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from anndata import AnnData

from scvi_scgpt.nn._compile import CompiledLayers


class EmbeddingMixin:
    """``get_latent_representation`` and ``embed``: deterministic ``<cls>`` cell embeddings."""

    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        batch_size: int | None = None,
        *,
        give_mean: bool = True,
        return_dist: bool = False,
        normalize: bool = True,
        precision: Literal["32", "bf16", "16", "auto"] = "32",
        chunk_size: int = 4096,
        max_tokens_per_batch: int | None = 8192,
        progress_bar: bool | None = None,
        compile: bool = False,
    ) -> np.ndarray:
        """Cell embeddings: the transformer output at ``<cls>``, L2-normalised.

        Deterministic: a cell's embedding depends only on the model, its seed and the cell,
        not on ``batch_size``, ``chunk_size``, the cell order or the other cells.

        Parameters
        ----------
        adata
            AnnData set up with :meth:`setup_anndata` (any genes; matched by name), or a MuData
            set up with :meth:`setup_mudata` for a multi-omic model (each cell from the
            modalities it was measured in). ``None`` uses the model's data.
        indices
            Cells to embed (default: all).
        batch_size
            Cells per forward pass (default: ``scvi.settings.batch_size``).
        give_mean
            Ignored (the embedding is deterministic); kept for scvi-tools compatibility.
        return_dist
            Not supported (raises).
        normalize
            L2-normalise each embedding (as the official pipeline).
        precision
            ``"32"``: float32 (default; official parity). ``"bf16"``: on a CPU the
            transformer's matmul weights are held in bfloat16 for the call, LayerNorm and
            the residual stream stay float32 (about 3x faster on CPUs with AVX-512-BF16 or
            AMX; per-cell cosine to float32 above 0.99 after centring, see
            ``docs/performance.md``); on CUDA bf16 autocast. ``"16"``: float16 autocast
            (CUDA only). ``"auto"``: ``"bf16"`` where the hardware has fast bfloat16
            matmuls, else ``"32"``.
        chunk_size
            Cells tokenized at once; within a chunk cells are batched by length to avoid
            padding.
        max_tokens_per_batch
            Cap on padded tokens per forward pass (long cells go in smaller batches), which
            bounds activation memory; ``None`` for ``batch_size`` cells always.
        progress_bar
            Show a progress bar (default: for more than ``10 * batch_size`` cells).
        compile
            ``torch.compile`` the layers' residual / LayerNorm / feed-forward blocks for this
            call (opt-in; the first batch pays the compilation, see
            ``docs/performance.md``).

        Returns
        -------
        ``float32`` array of shape ``(n_cells, d_model)``, rows in ``adata.obs_names`` order
        (``mdata.obs_names`` for a MuData).
        """
        if return_dist:
            raise NotImplementedError("SCGPT embeddings are deterministic: no distribution.")
        adata = self._validate_anndata(adata)
        indices = self._as_indices(adata, indices)

        def cell_embedding(out, _tensors):
            emb = out["cell_emb"].float()
            return F.normalize(emb, p=2, dim=1) if normalize else emb

        compiled = (
            CompiledLayers(self.module.transformer_encoder)
            if compile
            else contextlib.nullcontext()
        )
        with compiled:
            return self._map_cells(
                adata,
                indices,
                cell_embedding,
                n_out=self.architecture.d_model,
                batch_size=batch_size,
                precision=precision,
                chunk_size=chunk_size,
                progress_bar=progress_bar,
                max_tokens=max_tokens_per_batch,
                desc="Embedding cells",
            )

    def embed(
        self,
        adata: AnnData | None = None,
        *,
        key_added: str = "X_scGPT",
        batch_size: int | None = None,
        **kwargs,
    ) -> None:
        """Embed every cell of ``adata`` and store the result in ``adata.obsm``.

        Parameters
        ----------
        adata
            AnnData set up with :meth:`setup_anndata`, or MuData set up with
            :meth:`setup_mudata` (default: the model's data).
        key_added
            ``adata.obsm`` key to write.
        batch_size
            Cells per forward pass.
        **kwargs
            Passed to :meth:`get_latent_representation`.

        Returns
        -------
        Nothing; sets ``adata.obsm[key_added]`` (``mdata.obsm[key_added]`` for a MuData, so
        ``sc.pp.neighbors(mdata, use_rep=key_added)`` and scib-metrics work on it):
        ``float32`` array ``(n_obs, d_model)`` of L2-normalised cell embeddings. Nothing else
        in ``adata`` is changed (beyond the scvi-tools registration written by
        :meth:`setup_anndata` / :meth:`setup_mudata`).
        """
        adata = self._validate_anndata(adata)
        adata.obsm[key_added] = self.get_latent_representation(
            adata, batch_size=batch_size, **kwargs
        )
