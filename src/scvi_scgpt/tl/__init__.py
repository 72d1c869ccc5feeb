"""Analysis logic on arrays and AnnData: metrics, baselines, label transfer, gene networks.

Nothing here imports :class:`~scvi_scgpt.SCGPT`; functions take embeddings, expression or
AnnData objects and return values.
"""

from __future__ import annotations

from scvi_scgpt.tl._attention_targets import (
    AttentionAccumulator,
    attention_target_table,
    normalize_attention,
    rank_normalize,
)
from scvi_scgpt.tl._enrichment import program_enrichment, read_gmt
from scvi_scgpt.tl._gene_embeddings import cell_embeddings_from_genes, read_gene_embeddings
from scvi_scgpt.tl._grn_baselines import (
    coexpression_network,
    evaluate_edges,
    genie3_network,
    random_network,
)
from scvi_scgpt.tl._label_transfer import knn_accuracy, knn_label_transfer
from scvi_scgpt.tl._modalities import measured_modalities
from scvi_scgpt.tl._networks import (
    cosine_similarity,
    gene_similarity_network,
    network_edges,
    network_to_networkx,
)
from scvi_scgpt.tl._perturbation_baselines import perturbation_baselines
from scvi_scgpt.tl._perturbation_celleval import (
    CELL_EVAL_METRICS,
    cell_eval_metrics,
    cell_eval_pair,
)
from scvi_scgpt.tl._perturbation_data import condition_means
from scvi_scgpt.tl._perturbation_metrics import (
    evaluate_perturbation_predictions,
    perturbation_metrics,
    rank_de_genes,
)
from scvi_scgpt.tl._perturbation_split import perturbation_split, split_subgroups
from scvi_scgpt.tl._programs import gene_programs, program_genes, score_gene_programs

__all__ = [
    "CELL_EVAL_METRICS",
    "AttentionAccumulator",
    "attention_target_table",
    "cell_embeddings_from_genes",
    "cell_eval_metrics",
    "cell_eval_pair",
    "coexpression_network",
    "condition_means",
    "cosine_similarity",
    "evaluate_edges",
    "evaluate_perturbation_predictions",
    "gene_programs",
    "gene_similarity_network",
    "genie3_network",
    "knn_accuracy",
    "knn_label_transfer",
    "measured_modalities",
    "network_edges",
    "network_to_networkx",
    "normalize_attention",
    "perturbation_baselines",
    "perturbation_metrics",
    "perturbation_split",
    "program_enrichment",
    "program_genes",
    "random_network",
    "rank_de_genes",
    "rank_normalize",
    "read_gene_embeddings",
    "read_gmt",
    "score_gene_programs",
    "split_subgroups",
]
