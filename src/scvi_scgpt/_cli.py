"""The ``scvi-scgpt`` command line (installed with the package).

``scvi-scgpt embed MODEL_DIR SOURCE OUT [options]`` runs :meth:`SCGPT.embed_atlas`; batch
schedulers, ``torchrun`` and SLURM ``srun`` launch it as they launch any Lightning script
(``--devices 2 --accelerator cpu`` starts the second process itself). A job refused
because another job is writing the same output exits with status 3 and one line naming
that job.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import anndata
import numpy as np
import pandas as pd

from scvi_scgpt.data import AtlasOutputLocked, CellSource, open_source

#: Exit status of a job refused because another job writes its output.
EXIT_LOCKED = 3


def example_anndata(source: CellSource, registry: dict | None, n_cells: int = 64):
    """A few cells of ``source`` as an AnnData that a saved model's setup accepts.

    The model is attached to it (scvi-tools models hold an AnnData); the atlas run reads
    every cell from ``source`` itself. Registered categorical ``obs`` fields get the first
    category of the saved registry, so that the saved setup applies.
    """
    block = source.read_block(source.blocks(n_cells, within_parts=True)[0])[0]
    names = pd.Index(np.asarray(source.parts[0].gene_names, dtype=str))
    adata = anndata.AnnData(
        block.X.astype(np.float32),
        obs=pd.DataFrame(index=pd.Index(block.cell_ids.astype(str))),
        var=pd.DataFrame(index=names),
    )
    adata.var_names_make_unique()
    fields = (registry or {}).get("field_registries", {})
    for state in (f.get("state_registry", {}) for f in fields.values()):
        if "categorical_mapping" in state and state.get("original_key"):
            first = np.asarray(state["categorical_mapping"]).ravel()[0]
            adata.obs[state["original_key"]] = pd.Categorical([first] * adata.n_obs)
    return adata


def load_model(model_dir: str | Path, source: CellSource, *, accelerator: str = "cpu"):
    """An :class:`SCGPT` from a :meth:`SCGPT.save` folder or an official model folder."""
    from scvi_scgpt.model import SCGPT
    from scvi_scgpt.model._serialization import from_jsonable

    model_dir = Path(model_dir)
    meta = model_dir / "scvi_scgpt.json"
    if meta.is_file():
        registry = from_jsonable(json.loads(meta.read_text(encoding="utf-8")))["registry"]
        adata = example_anndata(source, registry)
        # setup_anndata keeps the saved gene key only if the example has that column
        key = registry["setup_args"].get("gene_symbols_key")
        if key is not None:
            adata.var[key] = adata.var_names
        return SCGPT.load(model_dir, adata=adata, accelerator=accelerator)
    if (model_dir / "args.json").is_file():
        adata = example_anndata(source, None)
        SCGPT.setup_anndata(adata)
        return SCGPT.from_pretrained(model_dir, adata, accelerator=accelerator)
    raise FileNotFoundError(
        f"{str(model_dir)!r} is neither a folder written by SCGPT.save (scvi_scgpt.json) nor "
        "an official scGPT model folder (args.json, vocab.json, best_model.pt)."
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scvi-scgpt", description="scGPT as an scvi-tools model: atlas-scale commands."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    embed = commands.add_parser(
        "embed",
        help="embed every cell of an .h5ad / zarr / collection / TileDB-SOMA source",
        description="Embed every cell of SOURCE with the model in MODEL_DIR into the AnnData "
        "zarr store OUT (resumable; several processes, GPUs or nodes).",
    )
    embed.add_argument("model_dir", help="folder written by SCGPT.save, or an official model")
    embed.add_argument(
        "source", nargs="+", help=".h5ad, zarr store or SOMA experiment (several: collection)"
    )
    embed.add_argument("out", help="output AnnData zarr store")
    embed.add_argument("--devices", default="auto", help="processes / GPUs per node")
    embed.add_argument("--accelerator", default="auto", choices=("cpu", "gpu", "cuda", "auto"))
    embed.add_argument("--num-nodes", type=int, default=1)
    embed.add_argument("--strategy", default="auto")
    embed.add_argument("--batch-size", type=int, default=None)
    embed.add_argument("--block-size", type=int, default=None)
    embed.add_argument("--precision", default="32", choices=("32", "bf16", "16", "auto"))
    embed.add_argument("--measurement", default="RNA")
    embed.add_argument("--layer", default=None)
    embed.add_argument("--value-filter", default=None)
    embed.add_argument("--gene-symbols-key", default=None)
    embed.add_argument("--key-added", default="X_scGPT")
    embed.add_argument("--obs-columns", nargs="*", default=(), help="obs columns to copy")
    embed.add_argument("--labels-key-added", default=None, help="also write predicted labels")
    embed.add_argument("--num-workers", type=int, default=0)
    embed.add_argument(
        "--empty-cells",
        default="nan",
        choices=("nan", "raise"),
        help="cells with no vocabulary gene: NaN row listed in uns (default), or stop",
    )
    embed.add_argument("--no-resume", action="store_true", help="refuse an existing output")
    embed.add_argument("--no-progress-bar", action="store_true")
    return parser


def _devices(text: str):
    return int(text) if text.lstrip("-").isdigit() else text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    sources = args.source
    source = open_source(
        sources if len(sources) > 1 else sources[0],
        layer=args.layer,
        measurement=args.measurement,
        value_filter=args.value_filter,
        gene_symbols_key=args.gene_symbols_key,
    )
    load_on = "cpu" if args.accelerator in ("cpu", "auto") else "gpu"
    model = load_model(args.model_dir, source, accelerator=load_on)
    extra = {} if args.block_size is None else {"block_size": args.block_size}
    try:
        out = model.embed_atlas(
            source,
            args.out,
            key_added=args.key_added,
            obs_columns=args.obs_columns,
            batch_size=args.batch_size,
            precision=args.precision,
            accelerator=args.accelerator,
            devices=_devices(args.devices),
            num_nodes=args.num_nodes,
            strategy=args.strategy,
            resume=not args.no_resume,
            progress_bar=not args.no_progress_bar,
            labels_key_added=args.labels_key_added,
            num_workers=args.num_workers,
            empty_cells=args.empty_cells,
            **extra,
        )
    except AtlasOutputLocked as err:
        print(f"scvi-scgpt embed: {err}", file=sys.stderr)
        return EXIT_LOCKED
    print(out)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
