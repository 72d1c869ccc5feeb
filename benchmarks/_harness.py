"""The frame every benchmark script shares: paths, data, machine, logging, output, CLI, shapes.

A script keeps only its experiment and takes the rest from here:

- **paths**: everything is relative to this file. Data files come from ``$SCVI_SCGPT_DATA``
  (default ``<repo>/../shared/data``), except the two the package bundles
  (``scvi_scgpt.datasets``); outputs go to ``benchmarks/output/<name>/`` (git-ignored);
- **machine**: CPU model, cores, memory, torch threads and library versions;
- **logging**: ``[script HH:MM:SS] message`` lines on stdout, the training stack silenced;
- **output**: JSON (numpy values converted); on full runs ``publish`` stores the section a run
  renders as ``benchmarks/results/<section>.json`` (command, machine, versions, figures,
  markdown) and puts it between the ``<!-- name:begin -->`` / ``<!-- name:end -->`` markers
  of ``benchmarks/RESULTS.md``, which ``python -m benchmarks render`` rebuilds from
  ``benchmarks/results/``;
- **CLI**: ``--out --threads --seed --quick`` for every script, the model-shape options and
  the interpreters of the two sides;
- **shapes**: the small model configurations the scripts train and time.

Standard library only at import time: the workers of the official side import this module
from the official scGPT environment, which has neither ``scvi_scgpt`` nor its dependencies.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import re
import shlex
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
OUTPUT_DIR = BENCH_DIR / "output"
RESULTS_MD = BENCH_DIR / "RESULTS.md"
#: The folder of stored results beside a results file (``benchmarks/results/``, in git).
RESULTS_DIR_NAME = "results"
#: The file in that folder that fixes the preamble and the order of the sections.
INDEX_FILE = "index.json"
DATA_ENV = "SCVI_SCGPT_DATA"
OFFICIAL_PYTHON = REPO / ".official-venv" / "bin" / "python"
# figures are written to files, never shown
os.environ.setdefault("MPLBACKEND", "Agg")

# ----------------------------------------------------------------------------- shapes
#: Tokens of the 60,697-token whole-human (census) vocabulary, ``<pad>``, ``<cls>``, ``<eoc>``
#: included.
CENSUS_TOKENS = 60_697
#: The options that fix a transformer's shape (``SCGPT`` / ``ArchitectureConfig`` names).
SHAPE_KEYS = ("d_model", "n_layers", "n_heads", "d_hid")
#: The small transformer the fine-tuning benchmarks train from scratch on a CPU; no dropout
#: on the attention probabilities, so that PyTorch's fused CPU attention kernels run.
D64 = {
    "d_model": 64,
    "n_heads": 4,
    "d_hid": 128,
    "n_layers": 4,
    "dropout": 0.1,
    "attention_dropout": 0.0,
}
#: The pretraining evidence run: the same width, two layers.
D64_PRETRAIN = {**D64, "n_layers": 2}
#: The shape of the official whole-human model.
WHOLE_HUMAN = {"d_model": 512, "n_layers": 12, "n_heads": 8, "d_hid": 512}


def add_shape_args(p: argparse.ArgumentParser, shape: dict | None = None) -> None:
    """``--d-model --n-layers --n-heads --d-hid`` (and ``--dropout`` where ``shape`` has one).

    Defaults come from ``shape``; without one the four options are required.
    """
    for key in SHAPE_KEYS:
        flag = "--" + key.replace("_", "-")
        if shape is None:
            p.add_argument(flag, type=int, required=True)
        else:
            p.add_argument(flag, type=int, default=shape[key])
    if shape is not None and "dropout" in shape:
        p.add_argument("--dropout", type=float, default=shape["dropout"])


def shape_flags(shape: dict) -> list[str]:
    """``shape`` as command-line flags, for a worker subprocess."""
    return [a for key in SHAPE_KEYS for a in (f"--{key.replace('_', '-')}", str(shape[key]))]


# ----------------------------------------------------------------------------- data
#: Files the package ships (``scvi_scgpt.datasets``): name -> the function that reads it.
BUNDLED = {
    "pbmc68k_700_counts.h5ad": "pbmc68k_700",
    "cite_pbmc_2batch.h5mu": "cite_pbmc_2batch",
}


def data_dir() -> Path:
    """The folder of the offline data files: ``$SCVI_SCGPT_DATA`` or ``<repo>/../shared/data``."""
    return Path(os.environ.get(DATA_ENV, REPO.parent / "shared" / "data"))


def _bundled_path(file: str) -> Path | None:
    """Where the package keeps a bundled file, found without importing the package."""
    spec = importlib.util.find_spec("scvi_scgpt")
    if file not in BUNDLED or spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / file
    return path if path.is_file() else None


def dataset_path(file: str) -> Path:
    """The path of a data file: the package's copy if it bundles it, else ``data_dir()``."""
    path = _bundled_path(file) or data_dir() / file
    if not path.is_file():
        raise SystemExit(
            f"data file {file!r} not found in {data_dir()}; set {DATA_ENV} to the folder "
            "that holds the offline data files"
        )
    return path


