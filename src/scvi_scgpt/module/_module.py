"""The scGPT network as an scvi-tools module, with the official parameter names."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch import nn

from scvi_scgpt._constants import MASK_VALUE, TOKEN_KEYS
from scvi_scgpt.module._conditioning import decoder_inputs
from scvi_scgpt.module._config import ArchitectureConfig, ObjectiveConfig
from scvi_scgpt.module._count import count_nll
from scvi_scgpt.module._losses import elastic_cell_similarity, masked_bernoulli_nll, masked_mse
from scvi_scgpt.module._perturbation import perturbation_loss
from scvi_scgpt.nn import (
    AdversarialDiscriminator,
    AffineExprDecoder,
    BatchLabelEncoder,
    CategoryValueEncoder,
    ClsDecoder,
    ContinuousValueEncoder,
    CountDecoder,
    DomainSpecificBatchNorm1d,
    ExprDecoder,
    GeneEncoder,
    MVCDecoder,
    PerturbationFlagEncoder,
    TransformerEncoder,
)


class SCGPTModule(BaseModuleClass):
    """scGPT transformer: gene + value embeddings, post-norm encoder, CLS cell embedding, heads.

    Submodule names equal those of the official ``TransformerModel`` (``encoder``,
    ``value_encoder``, ``transformer_encoder.layers.{i}.self_attn.in_proj_weight``, ``decoder``,
    ``mvc_decoder``, ``cls_decoder``, ``grad_reverse_discriminator``, ``batch_encoder``,
    ``dsbn``, ``bn``, ``flag_encoder``), for multi-omic models of the official
    ``MultiOmicTransformerModel`` (``mod_encoder``) and, for perturbation models, of the official
    ``TransformerGenerator`` (``pert_encoder``, ``decoder.coeff_decoder`` /
    ``decoder.bias_decoder``), so ``state_dict()`` is an official state dict.

    Parameters
    ----------
    config
        The :class:`ArchitectureConfig`.
    """

    def __init__(self, config: ArchitectureConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.pad_id = c.pad_id
        self.encoder = GeneEncoder(c.n_tokens, c.d_model, padding_idx=c.pad_id)
        if c.input_emb_style == "continuous":
            self.value_encoder = ContinuousValueEncoder(c.d_model, c.dropout)
        elif c.input_emb_style == "category":
            self.value_encoder = CategoryValueEncoder(c.n_input_bins, c.d_model)
        else:
            self.value_encoder = nn.Identity()
        if c.use_generative_flag:
            self.flag_encoder = nn.Embedding(2, c.d_model)
        if c.use_pert_flags:
            self.pert_encoder = PerturbationFlagEncoder(c.d_model, c.pert_pad_id)
        if c.use_batch_labels:
            self.batch_encoder = BatchLabelEncoder(c.n_batch, c.d_model)
        if c.use_mod:
            self.mod_encoder = BatchLabelEncoder(c.n_mod_tokens, c.d_model, c.mod_pad_id)
        if c.domain_spec_batchnorm:
            self.dsbn = DomainSpecificBatchNorm1d(c.d_model, c.n_batch, eps=6.1e-5)
        elif c.legacy_batchnorm:
            self.bn = nn.BatchNorm1d(c.d_model, eps=6.1e-5)
        self.transformer_encoder = TransformerEncoder(
            c.n_layers,
            d_model=c.d_model,
            n_heads=c.n_heads,
            d_hid=c.d_hid,
            dropout=c.dropout,
            attention_dropout=c.attention_dropout,
            norm_first=c.pre_norm,
            use_flash=c.use_flash,
        )
        d_dec = 2 * c.d_model if c.use_batch_labels or c.use_mod else c.d_model
        # multi-omic GEPC: the gene side is widened too (official MultiOmicTransformerModel)
        d_gene = d_dec if c.use_mod else c.d_model
        if c.uses_affine_decoder:
            self.decoder = AffineExprDecoder(
                c.d_model, c.explicit_zero_prob, c.decoder_activation, c.decoder_adaptive_bias
            )
        else:
            self.decoder = ExprDecoder(c.d_model, c.explicit_zero_prob, d_in=d_dec)
        if c.n_cls > 0:
            self.cls_decoder = ClsDecoder(c.d_model, c.n_cls, n_layers=c.n_layers_cls)
        if c.do_mvc:
            self.mvc_decoder = MVCDecoder(
                d_gene, c.mvc_decoder_style, c.explicit_zero_prob, d_cell=d_dec
            )
        if c.do_dab:
            self.grad_reverse_discriminator = AdversarialDiscriminator(
                c.d_model, c.n_batch, n_layers=c.n_layers_cls
            )
        if c.count_decoder:
            self.count_decoder = CountDecoder(
                c.d_model,
                c.n_count_genes,
                n_batch=c.count_n_batch,
                n_hidden=c.count_hidden,
                likelihood=c.count_likelihood,
                dispersion=c.count_dispersion,
            )
        self._init_gene_embedding()

    def _init_gene_embedding(self) -> None:
        # official init: only the gene embedding is customised, uniform in +-0.1
        nn.init.uniform_(self.encoder.embedding.weight, -0.1, 0.1)

    # ----------------------------------------------------------------- building blocks
    def embed_inputs(
        self,
        gene_ids: torch.Tensor,
        values: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        batch_index: torch.Tensor | None = None,
        pert_flags: torch.Tensor | None = None,
        modality_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Input embeddings ``(B, L, d)`` and the LayerNorm-ed gene embeddings ``(B, L, d)``.

        ``pert_flags`` (``(B, L)`` ids 0/1, perturbation models only) add the flag embedding;
        ``modality_ids`` add the modality embedding only with ``mod_in_input``.
        """
        gene_embs = self.encoder(gene_ids)
        if self.config.input_emb_style == "scaling":
            total = gene_embs * values.unsqueeze(-1)
        else:
            total = gene_embs + self.value_encoder(values)
        if pert_flags is not None:
            if not hasattr(self, "pert_encoder"):
                raise ValueError("Perturbation flags need a perturbation model (use_pert_flags).")
            total = total + self.pert_encoder(pert_flags.long())
        if self.config.mod_in_input:
            if modality_ids is None:
                raise ValueError("mod_in_input needs the tokens' modality ids.")
            total = total + self.mod_encoder(modality_ids.long())
        if hasattr(self, "dsbn"):
            token_mask = None if padding_mask is None else ~padding_mask
            total = self.dsbn(total, self._batch(batch_index, total), token_mask)
        elif hasattr(self, "bn"):
            total = self.bn(total.permute(0, 2, 1)).permute(0, 2, 1)
        return total, gene_embs

    @staticmethod
    def _batch(batch_index: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        if batch_index is None:
            raise ValueError("This model uses batch labels: register a batch_key.")
        return batch_index.reshape(-1).long().to(like.device)

    def cell_embedding(
        self, encoded: torch.Tensor, values: torch.Tensor, padding_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Cell embedding ``(B, d)`` from the transformer output (official styles)."""
        style = self.config.cell_emb_style
        if style == "cls":
            return encoded[:, 0]
        if style == "avg-pool":
            return encoded.mean(1)
        weighted = torch.bmm(encoded.transpose(1, 2), values.unsqueeze(-1)).squeeze(-1)
        return F.normalize(weighted, p=2, dim=1)

    # ----------------------------------------------------------------- scvi-tools API
    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict:
        inputs = {
            "gene_ids": tensors[TOKEN_KEYS.GENE_IDS],
            "values": tensors[TOKEN_KEYS.VALUES],
            "padding_mask": tensors[TOKEN_KEYS.PADDING_MASK],
            "batch_index": tensors.get(TOKEN_KEYS.BATCH),
        }
        if TOKEN_KEYS.GEN_GENE_IDS in tensors:
            inputs.update(gen_gene_ids=tensors[TOKEN_KEYS.GEN_GENE_IDS])
        if TOKEN_KEYS.PERT_FLAGS in tensors:
            inputs.update(pert_flags=tensors[TOKEN_KEYS.PERT_FLAGS])
        if TOKEN_KEYS.MODALITY_IDS in tensors:
            inputs.update(modality_ids=tensors[TOKEN_KEYS.MODALITY_IDS])
        return inputs

    @auto_move_data
    def inference(
        self,
        gene_ids: torch.Tensor,
        values: torch.Tensor,
        padding_mask: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        cls_only: bool = False,
        gen_gene_ids: torch.Tensor | None = None,
        cell_prompt: torch.Tensor | None = None,
        attention_layer: int | None = None,
        attention_kinds: tuple[str, ...] = ("raw",),
        pert_flags: torch.Tensor | None = None,
        modality_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Encode token sequences.

        Returns ``encoded`` (``(B, L, d)``; ``(B, 1, d)`` with ``cls_only``), ``cell_emb``
        (``(B, d)``, not normalised) and ``gene_embs`` (``(B, L, d)``).

        With ``gen_gene_ids`` (``(B, Lg)``), the given tokens are the known ones and these
        genes are generated under the scGPT generative attention mask; ``gen_encoded`` and
        ``gen_gene_embs`` are added. ``cell_prompt`` (``(B, d)``) replaces the ``<cls>``
        input embedding (the cell-prompt step).

        With ``attention_layer`` (negative counts from the end), ``attention`` is added:
        ``{kind: (B, H, L, L)}`` per-head scores of that layer (``attention_kinds``:
        ``"raw"`` q·kᵀ, ``"softmax"`` weights), zero at padding.

        ``pert_flags`` (``(B, L)``): per-token perturbation flags of perturbation models.
        ``modality_ids`` (``(B, L)``): per-token modality ids of multi-omic models (they
        reach the encoder only with ``mod_in_input``; the decoders get them from
        :meth:`generative`).
        """
        total, gene_embs = self.embed_inputs(
            gene_ids, values, padding_mask, batch_index, pert_flags, modality_ids
        )
        if cell_prompt is not None:
            total = torch.cat([cell_prompt.unsqueeze(1).to(total.dtype), total[:, 1:]], dim=1)
        if gen_gene_ids is not None:
            if not hasattr(self, "flag_encoder"):
                raise ValueError("Generative pretraining needs use_generative_flag=True.")
            if self.config.use_mod:
                raise ValueError("Generative pretraining of multi-omic models is not supported.")
            gen_gene_embs = self.encoder(gen_gene_ids)
            gen_total = gen_gene_embs + self.flag_encoder.weight[1]
            encoded, gen_encoded = self.transformer_encoder.generative_forward(
                total, gen_total, padding_mask
            )
            return {
                "encoded": encoded,
                "cell_emb": self.cell_embedding(encoded, values, padding_mask),
                "gene_embs": gene_embs,
                "gen_encoded": gen_encoded,
                "gen_gene_embs": gen_gene_embs,
            }
        cls_style = self.config.cell_emb_style == "cls"
        cls_only = cls_only and cls_style
        # pooled styles average over every position, padding included (official semantics),
        # so they need the padded computation
        encoded = self.transformer_encoder(
            total,
            padding_mask,
            cls_only=cls_only,
            packed=None if cls_style else False,
            attention_layer=attention_layer,
            attention_kinds=attention_kinds,
        )
        out = {}
        if attention_layer is not None:
            encoded, out["attention"] = encoded
        out.update(
            encoded=encoded,
            cell_emb=self.cell_embedding(encoded, values, padding_mask),
            gene_embs=gene_embs,
        )
        return out

    def _get_generative_input(self, tensors, inference_outputs, **kwargs) -> dict:
        if "gen_encoded" in inference_outputs:  # decode the generated tokens
            return {
                "encoded": inference_outputs["gen_encoded"],
                "cell_emb": inference_outputs["cell_emb"],
                "gene_embs": inference_outputs["gen_gene_embs"],
                "batch_index": tensors.get(TOKEN_KEYS.BATCH),
            }
        return {
            "encoded": inference_outputs["encoded"],
            "cell_emb": inference_outputs["cell_emb"],
            "gene_embs": inference_outputs["gene_embs"],
            "batch_index": tensors.get(TOKEN_KEYS.BATCH),
            "values": tensors.get(TOKEN_KEYS.VALUES),
            "modality_ids": tensors.get(TOKEN_KEYS.MODALITY_IDS),
        }

    @auto_move_data
    def generative(
        self,
        encoded: torch.Tensor,
        cell_emb: torch.Tensor,
        gene_embs: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        values: torch.Tensor | None = None,
        modality_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Apply the output heads (``values``: the input values, for the affine decoder).

        Batch and modality embeddings condition the decoders as the official models do
        (:func:`~scvi_scgpt.module._conditioning.decoder_inputs`).

        Returns ``expr`` (GEP) and, when built, ``expr_zero_probs``, ``mvc`` (GEPC),
        ``mvc_zero_probs``, ``cls_logits``, ``dab_logits`` and ``count_params`` (the count
        decoder's ``scale`` / ``theta`` / ``dropout_logits``).
        """
        out: dict[str, torch.Tensor] = {}
        tokens, cell, genes = decoder_inputs(
            self, encoded, cell_emb, gene_embs, batch_index, modality_ids
        )
        if self.config.uses_affine_decoder:
            if values is None:
                raise ValueError("The AffineExprDecoder needs the input values.")
            expr = self.decoder(tokens, values)
        else:
            expr = self.decoder(tokens)
        out["expr"] = expr["pred"]
        if "zero_probs" in expr:
            out["expr_zero_probs"] = expr["zero_probs"]
        if hasattr(self, "mvc_decoder"):
            mvc = self.mvc_decoder(cell, genes)
            out["mvc"] = mvc["pred"]
            if "zero_probs" in mvc:
                out["mvc_zero_probs"] = mvc["zero_probs"]
        if hasattr(self, "cls_decoder"):
            out["cls_logits"] = self.cls_decoder(cell_emb)
        if hasattr(self, "grad_reverse_discriminator"):
            out["dab_logits"] = self.grad_reverse_discriminator(cell_emb)
        if hasattr(self, "count_decoder"):
            out["count_params"] = self.count_decoder(cell_emb, batch_index)
        return out

    def loss(
        self, tensors, inference_outputs, generative_outputs, objectives=None, **kwargs
    ) -> LossOutput:
        """Sum of the switched-on scGPT objectives.

        Parameters
        ----------
        tensors
            Minibatch: ``values`` (masked positions hold the mask value -1),
            ``target_values`` (unmasked values), ``batch`` and ``labels`` when needed.
        inference_outputs, generative_outputs
            Outputs of :meth:`inference` and :meth:`generative`.
        objectives
            :class:`~scvi_scgpt.module.ObjectiveConfig`; default: GEP (+ GEPC when built).

        Returns
        -------
        :class:`~scvi.module.base.LossOutput` whose ``extra_metrics`` hold each weighted term
        (``gep``, ``gep_zero``, ``gepc``, ``gepc_zero``, ``count``, ``ecs``, ``dar``, ``cls``) and
        ``cls_accuracy`` when classifying.
        """
        if objectives is None:
            objectives = ObjectiveConfig(gepc=hasattr(self, "mvc_decoder"))
        obj = objectives
        if obj.perturbation:
            return perturbation_loss(tensors, generative_outputs, obj.perturbation_loss)
        if obj.generative:
            return self._generative_loss(tensors, inference_outputs, generative_outputs, obj)
        values = tensors[TOKEN_KEYS.VALUES]
        target = tensors.get(TOKEN_KEYS.TARGET_VALUES, values)
        masked = values == MASK_VALUE
        gen = generative_outputs
        terms: dict[str, torch.Tensor] = {}
        if obj.gep and masked.any():
            terms["gep"] = obj.gep_weight * masked_mse(gen["expr"], target, masked)
            if obj.explicit_zero_prob:
                self._require(gen, "expr_zero_probs", "explicit_zero_prob")
                terms["gep_zero"] = masked_bernoulli_nll(gen["expr_zero_probs"], target, masked)
        if obj.gepc and masked.any():
            self._require(gen, "mvc", "do_mvc")
            terms["gepc"] = obj.gepc_weight * masked_mse(gen["mvc"], target, masked)
            if obj.explicit_zero_prob:
                self._require(gen, "mvc_zero_probs", "explicit_zero_prob")
                terms["gepc_zero"] = masked_bernoulli_nll(gen["mvc_zero_probs"], target, masked)
        self._count_term(obj, tensors, gen, terms)
        if obj.ecs:
            cell_emb = inference_outputs["cell_emb"]
            terms["ecs"] = obj.ecs_weight * elastic_cell_similarity(cell_emb, obj.ecs_threshold)
        metrics: dict[str, torch.Tensor] = {}
        if obj.dar:
            self._require(gen, "dab_logits", "do_dab")
            batch = self._batch(tensors.get(TOKEN_KEYS.BATCH), values)
            terms["dar"] = obj.dar_weight * F.cross_entropy(gen["dab_logits"], batch)
        if obj.cls:
            self._require(gen, "cls_logits", "n_cls")
            labels = tensors[TOKEN_KEYS.LABELS].reshape(-1).long().to(values.device)
            terms["cls"] = obj.cls_weight * F.cross_entropy(gen["cls_logits"], labels)
            metrics["cls_accuracy"] = (gen["cls_logits"].argmax(1) == labels).float().mean()
        if not terms:
            raise ValueError(
                "No loss term applies to this minibatch: switch on an objective (and mask "
                "values for GEP/GEPC)."
            )
        total = torch.stack(list(terms.values())).sum()
        metrics.update({k: v.detach() for k, v in terms.items()})
        return LossOutput(loss=total, n_obs_minibatch=values.shape[0], extra_metrics=metrics)

    def _generative_loss(self, tensors, inference_outputs, generative_outputs, obj) -> LossOutput:
        """Generative pretraining: generated-gene MSE, GEPC and the cell-prompt step."""
        if TOKEN_KEYS.GEN_GENE_IDS not in tensors:
            raise ValueError("Generative objectives need generated tokens (task='pretrain').")
        target = tensors[TOKEN_KEYS.GEN_TARGETS]
        keep = ~tensors[TOKEN_KEYS.GEN_PADDING_MASK]
        gen = generative_outputs
        terms: dict[str, torch.Tensor] = {}
        if obj.gep:
            terms["gep"] = obj.gep_weight * masked_mse(gen["expr"], target, keep)
        if obj.gepc:
            self._require(gen, "mvc", "do_mvc")
            terms["gepc"] = obj.gepc_weight * masked_mse(gen["mvc"], target, keep)
        if obj.cell_prompt:
            prompt = inference_outputs["cell_emb"].detach()
            second = self.inference(
                tensors[TOKEN_KEYS.GENE_IDS],
                tensors[TOKEN_KEYS.VALUES],
                tensors[TOKEN_KEYS.PADDING_MASK],
                tensors.get(TOKEN_KEYS.BATCH),
                gen_gene_ids=tensors[TOKEN_KEYS.GEN_GENE_IDS],
                cell_prompt=prompt,
            )
            out = self.generative(**self._get_generative_input(tensors, second))
            terms["gep_cell_prompt"] = obj.gep_weight * masked_mse(out["expr"], target, keep)
        # the cell embedding of the known tokens decodes the whole profile
        self._count_term(obj, tensors, gen, terms)
        total = torch.stack(list(terms.values())).sum()
        return LossOutput(
            loss=total,
            n_obs_minibatch=target.shape[0],
            extra_metrics={k: v.detach() for k, v in terms.items()},
        )

    def _count_term(self, obj, tensors, generative_outputs, terms: dict) -> None:
        """Add the count objective's term to ``terms`` when it is switched on."""
        if not obj.count:
            return
        self._require(generative_outputs, "count_params", "count_decoder")
        if TOKEN_KEYS.COUNTS not in tensors:
            raise ValueError(
                "The count objective needs each cell's counts in the minibatch "
                f"({TOKEN_KEYS.COUNTS!r}); train it through SCGPT.train."
            )
        nll = count_nll(generative_outputs["count_params"], tensors[TOKEN_KEYS.COUNTS])
        terms["count"] = obj.count_weight * nll

    @staticmethod
    def _require(outputs: dict, key: str, option: str) -> None:
        if key not in outputs:
            raise ValueError(f"This objective needs the model option {option!r} switched on.")

    @torch.inference_mode()
    def sample(self, *args, **kwargs):
        """Not defined for scGPT (a deterministic encoder)."""
        raise NotImplementedError("SCGPTModule has no generative sampling.")
