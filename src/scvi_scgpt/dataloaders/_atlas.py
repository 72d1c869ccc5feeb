"""Blocks of cells for distributed prediction: a map-style dataset and its datamodule.

Each item is one block of global rows of a :class:`~scvi_scgpt.data.CellSource` (a list of
:class:`~scvi_scgpt.data.RowBlock`, one per part the block touches). Being map-style,
Lightning's predict loop gives each item to exactly one rank
(``UnrepeatedDistributedSamplerWrapper``: no padding, no duplicates, no trimming).
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
    store if needed, all ranks wait for it, then each lists the unfinished blocks; the
    predict loader deals them to the ranks.

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

    def setup(self, stage: str | None = None) -> None:
        """Create the store on rank 0, wait for it, list the unfinished blocks."""
        trainer = self.trainer
        if trainer is None or trainer.global_rank == 0:
            if not self.store.exists:
                self.create_store()
        if trainer is not None:
            trainer.strategy.barrier("scvi_scgpt_atlas_store")
        done = self.store.done_blocks()
        self.pending = [b for b in self.all_blocks if b.index not in done]
        world = trainer.world_size if trainer is not None else 1
        if 0 < len(self.pending) < world:
            # Lightning's unrepeated sampler refuses a rank without items: placeholders
            self.pending += [None] * (world - len(self.pending))
        if trainer is None or trainer.global_rank == 0:
            logger.info(
                "%d of %d blocks to run (%d finished before).",
                sum(b is not None for b in self.pending),
                len(self.all_blocks),
                len(done),
            )

    def predict_dataloader(self) -> DataLoader:
        """One block per item, dealt to the ranks by Lightning's unrepeated sampler."""
        return DataLoader(
            CellBlockDataset(self.source, self.pending, self.obs_columns),
            batch_size=None,
            shuffle=False,
            collate_fn=_keep,
            num_workers=self.num_workers,
            persistent_workers=False,
        )

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        """Blocks stay on the CPU (tokenized in ``predict_step``)."""
        return batch
