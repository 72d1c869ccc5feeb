"""Multi-omic tokens: modality names, the modality vocabulary, protein and peak token names."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

from scvi_scgpt._constants import SPECIAL_TOKENS

#: Modality names of the setup arguments of ``SCGPT.setup_mudata`` (official spelling of
#: the tutorial's modality vocabulary: ``"RNA"``, ``"Protein"``; ``"ATAC"`` for peaks).
MODALITY_NAMES: dict[str, str] = {
    "rna_layer": "RNA",
    "protein_layer": "Protein",
    "atac_layer": "ATAC",
}
#: Prefix of protein tokens (official tutorial), so protein CD4 is not gene CD4.
PROTEIN_PREFIX = "p_"

_PEAK = re.compile(r"^(?P<chrom>[^:\-_\s]+)[:\-_](?P<start>\d+)[\-_](?P<end>\d+)$")


def modality_vocabulary(names: Iterable[str]) -> list[str]:
    """The official modality vocabulary: sorted modality names, then the special tokens.

    Parameters
    ----------
    names
        Modality names, e.g. ``["RNA", "Protein"]``.

    Returns
    -------
    Token list whose positions are the modality ids, e.g.
    ``["Protein", "RNA", "<pad>", "<cls>", "<eoc>"]``.

    Examples
    --------
    >>> modality_vocabulary(["RNA", "Protein"])
    ['Protein', 'RNA', '<pad>', '<cls>', '<eoc>']
    """
    names = sorted(set(names))
    clash = [n for n in names if n in SPECIAL_TOKENS]
    if clash:
        raise ValueError(f"Modality names {clash} clash with the special tokens.")
    return [*names, *SPECIAL_TOKENS]


def modality_id(vocabulary: Sequence[str], token: str) -> int:
    """Id of a modality name (or ``"<pad>"`` / ``"<cls>"``) in a modality vocabulary."""
    try:
        return list(vocabulary).index(token)
    except ValueError:
        raise ValueError(
            f"{token!r} is not in the modality vocabulary {list(vocabulary)}."
        ) from None


def protein_tokens(names: Iterable[str]) -> list[str]:
    """Protein feature names as tokens: ``"CD4"`` becomes ``"p_CD4"`` (official prefix)."""
    return [f"{PROTEIN_PREFIX}{n}" for n in map(str, names)]


def peak_tokens(names: Iterable[str]) -> list[str]:
    """ATAC peak names as tokens named by region, ``"chr1:1000-1500"``.

    Accepts ``chr1:1000-1500``, ``chr1-1000-1500`` and ``chr1_1000_1500``.

    Raises
    ------
    ValueError
        For a name that is not a region, or a region whose end is not after its start.
    """
    out = []
    for name in map(str, names):
        match = _PEAK.match(name.strip())
        if match is None:
            raise ValueError(
                f"ATAC feature {name!r} is not a region: name peaks 'chr1:1000-1500' or "
                "'chr1-1000-1500'."
            )
        start, end = int(match["start"]), int(match["end"])
        if end <= start:
            raise ValueError(f"ATAC region {name!r} ends before it starts.")
        out.append(f"{match['chrom']}:{start}-{end}")
    return out


def feature_tokens(modality: str, names: Iterable[str]) -> list[str]:
    """Tokens of a modality's features: genes as they are, ``p_`` proteins, region peaks."""
    if modality == "RNA":
        return [str(n) for n in names]
    if modality == "Protein":
        return protein_tokens(names)
    if modality == "ATAC":
        return peak_tokens(names)
    raise ValueError(f"Unknown modality {modality!r}; expected one of RNA, Protein, ATAC.")


def check_unique_features(names: Sequence[str], *, where: str) -> None:
    """Raise a ``ValueError`` when a feature name occurs twice within one modality."""
    values, counts = np.unique(np.asarray(names, dtype=object).astype(str), return_counts=True)
    repeated = values[counts > 1]
    if len(repeated):
        raise ValueError(
            f"{where} has {len(repeated)} repeated feature names (e.g. {list(repeated[:5])}); "
            "make them unique first, e.g. `adata.var_names_make_unique()`."
        )
