"""Where cells come from: one reading layer for in-memory, on-disk and TileDB-SOMA data.

A :class:`CellSource` is a table of cells in one or more *parts* (an AnnData, a file of a
collection, a SOMA measurement), each part with its own genes. Cells have a global row id
(parts one after the other) and a string id. Sources are read in :class:`BlockSpec` blocks
of contiguous rows of one part, as :class:`RowBlock` (CSR rows in the part's own column
order, cell ids, requested ``obs`` columns). Sources hold no open file between calls that
a process could not re-open: they pickle into DataLoader workers and DDP processes, and
each process opens its own handles on first read. A process forked after its parent opened
handles (DataLoader workers on Linux) does not use the inherited ones: sources check the
process id and open their own (see :meth:`CellSource._own_handles`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from scvi_scgpt.data._files import (
    check_unique_ids,
    close_store,
    iter_obs_index,
    matrix_element,
    obs_column_kind,
    obs_column_names,
    open_store,
    read_obs_column,
    read_obs_index,
    read_row_range,
)
from scvi_scgpt.data._obs_schema import infer_kinds, kind_of_dtype, merge_kinds
from scvi_scgpt.data._tokenize import ModalityLayout, _as_csr, check_expression_values

logger = logging.getLogger(__name__)

#: Handles a forked process inherited: kept referenced (never used, never closed) in the
#: child, so that neither reading through them nor closing them touches the parent's files.
_INHERITED: list = []


@dataclass(frozen=True)
class SourcePart:
    """One table of a source with its own genes.

    Attributes
    ----------
    name
        Where it is (file path, URI, or ``"<in memory>"``).
    gene_names
        Names of its columns, in its column order.
    n_obs
        Its cells.
    offset
        Global row id of its first cell.
    """

    name: str
    gene_names: np.ndarray
    n_obs: int
    offset: int


@dataclass(frozen=True)
class BlockSpec:
    """Global rows ``start:stop`` of a source: block number ``index``.

    ``segments`` are the block's pieces in each part it touches, as ``(part, first row in
    the part, stop row in the part)``; a block spans parts only when a part ends inside it.
    """

    index: int
    start: int
    stop: int
    segments: tuple[tuple[int, int, int], ...]

    @property
    def n_cells(self) -> int:
        """Cells in the block."""
        return self.stop - self.start


@dataclass
class RowBlock:
    """The cells of one segment of a block (rows of one part).

    Attributes
    ----------
    part
        Which part of the source.
    rows
        Global row ids of the cells.
    X
        ``(n_cells, n_genes of the part)`` CSR expression.
    cell_ids
        String id of each cell.
    obs
        Requested ``obs`` columns, one array per name.
    modalities
        Modality layout of the rows (multi-omic in-memory data), else ``None``.
    """

    part: int
    rows: np.ndarray
    X: sp.csr_matrix
    cell_ids: np.ndarray
    obs: dict[str, np.ndarray] = field(default_factory=dict)
    modalities: ModalityLayout | None = None


def column_values(column) -> np.ndarray:
    """A :class:`pandas.Series` as a numpy array, categories as plain values (object)."""
    return (column.astype(object) if column.dtype == "category" else column).to_numpy()


class CellSource(ABC):
    """A table of cells read by blocks of rows (see the module docstring)."""

    #: ``"anndata"``, ``"h5ad"``, ``"zarr"``, ``"collection"`` or ``"soma"``.
    kind: str = ""
    parts: tuple[SourcePart, ...] = ()
    #: Start method of DataLoader workers reading this source (``None``: the platform's).
    worker_start_method: str | None = None

    @property
    def n_obs(self) -> int:
        """Cells over all parts."""
        return sum(p.n_obs for p in self.parts)

    @property
    @abstractmethod
    def obs_columns(self) -> tuple[str, ...]:
        """``obs`` columns every part has."""

    def read_rows(self, part: int, rows: np.ndarray) -> sp.csr_matrix:
        """CSR rows (sorted row numbers within ``part``), in the part's column order.

        Each run of consecutive rows is one :meth:`read_range`.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) == 0:
            return sp.csr_matrix((0, len(self.parts[part].gene_names)), dtype=np.float32)
        runs = np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1)
        return sp.vstack(
            [self.read_range(part, int(r[0]), int(r[-1]) + 1) for r in runs], format="csr"
        )

    @abstractmethod
    def read_range(self, part: int, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``start:stop`` of ``part`` as CSR."""

    @abstractmethod
    def cell_ids(self, part: int, start: int, stop: int) -> np.ndarray:
        """String ids of rows ``start:stop`` of ``part``."""

    @abstractmethod
    def obs_values(self, part: int, column: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of ``obs`` column ``column`` of ``part``."""

    @abstractmethod
    def describe(self) -> dict:
        """What identifies the source (JSON-serialisable): kind, locations, settings, sizes."""

    def close(self) -> None:  # noqa: B027 - sources without handles need no closing
        """Close open handles of this process (they reopen on the next read)."""

    def _own_handles(self) -> dict:
        """The open handles of the current process (a dict the source fills as it opens files).

        h5py, zarr and TileDB handles must not cross a fork: a DataLoader worker forked
        after the parent read a block (the CLI and the store creation do) would otherwise
        read through the parent's handles. When the process id changed, the inherited
        handles are set aside untouched and the process opens its own.
        """
        pid = os.getpid()
        if getattr(self, "_handles_pid", None) != pid:
            inherited = getattr(self, "_handles", None)
            if inherited:
                _INHERITED.append(inherited)
            self._handles = {}
            self._handles_pid = pid
        return self._handles

    def obs_dtypes(self, columns: Sequence[str]) -> dict[str, str]:
        """Output kind of each ``obs`` column (``"str"``, ``"Int64"``, ...; see ``_obs_schema``).

        Sources with a schema read it (file encodings, pandas dtypes, the Arrow schema); this
        default, for sources without one, infers each part's kind from its first 1,000 rows.
        Parts storing a column differently are promoted without loss, or refused.
        """
        return infer_kinds(self, columns)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def fingerprint(self) -> str:
        """A short hash of :meth:`describe`."""
        text = json.dumps(self.describe(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def blocks(self, block_size: int, *, within_parts: bool = False) -> list[BlockSpec]:
        """Every cell in exactly one block.

        Blocks are the global rows ``[k * block_size, (k + 1) * block_size)``, so that writers
        of different blocks never share an output chunk of ``block_size`` rows; a block then
        may span two parts. With ``within_parts`` blocks restart at every part instead (one
        segment each, at most ``block_size`` rows).
        """
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}.")
        offsets = np.array([p.offset for p in self.parts] + [self.n_obs], dtype=np.int64)
        if within_parts:
            bounds = [
                (part.offset + s, part.offset + min(s + block_size, part.n_obs))
                for part in self.parts
                for s in range(0, part.n_obs, block_size)
            ]
        else:
            bounds = [
                (s, min(s + block_size, self.n_obs)) for s in range(0, self.n_obs, block_size)
            ]
        specs = []
        for start, stop in bounds:
            first = int(np.searchsorted(offsets, start, side="right")) - 1
            segments = []
            for p in range(first, len(self.parts)):
                lo, hi = max(start, offsets[p]), min(stop, offsets[p + 1])
                if lo >= stop:
                    break
                if hi > lo:
                    segments.append((p, int(lo - offsets[p]), int(hi - offsets[p])))
            specs.append(BlockSpec(len(specs), start, stop, tuple(segments)))
        return specs

    def check_obs_columns(self, columns: Sequence[str]) -> None:
        """Raise a ``ValueError`` for requested ``obs`` columns the source lacks."""
        missing = [c for c in columns if c not in self.obs_columns]
        if missing:
            raise ValueError(
                f"obs columns {missing} are not in every part of the source; available: "
                f"{list(self.obs_columns)}."
            )

    def read_block(self, spec: BlockSpec, obs_columns: Sequence[str] = ()) -> list[RowBlock]:
        """The cells of ``spec``, one :class:`RowBlock` per segment (values checked)."""
        out = []
        for part, start, stop in spec.segments:
            X, ids, obs = self._read_segment(part, start, stop, obs_columns)
            check_expression_values(X.data, where=f"{self.parts[part].name} (rows {start}-{stop})")
            rows = np.arange(start, stop, dtype=np.int64) + self.parts[part].offset
            out.append(RowBlock(part, rows, X, ids, obs))
        return out

    def _read_segment(
        self, part: int, start: int, stop: int, obs_columns: Sequence[str]
    ) -> tuple[sp.csr_matrix, np.ndarray, dict[str, np.ndarray]]:
        """Matrix, cell ids and ``obs`` columns of rows ``start:stop`` of ``part``.

        Sources that read all three in one pass override this.
        """
        obs = {c: self.obs_values(part, c, start, stop) for c in obs_columns}
        return self.read_range(part, start, stop), self.cell_ids(part, start, stop), obs

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = {}
        state["_handles_pid"] = None
        return state


class InMemorySource(CellSource):
    """Cells of an in-memory matrix (an AnnData's ``X`` or layer, or a MuData's joint view).

    Parameters
    ----------
    matrix
        ``(n_obs, n_columns)`` CSR, dense or backed matrix.
    cell_ids
        One id per row.
    gene_names
        One name per column.
    obs
        Table of ``obs`` columns (a :class:`pandas.DataFrame`), or ``None``.
    column_vocab_ids, batch_codes, label_codes, modalities
        What a set-up model resolved for these cells (vocabulary id per column, registry
        codes per row, multi-omic layout), when known.
    """

    kind = "anndata"

    def __init__(
        self,
        matrix,
        cell_ids: Sequence[str],
        gene_names: Sequence[str],
        obs=None,
        *,
        column_vocab_ids: np.ndarray | None = None,
        batch_codes: np.ndarray | None = None,
        label_codes: np.ndarray | None = None,
        modalities: ModalityLayout | None = None,
    ) -> None:
        self.matrix = matrix
        self.ids = np.asarray(cell_ids).astype(str).astype(object)
        self.obs = obs
        self.column_vocab_ids = column_vocab_ids
        self.batch_codes = batch_codes
        self.label_codes = label_codes
        self.modalities = modalities
        names = np.asarray(gene_names, dtype=object)
        self.parts = (SourcePart("<in memory>", names, int(matrix.shape[0]), 0),)

    @property
    def obs_columns(self) -> tuple[str, ...]:
        """Columns of the ``obs`` table."""
        return () if self.obs is None else tuple(map(str, self.obs.columns))

    def read_rows(self, part: int, rows: np.ndarray) -> sp.csr_matrix:
        """Rows of the matrix as CSR."""
        return _as_csr(self.matrix[rows])

    def read_range(self, part: int, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``start:stop`` as CSR."""
        return self.read_rows(part, slice(start, stop))

    def cell_ids(self, part: int, start: int, stop: int) -> np.ndarray:
        """The given ids."""
        return self.ids[start:stop]

    def obs_values(self, part: int, column: str, start: int, stop: int) -> np.ndarray:
        """A column of the ``obs`` table."""
        return column_values(self.obs[column].iloc[start:stop])

    def obs_dtypes(self, columns: Sequence[str]) -> dict[str, str]:
        """Output kinds from the table's pandas dtypes."""
        return {c: kind_of_dtype(self.obs[c].dtype) for c in columns}

    def read_block(self, spec: BlockSpec, obs_columns: Sequence[str] = ()) -> list[RowBlock]:
        """As :meth:`CellSource.read_block`, with the multi-omic layout of the rows."""
        blocks = super().read_block(spec, obs_columns)
        if self.modalities is not None:
            for block in blocks:
                block.modalities = self.modalities.rows(block.rows)
        return blocks

    def describe(self) -> dict:
        """In-memory data: its shape and a hash of its cell ids."""
        ids_hash = hashlib.sha256("\n".join(self.ids).encode()).hexdigest()[:16]
        return {"kind": self.kind, "shape": list(self.matrix.shape), "cell_ids": ids_hash}


class AnnDataFileSource(CellSource):
    """Cells of one or more ``.h5ad`` files or zarr AnnData stores, read without loading.

    Each file is a part with its own genes; global row ids run over the files in the order
    given. Cell ids (``obs_names``) must be unique within each file.

    Parameters
    ----------
    paths
        One path, or several (a collection).
    layer
        ``layers[layer]`` instead of ``X``.
    gene_symbols_key
        ``var`` column with the gene names (default: ``var_names``).
    """

    def __init__(
        self,
        paths: str | Path | Sequence[str | Path],
        *,
        layer: str | None = None,
        gene_symbols_key: str | None = None,
    ) -> None:
        single = isinstance(paths, str | Path)
        self.paths = [Path(paths)] if single else [Path(p) for p in paths]
        if not self.paths:
            raise ValueError("An empty list of files: give at least one .h5ad or .zarr path.")
        self.layer = layer
        self.gene_symbols_key = gene_symbols_key
        self._handles: dict[int, tuple] = {}
        kinds = {"zarr" if p.is_dir() else "h5ad" for p in self.paths}
        self.kind = "collection" if not single else kinds.pop()
        parts, columns, offset = [], None, 0
        for path in self.paths:
            part, cols = self._inspect(path, offset)
            parts.append(part)
            offset += part.n_obs
            columns = cols if columns is None else [c for c in columns if c in cols]
        self.parts = tuple(parts)
        self._obs_columns = tuple(columns or ())

    def _inspect(self, path: Path, offset: int) -> tuple[SourcePart, list[str]]:
        import anndata

        group = open_store(path)
        try:
            where = repr(str(path))
            matrix = matrix_element(group, self.layer, where=where)
            var = anndata.io.read_elem(group["var"])
            key = self.gene_symbols_key
            if key is not None and key not in var.columns:
                raise ValueError(
                    f"{where} has no var column {key!r}; it has {list(var.columns)}. Pass "
                    "gene_symbols_key=None to use var_names."
                )
            names = np.asarray(var[key] if key else var.index).astype(str).astype(object)
            n_obs = int(matrix.shape[0])
            n_ids = check_unique_ids(iter_obs_index(group), where=where)
            if n_ids != n_obs:
                raise ValueError(f"{where} has {n_ids} obs names for {n_obs} matrix rows.")
            return SourcePart(str(path), names, n_obs, offset), obs_column_names(group)
        finally:
            close_store(group)

    @property
    def obs_columns(self) -> tuple[str, ...]:
        """``obs`` columns every file has."""
        return self._obs_columns

    def _handle(self, part: int) -> tuple:
        handles = self._own_handles()
        if part not in handles:
            group = open_store(self.paths[part])
            matrix = matrix_element(group, self.layer, where=repr(str(self.paths[part])))
            handles[part] = (group, matrix)
        return handles[part]

    def read_range(self, part: int, start: int, stop: int) -> sp.csr_matrix:
        """Rows ``start:stop`` of one file (one contiguous read)."""
        return read_row_range(self._handle(part)[1], start, stop)

    def cell_ids(self, part: int, start: int, stop: int) -> np.ndarray:
        """``obs_names`` of rows ``start:stop``."""
        return read_obs_index(self._handle(part)[0], start, stop)

    def obs_values(self, part: int, column: str, start: int, stop: int) -> np.ndarray:
        """An ``obs`` column of rows ``start:stop``."""
        group = self._handle(part)[0]
        return read_obs_column(group, column, start, stop, where=repr(str(self.paths[part])))

    def obs_dtypes(self, columns: Sequence[str]) -> dict[str, str]:
        """Output kinds from each file's on-disk encoding of the columns."""
        kinds: dict[str, dict[str, str]] = {c: {} for c in columns}
        for path in self.paths if columns else ():
            group = open_store(path)  # opened and closed here: no handle is kept
            try:
                for c in columns:
                    kinds[c][str(path)] = obs_column_kind(group, c, where=repr(str(path)))
            finally:
                close_store(group)
        return {c: merge_kinds(c, kinds[c]) for c in columns}

    def describe(self) -> dict:
        """Kind, absolute paths with size and modification time, layer, gene key, cells."""
        files = []
        for path, part in zip(self.paths, self.parts):
            stat = path.stat()
            files.append(
                {"path": str(path.resolve()), "n_obs": part.n_obs, "mtime": int(stat.st_mtime)}
            )
        return {
            "kind": self.kind,
            "files": files,
            "layer": self.layer,
            "gene_symbols_key": self.gene_symbols_key,
        }

    def close(self) -> None:
        """Close the files this process opened."""
        for group, _ in self._own_handles().values():
            close_store(group)
        self._handles = {}
