"""Sphinx configuration (build with `make docs`)."""

from __future__ import annotations

project = "scvi-scgpt"
author = "scvi-scgpt developers"
extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx_autodoc_typehints",
]
autosummary_generate = True
napoleon_numpy_docstring = True
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build"]
html_theme = "alabaster"