def read_dataset(file: str, modality: str | None = None):
    """Read a data file (``.h5ad``, or one ``modality`` of an ``.h5mu``) into memory.

    Bundled files are read through ``scvi_scgpt.datasets``.
    """
    if _bundled_path(file) is not None:
        from scvi_scgpt import datasets

        data = getattr(datasets, BUNDLED[file])()
    elif file.endswith(".h5mu"):
        import mudata

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = mudata.read_h5mu(dataset_path(file))
    else:
        import anndata

        data = anndata.read_h5ad(dataset_path(file))
    return data if modality is None else data[modality]


def log_normalize(x, target_sum: float = 1e4):
    """``log1p(x / rowsum * target_sum)`` of a (sparse or dense) count matrix, dense float32."""
    import numpy as np
    import scipy.sparse as sp

    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    x = x.astype(np.float64)
    totals = x.sum(1, keepdims=True)
    totals[totals == 0] = 1.0
    return np.log1p(x / totals * target_sum).astype(np.float32)


# ----------------------------------------------------------------------------- machine
def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _proc_value(path: str, key: str) -> str | None:
    """The value of the first ``key: value`` line of a ``/proc`` file."""
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


VERSIONED = (
    "scvi-scgpt",
    "scgpt",
    "torch",
    "lightning",
    "scvi-tools",
    "anndata",
    "scanpy",
    "scikit-learn",
    "scib-metrics",
    "numpy",
)


