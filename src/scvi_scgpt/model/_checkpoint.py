"""Reading checkpoint files safely, and loading them into a module with a strict key audit."""

from __future__ import annotations

import json
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from scvi_scgpt._exceptions import CheckpointError
from scvi_scgpt.module import HEAD_PREFIXES


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
