"""JSON encoding of the scvi-tools registry and model attributes (no pickle)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def to_jsonable(obj: Any) -> Any:
    """Encode dicts, lists, numpy arrays/scalars and DataFrames into JSON-safe values."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        kind = "object" if obj.dtype.kind in "OUS" else str(obj.dtype)
        return {"__ndarray__": to_jsonable(obj.tolist()), "dtype": kind}
    if isinstance(obj, pd.DataFrame):
        return {"__dataframe__": to_jsonable(obj.to_dict(orient="split"))}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    raise TypeError(f"Cannot save a value of type {type(obj).__name__} in the model file.")


def from_jsonable(obj: Any) -> Any:
    """Inverse of :func:`to_jsonable`."""
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            dtype = object if obj["dtype"] == "object" else np.dtype(obj["dtype"])
            return np.asarray(obj["__ndarray__"], dtype=dtype)
        if "__dataframe__" in obj:
            spec = obj["__dataframe__"]
            return pd.DataFrame(spec["data"], index=spec["index"], columns=spec["columns"])
        return {k: from_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_jsonable(v) for v in obj]
    return obj
