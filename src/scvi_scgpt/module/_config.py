"""Typed configurations of the scGPT network: its architecture and its training objectives."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

InputEmbStyle = Literal["continuous", "category", "scaling"]
CellEmbStyle = Literal["cls", "avg-pool", "w-pool"]


@dataclass(frozen=True)
class ArchitectureConfig:
    """Shape and options of an scGPT network (official ``TransformerModel`` arguments).

    Parameters
    ----------
    n_tokens
        Vocabulary size (rows of the gene embedding).
    pad_id
        Id of ``<pad>`` (the embedding's ``padding_idx``).
    d_model, n_heads, d_hid, n_layers
        Width, heads, feed-forward width and depth of the transformer (official ``embsize``,
        ``nheads``, ``d_hid``, ``nlayers``).
    dropout
        Dropout everywhere (value encoder, attention, feed-forward).
    attention_dropout
        Dropout of the attention probabilities; ``None`` (default) uses ``dropout`` as the
        official model does. ``0.0`` lets PyTorch use its fused attention kernels on a CPU,
        which are several times faster in training than the kernel dropout needs.
    n_cls
        Classes of the ``cls_decoder`` head; ``0`` builds no classifier.
    n_layers_cls
        Layers of the classifier and of the adversarial discriminator.
    input_emb_style
        ``"continuous"`` (official default), ``"category"`` or ``"scaling"``.
    n_input_bins
        Categories of the ``"category"`` value encoder.
    cell_emb_style
        ``"cls"`` (official default), ``"avg-pool"`` or ``"w-pool"`` (official semantics).
    do_mvc, mvc_decoder_style
        Build the GEPC (``mvc_decoder``) head and its style.
    explicit_zero_prob
        Heads also predict the probability that a value is non-zero.
    do_dab, n_batch
        Build the adversarial batch discriminator (DAR) over ``n_batch`` batches.
    use_batch_labels
        Concatenate a batch embedding to the decoder inputs (``batch_encoder``).
    domain_spec_batchnorm
        Domain-specific batch norm of the input embeddings (``dsbn``), one domain per batch.
    legacy_batchnorm
        The ``bn`` BatchNorm of checkpoints made before September 2023.
    use_generative_flag
        Keep the ``flag_encoder`` embedding of generative pretraining.
    ecs_threshold
        The ``ecs_threshold`` recorded in official ``args.json`` files (kept for export).
        Training uses :attr:`ObjectiveConfig.ecs_threshold`.
    pre_norm
        Pre-norm transformer layers (official checkpoints are post-norm).
    use_flash
        Use flash-attn on CUDA half precision when installed.
    use_pert_flags, pert_pad_id
        Perturbation models (official ``TransformerGenerator``): add the per-gene
        perturbation-flag embedding ``pert_encoder`` (3 ids; ``pert_pad_id`` is its padding
        row, 0 in the official tutorial, 2 by default).
    use_mod, n_mod_tokens, mod_pad_id
        Multi-omic models (official ``MultiOmicTransformerModel``): a modality embedding
        ``mod_encoder`` over a modality vocabulary of ``n_mod_tokens`` (official
        ``ntokens_mod``; ``mod_pad_id`` is its ``<pad>`` row). It is not added to the encoder
        input: it is concatenated (summed with the batch embedding when both exist) onto the
        per-token transformer output for ``decoder`` and onto both sides of ``mvc_decoder``
        (the cell side gets the modality embedding pooled like the cell embedding: the
        ``<cls>`` row, or the mean with ``"avg-pool"``; ``"w-pool"`` is refused, as the
        official model fails on it).
    mod_in_input
        Also add the modality embedding to the encoder input embeddings (a deviation from
        the official model, which keeps modality out of attention).
    affine_decoder, decoder_activation, decoder_adaptive_bias
        Use the ``AffineExprDecoder`` (``coeff * input value + bias``) as ``decoder``; it is
        also used whenever an activation (a ``torch.nn`` name) or the adaptive bias is set,
        as in the official constructor.
    count_decoder
        Build the count decoder ``count_decoder`` (not an official head): a negative-binomial
        model of each cell's counts over ``n_count_genes`` genes from its cell embedding
        (:class:`~scvi_scgpt.nn.CountDecoder`), trained by the ``count`` objective.
    n_count_genes
        Genes the count decoder decodes (their vocabulary ids are saved with the weights).
    count_likelihood
        ``"nb"`` (negative binomial) or ``"zinb"`` (zero-inflated).
    count_dispersion
        ``"gene"`` (one inverse dispersion per gene) or ``"gene-batch"``.
    count_n_batch
        Batches the count decoder is conditioned on (``0``: not conditioned), as scVI's
        decoder is, so the cell embedding need not carry the batch.
    count_hidden
        Width of the count decoder's hidden layer.
    """

    n_tokens: int
    pad_id: int
    d_model: int = 512
    n_heads: int = 8
    d_hid: int = 512
    n_layers: int = 12
    dropout: float = 0.2
    attention_dropout: float | None = None
    n_cls: int = 0
    n_layers_cls: int = 3
    input_emb_style: InputEmbStyle = "continuous"
    n_input_bins: int | None = None
    cell_emb_style: CellEmbStyle = "cls"
    do_mvc: bool = True
    mvc_decoder_style: str = "inner product"
    explicit_zero_prob: bool = False
    do_dab: bool = False
    n_batch: int = 0
    use_batch_labels: bool = False
    domain_spec_batchnorm: bool = False
    legacy_batchnorm: bool = False
    use_generative_flag: bool = False
    ecs_threshold: float = 0.3
    pre_norm: bool = False
    use_flash: bool = True
    use_pert_flags: bool = False
    pert_pad_id: int = 2
    use_mod: bool = False
    n_mod_tokens: int = 0
    mod_pad_id: int = 0
    mod_in_input: bool = False
    affine_decoder: bool = False
    decoder_activation: str | None = None
    decoder_adaptive_bias: bool = False
    count_decoder: bool = False
    n_count_genes: int = 0
    count_likelihood: str = "nb"
    count_dispersion: str = "gene"
    count_n_batch: int = 0
    count_hidden: int = 128

    @property
    def uses_affine_decoder(self) -> bool:
        """Whether ``decoder`` is the ``AffineExprDecoder``."""
        return self.affine_decoder or bool(self.decoder_activation) or self.decoder_adaptive_bias

    def __post_init__(self) -> None:
        for name in ("n_tokens", "d_model", "n_heads", "d_hid", "n_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})."
            )
        for name in ("dropout", "attention_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}.")
        if not 0 <= self.pad_id < self.n_tokens:
            raise ValueError(f"pad_id {self.pad_id} outside the vocabulary ({self.n_tokens}).")
        if self.input_emb_style not in ("continuous", "category", "scaling"):
            raise ValueError(f"Unknown input_emb_style {self.input_emb_style!r}.")
        if self.input_emb_style == "category" and not self.n_input_bins:
            raise ValueError("input_emb_style='category' needs n_input_bins.")
        if self.cell_emb_style not in ("cls", "avg-pool", "w-pool"):
            raise ValueError(f"Unknown cell_emb_style {self.cell_emb_style!r}.")
        if not 0 <= self.pert_pad_id <= 2:
            raise ValueError(f"pert_pad_id must be 0, 1 or 2, got {self.pert_pad_id}.")
        if self.use_mod and not 0 <= self.mod_pad_id < self.n_mod_tokens:
            raise ValueError(
                f"use_mod needs a modality vocabulary (n_mod_tokens={self.n_mod_tokens}) holding "
                f"mod_pad_id={self.mod_pad_id}."
            )
        if self.mod_in_input and not self.use_mod:
            raise ValueError("mod_in_input needs use_mod=True.")
        if self.use_mod and self.cell_emb_style == "w-pool":
            # the official model pools the modality embeddings like the cell embedding, and
            # its w-pool has no weights for them (it raises)
            raise ValueError("use_mod does not support cell_emb_style='w-pool'.")
        if self.uses_affine_decoder and (self.use_batch_labels or self.use_mod):
            raise ValueError("The AffineExprDecoder does not take batch or modality labels.")
        if self.count_decoder and self.n_count_genes < 1:
            raise ValueError("count_decoder needs the genes to decode (n_count_genes >= 1).")
        needs_batches = self.do_dab or self.use_batch_labels or self.domain_spec_batchnorm
        if needs_batches and self.n_batch < 1:
            raise ValueError(
                "DAR, batch labels and DSBN need the number of batches (n_batch >= 1); "
                "register a batch_key in setup_anndata."
            )

    def to_dict(self) -> dict:
        """Plain-dict form (JSON-serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> ArchitectureConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"Unknown architecture options: {sorted(unknown)}.")
        return cls(**values)


@dataclass(frozen=True)
class ObjectiveConfig:
    """Which scGPT objectives are trained, and their weights.

    Parameters
    ----------
    gep
        Masked gene-expression prediction: MSE on masked positions.
    gepc
        Gene-expression prediction from the cell embedding (the MVC decoder), MSE on masked
        positions.
    explicit_zero_prob
        Also train the heads' probability that a value is non-zero (Bernoulli NLL).
    ecs
        Elastic cell similarity: pushes cosine similarities between cell embeddings away
        from ``ecs_threshold``.
    dar
        Domain adaptation by reverse back-propagation: an adversarial batch classifier
        behind a gradient-reversal layer.
    cls
        Cell-type classification (cross-entropy on the ``cls_decoder`` logits).
    generative
        Generative pretraining under the scGPT attention mask: a fraction of each cell's
        expressed genes (drawn per minibatch from ``gen_ratios``) becomes tokens to generate
        (gene embedding + flag, no value); ``gep`` is then the MSE of their predicted bins and
        ``gepc`` the MVC prediction of them from the cell embedding.
    cell_prompt
        With ``generative``, add the cell-prompt step: the cell embedding of the first pass
        (detached) replaces ``<cls>`` and the generated genes are predicted again.
    gen_ratios
        Fractions of generated genes drawn from per minibatch.
    mask_ratio
        Fraction of each cell's gene tokens (``<cls>`` and padding excluded) whose value is
        replaced by the mask value; ``int(n * mask_ratio)`` per cell.
    perturbation
        Perturbation-response training (official perturbation tutorial): the input is a
        control cell's log-normalised expression with per-gene perturbation flags, the target
        a perturbed cell's expression; MSE over every gene token. Needs a perturbation model
        (``use_pert_flags``) and the paired-control collator.
    perturbation_loss
        ``"mse"`` (official: every gene counts the same) or ``"wmse"``: the DE-weighted MSE of
        "Diversity by design" (2025), each gene's squared error weighted by the absolute
        Welch t statistic of the target cell's condition against the control cells (training
        cells), normalised per cell, so the few genes a perturbation changes are not drowned
        by the many it leaves alone (less collapse to the mean response).
    count
        Count reconstruction (not an official objective): the negative-binomial likelihood of
        each cell's raw counts over every decoded gene (measured ones and zeros alike) from
        its cell embedding, with the cell's observed library size (the ``count_decoder``
        head; the registered expression must be raw counts). Gives the model scvi-tools'
        ``get_normalized_expression``, ``differential_expression`` and
        ``posterior_predictive_sample``.
    count_weight
        Weight of the count term (a mean negative log-likelihood per gene and cell).
    ecs_threshold, ecs_weight, dar_weight, gep_weight, gepc_weight, cls_weight
        Threshold and loss weights (official integration tutorial: 0.8, 10, 1).
    """

    gep: bool = True
    gepc: bool = False
    explicit_zero_prob: bool = False
    ecs: bool = False
    dar: bool = False
    cls: bool = False
    generative: bool = False
    cell_prompt: bool = True
    perturbation: bool = False
    perturbation_loss: str = "mse"
    gen_ratios: tuple[float, ...] = (0.25, 0.5, 0.75)
    mask_ratio: float = 0.4
    ecs_threshold: float = 0.8
    ecs_weight: float = 10.0
    dar_weight: float = 1.0
    gep_weight: float = 1.0
    gepc_weight: float = 1.0
    cls_weight: float = 1.0
    count: bool = False
    count_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.perturbation_loss not in ("mse", "wmse"):
            raise ValueError(
                f"perturbation_loss must be 'mse' or 'wmse', got {self.perturbation_loss!r}."
            )
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}.")
        if (
            (self.gep or self.gepc)
            and self.mask_ratio == 0
            and not (self.generative or self.perturbation)
        ):
            raise ValueError("GEP/GEPC need masked positions: set mask_ratio > 0.")
        if self.count and self.perturbation:
            raise ValueError("The count objective does not apply to perturbation training.")
        if not any(
            (self.gep, self.gepc, self.ecs, self.dar, self.cls, self.perturbation, self.count)
        ):
            raise ValueError("At least one objective must be switched on.")

    def to_dict(self) -> dict:
        """Plain-dict form."""
        return asdict(self)

    def required_architecture(self) -> dict[str, bool]:
        """The :class:`ArchitectureConfig` options (heads) these objectives need."""
        needs = {
            "do_mvc": self.gepc,
            "explicit_zero_prob": self.explicit_zero_prob,
            "do_dab": self.dar,
            "use_generative_flag": self.generative,
            "use_pert_flags": self.perturbation,
            "count_decoder": self.count,
        }
        return {k: True for k, v in needs.items() if v}
