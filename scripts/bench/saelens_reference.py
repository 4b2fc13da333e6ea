#!/usr/bin/env python3
"""SAELens itself as the reference of engram's SAE-training benchmark: SAELens's own training
SAE classes and the inner step of its `SAETrainer` (`training_forward_pass`, backward, gradient
clipping at norm 1, Adam, the dead-latent counters that feed the AuxK mask) on the activations
of an engram store, with the same shapes and input scaling. Prints one JSON line.

    python3 scripts/bench/saelens_reference.py STORE [--kind threshold] [--steps 50]
        [--batch-size 1024] [--dict-size N] [--k 32] [--threads T] [--warmup 5]

Kinds map to SAELens's classes: threshold → JumpReLUTrainingSAE, topk → TopKTrainingSAE,
relu → StandardTrainingSAE, batchtopk → BatchTopKTrainingSAE, matryoshka →
MatryoshkaBatchTopKTrainingSAE (widths n/16, n/8, n/4, n/2, n as engram's default).
steps_per_s counts the training step only (the batch is already in memory), as engram's
`train_report.json` does. Needs `pip install sae-lens` (6.54.12 measured).
"""
import argparse
import json
import os
import time

import torch
from safetensors.torch import load_file

import sae_lens
from sae_lens.saes.sae import TrainStepInput

ap = argparse.ArgumentParser()
ap.add_argument("store")
ap.add_argument(
    "--kind", default="threshold", choices=["threshold", "topk", "relu", "batchtopk", "matryoshka"]
)
ap.add_argument("--steps", type=int, default=50)
ap.add_argument("--warmup", type=int, default=5)
ap.add_argument("--batch-size", type=int, default=1024)
ap.add_argument("--dict-size", type=int, default=None)
ap.add_argument("--k", type=int, default=32)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--threads", type=int, default=os.cpu_count())
args = ap.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)

meta = json.load(open(os.path.join(args.store, "store.json")))
acts = torch.cat(
    [load_file(os.path.join(args.store, s["file"]))["activations"] for s in meta["shards"]]
)
# A store of several hooks holds them side by side: the first hook's columns.
if meta.get("parts"):
    acts = acts[:, : meta["parts"][0]["d"]]
acts = acts[torch.randperm(acts.shape[0])]
n_rows, d = acts.shape
n = args.dict_size or 4 * d
scale = (d / acts[:16384].pow(2).sum(-1).mean()).sqrt()
x_all = acts * scale

common = dict(d_in=d, d_sae=n, dtype="float32", device="cpu")
if args.kind == "threshold":
    from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig

    sae = JumpReLUTrainingSAE(JumpReLUTrainingSAEConfig(**common))
    coeffs = {"l0": 0.5}
elif args.kind == "relu":
    from sae_lens import StandardTrainingSAE, StandardTrainingSAEConfig

    sae = StandardTrainingSAE(StandardTrainingSAEConfig(**common))
    coeffs = {"l1": 1.0}
elif args.kind == "topk":
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(k=args.k, **common))
    coeffs = {}
elif args.kind == "batchtopk":
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig

    sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(k=args.k, **common))
    coeffs = {}
else:
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )

    widths = [n // 16, n // 8, n // 4, n // 2, n]
    sae = MatryoshkaBatchTopKTrainingSAE(
        MatryoshkaBatchTopKTrainingSAEConfig(k=args.k, matryoshka_widths=widths, **common)
    )
    coeffs = {}

opt = torch.optim.Adam(sae.parameters(), lr=args.lr, betas=(0.9, 0.999))
since_fired = torch.zeros(n)
dead_window = 1000


def step(i):
    lo = (i * args.batch_size) % max(n_rows - args.batch_size, 1)
    x = x_all[lo : lo + args.batch_size]
    out = sae.training_forward_pass(
        TrainStepInput(
            sae_in=x,
            coefficients=coeffs,
            dead_neuron_mask=(since_fired > dead_window),
            n_training_steps=i,
            is_logging_step=False,
        )
    )
    with torch.no_grad():
        fired = (out.feature_acts > 0).float().sum(0) > 0
        since_fired.add_(1)
        since_fired[fired] = 0
    opt.zero_grad()
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
    opt.step()
    return out


for i in range(args.warmup):
    step(i)
t0 = time.perf_counter()
for i in range(args.steps):
    out = step(args.warmup + i)
dt = time.perf_counter() - t0
l0 = float((out.feature_acts > 0).float().sum(-1).mean())
print(
    json.dumps(
        {
            "impl": f"sae_lens {sae_lens.__version__} (torch {torch.__version__})",
            "kind": args.kind,
            "d": d,
            "dict_size": n,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "threads": args.threads,
            "steps_per_s": args.steps / dt,
            "l0": l0,
        }
    )
)
