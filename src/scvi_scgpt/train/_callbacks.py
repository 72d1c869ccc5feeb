"""Training callbacks: periodic, atomic, resumable checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch import Callback


class AtomicCheckpoint(Callback):
    """Save a full Lightning checkpoint (weights, optimizer, scheduler, loop state) atomically.

    Every ``every_n_train_steps`` steps and at the end of each epoch, the checkpoint is
    written to a temporary file and renamed over ``dirpath/last.ckpt``, so an interrupted
    save never leaves a corrupt checkpoint. Resume with ``model.train(...,
    ckpt_path="dirpath/last.ckpt")``.
    """

    def __init__(self, dirpath: str | Path, every_n_train_steps: int | None = 1000) -> None:
        super().__init__()
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps

    @property
    def last_path(self) -> Path:
        """Where the latest checkpoint is."""
        return self.dirpath / "last.ckpt"

    def _save(self, trainer) -> None:
        tmp = self.dirpath / f".last.ckpt.tmp{os.getpid()}"
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
        trainer.strategy.barrier()
        trainer.save_checkpoint(tmp)  # collective under DDP; rank 0 writes
        if trainer.is_global_zero:
            os.replace(tmp, self.last_path)
        trainer.strategy.barrier()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Save every ``every_n_train_steps`` optimizer steps."""
        step = trainer.global_step
        if self.every_n_train_steps and step > 0 and step % self.every_n_train_steps == 0:
            self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        """Save at the end of every epoch."""
        self._save(trainer)
