"""Atlas scale: embed (and annotate) cells that do not fit in memory, on many processes.

``embed_atlas`` reads any :class:`~scvi_scgpt.data.CellSource` by blocks, runs
``lightning.Trainer.predict`` (1 process, several CPU processes, GPUs, nodes) and writes each
block straight into an AnnData zarr store (:class:`~scvi_scgpt.data.AtlasStore`). One job
writes one output: the launching process holds ``OUT.lock`` (next to the resolved output
path) from before the first check of the output to the end of the run
(:class:`~scvi_scgpt.data._atlas_lock.OutputLock`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
from collections.abc import Sequence
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from anndata import AnnData
from scvi import REGISTRY_KEYS, settings

from scvi_scgpt.data import AtlasStore, CellSource, InMemorySource, RowBlock, open_source
from scvi_scgpt.data._atlas_lock import OutputLock, launched_as_rank_zero
from scvi_scgpt.dataloaders import AtlasDataModule, iter_token_batches
from scvi_scgpt.model._atlas_blocks import (
    EMPTY_CELL_POLICIES,
    block_result,
    find_empty_cells,
    nonfinite_cells,
    output_columns,
)
from scvi_scgpt.model._multiomic import is_mudata
from scvi_scgpt.model._precision import PRECISIONS, resolve_precision
from scvi_scgpt.train._prediction import AtlasProgress, AtlasWriter, BlockPredictionPlan

logger = logging.getLogger(__name__)

#: Cells per block when ``block_size`` is not given (the unit of reading, writing, resuming).
DEFAULT_BLOCK_SIZE = 2048


def _package_version() -> str:
    try:
        return version("scvi-scgpt")
    except PackageNotFoundError:  # pragma: no cover - source tree without install
        return "0.0.0"


class AtlasMixin:
    """``embed_atlas``: out-of-core, distributed embedding and annotation."""

    def embed_atlas(
        self,
        source,
        out: str | Path,
        *,
        key_added: str = "X_scGPT",
        measurement: str = "RNA",
        layer: str | None = None,
        value_filter: str | None = None,
        obs_columns: Sequence[str] = (),
        batch_size: int | None = None,
        precision: Literal["32", "bf16", "16", "auto"] = "32",
        accelerator: str = "auto",
        devices: int | str | Sequence[int] = "auto",
        num_nodes: int = 1,
        strategy: str = "auto",
        resume: bool = True,
        progress_bar: bool = True,
        labels_key_added: str | None = None,
        gene_symbols_key: str | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        max_tokens_per_batch: int | None = 8192,
        num_workers: int = 0,
        empty_cells: Literal["nan", "raise"] = "nan",
    ) -> str:
        """Embed every cell of an on-disk (or in-memory) source into an AnnData zarr store.

        The cells are read by blocks of ``block_size`` rows, never all at once; Lightning's
        ``Trainer.predict`` deals the blocks to the processes (every cell to exactly one),
        and each process writes its blocks straight into the output store. A cell gets
        exactly the embedding :meth:`embed` gives it (same tokenizer settings, gene
        matching and per-cell seeding), whatever the number of processes. See
        ``docs/atlas.md``.

        Parameters
        ----------
        source
            Where the cells are (detected, not declared): a path to an ``.h5ad`` file, a
            zarr AnnData store, a TileDB-SOMA experiment (local path or URI such as
            ``s3://...``), a list of ``.h5ad`` / zarr paths (one collection: each file's
            genes are matched to the vocabulary on their own), an in-memory AnnData /
            MuData (set up like :meth:`embed` needs), or a
            :class:`~scvi_scgpt.data.CellSource`.
        out
            Output path (an AnnData zarr store; ``anndata.read_zarr(out)`` opens it).
        key_added
            ``obsm`` key of the embedding.
        measurement, value_filter
            TileDB-SOMA: the measurement and the ``obs`` filter selecting the cells.
        layer
            AnnData sources: ``layers[layer]`` instead of ``X``; SOMA: the ``X`` layer
            (default ``"raw"``).
        obs_columns
            Source ``obs`` columns copied into the output ``obs``.
        batch_size
            Cells per forward pass (default ``scvi.settings.batch_size``).
        precision
            As in :meth:`get_latent_representation`.
        accelerator, devices, num_nodes, strategy
            Passed to :class:`lightning.pytorch.Trainer` (``devices=2`` on a CPU: two
            processes with gloo; ``accelerator="gpu", devices=8``; ``num_nodes`` under
            SLURM or torchrun).
        resume
            Continue an output of the same model, source and settings, skipping its
            finished blocks. An output made otherwise is always refused; ``resume=False``
            refuses any existing output.
        progress_bar
            Progress bar on rank 0 (cells of all processes, cells/s, ETA).
        labels_key_added
            With a classifier (``train("annotation")``): also write the predicted label to
            ``obs[labels_key_added]`` and its probability to
            ``obs[labels_key_added + "_confidence"]`` (what :meth:`annotate` writes).
        gene_symbols_key
            ``var`` column with gene names (default ``var_names``; SOMA: ``feature_name``).
        block_size
            Cells per block: the unit of reading, writing (output chunk rows) and resuming.
        max_tokens_per_batch
            Cap on padded tokens per forward pass.
        num_workers
            DataLoader processes reading blocks ahead of the model (per rank).
        empty_cells
            Cells with no expressed gene in the model vocabulary (which :meth:`embed`
            refuses): ``"nan"`` (default) gives them a NaN row and lists their ids in
            ``uns["scvi_scgpt_atlas"]["empty_cells"]`` (no label, NaN confidence);
            ``"raise"`` stops the run at their block. A tokenizer made with
            ``allow_empty_cells=True`` embeds them as :meth:`embed` does. Cells whose
            embedding is not finite (e.g. a bfloat16 overflow) are computed once more in
            float32; those still not finite get a NaN row too, listed in
            ``uns["scvi_scgpt_atlas"]["nonfinite_cells"]``, whatever this policy.

        Returns
        -------
        The output path. The store holds ``obs`` (index: the source's cell ids as
        strings — ``obs_names``, or the ``soma_joinid`` for SOMA — plus ``obs_columns``, a
        ``source_part`` column naming each cell's file for a collection, and the label
        columns), ``X`` of shape ``(n_cells, 0)``, ``obsm[key_added]`` (``float32``,
        ``(n_cells, d_model)``, L2-normalised) and ``uns["scvi_scgpt_atlas"]`` (model,
        source, settings, package version; once finished ``complete``, ``n_cells``,
        ``empty_cells`` and ``nonfinite_cells``). The source is never modified.

        Raises
        ------
        ~scvi_scgpt.data.AtlasOutputLocked
            Another job is writing ``out`` (its process id, host and start time named).
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
        if not isinstance(key_added, str) or not key_added:
            raise ValueError("key_added must be a non-empty string.")
        if empty_cells not in EMPTY_CELL_POLICIES:
            raise ValueError(f"empty_cells must be one of {EMPTY_CELL_POLICIES}.")
        batch_size = batch_size or settings.batch_size
        cell_source = self._atlas_source(
            source, measurement, layer, value_filter, gene_symbols_key
        )
        obs_columns = tuple(obs_columns)
        cell_source.check_obs_columns(obs_columns)
        classes = self._trained_classes() if labels_key_added else None
        batch_key = self._atlas_batch_key(cell_source)
        extra = (batch_key,) if batch_key not in (None, *obs_columns) else ()
        read_columns = obs_columns + extra
        column_ids = self._atlas_column_ids(cell_source)
        part_column = "source_part" if len(cell_source.parts) > 1 else None
        store = AtlasStore(out)
        run_settings = self._atlas_settings(
            cell_source, key_added, precision, obs_columns, labels_key_added, block_size
        )
        run_settings["empty_cells"] = empty_cells
        lock = contextlib.nullcontext()
        if launched_as_rank_zero():  # ranks > 0 of this job run under rank 0's lock
            lock = OutputLock(out, {"model": run_settings["model"]})
        skip_empty = empty_cells == "nan" and not self.tokenizer_config.allow_empty_cells
        with contextlib.closing(cell_source), lock:
            out = str(out)
            if store.exists:
                if not resume:
                    raise FileExistsError(
                        f"{out!r} already exists; pass resume=True to continue it, or "
                        "delete it / choose another path."
                    )
                store.check_compatible(run_settings)
                if store.is_complete():
                    logger.info("%s is complete already: nothing to run.", out)
                    return out
            blocks = cell_source.blocks(block_size)
            # from the source's schema, before the run: a column no type holds is refused here
            columns = output_columns(cell_source, obs_columns, part_column, labels_key_added)

            def create_store() -> None:
                store.create(
                    n_obs=cell_source.n_obs,
                    block_size=block_size,
                    arrays={key_added: ((self.architecture.d_model,), "float32")},
                    obs_columns=columns,
                    settings=run_settings,
                    uns={
                        "model": run_settings["model"],
                        "source_kind": cell_source.kind,
                        "key_added": key_added,
                        "precision": precision,
                        "package_version": run_settings["package_version"],
                        "complete": False,
                    },
                )

            def run_block(segments: list[RowBlock]) -> dict:
                outputs = []
                for seg in segments:
                    skip = find_empty_cells(seg, column_ids[seg.part]) if skip_empty else None
                    codes = self._atlas_batch_codes(cell_source, seg, batch_key)

                    def segment(prec: str, not_run: np.ndarray | None, seg=seg, codes=codes):
                        return self._atlas_segment(
                            seg,
                            column_ids[seg.part],
                            codes,
                            batch_size,
                            prec,
                            max_tokens_per_batch,
                            classes is not None,
                            skip=not_run,
                        )

                    emb, probs = segment(precision, skip)
                    empty = np.zeros(len(seg.rows), bool) if skip is None else skip
                    # non-finite cells (e.g. a bf16 overflow): once more in float32, then NaN
                    low = resolve_precision(precision, self.device) != "32"
                    retry = partial(segment, "32") if low else None
                    nonfinite = nonfinite_cells(emb, probs, empty, retry)
                    if nonfinite.any():
                        logger.warning(
                            "%d cells have an embedding that is not finite%s (e.g. %s): NaN "
                            "rows, listed in uns['scvi_scgpt_atlas']['nonfinite_cells'].",
                            nonfinite.sum(),
                            "" if retry is None else ", also in float32",
                            seg.cell_ids[nonfinite][:3].tolist(),
                        )
                    outputs.append((emb, probs, empty, nonfinite))
                return block_result(
                    segments,
                    outputs,
                    key_added=key_added,
                    obs_columns=obs_columns,
                    part_names=[p.name for p in cell_source.parts] if part_column else None,
                    classes=classes,
                    labels_key_added=labels_key_added,
                )

            datamodule = AtlasDataModule(
                cell_source,
                store,
                block_size=block_size,
                create_store=create_store,
                obs_columns=read_columns,
                num_workers=num_workers,
            )
            import lightning.pytorch as pl

            writer = AtlasWriter(
                store, blocks=blocks, n_obs=cell_source.n_obs, check_key=key_added
            )
            progress = AtlasProgress(store, cell_source.n_obs, enabled=progress_bar)
            trainer = pl.Trainer(
                accelerator=accelerator,
                devices=devices,
                num_nodes=num_nodes,
                strategy=strategy,
                precision="32-true",
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                callbacks=[writer, progress],
                default_root_dir=str(Path(out).parent),
            )
            self.module.eval()
            plan = BlockPredictionPlan(self.module, run_block)
            with warnings.catch_warnings():
                # a block per item: there are no per-cell batch indices for Lightning to infer
                warnings.filterwarnings("ignore", message="Couldn't infer the batch indices")
                trainer.predict(plan, datamodule=datamodule, return_predictions=False)
            return out

    # ------------------------------------------------------------------ helpers
    def _atlas_source(self, source, measurement, layer, value_filter, gene_symbols_key):
        if isinstance(source, AnnData) or is_mudata(source):
            if any(v is not None for v in (layer, value_filter, gene_symbols_key)):
                raise ValueError(
                    "layer, value_filter and gene_symbols_key apply to on-disk sources; an "
                    "in-memory AnnData is read as set up with SCGPT.setup_anndata."
                )
            adata = self._validate_anndata(source)
            return self._cell_source(adata)
        return open_source(
            source,
            layer=layer,
            measurement=measurement,
            value_filter=value_filter,
            gene_symbols_key=gene_symbols_key,
        )

    def _atlas_column_ids(self, source: CellSource) -> list[np.ndarray]:
        """Vocabulary id per column of each part (logged: gene coverage per part)."""
        if isinstance(source, InMemorySource) and source.column_vocab_ids is not None:
            return [source.column_vocab_ids]
        out = []
        for part in source.parts:
            ids = self._vocab_ids_of(part.gene_names, source=repr(part.name))
            n = int((ids >= 0).sum())
            logger.info(
                "%s: %d of %d genes in the model vocabulary (%.1f%%).",
                part.name,
                n,
                len(ids),
                100 * n / max(len(ids), 1),
            )
            out.append(ids)
        return out

    def _atlas_batch_key(self, source: CellSource) -> str | None:
        """The registered batch column the model needs per cell, if it uses batches."""
        if not self._uses_batches() or isinstance(source, InMemorySource):
            return None
        key = self.adata_manager.registry["setup_args"].get("batch_key")
        if key is None:
            return None
        if key not in source.obs_columns:
            raise ValueError(
                f"This model conditions on batches ({key!r}), but the source has no obs "
                f"column {key!r}; its columns: {list(source.obs_columns)}."
            )
        return key

    def _atlas_batch_codes(
        self, source: CellSource, seg: RowBlock, batch_key: str | None
    ) -> np.ndarray | None:
        """Registry batch codes of a segment's cells (``None`` for models without batches)."""
        if not self._uses_batches():
            return None
        if isinstance(source, InMemorySource) and source.batch_codes is not None:
            return source.batch_codes[seg.rows]
        if batch_key is None:
            return np.zeros(len(seg.rows), dtype=np.int64)
        values = np.asarray(seg.obs[batch_key]).astype(str)
        mapping = self.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY)
        categories = np.asarray(mapping.categorical_mapping).astype(str)
        codes = pd.Categorical(values, categories=categories).codes.astype(np.int64)
        if (codes < 0).any():
            unknown = sorted(set(values[codes < 0]))[:5]
            raise ValueError(
                f"obs[{batch_key!r}] has batches the model was not trained on ({unknown}); "
                f"known: {list(categories)[:10]}. Map the query with load_query_data first."
            )
        return codes

    def _atlas_segment(
        self,
        seg: RowBlock,
        column_ids: np.ndarray,
        batch_codes: np.ndarray | None,
        batch_size: int,
        precision: str,
        max_tokens: int | None,
        with_classes: bool,
        skip: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Embeddings (and class probabilities) of one segment's cells, in row order.

        Cells masked by ``skip`` are not run; their rows are NaN.
        """
        n = seg.X.shape[0]
        rows = np.arange(n) if skip is None else np.flatnonzero(~skip)
        batches = iter_token_batches(
            seg.X,
            rows,
            column_ids,
            self.tokenizer_config,
            cls_id=self.vocab_.cls_id,
            pad_id=self.vocab_.pad_id,
            batch_size=batch_size,
            chunk_size=max(n, 1),
            max_tokens=max_tokens,
            cell_labels=seg.cell_ids,
            batch_codes=batch_codes,
            modalities=seg.modalities,
        )
        module = self.module
        emb = np.full((n, self.architecture.d_model), np.nan, dtype=np.float32)
        n_cls = self.architecture.n_cls
        probs = np.full((n, n_cls), np.nan, dtype=np.float32) if with_classes else None

        def step(t, _positions):
            out = module.inference(**module._get_inference_input(t), cls_only=True)
            cell = out["cell_emb"]
            p = torch.softmax(module.cls_decoder(cell).float(), 1) if with_classes else None
            return F.normalize(cell.float(), p=2, dim=1), p

        for positions, (e, p) in self._run_token_batches(batches, step, precision):
            emb[rows[positions]] = e.cpu().numpy()
            if probs is not None:
                probs[rows[positions]] = p.cpu().numpy()
        return emb, probs

    def _atlas_settings(
        self, source, key_added, precision, obs_columns, labels_key_added, block_size
    ) -> dict:
        """What identifies a run (checked on resume): model, source and settings."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
        return {
            "model": digest.hexdigest()[:16],
            "model_class": type(self).__name__,
            "source": source.describe(),
            "key_added": key_added,
            "precision": precision,
            "tokenizer": self.tokenizer_config.to_dict(),
            "obs_columns": list(obs_columns),
            "labels_key_added": labels_key_added,
            "block_size": int(block_size),
            "n_obs": int(source.n_obs),
            "package_version": _package_version(),
        }
