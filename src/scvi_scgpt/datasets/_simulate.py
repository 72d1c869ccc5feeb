"""A GRN-driven Perturb-seq simulator with a known ground truth (GEARS-format output).

Model
-----
Genes are regulators (transcription factors) and targets. Regulators form a hierarchy:
the first ``n_master_regulators`` have no parent, every other regulator has one or two parents
among the regulators before it; every target has one or two regulators. Each edge has a signed
weight (activating with probability ``activation_fraction``).

Per cell, gene activities are computed on the log scale in topological order::

    log a_g = sum_r w_rg * log a_r + cell-type offset (masters only) + noise_g

so a knockout (``log a = log(knockdown)``) propagates downstream through every level, and the
cell-to-cell noise of regulators propagates to their targets (which is what co-expression and
learned networks can detect). Counts are negative binomial around
``library_size_c * p_g a_cg / S`` (log-normal library sizes ``library_size_c``, base gene
fractions ``p_g``, ``S`` the mean of ``sum_g p_g a_cg`` over the control cells, so that a
knockout lowers a cell's total mRNA instead of raising every other gene), then dropout zeroes
each count with probability ``dropout / (1 + mean)``.

Genetic interactions (``n_interactions``): some simulated doubles ``A+B`` get an interaction
that acts only when both genes are knocked out, on the direct targets of ``A`` and ``B``
(and, through them, downstream). With ``d_g = w_Ag log a_A + w_Bg log a_B`` the pair's
direct contribution to target ``g`` and ``s`` the ``interaction_strength``:

- ``synergy``: ``log a_g += s d_g`` (the double is stronger than the sum of its singles),
- ``buffering``: ``log a_g -= min(s, 1) d_g`` (weaker than the sum),
- ``epistasis``: ``log a_g -= w_Bg log a_B`` (``A`` masks ``B``: on ``B``'s direct targets
  the double looks like ``A`` alone).

So additivity is wrong on a known subset of pairs, stored in ``uns["interactions"]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from scvi_scgpt.tl._conditions import format_condition


def _grn(rng: np.random.Generator, n_genes: int, n_reg: int, n_master: int, act: float, names):
    edges = []
    for g in range(n_master, n_genes):
        pool = g if g < n_reg else n_reg  # regulators before g; every regulator for targets
        n_parents = 1 if pool == 1 or rng.random() < 0.5 else 2
        parents = rng.choice(pool, size=n_parents, replace=False)
        for rank, r in enumerate(parents):
            sign = 1.0 if rng.random() < act else -1.0
            # the first parent is the stronger one (the gene's regulon)
            magnitude = rng.uniform(0.5, 0.9) if rank == 0 else rng.uniform(0.2, 0.4)
            edges.append((int(r), g, sign * magnitude / np.sqrt(n_parents)))
    frame = pd.DataFrame(edges, columns=["source_idx", "target_idx", "weight"])
    frame.insert(0, "source", np.asarray(names)[frame["source_idx"]])
    frame.insert(1, "target", np.asarray(names)[frame["target_idx"]])
    return frame


def _n_masters(n_master_regulators: int | None, n_reg: int) -> int:
    """Master regulators: the given number, or a quarter of the regulators (at least one)."""
    n_master = max(1, n_reg // 4) if n_master_regulators is None else int(n_master_regulators)
    if not 1 <= n_master <= n_reg:
        raise ValueError(f"n_master_regulators={n_master} must be between 1 and {n_reg}.")
    return n_master


def _gene_names(gene_names: Sequence[str] | None, n_genes: int, default: list[str]) -> list[str]:
    """The user's ``n_genes`` unique names, or ``default``."""
    if gene_names is None:
        return default
    names = [str(g) for g in gene_names]
    if len(names) != n_genes or len(set(names)) != n_genes:
        raise ValueError(f"gene_names must be {n_genes} unique names.")
    return names


def _strongest_edges(edges: pd.DataFrame) -> pd.DataFrame:
    """Each target's strongest incoming edge (its regulon / programme)."""
    return edges.loc[
        edges.assign(a=edges["weight"].abs()).groupby("target_idx")["a"].idxmax().to_numpy()
    ]


