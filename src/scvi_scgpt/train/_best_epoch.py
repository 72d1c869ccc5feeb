"""Keep the weights of the best validation epoch and restore them when training ends."""

from __future__ import annotations

import logging
import math
from typing import Literal

import torch
from lightning.pytorch import Callback

logger = logging.getLogger(__name__)


def _floats(metrics) -> dict[str, float]:
    """Scalar metrics as floats (others skipped)."""
    out = {}
    for key, value in metrics.items():
        try:
            out[key] = float(value)
        except (TypeError, ValueError, RuntimeError):
            continue
    return out


class BestEpoch(Callback):
    """Keep a CPU copy of the module's weights at the best monitored validation metric.

    After every validation run of training (sanity checks excluded) the monitored metric is
    read from ``trainer.callback_metrics``; when it improves on the best so far, the
    module's ``state_dict`` is copied to the CPU. At the end of ``fit`` that copy is loaded
    back, so the model holds the weights of the best epoch, as the official scGPT tutorials
    keep theirs.

    Parameters
    ----------
    monitor
        Logged metric to watch (``"validation_loss"``; ``"cls_accuracy_validation"``).
    mode
        ``"min"`` for a loss, ``"max"`` for an accuracy.
    min_delta
        Smallest change that counts as an improvement; ties keep the earlier epoch.
    restore
        Load the best weights back at the end of ``fit``.

    Attributes
    ----------
    best_epoch
        0-based epoch of the best value (the index of ``model.history_``), ``None`` before
        any validation.
    best_value
        The best monitored value.
    restored
        Whether the best weights were loaded back at fit end.
    best_metrics, last_metrics
        Every logged metric (floats) at the best and at the last validated epoch.
    n_validated, best_index
        Validations seen in this fit, and the 0-based position of the best among them
        (the row of this fit's validation metrics in ``history_``).
    """

    def __init__(
        self,
        monitor: str = "validation_loss",
        mode: Literal["min", "max"] = "min",
        *,
        min_delta: float = 0.0,
        restore: bool = True,
    ) -> None:
        super().__init__()
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}.")
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}.")
        self.monitor = monitor
        self.mode = mode
        self.min_delta = min_delta
        self.restore = restore
        self.best_epoch: int | None = None
        self.best_value: float | None = None
        self.last_epoch: int | None = None
        self.restored = False
        self.best_metrics: dict[str, float] = {}
        self.last_metrics: dict[str, float] = {}
        self.n_validated = 0
        self.best_index: int | None = None
        self._state: dict[str, torch.Tensor] | None = None
        self._missing_warned = False

    @staticmethod
    def _target(pl_module) -> torch.nn.Module:
        """The module whose weights are kept: the training plan's ``module`` if it has one."""
        return getattr(pl_module, "module", pl_module)

    def _improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best_value is None:
            return True
        if self.mode == "min":
            return value < self.best_value - self.min_delta
        return value > self.best_value + self.min_delta

    def on_fit_start(self, trainer, pl_module) -> None:
        """Forget a previous fit's best epoch."""
        self.best_epoch = None
        self.best_value = None
        self.last_epoch = None
        self.restored = False
        self.best_metrics = {}
        self.last_metrics = {}
        self.n_validated = 0
        self.best_index = None
        self._state = None

    def on_validation_end(self, trainer, pl_module) -> None:
        """Copy the weights when the monitored metric improves."""
        if trainer.sanity_checking:
            return
        metric = trainer.callback_metrics.get(self.monitor)
        if metric is None:
            if not self._missing_warned:
                logger.warning(
                    "BestEpoch: metric %r was not logged (logged: %s); the last epoch's "
                    "weights will be kept.",
                    self.monitor,
                    sorted(trainer.callback_metrics),
                )
                self._missing_warned = True
            return
        value = float(metric)
        self.last_epoch = int(trainer.current_epoch)
        self.last_metrics = _floats(trainer.callback_metrics)
        self.n_validated += 1
        improved = self._improves(value)
        # every rank takes rank 0's decision, so that all keep the same weights
        improved = bool(trainer.strategy.broadcast(improved, src=0))
        if not improved:
            return
        self.best_epoch = int(trainer.current_epoch)
        self.best_value = value
        self.best_metrics = dict(self.last_metrics)
        self.best_index = self.n_validated - 1
        self._state = {
            k: v.detach().to("cpu", copy=True)
            for k, v in self._target(pl_module).state_dict().items()
        }

    def on_fit_end(self, trainer, pl_module) -> None:
        """Load the best weights back (when ``restore``)."""
        if not self.restore or self._state is None:
            return
        self._target(pl_module).load_state_dict(self._state)
        self.restored = True
        if self.best_epoch != self.last_epoch:
            logger.info(
                "Restored the weights of epoch %d (%s %.4g); the last validated epoch was %d.",
                self.best_epoch,
                self.monitor,
                self.best_value,
                self.last_epoch,
            )

    def metrics(self) -> dict[str, float]:
        """Logged metrics of the weights the model holds: the best epoch's once restored."""
        return dict(self.best_metrics if self.restored else self.last_metrics)

    def best_state(self) -> dict[str, torch.Tensor] | None:
        """The kept CPU copy of the best weights (``None`` before any improvement)."""
        return self._state

    def summary(self) -> dict:
        """``{"epoch", "monitor", "mode", "value", "restored"}`` of the best epoch."""
        return {
            "epoch": self.best_epoch,
            "monitor": self.monitor,
            "mode": self.mode,
            "value": self.best_value,
            "restored": self.restored,
        }
