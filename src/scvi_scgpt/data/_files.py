"""Reading on-disk AnnData files (.h5ad, .zarr) element by element, never the whole matrix.

Both formats store the same elements (anndata's on-disk specification): a CSR matrix is a
group of ``data`` / ``indices`` / ``indptr`` read through :func:`anndata.io.sparse_dataset`
(a row range costs one ``indptr`` slice and one contiguous ``data`` / ``indices`` read), a
dense matrix is an array sliced by rows, and ``obs`` columns are arrays, string arrays,
categoricals (``codes`` + ``categories``) or nullable arrays (``values`` + ``mask``).
"""

from __future__ import annotations

from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scvi_scgpt.data._tokenize import _as_csr


def is_zarr_store(path: str | Path) -> bool:
    """Whether ``path`` is a zarr store (format 2 or 3) on the local file system."""
    path = Path(path)
    return path.is_dir() and any(
        (path / name).is_file() for name in (".zgroup", "zarr.json", ".zmetadata")
    )


def open_store(path: str | Path):
    """The root group of an ``.h5ad`` (an open ``h5py.File``) or a zarr AnnData store."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{str(path)!r} does not exist.")
    if path.is_dir():
        if not is_zarr_store(path):
            raise ValueError(
                f"{str(path)!r} is a directory but not a zarr store (no .zgroup / zarr.json)."
            )
        import zarr

        return zarr.open_group(str(path), mode="r")
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise ValueError(f"{str(path)!r} is not a readable .h5ad file: {err}") from err


def close_store(group) -> None:
    """Close an ``h5py.File`` (zarr groups need no closing)."""
    close = getattr(group, "close", None)
    if close is not None:
        close()


#: Members of a nullable array element (anndata's on-disk format).
_NULLABLE_VALUES, _NULLABLE_MASK = "values", "mask"


def _encoding(element) -> str:
    return str(element.attrs.get("encoding-type", "array"))


def matrix_element(group, layer: str | None = None, *, where: str = "the file"):
    """The expression matrix of an open store: ``X`` or ``layers[layer]``, readable by rows.

    Returns a :class:`anndata.abc.CSRDataset` (sparse) or the array itself (dense).
    """
    if layer is None:
        if "X" not in group:
            raise ValueError(f"{where} has no X matrix; name a layer with layer=...")
        node = group["X"]
    else:
        layers = group["layers"] if "layers" in group else {}
        if layer not in layers:
            raise ValueError(
                f"{where} has no layer {layer!r}; it has {sorted(layers)}. "
                "Pass one of them as layer=, or layer=None for X."
            )
        node = layers[layer]
    kind = _encoding(node)
    if kind == "csc_matrix":
        raise ValueError(
            f"The matrix of {where} is stored column-major (CSC): reading cells would read "
            "the whole matrix. Rewrite it as CSR, e.g. `adata.X = adata.X.tocsr()` before "
            "writing."
        )
    if kind == "csr_matrix":
        return anndata.io.sparse_dataset(node)
    return node


def read_row_range(matrix, start: int, stop: int) -> sp.csr_matrix:
    """Rows ``start:stop`` of an on-disk matrix as CSR (one contiguous read)."""
    return _as_csr(matrix[start:stop])


def _strings(values) -> np.ndarray:
    out = np.asarray(values)
    if out.dtype.kind == "S" or (out.dtype == object and len(out) and isinstance(out[0], bytes)):
        out = np.char.decode(out.astype("S"), "utf-8")
    return out.astype(object)


def _read_array_rows(element, start: int, stop: int) -> np.ndarray:
    import h5py

    if isinstance(element, h5py.Dataset) and h5py.check_string_dtype(element.dtype):
        return np.asarray(element.asstr()[start:stop], dtype=object)
    values = np.asarray(element[start:stop])
    if values.dtype.kind in "SOTU" or str(values.dtype).startswith("StringDType"):
        return _strings(values)
    return values


def read_obs_index(group, start: int, stop: int) -> np.ndarray:
    """Cell ids (``obs_names``) of rows ``start:stop`` as strings."""
    obs = group["obs"]
    return _read_array_rows(obs[obs.attrs["_index"]], start, stop).astype(str).astype(object)


def obs_column_names(group) -> list[str]:
    """The ``obs`` columns of an open store."""
    return [str(c) for c in group["obs"].attrs.get("column-order", [])]


def read_obs_column(group, column: str, start: int, stop: int, *, where: str) -> np.ndarray:
    """Rows ``start:stop`` of one ``obs`` column.

    Numbers and booleans keep their dtype (nullable ones become float with NaN, or object
    with ``None``); strings and categories are returned as strings.
    """
    obs = group["obs"]
    if column not in obs_column_names(group):
        raise ValueError(
            f"{where} has no obs column {column!r}; it has {obs_column_names(group)}."
        )
    element = obs[column]
    kind = _encoding(element)
    if kind == "categorical":
        codes = np.asarray(element["codes"][start:stop])
        categories = _read_array_rows(element["categories"], 0, element["categories"].shape[0])
        values = np.empty(len(codes), dtype=object)
        values[codes >= 0] = np.asarray(categories, dtype=object)[codes[codes >= 0]]
        values[codes < 0] = None
        return values
    if kind.startswith("nullable"):
        values = _read_array_rows(element[_NULLABLE_VALUES], start, stop)
        mask = np.asarray(element[_NULLABLE_MASK][start:stop], dtype=bool)
        if mask.any():
            values = values.astype(float if values.dtype.kind in "iuf" else object)
            values[mask] = np.nan if values.dtype.kind == "f" else None
        return values
    if kind in ("array", "string-array"):
        return _read_array_rows(element, start, stop)
    raise ValueError(f"obs column {column!r} of {where} has an unsupported encoding {kind!r}.")


def obs_column_kind(group, column: str, *, where: str) -> str:
    """Output kind of an ``obs`` column from its on-disk encoding (see ``_obs_schema``)."""
    from scvi_scgpt.data._obs_schema import kind_of_dtype

    if column not in obs_column_names(group):
        raise ValueError(
            f"{where} has no obs column {column!r}; it has {obs_column_names(group)}."
        )
    element = group["obs"][column]
    kind = _encoding(element)
    if kind in ("categorical", "string-array", "nullable-string-array"):
        return "str"
    if kind == "nullable-integer":
        return "Int64"
    if kind == "nullable-boolean":
        return "boolean"
    import h5py

    if isinstance(element, h5py.Dataset) and h5py.check_string_dtype(element.dtype):
        return "str"
    return kind_of_dtype(element.dtype)


def iter_obs_index(group, chunk: int = 1_000_000):
    """The cell ids of an open store in chunks of ``chunk`` rows (bounded memory)."""
    n_obs = group["obs"][group["obs"].attrs["_index"]].shape[0]
    for start in range(0, n_obs, chunk):
        yield read_obs_index(group, start, min(start + chunk, n_obs))


def check_unique_ids(chunks, *, where: str) -> int:
    """Count ids over ``chunks`` of strings; raise a ``ValueError`` if any repeats.

    Ids are hashed to 64 bits (8 bytes per cell in memory, whatever their length).
    """
    hashes = [pd.util.hash_array(np.asarray(c, dtype=object)) for c in chunks]
    hashes = np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64)
    unique, counts = np.unique(hashes, return_counts=True)
    if (counts > 1).any():
        raise ValueError(
            f"The cell ids (obs_names) of {where} repeat ({int((counts > 1).sum())} ids "
            "occur more than once), so output rows could not be told apart. Make them unique "
            "(`adata.obs_names_make_unique()`) and write the file again."
        )
    return len(hashes)


def open_anndata_file(path: str | Path, layer: str | None = None):
    """Lazily readable expression matrix and var table of an .h5ad (backed) or .zarr file.

    Returns
    -------
    ``(matrix, var, handle)``: the matrix (rows are read on slicing), the ``var`` table, and
    the open store to close with :func:`close_store` when done (``None`` for zarr).
    """
    group = open_store(path)
    matrix = matrix_element(group, layer, where=repr(str(path)))
    var = anndata.io.read_elem(group["var"])
    return matrix, var, (None if is_zarr_store(path) else group)


def read_gene_names(path: str | Path, gene_symbols_key: str | None = None) -> np.ndarray:
    """Gene names of an on-disk AnnData without loading its matrix."""
    group = open_store(path)
    try:
        var = anndata.io.read_elem(group["var"])
    finally:
        close_store(group)
    if gene_symbols_key is not None and gene_symbols_key not in var.columns:
        raise ValueError(
            f"{str(path)!r} has no var column {gene_symbols_key!r}; it has "
            f"{list(var.columns)}. Pass gene_symbols_key=None to use var_names."
        )
    return np.asarray(var[gene_symbols_key] if gene_symbols_key else var.index, dtype=object)