def machine_info() -> dict[str, Any]:
    """The machine, the interpreter and the versions of the libraries that are installed.

    Torch threads and the GPU are reported when torch is already imported.
    """
    mem_kb = _proc_value("/proc/meminfo", "MemTotal")
    info: dict[str, Any] = {
        "cpu_model": _proc_value("/proc/cpuinfo", "model name")
        or platform.processor()
        or platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "memory_gib": round(int(mem_kb.split()[0]) / 2**20, 1) if mem_kb else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    versions = {}
    for dist in VERSIONED:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    info["versions"] = versions
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return info


def set_threads(n: int | None = None) -> int:
    """Use ``n`` torch threads (default: every usable core); returns the number."""
    import torch

    n = n or usable_cores()
    torch.set_num_threads(n)
    return n


# ----------------------------------------------------------------------------- logging
NOISY_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")


def setup_logging(name: str, *, quiet: bool = True) -> Callable[[str], None]:
    """A ``log(msg)`` printing ``[name HH:MM:SS] msg`` to stdout.

    With ``quiet`` the harmless warnings of the training stack are silenced.
    """
    if quiet:
        warnings.filterwarnings("ignore")
        for noisy in (*NOISY_LOGGERS, "scvi", "jax"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    logger = logging.getLogger(f"benchmarks.{name}")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter(f"[{name} %(asctime)s] %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger.info


# ----------------------------------------------------------------------------- output
def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return obj.tolist()
    return str(obj)


def write_json(path: str | Path, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as JSON (numpy values, paths and the like converted); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent, default=_jsonable), encoding="utf-8")
    return path


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_results(
    args: argparse.Namespace, payload: dict, file: str = "results.json", indent: int = 2
) -> Path:
    """``payload`` with the command, the machine and the options, as ``<--out>/<file>``."""
    payload.setdefault("command", args.command)
    payload.setdefault("machine", machine_info())
    payload.setdefault("args", {k: v for k, v in vars(args).items() if k != "command"})
    return write_json(args.out / file, payload, indent=indent)


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure (folders created) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def section_markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def write_section(name: str, body: str, path: str | Path = RESULTS_MD) -> Path:
    """Put ``body`` between the ``name`` markers of ``path``; the text around them stays.

    Without the markers the marked block is appended at the end, so a hand-written section
    of the same title is never overwritten.
    """
    path = Path(path)
    begin, end = section_markers(name)
    block = f"{begin}\n{body.strip()}\n{end}\n"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    if (begin in text) != (end in text):
        raise ValueError(f"{path}: only one of the markers {begin} / {end} is present")
    if begin in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    else:
        text = text.rstrip() + "\n\n" + block
    path.write_text(text, encoding="utf-8")
    return path


def results_dir(results_md: str | Path = RESULTS_MD) -> Path:
    """The folder of the stored results behind ``results_md``: ``results/`` beside it."""
    return Path(results_md).parent / RESULTS_DIR_NAME


def read_index(folder: str | Path) -> dict[str, Any]:
    """``{"preamble": text, "order": [section, ...]}`` of a results folder (empty if none)."""
    path = Path(folder) / INDEX_FILE
    index = read_json(path) if path.is_file() else {}
    index.setdefault("preamble", "# Benchmark results")
    index.setdefault("order", [])
    return index


def write_index(folder: str | Path, index: dict[str, Any]) -> Path:
    return write_json(Path(folder) / INDEX_FILE, index)


def markdown_tables(text: str) -> list[dict[str, list]]:
    """The GitHub tables of a markdown text, as ``{"header": [...], "rows": [[...], ...]}``."""
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.lstrip().startswith("|"):
            block.append(line.strip())
            continue
        if len(block) >= 2 and set(block[1].replace("|", "").strip()) <= set("-: "):
            cells = [[c.strip() for c in re.split(r"(?<!\\)\|", row.strip("|"))] for row in block]
            tables.append({"header": cells[0], "rows": cells[2:]})
        block = []
    return tables


def store_result(results_md: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` as ``<results_dir>/<section>.json``; a new section joins the index."""
    folder = results_dir(results_md)
    path = write_json(folder / f"{record['section']}.json", record)
    index = read_index(folder)
    if record["section"] not in index["order"]:
        index["order"].append(record["section"])
        write_index(folder, index)
    return path


def publish(
    args: argparse.Namespace,
    section: str,
    markdown: str,
    results: dict | None = None,
    *,
    echo: bool = True,
) -> str:
    """Print a run's ``markdown`` and, on full runs, record it.

    When ``args.results_md`` is set (not ``--quick`` / ``--no-results-md``), the run is
    stored as ``results/<section>.json`` beside that file, with the command, the machine
    (versions included), ``results`` (the figures) and the markdown, and the markdown
    replaces the ``section`` of the file. Returns ``markdown``.
    """
    if echo:
        print(markdown)
    if getattr(args, "results_md", None):
        figures = dict(results or {})
        record = {
            "section": section,
            "script": getattr(args, "script", f"{args.bench_name}.py"),
            "command": figures.pop("command", args.command),
            "kind": "run",
            "machine": figures.pop("machine", None) or machine_info(),
            "results": figures,
            "tables": markdown_tables(markdown),
            "markdown": markdown.strip(),
        }
        store_result(args.results_md, record)
        if Path(args.results_md).exists():
            write_section(section, markdown, args.results_md)
        else:  # a new file: the whole of it, from its results folder
            from _suite import render

            render(args.results_md)
    return markdown


def report(
    args: argparse.Namespace, res: dict, render: Callable[[dict], str], section: str
) -> str:
    """Write ``results.json``, render ``res`` as markdown, print it and, on full runs,
    ``publish`` it as the ``section`` of ``RESULTS.md``; returns the text."""
    write_results(args, res)
    return publish(args, section, render(res), res)


def run_parts(
    args: argparse.Namespace, parts: dict[str, Callable], log: Callable[[str], None]
) -> dict:
    """``{name: part(args)}`` for each part in order, warnings off, threads set, logged."""
    import warnings

    warnings.filterwarnings("ignore")
    set_threads(args.threads)
    res = {}
    for name, part in parts.items():
        res[name] = part(args)
        log(f"{name} done")
    return res


def machine_line(res: dict) -> str:
    """``Machine: <cpu>, <n> cores, torch <version>`` of a results payload."""
    m = res["machine"]
    return f"Machine: {m['cpu_model']}, {m['usable_cores']} cores, torch " + m["versions"].get(
        "torch", "?"
    )


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(x: float | None, nd: int = 1) -> str:
    """``x`` with thousands separators and ``nd`` decimals; ``n/a`` for None or NaN."""
    if x is None or x != x:
        return "n/a"
    return f"{x:,.{nd}f}"


# ----------------------------------------------------------------------------- CLI
def parser(
    doc: str, name: str, *, quick_help: str = "smoke run", results_md: bool = False
) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark has.

    ``--out`` (default ``benchmarks/output/<name>``, ``..._quick`` with ``--quick``),
    ``--threads`` (torch threads; default every usable core), ``--seed`` and ``--quick``;
    with ``results_md`` also ``--results-md`` / ``--no-results-md``.
    """
    p = argparse.ArgumentParser(
        description=doc.strip().splitlines()[0],
        epilog=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(bench_name=name)
    g = p.add_argument_group("options of every benchmark")
    g.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"output folder (default benchmarks/output/{name}, with --quick {name}_quick)",
    )
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        help=f"torch threads (default: every usable core, {usable_cores()} here)",
    )
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--quick", action="store_true", help=quick_help)
    if results_md:
        g.add_argument(
            "--results-md",
            type=Path,
            default=None,
            help="file whose section to update (default benchmarks/RESULTS.md; --quick: if given)",
        )
        g.add_argument("--no-results-md", action="store_true", help="leave RESULTS.md alone")
    return p


def add_options(p: argparse.ArgumentParser, **options: Any) -> None:
    """Plain ``--name`` options from a table: ``add_options(p, lr=1e-3, steps=(7, "help"))``.

    A value is the default, or ``(default, help)``; the type is the default's.
    """
    for name, spec in options.items():
        default, help_ = spec if isinstance(spec, tuple) else (spec, None)
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, type=type(default), default=default, help=help_)


def add_python_args(p: argparse.ArgumentParser) -> None:
    """``--ours-python`` / ``--official-python``: the interpreters of the two sides."""
    p.add_argument(
        "--ours-python", default=sys.executable, help="project interpreter (default: this one)"
    )
    p.add_argument(
        "--official-python",
        default=str(OFFICIAL_PYTHON),
        help="interpreter with the official scgpt==0.2.4 (default .official-venv/bin/python)",
    )


def parse(
    p: argparse.ArgumentParser, argv: Sequence[str] | None = None, quick: dict | None = None
) -> argparse.Namespace:
    """Parse ``argv`` and fill in what every script needs.

    ``quick`` holds the ``--quick`` settings; each applies only to an option the command line
    left at its default. Adds ``args.command`` (the command line, for the record).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    if args.quick:
        for key, value in (quick or {}).items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    name = args.bench_name
    if args.out is None:
        args.out = OUTPUT_DIR / (f"{name}_quick" if args.quick else name)
    args.out = Path(args.out).resolve()
    if hasattr(args, "results_md"):
        if args.no_results_md:
            args.results_md = None
        elif args.results_md is None and not args.quick:
            args.results_md = RESULTS_MD
    script = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else f"{name}.py"
    args.script = script
    args.command = f".venv/bin/python benchmarks/{script} {shlex.join(argv)}".rstrip()
    return args


# ----------------------------------------------------------------------------- workers
def worker_env(side: str) -> dict[str, str]:
    """Environment of a worker subprocess.

    Ours puts this checkout's ``src/`` first; the official side gets no ``PYTHONPATH``.
    """
    env = dict(os.environ)
    if side == "ours":
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p
        )
    else:
        env.pop("PYTHONPATH", None)
    return env


def require_python(path: str | Path, side: str, hint: str = "") -> str:
    """``path`` if that interpreter exists, else stop with a message saying how to get it."""
    if Path(path).is_file():
        return str(path)
    how = (
        "build it with scripts/official_env/setup.sh or pass --official-python"
        if side == "official"
        else "pass --ours-python"
    )
    raise SystemExit(f"the {side} interpreter {path} does not exist: {how}{hint}.")
