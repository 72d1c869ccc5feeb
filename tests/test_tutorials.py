"""The tutorial notebooks' code runs (cells executed in order, plots off)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import pytest

TUTORIALS = sorted((Path(__file__).parents[1] / "tutorials").glob("*.ipynb"))


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_code_runs(path, tmp_path, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    cells = json.loads(path.read_text())["cells"]
    code = "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    namespace: dict = {}
    exec(compile(code, str(path), "exec"), namespace)  # noqa: S102 - our own notebook
    # an AnnData tutorial names its data `adata`, a MuData one `mdata`
    embedded = [k for k in ("adata", "mdata") if k in namespace and "X_scGPT" in namespace[k].obsm]
    assert embedded, "the tutorial writes no X_scGPT embedding into adata or mdata"
