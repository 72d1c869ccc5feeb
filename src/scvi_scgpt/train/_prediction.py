"""Distributed prediction on Lightning: a predict-only plan, a per-rank writer, progress.

``Trainer.predict`` runs :class:`BlockPredictionPlan` over the blocks of an
:class:`~scvi_scgpt.dataloaders.AtlasDataModule`; each rank's :class:`AtlasWriter` writes its
results straight into the shared :class:`~scvi_scgpt.data.AtlasStore` (no gather, nothing
kept in memory), and rank 0 verifies every block at the end and completes the store.
Progress comes from counters (each rank's count of its own cells), never from listing the
store's marker folder.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.callbacks import BasePredictionWriter
from tqdm.auto import tqdm

from scvi_scgpt.data import AtlasStore, BlockSpec, RowBlock

logger = logging.getLogger(__name__)

#: What a block runner returns: per-cell ``obsm`` arrays and ``obs`` columns of the block.
BlockResult = Mapping[str, Mapping[str, np.ndarray]]


class BlockPredictionPlan(LightningModule):
    """Runs ``run_block(segments)`` on each block and returns its results with the block.

    Parameters
    ----------
    module
        The torch module (moved to each rank's device by Lightning).
    run_block
        ``(list of RowBlock) -> {"obsm": {name: array}, "obs": {name: array}, "empty":
        positions, "nonfinite": positions}`` with one row per cell of the block, in row
        order; ``empty`` and ``nonfinite`` (optional) list the cells left without a result
        (NaN rows): empty cells, and cells whose result is not finite however computed.
    """

    def __init__(
        self, module: torch.nn.Module, run_block: Callable[[list[RowBlock]], BlockResult]
    ) -> None:
        super().__init__()
        self.module = module
        self.run_block = run_block

    def predict_step(
        self, batch: tuple[BlockSpec, list[RowBlock]] | None, batch_idx: int
    ) -> dict | None:
        """Results of one block, keyed for :class:`AtlasWriter` (``None``: no block)."""
        if batch is None:
            return None
        spec, segments = batch
        result = self.run_block(segments)
        ids = np.concatenate([s.cell_ids for s in segments])
        return {"spec": spec, "cell_ids": ids, **result}


class AtlasWriter(BasePredictionWriter):
    """Writes each block's results into the store as soon as the block is done.

    At the end of the run all ranks meet; rank 0 then verifies every block
    (:meth:`~scvi_scgpt.data.AtlasStore.verify`: marked, finite rows, the cells without a
    result NaN). Blocks that fail lose their marker and the run raises, so that the next run
    writes them again; otherwise the store is completed, with the ids of the empty and the
    non-finite cells in ``uns``.

    Parameters
    ----------
    store
        The output store.
    blocks
        Every block of the run (all ranks, all attempts).
    n_obs
        Cells of the run.
    check_key
        ``obsm`` array verified at the end.
    """

    def __init__(
        self, store: AtlasStore, *, blocks: Sequence[BlockSpec], n_obs: int, check_key: str
    ) -> None:
        super().__init__(write_interval="batch")
        self.store = store
        self.blocks = list(blocks)
        self.n_obs = n_obs
        self.check_key = check_key
        self.started = 0.0

    def on_predict_start(self, trainer, pl_module) -> None:
        """Start the clock."""
        self.started = time.perf_counter()

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        """Write one block (verified before it is marked done)."""
        if prediction is None:
            return
        spec = prediction["spec"]
        self.store.write_block(
            spec.index,
            spec.start,
            spec.stop,
            cell_ids=prediction["cell_ids"],
            obsm=prediction.get("obsm", {}),
            obs=prediction.get("obs", {}),
            writer=f"rank {trainer.global_rank}",
            empty=prediction.get("empty", ()),
            nonfinite=prediction.get("nonfinite", ()),
        )

    def on_predict_end(self, trainer, pl_module) -> None:
        """All ranks finished: rank 0 verifies every block, then completes the store."""
        trainer.strategy.barrier("scvi_scgpt_atlas_end")
        if trainer.global_rank != 0:
            return
        check = self.store.verify(self.blocks, self.check_key)
        if check.bad:
            self.store.drop_markers(check.bad)
            cells = sum(self.blocks[i].n_cells for i in check.bad)
            raise RuntimeError(
                f"The atlas output {str(self.store.path)!r} is incomplete: {len(check.bad)} "
                f"block(s) {check.bad[:10]} ({cells:,} cells) are missing or hold rows that "
                "are not finite (the cells listed without a result aside): data lost after "
                "the blocks were written. Their markers were removed: run the same call "
                "again (resume=True) to write them."
            )
        seconds = time.perf_counter() - self.started
        self.store.finish(
            {
                "n_cells": int(self.n_obs),
                "world_size": int(trainer.world_size),
                "n_empty_cells": len(check.empty_cells),
                "empty_cells": np.asarray(check.empty_cells, dtype=object),
                "n_nonfinite_cells": len(check.nonfinite_cells),
                "nonfinite_cells": np.asarray(check.nonfinite_cells, dtype=object),
                "complete": True,
            }
        )
        logger.info(
            "Atlas output complete: %s cells, each written once and verified (%d blocks, "
            "%d empty cells, %d non-finite cells, %.1f s, %d processes).",
            f"{self.n_obs:,}",
            len(self.blocks),
            len(check.empty_cells),
            len(check.nonfinite_cells),
            seconds,
            trainer.world_size,
        )


class AtlasProgress(Callback):
    """Progress bar on rank 0 with cells/s and ETA over all ranks, from counters.

    Each rank counts the cells of its own blocks. With several ranks each publishes its
    count (a tiny file per rank in the store, rewritten at most every ``refresh_s``) and
    rank 0 reads the ``world_size`` counts at most every ``refresh_s``: no listing of the
    marker folder, and a cost that does not grow with the number of blocks.

    Parameters
    ----------
    store
        The output store.
    total_cells
        Cells of the whole run.
    enabled
        Show the bar.
    refresh_s
        Seconds between two publications / readings of the counters.
    """

    #: Hidden folder of the per-rank counters inside the store.
    COUNTERS_DIR = ".scvi_scgpt_progress"

    def __init__(
        self, store: AtlasStore, total_cells: int, *, enabled: bool, refresh_s: float = 2.0
    ) -> None:
        self.store = store
        self.total_cells = int(total_cells)
        self.enabled = enabled
        self.refresh_s = refresh_s
        self.bar = None
        self.own = 0
        self.before = 0
        self.others = 0
        self.run_id = ""
        self.last = 0.0

    def _counter(self, rank: int):
        return self.store.path / self.COUNTERS_DIR / f"rank{rank}"

    def _publish(self, trainer) -> None:
        file = self._counter(trainer.global_rank)
        file.parent.mkdir(exist_ok=True)
        tmp = file.with_name(f"{file.name}.tmp{os.getpid()}")
        tmp.write_text(f"{self.run_id} {self.own}", encoding="utf-8")
        os.replace(tmp, file)

    def _read_others(self, trainer) -> int:
        total = 0
        for rank in range(1, trainer.world_size):
            try:
                run, count = self._counter(rank).read_text(encoding="utf-8").split()
            except (OSError, ValueError):
                continue
            total += int(count) if run == self.run_id else 0
        return total

    def on_predict_start(self, trainer, pl_module) -> None:
        """Agree on a run id (counters of earlier runs are ignored); open the bar (rank 0)."""
        if not self.enabled:
            return
        self.own, self.others, self.last = 0, 0, time.monotonic()
        self.run_id = uuid.uuid4().hex
        if trainer.world_size > 1:
            self.run_id = trainer.strategy.broadcast(self.run_id, src=0)
        datamodule = getattr(trainer, "datamodule", None)
        self.before = int(getattr(datamodule, "cells_done_before", 0))
        if trainer.global_rank == 0:
            self.bar = tqdm(
                total=self.total_cells,
                initial=self.before,
                desc="Embedding atlas",
                unit="cell",
                dynamic_ncols=True,
            )

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args) -> None:
        """Count this rank's cells; publish / read the counters at most every refresh_s."""
        if not self.enabled or batch is None:
            return
        self.own += int(batch[0].n_cells)
        now = time.monotonic()
        refresh = trainer.world_size > 1 and now - self.last >= self.refresh_s
        if refresh:
            self.last = now
            if trainer.global_rank == 0:
                self.others = self._read_others(trainer)
            else:
                self._publish(trainer)
        if self.bar is not None:
            self.bar.update(self.before + self.own + self.others - self.bar.n)

    def on_exception(self, trainer, pl_module, exception) -> None:
        """Close the bar where it stands."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_predict_end(self, trainer, pl_module) -> None:
        """Publish the final count; close the bar (the run is complete: all cells done)."""
        if self.enabled and trainer.world_size > 1 and trainer.global_rank != 0:
            self._publish(trainer)
        if self.bar is not None:
            self.bar.update(self.total_cells - self.bar.n)
            self.bar.close()
            self.bar = None
