"""Cell-type annotation with the classifier head."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS


class AnnotationMixin:
    """``predict`` and ``annotate`` with the ``cls_decoder`` trained by ``train("annotation")``."""

    @torch.inference_mode()
    def predict(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        *,
        return_probabilities: bool = False,
        batch_size: int | None = None,
        precision: Literal["32", "bf16", "16", "auto"] = "32",
    ) -> pd.Series | pd.DataFrame:
        """Predict cell types with the classifier trained by ``train(task="annotation")``.

        Parameters
        ----------
        adata
            AnnData set up with :meth:`setup_anndata` (its own labels, if any, are ignored).
        indices
            Cells to predict (default: all).
        return_probabilities
            Return class probabilities instead of labels.
        batch_size
            Cells per forward pass.
        precision
            ``"32"``; ``"bf16"`` (CPU: bfloat16 copies of the transformer weights, about 2-3x
            faster where the CPU has bf16 instructions; GPU: autocast); ``"16"`` (GPU
            autocast); ``"auto"`` (bf16 where fast, else 32). As in
            :meth:`get_latent_representation`.

        Returns
        -------
        A :class:`pandas.Series` of predicted labels (index: ``obs_names``), or a
        :class:`pandas.DataFrame` ``(cells x classes)`` of probabilities. Only classes seen in
        training can be predicted.
        """
        classes = self._trained_classes()
        adata = self._validate_anndata(adata)
        idx = self._as_indices(adata, indices)
        classifier = self.module.cls_decoder
        probs = self._map_cells(
            adata,
            idx,
            lambda out, _t: torch.softmax(classifier(out["cell_emb"]).float(), 1),
            n_out=len(classes),
            batch_size=batch_size,
            max_tokens=8192,
            precision=precision,
            desc="Predicting cells",
        )
        names = adata.obs_names[idx]
        if return_probabilities:
            return pd.DataFrame(probs, index=names, columns=classes)
        return pd.Series(
            pd.Categorical(classes[probs.argmax(1)], categories=classes),
            index=names,
            name="prediction",
        )

    def annotate(
        self,
        adata: AnnData | None = None,
        *,
        key_added: str = "scgpt_prediction",
        probabilities: bool = False,
        batch_size: int | None = None,
        precision: Literal["32", "bf16", "16", "auto"] = "32",
    ) -> None:
        """Write predicted cell types into ``adata``.

        Parameters
        ----------
        adata
            AnnData set up with :meth:`setup_anndata` (default: the model's data).
        key_added
            ``adata.obs`` key of the labels (and prefix of the other fields).
        probabilities
            Also store the class probabilities.
        batch_size
            Cells per forward pass.
        precision
            Forward-pass precision, as in :meth:`predict`.

        Returns
        -------
        Nothing; sets ``adata.obs[key_added]`` (categorical labels) and
        ``adata.obs[key_added + "_confidence"]`` (probability of the predicted class), and,
        with ``probabilities``, ``adata.obsm[key_added + "_probabilities"]`` (DataFrame,
        cells x classes).
        """
        adata = self._validate_anndata(adata)
        probs = self.predict(
            adata, return_probabilities=True, batch_size=batch_size, precision=precision
        )
        labels = probs.columns.to_numpy()[probs.to_numpy().argmax(1)]
        adata.obs[key_added] = pd.Categorical(labels, categories=probs.columns)
        adata.obs[f"{key_added}_confidence"] = probs.to_numpy().max(1)
        if probabilities:
            adata.obsm[f"{key_added}_probabilities"] = probs

    def _trained_classes(self) -> np.ndarray:
        if not hasattr(self.module, "cls_decoder"):
            raise ValueError("This model has no classifier: train(task='annotation') first.")
        mapping = self.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY)
        classes = np.asarray(mapping.categorical_mapping)
        if len(classes) != self.architecture.n_cls:
            raise ValueError(
                f"The classifier has {self.architecture.n_cls} classes but the registered "
                f"labels have {len(classes)}: train(task='annotation') on labelled data first."
            )
        return classes
