"""Does our generative pretraining learn? Evidence on a simulated atlas with known truth (#19).

    flock /tmp/scvi_scgpt_cpu.lock .venv/bin/python benchmarks/pretrain_evidence.py
    flock /tmp/scvi_scgpt_cpu.lock .venv/bin/python benchmarks/pretrain_evidence.py --part mouse
    .venv/bin/python benchmarks/pretrain_evidence.py --quick        # smoke run, ~1 min

**Atlas** (``--part atlas``): ``datasets.simulate_atlas(n_cells=6000, n_genes=500,
n_grn_genes=300, n_regulators=30, seed)``: 6 cell types as activity patterns over one GRN
(true edges, programmes and types stored). 10 % of the cells (seeded) are held out and
never trained on; everything below is scored on them.

**Pretraining**: ``SCGPT(train, d_model=64, n_layers=2, n_heads=4, d_hid=128, dropout=0,
max_seq_len=256)``, then ``model.train("pretrain", n_top_genes=None,
tokenizer={"max_seq_len": 256})`` with *every other setting the from-scratch default*
(lr 1e-3 constant after 100 warm-up steps, about 4,000 steps). The weights are copied at
step 0 (the random initialisation: the same model, same seed, before training) and at
``--snapshots`` steps, for the scaling curve. Cell-passes = steps x batch size (32).

**Scores of every snapshot** (random initialisation = step 0):

- held-out masked values: half of each held-out cell's expressed genes generated from the
  other half (as in pretraining, 256 tokens), MSE on the bin scale against each gene's mean
  bin in the training cells and against the cell-type oracle (the gene's mean bin within
  the cell's true type);
- zero-shot ``<cls>`` embeddings (``get_latent_representation``): 5-fold kNN (k=15)
  accuracy of the true types, beside 50 PCs of the training cells' log-normalised counts;
- gene embeddings of the 300 GRN genes: AUPRC (and AUPRC / random), AUROC of the true
  edges (unordered) from the cosine of the gene-token embeddings and of the contextual
  embeddings (``gene_embeddings(adata=held_out)``), and ARI of the Leiden programmes
  (``tl.gene_similarity_network``) against the true ones (each target's strongest
  regulator); beside |Pearson| co-expression (``tl.coexpression_network``; programmes from
  the same Leiden on Pearson similarity) and GENIE3 (``tl.genie3_network``, regulators as
  inputs, 100 trees);
- attention: ``attention_targets(mode="perturbed", top_k=20)`` per regulator, the held-out
  cells spread over one group per regulator (``_pretrain_scoring.regulator_groups``);
  precision@20 of the regulator's true targets, beside the top 20 by |Pearson|.

**Few-shot transfer** (final snapshot against step 0): 20 labelled training cells per
type, ``train("annotation", lr=1e-3, max_epochs=30, batch_size=16)`` from the pretrained
weights (``save_pretrained`` / ``from_pretrained``) and from the random initialisation, and
the annotation from-scratch defaults; accuracy on the held-out cells, beside L1 logistic
regression (C=1) on log-normalised counts.

**Mouse** (``--part mouse``): the real ``mouse_10k_subset.h5ad`` (10,000 cells x 1,000
genes, offline data folder); the same recipe and model on 90 % of the cells, held-out
masked-value MSE (10 %) against the per-gene mean, at the same snapshots.

Outputs under ``--out``: ``results.json``; the ``pretrain_evidence`` section of RESULTS.md.
"""

from __future__ import annotations

import copy
import tempfile
import time

import _harness as h
import _pretrain_scoring as s
import numpy as np

