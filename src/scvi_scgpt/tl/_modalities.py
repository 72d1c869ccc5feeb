"""Which modalities each cell of a MuData was measured in (mosaic data)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import scipy.sparse as sp

#: Label of a cell measured in none of the modalities asked about.
NOT_MEASURED = "none"


def _modality_keys(mdata, modalities: Mapping[str, str] | None) -> list[str]:
    """The ``mdata.mod`` keys to look at: all, or those a setup mapping names for ``*_layer``."""
    if modalities is None:
        keys = list(mdata.mod)
    else:
        if not isinstance(modalities, Mapping):
            raise TypeError(
                f"modalities must be a dict such as {{'rna_layer': 'rna', 'protein_layer': "
                f"'prot'}}, got {type(modalities).__name__}."
            )
        keys = [str(v) for k, v in modalities.items() if str(k).endswith("_layer")]
        if not keys:
            raise ValueError(
                "modalities names no modality: map setup arguments ending in '_layer' "
                "(e.g. 'rna_layer', 'protein_layer', 'atac_layer') to mdata.mod keys."
            )
    unknown = [k for k in keys if k not in mdata.mod]
    if unknown:
        raise ValueError(
            f"{unknown} {'is' if len(unknown) == 1 else 'are'} not in mdata.mod "
            f"({list(mdata.mod)})."
        )
    bad = [k for k in keys if "+" in k or k == NOT_MEASURED]
    if bad:
        raise ValueError(f"Modality keys {bad} cannot name a combination ('+', {NOT_MEASURED!r}).")
    return list(dict.fromkeys(keys))


def _nonzero_rows(matrix, where: str) -> np.ndarray:
    """Whether each row of a (sparse or dense) matrix holds a value other than zero."""
    if matrix is None:
        raise ValueError(f"{where}.X is empty: cannot tell which cells were measured.")
    if sp.issparse(matrix):
        return np.asarray((matrix != 0).sum(axis=1)).ravel() > 0
    return (np.asarray(matrix) != 0).any(axis=1)


def measured_modalities(mdata, modalities: Mapping[str, str] | None = None) -> pd.Series:
    """Per cell, the modalities of a MuData it was measured in, e.g. ``"prot+rna"``.

    A cell counts as measured in a modality when it is in that modality's ``obs`` and its row
    of the modality's ``.X`` is not all zero (the convention of
    :meth:`~scvi_scgpt.SCGPT.setup_mudata` for mosaic data). The result can serve as a batch
    key, so that DAR corrects the modality batches as the scGPT paper's mosaic integration
    did::

        mdata.obs["measured"] = tl.measured_modalities(mdata)
        SCGPT.setup_mudata(mdata, batch_key="measured", modalities=...)

    Nothing is written into ``mdata``.

    Parameters
    ----------
    mdata
        MuData.
    modalities
        ``None`` (every modality of ``mdata.mod``) or a ``setup_mudata``-style mapping of
        setup arguments to ``mdata.mod`` keys, e.g. ``{"rna_layer": "rna", "protein_layer":
        "prot"}``; only the ``*_layer`` entries are used.

    Returns
    -------
    pandas.Series
        Categorical, indexed by ``mdata.obs_names``: the sorted ``mdata.mod`` keys of the
        modalities each cell was measured in, joined by ``"+"`` (``"none"`` for a cell measured
        in none of them). Categories are the combinations present, most modalities first.

    Raises
    ------
    ValueError
        For a key not in ``mdata.mod``, a mapping that names no modality, repeated
        ``obs_names`` in a modality, or a modality whose ``.X`` is empty.

    Examples
    --------
    >>> mdata.obs["measured"] = measured_modalities(mdata)  # doctest: +SKIP
    >>> mdata.obs["measured"].value_counts()  # doctest: +SKIP
    prot+rna    200
    rna         200
    """
    keys = _modality_keys(mdata, modalities)
    obs_names = mdata.obs_names
    flags = np.zeros((mdata.n_obs, len(keys)), dtype=bool)
    for j, key in enumerate(keys):
        mod = mdata.mod[key]
        where = f"mdata.mod[{key!r}]"
        if not mod.obs_names.is_unique:
            raise ValueError(f"{where}.obs_names are not unique.")
        rows = obs_names.get_indexer(mod.obs_names)
        inside = rows >= 0
        nonzero = _nonzero_rows(mod.X, where)
        flags[rows[inside], j] = nonzero[inside]
    order = np.argsort(keys, kind="stable")
    names = np.asarray(keys, dtype=object)[order]
    flags = flags[:, order]
    combos, codes = np.unique(flags, axis=0, return_inverse=True)
    labels = ["+".join(names[row]) or NOT_MEASURED for row in combos]
    # most modalities first, then by name
    rank = sorted(range(len(labels)), key=lambda i: (-int(combos[i].sum()), labels[i]))
    categories = [labels[i] for i in rank]
    values = np.asarray(labels, dtype=object)[np.asarray(codes).ravel()]
    return pd.Series(
        pd.Categorical(values, categories=categories),
        index=obs_names.copy(),
        name="measured_modalities",
    )
