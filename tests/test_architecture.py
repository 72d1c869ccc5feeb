"""The layering rules of docs/architecture.md, checked on the source tree."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "scvi_scgpt"
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every scvi_scgpt module ``path`` imports, at any depth (functions included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path.parent)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("scvi_scgpt"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            if name.startswith("scvi_scgpt"):
                found.add(name)
                # `from pkg import submodule`
                found.update(
                    f"{name}.{a.name}"
                    for a in node.names
                    if (SRC.parent / name.replace(".", "/") / a.name).exists()
                    or (SRC.parent / name.replace(".", "/") / f"{a.name}.py").exists()
                )
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(path):
            # an import of a.b.c means a.b.c itself (its parent packages are not counted:
            # Python imports them first, but they are entry points, not dependencies)
            while imported not in modules and "." in imported:
                imported = imported.rsplit(".", 1)[0]
            if imported in modules and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    graph = _graph()
    graph.pop("scvi_scgpt", None)  # the top-level package re-exports everything
    for targets in graph.values():
        targets.discard("scvi_scgpt")
    assert _find_cycle(graph) is None, f"import cycle: {' -> '.join(_find_cycle(graph))}"


def test_cycle_detector_finds_a_planted_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        (
            "scvi_scgpt.nn",
            (
                "scvi_scgpt.model",
                "scvi_scgpt.train",
                "scvi_scgpt.dataloaders",
                "scvi_scgpt.module",
                "scvi_scgpt.data",
            ),
        ),
        ("scvi_scgpt.module", ("scvi_scgpt.model", "scvi_scgpt.train", "scvi_scgpt.dataloaders")),
        (
            "scvi_scgpt.data",
            (
                "scvi_scgpt.model",
                "scvi_scgpt.train",
                "scvi_scgpt.dataloaders",
                "scvi_scgpt.module",
                "scvi_scgpt.nn",
            ),
        ),
        ("scvi_scgpt.dataloaders", ("scvi_scgpt.model", "scvi_scgpt.train")),
        ("scvi_scgpt.train", ("scvi_scgpt.model",)),
        ("scvi_scgpt.tl", ("scvi_scgpt.model", "scvi_scgpt.train")),
        ("scvi_scgpt.pl", ("scvi_scgpt.model", "scvi_scgpt.train")),
    ],
)
def test_layers_do_not_reach_up(layer, forbidden):
    graph = _graph()
    bad = {
        src: sorted(t for t in targets if t.startswith(forbidden))
        for src, targets in graph.items()
        if src == layer or src.startswith(layer + ".")
    }
    assert not {k: v for k, v in bad.items() if v}


def test_data_layer_is_numpy_and_anndata_only():
    for path in (SRC / "data").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            for name in names:
                assert name.split(".")[0] not in ("torch", "lightning", "scvi"), (path, name)


def test_no_source_file_over_the_size_limit():
    long = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long


def test_token_keys_are_not_spelled_out_elsewhere():
    from scvi_scgpt._constants import TOKEN_KEYS

    # a tensor looked up by a literal name, t["gene_ids"] or t.get("batch"), bypasses TOKEN_KEYS
    # ("X" is also the name of a matrix in on-disk files; datasets/ describes obs columns)
    keys = [key for key in TOKEN_KEYS if key != "X"]
    spelled = [p for key in keys for p in (f'["{key}"]', f'.get("{key}"')]
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "_constants.py" or "datasets" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        offenders += [(path.name, key) for key in spelled if key in text]
    assert not offenders
