"""Pure-torch building blocks of scGPT (no AnnData, no scvi-tools)."""

from __future__ import annotations

from scvi_scgpt.nn._attention import PackedTokens, SelfAttention, flash_attn_available
from scvi_scgpt.nn._count_decoder import CountDecoder
from scvi_scgpt.nn._dsbn import DomainSpecificBatchNorm1d
from scvi_scgpt.nn._encoders import (
    BatchLabelEncoder,
    CategoryValueEncoder,
    ContinuousValueEncoder,
    GeneEncoder,
)
from scvi_scgpt.nn._heads import (
    AdversarialDiscriminator,
    ClsDecoder,
    ExprDecoder,
    MVCDecoder,
    grad_reverse,
)
from scvi_scgpt.nn._perturbation import AffineExprDecoder, PerturbationFlagEncoder
from scvi_scgpt.nn._transformer import TransformerEncoder, TransformerEncoderLayer

__all__ = [
    "AdversarialDiscriminator",
    "AffineExprDecoder",
    "BatchLabelEncoder",
    "CategoryValueEncoder",
    "ClsDecoder",
    "ContinuousValueEncoder",
    "CountDecoder",
    "DomainSpecificBatchNorm1d",
    "ExprDecoder",
    "GeneEncoder",
    "MVCDecoder",
    "PackedTokens",
    "PerturbationFlagEncoder",
    "SelfAttention",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "flash_attn_available",
    "grad_reverse",
]
