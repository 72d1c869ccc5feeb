"""Pretrained models by name: the built-in table of official checkpoints and user registries.

A registry is JSON (the built-in one is ``hub/registry.json``)::

    {"models": {"NAME": {"files": {"FILE_NAME": {"url": "...", "sha256": "..."}},
                         "description": "...", "licence": "...", "citation": "...",
                         "aliases": ["..."]}}}

``url`` may be ``null`` (no direct download is known: the files must be put into the cache
by hand) and ``sha256`` may be ``null`` (the first download records it, later loads verify
it; an HTML page is never recorded). An optional ``"size"`` (bytes) is checked on every
download. Model names, aliases and file names are plain names (no path separators, not
``.``/``..``, not absolute; the cache folder is ``CACHE/NAME``); ``aliases`` is a list of
strings; ``sha256-recorded.json`` is reserved. Entries of user registries (``registry=``
or ``SCVI_SCGPT_REGISTRY``) replace built-in entries of the same name.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath, PureWindowsPath

#: Environment variable naming extra registry files (``os.pathsep``-separated).
REGISTRY_ENV = "SCVI_SCGPT_REGISTRY"

#: Per-model file recording the sha256 of files whose registry entry publishes none.
RECORDED_HASHES = "sha256-recorded.json"
#: File names the cache keeps for itself: no registry file may be called so.
RESERVED_FILE_NAMES = (RECORDED_HASHES, f".{RECORDED_HASHES}.lock")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ModelFile:
    """One file of a registered model."""

    name: str
    url: str | None
    sha256: str | None
    size: int | None = None


@dataclass(frozen=True)
class RegistryEntry:
    """A registered model: its files and what it is."""

    name: str
    files: tuple[ModelFile, ...]
    description: str = ""
    licence: str = ""
    citation: str = ""
    source: str = ""
    aliases: tuple[str, ...] = field(default=())


def _normalise(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip()).lower()


def check_plain_name(name: object, what: str) -> str:
    """``name`` if it is one plain path component (a model, alias or file name), else raise.

    A plain name is a non-empty string with no slash or backslash, no NUL, no drive, not
    absolute and not ``.`` or ``..``: joined to a cache folder, it stays inside it.

    Parameters
    ----------
    name
        The name to check (any value: a registry is untrusted JSON).
    what
        What the name is, for the message (e.g. ``"Registry 'r.json': model name"``).

    Returns
    -------
    ``name``, a plain name.

    Raises
    ------
    ValueError
        ``name`` is not a plain name; ``what`` is in the message.
    """
    if (
        not isinstance(name, str)
        or name.strip() in ("", ".", "..")
        or any(c in name for c in "/\\\0")
        or PurePosixPath(name).is_absolute()
        or PureWindowsPath(name).drive
    ):
        raise ValueError(
            f"{what} {name!r} must be a plain name: non-empty, no '/' or '\\', not '.' or "
            "'..', not absolute. Rename it in the registry."
        )
    return name


def _aliases(spec: dict, where: str) -> tuple[str, ...]:
    aliases = spec.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise ValueError(
            f'{where}: "aliases" must be a list of strings, got {aliases!r}; write e.g. '
            '"aliases": ["human"].'
        )
    return tuple(check_plain_name(a, f"{where}: alias") for a in aliases)


def _size(fspec: dict, where: str) -> int | None:
    size = fspec.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise ValueError(
            f'{where}: "size" must be the file\'s length in bytes (an integer >= 0) or null, '
            f"got {size!r}."
        )
    return size


def _entries_from(data: dict, origin: str) -> dict[str, RegistryEntry]:
    """Validate a registry's JSON and return its entries by name."""
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise ValueError(
            f'Registry {origin} needs a top-level {{"models": {{NAME: ...}}}} object.'
        )
    entries = {}
    for name, spec in data["models"].items():
        check_plain_name(name, f"Registry {origin}: model name")
        where = f"{origin}, model {name!r}"
        files = spec.get("files") if isinstance(spec, dict) else None
        if not isinstance(files, dict) or not files:
            raise ValueError(
                f'{where}: needs "files": {{FILE_NAME: {{"url": ..., "sha256": ...}}}}.'
            )
        parsed = []
        for file_name, fspec in files.items():
            if not isinstance(fspec, dict) or "url" not in fspec or "sha256" not in fspec:
                raise ValueError(f'{where}, file {file_name!r}: needs "url" and "sha256" keys.')
            sha = fspec["sha256"]
            if sha is not None and not _SHA256.match(str(sha).lower()):
                raise ValueError(
                    f"{where}, file {file_name!r}: sha256 {sha!r} is not 64 hex digits."
                )
            check_plain_name(file_name, f"{where}: file name")
            if file_name in RESERVED_FILE_NAMES:
                raise ValueError(
                    f"{where}: file name {file_name!r} is reserved for the cache's own "
                    f"bookkeeping ({', '.join(RESERVED_FILE_NAMES)}); rename the file."
                )
            size = _size(fspec, f"{where}, file {file_name!r}")
            parsed.append(
                ModelFile(file_name, fspec["url"], None if sha is None else str(sha).lower(), size)
            )
        entries[name] = RegistryEntry(
            name=name,
            files=tuple(parsed),
            description=spec.get("description", ""),
            licence=spec.get("licence", ""),
            citation=spec.get("citation", ""),
            source=spec.get("source", ""),
            aliases=_aliases(spec, where),
        )
    return entries


def _read_registry(source: str | Path | dict) -> dict[str, RegistryEntry]:
    if isinstance(source, dict):
        return _entries_from(source, "passed as a dict")
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"Registry file {str(path)!r} does not exist.")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"Registry file {str(path)!r} is not valid JSON: {err}") from err
    return _entries_from(data, repr(str(path)))


def load_registry(registry: str | Path | dict | None = None) -> dict[str, RegistryEntry]:
    """Every known model: built-in, then ``SCVI_SCGPT_REGISTRY`` files, then ``registry``.

    Later sources replace earlier entries of the same name.

    Parameters
    ----------
    registry
        A registry JSON file or an already parsed dict (module docstring for the schema).

    Returns
    -------
    ``{name: RegistryEntry}``.
    """
    text = resources.files("scvi_scgpt.hub").joinpath("registry.json").read_text()
    entries = _entries_from(json.loads(text), "built-in")
    for path in filter(None, os.environ.get(REGISTRY_ENV, "").split(os.pathsep)):
        entries.update(_read_registry(path))
    if registry is not None:
        entries.update(_read_registry(registry))
    return entries


def resolve_model_name(name: str, registry: str | Path | dict | None = None) -> RegistryEntry:
    """The registry entry of ``name`` or one of its aliases (case, ``-`` and spaces ignored).

    Raises
    ------
    KeyError
        For an unknown name; the message lists the known names.
    """
    entries = load_registry(registry)
    wanted = _normalise(name)
    for entry in entries.values():
        if wanted in {_normalise(n) for n in (entry.name, *entry.aliases)}:
            return entry
    known = ", ".join(
        f"{e.name} ({', '.join(e.aliases)})" if e.aliases else e.name for e in entries.values()
    )
    raise KeyError(
        f"{name!r} is neither a model directory nor a known model name. Known names: {known}. "
        f"Add your own with registry= or {REGISTRY_ENV}."
    )
