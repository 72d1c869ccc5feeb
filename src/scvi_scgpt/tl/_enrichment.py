"""Gene-set enrichment of gene programs against a user's GMT file (no downloads)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from scvi_scgpt.tl._programs import program_genes


def read_gmt(path: str | Path) -> dict[str, list[str]]:
    """Read a GMT gene-set file (MSigDB / Enrichr format).

    One tab-separated line per set: name, description, then the genes. Empty lines and
    lines starting with ``#`` are skipped; repeated genes within a set are kept once.

    Parameters
    ----------
    path
        The ``.gmt`` file (plain text, or gzip-compressed when the name ends in ``.gz``).

    Returns
    -------
    ``{set name: [genes]}`` in file order.
    """
    import gzip

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GMT file {str(path)!r} does not exist.")
    opener = gzip.open if path.suffix == ".gz" else open
    sets: dict[str, list[str]] = {}
    with opener(path, "rt", encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) < 3:
                raise ValueError(
                    f"{path.name} line {lineno}: expected 'name<TAB>description<TAB>genes...', "
                    f"got {len(fields)} tab-separated field(s)."
                )
            name = fields[0].strip()
            if not name:
                raise ValueError(f"{path.name} line {lineno}: empty gene-set name.")
            if name in sets:
                raise ValueError(f"{path.name} line {lineno}: gene set {name!r} appears twice.")
            genes = list(dict.fromkeys(g.strip() for g in fields[2:] if g.strip()))
            if not genes:
                raise ValueError(f"{path.name} line {lineno}: gene set {name!r} has no gene.")
            sets[name] = genes
    if not sets:
        raise ValueError(f"{path.name} holds no gene set.")
    return sets


def program_enrichment(
    programs: ad.AnnData | pd.Series | Mapping[str, Sequence[str]],
    gene_sets: Mapping[str, Sequence[str]] | str | Path,
    *,
    background: Sequence[str] | None = None,
    min_overlap: int = 1,
) -> pd.DataFrame:
    """Hypergeometric test of every program against every gene set, BH-corrected.

    Parameters
    ----------
    programs
        A gene network AnnData (``obs["program"]``, whose genes are the default
        background), a Series gene -> program, or a mapping program -> genes.
    gene_sets
        ``{name: genes}`` or the path of a GMT file (:func:`read_gmt`).
    background
        The gene universe (default: the network's genes, or the union of the programs).
        Programs and sets are restricted to it.
    min_overlap
        Pairs sharing fewer genes are not reported (they are still counted in the multiple
        testing correction).

    Returns
    -------
    DataFrame with one row per (program, gene set) pair: ``program``, ``gene_set``,
    ``overlap``, ``program_size``, ``set_size``, ``background_size``, ``p_value``
    (P[X >= overlap]), ``q_value`` (Benjamini-Hochberg over all tested pairs) and ``genes``
    (the shared genes, ``;``-joined), sorted by ``p_value``.
    """
    from scipy.stats import false_discovery_control, hypergeom

    if isinstance(gene_sets, str | Path):
        gene_sets = read_gmt(gene_sets)
    if not isinstance(gene_sets, Mapping) or not gene_sets:
        raise ValueError("gene_sets must be a non-empty mapping or a GMT path.")
    members = program_genes(programs)
    if not members:
        raise ValueError("No gene program to test.")
    if background is None:
        if isinstance(programs, ad.AnnData):
            universe = set(programs.obs_names.astype(str))
        else:
            universe = {g for genes in members.values() for g in genes}
    else:
        universe = {str(g) for g in background}
    n_total = len(universe)
    records = []
    for program, genes in members.items():
        pset = set(genes) & universe
        for name, set_genes in gene_sets.items():
            if isinstance(set_genes, str):
                raise TypeError(f"Gene set {name!r} must be a list of genes, not a string.")
            gset = {str(g) for g in set_genes} & universe
            shared = sorted(pset & gset)
            k = len(shared)
            p = float(hypergeom.sf(k - 1, n_total, len(gset), len(pset))) if k else 1.0
            records.append(
                {
                    "program": program,
                    "gene_set": str(name),
                    "overlap": k,
                    "program_size": len(pset),
                    "set_size": len(gset),
                    "background_size": n_total,
                    "p_value": min(p, 1.0),
                    "genes": ";".join(shared),
                }
            )
    table = pd.DataFrame.from_records(records)
    table.insert(
        7, "q_value", false_discovery_control(table["p_value"].to_numpy(dtype=np.float64))
    )
    table = table[table["overlap"] >= int(min_overlap)]
    return table.sort_values(["p_value", "program", "gene_set"], kind="stable").reset_index(
        drop=True
    )
