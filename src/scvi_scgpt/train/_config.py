"""Training objectives and task presets (official tutorial values as defaults)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace


@dataclass(frozen=True)
class ObjectiveConfig:
    """Which scGPT objectives are trained, and their weights.

    Parameters
    ----------
    gep
        Masked gene-expression prediction: MSE on masked positions.
    gepc
        Gene-expression prediction from the cell embedding (the MVC decoder), MSE on masked
        positions.
    explicit_zero_prob
        Also train the heads' probability that a value is non-zero (Bernoulli NLL).
    ecs
        Elastic cell similarity: pushes cosine similarities between cell embeddings away
        from ``ecs_threshold``.
    dar
        Domain adaptation by reverse back-propagation: an adversarial batch classifier
        behind a gradient-reversal layer.
    cls
        Cell-type classification (cross-entropy on the ``cls_decoder`` logits).
    generative
        Generative pretraining under the scGPT attention mask: a fraction of each cell's
        expressed genes (drawn per minibatch from ``gen_ratios``) becomes tokens to generate
        (gene embedding + flag, no value); ``gep`` is then the MSE of their predicted bins and
        ``gepc`` the MVC prediction of them from the cell embedding.
    cell_prompt
        With ``generative``, add the cell-prompt step: the cell embedding of the first pass
        (detached) replaces ``<cls>`` and the generated genes are predicted again.
    gen_ratios
        Fractions of generated genes drawn from per minibatch.
    mask_ratio
        Fraction of each cell's gene tokens (``<cls>`` and padding excluded) whose value is
        replaced by the mask value; ``int(n * mask_ratio)`` per cell.
    ecs_threshold, ecs_weight, dar_weight, gep_weight, gepc_weight, cls_weight
        Threshold and loss weights (official integration tutorial: 0.8, 10, 1).
    """

    gep: bool = True
    gepc: bool = False
    explicit_zero_prob: bool = False
    ecs: bool = False
    dar: bool = False
    cls: bool = False
    generative: bool = False
    cell_prompt: bool = True
    gen_ratios: tuple[float, ...] = (0.25, 0.5, 0.75)
    mask_ratio: float = 0.4
    ecs_threshold: float = 0.8
    ecs_weight: float = 10.0
    dar_weight: float = 1.0
    gep_weight: float = 1.0
    gepc_weight: float = 1.0
    cls_weight: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}.")
        if (self.gep or self.gepc) and self.mask_ratio == 0 and not self.generative:
            raise ValueError("GEP/GEPC need masked positions: set mask_ratio > 0.")
        if not any((self.gep, self.gepc, self.ecs, self.dar, self.cls)):
            raise ValueError("At least one objective must be switched on.")

    def to_dict(self) -> dict:
        """Plain-dict form."""
        return asdict(self)


@dataclass(frozen=True)
class TaskPreset:
    """Defaults of a training task; every field can be overridden in ``SCGPT.train``."""

    objectives: ObjectiveConfig
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

    def with_objectives(self, **changes) -> TaskPreset:
        """A copy with some objective settings changed."""
        return replace(self, objectives=replace(self.objectives, **changes))


#: Official Tutorial_Integration recipe: GEP + GEPC + ECS + DAR + DSBN, 1,200 HVGs with
#: zeros, mask ratio 0.4, lr 1e-4, batch 64, 15 epochs, StepLR(0.9).
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
)

#: Official Tutorial_Annotation recipe: classification only, expressed genes up to 3,000,
#: lr 1e-4, batch 32, 10 epochs, StepLR(0.9).
ANNOTATION = TaskPreset(
    objectives=ObjectiveConfig(gep=False, cls=True, mask_ratio=0.0),
    architecture={},
    tokenizer={"include_zero_genes": False, "cls_value": 0.0, "max_seq_len": 3001},
    n_top_genes=None,
    lr=1e-4,
    batch_size=32,
    max_epochs=10,
)

#: Masked-expression training (GEP + GEPC) of the expressed genes, e.g. to continue
#: training a model on new data without labels or batches.
GEP = TaskPreset(
    objectives=ObjectiveConfig(gep=True, gepc=True, mask_ratio=0.4),
    architecture={"do_mvc": True},
    tokenizer={},
    lr=1e-4,
    batch_size=32,
    max_epochs=10,
)

#: Generative pretraining (paper, Methods): generated-gene MSE + GEPC + cell-prompt step,
#: expressed genes up to 1,200 tokens, generated fraction from {0.25, 0.5, 0.75}, lr 1e-4
#: with warm-up and cosine decay (set in ``SCGPT.train``).
PRETRAIN = TaskPreset(
    objectives=ObjectiveConfig(gep=True, gepc=True, generative=True, mask_ratio=0.0),
    architecture={"do_mvc": True, "use_generative_flag": True},
    tokenizer={"cls_value": -2.0, "max_seq_len": 1200},
    lr=1e-4,
    batch_size=32,
    max_epochs=6,
    lr_schedule="cosine",
    warmup_steps=100,
)

PRESETS: dict[str, TaskPreset] = {
    "integration": INTEGRATION,
    "annotation": ANNOTATION,
    "gep": GEP,
    "pretrain": PRETRAIN,
}
