"""Write the bundled ``cite_pbmc_2batch.h5mu`` with antibody-derived silver cell types.

    .venv/bin/python scripts/make_cite_dataset.py \
        [--source /work/shared/data/cite_pbmc_2batch.h5mu]

The source (400 PBMCs from two 10x CITE-seq runs, RNA + 14 antibodies, raw counts) is copied
unchanged, and ``obs["adt_cell_type"]`` is added to the ``rna`` and ``prot`` modalities and
the joint ``obs``: the gating of ``benchmarks/integration_scib.py`` (two-component Gaussian
mixtures on CLR-normalised antibody counts, per batch), ``"ambiguous"`` where no rule fits.
These are silver labels, good enough to colour plots and score integration, not ground truth.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    import mudata
    from integration_scib import silver_labels

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, default=Path("/work/shared/data/cite_pbmc_2batch.h5mu"))
    p.add_argument(
        "--out",
        type=Path,
        default=ROOT / "src/scvi_scgpt/datasets/cite_pbmc_2batch.h5mu",
    )
    args = p.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    mdata = mudata.read_h5mu(args.source)
    prot = mdata["prot"]
    counts = prot.X.toarray() if hasattr(prot.X, "toarray") else np.asarray(prot.X)
    names = [v.split("_")[0] for v in prot.var_names]
    batches = mdata["rna"].obs["batch"].astype(str).to_numpy()
    labels, _, _ = silver_labels(counts, names, batches)
    labels = np.where(labels == None, "ambiguous", labels).astype(str)  # noqa: E711
    column = pd.Categorical(labels)
    for mod in ("rna", "prot"):
        mdata[mod].obs["adt_cell_type"] = pd.Categorical(column)
    mdata.obs["adt_cell_type"] = pd.Categorical(column)
    mdata.uns["adt_cell_type_rule"] = (
        "Silver labels from the antibody panel: per batch, two-component Gaussian mixtures on "
        "CLR-normalised counts call each marker +/-; rules (first match): "
        "CD4 T = CD3+ CD19- CD4+ CD8a-; CD8 T = CD3+ CD19- CD8a+ CD4-; B = CD3- CD19+ CD14-; "
        "CD14 mono = CD3- CD19- CD14+; NK = CD3- CD19- CD14- CD56+; "
        "CD16 mono = CD3- CD19- CD14- CD56- CD16+; otherwise ambiguous."
    )
    mdata.write_h5mu(args.out, compression="gzip")
    print(pd.Series(labels).value_counts().to_string())
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
