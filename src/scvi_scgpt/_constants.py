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
    GENE_IDS: str = "gene_ids"
    VALUES: str = "values"
    PADDING_MASK: str = "padding_mask"
    TARGET_VALUES: str = "target_values"
    CELL_INDEX: str = "cell_index"
    GEN_GENE_IDS: str = "gen_gene_ids"
    GEN_PADDING_MASK: str = "gen_padding_mask"
    GEN_TARGETS: str = "gen_targets"


#: Keys of the tensor dictionaries produced by tokenization and consumed by the module.
TOKEN_KEYS = _TokenKeys()
