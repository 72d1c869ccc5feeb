"""Output dtypes of copied ``obs`` columns, from a source's schema, and casts that lose nothing.

An atlas output column gets one *kind* for the whole run, decided before the run from the
source's schema (the on-disk encoding of each file, the pandas dtypes of an in-memory
table, the Arrow schema of a SOMA experiment), never from the values of one block:

======== ==================================== =====================================
kind     stored as (anndata encoding)          read back by anndata as
======== ==================================== =====================================
str      string array (missing: ``""``)        ``object`` strings
bool     bool array                            ``bool``
boolean  ``nullable-boolean`` (values + mask)  pandas ``boolean`` (``<NA>`` kept)
int64    int64 array                           ``int64``
Int64    ``nullable-integer`` (values + mask)  pandas ``Int64`` (``<NA>`` kept)
float64  float64 array (missing: NaN)          ``float64``
======== ==================================== =====================================

Parts of a collection that store a column differently are promoted when no value can be
lost: ``bool`` + ``boolean`` -> ``boolean``, ``int64`` + ``Int64`` -> ``Int64``, integers +
``float64`` -> ``float64`` (missing integers become NaN; integers above 2**53 would round, so
they are refused at write time). Any other mix (numbers in one file, text in another) is
refused before the run, naming the files. Each block's values are cast by
:func:`cast_column`, which refuses a cast that would change a value (a missing value in a
non-nullable column, a fraction in an integer column).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

#: The kinds of output columns.
KINDS = ("str", "bool", "boolean", "int64", "Int64", "float64", "float32")
#: Kinds stored as anndata nullable arrays (a ``values`` and a ``mask`` array).
NULLABLE = {"boolean": "nullable-boolean", "Int64": "nullable-integer"}


def kind_of_dtype(dtype) -> str:
    """Kind of a numpy or pandas dtype (categories and anything else: ``"str"``)."""
    if isinstance(dtype, pd.CategoricalDtype | pd.StringDtype):
        return "str"
    if isinstance(dtype, pd.BooleanDtype):
        return "boolean"
    if isinstance(dtype, pd.api.extensions.ExtensionDtype):
        if pd.api.types.is_integer_dtype(dtype):
            return "Int64"
        if pd.api.types.is_float_dtype(dtype):
            return "float64"
        return "str"
    kind = np.dtype(dtype).kind
    return {"b": "bool", "i": "int64", "u": "int64", "f": "float64"}.get(kind, "str")


def kind_of_arrow(type_) -> str:
    """Kind of an Arrow field type; Arrow columns may hold nulls, so numbers are nullable."""
    import pyarrow as pa

    if pa.types.is_boolean(type_):
        return "boolean"
    if pa.types.is_integer(type_):
        return "Int64"
    if pa.types.is_floating(type_):
        return "float64"
    return "str"


def kind_of_values(values: np.ndarray) -> str:
    """Kind inferred from values (for sources without a schema)."""
    values = np.asarray(values)
    if values.dtype != object:
        return kind_of_dtype(values.dtype)
    present = [v for v in values if not _missing(v)]
    if present and all(isinstance(v, bool | np.bool_) for v in present):
        return "boolean"
    if present and all(isinstance(v, int | np.integer) for v in present):
        return "Int64"
    return "str"


def infer_kinds(source, columns, n_rows: int = 1000) -> dict[str, str]:
    """Kinds of ``columns`` of a source without a schema, from each part's first rows."""
    out = {}
    for column in columns:
        kinds = {
            part.name: kind_of_values(source.obs_values(i, column, 0, min(part.n_obs, n_rows)))
            for i, part in enumerate(source.parts)
            if part.n_obs
        }
        out[column] = merge_kinds(column, kinds) if kinds else "str"
    return out


def merge_kinds(column: str, kinds: Mapping[str, str]) -> str:
    """One kind for a column that the parts of a collection store as different kinds.

    Parameters
    ----------
    column
        The column's name (for the message).
    kinds
        Part name -> the kind that part stores the column as.

    Returns
    -------
    The one kind holding every part's values without loss (see the module docstring).

    Raises
    ------
    ValueError
        No kind holds them all (numbers in one file, text in another); the parts named.
    """
    found = set(kinds.values())
    if len(found) == 1:
        return found.pop()
    for promoted, members in (
        ("boolean", {"bool", "boolean"}),
        ("Int64", {"int64", "Int64"}),
        ("float64", {"int64", "Int64", "float64"}),
    ):
        if found <= members:
            return promoted
    listed = ", ".join(f"{kind} in {where!r}" for where, kind in kinds.items())
    raise ValueError(
        f"obs column {column!r} is stored differently across the source ({listed}), and "
        "no type holds all of its values without loss. Store it with one type in every "
        "file (e.g. as text), or leave it out of obs_columns; nothing was written."
    )


def _missing(value) -> bool:
    if value is None or value is pd.NA:
        return True
    return isinstance(value, float | np.floating) and np.isnan(value)