def _sample_counts(
    rng: np.random.Generator,
    weights: np.ndarray,
    library_size: float,
    library_size_sd: float,
    dispersion: float,
    dropout: float,
) -> sp.csr_matrix:
    """Negative binomial counts around ``library_c * weights`` with mean-dependent dropout."""
    n_cells = weights.shape[0]
    libs = library_size * rng.lognormal(0.0, float(library_size_sd), size=(n_cells, 1))
    mean = libs * weights
    lam = rng.gamma(float(dispersion), mean / float(dispersion))
    counts = rng.poisson(lam)
    drop = rng.random(counts.shape) < dropout / (1.0 + mean)
    counts[drop] = 0
    return sp.csr_matrix(counts.astype(np.float32))


def _activities(
    rng: np.random.Generator,
    edges: pd.DataFrame,
    n_genes: int,
    n_master: int,
    n_reg: int,
    offsets: np.ndarray,
    knocked: Sequence[int],
    knockdown: float,
    regulator_noise: float,
    target_noise: float,
    interactions: Sequence[tuple[int, int, str, float]] = (),
) -> np.ndarray:
    """Log activities ``(n_cells, n_genes)`` in topological order."""
    n_cells = offsets.shape[0]
    log_a = np.zeros((n_cells, n_genes))
    noise_sd = np.where(np.arange(n_genes) < n_reg, regulator_noise, target_noise)
    noise = rng.normal(0.0, 1.0, size=(n_cells, n_genes)) * noise_sd
    log_a[:, :n_master] = offsets + noise[:, :n_master]
    knocked = {int(k) for k in knocked}
    for g in knocked:
        if g < n_master:
            log_a[:, g] = np.log(knockdown)
    by_target = dict(list(edges.groupby("target_idx")))
    active = [(a, b, kind, s) for a, b, kind, s in interactions if a in knocked and b in knocked]
    for g in range(n_master, n_genes):
        grp = by_target[g]
        sources = grp["source_idx"].to_numpy()
        weights = grp["weight"].to_numpy()
        log_a[:, g] = log_a[:, sources] @ weights
        for a, b, kind, strength in active:
            w = {r: weights[sources == r].sum() for r in (a, b)}
            direct = w[a] * log_a[:, a] + w[b] * log_a[:, b]
            if kind == "synergy":
                log_a[:, g] += strength * direct
            elif kind == "buffering":
                log_a[:, g] -= min(strength, 1.0) * direct
            else:  # epistasis: a masks b
                log_a[:, g] -= w[b] * log_a[:, b]
        log_a[:, g] += noise[:, g]
        np.clip(log_a[:, g], -6.0, 4.0, out=log_a[:, g])
        if g in knocked:  # set before any later gene (its targets) reads it
            log_a[:, g] = np.log(knockdown)
    return log_a


INTERACTION_KINDS = ("synergy", "buffering", "epistasis")


def _pick_interactions(
    edges: pd.DataFrame,
    pairs: list[tuple[str, str]],
    position: dict[str, int],
    n_interactions: int,
    strength: float,
) -> list[tuple[str, str, str, str, float]]:
    """The first ``n_interactions`` doubles with a direct target, kinds in turn."""
    if n_interactions < 0 or strength < 0:
        raise ValueError("n_interactions and interaction_strength must be >= 0.")
    if n_interactions > len(pairs):
        raise ValueError(
            f"n_interactions={n_interactions} exceeds the {len(pairs)} simulated doubles; "
            "raise n_doubles."
        )
    has_targets = set(edges["source_idx"].tolist())
    out = []
    for a, b in pairs:
        if len(out) == n_interactions:
            break
        kind = INTERACTION_KINDS[len(out) % len(INTERACTION_KINDS)]
        name = format_condition((a, b))
        if kind == "epistasis" and position[b] not in has_targets:
            a, b = b, a  # the masked gene needs targets
        if position[b] in has_targets or (kind != "epistasis" and position[a] in has_targets):
            out.append((name, a, b, kind, strength))
    if len(out) < n_interactions:
        raise ValueError(
            f"Only {len(out)} simulated doubles have a direct target for an interaction."
        )
    return out


