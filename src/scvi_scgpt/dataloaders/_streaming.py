"""Streaming training cells from any cell source: on-disk files, collections, TileDB-SOMA."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from scvi_scgpt._constants import TOKEN_KEYS
from scvi_scgpt.data import CellSource, GeneVocab, match_genes, open_source

logger = logging.getLogger(__name__)


class AnnDataFileStream(IterableDataset):
    """Minibatches of cells read block by block from a :class:`~scvi_scgpt.data.CellSource`.

    Every epoch the ``(file, block)`` list is shuffled with ``seed + epoch``; the blocks are
    dealt to the distributed ranks (and DataLoader workers) so that they read disjoint cells,
    and every rank yields the same number of minibatches (DDP needs equal steps). Cells are
    shuffled within each block. Only one block per worker is in memory at a time.
    """

    def __init__(
        self,
        source: CellSource,
        column_vocab_ids: Sequence[np.ndarray],
        *,
        batch_size: int,
        block_size: int,
        shuffle: bool,
        seed: int,
        collate: Callable[[dict], dict] | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.column_vocab_ids = list(column_vocab_ids)
        self.n_obs = [p.n_obs for p in source.parts]
        self.batch_size = batch_size
        self.block_size = block_size
        self.shuffle = shuffle
        self.seed = seed
        self.collate = collate
        self.rank, self.world_size = 0, 1
        self.epoch = 0

    def _blocks(self) -> list[tuple[int, int, int]]:
        """``(part, start, stop)`` blocks, each within one part (one gene order)."""
        specs = self.source.blocks(self.block_size, within_parts=True)
        return [spec.segments[0] for spec in specs]

    def _batches_per_block(self, block) -> int:
        return -(-(block[2] - block[1]) // self.batch_size)

    def shard(self, epoch: int) -> list[tuple[int, int, int]]:
        """Blocks of this rank for ``epoch`` (all workers together)."""
        blocks = self._blocks()
        if self.shuffle:
            order = np.random.default_rng(self.seed + epoch).permutation(len(blocks))
            blocks = [blocks[i] for i in order]
        return blocks[self.rank :: self.world_size]

    def steps_per_epoch(self, epoch: int = 0) -> int:
        """Minibatches every rank yields in ``epoch`` (the minimum over ranks)."""
        blocks = self._blocks()
        if self.shuffle:
            order = np.random.default_rng(self.seed + epoch).permutation(len(blocks))
            blocks = [blocks[i] for i in order]
        per_rank = [
            sum(self._batches_per_block(b) for b in blocks[r :: self.world_size])
            for r in range(self.world_size)
        ]
        return min(per_rank)

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        worker = get_worker_info()
        n_workers, worker_id = (1, 0) if worker is None else (worker.num_workers, worker.id)
        blocks = self.shard(epoch)
        budget = self.steps_per_epoch(epoch)
        # deal this rank's batches to workers by block, capped at the common budget
        plan, used = [], 0
        for i, block in enumerate(blocks):
            n = self._batches_per_block(block)
            take = min(n, budget - used)
            if take <= 0:
                break
            used += take
            if i % n_workers == worker_id:
                plan.append((block, take))
        rng = np.random.default_rng([self.seed, epoch, self.rank, worker_id])
        for (f, start, stop), take in plan:
            rows = self.source.read_range(f, start, stop)
            cells = rng.permutation(stop - start) if self.shuffle else np.arange(stop - start)
            for b in range(take):
                sel = cells[b * self.batch_size : (b + 1) * self.batch_size]
                batch = {
                    TOKEN_KEYS.X: rows[sel],
                    TOKEN_KEYS.COLUMN_VOCAB_IDS: self.column_vocab_ids[f],
                    TOKEN_KEYS.CELL_INDEX: self.source.parts[f].offset + start + sel,
                }
                yield self.collate(batch) if self.collate is not None else batch


class StreamingAnnDataModule(LightningDataModule):
    """Lightning datamodule streaming training cells from any cell source.

    For training on data that does not fit in memory: ``.h5ad`` files, zarr AnnData stores,
    a list of them (a collection; each file's genes matched on its own), or a TileDB-SOMA
    experiment (with ``measurement`` / ``layer`` / ``value_filter``), all read through
    :func:`~scvi_scgpt.data.open_source` in blocks of ``block_size`` contiguous cells,
    shuffled at block level across parts and at cell level within blocks. Under DDP every
    rank reads its own disjoint shard of the blocks. Pass it as
    ``model.train(task=..., datamodule=dm)`` (pretraining or fine-tuning); the model installs
    the tokenizing collator.

    Parameters
    ----------
    files
        Training cells: a path, a URI, a list of paths, or a
        :class:`~scvi_scgpt.data.CellSource`.
    vocab
        Vocabulary to match genes against (e.g. :func:`vocab_from_anndata_files` or the
        pretrained model's).
    validation_files
        Optional held-out cells (same forms as ``files``).
    gene_symbols_key
        ``var`` column with gene symbols (default: ``var_names``; SOMA: ``feature_name``).
    layer
        Layer with the expression (default: ``X``; SOMA: the ``X`` layer, ``"raw"``).
    measurement, value_filter
        TileDB-SOMA measurement and ``obs`` filter.
    batch_size, block_size
        Cells per minibatch and per contiguous read.
    shuffle, seed
        Shuffling of blocks and cells (``seed + epoch``).
    num_workers
        DataLoader worker processes (persistent).
    """

    def __init__(
        self,
        files,
        vocab: GeneVocab,
        *,
        validation_files=None,
        gene_symbols_key: str | None = None,
        layer: str | None = None,
        measurement: str = "RNA",
        value_filter: str | None = None,
        batch_size: int = 32,
        block_size: int = 1024,
        shuffle: bool = True,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if files is None or (isinstance(files, list | tuple) and not files):
            raise ValueError("StreamingAnnDataModule needs at least one file or source.")
        self.vocab = vocab
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.collate: Callable[[dict], dict] | None = None
        options = {
            "layer": layer,
            "measurement": measurement,
            "value_filter": value_filter,
            "gene_symbols_key": gene_symbols_key,
        }
        self.train_stream = self._stream(files, options, block_size, shuffle, seed)
        self.val_stream = (
            self._stream(validation_files, options, block_size, False, seed)
            if validation_files
            else None
        )

    def _stream(self, files, options, block_size, shuffle, seed) -> AnnDataFileStream:
        source = open_source(files, **options)
        ids = []
        for part in source.parts:
            match = match_genes(part.gene_names, self.vocab, source=part.name)
            logger.info("%s: %s.", Path(part.name).name, match.summary())
            ids.append(match.vocab_ids)
        return AnnDataFileStream(
            source,
            ids,
            batch_size=self.batch_size,
            block_size=block_size,
            shuffle=shuffle,
            seed=seed,
        )

    @property
    def n_obs(self) -> int:
        """Training cells over all files."""
        return int(sum(self.train_stream.n_obs))

    def example_adata(self, n_cells: int = 64) -> anndata.AnnData:
        """The first cells of the first training part, in memory (to create a model)."""
        source = self.train_stream.source
        block = source.read_block(source.blocks(n_cells, within_parts=True)[0])[0]
        names = np.asarray(source.parts[0].gene_names, dtype=str)
        return anndata.AnnData(block.X, var=pd.DataFrame(index=pd.Index(names)))

    def steps_per_epoch(self) -> int:
        """Training minibatches per epoch on each rank (known after :meth:`setup`)."""
        return self.train_stream.steps_per_epoch(self.train_stream.epoch)

    def set_collate(self, collate: Callable[[dict], dict]) -> None:
        """Install the minibatch collator (done by ``SCGPT.train``)."""
        self.collate = collate
        self.train_stream.collate = collate
        if self.val_stream is not None:
            self.val_stream.collate = collate

    def setup(self, stage: str | None = None) -> None:
        """Learn this process's rank and the world size (DDP sharding)."""
        trainer = getattr(self, "trainer", None)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        for stream in (self.train_stream, self.val_stream):
            if stream is not None:
                stream.rank, stream.world_size = rank, world

    def _loader(self, stream: AnnDataFileStream) -> DataLoader:
        if self.collate is None:
            raise RuntimeError("No collator installed: pass the datamodule to SCGPT.train().")
        return DataLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Streaming training loader."""
        return self._loader(self.train_stream)

    def val_dataloader(self) -> DataLoader | list:
        """Streaming validation loader (empty without validation files)."""
        return self._loader(self.val_stream) if self.val_stream is not None else []

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        """Move tensors; leave bookkeeping arrays."""
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
