"""SCGPT models on the Hugging Face hub, in scvi-tools' hub layout, loaded without pickle.

scvi-tools' :class:`scvi.hub.HubModel` does not fit SCGPT cleanly (``docs/pretrained_models.md``):
its pull downloads only ``model.pt``, the metadata and the AnnData (our vocabulary and
settings live in ``vocab.json`` and ``scvi_scgpt.json``), it reads ``model.pt`` with
``torch.load(weights_only=False)``, imports whatever module the downloaded metadata names, and
its model-card helper refuses model classes other than scvi-tools' own. So this module follows
its layout (``_scvi_required_metadata.json`` with the same fields, a ``README.md`` card with
the same tags, the model's files beside them) and loads through our safe path only.
"""

from __future__ import annotations

import json
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

#: scvi-tools' hub metadata file name (the same fields as ``scvi.hub.HubMetadata``).
METADATA_FILE = "_scvi_required_metadata.json"
CARD_FILE = "README.md"
#: The files of each format that a hub folder holds (besides metadata, card and AnnData).
FORMAT_FILES = {
    "scvi": ("model.safetensors", "vocab.json", "scvi_scgpt.json"),
    "official": ("args.json", "vocab.json", "best_model.pt"),
}
_ANNDATA_FILES = ("adata.h5ad", "adata.h5mu")
_ACCEPTED_MODULES = ("scvi_scgpt", "scvi_scgpt.model")


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def _model_card(model, fmt: str, metadata: dict, description: str, licence: str,
                metrics: dict | None) -> str:  # fmt: skip
    arch = model.architecture
    task = getattr(model, "training_task_", None) or {}
    tags = [
        "biology",
        "genomics",
        "single-cell",
        "scgpt",
        f"model_cls_name:{metadata['model_cls_name']}",
        f"scvi_version:{metadata['scvi_version']}",
        f"anndata_version:{metadata['anndata_version']}",
        f"scvi_scgpt_version:{metadata['scvi_scgpt_version']}",
        f"format:{fmt}",
    ]
    lines = ["---", "library_name: scvi-tools", f"license: {licence}", "tags:"]
    lines += [f"- {tag}" for tag in tags]
    lines += ["---", "", f"# SCGPT ({fmt} format)", "", description or "An SCGPT model.", ""]
    lines += [
        "## Model",
        "",
        f"- d_model {arch.d_model}, {arch.n_layers} layers, {arch.n_heads} heads, "
        f"vocabulary of {len(model.vocab_)} tokens, {arch.n_batch} batches, "
        f"{arch.n_cls} classes.",
        f"- Package versions: scvi-scgpt {metadata['scvi_scgpt_version']}, scvi-tools "
        f"{metadata['scvi_version']}, anndata {metadata['anndata_version']}.",
        "",
        "## Training data",
        "",
        f"- {model.adata.n_obs} cells x {model.adata.n_vars} features"
        + (f"; data: {metadata['training_data_url']}" if metadata["training_data_url"] else ""),
        f"- Task: {task.get('task', 'none recorded')}; regime: {task.get('regime', '-')}.",
    ]
    if task.get("objectives"):
        used = [k for k, v in task["objectives"].items() if v is True]
        lines.append(f"- Objectives: {', '.join(used)}.")
    if task.get("hyperparameters"):
        values = ", ".join(f"{k} {v}" for k, v in task["hyperparameters"].items())
        lines.append(f"- Hyperparameters: {values}.")
    if metrics:
        lines += ["", "## Metrics", "", "| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v} |" for k, v in metrics.items()]
    loader = (
        "SCGPT.pull_from_huggingface_hub(REPO_ID, adata, revision=COMMIT)"
        if fmt == "scvi"
        else "SCGPT.from_pretrained(snapshot_download(REPO_ID, revision=COMMIT), adata)"
    )
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "from scvi_scgpt import SCGPT",
        f"model = {loader}",
        "```",
        "",
        "## Citation",
        "",
        "Cui H, Wang C, Maan H, et al. scGPT: toward building a foundation model for "
        "single-cell multi-omics using generative AI. Nat Methods 21, 1470-1480 (2024).",
        "",
    ]
    return "\n".join(lines)


