"""One training-step measurement, ours or official (run by ``train_step_speed.py``).

    # official side (.official-venv): builds the official model and saves its weights
    .official-venv/bin/python benchmarks/_train_step_worker.py --side official \
        --case CASE.json --batch BATCH.npz --weights W.pt --out-json R.json
    # our side (project venv): loads those weights into SCGPTModule
    .venv/bin/python benchmarks/_train_step_worker.py --side ours \
        --case CASE.json --batch BATCH.npz --weights W.pt --out-json R.json

A training step, identical on both sides up to the implementation of the model and loss:
``zero_grad`` -> forward -> loss -> ``backward`` -> ``clip_grad_norm_(1.0)`` -> Adam step
(lr 1e-4, eps 1e-8; official: ``torch.optim.Adam`` as in its tutorials, ours: the fused Adam
that ``SCGPTTrainingPlan`` builds through ``make_optimizer``; same update), dropout 0, the
same batch at every step; float32, or with ``--precision bf16`` the forward pass and loss
under ``torch.autocast("cpu", torch.bfloat16)`` (what ``SCGPT.train(precision="bf16-mixed")``
does through Lightning).

- official: ``scgpt.model.TransformerModel(...)(src, values, src_key_padding_mask, MVC=True)``
  and the official tutorial loss ``scgpt.loss.masked_mse_loss(mlm_output, target, masked) +
  masked_mse_loss(mvc_output, target, masked)`` (GEP + GEPC);
- ours: ``SCGPTModule(tensors, loss_kwargs={"objectives": ObjectiveConfig(gep=True,
  gepc=True)})``, i.e. ``inference`` + ``generative`` + ``loss`` exactly as the scvi-tools
  training plan calls them.

Each side runs in its own process; the peak resident memory is ``ru_maxrss``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import _harness as h
import _measure as m

LR = 1e-4
EPS = 1e-8
CLIP = 1.0


def _official(case: dict, batch, weights: Path, torch):
    """Build the official model (fixed seed), save its weights, return (model, step_fn)."""
    warnings.filterwarnings("ignore", message="flash_attn is not installed")
    from scgpt.loss import masked_mse_loss
    from scgpt.model import TransformerModel

    torch.manual_seed(case["seed"])
    model = TransformerModel(
        ntoken=case["n_tokens"],
        d_model=case["d_model"],
        nhead=case["n_heads"],
        d_hid=case["d_hid"],
        nlayers=case["n_layers"],
        nlayers_cls=3,
        n_cls=1,
        # the constructor only reads vocab[pad_token] (the embedding's padding_idx)
        vocab={"<pad>": case["pad_id"]},
        dropout=0.0,
        pad_token="<pad>",
        pad_value=-2,
        do_mvc=True,
        do_dab=False,
        use_batch_labels=False,
        domain_spec_batchnorm=False,
        explicit_zero_prob=False,
        use_fast_transformer=False,
        pre_norm=False,
    )
    torch.save(model.state_dict(), weights)
    model.train()
    src = batch["gene_ids"]
    values = batch["values"]
    target = batch["target_values"]
    pad = batch["padding_mask"]
    masked = values.eq(-1.0)

    def forward_loss():
        out = model(src, values, src_key_padding_mask=pad, MVC=True)
        gep = masked_mse_loss(out["mlm_output"], target, masked)
        gepc = masked_mse_loss(out["mvc_output"], target, masked)
        return gep + gepc, {"gep": gep.detach(), "gepc": gepc.detach()}

    return model, forward_loss


def _ours(case: dict, batch, weights: Path, torch):
    """Load the official weights into our SCGPTModule, return (module, step_fn)."""
    from scvi_scgpt.data import GeneVocab
    from scvi_scgpt.model import load_into_module, read_state_dict
    from scvi_scgpt.module import (
        ObjectiveConfig,
        SCGPTModule,
        infer_architecture,
        to_torch_layout,
    )

    vocab = GeneVocab.census()
    assert len(vocab) == case["n_tokens"] and vocab.pad_id == case["pad_id"]
    state, renamed = to_torch_layout(read_state_dict(weights))
    config = infer_architecture(
        state,
        {"nheads": case["n_heads"]},
        n_tokens=len(vocab),
        pad_id=vocab.pad_id,
        dropout=0.0,
        use_flash=False,
    )
    module = SCGPTModule(config)
    audit = load_into_module(module, state, renamed=renamed)
    assert not audit.unexpected and not audit.initialised and not audit.mismatched, audit
    module.train()
    tensors = {
        "gene_ids": batch["gene_ids"],
        "values": batch["values"],
        "target_values": batch["target_values"],
        "padding_mask": batch["padding_mask"],
    }
    objectives = ObjectiveConfig(gep=True, gepc=True, mask_ratio=case["mask_ratio"])

    def forward_loss():
        _, _, out = module(tensors, loss_kwargs={"objectives": objectives})
        extra = out.extra_metrics
        return out.loss, {"gep": extra["gep"], "gepc": extra["gepc"]}

    return module, forward_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--side", choices=("official", "ours"), required=True)
    p.add_argument("--case", required=True, help="JSON file with the configuration")
    p.add_argument("--batch", required=True, help="npz with the token batch")
    p.add_argument("--weights", required=True, help="official state dict (written/read)")
    p.add_argument("--out-json", required=True)
    p.add_argument("--precision", choices=("32", "bf16"), default="32")
    args = p.parse_args()

    case = h.read_json(args.case)
    import numpy as np
    import torch

    torch.set_num_threads(case["threads"])
    raw = np.load(args.batch)
    batch = {
        "gene_ids": torch.from_numpy(raw["gene_ids"]).long(),
        "values": torch.from_numpy(raw["values"]).float(),
        "target_values": torch.from_numpy(raw["target_values"]).float(),
        "padding_mask": torch.from_numpy(raw["padding_mask"]).bool(),
    }
    build = _official if args.side == "official" else _ours
    model, forward_loss = build(case, batch, Path(args.weights), torch)
    params = [p for p in model.parameters() if p.requires_grad]
    if args.side == "ours":
        # what SCGPTTrainingPlan builds: Adam with PyTorch's fused kernel
        from scvi_scgpt.train import make_optimizer

        optimizer = make_optimizer(params, "Adam", lr=LR, eps=EPS)
    else:
        # the official tutorials' torch.optim.Adam (PyTorch's default implementation)
        optimizer = torch.optim.Adam(params, lr=LR, eps=EPS)
    n_tokens = int((~batch["padding_mask"]).sum())
    baseline_rss = m.current_rss_mb()

    steps = []
    n_total = case["n_warmup"] + case["n_steps"]
    with m.CpuContention() as contention:
        for i in range(n_total):
            t0 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
                loss, terms = forward_loss()
            t_fwd = time.perf_counter()
            loss.backward()
            t_bwd = time.perf_counter()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, CLIP)
            optimizer.step()
            t1 = time.perf_counter()
            steps.append(
                {
                    "step": i,
                    "warmup": i < case["n_warmup"],
                    "seconds": t1 - t0,
                    "forward_s": t_fwd - t0,
                    "backward_s": t_bwd - t_fwd,
                    "optimizer_s": t1 - t_bwd,
                    "loss": float(loss.detach()),
                    "gep": float(terms["gep"]),
                    "gepc": float(terms["gepc"]),
                    "grad_norm": float(grad_norm),
                }
            )
    timed = [s for s in steps if not s["warmup"]]
    median = statistics.median(s["seconds"] for s in timed)
    result = {
        "side": args.side,
        "case": case["name"],
        "precision": args.precision,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "n_parameters": int(sum(p.numel() for p in params)),
        "optimizer": f"{type(optimizer).__name__}(fused={bool(optimizer.defaults.get('fused'))})",
        "batch_shape": list(batch["gene_ids"].shape),
        "non_pad_tokens": n_tokens,
        "median_step_s": median,
        "min_step_s": min(s["seconds"] for s in timed),
        "max_step_s": max(s["seconds"] for s in timed),
        "median_forward_s": statistics.median(s["forward_s"] for s in timed),
        "median_backward_s": statistics.median(s["backward_s"] for s in timed),
        "median_optimizer_s": statistics.median(s["optimizer_s"] for s in timed),
        "tokens_per_s": n_tokens / median,
        "peak_rss_mb": m.rusage_peaks_mb()["peak_rss_self_mb"],
        "baseline_rss_mb": baseline_rss,
        **contention.report(),
        "steps": steps,
    }
    result["added_rss_mb"] = result["peak_rss_mb"] - baseline_rss
    if args.side == "ours":
        import scvi_scgpt

        result["scvi_scgpt"] = getattr(scvi_scgpt, "__version__", "unknown")
    else:
        import scgpt

        result["scgpt"] = scgpt.__version__
    h.write_json(args.out_json, result)
    print(
        f"{args.side:8s} {case['name']} ({args.precision}): median {median:.3f} s/step, "
        f"{result['tokens_per_s']:,.0f} tokens/s, peak RSS {result['peak_rss_mb']:.0f} MiB",
        flush=True,
    )
    os._exit(0)  # skip slow interpreter teardown of large tensors


if __name__ == "__main__":
    main()
