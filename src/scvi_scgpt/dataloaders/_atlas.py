"""Blocks of cells for distributed prediction: a map-style dataset and its datamodule.

Each item is one block of global rows of a :class:`~scvi_scgpt.data.CellSource` (a list of
:class:`~scvi_scgpt.data.RowBlock`, one per part the block touches). Being map-style,
Lightning's predict loop gives each item to exactly one rank
(``UnrepeatedDistributedSamplerWrapper``: no padding, no duplicates, no trimming). The list of
unfinished blocks is made once, by rank 0, and broadcast to every rank.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from scvi_scgpt.data import AtlasStore, BlockSpec, CellSource, RowBlock

logger = logging.getLogger(__name__)


def _keep(item):
    """Collate function that leaves a block as it is (no tensor conversion)."""
    return item


class CellBlockDataset(Dataset):
    """The blocks ``specs`` of ``source``; item ``i`` reads block ``specs[i]``.

    Parameters
    ----------
    source
        Where the cells are read.
    specs
        Blocks to read (e.g. those not finished yet); ``None`` items are placeholders that
        read nothing.
    obs_columns
        ``obs`` columns read with each block.
    """

    def __init__(
        self, source: CellSource, specs: Sequence[BlockSpec], obs_columns: Sequence[str] = ()
    ) -> None:
        self.source = source
        self.specs = list(specs)
        self.obs_columns = tuple(obs_columns)

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, i: int) -> tuple[BlockSpec, list[RowBlock]] | None:
        spec = self.specs[i]
        if spec is None:  # a placeholder: no block for this rank
            return None
        return spec, self.source.read_block(spec, self.obs_columns)


class AtlasDataModule(LightningDataModule):
    """Blocks of a source still missing from an :class:`~scvi_scgpt.data.AtlasStore`.

    In :meth:`setup` (every process, after the process group exists) rank 0 creates the
    store if needed and lists the finished blocks once; the unfinished ones are broadcast to
    every rank, and the predict loader deals them to the ranks. When none is left (a run
    killed after its last block), each rank gets a placeholder, so that the predict loop
    still runs and its end verifies and completes the store.

    DataLoader workers open their own file handles: sources set aside handles inherited
    through a fork, and sources whose library does not survive a fork (TileDB-SOMA:
    ``worker_start_method = "spawn"``) get spawned workers.

    Parameters
    ----------
    source
        The cells.
    store
        The output store.
    block_size
        Rows per block (and per output chunk).
    create_store
        Called on rank 0 when the store does not exist yet.
    obs_columns
        ``obs`` columns read with each block.
    num_workers
        DataLoader worker processes reading blocks ahead (each opens its own handles).
    """

    def __init__(
        self,
        source: CellSource,
        store: AtlasStore,
        *,
        block_size: int,
        create_store: Callable[[], None],
        obs_columns: Sequence[str] = (),
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.source = source
        self.store = store
        self.block_size = block_size
        self.create_store = create_store
        self.obs_columns = tuple(obs_columns)
        self.num_workers = num_workers
        self.all_blocks = source.blocks(block_size)
        self.pending: list[BlockSpec | None] = []
        #: Cells of the blocks finished before this run (known after :meth:`setup`).
        self.cells_done_before = 0

    def setup(self, stage: str | None = None) -> None:
        """Rank 0 creates the store and lists the unfinished blocks; all ranks get the list."""
        trainer = self.trainer
        rank_zero = trainer is None or trainer.global_rank == 0
        message: tuple[str, object] = ("ok", None)
        error: Exception | None = None
        if rank_zero:
            try:
                if not self.store.exists:
                    self.create_store()
                done = self.store.done_blocks()  # the one listing of the marker folder
                message = ("ok", [b.index for b in self.all_blocks if b.index not in done])
            except Exception as err:  # every rank raises it, none waits forever
                message, error = ("error", f"{type(err).__name__}: {err}"), err
        if trainer is not None and trainer.world_size > 1:
            message = trainer.strategy.broadcast(message, src=0)
        status, pending = message
        if status == "error":
            if error is not None:
                raise error
            raise RuntimeError(f"Rank 0 could not prepare the atlas output: {pending}")
        self.pending = [self.all_blocks[i] for i in pending]
        self.cells_done_before = sum(b.n_cells for b in self.all_blocks) - sum(
            b.n_cells for b in self.pending
        )
        world = trainer.world_size if trainer is not None else 1
        if len(self.pending) < world:
            # Lightning's unrepeated sampler refuses a rank without items, and skips the
            # loop (and its end, which completes the store) without any: placeholders
            self.pending += [None] * (world - len(self.pending))
        if rank_zero:
            logger.info(
                "%d of %d blocks to run (%d finished before).",
                len(pending),
                len(self.all_blocks),
                len(self.all_blocks) - len(pending),
            )

    def predict_dataloader(self) -> DataLoader:
        """One block per item, dealt to the ranks by Lightning's unrepeated sampler."""
        context = None
        method = getattr(self.source, "worker_start_method", None)
        if self.num_workers > 0 and method is not None:
            import multiprocessing

            context = multiprocessing.get_context(method)
        return DataLoader(
            CellBlockDataset(self.source, self.pending, self.obs_columns),
            batch_size=None,
            shuffle=False,
            collate_fn=_keep,
            num_workers=self.num_workers,
            persistent_workers=False,
            multiprocessing_context=context,
        )

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        """Blocks stay on the CPU (tokenized in ``predict_step``)."""
        return batch
