"""The GPU suite's dry run: every row produces its numbers on whatever device CI has."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_gpu_suite_dry_run(tmp_path):
    done = subprocess.run(
        [sys.executable, "gpu_suite.py", "--dry-run", "--threads", "1", "--out", str(tmp_path)],
        cwd=BENCHMARKS, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["dry_run"] and res["embedding"]["fp32"]["cells_per_s"] > 0
    bf16 = res["embedding"]["bf16"]
    assert "error" not in bf16 and bf16["centred_cosine_min"] > 0.9
    assert res["fine_tune"]["tokens_per_s"] > 0
    assert res["embed_atlas"]["max_abs_diff_vs_fp32"] <= 1e-5
    assert "## GPU suite (issue #21)" in done.stdout
