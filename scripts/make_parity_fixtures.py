"""Generate parity fixtures from the *official* ``scgpt`` 0.2.4 package.

Run inside the side environment built by ``scripts/official_env/setup.sh``::

    .official-venv/bin/python scripts/make_parity_fixtures.py

Everything is written to ``tests/data/official/``.  The script only *calls* the
official package (installed from PyPI); it copies none of its code.  All random
draws are seeded, so re-running reproduces the same files (up to the usual
floating-point reproducibility of CPU torch kernels).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore", message="flash_attn is not installed")

import anndata as ad  # noqa: E402
import pandas as pd  # noqa: E402
import scgpt  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from scgpt.data_collator import DataCollator  # noqa: E402
from scgpt.model import TransformerModel  # noqa: E402
from scgpt.preprocess import binning  # noqa: E402
from scgpt.tasks import embed_data  # noqa: E402
from scgpt.tokenizer import GeneVocab  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "official"
CENSUS_VOCAB = Path("/work/shared/data/scgpt_census_vocab.json")

N_VOCAB_GENES = 600
SPECIALS = ["<pad>", "<cls>", "<eoc>"]
PAD_TOKEN = "<pad>"
PAD_VALUE = -2
MASK_VALUE = -1
N_BINS = 51
MAX_SEQ_LEN = 1200

N_CELLS = 48
N_IN_VOCAB = 360
N_NOT_IN_VOCAB = 40
EMBED_MAX_LENGTH = 512

ZS = {"d_model": 64, "nhead": 4, "d_hid": 128, "nlayers": 2, "nlayers_cls": 3, "n_cls": 1}
ZS["dropout"] = 0.2
FT = {"d_model": 32, "nhead": 4, "d_hid": 64, "nlayers": 2, "nlayers_cls": 3, "n_cls": 5}
FT.update(dropout=0.2, num_batch_labels=3)
GENERATION_COMMAND = ".official-venv/bin/python scripts/make_parity_fixtures.py"
FACTS: dict[str, object] = {}  # observations reported in the README


# --------------------------------------------------------------------------- helpers
def seed_all(seed: int) -> None:
    """Seed numpy's global RNG and torch."""
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_gene_symbols(n: int, seed: int = 0) -> list[str]:
    """Pick ``n`` real-looking gene symbols from the census vocabulary (by census id)."""
    census: dict[str, int] = json.loads(CENSUS_VOCAB.read_text())
    pattern = re.compile(r"^[A-Z][A-Z0-9]{1,7}$")
    candidates = sorted((g for g in census if pattern.match(g)), key=census.__getitem__)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(candidates), size=n, replace=False)
    return [candidates[i] for i in sorted(chosen)]


def write_vocab(path: Path, genes: list[str]) -> dict[str, int]:
    """Write an official-format ``vocab.json`` ({token: id}, genes then specials)."""
    token2id = {tok: i for i, tok in enumerate(genes + SPECIALS)}
    path.write_text(json.dumps(token2id, indent=2) + "\n")
    return token2id


def tie_free_values(rng: np.random.Generator, n: int) -> np.ndarray:
    """Draw ``n`` strictly positive, pairwise-distinct float32 values (lognormal)."""
    while True:
        vals = rng.lognormal(mean=0.5, sigma=1.0, size=n).astype(np.float32)
        if np.unique(vals).size == n and (vals > 0).all():
            return vals


def assert_distinct_edges(values: np.ndarray) -> None:
    """Official binning is deterministic iff no two quantile edges coincide."""
    edges = np.quantile(values, np.linspace(0, 1, N_BINS - 1))
    assert np.all(np.diff(edges) > 0), "coinciding quantile edges -> random bins"