def write_hub_folder(
    model,
    folder: str | Path,
    *,
    format: Literal["scvi", "official"] = "scvi",
    save_anndata: bool = False,
    training_data_url: str | None = None,
    description: str = "",
    licence: str = "mit",
    metrics: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write what :func:`push_to_huggingface_hub` uploads into a local folder.

    Parameters
    ----------
    model
        A :class:`~scvi_scgpt.SCGPT` model.
    folder
        Output folder.
    format
        ``"scvi"``: :meth:`SCGPT.save` files (safetensors weights); ``"official"``:
        :meth:`SCGPT.save_pretrained` files, which official scGPT code loads.
    save_anndata
        Also write the model's AnnData (``"scvi"`` format only).
    training_data_url
        Where the training data can be found (recorded in metadata and card).
    description, licence, metrics
        Model card text, licence tag and a ``{metric: value}`` table.
    overwrite
        Replace an existing model in ``folder``.

    Returns
    -------
    The folder, holding the format's files, ``_scvi_required_metadata.json`` and
    ``README.md``.
    """
    if format not in FORMAT_FILES:
        raise ValueError(f"format must be 'scvi' or 'official', got {format!r}.")
    folder = Path(folder)
    if format == "scvi":
        model.save(folder, overwrite=overwrite, save_anndata=save_anndata)
    else:
        if save_anndata:
            raise ValueError("save_anndata needs format='scvi' (official folders hold no data).")
        model.save_pretrained(folder, overwrite=overwrite)
    metadata = {
        "scvi_version": _version("scvi-tools"),
        "anndata_version": _version("anndata"),
        "model_cls_name": type(model).__name__,
        "training_data_url": training_data_url,
        "model_parent_module": "scvi_scgpt",
        "scvi_scgpt_version": _version("scvi-scgpt"),
        "format": format,
    }
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=1), encoding="utf-8")
    card = _model_card(model, format, metadata, description, licence, metrics)
    (folder / CARD_FILE).write_text(card, encoding="utf-8")
    return folder


def load_hub_folder(cls, folder: str | Path, adata=None, **load_kwargs):
    """Load a folder in hub layout (:func:`write_hub_folder`), checking its metadata first.

    Only ``SCGPT`` of ``scvi_scgpt`` is accepted: the metadata's module is never imported.
    ``"scvi"`` folders load with :meth:`SCGPT.load`, ``"official"`` ones with
    :meth:`SCGPT.from_pretrained` (which needs ``adata``).
    """
    folder = Path(folder)
    meta_path = folder / METADATA_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no {METADATA_FILE}: not a hub folder.")
    metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    name = metadata.get("model_cls_name")
    module = metadata.get("model_parent_module")
    if name != cls.__name__ or module not in _ACCEPTED_MODULES:
        raise ValueError(
            f"{str(folder)!r} holds a {module}.{name} model; only {cls.__name__} models of "
            "scvi_scgpt are loaded (other classes: use their own package)."
        )
    if metadata.get("format", "scvi") == "official":
        if adata is None:
            raise ValueError("An official-format model needs the AnnData to attach: adata=...")
        return cls.from_pretrained(folder, adata, **load_kwargs)
    return cls.load(folder, adata, **load_kwargs)


def push_to_huggingface_hub(
    model,
    repo_id: str,
    *,
    format: Literal["scvi", "official"] = "scvi",
    token: str | None = None,
    private: bool = True,
    commit_message: str = "Upload SCGPT model",
    **folder_kwargs,
) -> str:
    """Upload a model to a Hugging Face hub repository (created when missing).

    The folder written by :func:`write_hub_folder` (``folder_kwargs``) is uploaded with
    ``huggingface_hub.HfApi.upload_folder``. Needs the ``hub`` extra.

    Returns
    -------
    The commit's URL; pass its commit to :func:`pull_from_huggingface_hub`'s ``revision``.
    """
    try:
        from huggingface_hub import HfApi
    except ImportError as err:
        raise ImportError("Install the hub extra: pip install 'scvi-scgpt[hub]'.") from err
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_hub_folder(model, Path(tmp) / "model", format=format, **folder_kwargs)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), commit_message=commit_message
        )
    return str(getattr(info, "commit_url", info))


def pull_from_huggingface_hub(
    cls,
    repo_id: str,
    adata=None,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | None = None,
    local_files_only: bool = False,
    **load_kwargs,
):
    """Download a model pushed by :func:`push_to_huggingface_hub` and load it safely.

    Only the files of the two formats, the metadata, the card and the AnnData are
    downloaded (``huggingface_hub.snapshot_download``, which honours ``HF_HUB_OFFLINE``
    and ``HF_HUB_CACHE``); ``revision`` pins a commit (recommended). With
    ``local_files_only`` only the hub cache is read (no network).
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise ImportError("Install the hub extra: pip install 'scvi-scgpt[hub]'.") from err
    patterns = sorted(
        {
            METADATA_FILE,
            CARD_FILE,
            *_ANNDATA_FILES,
            *(f for fs in FORMAT_FILES.values() for f in fs),
        }
    )
    folder = snapshot_download(
        repo_id,
        revision=revision,
        cache_dir=cache_dir,
        token=token,
        allow_patterns=patterns,
        local_files_only=local_files_only,
    )
    return load_hub_folder(cls, folder, adata, **load_kwargs)
