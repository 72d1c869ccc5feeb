"""Generate the official ``MultiOmicTransformerModel`` fixture (CITE-seq-like model).

Run inside the side environment built by ``scripts/official_env/setup.sh``::

    .official-venv/bin/python scripts/make_multiomic_fixture.py

Writes ``tests/data/official/multiomic_model/`` (``best_model.pt``, ``vocab.json``,
``vocab_mod.json``, ``args.json``) and ``tests/data/official/multiomic_forward.npz``
(inputs and outputs of one forward pass with GEP, GEPC and DAR). The modality vocabulary is
laid out as the official tutorial builds it: sorted modality names, then the specials. The
script only *calls* the official package; all draws are seeded.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")

from scgpt.model.multiomic_model import MultiOmicTransformerModel  # noqa: E402
from scgpt.tokenizer import GeneVocab  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "official"
GENES = [f"GENE{i:02d}" for i in range(24)]
PROTEINS = [f"p_CD{i}" for i in range(1, 7)]
SPECIALS = ["<pad>", "<cls>", "<eoc>"]
MODALITIES = ["Protein", "RNA", *SPECIALS]
SIZE = {"d_model": 32, "nhead": 4, "d_hid": 64, "nlayers": 2, "nlayers_cls": 3, "n_cls": 1}
N_CELLS, N_RNA, N_PROT, N_BATCH = 4, 12, 4, 2


def main() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    model_dir = OUT / "multiomic_model"
    model_dir.mkdir(parents=True, exist_ok=True)
    token2id = {g: i for i, g in enumerate(GENES + PROTEINS + SPECIALS)}
    mod2id = {m: i for i, m in enumerate(MODALITIES)}
    (model_dir / "vocab.json").write_text(json.dumps(token2id, indent=2) + "\n")
    (model_dir / "vocab_mod.json").write_text(json.dumps(mod2id, indent=2) + "\n")
    vocab = GeneVocab.from_dict(token2id)
    vocab_mod = GeneVocab.from_dict(mod2id)
    model = MultiOmicTransformerModel(
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
        pad_value=-2,
        do_mvc=True,
        do_dab=True,
        use_batch_labels=True,
        num_batch_labels=N_BATCH,
        domain_spec_batchnorm=False,
        explicit_zero_prob=False,
        use_fast_transformer=False,
        use_mod=True,
        ntokens_mod=len(mod2id),
        vocab_mod=vocab_mod,
    )
    # move the weights away from their initialisation (the padding rows stay zero)
    pads = {"encoder.embedding.weight": token2id["<pad>"]}
    pads["mod_encoder.embedding.weight"] = mod2id["<pad>"]
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = 0.05 * torch.randn_like(param)
            if name in pads:
                noise[pads[name]] = 0.0
            param.add_(noise)
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
        "pad_value": -2,
        "input_emb_style": "continuous",
        "cell_emb_style": "cls",
        "use_batch_labels": True,
        "use_mod": True,
        "MVC": True,
        "DAB": True,
        "fast_transformer": False,
        "n_bins": 51,
    }
    (model_dir / "args.json").write_text(json.dumps(args, indent=2) + "\n")

    rng = np.random.default_rng(0)
    length = 1 + N_RNA + N_PROT
    gene_ids = np.zeros((N_CELLS, length), dtype=np.int64)
    mod_types = np.zeros((N_CELLS, length), dtype=np.int64)
    gene_ids[:, 0] = token2id["<cls>"]
    mod_types[:, 0] = mod2id["<cls>"]
    for c in range(N_CELLS):
        gene_ids[c, 1 : 1 + N_RNA] = rng.permutation(len(GENES))[:N_RNA]
        gene_ids[c, 1 + N_RNA :] = len(GENES) + rng.permutation(len(PROTEINS))[:N_PROT]
    mod_types[:, 1 : 1 + N_RNA] = mod2id["RNA"]
    mod_types[:, 1 + N_RNA :] = mod2id["Protein"]
    values = rng.integers(1, 51, size=(N_CELLS, length)).astype(np.float32)
    values[:, 0] = 0.0
    values[rng.random(values.shape) < 0.2] = -1.0  # masked positions
    padding = np.zeros((N_CELLS, length), dtype=bool)
    padding[-1, -3:] = True  # the last cell is shorter
    gene_ids[padding] = token2id["<pad>"]
    mod_types[padding] = mod2id["<pad>"]
    values[padding] = -2.0
    batch = np.array([0, 1, 0, 1], dtype=np.int64)
    with torch.no_grad():
        out = model(
            torch.from_numpy(gene_ids),
            torch.from_numpy(values),
            torch.from_numpy(padding),
            batch_labels=torch.from_numpy(batch),
            MVC=True,
            mod_types=torch.from_numpy(mod_types),
        )
    np.savez(
        OUT / "multiomic_forward.npz",
        gene_ids=gene_ids,
        values=values,
        padding_mask=padding,
        batch=batch,
        mod_types=mod_types,
        mlm_output=out["mlm_output"].numpy(),
        mvc_output=out["mvc_output"].numpy(),
        cell_emb=out["cell_emb"].numpy(),
        dab_output=out["dab_output"].numpy(),
    )
    print("keys:", sorted(model.state_dict()))


if __name__ == "__main__":
    main()
