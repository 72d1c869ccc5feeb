"""Reading and writing official scGPT checkpoints safely, with a strict key audit."""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from scvi_scgpt.data import GeneVocab
from scvi_scgpt.module import ArchitectureConfig

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
    "mvc_decoder.",
    "decoder.",
)


class CheckpointError(ValueError):
    """A checkpoint file or directory that cannot be used (corrupt, unsafe, inconsistent)."""


@dataclass
class CheckpointAudit:
    """What happened to every key when a checkpoint was loaded.

    Attributes
    ----------
    loaded
        Keys copied into the model.
    renamed
        ``{checkpoint key: model key}`` for keys in a flash-attn layout.
    initialised
        Model keys absent from the checkpoint and freshly initialised (new heads).
    unexpected
        Checkpoint keys with no place in the model (refused unless ``strict=False``).
    mismatched
        ``{key: (checkpoint shape, model shape)}``.
    """

    loaded: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    initialised: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    def summary(self) -> str:
        """Human-readable multi-line report."""
        lines = [f"loaded {len(self.loaded)} tensors"]
        if self.renamed:
            lines.append(f"renamed {len(self.renamed)} flash-attn keys to the torch layout")
        if self.initialised:
            lines.append(f"initialised {len(self.initialised)} new tensors: {self.initialised}")
        if self.unexpected:
            lines.append(f"ignored {len(self.unexpected)} unexpected keys: {self.unexpected}")
        if self.mismatched:
            lines.append(f"shape mismatches: {self.mismatched}")
        return "\n".join(lines)


def read_state_dict(path: str | Path, *, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Load a state dict of tensors without executing code.

    With ``mmap``, tensors of a zip-format ``.pt`` file are memory-mapped instead of read
    (pages load on first use), which halves peak memory when they are then assigned to a
    module.

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)``, which refuses pickled objects other than tensors and
    plain containers. Checkpoints wrapped as ``{"model_state_dict": ...}`` or
    ``{"state_dict": ...}`` and DDP ``module.`` prefixes are unwrapped.

    Raises
    ------
    CheckpointError
        For a missing, truncated, corrupt or unsafe file, or one that holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint file {str(path)!r} does not exist.")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as err:  # pragma: no cover - safetensors is a dependency
            raise CheckpointError("Reading .safetensors needs the safetensors package.") from err
        try:
            state = load_file(str(path), device="cpu")
        except Exception as err:  # noqa: BLE001 - any failure means an unusable file
            raise CheckpointError(f"Could not read {str(path)!r}: {err}") from err
    else:
        try:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError:
                if not mmap:
                    raise
                state = torch.load(path, map_location="cpu", weights_only=True)  # legacy format
        except pickle.UnpicklingError as err:
            raise CheckpointError(
                f"Refusing to load {str(path)!r}: it contains pickled objects other than tensors "
                "(it could run code when unpickled). Re-save it as a plain state dict "
                "(`torch.save(model.state_dict(), path)`) or as .safetensors.\n"
                f"Details: {str(err).splitlines()[0]}"
            ) from err
        except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
            raise CheckpointError(
                f"Could not read {str(path)!r}: the file is truncated or not a torch "
                f"checkpoint ({type(err).__name__}: {str(err).splitlines()[0]})."
            ) from err
    return _unwrap_state_dict(state, path)