SHAPE = {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_hid": 128, "dropout": 0.0}
MAX_SEQ_LEN = 256
ATLAS = {"n_cells": 6000, "n_genes": 500, "n_grn_genes": 300, "n_regulators": 30}
QUICK_ATLAS = {"n_cells": 600, "n_genes": 120, "n_grn_genes": 80, "n_regulators": 8}
SNAPSHOTS = "250,500,1000,2000,4000"
QUICK = {"snapshots": "10,20", "part": "atlas"}
QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


class Snapshots:
    """Lightning callback copying the module's weights at step 0 and at chosen steps."""

    def __init__(self, steps):
        import lightning.pytorch as pl

        class _Callback(pl.Callback):
            def on_train_start(cb, trainer, plan):
                self._take(plan, 0)

            def on_train_batch_end(cb, trainer, plan, *args):
                if trainer.global_step in self.steps:
                    self._take(plan, trainer.global_step)

        self.steps = {int(x) for x in steps}
        self.states: dict[int, dict] = {}
        self.callback = _Callback()

    def _take(self, plan, step):
        self.states[step] = copy.deepcopy(
            {k: v.detach().cpu() for k, v in plan.module.state_dict().items()}
        )


def _split(adata, seed: int):
    held = np.random.default_rng(seed).random(adata.n_obs) < 0.1
    return adata[~held].copy(), adata[held].copy()


def _pretrain(train, args, log):
    import scvi

    from scvi_scgpt import SCGPT

    scvi.settings.seed = args.seed
    SCGPT.setup_anndata(train)
    model = SCGPT(train, max_seq_len=MAX_SEQ_LEN, **SHAPE)
    snaps = Snapshots(int(x) for x in args.snapshots.split(","))
    start = time.perf_counter()
    model.train(
        "pretrain",
        n_top_genes=None,
        tokenizer={"max_seq_len": MAX_SEQ_LEN},
        callbacks=[snaps.callback],
        **({"max_epochs": 2} if args.quick else {}),
        **QUIET,
    )
    seconds = time.perf_counter() - start
    task = model.training_task_
    log(f"pretrained in {seconds:.0f} s; steps {sorted(snaps.states)}")
    info = {
        "seconds": seconds,
        "hyperparameters": task["hyperparameters"],
        "best_epoch": task.get("best_epoch"),
        "trivial_check": task.get("trivial_check"),
        "gep_validation": model.history_["gep_validation"].to_numpy(dtype=float).ravel(),
    }
    return model, snaps.states, info


def _score_snapshot(model, state, train, held, truth, log) -> dict:
    from scvi_scgpt import SCGPT

    model.module.load_state_dict(state)
    model.module.eval()
    SCGPT.setup_anndata(held)
    res = s.masked_value_errors(model, train, held, max_seq_len=MAX_SEQ_LEN, type_key="cell_type")
    emb = model.get_latent_representation(held, progress_bar=False)
    res["knn_types"] = s.knn_type_accuracy(emb, held.obs["cell_type"])
    edges, grn_genes, regulators = truth
    token = model.gene_embeddings(grn_genes)
    context = model.gene_embeddings(grn_genes, adata=held, progress_bar=False)
    for name, table in (("token", token), ("contextual", context)):
        scores = s.gene_scores(edges, s.embedding_scores(table), s.embedding_programs(table))
        res.update({f"{name}_{k}": v for k, v in scores.items()})
    held.obs["group"] = s.regulator_groups(held.n_obs, regulators)
    ranked = model.attention_targets(
        held,
        groupby="group",
        control="ctrl",
        perturbed=[f"{r}+ctrl" for r in regulators],
        mode="perturbed",
        top_k=20,
        genes=grn_genes,
        progress_bar=False,
    )
    ranked["regulator"] = ranked["perturbation"].str.replace("+ctrl", "", regex=False)
    res["attention_p20"] = s.precision_at_k(ranked, edges)
    return res


def _baselines(train, held, truth) -> dict:
    from scvi_scgpt.tl import coexpression_network, genie3_network

    edges, grn_genes, regulators = truth
    res = {
        "knn_types_pca": s.knn_type_accuracy(s.pca_embedding(train, held), held.obs["cell_type"])
    }
    sub = s._log_adata(held[:, grn_genes])
    pearson = coexpression_network(sub)
    programs = s.embedding_programs(s.expression_table(held, grn_genes))
    res.update({f"pearson_{k}": v for k, v in s.gene_scores(edges, pearson, programs).items()})
    genie3 = genie3_network(sub, regulators=regulators, n_estimators=100)
    scores = genie3.reindex(index=grn_genes, columns=grn_genes).fillna(0.0)
    res.update({f"genie3_{k}": v for k, v in s.gene_scores(edges, scores, None).items()})
    ranked = s.coexpression_ranking(held[:, grn_genes], regulators)
    res["pearson_p20"] = s.precision_at_k(ranked, edges)
    n_targets = edges.groupby("source").size().reindex(regulators).fillna(0)
    res["random_p20"] = float((n_targets / (len(grn_genes) - 1)).mean())
    return res


def _few_shot(model, state0, state_final, train, held, args) -> dict:
    import scvi
    from sklearn.linear_model import LogisticRegression

    from scvi_scgpt import SCGPT

    rng = np.random.default_rng(args.seed)
    types = train.obs["cell_type"].astype(str).to_numpy()
    picked = np.concatenate(
        [rng.choice(np.flatnonzero(types == t), 20, replace=False) for t in np.unique(types)]
    )
    few = train[np.sort(picked)].copy()
    SCGPT.setup_anndata(few, labels_key="cell_type")
    SCGPT.setup_anndata(held)
    truth = held.obs["cell_type"].astype(str).to_numpy()
    same = {"lr": 1e-3, "max_epochs": 30, "batch_size": 16, "n_top_genes": None}
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, state in (("pretrained", state_final), ("random_init", state0)):
            model.module.load_state_dict(state)
            model.save_pretrained(f"{tmp}/{name}", overwrite=True)
            scvi.settings.seed = args.seed
            m = SCGPT.from_pretrained(f"{tmp}/{name}", few)
            m.train("annotation", **same, **QUIET)
            res[f"{name}_same_settings"] = float((m.predict(held).to_numpy() == truth).mean())
    scvi.settings.seed = args.seed
    m = SCGPT(few, max_seq_len=MAX_SEQ_LEN, **SHAPE)
    m.train("annotation", n_top_genes=None, **QUIET)
    res["scratch_defaults"] = float((m.predict(held).to_numpy() == truth).mean())
    lr = LogisticRegression(penalty="l1", C=1.0, solver="saga", max_iter=5000)
    lr.fit(s.log_normalized(few), few.obs["cell_type"].astype(str))
    res["l1_logistic"] = float((lr.predict(s.log_normalized(held)) == truth).mean())
    return res


def run_atlas(args, log) -> dict:
    from scvi_scgpt.datasets import simulate_atlas

    adata = simulate_atlas(**(QUICK_ATLAS if args.quick else ATLAS), seed=args.seed)
    edges = adata.uns["grn"]
    grn_genes = list(adata.var_names[: adata.uns["simulation"]["n_grn_genes"]])
    regulators = sorted(set(edges["source"]))
    truth = (edges, grn_genes, regulators)
    train, held = _split(adata, args.seed)
    log(f"atlas {adata.n_obs} x {adata.n_vars}; held out {held.n_obs} cells")
    model, states, info = _pretrain(train, args, log)
    res = {"pretraining": info, "baselines": _baselines(train, held, truth), "snapshots": {}}
    for step in sorted(states):
        res["snapshots"][step] = _score_snapshot(model, states[step], train, held, truth, log)
        log(f"step {step}: {res['snapshots'][step]}")
    final = max(states)
    res["few_shot"] = _few_shot(model, states[0], states[final], train, held, args)
    log(f"few-shot: {res['few_shot']}")
    return res


def run_mouse(args, log) -> dict:
    from scvi_scgpt import SCGPT

    adata = h.read_dataset("mouse_10k_subset.h5ad")
    train, held = _split(adata, args.seed)
    log(f"mouse {adata.n_obs} x {adata.n_vars}; held out {held.n_obs} cells")
    model, states, info = _pretrain(train, args, log)
    SCGPT.setup_anndata(held)
    res = {"pretraining": info, "snapshots": {}}
    for step in sorted(states):
        model.module.load_state_dict(states[step])
        res["snapshots"][step] = s.masked_value_errors(model, train, held, max_seq_len=MAX_SEQ_LEN)
        log(f"step {step}: {res['snapshots'][step]}")
    return res


# ----------------------------------------------------------------------------- report
def _f(x, nd=3):
    return h.fmt(x, nd)


def render_atlas(res: dict) -> str:
    base, snaps = res["baselines"], res["snapshots"]
    head = [
        "step (cell-passes)",
        "masked MSE",
        "kNN types",
        "token AUPRC x random / AUROC / ARI",
        "contextual AUPRC x random / AUROC / ARI",
        "attention P@20",
    ]
    rows = []
    for step, r in sorted(snaps.items(), key=lambda kv: int(kv[0])):
        label = "0 (random init)" if int(step) == 0 else f"{int(step):,} ({int(step) * 32:,})"
        rows.append(
            [
                label,
                _f(r["model"], 1),
                _f(r["knn_types"]),
                f"{_f(r['token_auprc_ratio'], 2)} / {_f(r['token_auroc'])} / "
                f"{_f(r['token_program_ari'])}",
                f"{_f(r['contextual_auprc_ratio'], 2)} / {_f(r['contextual_auroc'])} / "
                f"{_f(r['contextual_program_ari'])}",
                _f(r["attention_p20"]),
            ]
        )
    first = next(iter(snaps.values()))
    rows.append(
        [
            "baselines",
            f"gene mean {_f(first['gene_mean'], 1)}; type oracle {_f(first['type_oracle'], 1)}",
            f"PCA {_f(base['knn_types_pca'])}",
            f"Pearson {_f(base['pearson_auprc_ratio'], 2)} / {_f(base['pearson_auroc'])} / "
            f"{_f(base['pearson_program_ari'])}",
            f"GENIE3 {_f(base['genie3_auprc_ratio'], 2)} / {_f(base['genie3_auroc'])} / n/a",
            f"Pearson {_f(base['pearson_p20'])}; random {_f(base['random_p20'])}",
        ]
    )
    info = res["pretraining"]
    hp = info["hyperparameters"]
    fs = res["few_shot"]
    few = h.markdown_table(
        ["few-shot (20 cells per type)", "held-out accuracy"],
        [
            ["pretrained, lr 1e-3, 30 epochs", _f(fs["pretrained_same_settings"])],
            ["random init, same settings", _f(fs["random_init_same_settings"])],
            ["random init, annotation from-scratch defaults", _f(fs["scratch_defaults"])],
            ["L1 logistic regression (C=1)", _f(fs["l1_logistic"])],
        ],
    )
    return (
        f"`{res['command']}`\n\n{h.machine_line(res)}. Pretraining: "
        f"{info['seconds'] / 60:.1f} min, lr {hp['lr']:g} {hp['lr_schedule']}, warm-up "
        f"{hp['warmup_steps']}, {hp['max_epochs']} epochs (the from-scratch defaults).\n\n"
        + h.markdown_table(head, rows)
        + "\n\n"
        + few
    )


def render_mouse(res: dict) -> str:
    rows = []
    for step, r in sorted(res["snapshots"].items(), key=lambda kv: int(kv[0])):
        label = "0 (random init)" if int(step) == 0 else f"{int(step):,} ({int(step) * 32:,})"
        rows.append([label, _f(r["model"], 2), _f(r["gene_mean"], 2)])
    info = res["pretraining"]
    return (
        f"`{res['command']}`\n\n{h.machine_line(res)}. Pretraining: "
        f"{info['seconds'] / 60:.1f} min, {info['hyperparameters']['max_epochs']} epochs.\n\n"
        + h.markdown_table(["step (cell-passes)", "held-out masked MSE", "per-gene mean"], rows)
    )


def plot_curve(res: dict, path) -> None:
    """Held-out masked MSE and kNN accuracy against pretraining cell-passes (atlas part)."""
    import matplotlib.pyplot as plt

    steps = sorted(res["snapshots"], key=int)
    passes = [max(int(k), 1) * 32 for k in steps]
    snaps = [res["snapshots"][k] for k in steps]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax1.plot(passes[1:], [r["model"] for r in snaps[1:]], "o-", label="pretrained")
    for key, style, label in (
        ("gene_mean", "--", "per-gene mean"),
        ("type_oracle", ":", "type oracle"),
    ):
        ax1.axhline(snaps[0][key], ls=style, c="grey", label=label)
    ax1.set(xscale="log", xlabel="cell-passes", ylabel="held-out masked MSE (bins)")
    ax1.legend(fontsize=8)
    ax2.plot(passes[1:], [r["knn_types"] for r in snaps[1:]], "o-", label="pretrained")
    ax2.axhline(snaps[0]["knn_types"], ls=":", c="grey", label="random init")
    ax2.axhline(res["baselines"]["knn_types_pca"], ls="--", c="grey", label="PCA")
    ax2.set(xscale="log", xlabel="cell-passes", ylabel="kNN accuracy of true types", ylim=(0, 1))
    ax2.legend(fontsize=8)
    fig.tight_layout()
    h.save_figure(fig, path)


def main(argv=None) -> None:
    p = h.parser(__doc__, "pretrain_evidence", quick_help="tiny atlas, 2 epochs", results_md=True)
    h.add_options(
        p,
        part=("atlas", "atlas (simulated, every score) or mouse (real, masked values)"),
        snapshots=(SNAPSHOTS, "steps at which the weights are scored (step 0 always)"),
    )
    args = h.parse(p, argv, QUICK)
    log = h.setup_logging("pretrain_evidence")
    h.set_threads(args.threads)
    run, render = (run_atlas, render_atlas) if args.part == "atlas" else (run_mouse, render_mouse)
    args.out = args.out / args.part
    res = run(args, log)
    h.report(args, res, render, f"pretrain_evidence_{args.part}")
    if args.part == "atlas":
        plot_curve(res, args.out / "scaling_curve.png")


if __name__ == "__main__":
    main()
