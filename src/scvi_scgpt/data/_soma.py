"""Cells of a TileDB-SOMA experiment (the CELLxGENE Census format), read by blocks.

Needs ``tiledbsoma`` (``pip install 'scvi-scgpt[soma]'``). Cells are the ``obs`` rows that
``value_filter`` selects, in ``soma_joinid`` order; their ids are the ``soma_joinid`` as
strings. A Census URI and a local experiment are read by the same code. TileDB's contexts
and thread pools do not survive a fork, so DataLoader workers reading a SOMA source are
spawned (see :class:`~scvi_scgpt.dataloaders.AtlasDataModule`), and a forked process never
uses the experiment its parent opened.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from scvi_scgpt.data._obs_schema import kind_of_arrow
from scvi_scgpt.data._sources import CellSource, SourcePart, column_values


def _tiledbsoma():
    try:
        import tiledbsoma
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError(
            "Reading TileDB-SOMA experiments needs tiledbsoma: pip install 'scvi-scgpt[soma]'."
        ) from err
    return tiledbsoma


class SomaSource(CellSource):
    """Cells of one measurement of a TileDB-SOMA experiment.

    Parameters
    ----------
    uri
        Experiment URI (local path, ``s3://``, ``tiledb://``).
    measurement
        Measurement name (``"RNA"``).
    layer
        ``X`` layer (default: ``"raw"`` if present, else the only layer).
    value_filter
        ``obs`` filter selecting the cells (default: all).
    gene_column
        ``var`` column with gene names (default: ``feature_name`` if present, else
        ``var_id``).
    """

    kind = "soma"

    def __init__(
        self,
        uri: str,
        *,
        measurement: str = "RNA",
        layer: str | None = None,
        value_filter: str | None = None,
        gene_column: str | None = None,
    ) -> None:
        soma = _tiledbsoma()
        self.uri = uri
        self.measurement = measurement
        self.value_filter = value_filter
        self._handles: dict = {}
        try:
            exp = soma.Experiment.open(uri)
        except Exception as err:  # tiledbsoma raises its own error types
            raise ValueError(f"Cannot open the TileDB-SOMA experiment {uri!r}: {err}") from err
        with exp:
            if measurement not in exp.ms:
                raise ValueError(
                    f"{uri!r} has no measurement {measurement!r}; it has {sorted(exp.ms)}. "
                    "Pass one of them as measurement=."
                )
            ms = exp.ms[measurement]
            layers = sorted(ms.X)
            if layer is None:
                layer = "raw" if "raw" in layers else (layers[0] if len(layers) == 1 else None)
                if layer is None:
                    raise ValueError(
                        f"Measurement {measurement!r} of {uri!r} has X layers {layers}; "
                        "name one with layer=."
                    )
            elif layer not in layers:
                raise ValueError(
                    f"Measurement {measurement!r} of {uri!r} has no X layer {layer!r}; it has "
                    f"{layers}. Pass one of them as layer=."
                )
            self.layer = layer
            var = ms.var.read().concat().to_pandas()
            if gene_column is None:
                gene_column = next((c for c in ("feature_name", "var_id") if c in var), None)
            if gene_column not in var:
                raise ValueError(
                    f"The var of {measurement!r} in {uri!r} has no column {gene_column!r}; it "
                    f"has {list(var.columns)}. Name the gene column with gene_symbols_key=."
                )
            self.gene_column = gene_column
            self._var_joinids = var["soma_joinid"].to_numpy(np.int64)
            try:
                table = exp.obs.read(column_names=["soma_joinid"], value_filter=value_filter)
                joinids = table.concat()["soma_joinid"].to_numpy()
            except Exception as err:
                raise ValueError(
                    f"value_filter {value_filter!r} could not be applied to the obs of {uri!r}: "
                    f"{err}"
                ) from err
            self._obs_columns = tuple(n for n in exp.obs.schema.names if n != "soma_joinid")
            schema = exp.obs.schema
            self._obs_kinds = {n: kind_of_arrow(schema.field(n).type) for n in self._obs_columns}
        if len(joinids) == 0:
            raise ValueError(
                f"value_filter {value_filter!r} selects no cell of {uri!r}; check the column "
                "names and values (e.g. with tiledbsoma's exp.obs.read().concat())."
            )
        self.joinids = np.sort(joinids.astype(np.int64))
        names = var[gene_column].astype(str).to_numpy(dtype=object)
        self.parts = (SourcePart(uri, names, len(self.joinids), 0),)
        self._var_position = np.full(int(self._var_joinids.max()) + 1, -1, dtype=np.int64)
        self._var_position[self._var_joinids] = np.arange(len(self._var_joinids))

    @property
    def obs_columns(self) -> tuple[str, ...]:
        """Columns of the experiment's ``obs``."""
        return self._obs_columns

    #: DataLoader workers must be spawned: TileDB's threads do not survive a fork.
    worker_start_method = "spawn"

    def _experiment(self):
        handles = self._own_handles()
        if "exp" not in handles:
            handles["exp"] = _tiledbsoma().Experiment.open(self.uri)
        return handles["exp"]

    def obs_dtypes(self, columns) -> dict[str, str]:
        """Output kinds from the Arrow schema of ``obs``.

        Arrow columns may hold nulls, so integers and booleans become pandas' nullable
        ``Int64`` / ``boolean``.
        """
        return {c: self._obs_kinds[c] for c in columns}

    def read_rows(self, part: int, rows: np.ndarray) -> sp.csr_matrix:
        """The selected cells at positions ``rows`` as CSR over the measurement's genes."""
        joinids = self.joinids[np.asarray(rows, dtype=np.int64)]
        shape = (len(joinids), len(self._var_joinids))
        if len(joinids) == 0:
            return sp.csr_matrix(shape, dtype=np.float32)
        X = self._experiment().ms[self.measurement].X[self.layer]
        table = X.read(coords=(joinids, slice(None))).tables().concat()
        cells = table["soma_dim_0"].to_numpy()
        genes = self._var_position[table["soma_dim_1"].to_numpy()]
        values = table["soma_data"].to_numpy()
        local = np.searchsorted(joinids, cells)
        return sp.csr_matrix((values, (local, genes)), shape=shape)

    def read_range(self, part: int, start: int, stop: int) -> sp.csr_matrix:
        """Selected cells ``start:stop``."""
        return self.read_rows(part, np.arange(start, stop))

    def cell_ids(self, part: int, start: int, stop: int) -> np.ndarray:
        """The ``soma_joinid`` of each cell, as strings."""
        return self.joinids[start:stop].astype(str).astype(object)

    def obs_values(self, part: int, column: str, start: int, stop: int) -> np.ndarray:
        """An ``obs`` column of selected cells ``start:stop`` (in ``soma_joinid`` order)."""
        joinids = self.joinids[start:stop]
        frame = (
            self._experiment()
            .obs.read(coords=(joinids,), column_names=["soma_joinid", column])
            .concat()
            .to_pandas()
        )
        ids = frame["soma_joinid"].to_numpy()
        values = column_values(frame[column])
        by_id = np.argsort(ids, kind="stable")
        return values[by_id][np.searchsorted(ids[by_id], joinids)]

    def describe(self) -> dict:
        """URI, measurement, layer, filter, gene column and a hash of the selected cells."""
        import pandas as pd

        digest = int(pd.util.hash_array(self.joinids).sum(dtype=np.uint64))
        return {
            "kind": self.kind,
            "uri": self.uri,
            "measurement": self.measurement,
            "layer": self.layer,
            "value_filter": self.value_filter,
            "gene_column": self.gene_column,
            "n_obs": int(len(self.joinids)),
            "joinids": digest,
        }

    def close(self) -> None:
        """Close the experiment."""
        exp = self._own_handles().pop("exp", None)
        if exp is not None:
            exp.close()
