"""An AnnData zarr store written block by block, by many processes, resumably.

The store follows anndata's on-disk format (zarr format 2), so ``anndata.read_zarr(path)``
opens it: ``obs`` (index: cell ids; requested columns; per-cell outputs such as predicted
labels), an ``X`` of shape ``(n_cells, 0)``, arrays in ``obsm`` and the run's record in
``uns[UNS_KEY]``. Every array is chunked by ``block_size`` rows and each block of global
rows ``[k * block_size, (k + 1) * block_size)`` is written by one process only, so writers
never share a chunk. A finished block is recorded by a marker file created atomically
(``os.replace``) after its data, in the hidden folder :data:`BLOCKS_DIR` of the store (the
marker's text names its writer, e.g. ``rank 1``); a restarted run skips the marked blocks.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

#: ``uns`` key of the run record.
UNS_KEY = "scvi_scgpt_atlas"
#: Hidden folder of block markers inside the store.
BLOCKS_DIR = ".scvi_scgpt_blocks"
_SETTINGS_FILE = ".scvi_scgpt_settings.json"


#: Attributes of an anndata ``dict`` element (``obsm``, ``layers``, ...).
_DICT_ATTRS = {"encoding-type": "dict", "encoding-version": "0.1.0"}


def _array_attrs(kind: str) -> dict:
    return {"encoding-type": kind, "encoding-version": "0.2.0"}


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
        """Whether a finished run wrote the store (``uns[UNS_KEY]["complete"]``)."""
        if self.settings() is None:
            return False
        import zarr

        uns = zarr.open_group(str(self.path), mode="r", zarr_format=2)["uns"]
        if UNS_KEY not in uns or "complete" not in uns[UNS_KEY]:
            return False
        return bool(np.asarray(uns[UNS_KEY]["complete"][...]))

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
            ``obs`` columns: name -> dtype (``"str"`` for strings).
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
            self._column(obs, "_index", n_obs, chunk, "str")
            for name, dtype in obs_columns.items():
                self._column(obs, name, n_obs, chunk, dtype)
            X = root.create_array("X", shape=(n_obs, 0), chunks=(chunk, 1), dtype="float32")
            X.attrs.update(_array_attrs("array"))
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
                array.attrs.update(_array_attrs("array"))
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

    @staticmethod
    def _column(group, name: str, n_obs: int, chunk: int, dtype: str) -> None:
        if dtype == "str":
            array = group.create_array(name, shape=(n_obs,), chunks=(chunk,), dtype=str)
            array.attrs.update(_array_attrs("string-array"))
        else:
            fill = np.nan if np.dtype(dtype).kind == "f" else 0
            array = group.create_array(
                name, shape=(n_obs,), chunks=(chunk,), dtype=dtype, fill_value=fill
            )
            array.attrs.update(_array_attrs("array"))

    # ------------------------------------------------------------------ blocks
    def done_blocks(self) -> set[int]:
        """Numbers of the blocks recorded as finished."""
        folder = self.path / BLOCKS_DIR
        if not folder.is_dir():
            return set()
        return {int(name) for name in os.listdir(folder) if name.isdigit()}

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
    ) -> None:
        """Write global rows ``start:stop`` (block ``index``), then mark the block done.

        The marker holds ``writer`` (e.g. the rank), for the record.
        """
        import zarr

        root = zarr.open_group(str(self.path), mode="r+", zarr_format=2)
        n = stop - start
        if len(cell_ids) != n:
            raise ValueError(f"Block {index}: {len(cell_ids)} cell ids for {n} rows.")
        root["obs"]["_index"][start:stop] = np.asarray(cell_ids, dtype=object).astype(str)
        for name, values in obs.items():
            column = root["obs"][name]
            if column.dtype.kind in "OTU" or str(column.dtype).startswith("StringDType"):
                text = np.asarray(values, dtype=object)
                text[[v is None for v in text]] = ""
                column[start:stop] = text.astype(str)
            else:
                column[start:stop] = np.asarray(values).astype(column.dtype)
        for name, values in obsm.items():
            root["obsm"][name][start:stop] = values
        marker = self.path / BLOCKS_DIR / f"{index:09d}"
        tmp = marker.with_name(marker.name + f".tmp{os.getpid()}")
        tmp.write_text(writer, encoding="utf-8")
        os.replace(tmp, marker)

    def block_writers(self) -> dict[int, str]:
        """Who wrote each finished block (what ``write_block`` was given as ``writer``)."""
        folder = self.path / BLOCKS_DIR
        return {i: (folder / f"{i:09d}").read_text(encoding="utf-8") for i in self.done_blocks()}

    def count_written(self, key: str, block_size: int) -> int:
        """Rows of ``obsm[key]`` holding finite values, read chunk by chunk."""
        import zarr

        array = zarr.open_group(str(self.path), mode="r", zarr_format=2)["obsm"][key]
        n_obs = array.shape[0]
        written = 0
        for start in range(0, n_obs, block_size):
            chunk = np.asarray(array[start : start + block_size])
            written += int(np.isfinite(chunk.reshape(len(chunk), -1)).all(axis=1).sum())
        return written

    def finish(self, record: Mapping) -> None:
        """Add ``record`` to ``uns[UNS_KEY]`` (e.g. ``complete: True``) after a full run."""
        import anndata
        import zarr

        root = zarr.open_group(str(self.path), mode="r+", zarr_format=2)
        uns = anndata.io.read_elem(root["uns"])
        uns[UNS_KEY] = {**uns.get(UNS_KEY, {}), **record}
        anndata.io.write_elem(root, "uns", uns)
