"""Pretrained models by name: registry, verified downloads into a cache, Hugging Face hub.

Environment variables (names fixed): ``SCVI_SCGPT_REGISTRY`` (extra registry JSON files,
``os.pathsep``-separated), ``SCVI_SCGPT_CACHE`` (the cache directory) and
``SCVI_SCGPT_OFFLINE=1`` (no network access). See ``docs/pretrained_models.md``.
"""

from scvi_scgpt.hub._download import (
    CACHE_ENV,
    OFFLINE_ENV,
    cache_dir,
    fetch_pretrained,
    file_sha256,
    is_offline,
    list_pretrained_models,
)
from scvi_scgpt.hub._huggingface import (
    load_hub_folder,
    pull_from_huggingface_hub,
    push_to_huggingface_hub,
    write_hub_folder,
)
from scvi_scgpt.hub._registry import (
    REGISTRY_ENV,
    ModelFile,
    RegistryEntry,
    load_registry,
    resolve_model_name,
)

__all__ = [
    "CACHE_ENV",
    "OFFLINE_ENV",
    "REGISTRY_ENV",
    "ModelFile",
    "RegistryEntry",
    "cache_dir",
    "fetch_pretrained",
    "file_sha256",
    "is_offline",
    "list_pretrained_models",
    "load_hub_folder",
    "load_registry",
    "pull_from_huggingface_hub",
    "push_to_huggingface_hub",
    "resolve_model_name",
    "write_hub_folder",
]
