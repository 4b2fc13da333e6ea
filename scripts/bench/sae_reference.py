#!/usr/bin/env python3
"""Plain PyTorch reference for engram's SAE-training benchmark: the same JumpReLU / TopK / ReLU
training step as src/probes/sae/train.rs (same shapes, same normalisation, Adam, decoder-row
renormalisation with the parallel gradient component removed, JumpReLU straight-through
estimator with a rectangle kernel), on the same activations (an engram store directory), with
autograd instead of a hand-written backward. Prints one JSON line.

    python3 scripts/bench/sae_reference.py STORE [--kind threshold] [--steps 50] [--batch-size 1024]
        [--dict-size N] [--threads T] [--warmup 5]

steps_per_s counts the training step only (the batch is already in memory), as engram's
`train_report.json` does.
"""
import argparse
import glob
import json
import os
import time

import torch
from safetensors.torch import load_file

ap = argparse.ArgumentParser()
ap.add_argument("store")
ap.add_argument("--kind", default="threshold", choices=["threshold", "topk", "relu"])
ap.add_argument("--steps", type=int, default=50)
ap.add_argument("--warmup", type=int, default=5)
ap.add_argument("--batch-size", type=int, default=1024)
ap.add_argument("--dict-size", type=int, default=None)
ap.add_argument("--k", type=int, default=32)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--l0-coeff", type=float, default=0.5)
ap.add_argument("--l1-coeff", type=float, default=1.0)
ap.add_argument("--bandwidth", type=float, default=0.05)
ap.add_argument("--threshold-lr-mult", type=float, default=10.0)
ap.add_argument("--threads", type=int, default=os.cpu_count())
args = ap.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(0)

# The store's shards, as engram reads them (shuffled already; we shuffle again).
meta = json.load(open(os.path.join(args.store, "store.json")))
acts = torch.cat([load_file(os.path.join(args.store, s["file"]))["activations"] for s in meta["shards"]])
# A store of several hooks holds them side by side: the first hook's columns.
if meta.get("parts"):
    acts = acts[:, : meta["parts"][0]["d"]]
acts = acts[torch.randperm(acts.shape[0])]
n_rows, d = acts.shape
n = args.dict_size or 4 * d
scale = (d / acts[:16384].pow(2).sum(-1).mean()).sqrt()
x_all = acts * scale


class JumpReLU(torch.autograd.Function):
    """z = p·H(p − τ); ∂z/∂p = H(p − τ), ∂z/∂τ = −(τ/ε)·K((p − τ)/ε)."""

    @staticmethod
    def forward(ctx, p, tau, eps):
        ctx.save_for_backward(p, tau)
        ctx.eps = eps
        return p * (p > tau)

    @staticmethod
    def backward(ctx, g):
        p, tau = ctx.saved_tensors
        k = ((p - tau).abs() < ctx.eps / 2).to(g.dtype)
        return g * (p > tau), (-(tau / ctx.eps) * k * g).sum(0), None


class Step(torch.autograd.Function):
    """H(p − τ); ∂H/∂p = 0, ∂H/∂τ = −(1/ε)·K((p − τ)/ε)."""

    @staticmethod
    def forward(ctx, p, tau, eps):
        ctx.save_for_backward(p, tau)
        ctx.eps = eps
        return (p > tau).to(p.dtype)

    @staticmethod
    def backward(ctx, g):
        p, tau = ctx.saved_tensors
        k = ((p - tau).abs() < ctx.eps / 2).to(g.dtype)
        return None, (-(1.0 / ctx.eps) * k * g).sum(0), None


w_dec = torch.randn(n, d)
w_dec /= w_dec.norm(dim=1, keepdim=True)
params = {
    "w_enc": w_dec.t().clone().requires_grad_(),
    "w_dec": w_dec.requires_grad_(),
    "b_enc": torch.zeros(n, requires_grad=True),
    "b_dec": x_all[:16384].mean(0).clone().requires_grad_(),
}
if args.kind == "threshold":
    params["log_th"] = torch.full((n,), float(torch.tensor(0.1).log()), requires_grad=True)
groups = [{"params": [v for k, v in params.items() if k != "log_th"]}]
if "log_th" in params:  # log τ learns threshold_lr_mult times faster, as in engram
    groups.append({"params": [params["log_th"]], "lr": args.lr * args.threshold_lr_mult})
opt = torch.optim.Adam(groups, lr=args.lr, betas=(0.9, 0.999), eps=1e-8)


def step(x):
    p = x @ params["w_enc"] + params["b_enc"]
    if args.kind == "threshold":
        tau = params["log_th"].exp()
        z = JumpReLU.apply(p, tau, args.bandwidth)
        penalty = args.l0_coeff * Step.apply(p, tau, args.bandwidth).sum(-1).mean()
    elif args.kind == "topk":
        v, i = p.topk(args.k, dim=-1)
        z = torch.zeros_like(p).scatter(-1, i, v.relu())
        penalty = 0.0
    else:
        z = p.relu()
        penalty = args.l1_coeff * z.sum(-1).mean()
    xhat = z @ params["w_dec"] + params["b_dec"]
    loss = (xhat - x).pow(2).sum(-1).mean() + penalty
    opt.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        w, g = params["w_dec"], params["w_dec"].grad
        g -= (g * w).sum(-1, keepdim=True) * w
    opt.step()
    with torch.no_grad():
        params["w_dec"] /= params["w_dec"].norm(dim=1, keepdim=True)
    return float(loss.detach())


b = args.batch_size
batches = [x_all[(i * b) % (n_rows - b):][:b].contiguous() for i in range(args.warmup + args.steps)]
for i in range(args.warmup):
    step(batches[i])
t0, c0 = time.perf_counter(), time.process_time()
for i in range(args.steps):
    loss = step(batches[args.warmup + i])
secs, cpu = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({
    "impl": f"pytorch {torch.__version__}", "kind": args.kind, "d": d, "dict_size": n,
    "batch_size": b, "steps": args.steps, "threads": args.threads, "seconds": secs, "cpu_seconds": cpu,
    "steps_per_s": args.steps / secs, "samples_per_s": args.steps * b / secs, "last_loss": loss,
}))
