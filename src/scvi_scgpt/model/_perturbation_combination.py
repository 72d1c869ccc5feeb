"""Training inputs of the perturbation options: the additive prior and the WMSE weights.

``combination="additive_residual"``: a double ``A+B`` is fed the control cell plus the
observed single changes ``delta_A + delta_B`` (training singles' means minus the training
control mean), so the network only has to learn the interaction residual; after training,
the residual is shrunk towards 0 by a gate in ``[0, 1]`` fitted on the validation doubles.
``perturbation_loss="wmse"``: each condition's genes are weighted by ``|Welch t|`` against
the control cells.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scvi_scgpt.dataloaders import PERTURBATION_KEY
from scvi_scgpt.tl._perturbation_data import condition_genes, dense_rows
from scvi_scgpt.tl._perturbation_scores import abs_t_weights

#: ``train("perturbation", combination=...)`` modes.
COMBINATIONS = ("official", "additive_residual")


def check_combination(task: str, combination: str) -> str:
    """Validate ``train(..., combination=...)``."""
    if combination not in COMBINATIONS:
        raise ValueError(
            f"Unknown combination mode {combination!r}; choose one of {list(COMBINATIONS)}."
        )
    if combination != "official" and task != "perturbation":
        raise ValueError(f"combination={combination!r} is an option of task='perturbation'.")
    return combination


def group_moments(
    matrix, codes: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cells, mean and variance (``ddof=1``) per group, from a sparse indicator product.

    Parameters
    ----------
    matrix
        ``(n_cells, n_genes)`` expression (sparse or dense); never densified whole.
    codes
        ``(n_cells,)`` group of each cell (``-1``: ignored).
    n_groups
        Number of groups.
    """
    keep = np.flatnonzero(codes >= 0)
    indicator = sp.csr_matrix(
        (np.ones(len(keep)), (codes[keep], keep)), shape=(n_groups, matrix.shape[0])
    )
    counts = np.asarray(indicator.sum(1)).ravel()
    squares = matrix.multiply(matrix) if sp.issparse(matrix) else np.asarray(matrix) ** 2
    s1 = np.asarray((indicator @ matrix).todense() if sp.issparse(matrix) else indicator @ matrix)
    s2 = indicator @ squares
    s2 = np.asarray(s2.todense() if sp.issparse(s2) else s2)
    n = counts[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(n > 0, s1 / np.maximum(n, 1), 0.0)
        var = np.where(n > 1, (s2 - n * mean**2) / np.maximum(n - 1, 1), 0.0)
    return counts, mean, np.maximum(var, 0.0)


def de_weight_matrix(counts, mean, var, control_code: int) -> np.ndarray:
    """``|Welch t|`` of each group against the control group (see :func:`abs_t_weights`).

    An infinite ``|t|`` (no variance in either group, different means: the most separated
    genes) weighs as the group's largest finite ``|t|``; a group without any change, too few
    cells, and the control itself weigh every gene 1.
    """
    n0, m0, v0 = counts[control_code], mean[control_code], var[control_code]
    n = counts[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (mean - m0) / np.sqrt(var / n + v0 / max(n0, 1))
    t = abs_t_weights(t)
    flat = (t.sum(1) <= 0) | (counts < 2) | (n0 < 2)
    t[flat] = 1.0
    t[control_code] = 1.0
    return t.astype(np.float32)


def additive_offsets(
    conditions: list[str],
    control: str,
    counts: np.ndarray,
    mean: np.ndarray,
    gene_names: pd.Index,
    train_conditions: set[str],
) -> tuple[np.ndarray, pd.DataFrame]:
    """Per condition, ``delta_A + delta_B`` for doubles; the training singles' changes.

    Raises
    ------
    ValueError
        When a training double lacks a training single (the prior needs it), naming it.
    """
    code = {c: i for i, c in enumerate(conditions)}
    ctrl_mean = mean[code[control]]
    deltas = {}
    for c in conditions:
        genes = condition_genes(c, control=control)
        if len(genes) == 1 and counts[code[c]] > 0:
            deltas[genes[0]] = mean[code[c]] - ctrl_mean
    offsets = np.zeros_like(mean, dtype=np.float32)
    for c in conditions:
        genes = condition_genes(c, control=control)
        if len(genes) < 2:
            continue
        missing = [g for g in genes if g not in deltas]
        if missing and c in train_conditions:
            raise ValueError(
                f"combination='additive_residual' needs the single of {missing[0]!r} for the "
                f"training double {c!r}: {missing[0]}+{control} has no training cells. Move "
                f"{c!r} out of training or add {missing[0]}'s single to it."
            )
        offsets[code[c]] = sum((deltas[g] for g in genes if g in deltas), 0.0)
    table = pd.DataFrame(
        np.stack(list(deltas.values())) if deltas else np.zeros((0, len(gene_names))),
        index=pd.Index(list(deltas)),
        columns=gene_names,
    )
    return offsets, table


def residual_gate(model: np.ndarray, prior: np.ndarray, observed: np.ndarray) -> float:
    """Least-squares shrinkage ``g`` of ``prior + g (model - prior)`` to ``observed``, in [0, 1].

    Parameters
    ----------
    model, prior, observed
        ``(n_doubles, n_genes)`` predicted, additive-prior and observed means (validation
        doubles); non-finite genes are ignored.
    """
    r = model - prior
    o = observed - prior
    ok = np.isfinite(r) & np.isfinite(o)
    den = float((r[ok] ** 2).sum())
    if den <= 0:
        return 0.0
    return float(np.clip((r[ok] * o[ok]).sum() / den, 0.0, 1.0))


class CombinationMixin:
    """The perturbation options of ``train``: additive-residual doubles and the WMSE loss.

    Used by :class:`~scvi_scgpt.model._perturbation.PerturbationMixin`, which provides the
    prediction helpers (``_predict_cells``, ``_control_rows``, ...). The state of an
    additive-residual model is ``perturbation_combination_`` (``mode``, the training
    singles' observed changes ``single_deltas``, the training ``control_mean`` they refer to
    and the residual ``gate``), saved with it.
    """

    def _option_inputs(self, adata, matrix, conditions, control, split) -> dict:
        """Additive-prior offsets and WMSE weights of ``train``'s perturbation options."""
        options = getattr(self, "_perturbation_options", None) or {}
        combination = options.get("combination", "official")
        loss = options.get("loss", "mse")
        codes = np.asarray(self.adata_manager.get_from_registry(PERTURBATION_KEY)).ravel()
        codes = codes.astype(np.int64)
        out: dict = {}
        if combination == "additive_residual":
            train = codes if split is None else np.where(split == "train", codes, -1)
            counts, mean, _ = group_moments(matrix, train, len(conditions))
            if counts[conditions.index(control)] == 0:
                raise ValueError("combination='additive_residual' needs training control cells.")
            present = {conditions[c] for c in np.unique(train[train >= 0])}
            offsets, deltas = additive_offsets(
                conditions, control, counts, mean, pd.Index(adata.var_names), present
            )
            out["input_offsets"] = offsets
            self.perturbation_combination_ = {
                "mode": combination,
                "single_deltas": deltas,
                "control_mean": pd.DataFrame(
                    mean[[conditions.index(control)]],
                    index=pd.Index([control]),
                    columns=pd.Index(adata.var_names),
                ),
                "gate": None,
            }
        else:
            self.perturbation_combination_ = None
        if loss == "wmse":  # training and validation cells (the loss weights of both)
            seen = (
                codes if split is None else np.where(np.isin(split, ("train", "val")), codes, -1)
            )
            counts, mean, var = group_moments(matrix, seen, len(conditions))
            out["gene_weights"] = de_weight_matrix(counts, mean, var, conditions.index(control))
        return out

    def _fit_residual_gate(self, n_control_cells: int = 200, seed: int = 0) -> None:
        """Choose the residual gate on the validation doubles (additive-residual models)."""
        state = getattr(self, "perturbation_combination_", None)
        if not state or state.get("mode") != "additive_residual":
            return
        adata = self.adata
        key, control = self._perturbation_setup(adata)
        labels = adata.obs[key].astype(str).to_numpy()
        split, source = self._training_split(adata)
        val = [] if split is None else sorted(set(labels[split == "val"]))
        doubles = [c for c in val if len(condition_genes(c, control=control)) == 2]
        if not doubles:
            warnings.warn(
                f"No validation doubles ('val' cells of {source}) to choose the residual "
                "gate: it is set to 0, the additive prior.",
                UserWarning,
                stacklevel=3,
            )
            state["gate"] = 0.0
            return
        state["gate"] = 1.0
        # the training control cells are the inputs: held-out controls stay out of the gate
        rows = self._control_rows(adata, key, control, n_control_cells, seed, split == "train")
        model, prior = [], []
        for c in doubles:
            m, p, _ = self._additive_residual(adata, rows, condition_genes(c, control=control))
            model.append(m)
            prior.append(p)
        matrix = self._expression(adata)
        observed = [
            dense_rows(matrix, np.flatnonzero((labels == c) & (split == "val"))).mean(0)
            for c in doubles
        ]
        state["gate"] = residual_gate(np.stack(model), np.stack(prior), np.stack(observed))

    def _additive_residual(
        self, adata, rows, genes, *, keep_cells: bool = False, **kwargs
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Model and additive-prior means (and model cells) of a double's prediction."""
        state = self.perturbation_combination_
        deltas = state["single_deltas"]
        ctrl_mean = dense_rows(self._expression(adata), rows).mean(0)
        # the prior's control: the training control mean the singles' changes refer to, so
        # the prior does not vary with the sampled control cells (they enter the residual only)
        shift = self._prior_control(adata, ctrl_mean) - ctrl_mean
        kwargs.setdefault("gene_chunk_size", int(self.tokenizer_config.max_seq_len))
        kwargs.setdefault("batch_size", None)
        kwargs.setdefault("precision", "32")
        offset = np.zeros(adata.n_vars)
        for g in genes:
            if g in deltas.index:
                delta = deltas.loc[g].reindex(adata.var_names).to_numpy(dtype=float)
            else:  # an unseen single: the model's own predicted change
                cols = self._perturbed_columns(adata, [g])
                single, _ = self._predict_cells(adata, rows, cols, keep_cells=False, **kwargs)
                delta = single - ctrl_mean
            offset += np.nan_to_num(delta)
        cols = self._perturbed_columns(adata, list(genes))
        mean, cells = self._predict_cells(
            adata, rows, cols, keep_cells=keep_cells, offset=offset, **kwargs
        )
        cells = None if cells is None else (cells + shift).astype(np.float32)
        return mean + shift, ctrl_mean + shift + offset, cells

    def _prior_control(self, adata, rows_mean: np.ndarray) -> np.ndarray:
        """The stored training control mean on ``adata``'s genes (``rows_mean`` where absent)."""
        stored = self.perturbation_combination_.get("control_mean")
        if stored is None:
            return rows_mean
        values = stored.iloc[0].reindex(adata.var_names).to_numpy(dtype=float)
        return np.where(np.isfinite(values), values, rows_mean)
