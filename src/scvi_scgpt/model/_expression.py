"""scvi-tools' generative expression API on the count decoder.

``get_normalized_expression``, ``differential_expression``, ``posterior_predictive_sample``
and ``get_likelihood_parameters`` with the names, arguments and return types of scvi-tools'
``RNASeqMixin``. The cell embedding is deterministic, so the only randomness is the count
distribution's: "posterior" samples of the normalised expression are one value per cell, and
differential expression draws cells (not latent samples) from each group, as scvi-tools does.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS, settings

from scvi_scgpt.model._count_setup import CountSetupMixin
from scvi_scgpt.model._scvi_compat import _de_core, batch_codes_of, scrna_raw_counts_properties
from scvi_scgpt.module._count import count_distribution


class ExpressionMixin(CountSetupMixin):
    """Normalised expression, differential expression and posterior predictive samples."""

    # ------------------------------------------------------------------ decoding
    def _decode(
        self,
        adata: AnnData,
        indices: np.ndarray,
        transform_batch,
        *,
        batch_size: int | None,
        precision: str,
        progress_bar: bool | None,
        keys: tuple[str, ...] = ("scale",),
    ) -> dict[str, np.ndarray]:
        """The count decoder's outputs ``{key: (len(indices), G)}``, averaged over batches."""
        self._require_count_decoder()
        manager = self.get_anndata_manager(adata, required=True)
        decoder = self.module.count_decoder
        codes = batch_codes_of(manager, transform_batch) if decoder.n_batch else [None]
        observed = np.asarray(manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel()
        module = self.module
        module.eval()

        def step(tensors, positions):
            out = module.inference(**module._get_inference_input(tensors), cls_only=True)
            cell = out["cell_emb"]
            per_batch = []
            for code in codes:
                rows = observed[indices[positions]] if code is None else np.full(len(cell), code)
                batch = torch.as_tensor(rows, device=cell.device) if decoder.n_batch else None
                decoded = decoder(cell, batch)
                per_batch.append(torch.stack([decoded[k] for k in keys]))
            return torch.stack(per_batch).mean(0)

        out = np.empty((len(keys), len(indices), decoder.gene_ids.numel()), dtype=np.float32)
        for positions, values in self._run_batches(
            adata,
            indices,
            step,
            batch_size=batch_size,
            precision=precision,
            progress_bar=progress_bar,
            desc="Decoding cells",
        ):
            out[:, positions] = values.float().cpu().numpy()
        return dict(zip(keys, out))

    def _distribution_params(
        self, adata: AnnData, indices: np.ndarray, batch_size: int | None, precision: str
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Each cell's decoded ``scale`` / ``theta`` (/ ``dropout_logits``) and library."""
        keys = ("scale", "theta")
        if self.architecture.count_likelihood == "zinb":
            keys += ("dropout_logits",)
        decoded = self._decode(
            adata,
            indices,
            None,
            batch_size=batch_size,
            precision=precision,
            progress_bar=None,
            keys=keys,
        )
        return decoded, self._observed_library(adata, indices).astype(np.float32)

    def _observed_library(self, adata: AnnData, indices: np.ndarray) -> np.ndarray:
        """Each cell's total count over the decoded genes present in ``adata``."""
        columns = self._count_columns(adata)
        matrix = self.get_anndata_manager(adata, required=True).get_from_registry(
            REGISTRY_KEYS.X_KEY
        )
        rows = matrix[indices][:, columns[columns >= 0]]
        return np.asarray(rows.sum(1), dtype=np.float64).ravel()

    def _gene_mask(self, gene_list: Sequence[str] | None) -> np.ndarray:
        genes = np.asarray(self.count_genes, dtype=object)
        if gene_list is None:
            return np.ones(len(genes), dtype=bool)
        mask = np.isin(genes, np.asarray(list(gene_list), dtype=object))
        if not mask.any():
            raise ValueError("None of gene_list is decoded by the model (model.count_genes).")
        return mask

    # ------------------------------------------------------------------ public API
    @torch.inference_mode()
    def get_normalized_expression(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        transform_batch: Sequence[int | str] | int | str | None = None,
        gene_list: Sequence[str] | None = None,
        library_size: float | Literal["latent"] = 1,
        n_samples: int = 1,
        n_samples_overall: int | None = None,
        weights: Literal["uniform"] | None = None,
        batch_size: int | None = None,
        return_mean: bool = True,
        return_numpy: bool | None = None,
        *,
        precision: Literal["32", "bf16", "16", "auto"] = "32",
        progress_bar: bool | None = None,
        silent: bool = True,
    ) -> np.ndarray | pd.DataFrame:
        """Normalised expression of each cell over the decoded genes (scvi-tools semantics).

        The count decoder's ``scale`` (the mean of the negative binomial divided by the
        library size) from each cell's embedding.

        Parameters
        ----------
        adata
            AnnData set up with :meth:`setup_anndata` (default: the model's).
        indices
            Cells to decode (default: all).
        transform_batch
            Batch categories to decode the cells as, the result averaged over them (``None``:
            each cell's own batch). Only for a batch-conditioned decoder.
        gene_list
            Genes to return (default: every decoded gene, :attr:`count_genes`).
        library_size
            Scale the result to this library size, or ``"latent"``: each cell's observed
            total count over the decoded genes (the negative-binomial mean).
        n_samples
            Kept for scvi-tools compatibility: the embedding is deterministic, so every sample
            is the same; with ``return_mean=False`` and ``n_samples > 1`` the result has a
            leading sample axis.
        n_samples_overall
            Return this many rows drawn with replacement from the cells (``(n, G)`` numpy),
            as scvi-tools' differential expression asks.
        weights
            ``None`` or ``"uniform"`` (importance weights need a posterior; not available).
        batch_size
            Cells per forward pass.
        return_mean
            Average the samples (see ``n_samples``).
        return_numpy
            Return a numpy array instead of a DataFrame (cells x genes).
        precision
            As in :meth:`get_latent_representation`.
        progress_bar
            Show a progress bar (default: for many cells).
        silent
            Ignored (scvi-tools compatibility); see ``progress_bar``.

        Returns
        -------
        ``(n_cells, n_genes)`` DataFrame (index ``adata.obs_names``, columns the genes) or
        numpy array; ``(n_samples, n_cells, n_genes)`` with ``n_samples > 1`` and
        ``return_mean=False``; ``(n_samples_overall, n_genes)`` with ``n_samples_overall``.
        """
        if weights not in (None, "uniform"):
            raise ValueError("SCGPT has no posterior for importance weights: use 'uniform'.")
        if not (library_size == "latent" or np.isscalar(library_size)):
            raise ValueError(f"library_size must be a number or 'latent', got {library_size!r}.")
        adata = self._validate_anndata(adata)
        indices = self._as_indices(adata, indices)
        mask = self._gene_mask(gene_list)
        scale = self._decode(
            adata,
            indices,
            transform_batch,
            batch_size=batch_size,
            precision=precision,
            progress_bar=progress_bar,
        )["scale"][:, mask]
        if library_size == "latent":
            scale = scale * self._observed_library(adata, indices)[:, None].astype(np.float32)
        else:
            scale = scale * np.float32(library_size)
        if n_samples_overall is not None:
            rng = np.random.default_rng(settings.seed)
            return scale[rng.integers(0, len(scale), int(n_samples_overall))]
        if n_samples > 1 and not return_mean:
            return np.broadcast_to(scale, (n_samples, *scale.shape)).copy()
        if return_numpy:
            return scale
        genes = np.asarray(self.count_genes, dtype=object)[mask]
        return pd.DataFrame(scale, index=adata.obs_names[indices], columns=genes)

    def differential_expression(
        self,
        adata: AnnData | None = None,
        groupby: str | None = None,
        group1: Sequence[str] | None = None,
        group2: str | None = None,
        idx1: Sequence[int] | Sequence[bool] | str | None = None,
        idx2: Sequence[int] | Sequence[bool] | str | None = None,
        mode: Literal["vanilla", "change"] = "change",
        delta: float = 0.25,
        batch_size: int | None = None,
        all_stats: bool = True,
        batch_correction: bool = False,
        batchid1: Sequence[str] | None = None,
        batchid2: Sequence[str] | None = None,
        fdr_target: float = 0.05,
        silent: bool = False,
        **kwargs,
    ) -> pd.DataFrame:
        """Differential expression of the decoded genes between groups of cells.

        scvi-tools' DE (:cite:p:`Boyeau19`) run on :meth:`get_normalized_expression`: the
        same arguments and the same DataFrame (``proba_de``, ``bayes_factor``, ``lfc_mean``,
        ``lfc_median``, ``lfc_std``, ``scale1``, ``scale2`` and, with ``all_stats``, the raw
        count statistics ``raw_mean1``, ``non_zeros_proportion1``, ...). Samples are cells
        drawn from each group (the embedding is deterministic).

        Parameters
        ----------
        adata, groupby, group1, group2, idx1, idx2, mode, delta, batch_size, all_stats
            As scvi-tools' ``RNASeqMixin.differential_expression`` (``mode`` defaults to
            ``"change"``).
        batch_correction, batchid1, batchid2, fdr_target, silent
            As scvi-tools'.
        **kwargs
            Passed to scvi-tools' ``DifferentialComputation.get_bayes_factors``.

        Returns
        -------
        DataFrame indexed by gene (the decoded genes, :attr:`count_genes`), one block of rows
        per comparison (column ``comparison``). Writes nothing into ``adata`` but what
        scvi-tools' DE writes: with ``all_stats``, ``adata.obs["_scvi_raw_norm_scaling"]``.
        """
        adata = self._validate_anndata(adata)
        columns = self._count_columns(adata, require_all=True)
        model_fn = partial(
            self.get_normalized_expression,
            return_numpy=True,
            n_samples=1,
            batch_size=batch_size,
            progress_bar=False,
        )
        return _de_core(
            self.get_anndata_manager(adata, required=True),
            model_fn,
            None,
            groupby,
            group1,
            group2,
            idx1,
            idx2,
            all_stats,
            partial(scrna_raw_counts_properties, var_idx=columns),
            pd.Index(self.count_genes),
            mode,
            batchid1,
            batchid2,
            delta,
            batch_correction,
            fdr_target,
            silent,
            **kwargs,
        )

    @torch.inference_mode()
    def get_likelihood_parameters(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        n_samples: int = 1,
        give_mean: bool = True,
        batch_size: int | None = None,
        *,
        precision: Literal["32", "bf16", "16", "auto"] = "32",
    ) -> dict[str, np.ndarray]:
        """Parameters of each cell's count distribution over the decoded genes.

        Returns
        -------
        ``{"mean": (n, G), "dispersions": (n, G)}`` (negative-binomial mean at the observed
        library size and inverse dispersion ``theta``) and, zero-inflated, ``"dropout"``
        (dropout logits), as scvi-tools names them. ``n_samples`` / ``give_mean`` are kept for
        compatibility (the embedding is deterministic).
        """
        adata = self._validate_anndata(adata)
        indices = self._as_indices(adata, indices)
        out, library = self._distribution_params(adata, indices, batch_size, precision)
        library = library[:, None]
        params = {"mean": out["scale"] * library, "dispersions": out["theta"]}
        if "dropout_logits" in out:
            params["dropout"] = out["dropout_logits"]
        return params

    @torch.inference_mode()
    def posterior_predictive_sample(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        n_samples: int = 1,
        gene_list: Sequence[str] | None = None,
        batch_size: int | None = None,
        *,
        precision: Literal["32", "bf16", "16", "auto"] = "32",
        **kwargs,
    ):
        """Counts drawn from each cell's decoded count distribution.

        Draws ``n_samples`` times from the negative binomial (or ZINB) of each cell at its
        observed library size, as scvi-tools' ``posterior_predictive_sample`` does, so
        :class:`scvi.criticism.PosteriorPredictiveCheck` runs on an SCGPT beside an SCVI
        (for that, the AnnData's genes must be the decoded genes, :attr:`count_genes`).
        Randomness comes from torch's global generator (``scvi.settings.seed``).

        Parameters
        ----------
        adata, indices, n_samples, gene_list, batch_size
            As scvi-tools'.
        precision
            As in :meth:`get_latent_representation`.
        **kwargs
            Ignored (scvi-tools' data-loader arguments).

        Returns
        -------
        ``sparse.GCXS`` of shape ``(n_cells, n_genes)`` with ``n_samples == 1``, else
        ``(n_cells, n_genes, n_samples)``.
        """
        import sparse

        adata = self._validate_anndata(adata)
        indices = self._as_indices(adata, indices)
        mask = self._gene_mask(gene_list)
        decoded_all, library = self._distribution_params(adata, indices, batch_size, precision)
        library = torch.from_numpy(library)
        chunk = batch_size or settings.batch_size
        draws = []
        for start in range(0, len(indices), chunk):
            rows = slice(start, start + chunk)
            decoded = {k: torch.from_numpy(v[rows]) for k, v in decoded_all.items()}
            dist = count_distribution(decoded, library[rows])
            sample = dist.sample((n_samples,)).permute(1, 2, 0)[:, mask]  # (B, G, S)
            draws.append(sample[..., 0] if n_samples == 1 else sample)
        return sparse.GCXS.from_numpy(torch.cat(draws).numpy())
