"""Distributed prediction on Lightning: a predict-only plan, a per-rank writer, progress.

``Trainer.predict`` runs :class:`BlockPredictionPlan` over the blocks of an
:class:`~scvi_scgpt.dataloaders.AtlasDataModule`; each rank's :class:`AtlasWriter` writes its
results straight into the shared :class:`~scvi_scgpt.data.AtlasStore` (no gather, nothing
kept in memory), and rank 0 checks at the end that every cell was written once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

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
        ``(list of RowBlock) -> {"obsm": {name: array}, "obs": {name: array}}`` with one
        row per cell of the block, in row order.
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

    At the end of the run all ranks meet; rank 0 then checks that every block is recorded
    and every row of ``check_key`` is written, and records the run as complete.

    Parameters
    ----------
    store
        The output store.
    n_blocks, n_obs, block_size
        Size of the whole run (all ranks, all attempts).
    check_key
        ``obsm`` array whose rows are counted at the end.
    """

    def __init__(
        self, store: AtlasStore, *, n_blocks: int, n_obs: int, block_size: int, check_key: str
    ) -> None:
        super().__init__(write_interval="batch")
        self.store = store
        self.n_blocks = n_blocks
        self.n_obs = n_obs
        self.block_size = block_size
        self.check_key = check_key
        self.started = 0.0

    def on_predict_start(self, trainer, pl_module) -> None:
        """Start the clock."""
        self.started = time.perf_counter()

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        """Write one block and mark it done."""
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
        )

    def on_predict_end(self, trainer, pl_module) -> None:
        """All ranks finished: rank 0 checks every cell is there exactly once."""
        trainer.strategy.barrier("scvi_scgpt_atlas_end")
        if trainer.global_rank != 0:
            return
        done = self.store.done_blocks()
        missing = sorted(set(range(self.n_blocks)) - done)
        written = self.store.count_written(self.check_key, self.block_size)
        if missing or written != self.n_obs:
            raise RuntimeError(
                f"The atlas output {str(self.store.path)!r} is incomplete: {len(missing)} "
                f"blocks missing (e.g. {missing[:5]}), {written:,} of {self.n_obs:,} cells "
                "written. Run the same call again (resume=True) to finish it."
            )
        seconds = time.perf_counter() - self.started
        self.store.finish(
            {"complete": True, "n_cells": int(written), "world_size": int(trainer.world_size)}
        )
        logger.info(
            "Atlas output complete: %s cells, each written once (%d blocks, %.1f s, %d "
            "processes).",
            f"{written:,}",
            self.n_blocks,
            seconds,
            trainer.world_size,
        )


class AtlasProgress(Callback):
    """Progress bar on rank 0 with cells/s and ETA over all ranks.

    Every rank records finished blocks in the store; rank 0 counts them after each of its
    own blocks, so the bar shows the cells done by all processes (on any node sharing the
    store).

    Parameters
    ----------
    store
        The output store.
    block_cells
        Cells of each block, by block number.
    enabled
        Show the bar.
    """

    def __init__(self, store: AtlasStore, block_cells: np.ndarray, *, enabled: bool) -> None:
        self.store = store
        self.block_cells = np.asarray(block_cells, dtype=np.int64)
        self.enabled = enabled
        self.bar = None

    def _done_cells(self) -> int:
        done = np.fromiter(self.store.done_blocks(), dtype=np.int64)
        return int(self.block_cells[done].sum()) if len(done) else 0

    def on_predict_start(self, trainer, pl_module) -> None:
        """Open the bar (rank 0)."""
        if self.enabled and trainer.global_rank == 0:
            already = self._done_cells()
            self.bar = tqdm(
                total=int(self.block_cells.sum()),
                initial=already,
                desc="Embedding atlas",
                unit="cell",
                dynamic_ncols=True,
            )

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args) -> None:
        """Move the bar to the cells done by all ranks."""
        if self.bar is not None:
            self.bar.update(self._done_cells() - self.bar.n)

    def on_predict_end(self, trainer, pl_module) -> None:
        """Close the bar."""
        if self.bar is not None:
            self.bar.update(self._done_cells() - self.bar.n)
            self.bar.close()
            self.bar = None
