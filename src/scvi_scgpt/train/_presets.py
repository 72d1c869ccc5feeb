"""Task presets: objectives, hyper-parameters and collator of each training task.

Each preset holds two sets of hyper-parameters, one per *regime*:

- ``"fine_tune"``: the official tutorial values, chosen for fine-tuning a pretrained
  whole-human model. ``SCGPT.train`` uses them when the model was loaded with
  ``from_pretrained``, or was trained before (``is_trained_``).
- ``"from_scratch"``: values for a randomly initialised model (``SCGPT(adata, ...)``),
  chosen on training cells only by ``benchmarks/choose_from_scratch_defaults.py``; the
  evidence is in each preset's comment and in ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from scvi_scgpt.module import ObjectiveConfig

#: The hyper-parameters a regime can change (and ``SCGPT.train`` arguments of the same name).
HYPERPARAMETERS: tuple[str, ...] = (
    "lr",
    "max_epochs",
    "batch_size",
    "lr_gamma",
    "weight_decay",
    "lr_schedule",
    "warmup_steps",
)

#: Most epochs :meth:`TaskPreset.epochs_for` chooses (a tiny data set would otherwise be
#: passed over hundreds of times).
MAX_AUTO_EPOCHS = 100


@dataclass(frozen=True)
class TaskPreset:
    """Defaults of a training task; every field can be overridden in ``SCGPT.train``.

    A task is data: its objectives, the architecture options and tokenization it needs, its
    hyper-parameters and the collator (a key of :data:`scvi_scgpt.dataloaders.COLLATORS`)
    that builds its minibatches. Adding a task means adding a preset (and, for a new
    minibatch layout, a collator); ``SCGPT.train`` has no task-specific code.

    Attributes
    ----------
    objectives
        The :class:`~scvi_scgpt.module.ObjectiveConfig` trained.
    collator
        Name of the collator in :data:`scvi_scgpt.dataloaders.COLLATORS`.
    architecture
        Architecture options the task switches on (heads, batch handling).
    tokenizer
        Tokenizer settings of the task.
    n_top_genes
        Highly variable genes to train on (``None``: all vocabulary genes).
    lr, batch_size, max_epochs, lr_gamma, weight_decay, lr_schedule, warmup_steps
        Optimisation in the ``"fine_tune"`` regime (the official values).
    from_scratch
        Changes to those hyper-parameters in the ``"from_scratch"`` regime (keys from
        :data:`HYPERPARAMETERS`); empty when the official values also fit a new model.
    from_scratch_objectives, from_scratch_tokenizer
        Changes to :attr:`objectives` (fields of ``ObjectiveConfig``) and to
        :attr:`tokenizer` in the ``"from_scratch"`` regime.
    from_scratch_steps
        In the ``"from_scratch"`` regime, when ``max_epochs`` is not given: train for enough
        epochs to make about this many optimizer steps over the training cells (at least
        the regime's ``max_epochs``, at most :data:`MAX_AUTO_EPOCHS`). ``None``: the
        regime's ``max_epochs`` whatever the data size.
    best_epoch_monitor, best_epoch_mode
        The logged validation metric whose best epoch ``SCGPT.train`` keeps, and whether
        lower (``"min"``) or higher (``"max"``) is better.
    """

    objectives: ObjectiveConfig
    collator: str = "masked"
    architecture: dict = field(default_factory=dict)
    tokenizer: dict = field(default_factory=dict)
    n_top_genes: int | None = None
    lr: float = 1e-4
    batch_size: int = 64
    max_epochs: int = 15
    lr_gamma: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "step"
    warmup_steps: int = 0
    from_scratch: dict = field(default_factory=dict)
    from_scratch_objectives: dict = field(default_factory=dict)
    from_scratch_tokenizer: dict = field(default_factory=dict)
    from_scratch_steps: int | None = None
    best_epoch_monitor: str = "validation_loss"
    best_epoch_mode: str = "min"

    def __post_init__(self) -> None:
        unknown = sorted(set(self.from_scratch) - set(HYPERPARAMETERS))
        if unknown:
            raise ValueError(
                f"from_scratch can only change {list(HYPERPARAMETERS)}, got {unknown}."
            )
        if self.best_epoch_mode not in ("min", "max"):
            raise ValueError(
                f"best_epoch_mode must be 'min' or 'max', not {self.best_epoch_mode!r}."
            )

    def for_regime(self, regime: str) -> TaskPreset:
        """The preset with the hyper-parameters of ``regime``.

        Parameters
        ----------
        regime
            ``"fine_tune"`` (the official values) or ``"from_scratch"``.
        """
        if regime == "fine_tune":
            return self
        if regime == "from_scratch":
            return replace(
                self,
                **self.from_scratch,
                objectives=replace(self.objectives, **self.from_scratch_objectives),
                tokenizer={**self.tokenizer, **self.from_scratch_tokenizer},
            )
        raise ValueError(f"regime must be 'fine_tune' or 'from_scratch', got {regime!r}.")

    def epochs_for(self, regime: str, n_train_cells: int | None, batch_size: int) -> int:
        """The regime's ``max_epochs``, scaled to the data by :attr:`from_scratch_steps`.

        Parameters
        ----------
        regime
            ``"fine_tune"`` or ``"from_scratch"``.
        n_train_cells
            Training cells (``None`` when unknown, e.g. streamed: no scaling).
        batch_size
            Cells per minibatch.
        """
        epochs = self.for_regime(regime).max_epochs
        if regime != "from_scratch" or not self.from_scratch_steps or not n_train_cells:
            return epochs
        steps_per_epoch = max(1, -(-int(n_train_cells) // int(batch_size)))
        wanted = -(-int(self.from_scratch_steps) // steps_per_epoch)
        return int(min(max(epochs, wanted), MAX_AUTO_EPOCHS))

    def hyperparameters(self) -> dict:
        """The optimisation values, ``{name: value}`` for :data:`HYPERPARAMETERS`."""
        return {name: getattr(self, name) for name in HYPERPARAMETERS}

    def with_objectives(self, **changes) -> TaskPreset:
        """A copy with some objective settings changed."""
        return replace(self, objectives=replace(self.objectives, **changes))


#: From scratch, the cell embedding learns from the count objective (issue #29): the
#: binned-MSE objectives (GEP, GEPC) are switched off, because with them on the ``<cls>``
#: embedding of a new model stays collapsed (its spread about 0.02, kNN of planted types at
#: chance) even beside the count term, whose per-gene NLL is about 100x smaller than their
#: bin-scale MSE; measured in ``docs/training.md`` ("Training from scratch").
COUNT_RECIPE = {"count": True, "gep": False, "gepc": False}

#: Official Tutorial_Integration recipe: GEP + GEPC + ECS + DAR + DSBN, 1,200 HVGs with
#: zeros, mask ratio 0.4, lr 1e-4, batch 64, 15 epochs, StepLR(0.9).
#:
#: From scratch (issue #29): the count objective alone (no GEP/GEPC, ECS or DAR; the
#: batch-conditioned count decoder and DSBN handle batches), expressed genes only, up to 128
#: per cell (a seeded sample; the decoder still reconstructs every gene), lr 1e-3 held
#: constant, about 2,000 optimizer steps. Ablation on the synthetic strong-batch set (d_model
#: 64, 2 layers, kNN accuracy of the planted types on the embedding; chance 0.2), in
#: ``docs/training.md``: the official objectives had no type signal (scib KMeans NMI 0.01,
#: Total 0.204, ``benchmarks/RESULTS.md``); count with ECS + DAR 0.23 (ECS pulls the
#: near-identical new embeddings together: spread 0.009); count with DAR 0.22; count alone
#: with the official decaying lr over 330 steps 0.22 (the plateau); count alone at a constant
#: lr, 950 steps 0.87, 1,900 steps 0.91.
INTEGRATION = TaskPreset(
    objectives=ObjectiveConfig(
        gep=True,
        gepc=True,
        explicit_zero_prob=True,
        ecs=True,
        dar=True,
        mask_ratio=0.4,
        ecs_threshold=0.8,
        ecs_weight=10.0,
        dar_weight=1.0,
    ),
    architecture={
        "do_mvc": True,
        "do_dab": True,
        "use_batch_labels": True,
        "domain_spec_batchnorm": True,
        "explicit_zero_prob": True,
    },
    tokenizer={"include_zero_genes": True, "cls_value": 0.0, "max_seq_len": 1201},
    n_top_genes=1200,
    lr=1e-4,
    batch_size=64,
    max_epochs=15,
    from_scratch={"lr": 1e-3, "lr_schedule": "constant"},
    from_scratch_objectives={**COUNT_RECIPE, "ecs": False, "dar": False},
    from_scratch_tokenizer={"include_zero_genes": False, "max_seq_len": 129},
    from_scratch_steps=2000,
)

#: Official Tutorial_Annotation recipe: classification only, expressed genes up to 3,000,
#: lr 1e-4, batch 32, 10 epochs, StepLR(0.9).
#:
#: From scratch: lr 3e-3, 40 epochs (batch and schedule as the official recipe). Chosen by
#: ``benchmarks/choose_from_scratch_defaults.py`` on training cells only: the 491 training
#: cells of the annotation benchmark's seed-0 split of ``datasets.pbmc68k_700()``, two
#: stratified 80/20 inner splits, model ``SCGPT(train, d_model=64, n_layers=2, n_heads=4,
#: d_hid=64)``. Inner-validation macro-F1 (mean over the inner splits; majority class 0.05):
#: lr 1e-4: 0.05 at 20 and 40 epochs (every cell the majority class; split 0 only);
#: 3e-4: 0.20 / 0.24 (split 0 only); 1e-3: 0.46 / 0.50; 3e-3: 0.61 / 0.62; 1e-2: 0.23 / 0.38
#: (split 0 only). With the best epoch restored by validation loss, a run longer than needed
#: costs time but little accuracy.
ANNOTATION = TaskPreset(
    objectives=ObjectiveConfig(gep=False, cls=True, mask_ratio=0.0),
    architecture={},
    tokenizer={"include_zero_genes": False, "cls_value": 0.0, "max_seq_len": 3001},
    n_top_genes=None,
    lr=1e-4,
    batch_size=32,
    max_epochs=10,
    from_scratch={"lr": 3e-3, "max_epochs": 40},
)

#: Masked-expression training (GEP + GEPC) of the expressed genes, e.g. to continue
#: training a model on new data without labels or batches.
#:
#: From scratch: lr 1e-3, as the integration preset, whose GEP + GEPC objectives this is
#: (the plateau evidence above); not measured separately.
GEP = TaskPreset(
    objectives=ObjectiveConfig(gep=True, gepc=True, mask_ratio=0.4),
    architecture={"do_mvc": True},
    tokenizer={},
    lr=1e-4,
    batch_size=32,
    max_epochs=10,
    from_scratch={"lr": 1e-3},
)

#: Generative pretraining (paper, Methods): generated-gene MSE + GEPC + cell-prompt step,
#: expressed genes up to 1,200 tokens, generated fraction from {0.25, 0.5, 0.75}, lr 1e-4
#: with warm-up and cosine decay (set in ``SCGPT.train``); the values of the fine-tune
#: regime (continuing to pretrain a pretrained model).
#:
#: From scratch: lr 1e-3, constant after the 100 warm-up steps, about 4,000 optimizer steps
#: (epochs scaled to the data, at least 6). Evidence (``benchmarks/RESULTS.md``, "Pretraining
#: plateau diagnosis", simulated atlas with known truth, d_model 64): every new model first
#: predicts each gene's mean bin; a cosine decay over a run of under ~2,000 steps lowers the
#: learning rate before it leaves that plateau, while a constant lr 1e-3 leaves it after
#: about 2,200 steps and reaches the cell-type oracle's error (``pretrain_evidence.py``).
PRETRAIN = TaskPreset(
    objectives=ObjectiveConfig(gep=True, gepc=True, generative=True, mask_ratio=0.0),
    collator="generative",
    architecture={"do_mvc": True, "use_generative_flag": True},
    tokenizer={"cls_value": -2.0, "max_seq_len": 1200},
    lr=1e-4,
    batch_size=32,
    max_epochs=6,
    lr_schedule="cosine",
    warmup_steps=100,
    from_scratch={"lr": 1e-3, "lr_schedule": "constant"},
    from_scratch_steps=4000,
)

#: Official Tutorial_Perturbation recipe: a control cell's log-normalised expression
#: (unbinned, every gene, pad value 0) with perturbation flags (``pert_pad_id=0``) in, the
#: paired perturbed cell's expression out, MSE over the genes; 1,536 genes per minibatch,
#: dropout 0, lr 1e-4, batch 64, 15 epochs, StepLR(0.9). Validation conditions are the cells
#: of ``adata.obs["split"] == "val"`` when that column exists (``tl.perturbation_split``).
#: The best epoch is kept by validation Pearson, here the mean over cells of the correlation
#: over genes of prediction and target (the tutorial correlates condition means).
#: From scratch: the official values (not measured separately).
PERTURBATION = TaskPreset(
    objectives=ObjectiveConfig(gep=False, perturbation=True, mask_ratio=0.0),
    collator="paired_control",
    architecture={"use_pert_flags": True, "pert_pad_id": 0, "dropout": 0.0},
    tokenizer={
        "n_bins": None,
        "include_zero_genes": True,
        "max_seq_len": 1536,
        "cls_value": 0.0,
        "pad_value": 0.0,
    },
    lr=1e-4,
    batch_size=64,
    max_epochs=15,
    lr_gamma=0.9,
    best_epoch_monitor="perturbation_pearson_validation",
    best_epoch_mode="max",
)

#: Official Tutorial_Multiomics recipe (MuData from ``SCGPT.setup_mudata``): GEP + GEPC + DAR
#: (weight 1), batch tokens for the decoders (``use_batch_labels``), modality tokens
#: (``mod_encoder``, added by the MuData setup), no DSBN, ECS or explicit zero
#: probabilities; expressed features only (1,200 RNA HVGs, every protein, 4,000 highly
#: variable peaks), up to 4,001 tokens, ``<cls>`` value 0, mask ratio 0.4, lr 1e-3 with
#: StepLR(0.95) per epoch, batch 16, 25 epochs, 9:1 validation split, best validation loss
#: kept. From scratch: the official values (the tutorial trains all but the inherited gene
#: embeddings from scratch).
MULTIOMIC = TaskPreset(
    objectives=ObjectiveConfig(gep=True, gepc=True, dar=True, dar_weight=1.0, mask_ratio=0.4),
    collator="multiomic",
    architecture={"do_mvc": True, "do_dab": True, "use_batch_labels": True},
    tokenizer={"include_zero_genes": False, "cls_value": 0.0, "max_seq_len": 4001},
    n_top_genes=1200,
    lr=1e-3,
    batch_size=16,
    max_epochs=25,
    lr_gamma=0.95,
)

PRESETS: dict[str, TaskPreset] = {
    "integration": INTEGRATION,
    "annotation": ANNOTATION,
    "gep": GEP,
    "pretrain": PRETRAIN,
    "perturbation": PERTURBATION,
    "multiomic": MULTIOMIC,
}