def state_dict_table(state: dict[str, torch.Tensor]) -> list[tuple[str, list[int], str]]:
    """Return ``(key, shape, dtype)`` rows of a state dict."""
    return [(k, list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in state.items()]


def to_np(x: torch.Tensor) -> np.ndarray:
    """Detach a tensor to a numpy array (float tensors as float32)."""
    arr = x.detach().cpu().numpy()
    return arr.astype(np.float32) if arr.dtype.kind == "f" else arr


# --------------------------------------------------------------------------- fixture data
def make_cells(vocab_genes: list[str], seed: int = 1) -> ad.AnnData:
    """48 cells x 400 genes (360 in vocab, 40 not), float32 CSR, tie-free rows."""
    rng = np.random.default_rng(seed)
    in_vocab = [vocab_genes[i] for i in sorted(rng.choice(len(vocab_genes), N_IN_VOCAB, False))]
    not_in_vocab = [f"NOTAGENE{i}" for i in range(1, N_NOT_IN_VOCAB + 1)]
    var_names = np.array(in_vocab + not_in_vocab)[rng.permutation(N_IN_VOCAB + N_NOT_IN_VOCAB)]
    n_genes = var_names.size

    dense = np.zeros((N_CELLS, n_genes), dtype=np.float32)
    for i in range(N_CELLS):
        zero_frac = rng.uniform(0.3, 0.7)
        nnz = int(round((1.0 - zero_frac) * n_genes))
        cols = rng.choice(n_genes, size=nnz, replace=False)
        dense[i, cols] = tie_free_values(rng, nnz)
    X = sp.csr_matrix(dense)
    X.sort_indices()

    cell_types = np.array(["T cell", "B cell", "monocyte"])[rng.integers(0, 3, N_CELLS)]
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical(cell_types, categories=["B cell", "T cell", "monocyte"])},
        index=[f"cell{i:02d}" for i in range(N_CELLS)],
    )
    adata = ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=var_names))

    # sanity: the properties the parity tests rely on
    in_mask = np.isin(var_names, vocab_genes)
    for i in range(N_CELLS):
        row = dense[i]
        nz = row[row != 0]
        assert nz.size == np.unique(nz).size, "ties in a cell"
        assert 0.3 <= 1 - nz.size / n_genes <= 0.7 + 1e-9
        nz_vocab = row[in_mask][row[in_mask] != 0]
        assert nz_vocab.size >= 2
        assert_distinct_edges(nz_vocab)
    return adata


def write_args(path: Path, cfg: dict, extra: dict | None = None) -> dict:
    """Write an official-style ``args.json`` (pre-training key names)."""
    args = {
        "embsize": cfg["d_model"],
        "nheads": cfg["nhead"],
        "d_hid": cfg["d_hid"],
        "nlayers": cfg["nlayers"],
        "n_layers_cls": cfg["nlayers_cls"],
        "dropout": cfg["dropout"],
        "pad_token": PAD_TOKEN,
        "pad_value": PAD_VALUE,
        "mask_value": MASK_VALUE,
        "n_bins": N_BINS,
        "max_seq_len": MAX_SEQ_LEN,
        "input_style": "binned",
        "input_emb_style": "continuous",
        "cell_emb_style": "cls",
        "mask_ratio": [0.25, 0.5, 0.75],
        "training_tasks": "both",
        "trunc_by_sample": True,
        "vocab_path": "vocab.json",
        "fast_transformer": False,
        "fp16": False,
        "MVC": True,
        "USE_CLS": False,
        "USE_CCE": False,
        "USE_GENERATIVE_TRAINING": False,
    }
    if extra:
        args.update(extra)
    path.write_text(json.dumps(args, indent=2) + "\n")
    return args


# --------------------------------------------------------------------------- fixtures
def build_zeroshot(vocab: GeneVocab, model_dir: Path) -> tuple[TransformerModel, dict]:
    """Fixture A: official-format pretrained-style checkpoint."""
    seed_all(0)
    model = TransformerModel(
        ntoken=len(vocab),
        d_model=ZS["d_model"],
        nhead=ZS["nhead"],
        d_hid=ZS["d_hid"],
        nlayers=ZS["nlayers"],
        nlayers_cls=ZS["nlayers_cls"],
        n_cls=ZS["n_cls"],
        vocab=vocab,
        dropout=ZS["dropout"],
        pad_token=PAD_TOKEN,
        pad_value=PAD_VALUE,
        do_mvc=True,
        do_dab=False,
        use_batch_labels=False,
        domain_spec_batchnorm=False,
        explicit_zero_prob=False,
        use_fast_transformer=False,
        pre_norm=False,
    )
    model.eval()
    state = dict(model.state_dict())
    gen = torch.Generator().manual_seed(1234)
    state["flag_encoder.weight"] = torch.randn(2, ZS["d_model"], generator=gen)
    torch.save(state, model_dir / "best_model.pt")
    write_args(model_dir / "args.json", ZS)
    return model, state


