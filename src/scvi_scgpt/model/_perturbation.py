"""Perturbation prediction (``predict_perturbation``) and reverse perturbation."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from functools import wraps
from itertools import combinations

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS

from scvi_scgpt._constants import TOKEN_KEYS
from scvi_scgpt.dataloaders import PERTURBATION_KEY
from scvi_scgpt.model._perturbation_combination import CombinationMixin
from scvi_scgpt.model._perturbation_setup import training_split, warn_if_leaking
from scvi_scgpt.model._training import TrainingMixin
from scvi_scgpt.tl._perturbation_data import canonical_condition, condition_genes, dense_rows


class PerturbationMixin(CombinationMixin):
    """Predict the expression response to gene perturbations, and run it backwards.

    Needs ``SCGPT.setup_anndata(adata, perturbation_key=...)`` and a perturbation model
    (``train("perturbation")``, or an official ``TransformerGenerator`` checkpoint).
    """

    # ------------------------------------------------------------------ setup facts
    def _perturbation_setup(self, adata: AnnData) -> tuple[str, str]:
        args = self.get_anndata_manager(adata, required=True).registry["setup_args"]
        if args.get("perturbation_key") is None:
            raise ValueError(
                "This AnnData was set up without perturbation_key: "
                "SCGPT.setup_anndata(adata, perturbation_key='condition', control_group='ctrl')."
            )
        return args["perturbation_key"], args.get("control_group", "ctrl")

    def _training_split(self, adata: AnnData) -> tuple[np.ndarray | None, str]:
        """Per cell ``"train"`` / ``"val"`` / ``"test"`` (``""``: unused) of the training.

        While ``train`` runs, the cells its ``external_indexing`` holds out, else the
        registered ``split_key`` column (``obs["split"]`` without one); after it, the cells
        it used (``train_indices_``, ...). See :func:`training_split`.
        """
        return training_split(self, adata)

    @wraps(TrainingMixin.train)
    def train(self, *args, **kwargs):  # noqa: D102 (TrainingMixin.train's docstring)
        # cells held out through datasplitter_kwargs={"external_indexing": ...} must stay out
        # of the statistics the perturbation collator and the residual gate compute
        try:
            bound = inspect.signature(TrainingMixin.train).bind(self, *args, **kwargs)
        except TypeError:  # let train raise its own error
            return super().train(*args, **kwargs)
        bound.apply_defaults()
        splitter = bound.arguments.get("datasplitter_kwargs") or {}
        self._heldout_indexing = splitter.get("external_indexing")
        self._training_now, self._split_logged = True, False
        setup = self.adata_manager.registry["setup_args"]
        try:
            if bound.arguments["task"] == "perturbation" and setup.get("perturbation_key"):
                warn_if_leaking(*self._training_split(self.adata), stacklevel=3)
            return super().train(*args, **kwargs)
        finally:
            self._heldout_indexing, self._training_now = None, False

    def _perturbed_columns(self, adata: AnnData, genes: Sequence[str]) -> np.ndarray:
        """Matrix columns of perturbed genes; each must be a gene the model represents."""
        names, source = self._gene_names(adata)
        vocab_ids = self._column_vocab_ids(adata)
        position = {str(g): i for i, g in enumerate(names)}
        columns = []
        for gene in genes:
            col = position.get(str(gene))
            if col is None:
                raise ValueError(f"Perturbed gene {gene!r} is not a gene of {source}.")
            if vocab_ids[col] < 0:
                raise ValueError(
                    f"Perturbed gene {gene!r} is not in the model's vocabulary (or training "
                    "genes): the model cannot represent its perturbation."
                )
            columns.append(col)
        return np.asarray(columns, dtype=np.int64)

    def _collator_inputs(self, collator: str) -> dict:
        """Control cells, perturbed genes and held-out cells for the paired collator."""
        if collator != "paired_control":
            return super()._collator_inputs(collator)
        adata = self.adata
        key, control = self._perturbation_setup(adata)
        manager = self.adata_manager
        mapping = manager.get_state_registry(PERTURBATION_KEY).categorical_mapping
        perturbed = [
            self._perturbed_columns(adata, condition_genes(str(c), control=control))
            for c in mapping
        ]
        labels = adata.obs[key].astype(str).to_numpy()
        is_control = labels == control
        split, _ = self._training_split(adata)
        if split is not None:
            is_control &= split == "train"
        rows = np.flatnonzero(is_control)
        matrix = manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        control_labels = None
        if manager.registry["setup_args"].get("labels_key") is not None:
            codes = np.asarray(manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).ravel()
            control_labels = codes[rows]
        inputs: dict = {
            "collator": {
                "controls": matrix[rows],
                "control_labels": control_labels,
                "perturbed_columns": perturbed,
            }
            | self._option_inputs(adata, matrix, [str(c) for c in mapping], control, split)
        }
        if split is not None and getattr(self, "_heldout_indexing", None) is None:
            inputs["splitter"] = {
                "external_indexing": [np.flatnonzero(split == p) for p in ("train", "val", "test")]
            }
        return inputs

    # ------------------------------------------------------------------ prediction
    def _parse_requests(
        self, adata: AnnData, perturbations, control: str
    ) -> tuple[list[str], list[np.ndarray]]:
        if isinstance(perturbations, str) or not isinstance(perturbations, Sequence):
            perturbations = [perturbations]
        if not len(perturbations):
            raise ValueError("No perturbation asked for.")
        names, columns = [], []
        for item in perturbations:
            genes = condition_genes(item, control=control)
            columns.append(self._perturbed_columns(adata, genes))
            names.append(item if isinstance(item, str) else canonical_condition(item))
        return names, columns

    def _control_rows(
        self,
        adata: AnnData,
        key: str,
        control: str,
        n_control_cells: int | None,
        seed: int,
        among: np.ndarray | None = None,
    ) -> np.ndarray:
        """Control cells (a seeded subset of ``n_control_cells``), within the mask ``among``."""
        is_control = adata.obs[key].astype(str).to_numpy() == control
        rows = np.flatnonzero(is_control if among is None else is_control & among)
        if not len(rows):
            raise ValueError(f"No control cells ({key} == {control!r}) in this AnnData.")
        if n_control_cells is not None:
            if n_control_cells < 1:
                raise ValueError(f"n_control_cells must be >= 1, got {n_control_cells}.")
            if n_control_cells < len(rows):
                rng = np.random.default_rng(seed)
                rows = np.sort(rng.choice(rows, n_control_cells, replace=False))
        return rows

    def _predict_cells(
        self,
        adata: AnnData,
        rows: np.ndarray,
        perturbed: np.ndarray,
        *,
        gene_chunk_size: int,
        batch_size: int | None,
        precision: str,
        keep_cells: bool,
        offset: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Mean (and per-cell) predictions over every representable gene, chunk by chunk.

        Each chunk holds ``gene_chunk_size`` genes plus the perturbed genes, so the flags are
        always seen and activation memory does not grow with the number of genes.
        ``offset`` (per column) is added to the control cells' input values (additive prior).
        """
        vocab_ids = self._column_vocab_ids(adata)
        usable = np.flatnonzero(vocab_ids >= 0)
        others = np.setdiff1d(usable, perturbed)
        n_genes = adata.n_vars
        total = np.full(n_genes, np.nan)
        cells = np.full((len(rows), n_genes), np.nan, np.float32) if keep_cells else None
        tokenizer = dataclasses.replace(
            self.tokenizer_config,
            n_bins=None,
            include_zero_genes=True,
            allow_empty_cells=True,
            cls_value=0.0,
            pad_value=0.0,
        )
        pert_ids = torch.as_tensor(vocab_ids[perturbed], device=self.device)
        shift = None
        if offset is not None:
            by_vocab = np.zeros(len(self.vocab_), dtype=np.float32)
            by_vocab[vocab_ids[usable]] = np.nan_to_num(offset[usable])
            shift = torch.as_tensor(by_vocab, device=self.device)
        module = self.module
        self.module.eval()
        chunks = [others[i : i + gene_chunk_size] for i in range(0, len(others), gene_chunk_size)]
        for chunk in chunks or [others[:0]]:
            cols = np.concatenate([perturbed, chunk])
            col_ids = np.full(n_genes, -1, dtype=np.int64)
            col_ids[cols] = vocab_ids[cols]
            position = np.full(len(self.vocab_), -1, dtype=np.int64)
            position[vocab_ids[cols]] = cols
            config = dataclasses.replace(tokenizer, max_seq_len=len(cols) + 1)

            def step(t, _positions):
                ids = t[TOKEN_KEYS.GENE_IDS][:, 1:]  # no <cls> in the perturbation model
                values = t[TOKEN_KEYS.VALUES][:, 1:]
                pad = t[TOKEN_KEYS.PADDING_MASK][:, 1:]
                if shift is not None:
                    values = values + shift[ids].to(values.dtype) * (~pad).to(values.dtype)
                flags = torch.isin(ids, pert_ids).long()
                inf = module.inference(ids, values, pad, pert_flags=flags)
                tensors = {TOKEN_KEYS.VALUES: values}
                expr = module.generative(**module._get_generative_input(tensors, inf))["expr"]
                return ids.cpu().numpy(), expr.float().cpu().numpy(), pad.cpu().numpy()

            sums = np.zeros(n_genes)
            counts = np.zeros(n_genes)
            for positions, (ids, expr, pad) in self._run_batches(
                adata,
                rows,
                step,
                batch_size=batch_size,
                precision=precision,
                column_ids=col_ids,
                tokenizer=config,
                desc="Predicting perturbation",
            ):
                where = position[ids]
                keep = ~pad & (where >= 0)
                np.add.at(sums, where[keep], expr[keep])
                np.add.at(counts, where[keep], 1)
                if cells is not None:
                    r, c = np.nonzero(keep)
                    cells[positions[r], where[r, c]] = expr[r, c]
            # the perturbed genes are in every chunk: keep their first chunk's prediction
            fresh = np.isnan(total) & (counts > 0)
            total[fresh] = sums[fresh] / counts[fresh]
        return total, cells

    def predict_perturbation(
        self,
        perturbations: str | Sequence[str] | Sequence[Sequence[str]],
        *,
        adata: AnnData | None = None,
        n_control_cells: int | None = None,
        seed: int = 0,
        key_added: str | None = "scgpt_perturbation",
        return_cells: bool = False,
        gene_chunk_size: int | None = None,
        batch_size: int | None = None,
        precision: str = "32",
    ) -> pd.DataFrame | AnnData:
        """Predict the mean expression of control cells after perturbing genes.

        Each control cell's log-normalised expression is fed with perturbation flags on the
        perturbed genes, and the model predicts every gene, in chunks of
        ``gene_chunk_size`` genes (plus the perturbed ones), so memory stays bounded
        whatever the number of genes (the official code runs one dense all-gene batch).

        Parameters
        ----------
        perturbations
            One perturbation or a list of them; each is a string (``"A+B"``, ``"A+ctrl"``;
            a bare ``"A"`` is ``"A+ctrl"``) or a gene list (``[["A", "B"], ["C"]]`` asks for
            two). Genes may be unseen in training but must be measured genes in the model's
            vocabulary.
        adata
            AnnData set up with ``perturbation_key`` (default: the model's); its control cells
            are the inputs.
        n_control_cells
            Use a seeded random subset of this many control cells (default: all).
        seed
            Seed of that subset.
        key_added
            Key of ``adata.uns`` receiving the results; ``None`` writes nothing.
        return_cells
            Return per-cell predictions as an AnnData instead of the means.
        gene_chunk_size
            Genes per forward pass (default: the tokenizer's ``max_seq_len``, 1,536 in the
            perturbation preset).
        batch_size
            Cells per forward pass (default ``scvi.settings.batch_size``).
        precision
            ``"32"``, ``"bf16"`` or ``"16"`` (GPU).

        Returns
        -------
        DataFrame
            Predicted mean expression (input scale: log-normalised), indexed by the
            perturbations as given (gene lists in GEARS spelling), columns
            ``adata.var_names``; genes outside the vocabulary are ``NaN``.
        AnnData
            With ``return_cells``: one row per (perturbation, control cell), ``X`` the
            predictions, ``obs["perturbation"]`` and ``obs["control_cell"]``.

        With ``key_added``, writes ``adata.uns[key_added]``: ``"predictions"`` (the DataFrame
        of means), ``"control_mean"`` (observed mean of the control cells used, per gene) and
        ``"params"`` (perturbations, ``n_control_cells``, ``seed``, ``control_group``).

        Raises
        ------
        ValueError
            For a malformed perturbation, a gene that is not measured or not in the
            vocabulary, no control cells, or a model without a perturbation head. Nothing is
            written then.
        """
        adata = self._validate_anndata(adata)
        key, control = self._perturbation_setup(adata)
        if not hasattr(self.module, "pert_encoder"):
            raise ValueError(
                "This model has no perturbation-flag encoder: train it with "
                "model.train('perturbation') or load a TransformerGenerator checkpoint."
            )
        names, columns = self._parse_requests(adata, perturbations, control)
        rows = self._control_rows(adata, key, control, n_control_cells, seed)
        chunk = int(gene_chunk_size or self.tokenizer_config.max_seq_len)
        if chunk < 1:
            raise ValueError(f"gene_chunk_size must be >= 1, got {chunk}.")
        means, per_cell = [], []
        state = getattr(self, "perturbation_combination_", None)
        residual = bool(state) and state.get("mode") == "additive_residual"
        options = {"gene_chunk_size": chunk, "batch_size": batch_size, "precision": precision}
        for cols in columns:
            if residual and len(cols) == 2:
                genes = list(np.asarray(self._gene_names(adata)[0])[cols])
                mean, prior, cells = self._additive_residual(
                    adata, rows, genes, keep_cells=return_cells, **options
                )
                gate = 1.0 if state.get("gate") is None else float(state["gate"])
                mean = prior + gate * (mean - prior)
                if cells is not None:  # per cell: control cell + prior change + gated residual
                    ctrl_cells = dense_rows(self._expression(adata), rows)
                    base = ctrl_cells + (prior - ctrl_cells.mean(0))
                    cells = (base + gate * (cells - base)).astype(np.float32)
            elif residual and len(cols) == 1 and self._measured_single(adata, cols) is not None:
                # a single measured in training: its observed change, the prior of its doubles;
                # NaN on the genes the model cannot predict, as for every other prediction
                ctrl_cells = dense_rows(self._expression(adata), rows)
                shift = self._prior_control(adata, ctrl_cells.mean(0)) - ctrl_cells.mean(0)
                delta = self._measured_single(adata, cols) + shift
                delta[self._column_vocab_ids(adata) < 0] = np.nan
                mean = ctrl_cells.mean(0) + delta
                cells = (ctrl_cells + delta).astype(np.float32) if return_cells else None
            else:
                mean, cells = self._predict_cells(
                    adata, rows, cols, keep_cells=return_cells, **options
                )
            means.append(mean)
            per_cell.append(cells)
        index = pd.Index(names, name="perturbation")
        frame = pd.DataFrame(np.stack(means), index=index, columns=adata.var_names)
        if key_added is not None:
            adata.uns[key_added] = {
                "predictions": frame,
                "control_mean": dense_rows(self._expression(adata), rows).mean(0),
                "params": {
                    "perturbations": names,
                    "n_control_cells": len(rows),
                    "seed": int(seed),
                    "control_group": control,
                },
            }
        if not return_cells:
            return frame
        obs = pd.DataFrame(
            {
                "perturbation": np.repeat(names, len(rows)),
                "control_cell": np.tile(np.asarray(adata.obs_names)[rows], len(names)),
            }
        )
        obs.index = [f"{p}|{c}" for p, c in zip(obs["perturbation"], obs["control_cell"])]
        return AnnData(np.concatenate(per_cell), obs=obs, var=pd.DataFrame(index=adata.var_names))

    def _measured_single(self, adata: AnnData, cols: np.ndarray) -> np.ndarray | None:
        """The training single's observed change of an additive-residual model, or ``None``."""
        deltas = self.perturbation_combination_["single_deltas"]
        gene = str(np.asarray(self._gene_names(adata)[0])[cols][0])
        if gene not in deltas.index:
            return None
        return np.nan_to_num(deltas.loc[gene].reindex(adata.var_names).to_numpy(dtype=float))

    def _expression(self, adata: AnnData):
        return self.get_anndata_manager(adata, required=True).get_from_registry(
            REGISTRY_KEYS.X_KEY
        )

    def reverse_perturbation(
        self,
        target: AnnData | pd.Series | np.ndarray,
        *,
        candidates: Sequence[str | Sequence[str]] | None = None,
        top_k: int | None = 10,
        predictions: pd.DataFrame | None = None,
        adata: AnnData | None = None,
        n_control_cells: int | None = None,
        seed: int = 0,
        batch_size: int | None = None,
    ) -> pd.DataFrame:
        """Rank candidate perturbations by how well they explain an observed state.

        Every candidate is predicted from the control cells (:meth:`predict_perturbation`);
        candidates are ranked by the Euclidean distance, over the genes the model predicts,
        between the predicted and the observed response (mean minus control mean).

        Parameters
        ----------
        target
            Observed cells (AnnData with the same gene names; their mean is used) or a mean
            profile (Series indexed by gene, or an array over ``adata.var_names``).
        candidates
            Perturbations to rank (default: every single gene and every pair of genes
            perturbed in training, i.e. in the ``"train"`` conditions of ``adata``'s
            registered ``split_key``, or of ``obs["split"]`` without one; every condition
            when ``adata`` has no split).
        top_k
            Rows returned (``None``: all).
        predictions
            Predicted profiles of the candidates (a :meth:`predict_perturbation` result, whose
            index is then the candidate list), to rank several targets without predicting
            again.
        adata
            AnnData set up with ``perturbation_key`` (default: the model's).
        n_control_cells, seed, batch_size
            As in :meth:`predict_perturbation`.

        Returns
        -------
        DataFrame indexed by candidate (GEARS spelling, ``"A+B"`` / ``"A+ctrl"``), columns
        ``distance`` and ``rank`` (1 = best), best first. Nothing is written into ``adata``.
        """
        adata = self._validate_anndata(adata)
        key, control = self._perturbation_setup(adata)
        if predictions is not None:
            if candidates is not None:
                raise ValueError("Pass candidates or predictions, not both.")
            candidates = list(predictions.index)
        elif candidates is None:
            candidates = self._training_candidates(adata, key, control)
        names = [canonical_condition(c, control=control) for c in candidates]
        if isinstance(target, AnnData):
            missing = pd.Index(adata.var_names).difference(target.var_names)
            if len(missing):
                raise ValueError(f"target lacks genes {list(missing[:5])} of the model's data.")
            observed = dense_rows(target[:, adata.var_names].X).mean(0)
        elif isinstance(target, pd.Series):
            observed = target.reindex(adata.var_names).to_numpy(dtype=float)
        else:
            observed = np.asarray(target, dtype=float).ravel()
            if len(observed) != adata.n_vars:
                raise ValueError(f"target has {len(observed)} values for {adata.n_vars} genes.")
        if predictions is None:
            predictions = self.predict_perturbation(
                names,
                adata=adata,
                n_control_cells=n_control_cells,
                seed=seed,
                key_added=None,
                batch_size=batch_size,
            )
        pred = predictions.reindex(columns=adata.var_names).to_numpy(dtype=float)
        ok = np.isfinite(pred).all(0) & np.isfinite(observed)
        if not ok.any():
            raise ValueError("No gene is both predicted and observed.")
        distance = np.sqrt(((pred[:, ok] - observed[ok]) ** 2).sum(1))
        table = pd.DataFrame({"distance": distance}, index=pd.Index(names, name="candidate"))
        table = table.sort_values("distance", kind="stable")
        table["rank"] = np.arange(1, len(table) + 1)
        return table if top_k is None else table.head(int(top_k))

    def _training_candidates(self, adata: AnnData, key: str, control: str) -> list[str]:
        conditions = adata.obs[key].astype(str)
        split, _ = self._training_split(adata)
        if split is not None:
            conditions = conditions[split == "train"]
        genes = sorted(
            {g for c in conditions.unique() for g in condition_genes(c, control=control)}
        )
        if not genes:
            raise ValueError("No perturbed gene in training to build candidates from.")
        return [f"{g}+{control}" for g in genes] + [f"{a}+{b}" for a, b in combinations(genes, 2)]
