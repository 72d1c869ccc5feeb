"""Helpers shared by the fine-tuning evaluation scripts (annotation and integration)."""

from __future__ import annotations

import json
import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("SCVI_SCGPT_DATA", "/work/shared/data"))
OUTPUT_DIR = REPO / "benchmarks" / "output"


def set_threads(n: int | None = None) -> int:
    """Use ``n`` torch threads (default: all cores of this machine)."""
    import torch

    n = n or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def machine_info() -> dict:
    """Short description of the machine and the library versions."""
    import anndata
    import scanpy
    import scvi
    import sklearn
    import torch

    try:
        import psutil

        mem_gib = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:  # pragma: no cover
        mem_gib = None
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "gpu": torch.cuda.is_available(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "scvi-tools": scvi.__version__,
        "scanpy": scanpy.__version__,
        "anndata": anndata.__version__,
        "scikit-learn": sklearn.__version__,
    }


@contextmanager
def timed(store: dict, key: str):
    """Add the wall-clock seconds of the block to ``store[key]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        store[key] = store.get(key, 0.0) + time.perf_counter() - start


def log_normalize(x, target_sum: float = 1e4) -> np.ndarray:
    """``log1p(x / rowsum * target_sum)`` of a (sparse or dense) count matrix, dense float32."""
    import scipy.sparse as sp

    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    x = x.astype(np.float64)
    totals = x.sum(1, keepdims=True)
    totals[totals == 0] = 1.0
    return np.log1p(x / totals * target_sum).astype(np.float32)


def mean_sd(values) -> str:
    """``mean ± sd`` (sample sd, ddof=1) with 3 decimals."""
    v = np.asarray(values, dtype=float)
    sd = v.std(ddof=1) if len(v) > 1 else 0.0
    return f"{v.mean():.3f} ± {sd:.3f}"


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as indented JSON (numpy scalars converted)."""

    def default(o):
        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.floating):
            return float(o)
        if isinstance(o, np.ndarray):
            return o.tolist()
        return str(o)

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=default), encoding="utf-8")


def quiet_warnings() -> None:
    """Silence the noisy but harmless warnings of the training stack."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning", "scvi", "jax"):
        logging.getLogger(name).setLevel(logging.ERROR)
