"""Opening a cell source from what the user gives: a path, a URI or a list of paths."""

from __future__ import annotations

import os
from pathlib import Path

from scvi_scgpt.data._annbatch import AnnbatchSource, is_annbatch_collection
from scvi_scgpt.data._soma import SomaSource
from scvi_scgpt.data._sources import AnnDataFileSource, CellSource


def is_soma_uri(source: str | Path) -> bool:
    """Whether ``source`` names a TileDB-SOMA experiment (a remote URI or a TileDB group)."""
    text = str(source)
    if "://" in text and not text.startswith("file://"):
        return True
    path = Path(text.removeprefix("file://"))
    return path.is_dir() and (path / "__tiledb_group.tdb").exists()


def open_source(
    source,
    *,
    layer: str | None = None,
    measurement: str = "RNA",
    value_filter: str | None = None,
    gene_symbols_key: str | None = None,
) -> CellSource:
    """A :class:`CellSource` for a path, a URI, a list of paths, or a source.

    The kind is detected: a directory holding a TileDB group (or a remote URI such as
    ``s3://`` / ``tiledb://``) is a TileDB-SOMA experiment; a zarr group written by
    ``annbatch.DatasetCollection`` is an annbatch collection (Python >= 3.12, read with
    annbatch's loader); any other directory must be a zarr AnnData store; a file must be an
    ``.h5ad``; a list or tuple is a collection of ``.h5ad`` / zarr files.

    Parameters
    ----------
    source
        Path, URI, list of paths, or an existing :class:`CellSource` (returned as is).
    layer
        AnnData sources: ``layers[layer]`` instead of ``X``. SOMA: the ``X`` layer name
        (default ``"raw"`` if present, else the only layer).
    measurement
        SOMA measurement (``"RNA"`` in Census).
    value_filter
        SOMA ``obs`` filter, e.g. ``"tissue_general == 'lung' and is_primary_data == True"``.
    gene_symbols_key
        Column of ``var`` with gene names (AnnData default: ``var_names``; SOMA default:
        ``feature_name`` if present, else ``var_id``).
    """
    if isinstance(source, CellSource):
        return source
    if isinstance(source, list | tuple):
        if not all(isinstance(s, str | os.PathLike) for s in source):
            raise ValueError("A collection is a list of .h5ad / zarr paths.")
        for path in map(Path, source):
            _check_anndata_path(path)
        return AnnDataFileSource(source, layer=layer, gene_symbols_key=gene_symbols_key)
    if not isinstance(source, str | os.PathLike):
        raise ValueError(
            f"Cannot read cells from a {type(source).__name__}: give an AnnData, a path to an "
            ".h5ad file, a zarr AnnData store or a TileDB-SOMA experiment, or a list of paths."
        )
    if is_soma_uri(source):
        return SomaSource(
            str(source),
            measurement=measurement,
            layer=layer,
            value_filter=value_filter,
            gene_column=gene_symbols_key,
        )
    if value_filter is not None:
        raise ValueError("value_filter applies to TileDB-SOMA sources only.")
    path = Path(source)
    if is_annbatch_collection(path):
        if layer is not None:
            raise ValueError("An annbatch collection is read from its X; layer= does not apply.")
        return AnnbatchSource(path, gene_symbols_key=gene_symbols_key)
    _check_anndata_path(path)
    return AnnDataFileSource(path, layer=layer, gene_symbols_key=gene_symbols_key)


def _check_anndata_path(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(
            f"Source {str(path)!r} does not exist (expected an .h5ad file, a zarr AnnData "
            "store or a TileDB-SOMA experiment)."
        )
    if path.is_file() and path.suffix not in (".h5ad", ".h5"):
        raise ValueError(
            f"{str(path)!r} is not an .h5ad file, a zarr store or a TileDB-SOMA experiment."
        )
