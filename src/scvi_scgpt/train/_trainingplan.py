"""Lightning training plan for SCGPT: Adam/AdamW, warm-up, step or cosine decay."""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
from scvi.train import TrainingPlan

from scvi_scgpt.nn._compile import CompiledLayers

logger = logging.getLogger(__name__)
#: Measured step-time ratio of 0.2 attention dropout on a CPU (``benchmarks/RESULTS.md``).
ATTENTION_DROPOUT_COST = "1.4-3.5x"


def make_optimizer(
    params,
    name: Literal["Adam", "AdamW"] = "Adam",
    *,
    lr: float = 1e-4,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """Adam or AdamW, with PyTorch's fused kernel where it applies.

    The fused implementation computes the same update in one pass over each parameter
    (several times faster on a CPU, where the default loops over the element-wise steps).

    Parameters
    ----------
    params
        Parameters to optimise.
    name
        ``"Adam"`` (official) or ``"AdamW"``.
    lr, eps, weight_decay
        Optimizer settings.
    fused
        ``None``: fused when every parameter is a floating-point tensor on a CPU or CUDA
        device; ``False``: PyTorch's default implementation.
    """
    params = list(params)
    if name not in ("Adam", "AdamW"):
        raise ValueError(f"optimizer must be 'Adam' or 'AdamW', got {name!r}.")
    if fused is None:
        fused = bool(params) and all(
            p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params
        )
    cls = torch.optim.AdamW if name == "AdamW" else torch.optim.Adam
    return cls(params, lr=lr, eps=eps, weight_decay=weight_decay, fused=fused or None)


class SCGPTTrainingPlan(TrainingPlan):
    """scvi-tools :class:`~scvi.train.TrainingPlan` with transformer-style schedules.

    Parameters
    ----------
    module
        The :class:`~scvi_scgpt.module.SCGPTModule`.
    lr
        Peak learning rate (official tutorials: 1e-4).
    optimizer
        ``"Adam"`` (official) or ``"AdamW"``.
    weight_decay, eps
        Optimizer settings.
    lr_schedule
        ``"step"``: multiply by ``lr_gamma`` after every epoch (official StepLR);
        ``"cosine"``: cosine decay to 0 over training; ``"constant"``.
    lr_gamma
        Per-epoch factor of the step schedule (official ``schedule_ratio`` 0.9).
    warmup_steps
        Linear warm-up steps before the schedule.
    fused_optimizer
        Use PyTorch's fused Adam kernel (see :func:`make_optimizer`); ``None`` chooses it
        where it applies, except with float16 mixed precision, whose gradient scaler cannot
        be combined with gradient clipping in Lightning.
    compile
        ``torch.compile`` each transformer layer's residual / LayerNorm / feed-forward block
        for the run (:class:`~scvi_scgpt.nn._compile.CompiledLayers`; opt-in, compiled on
        the first step).
    **loss_kwargs
        Passed to ``module.loss`` (e.g. ``objectives=``).
    """

    def __init__(
        self,
        module,
        *,
        lr: float = 1e-4,
        optimizer: Literal["Adam", "AdamW"] = "Adam",
        weight_decay: float = 0.0,
        eps: float = 1e-8,
        lr_schedule: Literal["step", "cosine", "constant"] = "step",
        lr_gamma: float = 0.9,
        warmup_steps: int = 0,
        fused_optimizer: bool | None = None,
        compile: bool = False,
        **loss_kwargs,
    ) -> None:
        if optimizer not in ("Adam", "AdamW"):
            raise ValueError(f"optimizer must be 'Adam' or 'AdamW', got {optimizer!r}.")
        if lr_schedule not in ("step", "cosine", "constant"):
            raise ValueError(f"Unknown lr_schedule {lr_schedule!r}.")
        super().__init__(
            module, lr=lr, weight_decay=weight_decay, eps=eps, optimizer=optimizer, **loss_kwargs
        )
        self.lr_schedule = lr_schedule
        self.lr_gamma = lr_gamma
        self.warmup_steps = warmup_steps
        self.fused_optimizer = fused_optimizer
        self.compile = compile
        self._compiled: CompiledLayers | None = None

    def on_fit_start(self) -> None:
        """Install the opt-in compiled layers; note the cost of attention dropout on a CPU."""
        super().on_fit_start()
        if self.compile and self._compiled is None:
            self._compiled = CompiledLayers(self.module.transformer_encoder).__enter__()
        config = getattr(self.module, "config", None)
        if config is not None and self.device.type == "cpu":
            p = config.dropout if config.attention_dropout is None else config.attention_dropout
            if p > 0:
                logger.info(
                    "Attention dropout %.2g on a CPU: attention runs in the chunked kernel, "
                    "about %s the step time without attention dropout (docs/performance.md); "
                    "attention_dropout=0.0 keeps PyTorch's fused kernel.",
                    p,
                    ATTENTION_DROPOUT_COST,
                )

    def on_fit_end(self) -> None:
        """Remove the compiled layers (the module is eager again after training)."""
        self._uncompile()
        super().on_fit_end()

    def teardown(self, stage: str) -> None:
        """Remove the compiled layers also when training stopped on an error."""
        self._uncompile()
        super().teardown(stage)

    def _uncompile(self) -> None:
        if self._compiled is not None:
            self._compiled.__exit__(None, None, None)
            self._compiled = None

    def compute_and_log_metrics(self, loss_output, metrics, mode: str) -> None:
        """Log the scvi-tools metrics, then each loss term as ``<term>_<mode>``.

        The terms are logged outside ``torch.inference_mode`` (scvi-tools logs them inside
        it), so that DDP can all-reduce them in place.
        """
        extra = loss_output.extra_metrics
        loss_output.extra_metrics = {}
        try:
            super().compute_and_log_metrics(loss_output, metrics, mode)
        finally:
            loss_output.extra_metrics = extra
        with torch.no_grad():
            for key, value in extra.items():
                self.log(
                    f"{key}_{mode}",
                    value.detach().clone(),
                    on_step=self.on_step,
                    on_epoch=self.on_epoch,
                    batch_size=loss_output.n_obs_minibatch,
                    sync_dist=self.use_sync_dist,
                )

    def _total_steps(self) -> int:
        """Optimizer steps of the whole run, for the learning-rate schedule.

        Lightning cannot count the batches of a streaming (length-less) loader; the
        streaming datamodule counts them itself.
        """
        trainer = self.trainer
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total) or total <= 0:
            datamodule = getattr(trainer, "datamodule", None)
            if datamodule is None or not hasattr(datamodule, "steps_per_epoch"):
                raise ValueError(
                    "Cannot count the training steps for the learning-rate schedule; pass "
                    "max_steps= to train()."
                )
            per_epoch = datamodule.steps_per_epoch() // max(trainer.accumulate_grad_batches, 1)
            total = per_epoch * max(trainer.max_epochs or 1, 1)
            if trainer.max_steps and trainer.max_steps > 0:
                total = min(total, trainer.max_steps)
        return max(int(total), 1)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Clip gradients; under bf16 mixed precision also with the fused optimizer.

        Lightning's mixed-precision plugin refuses to clip for an optimizer that unscales
        gradients itself (the fused Adam), which matters only with float16's gradient scaler:
        bf16 has no scaler, so its gradients are clipped here directly.
        """
        bf16 = str(self.trainer.precision).startswith("bf16")
        if gradient_clip_val and bf16 and optimizer.defaults.get("fused"):
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        """Optimizer over trainable parameters and a per-step LambdaLR schedule."""
        params = [p for p in self.module.parameters() if p.requires_grad]
        fused = self.fused_optimizer
        if (
            fused is None
            and "16" in str(self.trainer.precision)
            and "bf16" not in str(self.trainer.precision)
        ):
            fused = False
        optimizer = make_optimizer(
            params,
            self.optimizer_name,
            lr=self.lr,
            eps=self.eps,
            weight_decay=self.weight_decay,
            fused=fused,
        )
        total = self._total_steps()
        per_epoch = max(total // max(self.trainer.max_epochs or 1, 1), 1)
        warmup, schedule, gamma = self.warmup_steps, self.lr_schedule, self.lr_gamma

        def factor(step: int) -> float:
            scale = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
            if schedule == "step":
                return scale * gamma ** (step // per_epoch)
            if schedule == "cosine":
                progress = min(max(step - warmup, 0) / max(total - warmup, 1), 1.0)
                return scale * 0.5 * (1.0 + math.cos(math.pi * progress))
            return scale

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
