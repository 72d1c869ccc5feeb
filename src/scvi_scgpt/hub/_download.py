"""Download registered models into a local cache, verified by sha256 (pooch does the transfer)."""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from scvi_scgpt.hub._registry import RegistryEntry, load_registry, resolve_model_name

logger = logging.getLogger(__name__)

#: Environment variable: the cache directory (default: the platform's user cache).
CACHE_ENV = "SCVI_SCGPT_CACHE"
#: Environment variable: ``1`` forbids network access; only cached files are used.
OFFLINE_ENV = "SCVI_SCGPT_OFFLINE"
#: Per-model file recording the sha256 of files whose registry entry publishes none.
RECORDED_HASHES = "sha256-recorded.json"
#: Download attempts after the first one (network errors and hash mismatches).
RETRIES = 2


def cache_dir() -> Path:
    """The model cache: ``$SCVI_SCGPT_CACHE``, else the platform's user cache folder.

    The default is ``pooch.os_cache("scvi-scgpt") / "models"`` (e.g.
    ``~/.cache/scvi-scgpt/models`` on Linux).
    """
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser()
    import pooch

    return Path(pooch.os_cache("scvi-scgpt")) / "models"


def is_offline() -> bool:
    """Whether ``SCVI_SCGPT_OFFLINE`` forbids downloads (``1``, ``true``, ``yes``, ``on``)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def file_sha256(path: Path) -> str:
    """The sha256 hex digest of a file (read in chunks)."""
    import pooch

    return pooch.file_hash(str(path), alg="sha256")


def _recorded(folder: Path) -> dict:
    path = folder / RECORDED_HASHES
    return json.loads(path.read_text()) if path.is_file() else {}


def _record(folder: Path, file_name: str, sha256: str, url: str) -> None:
    records = _recorded(folder)
    records[file_name] = {
        "sha256": sha256,
        "url": url,
        "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    tmp = folder / f".{RECORDED_HASHES}.tmp"
    tmp.write_text(json.dumps(records, indent=1))
    os.replace(tmp, folder / RECORDED_HASHES)


def fetch_pretrained(
    name: str,
    *,
    registry: str | Path | dict | None = None,
    progress_bar: bool = True,
) -> Path:
    """Download (or find in the cache) the files of a registered model; return its folder.

    Each file is verified by its sha256: the registry's, or for files whose registry entry
    publishes none, the one recorded (in ``sha256-recorded.json`` of the model's folder) by
    the first download, with a log line saying so. A cached file that verifies is used
    without any network access; one that does not is downloaded again. With
    ``SCVI_SCGPT_OFFLINE=1`` nothing is downloaded.

    Parameters
    ----------
    name
        A registered name or alias (:func:`list_pretrained_models`).
    registry
        Extra registry (JSON file or dict), on top of the built-in one and
        ``SCVI_SCGPT_REGISTRY``.
    progress_bar
        Show download progress.

    Returns
    -------
    The model's cache folder (``cache_dir() / NAME``) holding every file of the entry.

    Raises
    ------
    KeyError
        Unknown name (the message lists the known ones).
    FileNotFoundError
        Offline, or no download URL is known, and a file is not in the cache: the message
        names the URL or source and the path to put the file at.
    ValueError
        A download whose sha256 differs from the expected one (nothing is written).
    ConnectionError
        The download failed after retries.
    """
    entry = resolve_model_name(name, registry)
    folder = cache_dir() / entry.name
    for spec in entry.files:
        _fetch_file(entry, spec, folder, progress_bar)
    return folder


def _fetch_file(entry: RegistryEntry, spec, folder: Path, progress_bar: bool) -> None:
    import pooch
    import requests

    path = folder / spec.name
    recorded = _recorded(folder).get(spec.name, {}).get("sha256")
    expected = spec.sha256 or recorded
    if path.is_file():
        actual = file_sha256(path)
        if expected is None or actual == expected:
            return  # a cache hit: no network access
        logger.warning(
            "Cached %s has sha256 %s, expected %s; fetching it again.", path, actual, expected
        )
    where = spec.url or entry.source or "(no source known)"
    if is_offline():
        raise FileNotFoundError(
            f"{OFFLINE_ENV} is set and {str(path)!r} is not cached (or fails its sha256 check). "
            f"Download {where} by hand to that path, or unset {OFFLINE_ENV}."
        )
    if not spec.url:
        raise FileNotFoundError(
            f"No direct download is known for {spec.name} of model {entry.name!r}. Download "
            f"it from {where} by hand to {str(path)!r}, or pass a registry with its URL."
        )
    fetcher = pooch.create(
        path=folder,
        base_url="",
        registry={spec.name: None if expected is None else f"sha256:{expected}"},
        urls={spec.name: spec.url},
        retry_if_failed=RETRIES,
        allow_updates=True,
    )
    downloader = pooch.HTTPDownloader(progressbar=progress_bar, timeout=60)
    logger.info("Downloading %s of %r from %s to %s", spec.name, entry.name, spec.url, folder)
    try:
        fetcher.fetch(spec.name, downloader=downloader)
    except ValueError as err:
        raise ValueError(
            f"The download of {spec.url} does not match its sha256 {expected} "
            f"({RETRIES + 1} attempts); nothing was written to {str(path)!r}. The server may "
            f"serve another file, or the registry's hash is wrong. Pooch said: {err}"
        ) from err
    except requests.exceptions.RequestException as err:
        raise ConnectionError(
            f"Could not download {spec.url} ({RETRIES + 1} attempts): {err}. Download it by "
            f"hand to {str(path)!r} (then it is used from the cache), or set {CACHE_ENV} to a "
            f"shared cache that holds it."
        ) from err
    if expected is None:
        sha256 = file_sha256(path)
        _record(folder, spec.name, sha256, spec.url)
        logger.warning(
            "No sha256 is published for %s of %r: recorded %s from this first download in "
            "%s; later loads verify it.",
            spec.name,
            entry.name,
            sha256,
            folder / RECORDED_HASHES,
        )


def list_pretrained_models(registry: str | Path | dict | None = None):
    """The registered models as a table.

    Parameters
    ----------
    registry
        Extra registry (JSON file or dict).

    Returns
    -------
    :class:`pandas.DataFrame` indexed by name: ``aliases``, ``description``, ``licence``,
    ``downloadable`` (every file has a URL), ``cached`` (every file is in the cache).
    """
    import pandas as pd

    rows = {}
    for name, entry in load_registry(registry).items():
        folder = cache_dir() / name
        rows[name] = {
            "aliases": ", ".join(entry.aliases),
            "description": entry.description,
            "licence": entry.licence,
            "downloadable": all(f.url for f in entry.files),
            "cached": all((folder / f.name).is_file() for f in entry.files),
        }
    return pd.DataFrame.from_dict(rows, orient="index")
