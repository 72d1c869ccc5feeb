"""Write a random-weight scGPT model directory in the official format (our ``save_pretrained``).

    .venv/bin/python benchmarks/_make_model.py --out DIR --d-model 128 \
        --n-layers 4 --n-heads 4 --d-hid 128 --seed 0

The model uses the 60,697-token census vocabulary, ``n_cls=1`` and ``do_mvc=True`` (the heads
the official ``embed_data`` builds), and fixed-seed random weights.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import _harness as h


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    h.add_shape_args(p)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    import anndata
    import numpy as np
    import scipy.sparse as sp
    import torch

    import scvi_scgpt as s

    warnings.filterwarnings("ignore")
    vocab = s.GeneVocab.census()
    genes = [g for g in ("CD3D", "CD14", "MS4A1", "NKG7", "LYZ", "GNLY") if g in vocab]
    tiny = anndata.AnnData(
        X=sp.csr_matrix(np.ones((4, len(genes)), dtype=np.float32)),
    )
    tiny.var_names = genes
    s.SCGPT.setup_anndata(tiny)
    torch.manual_seed(args.seed)
    model = s.SCGPT(
        tiny,
        vocab=vocab,
        d_model=args.d_model,
        n_heads=args.n_heads,
        d_hid=args.d_hid,
        n_layers=args.n_layers,
        n_cls=1,
        do_mvc=True,
    )
    model.save_pretrained(args.out, overwrite=True)
    n_params = sum(t.numel() for t in model.module.state_dict().values())
    info = {
        "d_model": args.d_model,
        "n_layers": args.n_layers,
        "n_heads": args.n_heads,
        "d_hid": args.d_hid,
        "seed": args.seed,
        "n_tokens": len(vocab),
        "n_parameters": int(n_params),
        "n_tensors": len(model.module.state_dict()),
    }
    h.write_json(Path(args.out) / "benchmark_model.json", info)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
