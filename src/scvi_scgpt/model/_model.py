"""The user-facing :class:`SCGPT` model: its setup, and the composition of its capabilities.

Each capability lives in its own mixin (``_multiomic``, ``_embedding``, ``_annotation``,
``_mapping``, ``_generation``, ``_networks``, ``_perturbation``, ``_training``, ``_io``),
all built on ``_base.BaseMixin`` (validation, gene resolution and the one batch loop). See
``docs/architecture.md``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField
from scvi.model.base import BaseModelClass
from scvi.utils import setup_anndata_dsp

from scvi_scgpt._constants import CLS_VALUE_PRETRAIN, MAX_SEQ_LEN, N_BINS, PAD_VALUE
from scvi_scgpt.data import GeneVocab, TokenizerConfig, check_expression_values
from scvi_scgpt.model._annotation import AnnotationMixin
from scvi_scgpt.model._atlas import AtlasMixin
from scvi_scgpt.model._base import BUILD_ON_META, BaseMixin, resolve_vocab
from scvi_scgpt.model._checkpoint import CheckpointAudit
from scvi_scgpt.model._embedding import EmbeddingMixin
from scvi_scgpt.model._expression import ExpressionMixin
from scvi_scgpt.model._fields import GeneExpressionField
from scvi_scgpt.model._generation import GenerationMixin
from scvi_scgpt.model._hub import HubMixin
from scvi_scgpt.model._io import IOMixin
from scvi_scgpt.model._mapping import ReferenceMappingMixin
from scvi_scgpt.model._multiomic import MultiOmicMixin, is_mudata
from scvi_scgpt.model._networks import GeneNetworkMixin
from scvi_scgpt.model._perturbation import PerturbationMixin
from scvi_scgpt.model._perturbation_setup import perturbation_fields
from scvi_scgpt.model._scvi_compat import anndata_uuid, give_own_uuid
from scvi_scgpt.model._training import TrainingMixin
from scvi_scgpt.module import ArchitectureConfig, SCGPTModule


class SCGPT(
    MultiOmicMixin,
    EmbeddingMixin,
    AtlasMixin,
    AnnotationMixin,
    ReferenceMappingMixin,
    GenerationMixin,
    GeneNetworkMixin,
    PerturbationMixin,
    ExpressionMixin,
    TrainingMixin,
    HubMixin,
    IOMixin,
    BaseMixin,
    BaseModelClass,
):
    """scGPT single-cell foundation model (:cite:p:`Cui2024`) as an scvi-tools model.

    Create a new (randomly initialised) model with ``SCGPT(adata, ...)`` or load official
    pretrained weights with :meth:`from_pretrained`. Cells are tokenized from their expressed
    vocabulary genes (per-cell quantile bins of the values, ``<cls>`` first) and embedded by
    the transformer's ``<cls>`` output.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`, or a MuData registered with
        :meth:`setup_mudata` (RNA, protein and ATAC tokens in one joint vocabulary: genes
        matched to ``vocab``, proteins and peaks appended as new tokens).
    vocab
        Gene vocabulary: a :class:`~scvi_scgpt.data.GeneVocab`, a ``vocab.json`` path,
        ``"census"`` for the bundled whole-human vocabulary, a list of genes, or ``None`` to
        build one from ``adata``'s genes.
    max_seq_len
        Maximum tokens per cell (``<cls>`` included); cells with more expressed genes keep a
        per-cell seeded random subset.
    n_bins
        Expression bins (51 in all official models).
    include_zero_genes
        Tokenize non-expressed vocabulary genes too (with value 0).
    cls_value
        Value of the ``<cls>`` token (-2 as in pretraining and official zero-shot embedding).
    seed
        Seed of the per-cell random choices; a cell's tokens depend only on it and the cell.
    d_model, n_heads, d_hid, n_layers, dropout
        Transformer size (official whole-human: 512, 8, 512, 12, 0.2).
    **architecture
        Further :class:`~scvi_scgpt.module.ArchitectureConfig` options (``n_cls``,
        ``do_mvc``, ``explicit_zero_prob``, ``do_dab``, ``use_batch_labels``,
        ``domain_spec_batchnorm``, ...). For training on a CPU, ``attention_dropout=0.0``
        keeps PyTorch's fused attention kernels (several times faster per step).

    Examples
    --------
    >>> SCGPT.setup_anndata(adata)
    >>> model = SCGPT.from_pretrained("scGPT_human", adata)
    >>> model.embed(adata)  # writes adata.obsm["X_scGPT"]
    """

    _module_cls = SCGPTModule

    def __init__(
        self,
        adata: AnnData | None = None,
        vocab: GeneVocab | str | Sequence[str] | None = None,
        *,
        max_seq_len: int = MAX_SEQ_LEN,
        n_bins: int | None = N_BINS,
        include_zero_genes: bool = False,
        cls_value: float = CLS_VALUE_PRETRAIN,
        seed: int = 0,
        d_model: int = 512,
        n_heads: int = 8,
        d_hid: int = 512,
        n_layers: int = 12,
        dropout: float = 0.2,
        **architecture,
    ) -> None:
        super().__init__(adata)
        setup_args = self.adata_manager.registry["setup_args"]
        symbols = setup_args.get("gene_symbols_key")
        self.modality_vocab_: list[str] | None = None
        if is_mudata(self.adata):
            rna = [s for s in self._specs() if s.name == "RNA"]
            genes = self.adata.mod[rna[0].mod_key] if rna else AnnData(var=pd.DataFrame())
            options = self._init_modalities(resolve_vocab(vocab, genes, symbols))
            if architecture.get("use_mod") and (
                architecture.get("n_mod_tokens") != options["n_mod_tokens"]
            ):
                raise ValueError(
                    f"The checkpoint's modality vocabulary has {architecture['n_mod_tokens']} "
                    f"tokens; this MuData's modalities give {self.modality_vocab_}."
                )
            architecture.update(options)
        else:
            self.vocab_ = resolve_vocab(vocab, self.adata, symbols)
        self.tokenizer_config = TokenizerConfig(
            max_seq_len=max_seq_len,
            n_bins=n_bins,
            include_zero_genes=include_zero_genes,
            cls_value=cls_value,
            pad_value=PAD_VALUE,
            seed=seed,
        )
        batch_options = ("use_batch_labels", "domain_spec_batchnorm", "do_dab")
        uses_batches = any(architecture.get(k) for k in batch_options)
        architecture.setdefault("n_batch", self.summary_stats.n_batch if uses_batches else 0)
        self.architecture = ArchitectureConfig(
            n_tokens=len(self.vocab_),
            pad_id=self.vocab_.pad_id,
            d_model=d_model,
            n_heads=n_heads,
            d_hid=d_hid,
            n_layers=n_layers,
            dropout=dropout,
            **architecture,
        )
        with torch.device("meta") if BUILD_ON_META.get() else contextlib.nullcontext():
            self.module = self._module_cls(self.architecture)
        self.checkpoint_audit_: CheckpointAudit | None = None
        self.gene_subset_: list[str] | None = None
        self._model_summary_string = (
            f"SCGPT: {n_layers} layers, d_model={d_model}, {n_heads} heads, "
            f"vocabulary of {len(self.vocab_):,} tokens, max_seq_len={max_seq_len}"
        )
        self.init_params_ = self._get_init_params(locals())
        self._log_gene_coverage(self.adata)

    # ------------------------------------------------------------------ setup
    @classmethod
    @setup_anndata_dsp.dedent
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        gene_symbols_key: str | None = None,
        perturbation_key: str | None = None,
        control_group: str = "ctrl",
        split_key: str | None = None,
        **kwargs,
    ) -> None:
        """%(summary)s.

        Expression can be raw counts or any non-negative normalisation: scGPT bins each
        cell's values by their per-cell quantiles, which a per-cell monotone transform
        (library-size scaling, ``log1p``) does not change.

        Parameters
        ----------
        %(param_adata)s
        %(param_layer)s
        %(param_batch_key)s
        %(param_labels_key)s
        gene_symbols_key
            Column of ``adata.var`` holding gene symbols to match against the vocabulary.
            ``None`` uses ``adata.var_names`` (symbols or Ensembl ids).
        perturbation_key
            Column of GEARS conditions (``"ctrl"``, ``"A+ctrl"``, ``"A+B"``) for perturbation
            prediction (argument names as scvi-tools' CPA). Every perturbed gene must be a
            measured gene, each condition needs 2 cells, and the expression must be
            log-normalised as GEARS stores it (raw counts raise; nothing is normalised on the
            fly). ``labels_key`` (e.g. ``"cell_type"``) makes perturbed cells pair with
            control cells of their own type.
        control_group
            The condition of the control cells.
        split_key
            Column of ``adata.obs`` with ``"train"`` / ``"val"`` / ``"test"`` per cell (the
            ``key_added`` of :func:`scvi_scgpt.tl.perturbation_split`); needs
            ``perturbation_key``. Perturbation training learns from its ``"train"`` cells
            only, every training statistic included (additive prior, control mean, WMSE
            weights, control pool), validates on ``"val"`` and never reads ``"test"``. Saved
            with the model. ``None``: ``obs["split"]`` when present (as before).

        Notes
        -----
        As every scvi-tools model, this writes into ``adata``: ``adata.uns["_scvi_uuid"]``,
        ``adata.uns["_scvi_manager_uuid"]``, and the integer codes
        ``adata.obs["_scvi_batch"]``, ``adata.obs["_scvi_labels"]`` and, with
        ``perturbation_key``, ``adata.obs["_scvi_perturbation"]``. The expression values are not
        modified; on invalid input nothing is written.
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        if is_mudata(adata):
            raise TypeError(
                "setup_anndata takes an AnnData; register a MuData with SCGPT.setup_mudata."
            )
        if gene_symbols_key is not None and gene_symbols_key not in adata.var.columns:
            raise KeyError(
                f"gene_symbols_key={gene_symbols_key!r} is not a column of adata.var "
                f"(columns: {list(adata.var.columns)})."
            )
        if layer is not None and layer not in adata.layers:
            raise KeyError(f"layer={layer!r} is not in adata.layers ({list(adata.layers)}).")
        matrix = adata.X if layer is None else adata.layers[layer]
        if matrix is None:
            raise ValueError("adata.X is empty: pass the expression layer with `layer=`.")
        if adata.n_obs == 0 or adata.n_vars == 0:
            raise ValueError(f"adata is empty ({adata.n_obs} cells x {adata.n_vars} genes).")
        where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
        if sp.issparse(matrix):
            check_expression_values(matrix.data, where=where)
        elif isinstance(matrix, np.ndarray):
            check_expression_values(matrix, where=where)
        extra_fields = []
        if perturbation_key is not None or split_key is not None:
            extra_fields = perturbation_fields(
                adata,
                perturbation_key=perturbation_key,
                control_group=control_group,
                layer=layer,
                gene_symbols_key=gene_symbols_key,
                split_key=split_key,
                transfer=kwargs.get("source_registry") is not None,
            )
        # a copy of a set-up AnnData carries the original's uuid: give it its own, or its
        # registration would replace the original's
        known = cls._setup_adata_manager_store.get(anndata_uuid(adata))
        if known is not None and known.adata is not adata:
            give_own_uuid(adata)
        anndata_fields = [
            GeneExpressionField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
            *extra_fields,
        ]
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)
