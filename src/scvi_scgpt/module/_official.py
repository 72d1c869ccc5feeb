"""Every fact about the official scGPT parameter names, in one place.

The module builds its submodules under the official names (``encoder``, ``value_encoder``,
``transformer_encoder.layers.{i}.self_attn.in_proj_weight``, heads, ...); this file knows how
official checkpoints spell them (flash-attn layouts), which ones are optional heads, which
grow with the number of batches, which are frozen together, how to read an architecture off
a state dict, and how to write an official ``args.json``.
"""

from __future__ import annotations

import re

import torch

from scvi_scgpt._exceptions import CheckpointError
from scvi_scgpt.module._config import ArchitectureConfig

#: Renames from the flash-attn layouts of official checkpoints to ours (torch layout).
_KEY_RENAMES: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"\.self_attn\._impl\.Wqkv\."), ".self_attn.in_proj_"),
    (re.compile(r"\.self_attn\.Wqkv\."), ".self_attn.in_proj_"),
    (re.compile(r"\.self_attn\._impl\.out_proj\."), ".self_attn.out_proj."),
)
#: Everything but the backbone (gene/value encoders, transformer): heads that may be absent
#: from a checkpoint, or resized on request, and are then freshly initialised.
HEAD_PREFIXES = (
    "cls_decoder.",
    "grad_reverse_discriminator.",
    "batch_encoder.",
    "dsbn.",
    "bn.",
    "flag_encoder.",
    "pert_encoder.",
    "mod_encoder.",
    "mvc_decoder.",
    "decoder.",
    "count_decoder.",
)
#: Heads of ours that official scGPT does not have (left out of ``save_pretrained`` files).
NON_OFFICIAL_PREFIXES = ("count_decoder.",)

#: Tensors whose first dimension is the number of batches (rows copied over when a query
#: model gains batches).
PER_BATCH_ROWS = (
    "batch_encoder.embedding.weight",
    "grad_reverse_discriminator.out_layer.weight",
    "grad_reverse_discriminator.out_layer.bias",
)
#: Named groups of parameter-name prefixes for ``SCGPT.train(freeze=...)``.
FREEZE_GROUPS = {
    "embeddings": ("encoder.", "value_encoder."),
    "transformer": ("encoder.", "value_encoder.", "transformer_encoder.", "flag_encoder."),
}
#: Tensors that hold one row per vocabulary token.
PER_TOKEN_ROWS = ("encoder.embedding.weight",)


