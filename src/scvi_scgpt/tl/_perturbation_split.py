"""GEARS' "simulation" split of perturbation conditions (unseen singles, seen-0/1/2 doubles)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from scvi_scgpt.tl._perturbation_data import check_perturbation_obs

SUBGROUPS = ("unseen_single", "combo_seen0", "combo_seen1", "combo_seen2")


def _simulation_split(
    perturbed: dict[str, tuple[str, ...]],
    rng: np.random.Generator,
    gene_fraction: float,
    combo_train_fraction: float,
) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """One level of the split: ``(train, held out, subgroups of the held out)``."""
    conditions = sorted(perturbed)
    genes = sorted({g for c in conditions for g in perturbed[c]})
    n_train_genes = int(len(genes) * gene_fraction)
    train_genes = set(rng.choice(np.array(genes, dtype=object), n_train_genes, replace=False))
    singles = [c for c in conditions if len(perturbed[c]) == 1]
    combos = [c for c in conditions if len(perturbed[c]) >= 2]
    n_seen = {c: sum(g in train_genes for g in perturbed[c]) for c in combos}
    unseen_single = [c for c in singles if perturbed[c][0] not in train_genes]
    seen_single = [c for c in singles if perturbed[c][0] in train_genes]
    combo_seen0 = [c for c in combos if n_seen[c] == 0]
    combo_seen1 = [c for c in combos if 0 < n_seen[c] < len(perturbed[c])]
    both_seen = [c for c in combos if n_seen[c] == len(perturbed[c])]
    n_combo_train = int(len(both_seen) * combo_train_fraction)
    picked = rng.choice(len(both_seen), n_combo_train, replace=False) if both_seen else []
    combo_train = sorted(both_seen[i] for i in picked)
    combo_seen2 = [c for c in both_seen if c not in set(combo_train)]
    groups = {
        "unseen_single": unseen_single,
        "combo_seen0": combo_seen0,
        "combo_seen1": combo_seen1,
        "combo_seen2": combo_seen2,
    }
    held_out = sorted(c for group in groups.values() for c in group)
    return sorted(seen_single + combo_train), held_out, groups


def perturbation_split(
    adata: AnnData,
    *,
    perturbation_key: str = "condition",
    control_group: str = "ctrl",
    train_gene_set_size: float = 0.75,
    combo_seen2_train_frac: float = 0.75,
    val_gene_set_size: float = 0.9,
    val_combo_seen2_train_frac: float = 0.9,
    seed: int = 1,
    key_added: str | None = "split",
) -> dict[str, object]:
    """Split perturbation conditions as GEARS' ``"simulation"`` split does.

    A fraction ``train_gene_set_size`` of the perturbed genes becomes training genes. Test
    conditions are the singles of the other genes (``unseen_single``), the doubles with none
    (``combo_seen0``) or one (``combo_seen1``) training gene, and a fraction
    ``1 - combo_seen2_train_frac`` of the doubles whose genes are both training genes
    (``combo_seen2``); the remaining singles and doubles are training conditions. Validation
    conditions are split from the training ones the same way (``val_*`` fractions). The control
    is a training condition. The same ``seed`` gives the same split (the draws follow GEARS'
    procedure but use NumPy's ``default_rng``, so the gene sets differ from GEARS' own).

    Parameters
    ----------
    adata
        Cells with GEARS conditions in ``adata.obs[perturbation_key]``.
    perturbation_key
        Condition column (``"ctrl"``, ``"A+ctrl"``, ``"A+B"``).
    control_group
        The control condition.
    train_gene_set_size, combo_seen2_train_frac
        GEARS' fractions of the test level (GEARS' defaults 0.75, 0.75).
    val_gene_set_size, val_combo_seen2_train_frac
        The same fractions for the validation level (GEARS: 0.9, 0.9).
    seed
        Random seed (GEARS' default 1).
    key_added
        Column of ``adata.obs`` receiving ``"train"`` / ``"val"`` / ``"test"``; ``None``
        writes nothing.

    Returns
    -------
    dict
        ``"train"``, ``"val"``, ``"test"``: sorted condition lists (``"train"`` includes the
        control); ``"test_subgroup"`` and ``"val_subgroup"``: ``{subgroup: conditions}`` for
        ``unseen_single``, ``combo_seen0``, ``combo_seen1``, ``combo_seen2``.
        With ``key_added``, writes ``adata.obs[key_added]`` (categorical).

    Raises
    ------
    ValueError
        For a malformed condition, missing control cells, a perturbed gene that is not in
        ``adata.var_names`` or fractions outside ``[0, 1]``; ``adata`` is then untouched.
    """
    for name, value in (
        ("train_gene_set_size", train_gene_set_size),
        ("combo_seen2_train_frac", combo_seen2_train_frac),
        ("val_gene_set_size", val_gene_set_size),
        ("val_combo_seen2_train_frac", val_combo_seen2_train_frac),
    ):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value}.")
    parsed = check_perturbation_obs(
        adata, perturbation_key=perturbation_key, control_group=control_group, min_cells=1
    )
    perturbed = {c: g for c, g in parsed.items() if g}
    rng = np.random.default_rng(seed)
    train, test, test_groups = _simulation_split(
        perturbed, rng, train_gene_set_size, combo_seen2_train_frac
    )
    train_part = {c: perturbed[c] for c in train}
    train, val, val_groups = _simulation_split(
        train_part, rng, val_gene_set_size, val_combo_seen2_train_frac
    )
    controls = [c for c, g in parsed.items() if not g]
    result = {
        "train": sorted(controls + train),
        "val": val,
        "test": test,
        "test_subgroup": test_groups,
        "val_subgroup": val_groups,
    }
    if key_added is not None:
        where = dict.fromkeys(result["train"], "train")
        where.update(dict.fromkeys(val, "val"))
        where.update(dict.fromkeys(test, "test"))
        labels = adata.obs[perturbation_key].astype(str).map(where)
        adata.obs[key_added] = pd.Categorical(labels, categories=["train", "val", "test"])
    return result


def split_subgroups(split: dict[str, object], *, part: str = "test") -> pd.Series:
    """The subgroup of every held-out condition of a :func:`perturbation_split` result.

    Parameters
    ----------
    split
        The dictionary returned by :func:`perturbation_split`.
    part
        ``"test"`` or ``"val"``.

    Returns
    -------
    Series indexed by condition with the subgroup name.
    """
    groups: dict[str, Sequence[str]] = split[f"{part}_subgroup"]  # type: ignore[assignment]
    pairs = [(c, g) for g in SUBGROUPS for c in groups.get(g, [])]
    return pd.Series(dict(pairs), name="subgroup", dtype=object)
