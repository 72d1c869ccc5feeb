"""Download registered models into a local cache, verified by sha256 (pooch does the transfer)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from scvi_scgpt.hub._registry import (
    RECORDED_HASHES,
    RESERVED_FILE_NAMES,
    ModelFile,
    RegistryEntry,
    load_registry,
    resolve_model_name,
)

logger = logging.getLogger(__name__)

#: Environment variable: the cache directory (default: the platform's user cache).
CACHE_ENV = "SCVI_SCGPT_CACHE"
#: Environment variable: ``1`` forbids network access; only cached files are used.
OFFLINE_ENV = "SCVI_SCGPT_OFFLINE"
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


_RECORD_LOCK = RESERVED_FILE_NAMES[1]
#: How many bytes of a hash-less download are read to tell an HTML page from a model file.
_SNIFF_BYTES = 1024


def _recorded(folder: Path) -> dict:
    path = folder / RECORDED_HASHES
    if not path.is_file():
        return {}
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        records = err
    if not isinstance(records, dict):
        raise ValueError(
            f"{str(path)!r} is not a JSON object of recorded hashes ({records}). Delete it: the "
            "next download of each file records its hash again."
        )
    return records


@contextmanager
def _records_locked(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on the folder's recorded hashes (POSIX ``flock``; else none).

    The lock is released when the process ends, so a crashed rank leaves no stale lock.
    """
    try:
        import fcntl
    except ImportError:  # Windows: the unique temporary file and atomic replace remain
        yield
        return
    with open(folder / _RECORD_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _record(folder: Path, file_name: str, sha256: str, url: str) -> None:
    """Add ``file_name``'s hash to the recorded hashes; safe with several ranks at once.

    Under a lock, what is on disk is read again and merged, written to a unique temporary
    file in ``folder`` and atomically moved into place: readers see the old or the new file,
    never a partial one, and no rank's record is lost.
    """
    entry = {
        "sha256": sha256,
        "url": url,
        "recorded": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    target = folder / RECORDED_HASHES
    with _records_locked(folder):
        records = {**_recorded(folder), file_name: entry}
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{RECORDED_HASHES}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(records, handle, indent=1)
            # mkstemp makes the file private; give it the mode the folder gives its files
            os.chmod(tmp, (target if target.is_file() else folder).stat().st_mode & 0o666)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class _NotTheFile(Exception):
    """A complete download that is not the registered file (not retried; a ValueError later)."""


def _looks_like_html(path: Path) -> bool:
    """Whether ``path`` starts (after whitespace) with ``<!DOCTYPE html`` or ``<html``."""
    with open(path, "rb") as handle:
        head = handle.read(_SNIFF_BYTES)
    head = head.removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


def _checking(downloader: Callable, spec: ModelFile, path: Path, sniff_html: bool) -> Callable:
    """``downloader``, refusing a download of another size or (``sniff_html``) an HTML page.

    The check runs on pooch's temporary file, before it is moved into the cache.
    """

    def download(url: str, output_file: str, pooch_obj, **kwargs) -> None:
        downloader(url, output_file, pooch_obj, **kwargs)
        size = Path(output_file).stat().st_size
        if spec.size is not None and size != spec.size:
            raise _NotTheFile(
                f"The download of {url} is {size} bytes, the registry says {spec.size}; nothing "
                f"was written to {str(path)!r}. The server serves another file, or the "
                'registry\'s "size" is wrong.'
            )
        if sniff_html and _looks_like_html(Path(output_file)):
            raise _NotTheFile(
                f"The download of {url} is an HTML page (a quota, sign-in or error page, e.g. "
                f"Google Drive's), not {spec.name}: it was not recorded as its trusted sha256 "
                f"and nothing was written to {str(path)!r}. Try again later, download the file "
                "by hand to that path, or (if it really is HTML) publish its sha256 in the "
                "registry."
            )

    return download


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
        A download whose sha256 or size differs from the expected one, or a hash-less
        download that is an HTML page (nothing is written, no hash is recorded); a cached
        file of another size than the registry's that cannot be downloaded again (offline,
        or no URL: the file is kept); a registry that is not valid
        (:func:`~scvi_scgpt.hub.load_registry`).
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
    where = spec.url or entry.source or "(no source known)"
    if path.is_file():
        size = path.stat().st_size
        if spec.size is not None and size != spec.size:
            if is_offline() or not spec.url:  # it cannot be fetched again: keep it
                why = f"{OFFLINE_ENV} is set" if spec.url else "no direct download is known"
                raise ValueError(
                    f"The cached file {str(path)!r} is {size} bytes, the registry says "
                    f"{spec.size}, and {why}, so it cannot be fetched again; it was left as "
                    f"it is. Put the right file there (from {where}), or fix the registry's "
                    '"size" if this file is the right one.'
                )
            logger.warning(
                "Cached %s is %d bytes, the registry says %d; fetching it again.",
                path,
                size,
                spec.size,
            )
            path.unlink(missing_ok=True)  # pooch would keep a file whose hash is unknown
        else:
            actual = file_sha256(path)
            if expected is None or actual == expected:
                return  # a cache hit: no network access
            logger.warning(
                "Cached %s has sha256 %s, expected %s; fetching it again.", path, actual, expected
            )
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
    downloader = _checking(
        pooch.HTTPDownloader(progressbar=progress_bar, timeout=60),
        spec,
        path,
        sniff_html=expected is None,  # a hash-less download is about to become the trusted one
    )
    logger.info("Downloading %s of %r from %s to %s", spec.name, entry.name, spec.url, folder)
    try:
        fetcher.fetch(spec.name, downloader=downloader)
    except _NotTheFile as err:
        raise ValueError(str(err)) from None
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