def to_torch_layout(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """Rename flash-attn ``Wqkv`` / ``_impl`` keys to the ``in_proj_*`` layout.

    The fused weights have the same row order (``q | k | v``, heads contiguous) in both
    layouts, so no tensor is changed. Returns the new dict and ``{old: new}`` renames.
    """
    out: dict[str, torch.Tensor] = {}
    renamed: dict[str, str] = {}
    for key, value in state.items():
        new = key
        for pattern, repl in _KEY_RENAMES:
            new = pattern.sub(repl, new)
        if new in out:
            raise CheckpointError(f"Checkpoint has both {key!r} and an equivalent of {new!r}.")
        if new != key:
            renamed[key] = new
        out[new] = value
    return out, renamed


def _shape(state: dict[str, torch.Tensor], key: str) -> tuple[int, ...] | None:
    return tuple(state[key].shape) if key in state else None


def infer_architecture(
    state: dict[str, torch.Tensor], args: dict, *, n_tokens: int, pad_id: int, **overrides
) -> ArchitectureConfig:
    """Architecture of a (torch-layout) official state dict.

    Sizes come from the tensor shapes, heads from the keys present, and what shapes cannot
    tell (``nheads``, ``pre_norm``, styles) from ``args.json``. ``overrides`` (our
    :class:`ArchitectureConfig` names) win over both.

    Parameters
    ----------
    state
        State dict in the torch layout (see :func:`to_torch_layout`).
    args
        The checkpoint's ``args.json`` settings (``{}`` if none).
    n_tokens, pad_id
        Size of the checkpoint's vocabulary (specials included) and its ``<pad>`` id.
    **overrides
        Architecture options that win over the checkpoint's.

    Returns
    -------
    The :class:`ArchitectureConfig`.

    Raises
    ------
    CheckpointError
        When the state dict is not an scGPT model or disagrees with ``args`` / the vocabulary.
    """
    emb = _shape(state, "encoder.embedding.weight")
    if emb is None or len(emb) != 2:
        raise CheckpointError(
            "Checkpoint has no 2-d 'encoder.embedding.weight': not an scGPT model state dict."
        )
    n_rows, d_model = emb
    if n_rows != n_tokens:
        raise CheckpointError(
            f"The vocabulary has {n_tokens:,} tokens (specials included) but the checkpoint's "
            f"gene embedding has {n_rows:,} rows: vocab.json does not belong to this "
            "checkpoint."
        )
    if "embsize" in args and int(args["embsize"]) != d_model:
        raise CheckpointError(
            f"args.json says embsize={args['embsize']} but the gene embedding has {d_model} "
            "columns."
        )
    layer_ids = {
        int(m.group(1))
        for k in state
        if (m := re.match(r"transformer_encoder\.layers\.(\d+)\.", k)) is not None
    }
    if not layer_ids:
        raise CheckpointError("Checkpoint has no 'transformer_encoder.layers.*' weights.")
    n_layers = max(layer_ids) + 1
    if "nlayers" in args and int(args["nlayers"]) != n_layers:
        raise CheckpointError(
            f"args.json says nlayers={args['nlayers']} but the checkpoint has {n_layers} layers."
        )
    d_hid = _shape(state, "transformer_encoder.layers.0.linear1.weight")
    n_heads = overrides.pop("n_heads", None) or args.get("nheads")
    if n_heads is None:
        raise CheckpointError(
            "The number of attention heads cannot be read from the weights and args.json has no "
            "'nheads': pass n_heads=..."
        )
    cfg: dict = {
        "n_tokens": n_rows,
        "pad_id": pad_id,
        "d_model": d_model,
        "n_heads": int(n_heads),
        "d_hid": d_hid[0] if d_hid else int(args.get("d_hid", d_model)),
        "n_layers": n_layers,
        "dropout": float(args.get("dropout", 0.2)),
        "pre_norm": bool(args.get("pre_norm", False)),
        "cell_emb_style": args.get("cell_emb_style", "cls"),
        "ecs_threshold": float(args.get("ecs_threshold", 0.3)),
        "mvc_decoder_style": args.get("mvc_decoder_style", "inner product"),
    }
    if "value_encoder.linear1.weight" in state:
        cfg["input_emb_style"] = "continuous"
    elif (cat := _shape(state, "value_encoder.embedding.weight")) is not None:
        cfg["input_emb_style"] = "category"
        cfg["n_input_bins"] = cat[0]
    else:
        cfg["input_emb_style"] = "scaling"
    cfg["do_mvc"] = "mvc_decoder.gene2query.weight" in state
    if any(k.startswith("mvc_decoder.") for k in state) and not cfg["do_mvc"]:
        raise CheckpointError(
            "The checkpoint's mvc_decoder uses a style other than 'inner product' "
            f"(keys {[k for k in state if k.startswith('mvc_decoder.')][:4]}), not supported."
        )
    cfg["explicit_zero_prob"] = "decoder.zero_logit.0.weight" in state
    cfg["use_generative_flag"] = "flag_encoder.weight" in state
    cfg.update(perturbation_architecture(state, args))
    cfg.update(modality_architecture(state, args))
    n_batch_seen = {}
    if (b := _shape(state, "batch_encoder.embedding.weight")) is not None:
        cfg["use_batch_labels"] = True
        n_batch_seen["batch_encoder"] = b[0]
    dsbn = {int(m.group(1)) for k in state if (m := re.match(r"dsbn\.bns\.(\d+)\.", k))}
    if dsbn:
        cfg["domain_spec_batchnorm"] = True
        n_batch_seen["dsbn"] = max(dsbn) + 1
    elif "bn.running_mean" in state:
        cfg["legacy_batchnorm"] = True
    if (d := _shape(state, "grad_reverse_discriminator.out_layer.weight")) is not None:
        cfg["do_dab"] = True
        n_batch_seen["grad_reverse_discriminator"] = d[0]
    if len(set(n_batch_seen.values())) > 1:
        raise CheckpointError(
            f"Inconsistent numbers of batches in the checkpoint: {n_batch_seen}."
        )
    if n_batch_seen:
        cfg["n_batch"] = next(iter(n_batch_seen.values()))
    if (c := _shape(state, "cls_decoder.out_layer.weight")) is not None:
        cfg["n_cls"] = c[0]
        idx = [
            int(m.group(1)) for k in state if (m := re.match(r"cls_decoder\._decoder\.(\d+)\.", k))
        ]
        cfg["n_layers_cls"] = (max(idx) + 1) // 3 + 1 if idx else 1
    elif "n_layers_cls" in args:
        cfg["n_layers_cls"] = int(args["n_layers_cls"])
    cfg.update(overrides)
    return ArchitectureConfig(**cfg)


#: Key of the perturbation-flag embedding of ``TransformerGenerator`` (3 rows).
PERT_ENCODER_KEY = "pert_encoder.weight"
#: A key present only when ``decoder`` is the ``AffineExprDecoder``.
AFFINE_DECODER_KEY = "decoder.coeff_decoder.fc.0.weight"


def perturbation_architecture(state: dict[str, torch.Tensor], args: dict) -> dict:
    """The :class:`ArchitectureConfig` perturbation options of an official state dict.

    ``pert_encoder.weight`` marks a ``TransformerGenerator``; its padding id comes from
    ``args["pert_pad_id"]`` or, failing that, from its one all-zero row (the padding row is
    never trained). ``decoder.coeff_decoder.*`` marks the ``AffineExprDecoder``, whose
    activation and adaptive bias only ``args`` can tell (``decoder_activation``,
    ``decoder_adaptive_bias``).
    """
    cfg: dict = {}
    if AFFINE_DECODER_KEY in state:
        cfg["affine_decoder"] = True
        cfg["decoder_activation"] = args.get("decoder_activation")
        cfg["decoder_adaptive_bias"] = bool(args.get("decoder_adaptive_bias", False))
        cfg["explicit_zero_prob"] = "decoder.coeff_decoder.zero_logit.0.weight" in state
    if PERT_ENCODER_KEY not in state:
        return cfg
    weight = state[PERT_ENCODER_KEY]
    if tuple(weight.shape)[:1] != (3,):
        raise CheckpointError(f"{PERT_ENCODER_KEY} has shape {tuple(weight.shape)}, not (3, d).")
    cfg["use_pert_flags"] = True
    if "pert_pad_id" in args:
        cfg["pert_pad_id"] = int(args["pert_pad_id"])
    else:
        zero_rows = [i for i in range(3) if not bool(weight[i].float().abs().sum())]
        cfg["pert_pad_id"] = zero_rows[0] if len(zero_rows) == 1 else 2
    return cfg


#: Key of the modality embedding of ``MultiOmicTransformerModel``.
MOD_ENCODER_KEY = "mod_encoder.embedding.weight"


def modality_architecture(state: dict[str, torch.Tensor], args: dict) -> dict:
    """The multi-omic options of an official state dict (``mod_encoder`` present).

    The modality vocabulary's size is the embedding's rows (checked against
    ``args["ntokens_mod"]`` when given); its ``<pad>`` id comes from ``args["mod_pad_id"]``,
    else the one all-zero row (the padding row is never trained), else the official layout
    (sorted names, then ``<pad>``, ``<cls>``, ``<eoc>``: rows - 3). ``args["mod_in_input"]``
    (our deviation, written by :func:`official_args`) is read back.

    Raises
    ------
    CheckpointError
        When ``args`` disagree with the embedding, or for a ``MultiOmicTransformerModel``
        built with ``use_mod=False`` (its GEPC gene side is widened without a modality
        embedding; not supported).
    """
    if MOD_ENCODER_KEY not in state:
        query = _shape(state, "mvc_decoder.gene2query.weight")
        emb = _shape(state, "encoder.embedding.weight")
        if query is not None and emb is not None and query[-1] != emb[-1]:
            raise CheckpointError(
                f"mvc_decoder.gene2query takes {query[-1]} inputs, not d_model={emb[-1]}: a "
                "MultiOmicTransformerModel built with use_mod=False, which is not supported."
            )
        return {}
    weight = state[MOD_ENCODER_KEY]
    n_rows = int(weight.shape[0])
    if "ntokens_mod" in args and int(args["ntokens_mod"]) != n_rows:
        raise CheckpointError(
            f"args.json says ntokens_mod={args['ntokens_mod']} but mod_encoder has {n_rows} rows."
        )
    if "mod_pad_id" in args:
        pad = int(args["mod_pad_id"])
    else:
        zero_rows = [i for i in range(n_rows) if not bool(weight[i].float().abs().sum())]
        pad = zero_rows[0] if len(zero_rows) == 1 else n_rows - 3
    return {
        "use_mod": True,
        "n_mod_tokens": n_rows,
        "mod_pad_id": pad,
        "mod_in_input": bool(args.get("mod_in_input", False)),
    }


def official_args(config: ArchitectureConfig, **extra) -> dict:
    """An official-style ``args.json`` for an architecture."""
    args = {
        "embsize": config.d_model,
        "nheads": config.n_heads,
        "d_hid": config.d_hid,
        "nlayers": config.n_layers,
        "n_layers_cls": config.n_layers_cls,
        "dropout": config.dropout,
        "pad_token": "<pad>",
        "input_emb_style": config.input_emb_style,
        "cell_emb_style": config.cell_emb_style,
        "mvc_decoder_style": config.mvc_decoder_style,
        "ecs_threshold": config.ecs_threshold,
        "explicit_zero_prob": config.explicit_zero_prob,
        "pre_norm": config.pre_norm,
        "use_batch_labels": config.use_batch_labels,
        "domain_spec_batchnorm": config.domain_spec_batchnorm,
        "MVC": config.do_mvc,
        "DAB": config.do_dab,
        "n_cls": config.n_cls,
        "ntoken": config.n_tokens,
    }
    if config.use_pert_flags:
        args["pert_pad_id"] = config.pert_pad_id
    if config.use_mod:
        args.update(use_mod=True, ntokens_mod=config.n_mod_tokens, mod_pad_id=config.mod_pad_id)
        if config.mod_in_input:  # our deviation; official code ignores the key
            args["mod_in_input"] = True
    if config.uses_affine_decoder:
        args["decoder_activation"] = config.decoder_activation
        args["decoder_adaptive_bias"] = config.decoder_adaptive_bias
    args.update(extra)
    return args
