"""Generate the official ``TransformerGenerator`` fixture (perturbation model).

Run inside the side environment built by ``scripts/official_env/setup.sh``::

    .official-venv/bin/python scripts/make_perturbation_fixture.py

Writes ``tests/data/official/perturbation_model/`` (``best_model.pt``, ``vocab.json``,
``args.json``) and ``tests/data/official/perturbation_forward.npz`` (inputs and outputs of
one forward pass). The script only *calls* the official package; all draws are seeded.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")

from scgpt.model.generation_model import TransformerGenerator  # noqa: E402
from scgpt.tokenizer import GeneVocab  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "official"
GENES = [f"GENE{i:02d}" for i in range(40)]
SPECIALS = ["<pad>", "<cls>", "<eoc>"]
SIZE = {"d_model": 32, "nhead": 4, "d_hid": 64, "nlayers": 2, "nlayers_cls": 3, "n_cls": 1}
N_CELLS, N_TOKENS = 4, 24


def main() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    model_dir = OUT / "perturbation_model"
    model_dir.mkdir(parents=True, exist_ok=True)
    token2id = {g: i for i, g in enumerate(GENES + SPECIALS)}
    (model_dir / "vocab.json").write_text(json.dumps(token2id, indent=2) + "\n")
    vocab = GeneVocab.from_dict(token2id)
    model = TransformerGenerator(
        len(token2id),
        SIZE["d_model"],
        SIZE["nhead"],
        SIZE["d_hid"],
        SIZE["nlayers"],
        nlayers_cls=SIZE["nlayers_cls"],
        n_cls=SIZE["n_cls"],
        vocab=vocab,
        dropout=0.0,
        pad_token="<pad>",
        pad_value=0,
        pert_pad_id=0,
        decoder_adaptive_bias=True,
        use_fast_transformer=False,
    )
    # the padding row of pert_encoder stays zero; perturb the other weights away from init
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name != "pert_encoder.weight":
                param.add_(0.05 * torch.randn_like(param))
        model.pert_encoder.weight[1:].normal_()
    model.eval()
    torch.save(model.state_dict(), model_dir / "best_model.pt")
    args = {
        "embsize": SIZE["d_model"],
        "nheads": SIZE["nhead"],
        "d_hid": SIZE["d_hid"],
        "nlayers": SIZE["nlayers"],
        "n_layers_cls": SIZE["nlayers_cls"],
        "dropout": 0.0,
        "pad_token": "<pad>",
        "pad_value": 0,
        "pert_pad_id": 0,
        "decoder_activation": None,
        "decoder_adaptive_bias": True,
        "input_emb_style": "continuous",
        "cell_emb_style": "cls",
        "fast_transformer": False,
    }
    (model_dir / "args.json").write_text(json.dumps(args, indent=2) + "\n")

    rng = np.random.default_rng(0)
    gene_ids = np.stack([rng.permutation(len(GENES))[:N_TOKENS] for _ in range(N_CELLS)])
    values = rng.gamma(1.0, 1.0, size=(N_CELLS, N_TOKENS)).astype(np.float32)
    values[rng.random(values.shape) < 0.3] = 0.0
    flags = np.zeros((N_CELLS, N_TOKENS), dtype=np.int64)
    flags[np.arange(N_CELLS), rng.integers(0, N_TOKENS, N_CELLS)] = 1
    padding = np.zeros((N_CELLS, N_TOKENS), dtype=bool)
    with torch.no_grad():
        out = model(
            torch.from_numpy(gene_ids),
            torch.from_numpy(values),
            torch.from_numpy(flags),
            src_key_padding_mask=torch.from_numpy(padding),
        )
    np.savez(
        OUT / "perturbation_forward.npz",
        gene_ids=gene_ids,
        values=values,
        pert_flags=flags,
        padding_mask=padding,
        mlm_output=out["mlm_output"].numpy(),
    )
    print("keys:", sorted(model.state_dict()))


if __name__ == "__main__":
    main()
