"""Evidence that generative pretraining learns something (issue #4, item 7).

    flock /tmp/scvi_scgpt_cpu.lock .venv/bin/python benchmarks/pretrain_evidence_human.py

1. **Corpus.** The three human count files of the offline data folder (``$SCVI_SCGPT_DATA``,
   see ``_harness.py``) that are *not* the evaluation set are written, each to its own
   ``.h5ad`` (CSR float32 counts, gene symbols as ``var_names``), under
   ``benchmarks/output/pretrain/data/``: ``celltypist_sample_559``
   (559 cells, 32,786 genes), the RNA modality of ``cite_pbmc_2batch`` (400 cells, 15,792
   genes) and ``human_chr21_1107`` (1,107 cells, 507 chr21 genes). From every file a random
   10 % of the cells (seed 0) goes to a separate validation file.
2. **Vocabulary.** ``GeneVocab.from_anndata_files`` over the training files (the union of
   their gene symbols, + ``<pad>``, ``<cls>``, ``<eoc>``). Not the census vocabulary: it
   matches only 705 / 765 of the evaluation genes (the data use older GENCODE symbols)
   against 764 / 765 here.
3. **Pretraining.** ``StreamingAnnDataModule`` (batch 32, blocks of 64 cells) and
   ``SCGPT.train("pretrain", datamodule=...)``: generated-gene MSE + GEPC + cell-prompt
   step, generated fraction drawn from {0.25, 0.5, 0.75} per minibatch, Adam, linear
   warm-up (50 steps) then cosine decay, peak lr 1e-3, 40 epochs (2,400 steps; about 8 min
   on 2 idle CPU cores). The model is small enough for that (default d_model 64, 2 layers,
   4 heads, d_hid 128, max_seq_len 256, dropout 0.1 in the feed-forward and residual paths
   but none on the attention probabilities: with attention dropout PyTorch's CPU SDPA falls
   back to its math kernel and a step is 2-4x slower). Training stops early at
   ``--max-minutes`` (Lightning ``max_time``) on a busy machine.
4. **Zero-shot evaluation** on the held-out ``pbmc68k_700_counts.h5ad`` (700 cells x 765
   genes, ``obs.bulk_labels``, never seen in pretraining): ``<cls>`` embeddings of
   (a) the pretrained model and (b) a randomly initialised model of the same shape and
   vocabulary, created with the same seed (so (a) *is* (b) after pretraining; checked).
   kNN (k=15) label accuracy and macro-F1 with 5-fold stratified CV (mean +- sd over
   folds), beside 50 PCA components of the log-normalised counts (1e4, log1p).
   The same kNN score is also taken every few epochs (``--knn-every``), for the plot only:
   no setting was chosen with it. A gene-mean predictor's validation MSE is computed to
   read the loss values against.

The learning rate is recorded at every step and plotted, to show that the cosine schedule
spans the whole run. ``train("pretrain", tokenizer={"max_seq_len": ...})`` keeps the
CPU-sized token budget; the preset's own is 1,200.

Outputs (``--out``, default ``benchmarks/output/pretrain/``): ``evidence.json``,
``pretrain_loss_curves.png``, ``pretrained_model/`` (official format, ``save_pretrained``).
``--quick`` trains one epoch (a smoke run).
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import _harness as h
import numpy as np

EVAL_FILE = "pbmc68k_700_counts.h5ad"
LABEL_KEY = "bulk_labels"
SOURCES = {
    # name: (file, modality of a MuData file)
    "celltypist_559": ("celltypist_sample_559.h5ad", None),
    "cite_pbmc_rna_400": ("cite_pbmc_2batch.h5mu", "rna"),
    "chr21_1107": ("human_chr21_1107.h5ad", None),
}
QUICK = {"epochs": 1, "max_minutes": 3.0}


# ----------------------------------------------------------------------------- data
def write_corpus(out_dir: Path, val_frac: float, seed: int, sources: list[str]) -> dict:
    """Write train / validation .h5ad files per source; return their paths and sizes."""
    import anndata
    import scipy.sparse as sp

    out_dir.mkdir(parents=True, exist_ok=True)
    info = {"train": [], "validation": [], "sources": {}}
    rng = np.random.default_rng(seed)
    for name in sources:
        file, modality = SOURCES[name]
        src = h.read_dataset(file, modality)
        x = src.X
        x = sp.csr_matrix(x, dtype=np.float32) if not sp.issparse(x) else x.tocsr()
        x = x.astype(np.float32)
        x.sum_duplicates()
        x.eliminate_zeros()
        if not np.all(np.mod(x.data, 1) == 0):
            raise ValueError(f"{file}: expected integer counts.")
        names = np.asarray(src.var_names, dtype=str)
        if len(set(names)) != len(names):
            raise ValueError(f"{file}: gene symbols are not unique.")
        n = x.shape[0]
        order = rng.permutation(n)
        n_val = int(round(n * val_frac))
        parts = {"validation": np.sort(order[:n_val]), "train": np.sort(order[n_val:])}
        for split, rows in parts.items():
            ad = anndata.AnnData(
                x[rows],
                obs={"source": np.repeat(name, len(rows))},
            )
            ad.obs_names = [f"{name}_{i}" for i in rows]
            ad.var_names = names
            path = out_dir / f"{name}_{split}.h5ad"
            ad.write_h5ad(path)
            info[split].append(str(path))
        info["sources"][name] = {
            "file": file,
            "cells": int(n),
            "genes": int(x.shape[1]),
            "train_cells": int(len(parts["train"])),
            "validation_cells": int(len(parts["validation"])),
            "median_expressed_genes": float(np.median(np.diff(x.indptr))),
        }
    return info


# ----------------------------------------------------------------------------- baselines
def gene_mean_baseline(train_files, val_files, vocab, max_seq_len: int, seed: int) -> dict:
    """MSE of predicting each token's bin by its gene's mean bin (or by one global mean).

    Bins as the model sees them (library tokenizer, same ``max_seq_len``); means from the
    training files, MSE over the validation files' gene tokens (``<cls>`` excluded). A
    generative loss term near the gene-mean MSE means the model has learned which genes are
    usually high, but nothing cell-specific yet.
    """
    import anndata

    from scvi_scgpt.data import TokenizerConfig, tokenize_cells

    config = TokenizerConfig(max_seq_len=max_seq_len, seed=seed)

    def tokens(path):
        ad = anndata.read_h5ad(path)
        t = tokenize_cells(ad.X, vocab.lookup(list(ad.var_names)), config, cls_id=vocab.cls_id)
        is_cls = np.zeros(len(t.gene_ids), dtype=bool)
        is_cls[t.indptr[:-1]] = True
        return t.gene_ids[~is_cls], t.values[~is_cls].astype(np.float64)

    tr = [tokens(f) for f in train_files]
    ids = np.concatenate([g for g, _ in tr])
    vals = np.concatenate([v for _, v in tr])
    n = len(vocab)
    counts = np.bincount(ids, minlength=n)
    sums = np.bincount(ids, weights=vals, minlength=n)
    global_mean = float(vals.mean())
    gene_mean = np.where(counts > 0, sums / np.maximum(counts, 1), global_mean)
    va = [tokens(f) for f in val_files]
    vid = np.concatenate([g for g, _ in va])
    vv = np.concatenate([v for _, v in va])
    return {
        "global_mean_mse": float(np.mean((vv - global_mean) ** 2)),
        "gene_mean_mse": float(np.mean((vv - gene_mean[vid]) ** 2)),
        "validation_tokens": int(len(vv)),
        "note": "per-token MSE on the validation files; compare with one generative loss term",
    }


# ----------------------------------------------------------------------------- eval
def pca_baseline(adata, n_comps: int = 50) -> np.ndarray:
    from sklearn.decomposition import PCA

    return PCA(n_comps, random_state=0).fit_transform(h.log_normalize(adata.X))


# ----------------------------------------------------------------------------- callbacks
def make_recorder(model, eval_adata, labels, dm, knn_every: int = 1):
    """Lightning callback recording per-step losses / lr, validation, and kNN per epoch."""
    import torch
    from lightning.pytorch import Callback

    from scvi_scgpt.tl import knn_accuracy

    class Recorder(Callback):
        def __init__(self):
            self.steps: list[dict] = []
            self.validation: list[dict] = []
            self.knn_epochs: list[dict] = []
            self._last: dict = {}
            self.t0 = None

        def _wrap_loss(self, module):
            original = module.loss

            def loss(*args, **kwargs):
                out = original(*args, **kwargs)
                if module.training:
                    self._last = {k: float(v) for k, v in out.extra_metrics.items()}
                return out

            module.loss = loss

        def on_train_start(self, trainer, pl_module):
            self._wrap_loss(pl_module.module)
            self.t0 = time.perf_counter()
            # validation loss of the untrained model (step 0)
            self.validation.append({"step": 0, **self._validate(pl_module)})

        @torch.no_grad()
        def _validate(self, pl_module) -> dict:
            module = pl_module.module
            was_training = module.training
            module.eval()
            sums, n = {}, 0
            for batch in dm.val_dataloader():
                _, _, out = module(batch, loss_kwargs=pl_module.loss_kwargs)
                b = int(out.n_obs_minibatch)
                for key, v in out.extra_metrics.items():
                    sums[key] = sums.get(key, 0.0) + float(v) * b
                sums["loss"] = sums.get("loss", 0.0) + float(out.loss) * b
                n += b
            module.train(was_training)
            return {k: v / n for k, v in sums.items()}

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            rec = {
                "step": int(trainer.global_step),
                "epoch": int(trainer.current_epoch),
                "lr": float(trainer.optimizers[0].param_groups[0]["lr"]),
                "cells": int(batch["gene_ids"].shape[0]),
                "known_tokens": int((~batch["padding_mask"]).sum()),
                "generated_tokens": int((~batch["gen_padding_mask"]).sum()),
                "seconds": time.perf_counter() - self.t0,
                **self._last,
            }
            self.steps.append(rec)

        def on_validation_end(self, trainer, pl_module):
            if trainer.sanity_checking:
                return
            m = trainer.callback_metrics
            rec = {"step": int(trainer.global_step), "epoch": int(trainer.current_epoch)}
            for key in (
                "validation_loss",
                "gep_validation",
                "gepc_validation",
                "gep_cell_prompt_validation",
            ):
                if key in m:
                    rec[key] = float(m[key])
            self.validation.append(rec)

        def on_train_epoch_end(self, trainer, pl_module):
            epoch = int(trainer.current_epoch) + 1
            if epoch % knn_every and epoch != trainer.max_epochs:
                return
            module = pl_module.module
            was_training = module.training
            emb = model.get_latent_representation(eval_adata, batch_size=64)
            module.train(was_training)
            res = knn_accuracy(emb, labels)
            self.knn_epochs.append(
                {
                    "epoch": int(trainer.current_epoch) + 1,
                    "step": int(trainer.global_step),
                    "seconds": time.perf_counter() - self.t0,
                    **res,
                }
            )
            print(
                f"epoch {trainer.current_epoch + 1}: step {trainer.global_step}, "
                f"{time.perf_counter() - self.t0:.0f} s, last losses {self._last}, "
                f"pbmc68k kNN acc {res['accuracy_mean']:.3f}",
                flush=True,
            )

    return Recorder()


# ----------------------------------------------------------------------------- plot
def plot(path: Path, rec, results: dict) -> None:
    import matplotlib.pyplot as plt

    steps = np.array([s["step"] for s in rec.steps])
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    ax = axes[0]
    colors = {"gep": "C0", "gepc": "C1", "gep_cell_prompt": "C2"}
    window = 15
    for key, c in colors.items():
        y = np.array([s.get(key, np.nan) for s in rec.steps])
        ax.plot(steps, y, color=c, alpha=0.2, lw=0.8)
        if len(y) >= window:
            smooth = np.convolve(y, np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1 :], smooth, color=c, lw=1.8, label=f"train {key}")
        val_key = f"{key}_validation" if key != "gep" else "gep_validation"
        vs = [(v["step"], v.get(val_key, v.get(key))) for v in rec.validation]
        vs = [(a, b) for a, b in vs if b is not None]
        if vs:
            ax.plot(*zip(*vs), "o--", color=c, ms=4, lw=1, label=f"validation {key}")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("MSE of binned values (generated genes)")
    ax.set_title(f"Loss terms (train: raw + {window}-step mean)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)

    ax = axes[1]
    tot = np.array(
        [s.get("gep", 0) + s.get("gepc", 0) + s.get("gep_cell_prompt", 0) for s in rec.steps]
    )
    if len(tot) >= window:
        ax.plot(
            steps[window - 1 :],
            np.convolve(tot, np.ones(window) / window, "valid"),
            color="k",
            label="train total (15-step mean)",
        )
    vs = [(v["step"], v.get("validation_loss", v.get("loss"))) for v in rec.validation]
    ax.plot(*zip(*vs), "o-", color="C3", label="validation total")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("gep + gepc + gep_cell_prompt")
    ax2 = ax.twinx()
    ax2.plot(steps, [s["lr"] for s in rec.steps], color="0.6", lw=1, label="learning rate")
    ax2.set_ylabel("learning rate", color="0.5")
    ax.set_title("Total loss; learning rate (grey)")
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)

    ax = axes[2]
    ep = [0] + [k["epoch"] for k in rec.knn_epochs]
    acc = [results["knn"]["random_init"]["accuracy_mean"]] + [
        k["accuracy_mean"] for k in rec.knn_epochs
    ]
    sd = [results["knn"]["random_init"]["accuracy_sd"]]
    sd += [k["accuracy_sd"] for k in rec.knn_epochs]
    ax.errorbar(ep, acc, yerr=sd, fmt="o-", capsize=3, label="SCGPT <cls> embedding")
    ax.axhline(
        results["knn"]["pca50_lognorm"]["accuracy_mean"],
        color="C1",
        ls="--",
        label="PCA(50) of log-normalised counts",
    )
    ax.set_xlabel("pretraining epoch (0 = random init)")
    ax.set_ylabel("kNN (k=15) accuracy, 5-fold CV")
    ax.set_title("Held-out pbmc68k (bulk_labels), zero-shot")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    h.save_figure(fig, path)


# ----------------------------------------------------------------------------- main
def main() -> None:
    p = h.parser(__doc__, "pretrain", quick_help="one epoch (a smoke run)")
    h.add_options(
        p,
        epochs=40,
        max_minutes=(12.0, "Lightning max_time"),
    )
    h.add_shape_args(p, h.D64_PRETRAIN)
    p.add_argument(
        "--attn-dropout",
        type=float,
        default=h.D64_PRETRAIN["attention_dropout"],
        help="attention-probability dropout (>0 makes CPU SDPA use its slow "
        "math kernel: ~2-4x slower steps)",
    )
    h.add_options(
        p,
        max_seq_len=256,
        batch_size=32,
        block_size=64,
        lr=1e-3,
        warmup_steps=50,
        val_every=(0, "validate every N steps (0: epoch)"),
        knn_every=(0, "held-out kNN every N epochs (0: ~10)"),
    )
    p.add_argument(
        "--sources",
        nargs="+",
        default=list(SOURCES),
        choices=list(SOURCES),
        help="pretraining files (default: every offline human file but the held-out pbmc68k)",
    )
    args = h.parse(p, quick=QUICK)

    t_start = time.perf_counter()
    h.setup_logging("pretrain_evidence_human")
    import anndata
    import torch

    h.set_threads(args.threads)
    import scvi

    from scvi_scgpt import SCGPT, GeneVocab
    from scvi_scgpt.dataloaders import StreamingAnnDataModule
    from scvi_scgpt.tl import knn_accuracy

    args.out.mkdir(parents=True, exist_ok=True)

    # ---- corpus and vocabulary
    corpus = write_corpus(args.out / "data", val_frac=0.1, seed=args.seed, sources=args.sources)
    vocab = GeneVocab.from_anndata_files(corpus["train"])
    print(f"corpus: {json.dumps(corpus['sources'])}", flush=True)
    print(f"vocabulary: {len(vocab):,} tokens", flush=True)
    baseline_mse = gene_mean_baseline(
        corpus["train"], corpus["validation"], vocab, args.max_seq_len, args.seed
    )
    print(f"validation MSE baselines: {baseline_mse}", flush=True)

    # ---- held-out evaluation set
    pbmc = h.read_dataset(EVAL_FILE)
    labels = pbmc.obs[LABEL_KEY].astype(str).to_numpy()
    overlap = {
        name: int(np.isin(pbmc.var_names, anndata.read_h5ad(f, backed="r").var_names).sum())
        for name, f in zip(args.sources, corpus["train"])
    }

    dm = StreamingAnnDataModule(
        corpus["train"],
        vocab,
        validation_files=corpus["validation"],
        batch_size=args.batch_size,
        block_size=args.block_size,
        seed=args.seed,
    )
    steps_per_epoch = dm.train_stream.steps_per_epoch()
    example = dm.example_adata()
    SCGPT.setup_anndata(example)
    shape = {
        "vocab": vocab,
        "max_seq_len": args.max_seq_len,
        "d_model": args.d_model,
        "n_heads": args.n_heads,
        "d_hid": args.d_hid,
        "n_layers": args.n_layers,
        "dropout": args.dropout,
        "attention_dropout": args.attn_dropout,
        "seed": args.seed,
        # the heads train("pretrain") adds, built up front so that the module is not
        # rebuilt by train()
        "do_mvc": True,
        "use_generative_flag": True,
    }
    scvi.settings.seed = args.seed
    random_model = SCGPT(example, **shape)
    scvi.settings.seed = args.seed
    model = SCGPT(example, **shape)
    same_init = all(
        torch.equal(a, b)
        for a, b in zip(
            random_model.module.state_dict().values(), model.module.state_dict().values()
        )
    )
    assert same_init, "the two models should start from identical weights"
    n_params = sum(p.numel() for p in model.module.parameters())

    SCGPT.setup_anndata(pbmc)
    coverage = model.gene_coverage(pbmc)
    cov = {
        "summary": coverage.summary(),
        "matched_genes": int((coverage.vocab_ids >= 0).sum()),
        "genes": int(pbmc.n_vars),
        "per_source_overlap": overlap,
        "fraction_of_counts_matched": float(
            pbmc.X[:, coverage.vocab_ids >= 0].sum() / pbmc.X.sum()
        ),
    }
    print(f"pbmc68k coverage: {cov['summary']}", flush=True)

    # ---- baselines before training
    t = time.perf_counter()
    emb_random = random_model.get_latent_representation(pbmc, batch_size=64)
    embed_seconds = time.perf_counter() - t
    knn = {
        "random_init": knn_accuracy(emb_random, labels),
        "pca50_lognorm": knn_accuracy(pca_baseline(pbmc), labels),
    }
    print(
        f"random init kNN acc {knn['random_init']['accuracy_mean']:.3f}; "
        f"PCA {knn['pca50_lognorm']['accuracy_mean']:.3f}",
        flush=True,
    )

    # ---- pretraining
    knn_every = args.knn_every or max(1, args.epochs // 10)
    recorder = make_recorder(model, pbmc, labels, dm, knn_every)
    trainer_kwargs = {}
    if args.val_every:
        trainer_kwargs["val_check_interval"] = args.val_every
    t = time.perf_counter()
    module_before = model.module
    model.train(
        "pretrain",
        datamodule=dm,
        max_epochs=args.epochs,
        tokenizer={"max_seq_len": args.max_seq_len},
        max_time={"minutes": args.max_minutes},
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[recorder],
        **trainer_kwargs,
    )
    train_seconds = time.perf_counter() - t
    assert model.module is module_before, "train() rebuilt the module"

    emb_pre = model.get_latent_representation(pbmc, batch_size=64)
    knn["pretrained"] = knn_accuracy(emb_pre, labels)
    print(f"pretrained kNN acc {knn['pretrained']['accuracy_mean']:.3f}", flush=True)
    model.save_pretrained(args.out / "pretrained_model", overwrite=True)

    history = {
        k: [float(x) for x in v.to_numpy().ravel()]
        for k, v in model.history_.items()
        if k.endswith(("_train", "_validation", "_loss")) or k.startswith(("train", "validation"))
    }
    cells = sum(s["cells"] for s in recorder.steps)
    results = {
        "corpus": corpus["sources"],
        "vocabulary": {"kind": "GeneVocab.from_anndata_files(train files)", "tokens": len(vocab)},
        "model": {
            "parameters": int(n_params),
            "shape": {k: v for k, v in shape.items() if k != "vocab"},
            "same_initial_weights_as_random_model": bool(same_init),
            "max_seq_len_used_in_training": int(model.tokenizer_config.max_seq_len),
        },
        "training": {
            "steps_per_epoch": int(steps_per_epoch),
            "steps": len(recorder.steps),
            "epochs_completed": int(model.trainer.current_epoch),
            "seconds": train_seconds,
            "cells_seen": int(cells),
            "cells_per_second_incl_validation_and_eval": cells / train_seconds,
            "history": history,
            "steps_log": recorder.steps,
            "validation_log": recorder.validation,
            "knn_per_epoch": recorder.knn_epochs,
        },
        "evaluation": {
            "dataset": EVAL_FILE,
            "cells": int(pbmc.n_obs),
            "label_key": LABEL_KEY,
            "classes": {k: int(v) for k, v in pbmc.obs[LABEL_KEY].value_counts().items()},
            "coverage": cov,
            "embedding_seconds_700_cells": embed_seconds,
        },
        "knn": knn,
        "validation_mse_baselines": baseline_mse,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "total_seconds": time.perf_counter() - t_start,
    }
    plot(args.out / "pretrain_loss_curves.png", recorder, results)
    h.write_results(args, results, "evidence.json", indent=1)
    print(_summary(results), flush=True)


def _summary(r: dict) -> str:
    def f(k):
        x = r["knn"][k]
        return (
            f"{x['accuracy_mean']:.3f} ± {x['accuracy_sd']:.3f} | "
            f"{x['macro_f1_mean']:.3f} ± {x['macro_f1_sd']:.3f}"
        )

    tr = r["training"]
    v = tr["validation_log"]
    vl = [x.get("validation_loss", x.get("loss")) for x in v]
    lines = [
        f"training: {tr['steps']} steps, {tr['epochs_completed']} epochs, {tr['seconds']:.0f} s",
        f"validation loss: {vl[0]:.3f} (untrained) -> {vl[-1]:.3f} (min {min(vl):.3f})",
        "| embedding | kNN accuracy | kNN macro-F1 |",
        "| --- | --- | --- |",
        f"| SCGPT pretrained | {f('pretrained')} |",
        f"| SCGPT random init (same shape, seed) | {f('random_init')} |",
        f"| PCA(50), log-normalised | {f('pca50_lognorm')} |",
        f"total {r['total_seconds']:.0f} s, peak RSS {r['peak_rss_mb']:.0f} MiB",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
