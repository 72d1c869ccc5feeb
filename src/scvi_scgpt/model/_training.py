"""Training: fine-tuning and pretraining with the scGPT objectives, driven by task presets."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from scvi import REGISTRY_KEYS, settings
from scvi.dataloaders import DataSplitter
from scvi.train import TrainRunner

from scvi_scgpt.data import TokenizerConfig
from scvi_scgpt.dataloaders import COLLATORS, CellRowsDataModule
from scvi_scgpt.model._batchnorm import refresh_domain_statistics
from scvi_scgpt.model._checkpoint import load_into_module
from scvi_scgpt.model._perturbation_combination import check_combination
from scvi_scgpt.model._scvi_compat import use_distributed_sampler
from scvi_scgpt.model._training_defaults import (
    check_against_trivial,
    detect_regime,
    highly_variable_columns,
    record_best_epoch,
    regime_line,
    resolve_hyperparameters,
)
from scvi_scgpt.module import FREEZE_GROUPS, ObjectiveConfig
from scvi_scgpt.train import PRESETS, AtomicCheckpoint, BestEpoch, SCGPTTrainingPlan

logger = logging.getLogger(__name__)


class TrainingMixin:
    """``train``: every task is a preset (objectives, hyper-parameters, collator)."""

    @property
    def training_regime(self) -> Literal["fine_tune", "from_scratch"]:
        """Which preset values :meth:`train` uses by default.

        ``"fine_tune"`` (the official tutorial values) once the model holds trained
        weights: loaded with ``from_pretrained``, trained before, or loaded with ``load``
        after training (all set ``is_trained_``). ``"from_scratch"`` for a randomly
        initialised ``SCGPT(adata, ...)``.
        """
        return detect_regime(self)[0]

    def train(
        self,
        task: Literal[
            "integration", "annotation", "gep", "pretrain", "perturbation", "multiomic"
        ] = "gep",
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
        best_epoch: bool | None = None,
        regime: Literal["auto", "fine_tune", "from_scratch"] = "auto",
        gradient_clip_val: float = 1.0,
        datamodule=None,
        checkpoint_dir: str | Path | None = None,
        checkpoint_every_n_steps: int | None = 1000,
        datasplitter_kwargs: dict | None = None,
        plan_kwargs: dict | None = None,
        compile: bool = False,
        refresh_batch_statistics: bool = True,
        combination: Literal["official", "additive_residual"] = "official",
        **trainer_kwargs,
    ):
        """Fine-tune (or train from scratch) with the scGPT objectives.

        Task presets hold the official tutorial settings for fine-tuning a pretrained model,
        and values for a randomly initialised one (see ``regime``); every value can be
        overridden:

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
        - ``"perturbation"``: the official perturbation recipe (``docs/perturbation.md``).
        - ``"multiomic"``: a MuData from :meth:`setup_mudata`: GEP + GEPC + DAR with batch and
          modality tokens for the decoders, 1,200 RNA HVGs + every protein + 4,000 highly
          variable peaks (``n_top_genes`` may be a dict ``{"RNA": 1200, "ATAC": 4000}``),
          mask ratio 0.4, lr 1e-3, StepLR(0.95), batch 16, 25 epochs (official tutorial).

        Heads the task needs and the model lacks (a pretrained checkpoint has no classifier,
        say) are added, freshly initialised; all other weights are kept. DSBN normalises each
        cell with its own batch's statistics, so minibatches may mix batches.

        Parameters
        ----------
        task
            Preset name.
        max_epochs, batch_size, lr
            Override the preset's values (``None``: the regime's). Any value passed
            explicitly wins over the regime's.
        objectives
            :class:`~scvi_scgpt.module.ObjectiveConfig` or a dict of changes to the preset's.
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
        best_epoch
            Keep the weights of the epoch with the best validation metric (the preset's
            ``best_epoch_monitor``: ``validation_loss``, as the official tutorials) and
            restore them at the end; recorded in ``history_["best_epoch"]``. ``None``: on
            whenever there are validation cells.
        regime
            ``"auto"``: ``"fine_tune"`` (official values) for a model loaded with
            ``from_pretrained`` or trained before, ``"from_scratch"`` for a randomly
            initialised one (:attr:`training_regime`). One log line names the regime and
            the values used.
        gradient_clip_val
            Gradient-norm clipping (official: 1.0).
        datamodule
            A :class:`~scvi_scgpt.dataloaders.StreamingAnnDataModule` to train on cells
            streamed from on-disk files instead of the model's AnnData (atlas-scale
            pretraining; under DDP each rank reads its own shard).
        checkpoint_dir, checkpoint_every_n_steps
            Write a resumable Lightning checkpoint atomically to ``checkpoint_dir/last.ckpt``
            every so many steps and at each epoch end; resume with ``ckpt_path=``.
        datasplitter_kwargs, plan_kwargs
            Extra arguments of :class:`~scvi.dataloaders.DataSplitter` and
            :class:`~scvi_scgpt.train.SCGPTTrainingPlan`.
        compile
            ``torch.compile`` the layers' residual / LayerNorm / feed-forward blocks for the
            run (opt-in; see ``docs/performance.md``).
        refresh_batch_statistics
            End training (in memory, after the best epoch is restored) by recomputing each
            batch's DSBN statistics from its training cells with the final weights; the
            momentum averages kept while training describe earlier weights, while new batches
            mapped by :meth:`load_query_data` are estimated fresh. Measured in
            ``docs/training.md``: better mapping, less batch mixing.
        combination
            Task ``"perturbation"``: ``"official"`` (a double is predicted from control cells
            with two flags) or ``"additive_residual"``: a double's input is the control cell
            plus the training singles' observed changes, the network learns the residual,
            and a gate in [0, 1] fitted on the validation doubles shrinks it towards the
            additive prior (``docs/perturbation.md``). The DE-weighted loss is
            ``objectives={"perturbation_loss": "wmse"}``.
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer` / Lightning (``precision="bf16-mixed"``,
            ``strategy``, ``num_nodes``, ``callbacks``, ...).

        Returns
        -------
        Nothing. Sets ``model.history_`` (losses per epoch), ``model.is_trained_`` and
        ``model.training_task_`` (task, objectives, regime, values, best epoch and the
        trivial-predictor check); the AnnData is not modified.

        Warns
        -----
        NoBetterThanTrivialWarning
            When the trained model is no better than a trivial predictor on its validation
            cells: validation accuracy not above the training majority class's rate
            (classification), or validation GEP MSE not below the per-gene-mean
            predictor's (expression objectives). The message names the likely cause and
            the fix.
        """
        if task not in PRESETS:
            raise ValueError(f"Unknown task {task!r}; choose one of {sorted(PRESETS)}.")
        regime, why = detect_regime(self, regime)
        preset = PRESETS[task].for_regime(regime)
        values, explicit = resolve_hyperparameters(
            preset,
            regime,
            {
                "lr": lr,
                "max_epochs": max_epochs,
                "batch_size": batch_size,
                "lr_gamma": lr_gamma,
                "weight_decay": weight_decay,
                "lr_schedule": lr_schedule,
                "warmup_steps": warmup_steps,
            },
            None if datamodule is not None else round((train_size or 0.9) * self.adata.n_obs),
        )
        given = objectives
        if isinstance(objectives, dict):
            objectives = dataclasses.replace(preset.objectives, **objectives)
        objectives = self._count_default(task, objectives or preset.objectives, given, datamodule)
        self._configure_for(objectives, preset, n_top_genes, tokenizer)
        self._perturbation_options = {
            "combination": check_combination(task, combination),
            "loss": objectives.perturbation_loss,
        }
        if freeze is not None:
            self._freeze(freeze)
        # a datamodule sends each file's own gene ids with its minibatches
        column_ids = (
            np.zeros(0, dtype=np.int64)
            if datamodule is not None
            else self._column_vocab_ids(self.adata)
        )
        # a collator that needs more than tokens (e.g. paired control cells) gets it from
        # the mixin of its task, as it may also hold out cells (``external_indexing``)
        collator_inputs = self._collator_inputs(preset.collator)
        collator = COLLATORS[preset.collator].for_objectives(
            column_ids,
            self.tokenizer_config,
            objectives,
            cls_id=self.vocab_.cls_id,
            pad_id=self.vocab_.pad_id,
            **collator_inputs.pop("collator", {}),
        )
        if checkpoint_dir is not None:
            callbacks = list(trainer_kwargs.pop("callbacks", None) or [])
            callbacks.append(AtomicCheckpoint(checkpoint_dir, checkpoint_every_n_steps))
            trainer_kwargs["callbacks"] = callbacks
        splitter_kwargs = {**collator_inputs.get("splitter", {}), **(datasplitter_kwargs or {})}
        if datamodule is not None:
            if datamodule.vocab != self.vocab_:
                raise ValueError("The datamodule's vocabulary differs from the model's.")
            datamodule.set_collate(collator)
            data_splitter = datamodule
            if datamodule.val_stream is None:
                trainer_kwargs.setdefault("limit_val_batches", 0)
        elif collator_inputs.get("cell_rows"):
            data_splitter = CellRowsDataModule(
                self.adata.n_obs,
                collator,
                train_size=train_size,
                validation_size=validation_size,
                batch_size=values["batch_size"],
                seed=settings.seed,
                **splitter_kwargs,
            )
        else:
            data_splitter = DataSplitter(
                self.adata_manager,
                train_size=train_size,
                validation_size=validation_size,
                batch_size=values["batch_size"],
                collate_fn=collator,
                distributed_sampler=use_distributed_sampler(trainer_kwargs.get("strategy")),
                **splitter_kwargs,
            )
        plan = SCGPTTrainingPlan(
            self.module,
            lr=values["lr"],
            optimizer=optimizer,
            weight_decay=values["weight_decay"],
            lr_schedule=values["lr_schedule"],
            lr_gamma=values["lr_gamma"],
            warmup_steps=values["warmup_steps"],
            objectives=objectives,
            compile=compile,
            **(plan_kwargs or {}),
        )
        indexing = splitter_kwargs.get("external_indexing")
        if indexing is not None:
            has_validation = len(indexing) > 1 and len(indexing[1]) > 0
        else:
            has_validation = datamodule is not None or (
                (validation_size or 0) > 0 or train_size < 1.0
            )
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
        validates = has_validation and not (
            datamodule is not None and datamodule.val_stream is None
        )
        if best_epoch and not validates:
            raise ValueError(
                "best_epoch keeps the epoch with the best validation metric, but there are no "
                "validation cells; use train_size < 1 or best_epoch=False."
            )
        keeper = None
        if validates:
            # also records the validation metrics of the weights the model ends with
            keeper = BestEpoch(
                preset.best_epoch_monitor,
                preset.best_epoch_mode,
                restore=best_epoch is None or bool(best_epoch),
            )
            callbacks = list(trainer_kwargs.pop("callbacks", None) or [])
            trainer_kwargs["callbacks"] = [*callbacks, keeper]
        logger.info(regime_line(task, regime, why, values, explicit, keeper))
        runner = TrainRunner(
            self,
            training_plan=plan,
            data_splitter=data_splitter,
            max_epochs=values["max_epochs"],
            accelerator=accelerator,
            devices=devices,
            early_stopping=early_stopping,
            gradient_clip_val=gradient_clip_val,
            **trainer_kwargs,
        )
        self.training_task_ = {
            "task": task,
            "objectives": objectives.to_dict(),
            "regime": regime,
            "hyperparameters": values,
        }
        result = runner()
        if keeper is not None and keeper.restore:
            self.training_task_["best_epoch"] = record_best_epoch(self, keeper)
        if task == "perturbation":
            self._fit_residual_gate()
        if (
            refresh_batch_statistics
            and datamodule is None
            and self.architecture.domain_spec_batchnorm
        ):
            train_idx = getattr(data_splitter, "train_idx", None)
            refresh_domain_statistics(
                self, list(range(self.architecture.n_batch)), values["batch_size"], train_idx
            )
        if keeper is not None:
            in_ddp = "ddp" in str(trainer_kwargs.get("strategy", ""))
            if datamodule is None and not in_ddp:
                val_idx = getattr(data_splitter, "val_idx", None)
                self.training_task_["trivial_check"] = check_against_trivial(
                    self,
                    task=task,
                    objectives=objectives,
                    regime=regime,
                    values=values,
                    preset=preset,
                    best=keeper,
                    data_splitter=data_splitter,
                    n_val=None if val_idx is None else len(val_idx),
                )
        return result

    def _configure_for(self, objectives, preset, n_top_genes, tokenizer_changes=None) -> None:
        """Add the heads and tokenizer settings the objectives need."""
        arch = dict(preset.architecture)
        arch.update(objectives.required_architecture())
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
            if tokenizer.get("include_zero_genes"):  # every subset gene is a token
                tokenizer["max_seq_len"] = max(
                    len(self.gene_subset_) + 1, tokenizer.get("max_seq_len", 0)
                )
        if tokenizer_changes:
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
        named = self.init_params_["non_kwargs"]  # d_model, ..., dropout: named arguments
        for key, value in changes.items():
            (named if key in named else kwargs)[key] = value
        logger.info("Added or resized heads for training: %s", changes)

    def _set_tokenizer(self, **changes) -> None:
        if not changes:
            return
        self.tokenizer_config = dataclasses.replace(self.tokenizer_config, **changes)
        named = self.init_params_["non_kwargs"]  # pad_value is no argument of SCGPT()
        named.update({k: v for k, v in changes.items() if k in named})

    def _select_hvgs(self, n_top_genes: int) -> list[str]:
        """Highly variable vocabulary genes (seurat_v3 on counts, per batch)."""
        names, _ = self._gene_names(self.adata)
        matched = np.flatnonzero(self.gene_coverage(self.adata).vocab_ids >= 0)
        if len(matched) <= n_top_genes:
            return list(names[matched])
        manager = self.adata_manager
        batch_key = manager.registry["setup_args"].get("batch_key")
        chosen = highly_variable_columns(
            manager.get_from_registry(REGISTRY_KEYS.X_KEY)[:, matched],
            n_top_genes,
            None if batch_key is None else self.adata.obs[batch_key].to_numpy(),
            counts_error=(
                "Selecting highly variable genes (seurat_v3) needs raw counts, but the "
                "registered expression is not integer. Register the counts layer "
                "(setup_anndata(layer='counts')) or pass n_top_genes=None."
            ),
        )
        return list(names[np.sort(matched[chosen])])

    def _freeze(self, freeze: str | Sequence[str]) -> None:
        prefixes = FREEZE_GROUPS.get(freeze) if isinstance(freeze, str) else tuple(freeze)
        if prefixes is None:
            raise ValueError(
                f"freeze must be one of {sorted(FREEZE_GROUPS)} or a list of parameter "
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
