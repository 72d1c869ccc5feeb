"""Constants shared across the package: special tokens and official default values."""

from __future__ import annotations

from typing import NamedTuple

PAD_TOKEN = "<pad>"
CLS_TOKEN = "<cls>"
EOC_TOKEN = "<eoc>"
#: Special tokens appended (in this order) to every vocabulary that lacks them.
SPECIAL_TOKENS: tuple[str, ...] = (PAD_TOKEN, CLS_TOKEN, EOC_TOKEN)

#: Number of expression bins of the official models (bin 0 = zero, 1..50 = quantiles).
N_BINS = 51
#: Value given to padding positions (official ``pad_value``).
PAD_VALUE = -2.0
#: Value given to masked positions during training (official ``mask_value``).
MASK_VALUE = -1.0
#: Value of the ``<cls>`` token in zero-shot embedding and pretraining.
CLS_VALUE_PRETRAIN = -2.0
#: Value of the ``<cls>`` token in the official fine-tuning tutorials.
CLS_VALUE_FINETUNE = 0.0
#: Maximum sequence length (CLS included) of the official embedding pipeline.
MAX_SEQ_LEN = 1200


class _TokenKeys(NamedTuple):
    """Names of the tensors in a minibatch (the one contract between data and module)."""

    #: ``(B, L)`` vocabulary ids, ``<cls>`` first.
    GENE_IDS: str = "gene_ids"
    #: ``(B, L)`` input values (binned expression; masked positions hold ``MASK_VALUE``).
    VALUES: str = "values"
    #: ``(B, L)`` bool, ``True`` at padding.
    PADDING_MASK: str = "padding_mask"
    #: ``(B, L)`` unmasked values, the targets of GEP/GEPC.
    TARGET_VALUES: str = "target_values"
    #: ``(B,)`` batch codes (scvi-tools ``REGISTRY_KEYS.BATCH_KEY``).
    BATCH: str = "batch"
    #: ``(B,)`` label codes (scvi-tools ``REGISTRY_KEYS.LABELS_KEY``).
    LABELS: str = "labels"
    #: ``(B,)`` row of each cell in its AnnData or stream.
    CELL_INDEX: str = "cell_index"
    #: ``(B, Lg)`` ids of the genes to generate (generative pretraining).
    GEN_GENE_IDS: str = "gen_gene_ids"
    #: ``(B, Lg)`` bool, ``True`` at padding of the generated genes.
    GEN_PADDING_MASK: str = "gen_padding_mask"
    #: ``(B, Lg)`` target values of the generated genes.
    GEN_TARGETS: str = "gen_targets"
    #: ``(B, L)`` modality id per token (multi-omic models, official ``mod_type``).
    MODALITY_IDS: str = "modality_ids"
    #: ``(B, L)`` perturbation flag per token (perturbation models, official ``pert_flags``).
    PERT_FLAGS: str = "pert_flags"
    #: ``(B, L)`` per-token loss weights of the DE-weighted perturbation MSE (``"wmse"``).
    DE_WEIGHTS: str = "de_weights"
    #: ``(B, G)`` raw counts of the count decoder's genes (the ``count`` objective).
    COUNTS: str = "counts"
    #: Key of the expression matrix in an scvi-tools minibatch (``REGISTRY_KEYS.X_KEY``).
    X: str = "X"
    #: Per-minibatch vocabulary id of each matrix column (streamed files differ in genes).
    COLUMN_VOCAB_IDS: str = "column_vocab_ids"


#: Keys of the tensor dictionaries produced by tokenization and consumed by the module.
TOKEN_KEYS = _TokenKeys()