def _missing_mask(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype == object:
        return np.fromiter((_missing(v) for v in values), dtype=bool, count=len(values))
    return np.zeros(len(values), dtype=bool)


def _exact(values: np.ndarray, dtype, column: str, kind: str) -> np.ndarray:
    """``values`` as ``dtype``, refusing any value the cast would change."""
    try:
        out = values.astype(dtype)
        same = np.asarray(out.astype(object) == values.astype(object), dtype=bool)
    except (TypeError, ValueError, OverflowError):
        same = np.zeros(len(values), dtype=bool)
        out = None
    if out is None or not same.all():
        bad = values[~same][:3]
        raise ValueError(
            f"obs column {column!r} ({kind}) received values that do not fit without loss "
            f"(e.g. {list(bad)}); the source stores this column in another type than its "
            "schema says. Nothing of this block was written."
        )
    return out


def cast_column(
    values: np.ndarray, kind: str, column: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """Values of one block as stored in a ``kind`` column, and the missing-value mask.

    Parameters
    ----------
    values
        The block's values of the column.
    kind
        The column's kind (:data:`KINDS`).
    column
        The column's name (for messages).

    Returns
    -------
    The values cast to the column's dtype, and the missing-value mask (``None`` except for
    the nullable kinds).

    Raises
    ------
    ValueError
        A cast that would lose a value (see the module docstring).
    """
    values = np.asarray(values)
    missing = _missing_mask(values)
    if kind == "str":
        text = values.astype(object)
        text[missing] = ""
        return np.asarray([str(v) for v in text], dtype=object).astype(str), None
    if kind in ("float64", "float32"):
        out = np.full(len(values), np.nan, dtype=kind)
        present = values[~missing]
        if present.dtype == object:
            present = np.asarray(present.tolist())
        out[~missing] = _exact(present, np.float64, column, kind).astype(kind)
        return out, None
    if kind in ("bool", "int64") and missing.any():
        raise ValueError(
            f"obs column {column!r} ({kind}) received {int(missing.sum())} missing values, "
            "which a non-nullable column cannot hold; the source's schema says it has none. "
            "Nothing of this block was written."
        )
    dtype = np.bool_ if kind in ("bool", "boolean") else np.int64
    out = np.zeros(len(values), dtype=dtype)
    present = values[~missing]
    if present.dtype == object:
        present = np.asarray(present.tolist())
    if len(present):
        if dtype is np.bool_ and present.dtype.kind != "b":
            raise ValueError(
                f"obs column {column!r} ({kind}) received values that are not booleans "
                f"(e.g. {list(present[:3])}). Nothing of this block was written."
            )
        out[~missing] = _exact(present, dtype, column, kind)
    return out, (missing if kind in NULLABLE else None)


# ----------------------------------------------------------------------------- zarr columns
#: The arrays of anndata's nullable-integer / nullable-boolean encoding.
NULLABLE_PARTS = ("values", "mask")


def array_attrs(encoding: str) -> dict:
    """The attributes anndata gives an array element (``"array"``, ``"string-array"``).

    Parameters
    ----------
    encoding
        The anndata encoding type.

    Returns
    -------
    The ``encoding-type`` / ``encoding-version`` attributes.
    """
    return {"encoding-type": encoding, "encoding-version": "0.2.0"}


def create_column(group, name: str, n_obs: int, chunk: int, kind: str) -> None:
    """Create an empty output ``obs`` column of ``kind`` in a zarr (format 2) group.

    Parameters
    ----------
    group
        The ``obs`` group.
    name
        The column.
    n_obs, chunk
        Rows, and rows per chunk.
    kind
        One of :data:`KINDS`; nullable kinds are a ``values`` and a ``mask`` array, whose
        unwritten rows read as missing.
    """
    if kind == "str":
        array = group.create_array(name, shape=(n_obs,), chunks=(chunk,), dtype=str)
        array.attrs.update(array_attrs("string-array"))
    elif kind in NULLABLE:
        column = group.create_group(name)
        column.attrs.update({"encoding-type": NULLABLE[kind], "encoding-version": "0.1.0"})
        dtype = "bool" if kind == "boolean" else "int64"
        for part, fill in zip(NULLABLE_PARTS, (0, True), strict=True):
            array = column.create_array(
                part,
                shape=(n_obs,),
                chunks=(chunk,),
                dtype=dtype if part == "values" else "bool",
                fill_value=fill,
            )
            array.attrs.update(array_attrs("array"))
    else:
        fill = np.nan if np.dtype(kind).kind == "f" else 0
        array = group.create_array(
            name, shape=(n_obs,), chunks=(chunk,), dtype=kind, fill_value=fill
        )
        array.attrs.update(array_attrs("array"))


def stored_kind(node) -> str:
    """The kind of an output ``obs`` column made by :func:`create_column`.

    Parameters
    ----------
    node
        The column's zarr array (or group, for nullable kinds).

    Returns
    -------
    One of :data:`KINDS`.
    """
    encoding = node.attrs.get("encoding-type")
    for kind, name in NULLABLE.items():
        if encoding == name:
            return kind
    dtype = node.dtype
    if dtype.kind in "OTUS" or str(dtype).startswith("StringDType"):
        return "str"
    return "bool" if dtype.kind == "b" else str(np.dtype(dtype))
