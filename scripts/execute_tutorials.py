"""Execute the tutorial notebooks in place, storing their outputs for the docs site.

Usage: ``python scripts/execute_tutorials.py [NOTEBOOK ...]`` (default: every tutorial).
The test suite runs the same code without storing outputs (``tests/test_tutorials.py``);
run this after changing a tutorial so that the rendered page shows current results.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    args = parser.parse_args()
    paths = args.notebooks or sorted((ROOT / "tutorials").glob("*.ipynb"))
    for path in paths:
        start = time.perf_counter()
        notebook = nbformat.read(path, as_version=4)
        with tempfile.TemporaryDirectory() as workdir:  # files a tutorial writes stay out
            client = NotebookClient(
                notebook,
                timeout=args.timeout,
                kernel_name="python3",
                resources={"metadata": {"path": workdir}},
            )
            # no progress bars; figures through the kernel's inline backend, not a file backend
            env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
            client.execute(env={**env, "TQDM_DISABLE": "1"})
        for cell in notebook.cells:
            cell.get("metadata", {}).pop("execution", None)
            # logs, warnings and progress bars (stderr) are noise on the rendered page
            if "outputs" in cell:
                cell.outputs = [
                    o
                    for o in cell.outputs
                    if not (o.output_type == "stream" and o.name == "stderr")
                ]
        nbformat.write(notebook, path)
        print(f"{path.name}: executed in {time.perf_counter() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