def _unwrap_state_dict(state, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(state, dict):
        for wrapper in ("model_state_dict", "state_dict", "model"):
            inner = state.get(wrapper)
            if (
                isinstance(inner, dict)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                state = inner
                break
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{str(path)!r} does not hold a state dict of tensors.")
    bad = [
        k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)
    ]
    if bad:
        raise CheckpointError(
            f"{str(path)!r} holds {len(bad)} entries that are not named tensors (e.g. "
            f"{bad[:3]}); expected a plain state dict."
        )
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


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


def read_args(path: str | Path) -> dict:
    """Read an official ``args.json`` (a JSON object); an absent file gives ``{}``."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        args = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{str(path)!r} is not valid JSON: {err}") from err
    if not isinstance(args, dict):
        raise CheckpointError(f"{str(path)!r} must hold a JSON object of settings.")
    return args


def _shape(state: dict[str, torch.Tensor], key: str) -> tuple[int, ...] | None:
    return tuple(state[key].shape) if key in state else None


def infer_architecture(
    state: dict[str, torch.Tensor], args: dict, vocab: GeneVocab, **overrides
) -> ArchitectureConfig:
    """Architecture of a (torch-layout) official state dict.

    Sizes come from the tensor shapes, heads from the keys present, and what shapes cannot
    tell (``nheads``, ``pre_norm``, styles) from ``args.json``. ``overrides`` (our
    :class:`ArchitectureConfig` names) win over both.
    """
    emb = _shape(state, "encoder.embedding.weight")
    if emb is None or len(emb) != 2:
        raise CheckpointError(
            "Checkpoint has no 2-d 'encoder.embedding.weight': not an scGPT model state dict."
        )
    n_tokens, d_model = emb
    if n_tokens != len(vocab):
        raise CheckpointError(
            f"The vocabulary has {len(vocab):,} tokens (specials included) but the checkpoint's "
            f"gene embedding has {n_tokens:,} rows: vocab.json does not belong to this "
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
        "n_tokens": n_tokens,
        "pad_id": vocab.pad_id,
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


def load_into_module(
    module: torch.nn.Module,
    state: dict[str, torch.Tensor],
    *,
    strict: bool = True,
    renamed: dict[str, str] | None = None,
    resized_heads: bool = False,
    assign: bool = False,
) -> CheckpointAudit:
    """Copy ``state`` into ``module`` after a strict audit of every key.

    Missing keys are allowed only for optional heads (:data:`HEAD_PREFIXES`), which keep
    their fresh initialisation. Unexpected keys raise unless ``strict=False`` (then they are
    listed in the audit). Mis-shaped tensors raise, except head tensors when
    ``resized_heads`` (the caller asked for a different head, e.g. another number of
    classes): those are freshly initialised and listed in ``audit.mismatched``.

    With ``assign``, the checkpoint tensors become the module's tensors (no copy; the module
    may have been built on the ``meta`` device), and modules left on ``meta`` (new heads)
    are materialised and initialised.
    """
    own = module.state_dict()
    audit = CheckpointAudit(renamed=dict(renamed or {}))
    for key, value in state.items():
        if key not in own:
            audit.unexpected.append(key)
        elif tuple(value.shape) != tuple(own[key].shape):
            audit.mismatched[key] = (tuple(value.shape), tuple(own[key].shape))
        else:
            audit.loaded.append(key)
    missing = [k for k in own if k not in state]
    core_missing = [k for k in missing if not k.startswith(HEAD_PREFIXES)]
    audit.initialised = [k for k in missing if k.startswith(HEAD_PREFIXES)]
    core_mismatched = {
        k: v
        for k, v in audit.mismatched.items()
        if not (resized_heads and k.startswith(HEAD_PREFIXES))
    }
    audit.initialised += [k for k in audit.mismatched if k not in core_mismatched]
    if core_mismatched:
        raise CheckpointError(
            "Checkpoint tensors have the wrong shape for this architecture: "
            + ", ".join(
                f"{k}: checkpoint {a} vs model {b}" for k, (a, b) in core_mismatched.items()
            )
        )
    if core_missing:
        raise CheckpointError(
            f"Checkpoint lacks {len(core_missing)} required tensors (e.g. {core_missing[:5]}); it "
            "is incomplete or from a different architecture."
        )
    if audit.unexpected and strict:
        raise CheckpointError(
            f"Checkpoint has {len(audit.unexpected)} tensors this model has no place for (e.g. "
            f"{audit.unexpected[:5]}). Pass strict=False to ignore them (they are then listed "
            "in model.checkpoint_audit_)."
        )
    if assign:
        loaded = {k: state[k].to(own[k].dtype) for k in audit.loaded}
        module.load_state_dict(loaded, strict=False, assign=True)
        materialize_meta(module)
    else:
        with torch.no_grad():
            for key in audit.loaded:
                own[key].copy_(state[key])
    return audit


def materialize_meta(module: torch.nn.Module, device: str | torch.device = "cpu") -> None:
    """Give real, freshly initialised storage to every submodule still on ``meta``."""
    for name, sub in module.named_modules():
        tensors = list(sub.parameters(recurse=False)) + list(sub.buffers(recurse=False))
        if not any(t.is_meta for t in tensors):
            continue
        sub.to_empty(device=device, recurse=False)
        if not hasattr(sub, "reset_parameters"):
            raise CheckpointError(f"Cannot initialise {name or type(sub).__name__}.")
        sub.reset_parameters()


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
    args.update(extra)
    return args
