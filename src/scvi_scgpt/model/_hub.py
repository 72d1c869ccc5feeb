"""Hugging Face hub push / pull for SCGPT models (the logic is in :mod:`scvi_scgpt.hub`)."""

from __future__ import annotations

from pathlib import Path

from scvi_scgpt.hub import _huggingface


class HubMixin:
    """Share models on the Hugging Face hub in scvi-tools' hub layout, loaded without pickle."""

    def write_hub_folder(self, folder: str | Path, **kwargs) -> Path:
        """Write the hub layout of this model into ``folder`` (files, metadata, model card).

        Keywords as :func:`scvi_scgpt.hub.write_hub_folder` (``format="scvi"`` or
        ``"official"``, ``save_anndata``, ``training_data_url``, ``description``,
        ``licence``, ``metrics``, ``overwrite``).

        Returns
        -------
        The folder.
        """
        return _huggingface.write_hub_folder(self, folder, **kwargs)

    def push_to_huggingface_hub(self, repo_id: str, **kwargs) -> str:
        """Upload this model to the hub repository ``repo_id`` (the ``hub`` extra).

        Keywords as :func:`scvi_scgpt.hub.push_to_huggingface_hub` (``format``, ``token``,
        ``private``, ``commit_message`` and those of :meth:`write_hub_folder`).

        Returns
        -------
        The commit's URL.
        """
        return _huggingface.push_to_huggingface_hub(self, repo_id, **kwargs)

    @classmethod
    def pull_from_huggingface_hub(cls, repo_id: str, adata=None, **kwargs):
        """Download and load a model pushed with :meth:`push_to_huggingface_hub`.

        Keywords as :func:`scvi_scgpt.hub.pull_from_huggingface_hub` (``revision``,
        ``cache_dir``, ``token``, and :meth:`load` / :meth:`from_pretrained` options).

        Returns
        -------
        The loaded model.
        """
        return _huggingface.pull_from_huggingface_hub(cls, repo_id, adata, **kwargs)

    @classmethod
    def load_hub_folder(cls, folder: str | Path, adata=None, **kwargs):
        """Load a local folder in hub layout (e.g. a downloaded or shared one).

        Returns
        -------
        The loaded model.
        """
        return _huggingface.load_hub_folder(cls, folder, adata, **kwargs)
