"""A 2-process CPU DDP run of SCGPT.train() (gloo backend) completes with synced weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np


def test_two_process_cpu_ddp_training(tmp_path):
    script = Path(__file__).with_name("ddp_train.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2
    assert result["epochs"] == 2 and np.isfinite(result["final_loss"])
    w0 = np.load(tmp_path / "weights_rank0.npy")
    w1 = np.load(tmp_path / "weights_rank1.npy")
    np.testing.assert_array_equal(w0, w1)  # DDP keeps the replicas identical
