"""Sphinx configuration (build with `make docs`; warnings are errors)."""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import pkgutil
import re
from pathlib import Path

import scvi_scgpt

project = "scvi-scgpt"
author = "scvi-scgpt developers"
release = importlib.metadata.version("scvi-scgpt")
version = release

extensions = [
    "myst_nb",  # MyST markdown pages and notebooks (includes myst_parser)
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx_autodoc_typehints",  # after napoleon
    "sphinxcontrib.bibtex",
]
templates_path = ["_templates"]
exclude_patterns = ["_build", "_templates", "**.ipynb_checkpoints"]

# API reference: one page per package listed in api.md, each documenting its `__all__`.
autosummary_generate = True
autosummary_ignore_module_all = False
autodoc_member_order = "bysource"
napoleon_numpy_docstring = True
napoleon_google_docstring = False
typehints_document_rtype = True

bibtex_bibfiles = ["references.bib"]
bibtex_reference_style = "author_year"

# Notebooks render from their stored outputs; the docs build never executes them.
nb_execution_mode = "off"
nb_merge_streams = True

html_theme = "furo"
html_title = f"scvi-scgpt {release}"

# Subpackages of scvi_scgpt that hold no API (package data only).
NOT_API = {"resources"}
_SCALARS = (bool, int, float, complex, str, bytes, tuple, type(None))


def _listed_packages(srcdir: Path) -> list[str]:
    """The packages of the autosummary in api.md, in order."""
    text = (srcdir / "api.md").read_text(encoding="utf-8")
    return re.findall(r"^\s+(scvi_scgpt(?:\.\w+)?)\s*$", text, flags=re.MULTILINE)


def _api_aliases(packages: list[str]) -> dict[str, dict[str, str]]:
    """``{package: {name: home}}`` for objects that several packages export.

    Each object is documented once, in the exporting package its ``__module__`` lies in
    (the deepest one), else the first in api.md order; the other packages link to it.
    """
    places: dict[int, list[tuple[str, str]]] = {}
    objects: dict[int, object] = {}
    for package in packages:
        module = importlib.import_module(package)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if inspect.ismodule(obj) or isinstance(obj, _SCALARS):
                continue
            places.setdefault(id(obj), []).append((package, name))
            objects[id(obj)] = obj

    def rank(place: tuple[str, str], defined_in: str) -> tuple[bool, int]:
        inside = defined_in == place[0] or defined_in.startswith(place[0] + ".")
        return (not inside, -len(place[0]) if inside else packages.index(place[0]))

    aliases: dict[str, dict[str, str]] = {}
    for key, found in places.items():
        defined_in = getattr(objects[key], "__module__", None) or ""
        home = min(found, key=lambda place: rank(place, defined_in))
        for package, name in found:
            if (package, name) != home:
                aliases.setdefault(package, {})[name] = ".".join(home)
    return aliases


autosummary_context = {"api_aliases": _api_aliases(_listed_packages(Path(__file__).parent))}


def _check_api_packages(app) -> None:
    """Warn (an error under -W) about a public package that api.md does not list."""
    from sphinx.util import logging

    listed = set(_listed_packages(Path(app.srcdir)))
    public = {
        f"scvi_scgpt.{info.name}"
        for info in pkgutil.iter_modules(scvi_scgpt.__path__)
        if info.ispkg and not info.name.startswith("_") and info.name not in NOT_API
    }
    for name in sorted(public - listed):
        logging.getLogger(__name__).warning(
            "public package %s is not listed in docs/api.md; add it to the autosummary there",
            name,
        )


def _skip_foreign_member(app, what, name, obj, skip, options):
    """Keep members inherited from scvi_scgpt mixins; drop scvi-tools/torch/Lightning ones."""
    if what != "class" or skip:
        return None
    target = obj.fget if isinstance(obj, property) else getattr(obj, "__func__", obj)
    if not (inspect.isroutine(target) or inspect.isclass(target)):
        return None
    module = getattr(target, "__module__", None) or ""
    return None if module.split(".")[0] == "scvi_scgpt" else True


def _builtin_docstring(app, what, name, obj, options, lines):
    """Replace the docstring a builtin container inherits (e.g. ``dict``'s) by its keys."""
    kind = type(obj)
    if what not in ("data", "attribute") or kind.__module__ != "builtins" or not lines:
        return
    inherited = inspect.cleandoc(kind.__doc__ or "").splitlines()
    if not inherited or lines[0].strip() != inherited[0].strip():
        return
    text = f"A ``{kind.__name__}``"
    if isinstance(obj, dict) and all(isinstance(key, str) for key in obj):
        text += " with the keys " + ", ".join(f"``{key!r}``" for key in obj)
    lines[:] = [text + "."]


def setup(app):
    """Connect the checks above."""
    app.connect("builder-inited", _check_api_packages)
    app.connect("autodoc-skip-member", _skip_foreign_member)
    app.connect("autodoc-process-docstring", _builtin_docstring)
html_static_path = ["_static"]
