"""The benchmark suite: ``python -m benchmarks list | run | render | import-recorded``."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO / "benchmarks"


def suite(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture
def modules(monkeypatch):
    """``_suite`` and ``_harness``, imported the way the scripts import them."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("_suite"), importlib.import_module("_harness")


@pytest.fixture
def copy(tmp_path) -> Path:
    """A copy of RESULTS.md and its stored results; returns the copy of RESULTS.md."""
    shutil.copy(BENCHMARKS / "RESULTS.md", tmp_path / "RESULTS.md")
    shutil.copytree(BENCHMARKS / "results", tmp_path / "results")
    return tmp_path / "RESULTS.md"


def test_list_names_every_script():
    done = suite("list")
    assert done.returncode == 0, done.stderr
    scripts = sorted(p.stem for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))
    listed = [line.split()[0] for line in done.stdout.splitlines()[1:] if line.strip()]
    assert set(scripts) <= set(listed)
    row = next(line for line in done.stdout.splitlines() if line.startswith("roofline "))
    assert " yes " in row and "[roofline]" in row and "FLOPs per cell" in row


def test_run_unknown_name_names_the_scripts():
    done = suite("run", "no_such_benchmark", "--quick")
    assert done.returncode == 2
    assert "unknown benchmark 'no_such_benchmark'" in done.stderr
    assert "embed_throughput" in done.stderr and "roofline" in done.stderr


def test_render_check_passes_on_the_repo():
    done = suite("render", "--check")
    assert done.returncode == 0, done.stderr


def test_render_round_trips(modules, copy):
    _suite, h = modules
    original = copy.read_text(encoding="utf-8")
    copy.unlink()
    assert _suite.render(copy)  # every section is new
    assert copy.read_text(encoding="utf-8") == original
    assert _suite.render(copy, check=True) == []
    assert _suite.import_recorded(copy) == []  # the file gives back what is stored
    index = h.read_index(h.results_dir(copy))
    assert [s for s, _, _ in _suite.split_sections(original)[1]] == index["order"]


def test_hand_edit_between_markers_is_imported(modules, copy):
    _suite, h = modules
    text = copy.read_text(encoding="utf-8")
    copy.write_text(
        text.replace("\n<!-- roofline:end -->", "\nA new line.\n<!-- roofline:end -->")
    )
    assert _suite.render(copy, check=True) == ["roofline"]
    assert _suite.import_recorded(copy, ["roofline"]) == ["roofline"]
    stored = h.read_json(h.results_dir(copy) / "roofline.json")
    assert stored["markdown"].endswith("A new line.") and stored["tables"]
    assert _suite.render(copy, check=True) == []


def test_a_section_written_without_storing_is_imported_with_its_run(modules, copy, tmp_path):
    _suite, h = modules
    h.write_section("old_style", "## Old style\n\n| x |\n|---|\n| 2 |", copy)
    assert _suite.render(copy, check=True) == ["old_style (not stored)"]
    run = h.write_json(
        tmp_path / "results.json",
        {"command": ".venv/bin/python benchmarks/roofline.py", "machine": {"cpu": "x"}, "x": 2},
    )
    assert _suite.import_recorded(copy, ["old_style"], run) == ["old_style"]
    stored = h.read_json(h.results_dir(copy) / "old_style.json")
    assert stored["kind"] == "run" and stored["script"] == "roofline.py"
    assert stored["results"] == {"x": 2} and stored["machine"] == {"cpu": "x"}
    assert _suite.render(copy, check=True) == []


FAKE = '''
"""A fake benchmark: one figure."""
import _harness as h

p = h.parser(__doc__, "fake_bench", results_md=True)
args = h.parse(p)
res = {"cells_per_s": 123.4 if not args.quick else 1.0}
h.report(
    args, res, lambda r: f"## Fake (issue #0)\\n\\n| cells/s |\\n|---|\\n| {r['cells_per_s']} |",
    "fake_bench",
)
'''


def test_a_run_is_stored_and_rendered(modules, copy):
    _suite, h = modules
    script = copy.parent / "fake_bench.py"
    script.write_text(textwrap.dedent(FAKE))
    env = {"PYTHONPATH": str(BENCHMARKS), "PATH": "/usr/bin:/bin"}

    def fake(*args: str) -> None:
        done = subprocess.run(
            [sys.executable, str(script), "--out", str(copy.parent / "out"), *args],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr

    fake("--quick", "--results-md", str(copy.parent / "other.md"), "--no-results-md")
    assert not (copy.parent / "results" / "fake_bench.json").exists()
    fake("--results-md", str(copy))
    stored = json.loads((copy.parent / "results" / "fake_bench.json").read_text())
    assert stored["kind"] == "run" and stored["script"] == "fake_bench.py"
    assert stored["command"].endswith(
        f"fake_bench.py --out {copy.parent / 'out'} --results-md {copy}"
    )
    assert stored["results"]["cells_per_s"] == 123.4 and "versions" in stored["machine"]
    assert stored["tables"] == [{"header": ["cells/s"], "rows": [["123.4"]]}]
    assert h.read_index(copy.parent / "results")["order"][-1] == "fake_bench"
    text = copy.read_text(encoding="utf-8")
    assert "<!-- fake_bench:begin -->\n## Fake (issue #0)" in text and "| 123.4 |" in text
    assert _suite.render(copy, check=True) == []  # the run left the file as render gives it
    copy.unlink()
    _suite.render(copy)
    assert copy.read_text(encoding="utf-8") == text
    new = copy.parent / "new" / "RESULTS.md"  # a first run makes the whole file
    fake("--results-md", str(new))
    assert _suite.render(new, check=True) == [] and "| 123.4 |" in new.read_text()
