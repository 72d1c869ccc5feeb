"""Read a local GEARS ``PertData`` folder without executing anything it contains.

GEARS stores splits as pickles (``splits/<name>_<split>_<seed>_<fraction>.pkl``: a dict of
condition lists, sometimes holding NumPy strings). Unpickling untrusted data can run code, so
pickles are read by a restricted unpickler that accepts only plain containers, strings,
numbers and NumPy string/number arrays; anything else is refused. JSON files of the same
structure are read too.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

_NUMPY_ALLOWED = {
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
}
_DTYPE_KINDS = set("USObiuf")


def _safe_dtype(spec, *args):
    dtype = np.dtype(spec)
    if dtype.kind not in _DTYPE_KINDS or dtype.fields is not None:
        raise pickle.UnpicklingError(f"Refusing NumPy dtype {dtype!r} in a split file.")
    return np.dtype(spec, *args)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler of plain data: every global but a few NumPy array builders is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_ALLOWED:
            return getattr(__import__(module, fromlist=[name]), name)
        if module == "numpy" and name == "dtype":
            return _safe_dtype
        raise pickle.UnpicklingError(
            f"Refusing to load {module}.{name} from a split file: only plain data is read."
        )


def _plain(value):
    """Nested dicts / lists of ``str`` from unpickled or JSON data."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_split_file(path: str | Path) -> dict:
    """A GEARS split file (``.pkl`` read safely, or ``.json``) as plain dicts and lists.

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    The file's dictionary, with NumPy strings and arrays turned into ``str`` and lists.

    Raises
    ------
    ValueError
        When the file is not a dictionary of plain data (e.g. a pickle naming a class).
    """
    path = Path(path)
    if path.suffix == ".json":
        data = json.loads(path.read_text())
    else:
        try:
            with path.open("rb") as f:
                data = _RestrictedUnpickler(f).load()
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError) as err:
            raise ValueError(f"{path} is not a plain-data split file: {err}") from err
    data = _plain(data)
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a dictionary of splits.")
    return data


def _de_by_condition(adata: ad.AnnData) -> dict[str, list[str]] | None:
    """GEARS' ranked DE genes per condition, as ``var_names``; ``None`` without them.

    GEARS keys ``uns["rank_genes_groups_cov_all"]`` by condition name and lists ``var`` ids.
    """
    ranked = adata.uns.get("rank_genes_groups_cov_all")
    if not isinstance(ranked, Mapping) or "condition_name" not in adata.obs.columns:
        return None
    condition_of = dict(
        zip(adata.obs["condition_name"].astype(str), adata.obs["condition"].astype(str))
    )
    symbol = {}
    if "gene_id" in adata.var.columns:
        symbol = dict(zip(adata.var["gene_id"].astype(str), adata.var_names.astype(str)))
    out: dict[str, list[str]] = {}
    for name, genes in ranked.items():
        condition = condition_of.get(str(name))
        if condition is not None and condition not in out:
            out[condition] = [symbol.get(str(g), str(g)) for g in np.asarray(genes).tolist()]
    return out


def _find_split(folder: Path, split: str | Path | None) -> Path | None:
    if split is not None:
        candidate = Path(split)
        if not candidate.is_absolute():
            candidate = folder / "splits" / candidate
        if not candidate.exists():
            raise FileNotFoundError(f"Split file {candidate} does not exist.")
        return candidate
    found = sorted(
        p
        for p in (folder / "splits").glob("*")
        if p.suffix in (".pkl", ".json") and not p.stem.endswith("_subgroup")
    )
    if len(found) > 1:
        raise ValueError(
            f"Several split files in {folder / 'splits'} ({[p.name for p in found]}): "
            "choose one with split=..."
        )
    return found[0] if found else None


def read_gears(
    path: str | Path,
    *,
    split: str | Path | None = None,
    split_key: str = "split",
) -> ad.AnnData:
    """Read a local GEARS ``PertData`` dataset folder into an AnnData ready for setup.

    Parameters
    ----------
    path
        Folder holding ``perturb_processed.h5ad`` (e.g. ``<data_path>/norman``), or the
        ``.h5ad`` file itself.
    split
        Split file (``.pkl`` or ``.json``; a bare name is looked up in ``<path>/splits``).
        Default: the folder's only split file, if any (``*_subgroup`` files are read along).
    split_key
        Column receiving the split.

    Returns
    -------
    AnnData
        GEARS' log-normalised expression in ``X`` and its ``obs`` (``condition``,
        ``cell_type``, ...) and ``uns``. ``var_names`` are the gene symbols of
        ``var["gene_name"]`` (made unique), the symbols GEARS conditions use; the original
        index is kept in ``var["gene_id"]``. GEARS' ranked DE genes
        (``uns["rank_genes_groups_cov_all"]``) are also given per condition, as
        ``var_names``, in ``uns["de_genes"]`` (for ``tl.perturbation_metrics(de_genes=...)``;
        with several cell types, the first condition name of each condition). With a split
        file, ``obs[split_key]`` (``"train"`` / ``"val"`` / ``"test"``, categorical; cells of
        conditions outside the split are missing) and, with its ``*_subgroup`` companion,
        ``uns["split_subgroup"]``.

    Raises
    ------
    FileNotFoundError
        When there is no ``perturb_processed.h5ad``.
    ValueError
        For a split file that is not plain data or lacks the ``train`` / ``test`` lists, or
        an AnnData without ``obs["condition"]``.
    """
    path = Path(path)
    file = path if path.suffix == ".h5ad" else path / "perturb_processed.h5ad"
    if not file.exists():
        raise FileNotFoundError(f"No GEARS dataset at {file} (perturb_processed.h5ad).")
    folder = file.parent
    adata = ad.read_h5ad(file)
    if "condition" not in adata.obs.columns:
        raise ValueError(f"{file} has no obs['condition']: not a GEARS dataset.")
    if "gene_name" in adata.var.columns:
        adata.var["gene_id"] = adata.var_names.astype(str)
        adata.var_names = pd.Index(adata.var["gene_name"].astype(str).to_numpy())
        adata.var_names_make_unique()
    de_genes = _de_by_condition(adata)
    if de_genes is not None:
        adata.uns["de_genes"] = de_genes
    split_file = _find_split(folder, split)
    if split_file is not None:
        sets = read_split_file(split_file)
        if not {"train", "test"} <= set(sets):
            raise ValueError(f"{split_file} lacks 'train' / 'test' lists (keys {list(sets)}).")
        where = {}
        for part in ("train", "val", "test"):
            where.update({str(c): part for c in sets.get(part, [])})
        labels = adata.obs["condition"].astype(str).map(where)
        adata.obs[split_key] = pd.Categorical(labels, categories=["train", "val", "test"])
        companion = split_file.with_name(f"{split_file.stem}_subgroup{split_file.suffix}")
        if companion.exists():
            adata.uns["split_subgroup"] = read_split_file(companion)
    return adata
