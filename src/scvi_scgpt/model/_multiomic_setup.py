"""``SCGPT.setup_mudata``: checks of a MuData (nothing written on bad input) and its fields."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scvi import REGISTRY_KEYS
from scvi.data.fields import MuDataCategoricalObsField, MuDataWrapper

from scvi_scgpt.data import MODALITY_NAMES, check_expression_values, feature_tokens
from scvi_scgpt.data._modalities import check_unique_features
from scvi_scgpt.model._fields import GeneExpressionField

#: Expression fields of a MuData whose genes (proteins, peaks) may differ between objects.
MuDataExpressionField = MuDataWrapper(GeneExpressionField)

#: Registry key of each modality's matrix (scvi-tools' own keys, as TOTALVI / MULTIVI).
MODALITY_REGISTRY_KEYS: dict[str, str] = {
    "RNA": REGISTRY_KEYS.X_KEY,
    "Protein": REGISTRY_KEYS.PROTEIN_EXP_KEY,
    "ATAC": REGISTRY_KEYS.ATAC_X_KEY,
}
#: Setup arguments that ``modalities`` may map to ``mdata.mod`` keys.
MAPPABLE_ARGUMENTS = ("rna_layer", "protein_layer", "atac_layer", "batch_key", "labels_key")


@dataclass(frozen=True)
class ModalitySpec:
    """One modality of a set-up MuData.

    Attributes
    ----------
    name
        ``"RNA"``, ``"Protein"`` or ``"ATAC"`` (the modality vocabulary's spelling).
    mod_key
        Its key in ``mdata.mod``.
    layer
        Its layer (``None``: ``.X``).
    registry_key
        Its scvi-tools registry key.
    """

    name: str
    mod_key: str
    layer: str | None
    registry_key: str


def modality_specs(setup_args: dict) -> list[ModalitySpec]:
    """The modalities of a ``setup_mudata`` registration, in token order (RNA, Protein, ATAC)."""
    modalities = setup_args.get("modalities") or {}
    return [
        ModalitySpec(name, modalities[arg], setup_args.get(arg), MODALITY_REGISTRY_KEYS[name])
        for arg, name in MODALITY_NAMES.items()
        if arg in modalities
    ]


def _layer(adata, layer: str | None, where: str):
    if layer is not None and layer not in adata.layers:
        raise KeyError(f"layer {layer!r} is not in {where}.layers ({list(adata.layers)}).")
    matrix = adata.X if layer is None else adata.layers[layer]
    if matrix is None:
        raise ValueError(f"{where}.X is empty: pass the layer holding the values.")
    return matrix


def check_mudata(mdata, setup_args: dict) -> list[ModalitySpec]:
    """Validate a MuData for ``setup_mudata``; raise a clear error naming the problem.

    Checks the ``modalities`` mapping, every modality's cells, features, values and names,
    and where ``batch_key`` / ``labels_key`` live. Returns the modalities.
    """
    from mudata import MuData

    if not isinstance(mdata, MuData):
        raise TypeError(
            f"setup_mudata takes a MuData, got {type(mdata).__name__}; use setup_anndata for "
            "an AnnData."
        )
    modalities = setup_args.get("modalities")
    if not modalities:
        raise ValueError(
            "setup_mudata needs `modalities`, mapping setup arguments to mdata.mod keys, e.g. "
            "modalities={'rna_layer': 'rna', 'protein_layer': 'prot'}."
        )
    if not isinstance(modalities, dict):
        raise TypeError(f"modalities must be a dict, got {type(modalities).__name__}.")
    unknown = sorted(set(modalities) - set(MAPPABLE_ARGUMENTS))
    if unknown:
        raise ValueError(
            f"Unknown setup argument(s) {unknown} in modalities; choose from "
            f"{list(MAPPABLE_ARGUMENTS)}."
        )
    for arg, key in modalities.items():
        if key not in mdata.mod:
            raise ValueError(
                f"modalities[{arg!r}] = {key!r} is not a modality of the MuData "
                f"(mdata.mod: {list(mdata.mod)})."
            )
    specs = modality_specs(setup_args)
    if len(specs) < 2:
        raise ValueError(
            "setup_mudata integrates two or three of RNA, protein and ATAC: map at least two "
            "of 'rna_layer', 'protein_layer', 'atac_layer' in modalities."
        )
    if len({s.mod_key for s in specs}) < len(specs):
        raise ValueError("Each modality must be its own mdata.mod entry.")
    obs_names = mdata.obs_names
    if not obs_names.is_unique:
        raise ValueError("mdata.obs_names are not unique: make them unique first.")
    for spec in specs:
        adata = mdata.mod[spec.mod_key]
        where = f"mdata.mod[{spec.mod_key!r}]"
        if adata.n_obs == 0 or adata.n_vars == 0:
            raise ValueError(
                f"{where} is empty ({adata.n_obs} cells x {adata.n_vars} features): drop it "
                "from modalities or give it data."
            )
        if not adata.obs_names.is_unique:
            raise ValueError(f"{where}.obs_names are not unique.")
        missing = ~adata.obs_names.isin(obs_names)
        if missing.any():
            raise ValueError(
                f"{int(missing.sum())} cells of {where} (e.g. {list(adata.obs_names[missing][:3])}"
                ") are not in mdata.obs_names: the obs names do not line up; call "
                "mdata.update() after changing a modality."
            )
        names = adata.var_names
        if spec.name == "RNA" and setup_args.get("gene_symbols_key"):
            key = setup_args["gene_symbols_key"]
            if key not in adata.var.columns:
                raise KeyError(f"gene_symbols_key={key!r} is not a column of {where}.var.")
            names = adata.var[key].astype(str)
        check_unique_features(list(names), where=f"{where}.var_names")
        feature_tokens(spec.name, names)  # peaks must parse as regions
        matrix = _layer(adata, spec.layer, where)
        label = where if spec.layer is None else f"{where}.layers[{spec.layer!r}]"
        data = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
        check_expression_values(data, where=label)
    for arg in ("batch_key", "labels_key"):
        column = setup_args.get(arg)
        if column is None:
            continue
        key = modalities.get(arg)
        frame = mdata.obs if key is None else mdata.mod[key].obs
        where = "mdata.obs" if key is None else f"mdata.mod[{key!r}].obs"
        if column not in frame.columns:
            raise KeyError(f"{arg}={column!r} is not a column of {where}.")
        if key is not None and mdata.mod[key].n_obs != mdata.n_obs:
            raise ValueError(
                f"{arg} is read from {where}, which lacks some cells of the MuData (mosaic "
                f"data): put the column in mdata.obs and leave {arg!r} out of modalities."
            )
    return specs


def mudata_fields(setup_args: dict, specs: list[ModalitySpec]) -> list:
    """scvi-tools MuData fields of a ``setup_mudata`` registration."""
    modalities = setup_args["modalities"]
    fields = [
        MuDataExpressionField(
            spec.registry_key,
            spec.layer,
            mod_key=spec.mod_key,
            is_count_data=False,
            mod_required=True,
        )
        for spec in specs
    ]
    fields += [
        MuDataCategoricalObsField(
            REGISTRY_KEYS.BATCH_KEY,
            setup_args.get("batch_key"),
            mod_key=modalities.get("batch_key"),
        ),
        MuDataCategoricalObsField(
            REGISTRY_KEYS.LABELS_KEY,
            setup_args.get("labels_key"),
            mod_key=modalities.get("labels_key"),
        ),
    ]
    return fields
