"""GEARS condition names: ``"ctrl"``, ``"A+ctrl"``, ``"A+B"``."""

from __future__ import annotations

from collections.abc import Sequence

CONTROL = "ctrl"


def parse_condition(condition: str, *, control: str = CONTROL) -> tuple[str, ...]:
    """Perturbed genes of a GEARS condition name.

    Parameters
    ----------
    condition
        ``"ctrl"`` (no gene), ``"A+ctrl"`` / ``"ctrl+A"`` (one gene) or ``"A+B"`` (two genes).
    control
        The control token.

    Returns
    -------
    The perturbed genes, in the order written (empty for the control).
    """
    if not isinstance(condition, str):
        raise TypeError(f"Condition must be a string, not {type(condition).__name__}.")
    text = condition.strip()
    if text == control:
        return ()
    parts = text.split("+")
    if not text or any(not p.strip() for p in parts):
        raise ValueError(
            f"Malformed condition {condition!r}: expected {control!r}, 'A+{control}' or 'A+B'."
        )
    genes = tuple(p.strip() for p in parts if p.strip() != control)
    if not genes:
        raise ValueError(f"Malformed condition {condition!r}: no perturbed gene.")
    if len(set(genes)) != len(genes):
        raise ValueError(f"Malformed condition {condition!r}: a gene is repeated.")
    return genes


def format_condition(genes: Sequence[str], *, control: str = CONTROL) -> str:
    """GEARS spelling of a set of perturbed genes (``"ctrl"``, ``"A+ctrl"`` or ``"A+B"``).

    Parameters
    ----------
    genes
        Zero, one or more perturbed genes.
    control
        The control token.

    Returns
    -------
    The condition name.
    """
    genes = [str(g) for g in genes]
    if not genes:
        return control
    if len(genes) == 1:
        return f"{genes[0]}+{control}"
    return "+".join(genes)