def simulate_perturbseq(
    *,
    n_genes: int = 200,
    n_regulators: int = 20,
    n_master_regulators: int | None = None,
    perturbed_genes: Sequence[str] | None = None,
    n_doubles: int = 10,
    n_control_cells: int = 500,
    cells_per_perturbation: int = 100,
    n_cell_types: int = 2,
    knockdown: float = 0.05,
    activation_fraction: float = 0.75,
    regulator_noise: float = 0.5,
    target_noise: float = 0.2,
    cell_type_shift: float = 0.7,
    library_size: float = 3000.0,
    library_size_sd: float = 0.35,
    dispersion: float = 5.0,
    dropout: float = 0.2,
    gene_names: Sequence[str] | None = None,
    n_interactions: int = 0,
    interaction_strength: float = 0.8,
    seed: int = 0,
) -> ad.AnnData:
    """Simulate a CRISPR knockout screen from a random gene regulatory network.

    The model is described in the module docstring: a regulator hierarchy and targets with
    signed edges, log-linear activities with cell-to-cell noise and cell-type offsets of the
    master regulators, knockouts that propagate downstream, negative binomial counts with
    log-normal library sizes and mean-dependent dropout. The same ``seed`` gives the same
    data.

    Parameters
    ----------
    n_genes
        Number of genes (regulators first, then targets).
    n_regulators
        Number of regulators (transcription factors).
    n_master_regulators
        Regulators without parents (default: a quarter of them, at least one).
    perturbed_genes
        Genes perturbed alone (default: every regulator).
    n_doubles
        Number of random pairs of ``perturbed_genes`` also perturbed together.
    n_control_cells
        Unperturbed cells (``"ctrl"``).
    cells_per_perturbation
        Cells per perturbed condition.
    n_cell_types
        Cell types (``"type0"``, ...), drawn uniformly per cell; each shifts the master
        regulators by a random offset of scale ``cell_type_shift``.
    knockdown
        Residual activity of a knocked-out gene.
    activation_fraction
        Probability that an edge activates (otherwise it represses).
    regulator_noise, target_noise
        Standard deviation of the per-cell log-activity noise of regulators and targets.
    cell_type_shift
        Scale of the cell-type offsets.
    library_size, library_size_sd
        Median and log-scale standard deviation of the per-cell total counts.
    dispersion
        Negative binomial inverse dispersion (larger: closer to Poisson).
    dropout
        Maximum extra dropout probability (for counts with a mean near zero).
    gene_names
        Names of the ``n_genes`` genes (default ``TF00``, ... for regulators and ``G000``, ...
        for targets); pass vocabulary symbols to use a pretrained vocabulary.
    n_interactions
        Doubles given a genetic interaction (module docstring), in turn synergy, buffering
        and epistasis; only pairs with a direct target are eligible (at most ``n_doubles``).
        ``0`` (default): every double follows the GRN alone, as before.
    interaction_strength
        ``s`` of synergy and buffering.
    seed
        Random seed.

    Returns
    -------
    AnnData
        Cells x genes, in GEARS format:

        - ``X``: log-normalised expression (``log1p`` of counts per 10,000), sparse CSR,
        - ``layers["counts"]``: the integer counts (CSR),
        - ``obs["condition"]`` (``"ctrl"``, ``"A+ctrl"``, ``"A+B"``), ``obs["cell_type"]``,
          ``obs["condition_name"]`` (``{cell_type}_{condition}_{dose_val}``),
          ``obs["dose_val"]`` (``"1"`` for control, ``"1+1"`` otherwise), ``obs["control"]``
          (1 for control cells),
        - ``var["gene_name"]``, ``var["is_regulator"]``, ``var["regulon"]`` (the gene's
          strongest regulator; missing for master regulators),
        - ``uns["grn"]``: the true edges (DataFrame ``source``, ``target``, ``weight``; positive
          activates), ``uns["simulation"]``: the parameters,
        - ``uns["interactions"]``: the interacting doubles (DataFrame ``condition``,
          ``gene_a``, ``gene_b``, ``kind``, ``strength``; for epistasis ``gene_a`` masks
          ``gene_b``), empty without ``n_interactions``.
    """
    rng = np.random.default_rng(seed)
    n_genes, n_reg = int(n_genes), int(n_regulators)
    if not 1 <= n_reg < n_genes:
        raise ValueError(f"n_regulators={n_reg} must be between 1 and n_genes - 1 ({n_genes}).")
    n_master = _n_masters(n_master_regulators, n_reg)
    if not 0 < knockdown < 1:
        raise ValueError(f"knockdown={knockdown} must be in (0, 1).")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout={dropout} must be in [0, 1).")
    if n_cell_types < 1 or n_control_cells < 1 or cells_per_perturbation < 1:
        raise ValueError("n_cell_types, n_control_cells and cells_per_perturbation must be >= 1.")
    default = [f"TF{i:02d}" for i in range(n_reg)] + [f"G{i:03d}" for i in range(n_genes - n_reg)]
    names = _gene_names(gene_names, n_genes, default)
    position = {g: i for i, g in enumerate(names)}
    singles = list(names[:n_reg]) if perturbed_genes is None else [str(g) for g in perturbed_genes]
    unknown = [g for g in singles if g not in position]
    if unknown:
        raise ValueError(f"perturbed_genes not among the simulated genes: {unknown}.")
    edges = _grn(rng, n_genes, n_reg, n_master, float(activation_fraction), names)

    pairs: list[tuple[str, str]] = []
    all_pairs = [(a, b) for i, a in enumerate(singles) for b in singles[i + 1 :]]
    if n_doubles and all_pairs:
        pick = rng.choice(len(all_pairs), size=min(int(n_doubles), len(all_pairs)), replace=False)
        pairs = [all_pairs[i] for i in sorted(pick)]
    conditions = [()] + [(g,) for g in singles] + pairs
    interactions = _pick_interactions(
        edges, pairs, position, int(n_interactions), float(interaction_strength)
    )

    base = rng.lognormal(0.0, 1.0, size=n_genes)
    base /= base.sum()
    type_offsets = rng.normal(0.0, float(cell_type_shift), size=(int(n_cell_types), n_master))

    blocks, obs_rows = [], []
    scale = None
    for genes in conditions:
        n_cells = int(n_control_cells) if not genes else int(cells_per_perturbation)
        types = rng.integers(0, int(n_cell_types), size=n_cells)
        log_a = _activities(
            rng,
            edges,
            n_genes,
            n_master,
            n_reg,
            type_offsets[types],
            [position[g] for g in genes],
            float(knockdown),
            float(regulator_noise),
            float(target_noise),
            [(position[a], position[b], kind, st) for _, a, b, kind, st in interactions],
        )
        weights = base * np.exp(log_a)
        if scale is None:  # the control cells come first and fix the mRNA scale
            scale = float(weights.sum(1).mean())
        weights /= scale
        counts = _sample_counts(rng, weights, library_size, library_size_sd, dispersion, dropout)
        blocks.append(counts)
        condition = format_condition(genes)
        dose = "1" if not genes else "1+1"
        for t in types:
            obs_rows.append((condition, f"type{t}", dose, int(not genes)))

    counts = sp.vstack(blocks, format="csr")
    obs = pd.DataFrame(obs_rows, columns=["condition", "cell_type", "dose_val", "control"])
    obs["condition_name"] = obs["cell_type"] + "_" + obs["condition"] + "_" + obs["dose_val"]
    for col in ("condition", "cell_type", "condition_name", "dose_val"):
        obs[col] = pd.Categorical(obs[col])
    obs = obs[["condition", "cell_type", "condition_name", "dose_val", "control"]]
    obs.index = [f"cell{i}" for i in range(len(obs))]

    strongest = _strongest_edges(edges)
    regulon = pd.Series(pd.NA, index=names, dtype=object)
    regulon.iloc[strongest["target_idx"].to_numpy()] = strongest["source"].to_numpy()
    var = pd.DataFrame(
        {
            "gene_name": names,
            "is_regulator": np.arange(n_genes) < n_reg,
            "regulon": pd.Categorical(regulon.to_numpy(), categories=list(names[:n_reg])),
        },
        index=names,
    )

    totals = np.asarray(counts.sum(1)).ravel()
    totals[totals == 0] = 1.0
    lognorm = sp.csr_matrix(sp.diags(1e4 / totals) @ counts)
    lognorm.data = np.log1p(lognorm.data).astype(np.float32)
    adata = ad.AnnData(lognorm.astype(np.float32), obs=obs, var=var)
    adata.layers["counts"] = counts
    adata.uns["grn"] = edges[["source", "target", "weight"]].reset_index(drop=True)
    adata.uns["interactions"] = pd.DataFrame(
        interactions, columns=["condition", "gene_a", "gene_b", "kind", "strength"]
    )
    adata.uns["simulation"] = {
        "n_genes": n_genes,
        "n_regulators": n_reg,
        "n_master_regulators": n_master,
        "n_doubles": len(pairs),
        "n_control_cells": int(n_control_cells),
        "cells_per_perturbation": int(cells_per_perturbation),
        "n_cell_types": int(n_cell_types),
        "knockdown": float(knockdown),
        "activation_fraction": float(activation_fraction),
        "regulator_noise": float(regulator_noise),
        "target_noise": float(target_noise),
        "cell_type_shift": float(cell_type_shift),
        "library_size": float(library_size),
        "library_size_sd": float(library_size_sd),
        "dispersion": float(dispersion),
        "dropout": float(dropout),
        "n_interactions": len(interactions),
        "interaction_strength": float(interaction_strength),
        "seed": int(seed),
    }
    return adata
