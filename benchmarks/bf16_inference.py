"""bf16 embedding on a CPU: speed side by side with our fp32 and the official pipeline, fidelity.

    flock /tmp/scvi_scgpt_cpu.lock .venv/bin/python benchmarks/bf16_inference.py
    .venv/bin/python benchmarks/bf16_inference.py --quick --skip-official   # smoke run

Whole-human shape (d_model 512, 12 layers, 8 heads, d_hid 512, census vocabulary, random
weights written once by ``embed_throughput.make_model``) on pbmc68k cells (``--n-cells``):

1. **End to end, one process each** (``embed_throughput``'s worker: AnnData in memory ->
   embeddings, model loading included), in this order: ours fp32, ours
   ``precision="bf16"``, official ``scgpt.tasks.embed_data`` (float32; it has no bf16 CPU
   path), all on the same cells.
2. **In one process, alternating** ``--rounds`` times on the same cells and model (the
   ratios the machine's noise disturbs least): ours fp32; ours bf16; ours bf16 with the
   bfloat16 weights not pre-packed for oneDNN (plain ``F.linear``); ours bf16 with the
   CPU flash kernel instead of the explicit short attention; and the previous bf16
   implementation (``torch.autocast`` around fp32 weights).
3. **Fidelity** of bf16 against fp32, per cell: raw cosine, and cosine after subtracting
   the fp32 mean embedding from both (random weights give every cell a shared direction
   that inflates the raw cosine); the 15 nearest neighbours shared by the two embeddings;
   and 15-NN label transfer of ``bulk_labels`` (5-fold CV) with each embedding and how
   often the two predictions agree. On pbmc68k_700 (all 700 cells) and on the parity
   fixture (``tests/data/official``: zero-shot model, 48 cells).

Writes ``benchmarks/output/bf16_inference/results.json`` and (full runs) the marked "bf16
inference" section of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import _harness as h
import numpy as np

SECTION = "bf16_inference"
QUICK = {"n_cells": 64, "rounds": 1, "e2e_cells": 64}
log = h.setup_logging("bf16_inference", quiet=False)


# ----------------------------------------------------------------------------- fidelity
def fidelity(ref: np.ndarray, other: np.ndarray, labels=None, k: int = 15) -> dict:
    """Cosines (raw, centred on ``ref``'s mean), kNN overlap and label agreement."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

    def unit(x):
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    raw = np.sum(unit(ref) * unit(other), 1)
    mean = ref.mean(0)
    centred = np.sum(unit(ref - mean) * unit(other - mean), 1)
    out = {
        "raw_mean": float(raw.mean()),
        "raw_min": float(raw.min()),
        "centred_mean": float(centred.mean()),
        "centred_min": float(centred.min()),
        "centred_p01": float(np.quantile(centred, 0.01)),
    }
    k = min(k, len(ref) - 1)
    nn_ref = NearestNeighbors(n_neighbors=k + 1).fit(ref).kneighbors(ref)[1][:, 1:]
    nn_oth = NearestNeighbors(n_neighbors=k + 1).fit(other).kneighbors(other)[1][:, 1:]
    shared = [len(set(a) & set(b)) / k for a, b in zip(nn_ref, nn_oth)]
    out["knn_shared_mean"] = float(np.mean(shared))
    out["knn_shared_min"] = float(np.min(shared))
    if labels is not None:
        cv = StratifiedKFold(5, shuffle=True, random_state=0)
        clf = KNeighborsClassifier(k)
        p_ref = cross_val_predict(clf, ref, labels, cv=cv)
        p_oth = cross_val_predict(clf, other, labels, cv=cv)
        out["knn_accuracy_fp32"] = float(np.mean(p_ref == labels))
        out["knn_accuracy_bf16"] = float(np.mean(p_oth == labels))
        out["label_agreement"] = float(np.mean(p_ref == p_oth))
    return out


# ----------------------------------------------------------------------------- parts
def end_to_end(args, model_dir) -> dict:
    import embed_throughput as et

    vocab = et.read_vocab(model_dir)
    data = et.make_dataset("pbmc68k", args.e2e_cells, args.out / "data", 1200, vocab)
    run_dir = args.out / "runs" / f"pbmc68k_{args.e2e_cells}"
    ns = argparse.Namespace(
        ours_python=args.ours_python,
        official_python=args.official_python,
        device="cpu",
        precision="32",
        threads=args.threads,
        batch_size=64,
        max_len=1200,
        resume=False,
        max_retries=0,
        quiet_wait=0.0,
        quiet_threshold=0.3,
        contention_threshold=0.25,
        timeout=3 * 3600,
    )
    pipelines = ["ours", "ours-bf16"] + ([] if args.skip_official else ["official"])
    runs = {}
    for name in pipelines:
        r = et.run_worker(name, ns, data["h5ad"], model_dir, run_dir)
        runs[name] = {
            k: r[k]
            for k in (
                "n_cells",
                "total_s",
                "cells_per_s",
                "embed_s",
                "embed_cells_per_s",
                "load_s",
                "peak_rss_mb",
                "other_cpu_cores",
            )
        }
    return {"data": data, "runs": runs}


def in_process(args, model_dir) -> dict:
    import contextlib

    import torch

    import scvi_scgpt as s
    import scvi_scgpt.nn._kernels as kernels
    import scvi_scgpt.nn._precision as low
    from scvi_scgpt.datasets import pbmc68k_700

    adata = pbmc68k_700()[: args.n_cells].copy()
    s.SCGPT.setup_anndata(adata)
    model = s.SCGPT.from_pretrained(model_dir, adata, max_seq_len=1200)
    short = kernels.EXPLICIT_BF16_MAX_LEN

    @contextlib.contextmanager
    def variant(name):
        try:
            if name in ("bf16, flash kernel only", "bf16, previous (autocast)"):
                kernels.EXPLICIT_BF16_MAX_LEN = 0
            if name == "bf16, weights not pre-packed":
                low.PACK_WEIGHTS = False
            if name == "bf16, previous (autocast)":
                model._autocast = lambda p, d: torch.autocast("cpu", dtype=torch.bfloat16)
            yield "32" if name == "fp32" else "bf16"
        finally:
            kernels.EXPLICIT_BF16_MAX_LEN = short
            low.PACK_WEIGHTS = True
            model.__dict__.pop("_autocast", None)

    names = [
        "fp32",
        "bf16",
        "bf16, weights not pre-packed",
        "bf16, flash kernel only",
        "bf16, previous (autocast)",
    ]
    times = {n: [] for n in names}
    embs = {}
    for rnd in range(args.rounds + 1):
        for name in names:
            with variant(name) as precision:
                t = time.perf_counter()
                emb = model.get_latent_representation(
                    adata, batch_size=64, precision=precision, progress_bar=False
                )
                dt = time.perf_counter() - t
            if rnd == 0:
                embs[name] = emb  # round 0 is the warm-up
            else:
                times[name].append(dt)
    fp32 = np.median(times["fp32"])
    rows = {
        n: {
            "seconds": statistics.median(ts),
            "all_seconds": ts,
            "cells_per_s": args.n_cells / statistics.median(ts),
            "speedup_vs_fp32": fp32 / statistics.median(ts),
        }
        for n, ts in times.items()
    }
    labels = np.asarray(adata.obs["bulk_labels"])
    for n in names[1:]:
        rows[n]["fidelity"] = fidelity(embs["fp32"], embs[n], labels)
    return rows


def fidelity_part(args, in_process_rows: dict) -> dict:
    import anndata as ad

    import scvi_scgpt as s

    out = {
        "pbmc68k, whole-human shape (random weights)": {
            "n_cells": args.n_cells,
            **in_process_rows["bf16"]["fidelity"],
        }
    }
    fixture = h.REPO / "tests" / "data" / "official"
    cells = ad.read_h5ad(fixture / "zeroshot_cells.h5ad")
    s.SCGPT.setup_anndata(cells)
    model = s.SCGPT.from_pretrained(fixture / "zeroshot_model", cells, max_seq_len=512)
    e32 = model.get_latent_representation(cells, precision="32")
    e16 = model.get_latent_representation(cells, precision="bf16")
    out["parity fixture (zero-shot model, d64 x 2 layers)"] = {
        "n_cells": cells.n_obs,
        **fidelity(e32, e16),
    }
    return out


# ----------------------------------------------------------------------------- report
def render(res: dict) -> str:
    lines = [
        "## bf16 inference (issue #13)",
        "",
        f"Command: `{res['command']}`  ",
        f"{h.machine_line(res)}; fast bf16 matmuls (AMX or AVX-512-BF16): "
        f"{res['fast_bf16']}. Whole-human shape (d_model 512, 12 layers, 8 heads, random "
        f"weights, census vocabulary), pbmc68k cells, batch 64.",
        "",
    ]
    e2e = res.get("end_to_end")
    if e2e:
        runs = e2e["runs"]
        rows = []
        for name, r in runs.items():
            rows.append(
                [
                    name,
                    f"{r['n_cells']:,}",
                    f"{r['total_s']:.1f}",
                    f"{r['cells_per_s']:.2f}",
                    f"{r['embed_cells_per_s']:.2f}",
                    f"{r['peak_rss_mb']:,.0f}",
                    f"{r['other_cpu_cores']:.2f}",
                ]
            )
        lines += [
            "**End to end**, one fresh process each (model loading included), same cells:",
            "",
            h.markdown_table(
                [
                    "pipeline",
                    "cells",
                    "s",
                    "cells/s",
                    "embed-only cells/s",
                    "peak RSS MiB",
                    "other processes' cores",
                ],
                rows,
            ),
            "",
        ]
        ours, bf = runs["ours"], runs["ours-bf16"]
        line = f"bf16 / our fp32: {bf['cells_per_s'] / ours['cells_per_s']:.2f}x end to end, "
        line += f"{bf['embed_cells_per_s'] / ours['embed_cells_per_s']:.2f}x embedding only"
        if "official" in runs:
            off = runs["official"]
            line += (
                f"; bf16 / official: {bf['cells_per_s'] / off['cells_per_s']:.1f}x end to end "
                f"(our fp32 / official: {ours['cells_per_s'] / off['cells_per_s']:.1f}x)"
            )
        lines += [line + ".", ""]
    rows = []
    for name, r in res["in_process"].items():
        f = r.get("fidelity", {})
        rows.append(
            [
                name,
                f"{r['seconds']:.2f}",
                f"{r['cells_per_s']:.1f}",
                f"**{r['speedup_vs_fp32']:.2f}x**",
                f"{f['centred_mean']:.4f} / {f['centred_min']:.4f}" if f else "—",
                f"{f['knn_shared_mean']:.3f}" if f else "—",
            ]
        )
    lines += [
        f"**In one process**, alternating, median of {len(r['all_seconds'])} rounds "
        f"on {res['args']['n_cells']} cells (embedding only; fidelity vs fp32 on the same "
        "cells):",
        "",
        h.markdown_table(
            [
                "variant",
                "s",
                "cells/s",
                "vs fp32",
                "centred cosine mean / min",
                "shared 15-NN",
            ],
            rows,
        ),
        "",
        '**Fidelity** of `precision="bf16"` against fp32:',
        "",
    ]
    rows = []
    for name, f in res["fidelity"].items():
        rows.append(
            [
                name,
                f["n_cells"],
                f"{f['raw_mean']:.6f} / {f['raw_min']:.6f}",
                f"{f['centred_mean']:.4f} / {f['centred_min']:.4f}",
                f"{f['knn_shared_mean']:.3f} / {f['knn_shared_min']:.3f}",
                (
                    f"{f['knn_accuracy_fp32']:.3f} / {f['knn_accuracy_bf16']:.3f} / "
                    f"{f['label_agreement']:.3f}"
                )
                if "label_agreement" in f
                else "—",
            ]
        )
    lines.append(
        h.markdown_table(
            [
                "data",
                "cells",
                "raw cosine mean / min",
                "centred cosine mean / min",
                "shared 15-NN mean / min",
                "15-NN label accuracy fp32 / bf16 / agreement",
            ],
            rows,
        )
    )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = h.parser(__doc__, "bf16_inference", results_md=True)
    h.add_options(
        p,
        n_cells=(700, "pbmc68k cells of the in-process speed runs and the fidelity figures"),
        e2e_cells=(700, "pbmc68k cells of the end-to-end runs (official: ~5 cells/s here)"),
        rounds=(3, "alternating in-process rounds (after one warm-up round)"),
    )
    p.add_argument("--skip-official", action="store_true")
    p.add_argument("--skip-end-to-end", action="store_true")
    h.add_python_args(p)
    args = h.parse(p, argv, quick=QUICK)
    warnings.filterwarnings("ignore")
    h.set_threads(args.threads)
    import embed_throughput as et

    from scvi_scgpt.model._precision import fast_bf16_available

    model_dir = et.make_model("whole-human", args.out / "models", args.ours_python, 0)
    res = {"fast_bf16": fast_bf16_available("cpu")}
    if not args.skip_end_to_end:
        res["end_to_end"] = end_to_end(args, model_dir)
        log("end to end done")
    res["in_process"] = in_process(args, model_dir)
    log("in-process done")
    res["fidelity"] = fidelity_part(args, res["in_process"])
    h.report(args, res, render, SECTION)


if __name__ == "__main__":
    main()
