"""The user-facing :class:`SCGPT` scvi-tools model."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from anndata import AnnData
from scvi import REGISTRY_KEYS, settings
from scvi.data import AnnDataManager
from scvi.data._constants import _SCVI_UUID_KEY
from scvi.data._utils import _assign_adata_uuid
from scvi.data.fields import CategoricalObsField
from scvi.model.base import BaseModelClass
from scvi.utils import setup_anndata_dsp
from tqdm.auto import tqdm

from scvi_scgpt._constants import CLS_VALUE_PRETRAIN, MAX_SEQ_LEN, N_BINS, PAD_VALUE
from scvi_scgpt.data import (
    GeneMatch,
    GeneVocab,
    TokenizerConfig,
    check_expression_values,
    match_genes,
    tokenize_cells,
)
from scvi_scgpt.model._checkpoint import (
    CheckpointAudit,
    CheckpointError,
    infer_architecture,
    load_into_module,
    official_args,
    read_args,
    read_state_dict,
    to_torch_layout,
)
from scvi_scgpt.model._fields import GeneExpressionField
from scvi_scgpt.model._generation import GenerationMixin
from scvi_scgpt.model._mapping import ReferenceMappingMixin
from scvi_scgpt.model._serialization import from_jsonable, to_jsonable
from scvi_scgpt.module import ArchitectureConfig, SCGPTModule
from scvi_scgpt.module._module import BATCH_KEY
from scvi_scgpt.train import (
    PRESETS,
    AtomicCheckpoint,
    GenerativeCollator,
    ObjectiveConfig,
    SCGPTTrainingPlan,
    TokenCollator,
)

logger = logging.getLogger(__name__)

_MODEL_FILE = "model.pt"
_META_FILE = "scvi_scgpt.json"
_VOCAB_FILE = "vocab.json"
_FORMAT_VERSION = 1
#: Set while from_pretrained builds a model whose weights come from a checkpoint.
_BUILD_ON_META: contextvars.ContextVar[bool] = contextvars.ContextVar("meta", default=False)


def _resolve_vocab(vocab, adata: AnnData, gene_symbols_key: str | None) -> GeneVocab:
    if isinstance(vocab, GeneVocab):
        return vocab
    if vocab is None:
        names = adata.var[gene_symbols_key] if gene_symbols_key else adata.var_names
        return GeneVocab.from_genes(names)
    if isinstance(vocab, str) and vocab == "census":
        return GeneVocab.census()
    if isinstance(vocab, str | Path):
        return GeneVocab.from_file(vocab)
    return GeneVocab(vocab)


class SCGPT(ReferenceMappingMixin, GenerationMixin, BaseModelClass):
    """scGPT single-cell foundation model (:cite:p:`Cui2024`) as an scvi-tools model.

    Create a new (randomly initialised) model with ``SCGPT(adata, ...)`` or load official
    pretrained weights with :meth:`from_pretrained`. Cells are tokenized from their expressed
    vocabulary genes (per-cell quantile bins of the values, ``<cls>`` first) and embedded by
    the transformer's ``<cls>`` output.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
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
        self.vocab_ = _resolve_vocab(vocab, self.adata, setup_args.get("gene_symbols_key"))
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
        with torch.device("meta") if _BUILD_ON_META.get() else contextlib.nullcontext():
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

        Notes
        -----
        As every scvi-tools model, this writes into ``adata``: ``adata.uns["_scvi_uuid"]``,
        ``adata.uns["_scvi_manager_uuid"]``, and the integer codes
        ``adata.obs["_scvi_batch"]`` and ``adata.obs["_scvi_labels"]``. The expression values
        are not modified.
        """
        setup_method_args = cls._get_setup_method_args(**locals())
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
        # a copy of a set-up AnnData carries the original's uuid: give it its own, or its
        # registration would replace the original's
        uuid = adata.uns.get(_SCVI_UUID_KEY)
        known = cls._setup_adata_manager_store.get(uuid)
        if known is not None and known.adata is not adata:
            _assign_adata_uuid(adata, overwrite=True)
        anndata_fields = [
            GeneExpressionField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
        ]
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    def _validate_anndata(self, adata: AnnData | None = None, copy_if_view: bool = True):
        # An AnnData set up by the user with SCGPT.setup_anndata keeps its own setup (its own
        # genes and gene_symbols_key); scvi-tools would otherwise re-apply the model's setup.
        if adata is not None and self.get_anndata_manager(adata) is None:
            manager = self._setup_adata_manager_store.get(adata.uns.get(_SCVI_UUID_KEY))
            if manager is not None and manager.adata is adata:
                self._check_batches_compatible(manager)
                self._register_manager_for_instance(manager)
            elif manager is not None:
                # a copy of a set-up AnnData: give it its own id, then transfer the setup
                _assign_adata_uuid(adata, overwrite=True)
        return super()._validate_anndata(adata, copy_if_view=copy_if_view)

    def _uses_batches(self) -> bool:
        a = self.architecture
        return a.domain_spec_batchnorm or a.use_batch_labels or a.do_dab

    def _check_batches_compatible(self, manager: AnnDataManager) -> None:
        if not self._uses_batches():
            return
        own = self.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping
        new = manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping
        unknown = [b for b in new if b not in set(own)]
        if unknown or list(new) != list(own[: len(new)]):
            raise ValueError(
                f"This model was trained on batches {list(own)}; the AnnData has {list(new)}. "
                "Set it up with the same batch categories (in the same order)."
            )

    # ------------------------------------------------------------------ training
    def train(
        self,
        task: Literal["integration", "annotation", "gep", "pretrain"] = "gep",
        *,
        max_epochs: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        objectives: ObjectiveConfig | dict | None = None,
        n_top_genes: int | None | Literal["preset"] = "preset",
        tokenizer: dict | None = None,
        freeze: str | Sequence[str] | None = None,
        optimizer: Literal["Adam", "AdamW"] = "Adam",
        weight_decay: float | None = None,
        lr_schedule: Literal["step", "cosine", "constant"] | None = None,
        lr_gamma: float | None = None,
        warmup_steps: int | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float = 0.9,
        validation_size: float | None = None,
        early_stopping: bool = False,
        early_stopping_patience: int = 5,
        gradient_clip_val: float = 1.0,
        datamodule=None,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every_n_steps: int | None = 1000,
        datasplitter_kwargs: dict | None = None,
        plan_kwargs: dict | None = None,
        **trainer_kwargs,
    ):
        """Fine-tune (or train from scratch) with the scGPT objectives.

        Task presets hold the official tutorial settings; every value can be overridden:

        - ``"integration"``: GEP + GEPC (with explicit zero probabilities) + ECS (threshold
          0.8, weight 10) + DAR (weight 1) + DSBN, batch tokens for the decoders, 1,200 HVGs
          (seurat_v3 on counts, per batch) tokenized with their zeros, mask ratio 0.4,
          lr 1e-4, batch 64, 15 epochs. Needs ``batch_key`` in :meth:`setup_anndata`.
        - ``"annotation"``: cell-type classification (cross-entropy) on the expressed genes
          (up to 3,000), lr 1e-4, batch 32, 10 epochs. Needs ``labels_key``.
        - ``"gep"``: masked expression prediction (GEP + GEPC) on the expressed genes.
        - ``"pretrain"``: generative pretraining with the scGPT attention mask (generated-gene
          MSE + GEPC + cell-prompt step; ``flag_encoder`` added), expressed genes up to 1,200
          tokens, cosine schedule with warm-up. Works from scratch or from an official
          checkpoint (continued pretraining).

        Heads the task needs and the model lacks (a pretrained checkpoint has no classifier,
        say) are added, freshly initialised; all other weights are kept. DSBN normalises each
        cell with its own batch's statistics, so minibatches may mix batches.

        Parameters
        ----------
        task
            Preset name.
        max_epochs, batch_size, lr
            Override the preset's values.
        objectives
            :class:`~scvi_scgpt.train.ObjectiveConfig` or a dict of changes to the preset's.
        n_top_genes
            Highly variable genes to train (and embed) on; ``None`` for all vocabulary genes.
            Default: the preset's (1,200 for integration).
        tokenizer
            Changes to the preset's tokenization, as :class:`~scvi_scgpt.data.TokenizerConfig`
            fields, e.g. ``{"max_seq_len": 512}`` for a smaller token budget on a CPU or
            ``{"include_zero_genes": True}``. Applied after ``n_top_genes``; a ``max_seq_len``
            below the number of selected genes plus ``<cls>`` samples genes per cell.
        freeze
            Parameters to freeze: ``"embeddings"`` (gene and value encoders, as the official
            ``freeze`` option), ``"transformer"`` (embeddings and transformer: heads only),
            or a list of parameter-name prefixes.
        optimizer, weight_decay, lr_schedule, lr_gamma, warmup_steps
            Optimisation (official: Adam, no decay, StepLR with gamma 0.9 per epoch).
        accelerator, devices
            Lightning devices; pass ``strategy="ddp"`` (or ``"ddp_find_unused_parameters_true"``)
            in ``trainer_kwargs`` for multi-GPU training.
        train_size, validation_size
            Split of the cells (validation loss is logged as ``validation_loss``).
        early_stopping, early_stopping_patience
            Stop when ``validation_loss`` stops improving.
        gradient_clip_val
            Gradient-norm clipping (official: 1.0).
        datamodule
            A :class:`~scvi_scgpt.data.StreamingAnnDataModule` to train on cells streamed from
            on-disk files instead of the model's AnnData (atlas-scale pretraining; under DDP
            each rank reads its own shard).
        checkpoint_dir, checkpoint_every_n_steps
            Write a resumable Lightning checkpoint atomically to ``checkpoint_dir/last.ckpt``
            every so many steps and at each epoch end; resume with ``ckpt_path=``.
        datasplitter_kwargs, plan_kwargs
            Extra arguments of :class:`~scvi.dataloaders.DataSplitter` and
            :class:`~scvi_scgpt.train.SCGPTTrainingPlan`.
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer` / Lightning (``precision="bf16-mixed"``,
            ``strategy``, ``num_nodes``, ``callbacks``, ...).

        Returns
        -------
        Nothing. Sets ``model.history_`` (losses per epoch) and ``model.is_trained_``; the
        AnnData is not modified.
        """
        from scvi.dataloaders import DataSplitter
        from scvi.model._utils import use_distributed_sampler
        from scvi.train import TrainRunner

        if task not in PRESETS:
            raise ValueError(f"Unknown task {task!r}; choose one of {sorted(PRESETS)}.")
        preset = PRESETS[task]
        if isinstance(objectives, dict):
            objectives = dataclasses.replace(preset.objectives, **objectives)
        objectives = objectives or preset.objectives
        self._configure_for(objectives, preset, n_top_genes, tokenizer)
        if freeze is not None:
            self._freeze(freeze)
        collator_kwargs = {"cls_id": self.vocab_.cls_id, "pad_id": self.vocab_.pad_id}
        # a datamodule sends each file's own gene ids with its minibatches
        column_ids = (
            np.zeros(0, dtype=np.int64)
            if datamodule is not None
            else self._column_vocab_ids(self.adata)
        )
        if objectives.generative:
            collator = GenerativeCollator(
                column_ids,
                self.tokenizer_config,
                gen_ratios=objectives.gen_ratios,
                **collator_kwargs,
            )
        else:
            collator = TokenCollator(
                column_ids,
                self.tokenizer_config,
                mask_ratio=objectives.mask_ratio,
                **collator_kwargs,
            )
        if checkpoint_dir is not None:
            callbacks = list(trainer_kwargs.pop("callbacks", None) or [])
            callbacks.append(AtomicCheckpoint(checkpoint_dir, checkpoint_every_n_steps))
            trainer_kwargs["callbacks"] = callbacks
        if datamodule is not None:
            if datamodule.vocab != self.vocab_:
                raise ValueError("The datamodule's vocabulary differs from the model's.")
            datamodule.set_collate(collator)
            data_splitter = datamodule
            if datamodule.val_stream is None:
                trainer_kwargs.setdefault("limit_val_batches", 0)
        else:
            data_splitter = DataSplitter(
                self.adata_manager,
                train_size=train_size,
                validation_size=validation_size,
                batch_size=batch_size or preset.batch_size,
                collate_fn=collator,
                distributed_sampler=use_distributed_sampler(trainer_kwargs.get("strategy")),
                **(datasplitter_kwargs or {}),
            )
        plan = SCGPTTrainingPlan(
            self.module,
            lr=lr or preset.lr,
            optimizer=optimizer,
            weight_decay=preset.weight_decay if weight_decay is None else weight_decay,
            lr_schedule=lr_schedule or preset.lr_schedule,
            lr_gamma=preset.lr_gamma if lr_gamma is None else lr_gamma,
            warmup_steps=preset.warmup_steps if warmup_steps is None else warmup_steps,
            objectives=objectives,
            **(plan_kwargs or {}),
        )
        has_validation = datamodule is not None or ((validation_size or 0) > 0 or train_size < 1.0)
        if has_validation:
            trainer_kwargs.setdefault("check_val_every_n_epoch", 1)
        elif early_stopping:
            raise ValueError(
                "early_stopping monitors the validation loss, but train_size=1.0 leaves no "
                "validation cells; use train_size < 1 or early_stopping=False."
            )
        if "ddp" in str(trainer_kwargs.get("strategy", "")):
            # validation metrics made under inference_mode cannot be all-reduced in place
            trainer_kwargs.setdefault("inference_mode", False)
        if early_stopping:
            trainer_kwargs.setdefault("early_stopping_monitor", "validation_loss")
            trainer_kwargs.setdefault("early_stopping_patience", early_stopping_patience)
        runner = TrainRunner(
            self,
            training_plan=plan,
            data_splitter=data_splitter,
            max_epochs=max_epochs or preset.max_epochs,
            accelerator=accelerator,
            devices=devices,
            early_stopping=early_stopping,
            gradient_clip_val=gradient_clip_val,
            **trainer_kwargs,
        )
        self.training_task_ = {"task": task, "objectives": objectives.to_dict()}
        return runner()

    def _configure_for(self, objectives, preset, n_top_genes, tokenizer_changes=None) -> None:
        """Add the heads and tokenizer settings the objectives need."""
        arch = dict(preset.architecture)
        if objectives.gepc:
            arch["do_mvc"] = True
        if objectives.explicit_zero_prob:
            arch["explicit_zero_prob"] = True
        if objectives.dar:
            arch["do_dab"] = True
        if objectives.generative:
            arch["use_generative_flag"] = True
        if objectives.cls:
            n_labels = self.summary_stats.n_labels
            if self.adata_manager.registry["setup_args"].get("labels_key") is None:
                raise ValueError(
                    "Cell-type classification needs labels: SCGPT.setup_anndata(adata, "
                    "labels_key=...)."
                )
            if self.architecture.n_cls != n_labels:
                arch["n_cls"] = n_labels
        needs_batches = any(
            arch.get(k) for k in ("do_dab", "use_batch_labels", "domain_spec_batchnorm")
        )
        if needs_batches:
            n_batch = self.summary_stats.n_batch
            if self.adata_manager.registry["setup_args"].get("batch_key") is None:
                raise ValueError(
                    "This task corrects batch effects and needs batches: "
                    "SCGPT.setup_anndata(adata, batch_key=...)."
                )
            if self.architecture.n_batch not in (0, n_batch):
                raise ValueError(
                    f"The model has {self.architecture.n_batch} batches, the data {n_batch}."
                )
            arch["n_batch"] = n_batch
        self._rebuild_module(**arch)
        tokenizer = dict(preset.tokenizer)
        n_top = preset.n_top_genes if n_top_genes == "preset" else n_top_genes
        if n_top is not None:
            self.gene_subset_ = self._select_hvgs(n_top)
            tokenizer["max_seq_len"] = max(
                len(self.gene_subset_) + 1, tokenizer.get("max_seq_len", 0)
            )
        if tokenizer_changes:
            from scvi_scgpt.data import TokenizerConfig

            known = {f.name for f in dataclasses.fields(TokenizerConfig)}
            unknown = sorted(set(tokenizer_changes) - known)
            if unknown:
                raise ValueError(
                    f"Unknown tokenizer setting(s) {unknown}; choose from {sorted(known)}."
                )
            tokenizer.update(tokenizer_changes)
        self._set_tokenizer(**tokenizer)

    def _rebuild_module(self, **changes) -> None:
        """Replace the module by one with ``changes`` to the architecture, keeping weights."""
        changes = {k: v for k, v in changes.items() if getattr(self.architecture, k) != v}
        if not changes:
            return
        config = dataclasses.replace(self.architecture, **changes)
        module = self._module_cls(config)
        state = self.module.state_dict()
        load_into_module(module, state, strict=True, resized_heads=True)
        module.to(self.device)
        self.module = module
        self.architecture = config
        kwargs = self.init_params_["kwargs"].setdefault("architecture", {})
        kwargs.update(changes)
        logger.info("Added or resized heads for training: %s", changes)

    def _set_tokenizer(self, **changes) -> None:
        if not changes:
            return
        self.tokenizer_config = dataclasses.replace(self.tokenizer_config, **changes)
        self.init_params_["non_kwargs"].update(changes)

    def _select_hvgs(self, n_top_genes: int) -> list[str]:
        """Highly variable vocabulary genes (seurat_v3 on counts, per batch)."""
        import scanpy as sc

        names, _ = self._gene_names(self.adata)
        matched = np.flatnonzero(self.gene_coverage(self.adata).vocab_ids >= 0)
        if len(matched) <= n_top_genes:
            return list(names[matched])
        manager = self.adata_manager
        matrix = manager.get_from_registry(REGISTRY_KEYS.X_KEY)[:, matched]
        data = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
        if not np.all(np.equal(np.mod(data, 1), 0)):
            raise ValueError(
                "Selecting highly variable genes (seurat_v3) needs raw counts, but the "
                "registered expression is not integer. Register the counts layer "
                "(setup_anndata(layer='counts')) or pass n_top_genes=None."
            )
        view = AnnData(matrix, obs=self.adata.obs[[]].copy())
        batch_key = manager.registry["setup_args"].get("batch_key")
        if batch_key is not None:
            view.obs["batch"] = self.adata.obs[batch_key].to_numpy()
        hvg = sc.pp.highly_variable_genes(
            view,
            flavor="seurat_v3",
            n_top_genes=n_top_genes,
            batch_key="batch" if batch_key else None,
            inplace=False,
        )
        keep = matched[np.asarray(hvg["highly_variable"], dtype=bool)]
        return list(names[np.sort(keep)])

    _FREEZE_GROUPS = {
        "embeddings": ("encoder.", "value_encoder."),
        "transformer": ("encoder.", "value_encoder.", "transformer_encoder.", "flag_encoder."),
    }

    def _freeze(self, freeze: str | Sequence[str]) -> None:
        prefixes = self._FREEZE_GROUPS.get(freeze) if isinstance(freeze, str) else tuple(freeze)
        if prefixes is None:
            raise ValueError(
                f"freeze must be one of {sorted(self._FREEZE_GROUPS)} or a list of parameter "
                f"prefixes, got {freeze!r}."
            )
        frozen = 0
        for name, param in self.module.named_parameters():
            if name.startswith(prefixes):
                param.requires_grad_(False)
                frozen += param.numel()
        if frozen == 0:
            raise ValueError(f"freeze={freeze!r} matches no parameter.")
        logger.info("Froze %s parameters (%s).", f"{frozen:,}", freeze)

    # ------------------------------------------------------------------ annotation
    @torch.inference_mode()
    def predict(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        *,
        return_probabilities: bool = False,
        batch_size: int | None = None,
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

        Returns
        -------
        A :class:`pandas.Series` of predicted labels (index: ``obs_names``), or a
        :class:`pandas.DataFrame` ``(cells x classes)`` of probabilities. Only classes seen in
        training can be predicted.
        """
        classes = self._trained_classes()
        adata = self._validate_anndata(adata)
        probs = self._forward_cells(
            adata,
            indices,
            batch_size,
            lambda out, t: torch.softmax(self.module.cls_decoder(out["cell_emb"]).float(), 1),
            n_out=len(classes),
        )
        idx = np.arange(adata.n_obs) if indices is None else np.asarray(indices)
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
    ) -> None:
        """Write predicted cell types into ``adata``.

        Returns
        -------
        Nothing; sets ``adata.obs[key_added]`` (categorical labels) and
        ``adata.obs[key_added + "_confidence"]`` (probability of the predicted class), and,
        with ``probabilities``, ``adata.obsm[key_added + "_probabilities"]`` (DataFrame,
        cells x classes).
        """
        adata = self._validate_anndata(adata)
        probs = self.predict(adata, return_probabilities=True, batch_size=batch_size)
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

    # ------------------------------------------------------------------ genes
    def _gene_names(self, adata: AnnData) -> tuple[np.ndarray, str]:
        manager = self.get_anndata_manager(adata, required=True)
        key = manager.registry["setup_args"].get("gene_symbols_key")
        if key is None:
            return np.asarray(adata.var_names), "adata.var_names"
        return np.asarray(adata.var[key].astype(str)), f"adata.var[{key!r}]"

    def gene_coverage(self, adata: AnnData | None = None) -> GeneMatch:
        """Match ``adata``'s genes to the model vocabulary.

        Returns
        -------
        :class:`~scvi_scgpt.data.GeneMatch` with per-gene vocabulary ids and counts
        (``.summary()`` gives e.g. ``"matched 14,203 / 16,727 genes (84.9%)"``).
        """
        adata = self._validate_anndata(adata)
        names, source = self._gene_names(adata)
        return match_genes(names, self.vocab_, source=source)

    def _column_vocab_ids(self, adata: AnnData) -> np.ndarray:
        """Vocabulary id per gene of ``adata``.

        ``-1`` marks genes outside the vocabulary or, after training on a gene subset (HVGs),
        outside that subset.
        """
        ids = self.gene_coverage(adata).vocab_ids.copy()
        subset = getattr(self, "gene_subset_", None)
        if subset is not None:
            names, _ = self._gene_names(adata)
            ids[~np.isin(names, np.asarray(subset, dtype=object))] = -1
            if not (ids >= 0).any():
                raise ValueError(
                    "None of the model's training genes (gene_subset_) is in this AnnData."
                )
        return ids

    def _log_gene_coverage(self, adata: AnnData) -> GeneMatch:
        match = self.gene_coverage(adata)
        logger.info("SCGPT vocabulary: %s.", match.summary())
        return match

    # ------------------------------------------------------------------ tokenization
    def _token_batches(
        self,
        adata: AnnData,
        indices: np.ndarray,
        batch_size: int,
        chunk_size: int,
        *,
        column_ids: np.ndarray | None = None,
        tokenizer: TokenizerConfig | None = None,
        max_tokens: int | None = None,
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Yield ``(positions in indices, padded token arrays)``, length-sorted per chunk.

        A batch holds at most ``batch_size`` cells and, when ``max_tokens`` is given, at most
        ``max_tokens`` padded tokens (long cells go in smaller batches). ``column_ids`` and
        ``tokenizer`` default to the model's gene matching and settings.
        """
        manager = self.get_anndata_manager(adata, required=True)
        matrix = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        if column_ids is None:
            column_ids = self._column_vocab_ids(adata)
        tokenizer = tokenizer or self.tokenizer_config
        batches = None
        if self._uses_batches():
            batches = np.asarray(manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).ravel()
        obs_names = np.asarray(adata.obs_names)
        for start in range(0, len(indices), chunk_size):
            chunk = indices[start : start + chunk_size]
            # token row j is cell chunk[order[j]]; backed matrices want sorted indices
            order = np.argsort(chunk, kind="stable")
            tokens = tokenize_cells(
                matrix[chunk[order]],
                column_ids,
                tokenizer,
                cls_id=self.vocab_.cls_id,
                cell_labels=obs_names[chunk[order]],
            )
            by_length = np.argsort(-tokens.lengths, kind="stable")
            b = 0
            while b < len(by_length):
                width = int(tokens.lengths[by_length[b]])  # the longest of this batch
                n = (
                    batch_size
                    if max_tokens is None
                    else max(1, min(batch_size, max_tokens // width))
                )
                rows = by_length[b : b + n]
                b += n
                padded = tokens.pad(rows, pad_id=self.vocab_.pad_id, pad_value=tokenizer.pad_value)
                if batches is not None:
                    padded[BATCH_KEY] = batches[chunk[order[rows]]]
                yield start + order[rows], padded

    # ------------------------------------------------------------------ embeddings
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
        precision: Literal["32", "bf16", "16"] = "32",
        chunk_size: int = 4096,
        max_tokens_per_batch: int | None = 8192,
        progress_bar: bool | None = None,
    ) -> np.ndarray:
        """Cell embeddings: the transformer output at ``<cls>``, L2-normalised.

        Deterministic: a cell's embedding depends only on the model, its seed and the cell,
        not on ``batch_size``, ``chunk_size``, the cell order or the other cells.

        Parameters
        ----------
        adata
            AnnData set up with :meth:`setup_anndata` (any genes; matched by name). ``None``
            uses the model's AnnData.
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
            ``"32"`` (float32, default), or ``"bf16"`` / ``"16"`` autocast on CUDA (and
            ``"bf16"`` on CPU).
        chunk_size
            Cells tokenized at once; within a chunk cells are batched by length to avoid
            padding.
        max_tokens_per_batch
            Cap on padded tokens per forward pass (long cells go in smaller batches), which
            bounds activation memory; ``None`` for ``batch_size`` cells always.
        progress_bar
            Show a progress bar (default: for more than ``10 * batch_size`` cells).

        Returns
        -------
        ``float32`` array of shape ``(n_cells, d_model)``.
        """
        if return_dist:
            raise NotImplementedError("SCGPT embeddings are deterministic: no distribution.")
        adata = self._validate_anndata(adata)
        if indices is None:
            indices = np.arange(adata.n_obs)
        indices = np.asarray(indices)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        batch_size = batch_size or settings.batch_size
        if batch_size < 1 or chunk_size < 1:
            raise ValueError("batch_size and chunk_size must be positive.")

        def cell_embedding(out, _tensors):
            emb = out["cell_emb"].float()
            return F.normalize(emb, p=2, dim=1) if normalize else emb

        return self._forward_cells(
            adata,
            indices,
            batch_size,
            cell_embedding,
            n_out=self.architecture.d_model,
            precision=precision,
            chunk_size=chunk_size,
            progress_bar=progress_bar,
            max_tokens=max_tokens_per_batch,
        )

    def _forward_cells(
        self,
        adata,
        indices,
        batch_size,
        head,
        *,
        n_out,
        precision="32",
        chunk_size=4096,
        progress_bar=None,
        desc="Embedding cells",
        max_tokens=8192,
    ) -> np.ndarray:
        """Run the encoder over cells in length-sorted batches and collect ``head(out, t)``."""
        if indices is None:
            indices = np.arange(adata.n_obs)
        indices = np.asarray(indices)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        batch_size = batch_size or settings.batch_size
        if batch_size < 1 or chunk_size < 1:
            raise ValueError("batch_size and chunk_size must be positive.")
        self.module.eval()
        device = self.device
        out = np.empty((len(indices), n_out), dtype=np.float32)
        show = len(indices) > 10 * batch_size if progress_bar is None else progress_bar
        autocast = self._autocast(precision, device)
        batches = self._token_batches(
            adata, indices, batch_size, chunk_size, max_tokens=max_tokens
        )
        with tqdm(total=len(indices), desc=desc, disable=not show, unit="cell") as bar:
            for positions, tensors in batches:
                t = {k: torch.from_numpy(v).to(device) for k, v in tensors.items()}
                with autocast:
                    result = self.module.inference(
                        t["gene_ids"],
                        t["values"],
                        t["padding_mask"],
                        t.get(BATCH_KEY),
                        cls_only=True,
                    )
                    values = head(result, t)
                out[positions] = values.float().cpu().numpy()
                bar.update(len(positions))
        return out

    @staticmethod
    def _autocast(precision: str, device: torch.device):
        if precision == "32":
            return torch.autocast(device.type, enabled=False)
        dtype = {"bf16": torch.bfloat16, "16": torch.float16}.get(precision)
        if dtype is None:
            raise ValueError(f"precision must be '32', 'bf16' or '16', got {precision!r}.")
        if device.type == "cpu" and dtype is torch.float16:
            raise ValueError("float16 autocast needs a GPU; use precision='bf16' on CPU.")
        return torch.autocast(device.type, dtype=dtype)

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
            AnnData set up with :meth:`setup_anndata` (default: the model's AnnData).
        key_added
            ``adata.obsm`` key to write.
        batch_size
            Cells per forward pass.
        **kwargs
            Passed to :meth:`get_latent_representation`.

        Returns
        -------
        Nothing; sets ``adata.obsm[key_added]``: ``float32`` array ``(n_obs, d_model)`` of
        L2-normalised cell embeddings. Nothing else in ``adata`` is changed (beyond the
        scvi-tools registration written by :meth:`setup_anndata`).
        """
        adata = self._validate_anndata(adata)
        adata.obsm[key_added] = self.get_latent_representation(
            adata, batch_size=batch_size, **kwargs
        )

    # ------------------------------------------------------------------ pretrained
    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        adata: AnnData,
        *,
        strict: bool = True,
        max_seq_len: int | None = None,
        seed: int = 0,
        checkpoint: str | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        **overrides,
    ) -> SCGPT:
        """Load an official scGPT model directory.

        The directory holds ``args.json``, ``vocab.json`` and ``best_model.pt``.

        The architecture is read from the weights (sizes, which heads exist) and
        ``args.json`` (heads count, styles). Flash-attn layouts (``self_attn.Wqkv.*``,
        ``self_attn._impl.Wqkv.*``) are renamed to ``in_proj_*``. The file is read with
        ``torch.load(weights_only=True)`` (or safetensors): a checkpoint that would run code
        is refused. Every key is audited (:attr:`checkpoint_audit_`): extra heads in the file
        (``flag_encoder``, ``mvc_decoder``, classifiers) are built and loaded, never dropped.

        Parameters
        ----------
        model_dir
            Official model directory.
        adata
            AnnData set up with :meth:`setup_anndata`.
        strict
            Refuse checkpoint tensors the architecture has no place for (else they are only
            listed in ``checkpoint_audit_``).
        max_seq_len
            Tokens per cell; default ``args.json``'s ``max_seq_len`` or 1200.
        seed
            Seed of the per-cell random choices.
        checkpoint
            File name inside ``model_dir`` (default: ``best_model.pt``, else
            ``model.safetensors``).
        accelerator, device
            Where to put the model (scvi-tools conventions).
        **overrides
            Architecture options overriding the checkpoint's (e.g. ``n_cls=8`` adds a fresh
            classifier head; ``dropout``).

        Returns
        -------
        The loaded :class:`SCGPT` model (marked as trained).
        """
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise FileNotFoundError(f"Model directory {str(model_dir)!r} does not exist.")
        vocab_path = model_dir / _VOCAB_FILE
        if not vocab_path.is_file():
            raise FileNotFoundError(f"{str(model_dir)!r} has no {_VOCAB_FILE}.")
        vocab = GeneVocab.from_file(vocab_path)
        args = read_args(model_dir / "args.json")
        weights = cls._find_checkpoint(model_dir, checkpoint)
        state, renamed = to_torch_layout(read_state_dict(weights, mmap=True))
        config = infer_architecture(state, args, vocab, **overrides)
        cfg = config.to_dict()
        for key in ("n_tokens", "pad_id"):
            cfg.pop(key)
        # build on "meta" and adopt the (memory-mapped) checkpoint tensors: one copy in memory
        token = _BUILD_ON_META.set(True)
        try:
            model = cls(
                adata,
                vocab=vocab,
                max_seq_len=int(max_seq_len or args.get("max_seq_len", MAX_SEQ_LEN)),
                n_bins=int(args.get("n_bins", N_BINS)),
                cls_value=CLS_VALUE_PRETRAIN,
                seed=seed,
                **cfg,
            )
        finally:
            _BUILD_ON_META.reset(token)
        audit = load_into_module(
            model.module,
            state,
            strict=strict,
            renamed=renamed,
            resized_heads=bool(overrides),
            assign=True,
        )
        if audit.mismatched:
            warnings.warn(
                f"Re-initialised {len(audit.mismatched)} head tensors whose shape changed with "
                f"the requested architecture: {list(audit.mismatched)}",
                UserWarning,
                stacklevel=settings.warnings_stacklevel,
            )
        if audit.unexpected:
            warnings.warn(
                f"Ignored {len(audit.unexpected)} checkpoint tensors: {audit.unexpected[:5]}",
                UserWarning,
                stacklevel=settings.warnings_stacklevel,
            )
        logger.info("Loaded %s: %s", weights, audit.summary().replace("\n", "; "))
        model.checkpoint_audit_ = audit
        model.is_trained_ = True
        model.to_device(cls._pick_device(accelerator, device))
        model.module.eval()
        return model

    @staticmethod
    def _find_checkpoint(model_dir: Path, name: str | None) -> Path:
        if name is not None:
            return model_dir / name
        for candidate in ("best_model.pt", "model.safetensors", "best_model.safetensors"):
            if (model_dir / candidate).is_file():
                return model_dir / candidate
        raise FileNotFoundError(
            f"{str(model_dir)!r} has no best_model.pt or model.safetensors; name the weights "
            "file with checkpoint=..."
        )

    @staticmethod
    def _pick_device(accelerator: str, device: int | str) -> torch.device:
        from scvi.model._utils import parse_device_args

        _, _, dev = parse_device_args(
            accelerator=accelerator,
            devices=device,
            return_device="torch",
            validate_single_device=True,
        )
        return dev

    def save_pretrained(self, dir_path: str | Path, *, overwrite: bool = False) -> None:
        """Write an official-format model directory.

        Files: ``args.json``, ``vocab.json`` and ``best_model.pt`` (a plain state dict with
        the official key names), loadable by :meth:`from_pretrained` and official scGPT.
        """
        dir_path = self._prepare_dir(dir_path, overwrite, ("best_model.pt", "args.json"))
        args = official_args(
            self.architecture,
            max_seq_len=self.tokenizer_config.max_seq_len,
            n_bins=self.tokenizer_config.n_bins,
            pad_value=self.tokenizer_config.pad_value,
            mask_value=-1,
            input_style="binned" if self.tokenizer_config.n_bins else "log1p",
        )
        (dir_path / "args.json").write_text(json.dumps(args, indent=2), encoding="utf-8")
        self.vocab_.save(dir_path / _VOCAB_FILE)
        state = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        torch.save(state, dir_path / "best_model.pt")

    # ------------------------------------------------------------------ save / load
    @staticmethod
    def _prepare_dir(dir_path, overwrite: bool, files: Sequence[str]) -> Path:
        dir_path = Path(dir_path)
        if dir_path.exists() and not overwrite and any((dir_path / f).exists() for f in files):
            raise FileExistsError(
                f"{str(dir_path)!r} already holds a saved model; pass overwrite=True."
            )
        dir_path.mkdir(parents=True, exist_ok=True)
        return dir_path

    def save(
        self,
        dir_path: str | Path,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **anndata_write_kwargs,
    ) -> None:
        """Save the model to ``dir_path`` without pickle.

        Writes ``model.pt`` (state dict, read back with ``weights_only=True``), ``vocab.json``
        and ``scvi_scgpt.json`` (settings, scvi-tools registry, training history), plus
        ``adata.h5ad`` with ``save_anndata``. :meth:`load` restores an identical model.
        """
        prefix = prefix or ""
        dir_path = self._prepare_dir(dir_path, overwrite, (prefix + _MODEL_FILE,))
        init = self.init_params_
        non_kwargs = {k: v for k, v in init["non_kwargs"].items() if k != "vocab"}
        meta = {
            "format_version": _FORMAT_VERSION,
            "model_name": type(self).__name__,
            "init_params": {"non_kwargs": non_kwargs, "kwargs": init["kwargs"]},
            "registry": self.registry_,
            "attrs": {
                k: v
                for k, v in vars(self).items()
                if k.endswith("_")
                and not k.startswith("_")
                and k not in ("init_params_", "registry_", "vocab_", "checkpoint_audit_")
            },
            "var_names": np.asarray(self.adata.var_names),
        }
        if self.checkpoint_audit_ is not None:
            meta["checkpoint_audit"] = vars(self.checkpoint_audit_)
        (dir_path / (prefix + _META_FILE)).write_text(
            json.dumps(to_jsonable(meta)), encoding="utf-8"
        )
        self.vocab_.save(dir_path / (prefix + _VOCAB_FILE))
        torch.save(self.module.state_dict(), dir_path / (prefix + _MODEL_FILE))
        if save_anndata:
            self.adata.write_h5ad(dir_path / (prefix + "adata.h5ad"), **anndata_write_kwargs)

    @classmethod
    def load(
        cls,
        dir_path: str | Path,
        adata: AnnData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
        **kwargs,
    ) -> SCGPT:
        """Load a model saved with :meth:`save` (no pickle is read).

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        adata
            AnnData to attach (set up like the saved one; any genes). ``None`` reads
            ``adata.h5ad`` saved alongside.
        accelerator, device
            Where to put the model.
        prefix
            File-name prefix used when saving.
        """
        dir_path = Path(dir_path)
        prefix = prefix or ""
        meta_path = dir_path / (prefix + _META_FILE)
        if not meta_path.is_file():
            raise FileNotFoundError(f"{str(meta_path)!r} not found: not a saved SCGPT model.")
        try:
            meta = from_jsonable(json.loads(meta_path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{str(meta_path)!r} is corrupt: {err}") from err
        if meta.get("model_name") != cls.__name__:
            raise ValueError(
                f"{str(dir_path)!r} holds a {meta.get('model_name')}, not {cls.__name__}."
            )
        if adata is None:
            h5ad = dir_path / (prefix + "adata.h5ad")
            if not h5ad.is_file():
                raise ValueError("Pass the AnnData to attach: no adata.h5ad was saved.")
            import anndata

            adata = anndata.read_h5ad(h5ad)
        registry = meta["registry"]
        cls.setup_anndata(adata, source_registry=registry, **registry["setup_args"])
        vocab = GeneVocab.from_file(dir_path / (prefix + _VOCAB_FILE))
        init = meta["init_params"]
        kwargs_flat = {k: v for group in init["kwargs"].values() for k, v in group.items()}
        model = cls(adata, vocab=vocab, **init["non_kwargs"], **kwargs_flat)
        for attr, value in meta["attrs"].items():
            setattr(model, attr, value)
        if "checkpoint_audit" in meta:
            model.checkpoint_audit_ = CheckpointAudit(**meta["checkpoint_audit"])
        state = read_state_dict(dir_path / (prefix + _MODEL_FILE))
        load_into_module(model.module, state, strict=True)
        missing = [k for k in model.module.state_dict() if k not in state]
        if missing:
            raise CheckpointError(f"Saved weights lack {missing[:5]}: the save is incomplete.")
        model.to_device(cls._pick_device(accelerator, device))
        model.module.eval()
        return model
