"""Multi-omic integration on MuData: RNA, protein and ATAC tokens with modality ids."""

from __future__ import annotations

import contextvars
import logging

import numpy as np
import scipy.sparse as sp
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager, AnnDataManagerValidationCheck

from scvi_scgpt.data import (
    GeneVocab,
    InMemorySource,
    ModalityLayout,
    feature_tokens,
    match_genes,
    modality_vocabulary,
)
from scvi_scgpt.data._modalities import modality_id
from scvi_scgpt.model._multiomic_setup import (
    ModalitySpec,
    check_mudata,
    modality_specs,
    mudata_fields,
)
from scvi_scgpt.model._scvi_compat import anndata_uuid, give_own_uuid
from scvi_scgpt.model._training_defaults import highly_variable_columns

logger = logging.getLogger(__name__)

#: Set while a saved or reference model is re-created on new data: its joint vocabulary is
#: kept as it is (features it lacks are simply not tokens), so the weights still fit.
KEEP_VOCAB: contextvars.ContextVar[bool] = contextvars.ContextVar("keep_vocab", default=False)

#: Highly variable peaks kept by default for ATAC (the scGPT paper used 4,000).
N_TOP_PEAKS = 4000


def is_mudata(data) -> bool:
    """Whether ``data`` is a MuData (without importing mudata for AnnData users)."""
    return type(data).__name__ == "MuData" and hasattr(data, "mod")


def _is_binary(matrix: sp.csr_matrix) -> bool:
    """Whether every stored value of ``matrix`` is 1 (a 0/1 matrix, e.g. binarised peaks)."""
    return matrix.nnz > 0 and bool(np.all(matrix.data == 1))


def joint_vocabulary(base: GeneVocab, new_tokens) -> GeneVocab:
    """``base`` with the tokens it lacks appended (new rows), specials kept where they are."""
    known = set(base.tokens)
    extra = [t for t in dict.fromkeys(map(str, new_tokens)) if t not in known]
    return GeneVocab([*base.tokens, *extra], add_specials=False) if extra else base


