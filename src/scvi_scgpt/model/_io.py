"""Model input/output: official model directories, and our own save format (no pickle)."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from anndata import AnnData
from scvi import settings

from scvi_scgpt._constants import CLS_VALUE_PRETRAIN, MAX_SEQ_LEN, N_BINS
from scvi_scgpt._exceptions import CheckpointError
from scvi_scgpt.data import GeneVocab
from scvi_scgpt.model._base import BUILD_ON_META
from scvi_scgpt.model._checkpoint import (
    CheckpointAudit,
    load_into_module,
    read_args,
    read_state_dict,
)
from scvi_scgpt.model._multiomic import KEEP_VOCAB, is_mudata
from scvi_scgpt.model._scvi_compat import pick_device
from scvi_scgpt.model._serialization import (
    attrs_to_load,
    attrs_to_save,
    from_jsonable,
    to_jsonable,
)
from scvi_scgpt.module import (
    NON_OFFICIAL_PREFIXES,
    infer_architecture,
    official_args,
    to_torch_layout,
)

logger = logging.getLogger(__name__)

_MODEL_FILE = "model.pt"
_SAFETENSORS_FILE = "model.safetensors"
_META_FILE = "scvi_scgpt.json"
_VOCAB_FILE = "vocab.json"
_FORMAT_VERSION = 1


class IOMixin:
    """``from_pretrained`` / ``save_pretrained`` (official format) and ``save`` / ``load``."""

    @classmethod
    def from_pretrained(
        cls,
        model_dir: str | Path,
        adata: AnnData,
        *,
        strict: bool = True,
        max_seq_len: int | None = None,
        seed: int = 0,
        checkpoint: str | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        inherit: Literal["all", "gene_embeddings"] = "all",
        registry: str | Path | dict | None = None,
        progress_bar: bool = True,
        **overrides,
    ):
        """Load an official scGPT model directory, or a pretrained model by name.

        The directory holds ``args.json``, ``vocab.json`` and ``best_model.pt``. A name
        (``"whole_human"``, ``"scGPT_human"``, ``"continual_pretrained"``, ``"blood"``, ...;
        :func:`scvi_scgpt.hub.list_pretrained_models`) is downloaded once into the cache
        (``SCVI_SCGPT_CACHE``), verified by sha256 and loaded from there
        (``docs/pretrained_models.md``).

        The architecture is read from the weights (sizes, which heads exist) and
        ``args.json`` (heads count, styles). Flash-attn layouts (``self_attn.Wqkv.*``,
        ``self_attn._impl.Wqkv.*``) are renamed to ``in_proj_*``. The file is read with
        ``torch.load(weights_only=True)`` (or safetensors): a checkpoint that would run code
        is refused. Every key is audited (:attr:`checkpoint_audit_`): extra heads in the file
        (``flag_encoder``, ``mvc_decoder``, classifiers) are built and loaded, never dropped.

        Parameters
        ----------
        model_dir
            Official model directory, or a registered model name or alias (used when no
            directory of that name exists).
        adata
            AnnData set up with :meth:`setup_anndata`, or a MuData set up with
            :meth:`setup_mudata`: its proteins and peaks become new tokens (new rows of the
            gene embedding, uniform in ±0.1 as official), the RNA genes keep their pretrained
            rows, the modality encoder is added and decoders widened for the modality tokens
            are freshly initialised; train with ``train("multiomic")``.
        strict
            Refuse checkpoint tensors the architecture has no place for (else they are only
            listed in ``checkpoint_audit_``).
        max_seq_len
            Tokens per cell; default ``args.json``'s ``max_seq_len`` or 1200.
        seed
            Seed of the per-cell random choices.
        checkpoint
            File name inside ``model_dir`` (default: ``best_model.pt``, else
            ``model.safetensors``).
        accelerator, device
            Where to put the model (scvi-tools conventions).
        inherit
            ``"all"``: every checkpoint tensor is loaded. ``"gene_embeddings"``: only the gene
            embedding rows and ``encoder.enc_norm.weight`` are kept and everything else is
            freshly initialised (seeded by ``seed``), as the official multi-omic tutorial
            starts from the whole-human model (the depth stays the checkpoint's).
        registry
            Extra model registry (a JSON file or dict; schema in
            ``docs/pretrained_models.md``), on top of the built-in one and
            ``SCVI_SCGPT_REGISTRY``.
        progress_bar
            Show download progress (names only).
        **overrides
            Architecture options overriding the checkpoint's (e.g. ``n_cls=8`` adds a fresh
            classifier head; ``dropout``).

        Returns
        -------
        The loaded :class:`SCGPT` model (marked as trained).
        """
        if inherit not in ("all", "gene_embeddings"):
            raise ValueError(f"inherit must be 'all' or 'gene_embeddings', got {inherit!r}.")
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            if model_dir.exists() or len(model_dir.parts) > 1:
                raise FileNotFoundError(f"Model directory {str(model_dir)!r} does not exist.")
            from scvi_scgpt.hub import fetch_pretrained

            model_dir = fetch_pretrained(
                str(model_dir), registry=registry, progress_bar=progress_bar
            )
        vocab_path = model_dir / _VOCAB_FILE
        if not vocab_path.is_file():
            raise FileNotFoundError(f"{str(model_dir)!r} has no {_VOCAB_FILE}.")
        vocab = GeneVocab.from_file(vocab_path)
        args = read_args(model_dir / "args.json")
        weights = cls._find_checkpoint(model_dir, checkpoint)
        state, renamed = to_torch_layout(read_state_dict(weights, mmap=True))
        config = infer_architecture(
            state, args, n_tokens=len(vocab), pad_id=vocab.pad_id, **overrides
        )
        cfg = config.to_dict()
        for key in ("n_tokens", "pad_id"):
            cfg.pop(key)
        # build on "meta" and adopt the (memory-mapped) checkpoint tensors: one copy in memory
        token = BUILD_ON_META.set(True)
        try:
            model = cls(
                adata,
                vocab=vocab,
                max_seq_len=int(max_seq_len or args.get("max_seq_len", MAX_SEQ_LEN)),
                n_bins=int(args.get("n_bins", N_BINS)),
                cls_value=CLS_VALUE_PRETRAIN,
                seed=seed,
                **cfg,
            )
        finally:
            BUILD_ON_META.reset(token)
        mod_vocab = model_dir / "vocab_mod.json"
        if mod_vocab.is_file() and model.modality_vocab_ is not None:
            saved = GeneVocab.from_file(mod_vocab, add_specials=False).tokens
            if saved != model.modality_vocab_:
                raise CheckpointError(
                    f"The checkpoint's modality vocabulary {saved} differs from this MuData's "
                    f"{model.modality_vocab_}."
                )
        grown = len(model.vocab_) - len(vocab)
        if grown > 0:  # a MuData's proteins and peaks: new rows, official uniform init
            state = dict(state)
            old = state["encoder.embedding.weight"]
            rows = torch.empty(grown, old.shape[1], dtype=old.dtype)
            rows.uniform_(-0.1, 0.1, generator=torch.Generator().manual_seed(seed))
            state["encoder.embedding.weight"] = torch.cat([old, rows])
            logger.info("Added %d new tokens (proteins, peaks) to the vocabulary.", grown)
        audit = load_into_module(
            model.module,
            state,
            strict=strict,
            renamed=renamed,
            resized_heads=bool(overrides) or model.modality_vocab_ is not None,
            assign=True,
        )
        if audit.mismatched:
            warnings.warn(
                f"Re-initialised {len(audit.mismatched)} head tensors whose shape changed with "
                f"the requested architecture: {list(audit.mismatched)}",
                UserWarning,
                stacklevel=settings.warnings_stacklevel,
            )
        if audit.unexpected:
            warnings.warn(
                f"Ignored {len(audit.unexpected)} checkpoint tensors: {audit.unexpected[:5]}",
                UserWarning,
                stacklevel=settings.warnings_stacklevel,
            )
        logger.info("Loaded %s: %s", weights, audit.summary().replace("\n", "; "))
        if inherit == "gene_embeddings":
            torch.manual_seed(seed)
            fresh = cls._module_cls(model.architecture)
            with torch.no_grad():
                for name in ("embedding.weight", "enc_norm.weight"):
                    fresh.encoder.get_parameter(name).copy_(
                        model.module.encoder.get_parameter(name)
                    )
            model.module = fresh
        model.checkpoint_audit_ = audit
        model.is_trained_ = True
        model.to_device(pick_device(accelerator, device))
        model.module.eval()
        return model

    @staticmethod
    def _find_checkpoint(model_dir: Path, name: str | None) -> Path:
        if name is not None:
            return model_dir / name
        for candidate in ("best_model.pt", "model.safetensors", "best_model.safetensors"):
            if (model_dir / candidate).is_file():
                return model_dir / candidate
        raise FileNotFoundError(
            f"{str(model_dir)!r} has no best_model.pt or model.safetensors; name the weights "
            "file with checkpoint=..."
        )

    def save_pretrained(self, dir_path: str | Path, *, overwrite: bool = False) -> None:
        """Write an official-format model directory.

        Files: ``args.json``, ``vocab.json`` and ``best_model.pt`` (a plain state dict with
        the official key names), loadable by :meth:`from_pretrained` and official scGPT.
        """
        dir_path = self._prepare_dir(dir_path, overwrite, ("best_model.pt", "args.json"))
        args = official_args(
            self.architecture,
            max_seq_len=self.tokenizer_config.max_seq_len,
            n_bins=self.tokenizer_config.n_bins,
            pad_value=self.tokenizer_config.pad_value,
            mask_value=-1,
            input_style="binned" if self.tokenizer_config.n_bins else "log1p",
        )
        (dir_path / "args.json").write_text(json.dumps(args, indent=2), encoding="utf-8")
        self.vocab_.save(dir_path / _VOCAB_FILE)
        state = self._cpu_state_dict()
        ours = [k for k in state if k.startswith(NON_OFFICIAL_PREFIXES)]
        if ours:
            logger.warning(
                "save_pretrained writes the official format, which has no count decoder: it is "
                "left out (model.save keeps it)."
            )
            state = {k: v for k, v in state.items() if k not in ours}
        torch.save(state, dir_path / "best_model.pt")

    def _cpu_state_dict(self) -> dict:
        """The module's tensors, detached, on the CPU and contiguous (as files store them)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}

    @staticmethod
    def _prepare_dir(dir_path, overwrite: bool, files: Sequence[str]) -> Path:
        dir_path = Path(dir_path)
        if dir_path.exists() and not overwrite and any((dir_path / f).exists() for f in files):
            raise FileExistsError(
                f"{str(dir_path)!r} already holds a saved model; pass overwrite=True."
            )
        dir_path.mkdir(parents=True, exist_ok=True)
        return dir_path

    def save(
        self,
        dir_path: str | Path,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        weights_format: Literal["safetensors", "pt"] = "safetensors",
        **anndata_write_kwargs,
    ) -> None:
        """Save the model to ``dir_path`` without pickle.

        Writes the weights (``model.safetensors``; ``model.pt``, a state dict read back with
        ``torch.load(weights_only=True)``, with ``weights_format="pt"``), ``vocab.json`` and
        ``scvi_scgpt.json`` (settings, scvi-tools registry, training history), plus
        ``adata.h5ad`` (``adata.h5mu`` for a MuData) with ``save_anndata``. :meth:`load`
        restores an identical model from either weights format.
        """
        if weights_format not in ("safetensors", "pt"):
            raise ValueError(
                f"weights_format must be 'safetensors' or 'pt', got {weights_format!r}."
            )
        prefix = prefix or ""
        dir_path = self._prepare_dir(
            dir_path, overwrite, (prefix + _MODEL_FILE, prefix + _SAFETENSORS_FILE)
        )
        init = self.init_params_
        non_kwargs = {k: v for k, v in init["non_kwargs"].items() if k != "vocab"}
        meta = {
            "format_version": _FORMAT_VERSION,
            "model_name": type(self).__name__,
            "init_params": {"non_kwargs": non_kwargs, "kwargs": init["kwargs"]},
            "registry": self.registry_,
            "attrs": attrs_to_save(self),
            "var_names": np.asarray(self.adata.var_names),
        }
        if self.checkpoint_audit_ is not None:
            meta["checkpoint_audit"] = vars(self.checkpoint_audit_)
        (dir_path / (prefix + _META_FILE)).write_text(
            json.dumps(to_jsonable(meta)), encoding="utf-8"
        )
        self.vocab_.save(dir_path / (prefix + _VOCAB_FILE))
        state = self._cpu_state_dict()
        for stale in (_MODEL_FILE, _SAFETENSORS_FILE):  # never two weights files (overwrite)
            (dir_path / (prefix + stale)).unlink(missing_ok=True)
        if weights_format == "safetensors":
            from safetensors.torch import save_file

            save_file(state, str(dir_path / (prefix + _SAFETENSORS_FILE)))
        else:
            torch.save(state, dir_path / (prefix + _MODEL_FILE))
        if save_anndata and is_mudata(self.adata):
            self.adata.write_h5mu(dir_path / (prefix + "adata.h5mu"), **anndata_write_kwargs)
        elif save_anndata:
            self.adata.write_h5ad(dir_path / (prefix + "adata.h5ad"), **anndata_write_kwargs)

    @classmethod
    def load(
        cls,
        dir_path: str | Path,
        adata: AnnData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
        **kwargs,
    ):
        """Load a model saved with :meth:`save` (no pickle is read).

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        adata
            AnnData to attach (set up like the saved one; any genes). ``None`` reads
            ``adata.h5ad`` saved alongside.
        accelerator, device
            Where to put the model.
        prefix
            File-name prefix used when saving.
        """
        dir_path = Path(dir_path)
        prefix = prefix or ""
        meta_path = dir_path / (prefix + _META_FILE)
        if not meta_path.is_file():
            raise FileNotFoundError(f"{str(meta_path)!r} not found: not a saved SCGPT model.")
        try:
            meta = from_jsonable(json.loads(meta_path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{str(meta_path)!r} is corrupt: {err}") from err
        if meta.get("model_name") != cls.__name__:
            raise ValueError(
                f"{str(dir_path)!r} holds a {meta.get('model_name')}, not {cls.__name__}."
            )
        attrs = attrs_to_load(meta.get("attrs", {}), repr(str(meta_path)))
        if adata is None:
            h5ad = dir_path / (prefix + "adata.h5ad")
            h5mu = dir_path / (prefix + "adata.h5mu")
            if h5mu.is_file():
                import mudata

                adata = mudata.read_h5mu(h5mu)
            elif h5ad.is_file():
                import anndata

                adata = anndata.read_h5ad(h5ad)
            else:
                raise ValueError("Pass the AnnData to attach: no adata.h5ad was saved.")
        registry = meta["registry"]
        cls._setup_from_registry(adata, registry)
        vocab = GeneVocab.from_file(dir_path / (prefix + _VOCAB_FILE))
        init = meta["init_params"]
        kwargs_flat = {k: v for group in init["kwargs"].values() for k, v in group.items()}
        token = KEEP_VOCAB.set(True)
        try:
            model = cls(adata, vocab=vocab, **init["non_kwargs"], **kwargs_flat)
        finally:
            KEEP_VOCAB.reset(token)
        for attr, value in attrs.items():
            setattr(model, attr, value)
        if "checkpoint_audit" in meta:
            model.checkpoint_audit_ = CheckpointAudit(**meta["checkpoint_audit"])
        weights = dir_path / (prefix + _SAFETENSORS_FILE)
        if not weights.is_file():
            weights = dir_path / (prefix + _MODEL_FILE)  # weights_format="pt" or older saves
        state = read_state_dict(weights)
        load_into_module(model.module, state, strict=True)
        missing = [k for k in model.module.state_dict() if k not in state]
        if missing:
            raise CheckpointError(f"Saved weights lack {missing[:5]}: the save is incomplete.")
        model.to_device(pick_device(accelerator, device))
        model.module.eval()
        return model
