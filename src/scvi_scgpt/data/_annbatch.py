"""Cells of an annbatch collection (pre-shuffled, sharded zarr), read with annbatch's loader.

Needs ``annbatch`` (Python >= 3.12; ``pip install 'scvi-scgpt[annbatch]'``). A collection
written by ``annbatch.DatasetCollection(...).add_adatas(...)`` is a zarr group of datasets
(``dataset_0``, ``dataset_1``, ...) sharing one ``var``; its rows, in dataset order, are the
global rows annbatch's ``Loader`` indexes. Each block is read by an ``annbatch.Loader`` whose
sampler asks for exactly that block's rows (no shuffling, no rank trimming, no torch
``DataLoader`` around it); the loader's returned global index is checked against the block.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from scvi_scgpt.data._files import check_unique_ids
from scvi_scgpt.data._obs_schema import kind_of_dtype, merge_kinds
from scvi_scgpt.data._sources import CellSource, SourcePart, column_values
from scvi_scgpt.data._tokenize import _as_csr

#: ``encoding-type`` of the root group of an annbatch collection.
ANNBATCH_ENCODING = "annbatch-preshuffled"


def is_annbatch_collection(path: str | Path) -> bool:
    """Whether ``path`` is a zarr group written by ``annbatch.DatasetCollection``."""
    path = Path(path)
    if not path.is_dir():
        return False
    import json

    for meta, key in (("zarr.json", "attributes"), (".zattrs", None)):
        file = path / meta
        if file.is_file():
            attrs = json.loads(file.read_text(encoding="utf-8"))
            attrs = attrs.get(key, {}) if key else attrs
            return attrs.get("encoding-type") == ANNBATCH_ENCODING
    return False


def _annbatch():
    try:
        import annbatch
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError(
            "Reading annbatch collections needs annbatch (Python >= 3.12): "
            "pip install 'scvi-scgpt[annbatch]'."
        ) from err
    return annbatch


def _row_range_sampler(start: int, stop: int):
    """An ``annbatch.abc.Sampler`` yielding global rows ``start:stop`` as one batch."""
    from annbatch.abc import Sampler

    class RowRangeSampler(Sampler):
        def __init__(self) -> None:
            self.start, self.stop = start, stop

        @property
        def batch_size(self) -> int:
            return self.stop - self.start

        @property
        def shuffle(self) -> bool:
            return False

        def n_batches(self, n_obs: int) -> int:
            return 1

        def validate(self, n_obs: int) -> None:
            if not 0 <= self.start < self.stop <= n_obs:
                raise ValueError(f"Rows {self.start}:{self.stop} are outside {n_obs} cells.")

        def _sample(self, n_obs: int):
            yield {
                "requests": [slice(self.start, self.stop)],
                "splits": [np.arange(self.stop - self.start)],
            }

    return RowRangeSampler()


class AnnbatchSource(CellSource):
    """Cells of an annbatch collection, read by blocks with annbatch's ``Loader``.

    Parameters
    ----------
    path
        The collection (a zarr group written by ``annbatch.DatasetCollection``).
    gene_symbols_key
        ``var`` column with gene names (default: ``var_names``).
    """

    kind = "annbatch"

    def __init__(self, path: str | Path, *, gene_symbols_key: str | None = None) -> None:
        import anndata

        annbatch = _annbatch()
        self.path = Path(path)
        self.gene_symbols_key = gene_symbols_key
        self._handles: dict = {}
        collection = annbatch.DatasetCollection(str(self.path), mode="r")
        if collection.is_empty:
            raise ValueError(f"The annbatch collection {str(self.path)!r} holds no dataset.")
        groups = list(collection)
        var = anndata.io.read_elem(groups[0]["var"])
        if gene_symbols_key is not None and gene_symbols_key not in var.columns:
            raise ValueError(
                f"{str(self.path)!r} has no var column {gene_symbols_key!r}; it has "
                f"{list(var.columns)}."
            )
        names = var[gene_symbols_key] if gene_symbols_key else var.index
        n_obs = [int(g["X"].attrs["shape"][0]) for g in groups]
        obs_columns = None
        ids, kinds = [], {}
        for i, group in enumerate(groups):
            obs = anndata.io.read_elem(group["obs"])
            ids.append(np.asarray(obs.index, dtype=object))
            cols = [str(c) for c in obs.columns]
            obs_columns = cols if obs_columns is None else [c for c in obs_columns if c in cols]
            for c in cols:
                kinds.setdefault(c, {})[f"{self.path}/dataset_{i}"] = kind_of_dtype(obs[c].dtype)
        check_unique_ids(ids, where=repr(str(self.path)))
        self._obs_columns = tuple(obs_columns or ())
        self._obs_kinds = {c: kinds[c] for c in self._obs_columns}
        self.dataset_n_obs = n_obs
        names = np.asarray(names).astype(str).astype(object)
        self.parts = (SourcePart(str(self.path), names, int(sum(n_obs)), 0),)

    @property
    def obs_columns(self) -> tuple[str, ...]:
        """``obs`` columns every dataset of the collection has."""
        return self._obs_columns

    def obs_dtypes(self, columns) -> dict[str, str]:
        """Output kinds from the pandas dtypes of the datasets' ``obs``."""
        return {c: merge_kinds(c, self._obs_kinds[c]) for c in columns}

    def _loader(self):
        """One annbatch ``Loader`` per process; its sampler is moved to each block."""
        handles = self._own_handles()
        if "loader" not in handles:
            annbatch = _annbatch()
            sampler = _row_range_sampler(0, 1)
            loader = annbatch.Loader(
                batch_sampler=sampler, return_index=True, preload_to_gpu=False, to=None
            )
            collection = annbatch.DatasetCollection(str(self.path), mode="r")
            loader.use_collection(collection)
            handles["loader"] = (loader, sampler)
        return handles["loader"]

    def _read(self, start: int, stop: int):
        loader, sampler = self._loader()
        sampler.start, sampler.stop = start, stop
        (batch,) = list(loader)
        index = np.asarray(batch["index"])
        if not np.array_equal(index, np.arange(start, stop)):
            raise RuntimeError(f"annbatch returned rows {index[:5]}... for {start}:{stop}.")
        return batch

    def read_range(self, part: int, start: int, stop: int) -> sp.csr_matrix:
        """Global rows ``start:stop`` through annbatch's loader."""
        return _as_csr(self._read(start, stop)["X"])

    def cell_ids(self, part: int, start: int, stop: int) -> np.ndarray:
        """``obs_names`` of rows ``start:stop``."""
        return np.asarray(self._read(start, stop)["obs"].index).astype(str).astype(object)

    def obs_values(self, part: int, column: str, start: int, stop: int) -> np.ndarray:
        """An ``obs`` column of rows ``start:stop`` (categories as strings)."""
        return column_values(self._read(start, stop)["obs"][column])

    def _read_segment(self, part, start, stop, obs_columns):
        """One loader pass: matrix, ids and ``obs`` together."""
        batch = self._read(start, stop)
        obs = batch["obs"]
        ids = np.asarray(obs.index).astype(str).astype(object)
        return _as_csr(batch["X"]), ids, {c: column_values(obs[c]) for c in obs_columns}

    def describe(self) -> dict:
        """Kind, path, dataset sizes and gene key."""
        return {
            "kind": self.kind,
            "path": str(self.path.resolve()),
            "datasets": self.dataset_n_obs,
            "gene_symbols_key": self.gene_symbols_key,
        }

    def close(self) -> None:
        """Drop the loader (it holds the open datasets)."""
        self._own_handles().clear()