def tokenize_like_embed_data(
    adata: ad.AnnData,
    vocab: GeneVocab,
    rows: list[int],
    cls_value: float,
    n_keep: list[int] | None = None,
) -> list[dict]:
    """Per-cell examples as ``scgpt.tasks.cell_emb`` builds them (CLS first).

    ``n_keep`` optionally keeps only the first ``n_keep[j]`` non-zero genes (in var
    order) of cell ``j``, to keep the forward fixtures small.
    """
    keep = np.array([g in vocab for g in adata.var_names])
    sub = adata[:, keep]
    gene_ids = np.array(vocab(sub.var_names.tolist()), dtype=int)
    dense = sub.X.toarray()
    examples = []
    for j, r in enumerate(rows):
        row = dense[r]
        nz = np.nonzero(row)[0]
        if n_keep is not None:
            nz = nz[: n_keep[j]]
        genes = np.insert(gene_ids[nz], 0, vocab["<cls>"])
        values = np.insert(row[nz], 0, cls_value)
        examples.append(
            {
                "id": r,
                "genes": torch.from_numpy(genes).long(),
                "expressions": torch.from_numpy(values).float(),
            }
        )
    return examples


def collate(vocab: GeneVocab, examples: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin + pad with the official DataCollator (same settings as embed_data)."""
    collator = DataCollator(
        do_padding=True,
        pad_token_id=vocab[PAD_TOKEN],
        pad_value=PAD_VALUE,
        do_mlm=False,
        do_binning=True,
        max_length=EMBED_MAX_LENGTH,
        sampling=True,
        keep_first_n_tokens=1,
    )
    np.random.seed(0)
    batch = collator(examples)
    return batch["gene"], batch["expr"]


def zeroshot_forward(model: TransformerModel, vocab: GeneVocab, adata: ad.AnnData) -> dict:
    """Forward reference for fixture A on 6 tokenized cells."""
    rows = [0, 5, 11, 17, 23, 40]
    n_keep = [40, 63, 2, 17, 63, 51]
    examples = tokenize_like_embed_data(adata, vocab, rows, PAD_VALUE, n_keep)
    gene_ids, values = collate(vocab, examples)
    values = values.clone()
    # exercise the MLM mask value and a value above the encoder clamp (512) in cell 1
    values[1, 2] = MASK_VALUE
    values[1, 4] = MASK_VALUE
    values[1, 3] = 600.0
    mask = gene_ids.eq(vocab[PAD_TOKEN])
    model.eval()
    with torch.no_grad():
        out = model(gene_ids, values, src_key_padding_mask=mask, MVC=True)
        encoded = model._encode(gene_ids, values, src_key_padding_mask=mask)
        gene_emb = model.encoder(gene_ids)
    # same transformer without torch's nested-tensor fast path (grad enabled)
    encoded_slow = model._encode(gene_ids, values, src_key_padding_mask=mask).detach()
    valid = ~mask
    FACTS["zs_pad_encoded_all_zero"] = bool((encoded[mask] == 0).all())
    FACTS["zs_fast_vs_slow_max_abs_diff"] = float(
        (encoded[valid] - encoded_slow[valid]).abs().max()
    )
    res = {
        "gene_ids": gene_ids.numpy().astype(np.int64),
        "values": values.numpy().astype(np.float32),
        "padding_mask": mask.numpy(),
        "mlm_output": to_np(out["mlm_output"]),
        "mvc_output": to_np(out["mvc_output"]),
        "cell_emb": to_np(out["cell_emb"]),
        "encoded": to_np(encoded),
        "gene_embeddings": to_np(gene_emb),
        "rows": np.array(rows),
        "n_keep": np.array(n_keep),
    }
    return res


def build_finetune(
    vocab: GeneVocab, model_dir: Path, adata: ad.AnnData
) -> tuple[TransformerModel, dict, dict]:
    """Fixture B: fine-tune-style checkpoint (DAB, batch labels, DSBN, zero probs)."""
    seed_all(1)
    model = TransformerModel(
        ntoken=len(vocab),
        d_model=FT["d_model"],
        nhead=FT["nhead"],
        d_hid=FT["d_hid"],
        nlayers=FT["nlayers"],
        nlayers_cls=FT["nlayers_cls"],
        n_cls=FT["n_cls"],
        vocab=vocab,
        dropout=FT["dropout"],
        pad_token=PAD_TOKEN,
        pad_value=PAD_VALUE,
        do_mvc=True,
        do_dab=True,
        use_batch_labels=True,
        num_batch_labels=FT["num_batch_labels"],
        domain_spec_batchnorm="dsbn",
        explicit_zero_prob=True,
        use_fast_transformer=False,
        pre_norm=False,
    )
    # Populate DSBN running stats: train-mode forward passes (no weight update),
    # a different slice of cells and a different value shift per batch label.
    model.train()
    with torch.no_grad():
        for label in range(FT["num_batch_labels"]):
            for step in range(4):
                rows = [(label * 13 + step * 5 + k) % N_CELLS for k in range(8)]
                ex = tokenize_like_embed_data(adata, vocab, rows, 0.0)
                g, v = collate(vocab, ex)
                v = torch.where(g.eq(vocab[PAD_TOKEN]), v, v * (1.0 + 0.5 * label) + label)
                bl = torch.full((len(rows),), label, dtype=torch.long)
                model(g, v, g.eq(vocab[PAD_TOKEN]), batch_labels=bl, CLS=True, MVC=True)
    # Make the domains clearly distinct, so that using the wrong domain's statistics
    # cannot go unnoticed.
    gen = torch.Generator().manual_seed(99)
    for label, bn in enumerate(model.dsbn.bns):
        bn.running_mean.add_(0.3 * label * torch.randn(FT["d_model"], generator=gen))
        bn.running_var.mul_(1.0 + 0.5 * label)
    model.eval()
    state = dict(model.state_dict())
    torch.save(state, model_dir / "best_model.pt")
    write_args(
        model_dir / "args.json",
        FT,
        extra={
            "n_cls": FT["n_cls"],
            "num_batch_labels": FT["num_batch_labels"],
            "use_batch_labels": True,
            "DSBN": True,
            "domain_spec_batchnorm": "dsbn",
            "do_dab": True,
            "explicit_zero_prob": True,
            "ecs_thres": 0.3,
            "USE_CLS": True,
        },
    )

    rows = [1, 2, 9, 20, 33, 47]
    n_keep = [30, 63, 5, 44, 63, 12]
    gene_ids, values = collate(vocab, tokenize_like_embed_data(adata, vocab, rows, 0.0, n_keep))
    mask = gene_ids.eq(vocab[PAD_TOKEN])
    batch_labels = torch.full((len(rows),), 2, dtype=torch.long)
    with torch.no_grad():
        out = model(
            gene_ids, values, mask, batch_labels=batch_labels, CLS=True, MVC=True, ECS=True
        )
        encoded = model._encode(gene_ids, values, mask, batch_labels)
        gene_emb = model.encoder(gene_ids)
    fwd = {
        "gene_ids": gene_ids.numpy().astype(np.int64),
        "values": values.numpy().astype(np.float32),
        "padding_mask": mask.numpy(),
        "batch_labels": batch_labels.numpy().astype(np.int64),
        "encoded": to_np(encoded),
        "gene_embeddings": to_np(gene_emb),
        "rows": np.array(rows),
        "n_keep": np.array(n_keep),
    }
    for k, v in out.items():
        fwd[k] = to_np(v)
    fwd["output_keys"] = np.array(sorted(out))
    FACTS["ft_pad_encoded_all_zero"] = bool((encoded[mask] == 0).all())
    return model, state, fwd


def binning_reference(seed: int = 7) -> dict:
    """Official ``scgpt.preprocess.binning`` on tie-free float32 rows of varied length."""
    rng = np.random.default_rng(seed)
    lengths = [1, 2, 3, 4, 5, 7, 10, 25, 48, 49, 50, 51, 52, 97, 98, 99, 100, 150, 200, 299, 300]
    lengths += sorted(rng.integers(6, 301, size=30 - len(lengths)).tolist())
    values, bins, edges, offsets, deterministic = [], [], [], [0], []
    for i, n in enumerate(lengths):
        row = tie_free_values(rng, n)
        e = np.quantile(row, np.linspace(0, 1, N_BINS - 1))
        det = bool(np.all(np.diff(e) > 0))
        # exactly what DataCollator does: a float32 torch tensor of the non-zero values
        np.random.seed(1000 + i)
        b_torch = binning(row=torch.from_numpy(row.copy()), n_bins=N_BINS)
        np.random.seed(1000 + i)
        b_np = binning(row=row.copy(), n_bins=N_BINS)
        assert b_torch.dtype == torch.int64 and b_np.dtype == np.float32
        if det:
            assert np.array_equal(b_torch.numpy(), b_np.astype(np.int64))
        values.append(row)
        bins.append(b_torch.numpy().astype(np.int64))
        edges.append(e)
        offsets.append(offsets[-1] + n)
        deterministic.append(det)
    return {
        "values": np.concatenate(values).astype(np.float32),
        "offsets": np.array(offsets, dtype=np.int64),
        "bins": np.concatenate(bins),
        "edges": np.stack(edges).astype(np.float64),
        "deterministic": np.array(deterministic),
        "lengths": np.array(lengths, dtype=np.int64),
        "n_bins": np.array(N_BINS),
    }


def run_embed(adata: ad.AnnData, model_dir: Path, batch_size: int) -> tuple[np.ndarray, float]:
    """Official zero-shot embedding; returns (embeddings, seconds)."""
    np.random.seed(0)
    t0 = time.perf_counter()
    out = embed_data(
        adata.copy(),
        model_dir,
        gene_col="index",
        max_length=EMBED_MAX_LENGTH,
        batch_size=batch_size,
        device="cpu",
        use_fast_transformer=False,
        return_new_adata=True,
    )
    return np.asarray(out.X, dtype=np.float32), time.perf_counter() - t0


# --------------------------------------------------------------------------- README
def readme(zs_state: dict, ft_state: dict, timings: dict, n_files: dict) -> str:
    """Render tests/data/official/README.md."""

    def table(state: dict) -> str:
        lines = ["| key | shape | dtype |", "| --- | --- | --- |"]
        lines += [f"| `{k}` | {s} | {d} |" for k, s, d in state_dict_table(state)]
        return "\n".join(lines)

    files = "\n".join(f"| `{name}` | {size:,} |" for name, size in sorted(n_files.items()))
    return f"""# Official scGPT parity fixtures

Generated by calling the official `scgpt` package, version {scgpt.__version__} (PyPI), with
torch {torch.__version__} and numpy {np.__version__} on CPU, in the side environment built by
`scripts/official_env/setup.sh`. Regenerate with:

```
bash scripts/official_env/setup.sh
{GENERATION_COMMAND}
```

No code of the official package is copied here; these are its outputs on small random
models and synthetic data.

## Files

| file | bytes |
| --- | --- |
{files}

- `zeroshot_model/` — official-format model directory (`args.json`, `vocab.json`,
  `best_model.pt`). `best_model.pt` is a plain `state_dict` of
  `scgpt.model.TransformerModel(ntoken=603, d_model=64, nhead=4, d_hid=128, nlayers=2,
  nlayers_cls=3, n_cls=1, dropout=0.2, pad_token="<pad>", pad_value=-2, do_mvc=True,
  do_dab=False, use_batch_labels=False, domain_spec_batchnorm=False,
  explicit_zero_prob=False, use_fast_transformer=False, pre_norm=False)` built right after
  `torch.manual_seed(0)` (numpy seeded 0 too), plus an extra `flag_encoder.weight` [2, 64]
  (`torch.randn` with generator seed 1234) like the official whole-human checkpoint.
- `vocab.json` (both models) — {N_VOCAB_GENES} real gene symbols drawn (numpy
  `default_rng(0)`) from the census vocabulary, ordered by census id, ids 0..599, then
  `<pad>`=600, `<cls>`=601, `<eoc>`=602.
- `zeroshot_cells.h5ad` — {N_CELLS} cells x {N_IN_VOCAB + N_NOT_IN_VOCAB} genes, float32 CSR:
  {N_IN_VOCAB} vocabulary genes + `NOTAGENE1..{N_NOT_IN_VOCAB}` (not in the vocabulary), in
  shuffled order. Non-zeros are lognormal float32, pairwise distinct inside every cell
  (so official binning is deterministic), 30-70 % zeros per cell. `obs.cell_type` has 3
  categories. numpy `default_rng(1)`.
- `zeroshot_official_embeddings.npy` — float32 [{N_CELLS}, 64] output of
  `scgpt.tasks.embed_data(adata, "zeroshot_model", gene_col="index",
  max_length={EMBED_MAX_LENGTH}, batch_size=16, device="cpu", use_fast_transformer=False,
  return_new_adata=True).X` (L2-normalised CLS embeddings). No gene sampling happens
  (max_length > max non-zeros + 1). The run with `batch_size=7` agrees to
  {timings["bs7_max_abs_diff"]:.2e} (max abs diff); it is not stored.
- `zeroshot_forward.npz` — inputs `gene_ids` (int64), `values` (float32), `padding_mask`
  (bool) for 6 cells (`rows` of `zeroshot_cells.h5ad`, keeping only the first `n_keep`
  non-zero in-vocabulary genes of each, to stay small) tokenized like `embed_data`:
  `<cls>` first with value -2, genes in `var` order, values binned by the official
  `DataCollator`, padded with the `<pad>` id and value -2. In cell 1, positions 2 and 4
  are then set to the mask value -1 and position 3 to 600 (above the value-encoder clamp
  512). Outputs in eval mode under `torch.no_grad()`: `mlm_output`, `mvc_output`,
  `cell_emb` from `model(gene_ids, values, src_key_padding_mask=padding_mask, MVC=True)`,
  `encoded` from `model._encode(...)` and `gene_embeddings` from `model.encoder(gene_ids)`.
  Under no_grad in eval mode torch's `TransformerEncoder` takes its nested-tensor fast
  path: `encoded` is exactly 0 at padded positions ({FACTS["zs_pad_encoded_all_zero"]}),
  so `mlm_output` / `mvc_output` there are the decoders applied to zeros. At non-padded
  positions the fast path and the regular path (autograd enabled) differ by at most
  {FACTS["zs_fast_vs_slow_max_abs_diff"]:.1e}. Compare at non-padded positions.
- `finetune_model/` — `TransformerModel(ntoken=603, d_model=32, nhead=4, d_hid=64,
  nlayers=2, nlayers_cls=3, n_cls=5, dropout=0.2, pad_value=-2, do_mvc=True, do_dab=True,
  use_batch_labels=True, num_batch_labels=3, domain_spec_batchnorm="dsbn",
  explicit_zero_prob=True, use_fast_transformer=False)` built after seed 1; DSBN running
  statistics filled by 4 train-mode forward passes (no weight updates) per batch label
  0, 1, 2 with label-dependent value shifts, then domain k's `running_mean` shifted by
  `0.3 * k * randn` (generator seed 99) and `running_var` scaled by `1 + 0.5 * k`.
  `args.json` has the pre-training keys plus fine-tuning keys (`n_cls`,
  `num_batch_labels`, `DSBN`, `do_dab`, ...).
- `finetune_forward.npz` — inputs `gene_ids`, `values` (`<cls>` value 0 as in
  fine-tuning, binned non-zeros, pad -2), `padding_mask`, `batch_labels` (all 2: official
  DSBN uses `batch_labels[0]` for the whole minibatch) and every output of
  `model(gene_ids, values, padding_mask, batch_labels=batch_labels, CLS=True, MVC=True,
  ECS=True)` in eval mode under no_grad (keys listed in `output_keys`), plus `encoded`
  and `gene_embeddings` (cells truncated to their first `n_keep` non-zero genes; `encoded`
  is 0 at padded positions: {FACTS["ft_pad_encoded_all_zero"]}). DSBN is
  `DomainSpecificBatchNorm1d(32, 3, eps=6.1e-5, affine=False)`: no weight/bias keys.
- `binning_reference.npz` — {timings["n_bin_rows"]} tie-free float32 rows (lengths in
  `lengths`, ragged: `values[offsets[i]:offsets[i+1]]`), official bins from
  `scgpt.preprocess.binning(row=torch.from_numpy(row), n_bins=51)` (the call
  `DataCollator` makes on the non-zero values) in `bins` (int64), the quantile edges
  `np.quantile(row, np.linspace(0, 1, 50))` (float64) in `edges`, and `deterministic`
  (False where edges coincide, i.e. length 1: there the official `_digitize` draws a
  random bin from numpy's global RNG, seeded with `1000 + i` before each row).

The script prints the wall time of the official `embed_data` runs (not stored here, so
that re-running reproduces byte-identical files).

## `zeroshot_model/best_model.pt` state dict

{table(zs_state)}

## `finetune_model/best_model.pt` state dict

{table(ft_state)}
"""


# --------------------------------------------------------------------------- main
def main() -> None:
    """Generate all fixtures and print a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    zs_dir, ft_dir = out / "zeroshot_model", out / "finetune_model"
    zs_dir.mkdir(parents=True)
    ft_dir.mkdir(parents=True)
    torch.set_num_threads(1)

    genes = pick_gene_symbols(N_VOCAB_GENES)
    write_vocab(zs_dir / "vocab.json", genes)
    shutil.copy(zs_dir / "vocab.json", ft_dir / "vocab.json")
    vocab = GeneVocab.from_file(zs_dir / "vocab.json")
    vocab.set_default_index(vocab[PAD_TOKEN])
    assert len(vocab) == N_VOCAB_GENES + len(SPECIALS)

    adata = make_cells(genes)
    adata.write_h5ad(out / "zeroshot_cells.h5ad", compression="gzip")
    adata = ad.read_h5ad(out / "zeroshot_cells.h5ad")

    zs_model, zs_state = build_zeroshot(vocab, zs_dir)
    np.savez_compressed(out / "zeroshot_forward.npz", **zeroshot_forward(zs_model, vocab, adata))

    emb16, t16 = run_embed(adata, zs_dir, batch_size=16)
    emb7, t7 = run_embed(adata, zs_dir, batch_size=7)
    diff = float(np.abs(emb16 - emb7).max())
    assert emb16.shape == (N_CELLS, ZS["d_model"]) and emb16.dtype == np.float32
    assert diff < 1e-5, diff
    np.save(out / "zeroshot_official_embeddings.npy", emb16)

    _, ft_state, ft_fwd = build_finetune(vocab, ft_dir, adata)
    np.savez_compressed(out / "finetune_forward.npz", **ft_fwd)

    bref = binning_reference()
    np.savez_compressed(out / "binning_reference.npz", **bref)

    sizes = {
        str(p.relative_to(out)): p.stat().st_size
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "README.md"
    }
    timings = {"bs7_max_abs_diff": diff, "n_bin_rows": len(bref["lengths"])}
    (out / "README.md").write_text(readme(zs_state, ft_state, timings, sizes))

    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"scgpt {scgpt.__version__}, torch {torch.__version__}, numpy {np.__version__}")
    print(f"wrote {out} ({total / 1024:.1f} KiB total)")
    for name, size in sizes.items():
        print(f"  {name:40s} {size:>9,d} B")
    print(f"embed_data: bs16 {t16:.2f}s, bs7 {t7:.2f}s, max|diff| {diff:.2e}")
    print(f"finetune outputs: {', '.join(ft_fwd['output_keys'])}")
    print(f"zeroshot state_dict: {len(zs_state)} keys; finetune state_dict: {len(ft_state)} keys")


if __name__ == "__main__":
    main()