class MultiOmicMixin:
    """``setup_mudata`` and the joint (RNA + protein + ATAC) view of a MuData's cells.

    A model created from a MuData tokenizes every cell from the modalities it was measured
    in: genes as gene tokens, proteins as ``p_`` tokens, peaks as region tokens, each modality
    binned on its own and tagged with its modality id (official ``mod_type``).
    """

    @classmethod
    def setup_mudata(
        cls,
        mdata,
        rna_layer: str | None = None,
        protein_layer: str | None = None,
        atac_layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        modalities: dict[str, str] | None = None,
        gene_symbols_key: str | None = None,
        **kwargs,
    ) -> None:
        """Register a MuData of two or three of RNA, protein and ATAC.

        As scvi-tools' ``TOTALVI`` / ``MULTIVI``, ``modalities`` maps setup arguments to
        ``mdata.mod`` keys, e.g. ``{"rna_layer": "rna", "protein_layer": "prot"}``; a
        modality is used when its ``*_layer`` argument is mapped (the layer itself may be
        ``None`` for ``.X``), and an argument left out of the mapping refers to the top-level
        MuData (``batch_key`` in ``mdata.obs``).

        Mosaic data: a modality may hold a subset of the cells. A cell that is not in a
        modality's ``obs``, or has an all-zero row there, gets no token of that modality.
        ``batch_key`` and ``labels_key`` must then be columns of ``mdata.obs``.
        :func:`scvi_scgpt.tl.measured_modalities` gives a per-cell "which modalities" key
        that can serve as ``batch_key`` (DAR then corrects modality batches, as the paper).

        Parameters
        ----------
        mdata
            MuData; modalities keyed e.g. ``"rna"``, ``"prot"``, ``"atac"``.
        rna_layer, protein_layer, atac_layer
            Layer of each modality (``None``: ``.X``). Values: raw counts or any
            non-negative normalisation (binning is per cell and modality).
        batch_key, labels_key
            Batch and label columns.
        modalities
            Setup argument → ``mdata.mod`` key.
        gene_symbols_key
            Column of the RNA modality's ``var`` holding gene symbols.

        Notes
        -----
        Writes ``mdata.uns["_scvi_uuid"]``, ``mdata.uns["_scvi_manager_uuid"]`` and the codes
        ``_scvi_batch`` / ``_scvi_labels`` into ``mdata.obs`` (or the modality's ``obs`` named
        in ``modalities``), as every scvi-tools model. The values are not modified; on invalid
        input nothing is written.
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        args = setup_method_args["setup_args"]
        specs = check_mudata(mdata, args)
        known = cls._setup_adata_manager_store.get(anndata_uuid(mdata))
        if known is not None and known.adata is not mdata:
            give_own_uuid(mdata)
        manager = AnnDataManager(
            fields=mudata_fields(args, specs),
            setup_method_args=setup_method_args,
            # mosaic data: a modality may lack cells (scvi-tools asks for full pairing)
            validation_checks=AnnDataManagerValidationCheck(check_fully_paired_mudata=False),
        )
        manager.register_fields(mdata, **kwargs)
        cls.register_manager(manager)

    # ------------------------------------------------------------------ the model's layout
    def _specs(self, mdata=None) -> list[ModalitySpec]:
        manager = self.get_anndata_manager(mdata if mdata is not None else self.adata)
        return modality_specs(manager.registry["setup_args"])

    def _init_modalities(self, vocab: GeneVocab) -> dict:
        """Joint vocabulary, modality vocabulary and the architecture options they imply."""
        mdata = self.adata
        specs = self._specs()
        new_tokens = []
        for spec in specs:
            names, _ = self._feature_names(mdata, spec)
            if spec.name != "RNA":
                new_tokens += feature_tokens(spec.name, names)
        self.vocab_ = vocab if KEEP_VOCAB.get() else joint_vocabulary(vocab, new_tokens)
        self.modality_vocab_ = modality_vocabulary(s.name for s in specs)
        return {
            "use_mod": True,
            "n_mod_tokens": len(self.modality_vocab_),
            "mod_pad_id": modality_id(self.modality_vocab_, "<pad>"),
        }

    def _feature_names(self, mdata, spec: ModalitySpec) -> tuple[np.ndarray, str]:
        adata = mdata.mod[spec.mod_key]
        key = (
            self.get_anndata_manager(mdata, required=True)
            .registry["setup_args"]
            .get("gene_symbols_key")
        )
        where = f"mdata.mod[{spec.mod_key!r}]"
        if spec.name == "RNA" and key is not None:
            return np.asarray(adata.var[key].astype(str)), f"{where}.var[{key!r}]"
        return np.asarray(adata.var_names.astype(str)), f"{where}.var_names"

    def _modality_vocab_ids(self, mdata, spec: ModalitySpec) -> tuple[np.ndarray, np.ndarray]:
        """Vocabulary id and token name of each feature of one modality (``-1``: unused)."""
        names, source = self._feature_names(mdata, spec)
        if spec.name == "RNA":
            ids = match_genes(names, self.vocab_, source=source).vocab_ids.copy()
            tokens = np.asarray(self.vocab_.tokens, dtype=object)[np.maximum(ids, 0)]
            tokens[ids < 0] = ""
        else:
            tokens = np.asarray(feature_tokens(spec.name, names), dtype=object)
            ids = self.vocab_.lookup(list(tokens), default=-1)
        subset = getattr(self, "gene_subset_", None)
        if subset is not None:
            ids = np.where(np.isin(tokens, np.asarray(subset, dtype=object)), ids, -1)
        return ids, tokens

    def _check_query_modalities(self, mdata) -> None:
        own = [s.name for s in self._specs()]
        manager = self.get_anndata_manager(mdata)
        if manager is not None:
            theirs = [s.name for s in modality_specs(manager.registry["setup_args"])]
        else:
            theirs = [s.name for s in self._specs() if s.mod_key in mdata.mod]
        lacking = [m for m in own if m not in theirs]
        if lacking:
            raise ValueError(
                f"The model was trained with {own}; this MuData lacks {lacking}. Give every "
                "modality (cells not measured in one may be absent from its obs or all-zero)."
            )

    # ------------------------------------------------------------------ overrides for MuData
    def _validate_anndata(self, adata=None, copy_if_view: bool = True):
        if adata is not None and is_mudata(adata) and is_mudata(self.adata):
            self._check_query_modalities(adata)
        elif adata is not None and is_mudata(adata) != is_mudata(self.adata):
            kind = "MuData" if is_mudata(self.adata) else "AnnData"
            raise ValueError(f"This model was set up with a {kind}; pass a {kind}.")
        return super()._validate_anndata(adata, copy_if_view=copy_if_view)

    def _column_vocab_ids(self, adata) -> np.ndarray:
        if not is_mudata(adata):
            return super()._column_vocab_ids(adata)
        ids = np.concatenate([self._modality_vocab_ids(adata, s)[0] for s in self._specs(adata)])
        if not (ids >= 0).any():
            raise ValueError("No feature of this MuData is in the model's vocabulary.")
        return ids

    def _log_gene_coverage(self, adata):
        if not is_mudata(adata):
            return super()._log_gene_coverage(adata)
        for spec in self._specs(adata):
            ids, _ = self._modality_vocab_ids(adata, spec)
            logger.info(
                "SCGPT %s features in the vocabulary: %d / %d.",
                spec.name,
                int((ids >= 0).sum()),
                len(ids),
            )
        return None

    def _cell_source(self, adata) -> InMemorySource:
        if not is_mudata(adata):
            return super()._cell_source(adata)
        mdata = adata
        manager = self.get_anndata_manager(mdata, required=True)
        blocks, ids, column_modality, presence = [], [], [], []
        measured = np.zeros((mdata.n_obs, len(self.modality_vocab_)), dtype=bool)
        specs = list(self._specs(mdata))
        for spec in specs:
            mod = mdata.mod[spec.mod_key]
            matrix = sp.csr_matrix(manager.get_from_registry(spec.registry_key))
            rows = mdata.obs_names.get_indexer(mod.obs_names)
            # place the modality's cells on their MuData rows; absent cells stay empty
            place = sp.csr_matrix(
                (np.ones(len(rows), dtype=np.float32), (rows, np.arange(len(rows)))),
                shape=(mdata.n_obs, mod.n_obs),
            )
            aligned = (place @ matrix).tocsr()
            aligned.eliminate_zeros()
            mid = modality_id(self.modality_vocab_, spec.name)
            measured[:, mid] = np.diff(aligned.indptr) > 0
            blocks.append(aligned)
            ids.append(self._modality_vocab_ids(mdata, spec)[0])
            column_modality.append(np.full(mod.n_vars, mid, dtype=np.int64))
            if spec.name == "ATAC" and _is_binary(aligned):
                presence.append(mid)
        layout = ModalityLayout(
            np.concatenate(column_modality),
            measured,
            cls_id=modality_id(self.modality_vocab_, "<cls>"),
            pad_id=modality_id(self.modality_vocab_, "<pad>"),
            presence_only=tuple(presence),
        )
        names = np.concatenate([np.asarray(mdata.mod[s.mod_key].var_names) for s in specs])
        return InMemorySource(
            sp.hstack(blocks, format="csr"),
            mdata.obs_names,
            names,
            mdata.obs,
            column_vocab_ids=np.concatenate(ids),
            batch_codes=self._obs_codes(mdata, REGISTRY_KEYS.BATCH_KEY),
            label_codes=self._obs_codes(mdata, REGISTRY_KEYS.LABELS_KEY),
            modalities=layout,
        )

    def _obs_codes(self, mdata, registry_key: str) -> np.ndarray:
        """Per-cell codes of a registered obs field, in ``mdata.obs_names`` order."""
        manager = self.get_anndata_manager(mdata, required=True)
        codes = np.asarray(manager.get_from_registry(registry_key)).ravel()
        arg = {REGISTRY_KEYS.BATCH_KEY: "batch_key", REGISTRY_KEYS.LABELS_KEY: "labels_key"}[
            registry_key
        ]
        mod_key = (manager.registry["setup_args"].get("modalities") or {}).get(arg)
        if mod_key is None:
            return codes
        rows = mdata.mod[mod_key].obs_names.get_indexer(mdata.obs_names)
        return codes[rows]

    def _select_hvgs(self, n_top_genes):
        """Features to train on: RNA HVGs, all proteins, highly variable peaks."""
        if not is_mudata(self.adata):
            return super()._select_hvgs(n_top_genes)
        counts = n_top_genes if isinstance(n_top_genes, dict) else {"RNA": n_top_genes}
        unknown = sorted(set(counts) - {"RNA", "Protein", "ATAC"})
        if unknown:
            raise ValueError(f"n_top_genes keys must be RNA, Protein or ATAC, not {unknown}.")
        source = self._cell_source(self.adata)
        keep: list[str] = []
        start = 0
        for spec in self._specs():
            ids, tokens = self._modality_vocab_ids(self.adata, spec)
            block = source.matrix[:, start : start + len(ids)]
            start += len(ids)
            usable = np.flatnonzero(ids >= 0)
            n_top = counts.get(spec.name, N_TOP_PEAKS if spec.name == "ATAC" else None)
            if n_top is None or len(usable) <= n_top:
                keep += list(tokens[usable])
                continue
            mid = modality_id(self.modality_vocab_, spec.name)
            cells = np.flatnonzero(source.modalities.measured[:, mid])
            sub = block[cells][:, usable]
            if spec.name == "ATAC":
                # binarised accessibility: the peaks open in closest to half of the cells
                frac = np.asarray((sub > 0).mean(0)).ravel()
                chosen = np.argsort(-(frac * (1 - frac)), kind="stable")[:n_top]
            else:
                batches = source.batch_codes[cells]
                chosen = highly_variable_columns(
                    sub,
                    n_top,
                    batches if len(np.unique(batches)) > 1 else None,
                    counts_error=(
                        f"Selecting highly variable {spec.name} features (seurat_v3) needs "
                        "raw counts; register the counts layer or pass n_top_genes=None."
                    ),
                )
                chosen = np.flatnonzero(chosen)
            keep += list(tokens[usable[np.sort(chosen)]])
        return keep

    def _collator_inputs(self, collator: str) -> dict:
        if collator != "multiomic":
            if is_mudata(self.adata):
                raise ValueError(
                    "This model was set up with a MuData: train it with train('multiomic') "
                    "(or objectives of that task)."
                )
            return super()._collator_inputs(collator)
        if not is_mudata(self.adata):
            raise ValueError(
                "train('multiomic') needs a MuData set up with SCGPT.setup_mudata; for an "
                "AnnData use 'integration' or 'gep'."
            )
        source = self._cell_source(self.adata)
        return {
            "cell_rows": True,
            "collator": {
                "matrix": source.matrix,
                "modalities": source.modalities,
                "batch_codes": source.batch_codes,
                "label_codes": source.label_codes,
            },
        }
