"""The pretraining-evidence benchmark's quick mode: every score is produced, in range."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_pretrain_evidence_quick(tmp_path):
    done = subprocess.run(
        [sys.executable, "pretrain_evidence.py", "--quick", "--threads", "1",
         "--out", str(tmp_path), "--no-results-md"],
        cwd=BENCHMARKS, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    res = json.loads((tmp_path / "atlas" / "results.json").read_text())
    assert sorted(int(k) for k in res["snapshots"]) == [0, 10, 20]
    for scores in res["snapshots"].values():
        # the per-gene mean and the type oracle are scored on the same tokens
        assert 0 < scores["type_oracle"] < scores["gene_mean"] < 1e3
        assert 0 <= scores["knn_types"] <= 1 and 0 <= scores["attention_p20"] <= 1
        assert 0 <= scores["token_auroc"] <= 1 and 0 <= scores["contextual_auroc"] <= 1
    base = res["baselines"]
    # on the simulated truth the co-expression baselines find edges well above chance
    assert base["pearson_auroc"] > 0.6 and base["genie3_auprc_ratio"] > 2
    assert set(res["few_shot"]) == {
        "pretrained_same_settings", "random_init_same_settings", "scratch_defaults",
        "l1_logistic",
    }  # fmt: skip
    assert "| 0 (random init) |" in done.stdout
