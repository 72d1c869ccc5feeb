"""The bf16-per-path benchmark's quick mode: every path and build is timed and scored."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_bf16_paths_quick(tmp_path):
    done = subprocess.run(
        [sys.executable, "bf16_paths.py", "--quick", "--threads", "1",
         "--out", str(tmp_path), "--no-results-md"],
        cwd=BENCHMARKS, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    paths = {r["path"] for r in res["paths"]}
    assert paths == {
        "get_latent_representation", "embed", "annotate", "gene_embeddings", "embed_atlas"
    }  # fmt: skip
    assert {r["build"] for r in res["builds"]} == {"constructor", "after train",
                                                    "after save + load"}  # fmt: skip
    for row in res["paths"] + res["builds"]:
        assert row["s_32"] > 0 and row["s_bf16"] > 0
        if "label_agreement" in row:
            assert row["label_agreement"] >= 0.9
        else:  # bf16 really ran, and agrees with fp32
            assert 0.98 <= row["centred_cosine_mean"] < 1.0 or row["path"] == "gene_embeddings"
    assert res["profile"]["bf16"]["kinds"]["matmul"] > 0
    assert "| embed_atlas |" in done.stdout
