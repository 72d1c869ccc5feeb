"""An AnnData zarr store written block by block, by many processes, resumably.

The store follows anndata's on-disk format (zarr format 2), so ``anndata.read_zarr(path)``
opens it: ``obs`` (index: cell ids; requested columns; per-cell outputs such as predicted
labels), an ``X`` of shape ``(n_cells, 0)``, arrays in ``obsm`` and the run's record in
``uns[UNS_KEY]``. Every array is chunked by ``block_size`` rows and each block of global
rows ``[k * block_size, (k + 1) * block_size)`` is written by one process only, so writers
never share a chunk.

A block is verified before it is recorded: its arrays must have the block's shape and
finite rows, except the rows of the cells its writer lists as without a result, which are
NaN: *empty cells* (no vocabulary gene) and *non-finite cells* (whose result is not finite
however computed). The rows must read back as written. Only then is its marker created
atomically (``os.replace``) in the hidden folder :data:`BLOCKS_DIR` of the store; the
marker's JSON names its writer (e.g. ``rank 1``) and those cells. A restarted run skips the
marked blocks. At the end :meth:`AtlasStore.verify` checks every block again and removes the
markers of blocks whose data is missing or not finite, so that the next run writes them.

Completion is the file :data:`COMPLETE_FILE`, created atomically after the record in
``uns[UNS_KEY]`` (``complete``, ``n_cells``, ``empty_cells``, ...) is written. That record is
never rewritten as a whole: each key is written apart and moved in by a rename, or its chunk
files replaced (``os.replace``), and ``complete`` is set false before any other key changes
and true after all of them, so a process killed at any moment leaves ``uns`` readable, and
complete (to anndata or by the file) only with a whole record (see
:meth:`AtlasStore.finish`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scvi_scgpt.data._obs_schema import (
    NULLABLE_PARTS,
    array_attrs,
    cast_column,
    create_column,
    stored_kind,
)

#: ``uns`` key of the run record.
UNS_KEY = "scvi_scgpt_atlas"
#: Hidden folder of block markers inside the store.
BLOCKS_DIR = ".scvi_scgpt_blocks"
#: The file that marks a store complete (created last, atomically).
COMPLETE_FILE = ".scvi_scgpt_complete"
_SETTINGS_FILE = ".scvi_scgpt_settings.json"
#: Hidden folder where ``uns`` entries are prepared before they are moved in.
_TMP_DIR = ".scvi_scgpt_tmp"

#: Attributes of an anndata ``dict`` element (``obsm``, ``layers``, ...).
_DICT_ATTRS = {"encoding-type": "dict", "encoding-version": "0.1.0"}


class AtlasStore:
    """The output store of an atlas run at ``path`` (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    # ------------------------------------------------------------------ create / check
    @property
    def exists(self) -> bool:
        """Whether something is at ``path``."""
        return self.path.exists()

    def settings(self) -> dict | None:
        """The settings the store was created with (``None``: not an atlas store)."""
        file = self.path / _SETTINGS_FILE
        if not file.is_file():
            return None
        return json.loads(file.read_text(encoding="utf-8"))

    def is_complete(self) -> bool:
        """Whether a finished run verified and completed the store (:data:`COMPLETE_FILE`)."""
        return self.settings() is not None and (self.path / COMPLETE_FILE).is_file()

    def check_compatible(self, settings: Mapping) -> None:
        """Raise a ``ValueError`` unless the store was made with exactly ``settings``."""
        own = self.settings()
        if own is None:
            raise ValueError(
                f"{str(self.path)!r} exists and is not an scvi-scgpt atlas output: choose "
                "another output path (nothing was written)."
            )
        expected = json.loads(json.dumps(dict(settings), default=str))
        differ = sorted(k for k in set(own) | set(expected) if own.get(k) != expected.get(k))
        if differ:
            details = "; ".join(
                f"{k}: stored {own.get(k)!r}, now {expected.get(k)!r}" for k in differ[:4]
            )
            raise ValueError(
                f"{str(self.path)!r} holds results of another model, source or settings "
                f"({details}). Write to another path, or delete it to start again; results "
                "are never mixed."
            )

    def create(
        self,
        *,
        n_obs: int,
        block_size: int,
        arrays: Mapping[str, tuple[tuple[int, ...], str]],
        obs_columns: Mapping[str, str],
        settings: Mapping,
        uns: Mapping,
    ) -> None:
        """Create the empty store (in a temporary folder, then moved into place).

        Parameters
        ----------
        n_obs, block_size
            Cells and rows per chunk.
        arrays
            ``obsm`` arrays: name -> (trailing shape, dtype), e.g. ``{"X_scGPT": ((512,),
            "float32")}``.
        obs_columns
            ``obs`` columns: name -> kind (``"str"``, ``"bool"``, ``"boolean"``,
            ``"int64"``, ``"Int64"``, ``"float64"``, ``"float32"``; see ``_obs_schema``).
        settings
            What identifies the run (model, source, settings), checked on resume.
        uns
            The run record written to ``uns[UNS_KEY]`` (scalars; ``settings`` is added as
            JSON text).
        """
        import anndata
        import zarr

        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=self.path.name + ".", dir=self.path.parent))
        try:
            root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
            root.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
            chunk = max(1, min(block_size, n_obs))
            obs = root.create_group("obs")
            obs.attrs.update(
                {
                    "encoding-type": "dataframe",
                    "encoding-version": "0.2.0",
                    "_index": "_index",
                    "column-order": list(obs_columns),
                }
            )
            create_column(obs, "_index", n_obs, chunk, "str")
            for name, dtype in obs_columns.items():
                create_column(obs, name, n_obs, chunk, dtype)
            X = root.create_array("X", shape=(n_obs, 0), chunks=(chunk, 1), dtype="float32")
            X.attrs.update(array_attrs("array"))
            obsm = root.create_group("obsm")
            obsm.attrs.update(_DICT_ATTRS)
            for name, (trailing, dtype) in arrays.items():
                array = obsm.create_array(
                    name,
                    shape=(n_obs, *trailing),
                    chunks=(chunk, *trailing),
                    dtype=dtype,
                    fill_value=np.nan,
                )
                array.attrs.update(array_attrs("array"))
            import pandas as pd

            anndata.io.write_elem(root, "var", pd.DataFrame(index=pd.Index([], dtype=str)))
            for name in ("obsp", "varm", "varp", "layers"):
                group = root.create_group(name)
                group.attrs.update(_DICT_ATTRS)
            record = {**uns, "settings": json.dumps(dict(settings), default=str)}
            anndata.io.write_elem(root, "uns", {UNS_KEY: record})
            (tmp / BLOCKS_DIR).mkdir()
            text = json.dumps(dict(settings), default=str, indent=1)
            (tmp / _SETTINGS_FILE).write_text(text, encoding="utf-8")
            os.replace(tmp, self.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    # ------------------------------------------------------------------ blocks
    def _marker(self, index: int) -> Path:
        return self.path / BLOCKS_DIR / f"{index:09d}"

    def done_blocks(self) -> set[int]:
        """Numbers of the blocks recorded as finished (one listing of the marker folder)."""
        folder = self.path / BLOCKS_DIR
        if not folder.is_dir():
            return set()
        return {int(name) for name in os.listdir(folder) if name.isdigit()}

    def block_record(self, index: int) -> dict:
        """What the marker of a block records.

        Parameters
        ----------
        index
            The block (it must be marked).

        Returns
        -------
        ``{"writer": str, "empty": [positions], "nonfinite": [positions]}`` (positions
        within the block; markers of earlier versions hold the writer alone).
        """
        text = self._marker(index).read_text(encoding="utf-8")
        try:
            record = json.loads(text)
        except ValueError:
            record = None
        record = record if isinstance(record, dict) else {"writer": text}
        return {"empty": [], "nonfinite": [], **record}

    def block_writers(self) -> dict[int, str]:
        """Who wrote each finished block (what ``write_block`` was given as ``writer``)."""
        return {i: self.block_record(i).get("writer", "") for i in self.done_blocks()}

    def write_block(
        self,
        index: int,
        start: int,
        stop: int,
        *,
        cell_ids: np.ndarray,
        obsm: Mapping[str, np.ndarray],
        obs: Mapping[str, np.ndarray],
        writer: str = "",
        empty: Sequence[int] = (),
        nonfinite: Sequence[int] = (),
    ) -> None:
        """Write global rows ``start:stop`` (block ``index``), verify them, mark the block.

        Parameters
        ----------
        index, start, stop
            The block.
        cell_ids, obsm, obs
            Its cell ids, per-cell arrays (one row per cell) and ``obs`` columns.
        writer
            Recorded in the marker (e.g. the rank).
        empty
            Positions (within the block) of cells left without a result because they are
            empty (no vocabulary gene): their ``obsm`` rows are NaN, and the marker lists
            them.
        nonfinite
            Positions of cells left without a result because it is not finite (however
            computed): NaN rows too, listed apart in the marker.

        Raises
        ------
        ValueError
            An array of the wrong shape, a row that is not finite (other than ``empty`` and
            ``nonfinite``), or an ``obs`` value its column cannot hold: nothing is marked.
        OSError
            The rows written did not read back as written (a failing file system): nothing
            is marked, so a rerun writes the block again.
        """
        import zarr

        n = stop - start
        where = f"Output block {index} (rows {start}:{stop})"
        if len(cell_ids) != n:
            raise ValueError(f"{where}: {len(cell_ids)} cell ids for {n} rows.")
        ids = np.asarray(cell_ids, dtype=object).astype(str)
        is_empty, is_nonfinite = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        is_empty[np.asarray(empty, dtype=np.int64)] = True
        is_nonfinite[np.asarray(nonfinite, dtype=np.int64)] = True
        no_result = is_empty | is_nonfinite
        root = zarr.open_group(str(self.path), mode="r+", zarr_format=2)
        arrays = {}
        for name, values in obsm.items():
            target = root["obsm"][name]
            expected = (n, *target.shape[1:])
            if np.shape(values) != expected:
                raise ValueError(
                    f"{where}: obsm[{name!r}] has shape {np.shape(values)}, expected "
                    f"{expected}; the block is not marked done."
                )
            values = np.array(values, dtype=target.dtype)
            values[no_result] = np.nan
            bad = np.flatnonzero(~_finite_rows(values) & ~no_result)
            if len(bad):
                raise ValueError(
                    f"{where}: {len(bad)} rows of obsm[{name!r}] are not finite (cells "
                    f"{ids[bad[:5]].tolist()}) and not listed as cells without a result; "
                    "the block is not marked done. Cells whose result is not finite however "
                    "computed must be passed as nonfinite= (they get a NaN row and are "
                    "listed in uns); other rows were damaged between the model and the "
                    "store, and a rerun writes the block again."
                )
            arrays[name] = values
        columns = {
            name: cast_column(values, stored_kind(root["obs"][name]), name)
            for name, values in obs.items()
        }
        root["obs"]["_index"][start:stop] = ids
        for name, (values, mask) in columns.items():
            if mask is None:
                root["obs"][name][start:stop] = values
            else:
                # anndata's nullable encoding: a "values" and a "mask" array
                group = root["obs"][name]
                group[NULLABLE_PARTS[0]][start:stop] = values
                group[NULLABLE_PARTS[1]][start:stop] = mask
        for name, values in arrays.items():
            root["obsm"][name][start:stop] = values
        for name, values in arrays.items():  # what the marker vouches for
            back = np.asarray(root["obsm"][name][start:stop])
            if not np.array_equal(back, values, equal_nan=True):
                raise OSError(f"{where}: obsm[{name!r}] did not read back as written.")
        text = json.dumps(
            {
                "writer": writer,
                "empty": np.flatnonzero(is_empty).tolist(),
                "nonfinite": np.flatnonzero(is_nonfinite & ~is_empty).tolist(),
            }
        )
        marker = self._marker(index)
        tmp = marker.with_name(marker.name + f".tmp{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, marker)

    def verify(self, blocks: Sequence, key: str) -> BlockCheck:
        """Check every block; reads the store block by block and each marker once.

        A block passes when it is marked, its cell ids are written, and its rows of
        ``obsm[key]`` are finite, except the empty and non-finite cells its marker lists,
        which are NaN.

        Parameters
        ----------
        blocks
            The blocks (``BlockSpec``-like: ``index``, ``start``, ``stop``).
        key
            The ``obsm`` array checked.

        Returns
        -------
        The :class:`BlockCheck`: blocks that failed, ids of the empty and non-finite cells.
        """
        import zarr

        root = zarr.open_group(str(self.path), mode="r", zarr_format=2)
        array, index = root["obsm"][key], root["obs"]["_index"]
        done = self.done_blocks()
        check = BlockCheck()
        for block in blocks:
            if block.index not in done:
                check.bad.append(block.index)
                continue
            record = self.block_record(block.index)
            listed = {}
            for kind in ("empty", "nonfinite"):
                listed[kind] = np.zeros(block.stop - block.start, dtype=bool)
                listed[kind][np.asarray(record[kind], dtype=np.int64)] = True
            no_result = listed["empty"] | listed["nonfinite"]
            rows = np.asarray(array[block.start : block.stop])
            ids = np.asarray(index[block.start : block.stop]).astype(object)
            finite = _finite_rows(rows)
            nan = np.isnan(rows.reshape(len(rows), -1)).all(axis=1)
            if finite[~no_result].all() and nan[no_result].all() and (ids != "").all():
                check.empty_cells.extend(ids[listed["empty"]].tolist())
                check.nonfinite_cells.extend(ids[listed["nonfinite"]].tolist())
            else:
                check.bad.append(block.index)
        return check

    def drop_markers(self, indices: Sequence[int]) -> None:
        """Remove the markers of blocks (the next run writes them again).

        Parameters
        ----------
        indices
            The blocks.
        """
        for i in indices:
            self._marker(i).unlink(missing_ok=True)

    def count_written(self, key: str, block_size: int) -> int:
        """Rows of ``obsm[key]`` holding finite values, read chunk by chunk."""
        import zarr

        array = zarr.open_group(str(self.path), mode="r", zarr_format=2)["obsm"][key]
        written = 0
        for start in range(0, array.shape[0], block_size):
            written += int(_finite_rows(np.asarray(array[start : start + block_size])).sum())
        return written

    # ------------------------------------------------------------------ completion
    def finish(self, record: Mapping) -> None:
        """Write ``record`` into ``uns[UNS_KEY]``, then mark the store complete.

        First the store stops being complete: :data:`COMPLETE_FILE` is removed and
        ``complete`` set false (if the record had it). Then each key is written on its own
        (:meth:`_set_uns`), ``complete`` last, and the completion file is created after them
        (when ``record["complete"]``), prepared in the scratch folder. A kill at any point
        leaves ``uns`` readable, and the store either complete with a whole record (the
        earlier one or ``record``), or not complete and finished by the next run.

        Parameters
        ----------
        record
            Keys of ``uns[UNS_KEY]`` to write (lists as numpy arrays).
        """
        tmp_root = self.path / _TMP_DIR
        tmp_root.mkdir(exist_ok=True)
        (self.path / COMPLETE_FILE).unlink(missing_ok=True)
        if (self.path / "uns" / UNS_KEY / "complete").exists():
            self._set_uns("complete", False, tmp_root)
        for key in sorted(record, key=lambda k: k == "complete"):
            self._set_uns(key, record[key], tmp_root)
        if record.get("complete"):
            lists = ("empty_cells", "nonfinite_cells")
            text = json.dumps({k: v for k, v in record.items() if k not in lists}, default=str)
            tmp = tmp_root / f"{COMPLETE_FILE}.tmp{os.getpid()}"
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.path / COMPLETE_FILE)
        shutil.rmtree(tmp_root, ignore_errors=True)

    def _set_uns(self, key: str, value, tmp_root: Path) -> None:
        """Write ``uns[UNS_KEY][key]`` so that no moment lacks a readable ``uns``.

        The entry is written into a temporary group, then moved in: a new key by one
        rename; over an entry of the same layout (a scalar such as ``complete``) by
        replacing its chunk files, each with ``os.replace``. Only an entry whose layout
        changed (a list of another length) is swapped by two renames, between which that
        one key is missing; :meth:`finish` has set ``complete`` false before.
        """
        import anndata
        import zarr

        tmp = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=tmp_root))
        group = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        anndata.io.write_elem(group, key, value)
        new, target = tmp / key, self.path / "uns" / UNS_KEY / key
        meta = (".zarray", ".zattrs")
        if not target.exists():
            os.rename(new, target)
        elif all(
            (new / m).is_file() and (target / m).is_file()
            and (new / m).read_bytes() == (target / m).read_bytes()
            for m in meta
        ):  # fmt: skip
            chunks = {n for n in os.listdir(new) if not n.startswith(".")}
            for name in chunks:
                os.replace(new / name, target / name)
            for name in set(os.listdir(target)) - chunks:
                if not name.startswith("."):  # a chunk equal to the fill value is not stored
                    (target / name).unlink()
        else:
            os.rename(target, tmp / "old")
            os.rename(new, target)
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class BlockCheck:
    """What :meth:`AtlasStore.verify` found: blocks to (re)write, ids of cells without result.

    Attributes
    ----------
    bad
        Blocks that are not marked, or whose rows fail the check.
    empty_cells, nonfinite_cells
        Ids of the cells the markers list as empty / with a non-finite result.
    """

    bad: list[int] = field(default_factory=list)
    empty_cells: list[str] = field(default_factory=list)
    nonfinite_cells: list[str] = field(default_factory=list)


def _finite_rows(values: np.ndarray) -> np.ndarray:
    """Whether each row of ``values`` is finite."""
    return np.isfinite(values.reshape(len(values), -1)).all(axis=1)
