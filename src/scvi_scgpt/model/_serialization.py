"""JSON encoding of the scvi-tools registry and model attributes (no pickle)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
from scvi import settings

#: The model attributes ``save`` writes to ``attrs`` and ``load`` restores; nothing else.
SAVED_ATTRS = (
    "is_trained_",
    "history_",
    "train_indices_",
    "validation_indices_",
    "test_indices_",
    "run_name_",
    "run_id_",
    "gene_subset_",
    "modality_vocab_",
    "training_task_",
    "perturbation_combination_",
)
#: Attributes saved in their own fields or files (or rebuilt by the constructor), not ``attrs``.
NOT_SAVED_ATTRS = (
    "init_params_",
    "registry_",
    "vocab_",
    "checkpoint_audit_",
    "get_normalized_function_name_",
)
#: Attributes earlier versions wrote, skipped on load when they hold the value shown.
_LEGACY_ATTRS = {"get_normalized_function_name_": "get_normalized_expression"}


def attrs_to_save(model: Any) -> dict[str, Any]:
    """The attributes of ``model`` that ``save`` writes: those in :data:`SAVED_ATTRS`.

    Other public attributes ending in ``_`` (set by hand) are left out with a warning.
    """
    own = {k: v for k, v in vars(model).items() if k.endswith("_") and not k.startswith("_")}
    left_out = sorted(set(own) - set(SAVED_ATTRS) - set(NOT_SAVED_ATTRS))
    if left_out:
        warnings.warn(
            f"Not saved: {left_out}. A saved model restores only {list(SAVED_ATTRS)}.",
            UserWarning,
            stacklevel=settings.warnings_stacklevel,
        )
    return {k: v for k, v in own.items() if k in SAVED_ATTRS}


def attrs_to_load(attrs: Any, source: str) -> dict[str, Any]:
    """The ``attrs`` of a saved model's JSON, checked against :data:`SAVED_ATTRS`.

    Raises
    ------
    ValueError
        ``attrs`` is not a mapping, or names an attribute outside :data:`SAVED_ATTRS`
        (a file not written by ``save``, or changed since: loading it could replace any
        attribute or method of the model).
    """
    if not isinstance(attrs, dict):
        raise ValueError(f'{source}: "attrs" must be a JSON object, got {type(attrs).__name__}.')
    refused = sorted(
        k
        for k, v in attrs.items()
        if k not in SAVED_ATTRS and not (k in _LEGACY_ATTRS and v == _LEGACY_ATTRS[k])
    )
    if refused:
        raise ValueError(
            f"{source} sets the model attribute(s) {refused}, which a saved model may not set "
            f"(only {list(SAVED_ATTRS)}). The file was not written by SCGPT.save or was changed "
            'since; save the model again, or remove those keys from its "attrs".'
        )
    return {k: v for k, v in attrs.items() if k in SAVED_ATTRS}


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
