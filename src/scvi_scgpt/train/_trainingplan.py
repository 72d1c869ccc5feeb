"""Lightning training plan for SCGPT: Adam/AdamW, warm-up, step or cosine decay."""

from __future__ import annotations

import math
from typing import Literal

import torch
from scvi.train import TrainingPlan


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

    def configure_optimizers(self):
        """Optimizer over trainable parameters and a per-step LambdaLR schedule."""
        params = [p for p in self.module.parameters() if p.requires_grad]
        cls = torch.optim.AdamW if self.optimizer_name == "AdamW" else torch.optim.Adam
        optimizer = cls(params, lr=self.lr, eps=self.eps, weight_decay=self.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
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
