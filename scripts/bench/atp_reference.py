#!/usr/bin/env python3
"""Python reference for engram's AtP benchmark: transformers + torch autograd on the same GGUF
weights (f32, eager attention) and the same token ids. AtP at every decoder layer's input
(resid_pre), every o_proj input (z, per head) and every down_proj input (MLP neurons): one clean
forward + backward, one corrupt forward per pair. Prints one JSON object.

    python3 scripts/bench/atp_reference.py GGUF ENGRAM_JSON [REPEATS]

ENGRAM_JSON is examples/bench_atp's output (its `pairs` are the ids used here).
"""
import json, os, sys, time

import torch
from transformers import AutoModelForCausalLM

path, ej = sys.argv[1], json.load(open(sys.argv[2]))
reps = int(sys.argv[3]) if len(sys.argv) > 3 else 3
torch.set_num_threads(int(os.environ.get("THREADS", os.cpu_count())))
model = AutoModelForCausalLM.from_pretrained(
    os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32,
    attn_implementation="eager")
model.eval()
for p in model.parameters():
    p.requires_grad_(False)
layers = model.model.layers
n_heads = model.config.num_attention_heads


def run(ids, grad):
    acts = {}
    hooks = []

    def keep(key):
        def pre(_m, args, kwargs=None):
            x = args[0] if args else kwargs["hidden_states"]
            if grad:
                x.retain_grad()
            acts[key] = x
        return pre

    for i, layer in enumerate(layers):
        hooks.append(layer.register_forward_pre_hook(
            lambda m, a, k, i=i: keep(("resid", i))(m, a, k), with_kwargs=True))
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(
            lambda m, a, i=i: keep(("z", i))(m, a)))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(
            lambda m, a, i=i: keep(("post", i))(m, a)))
    try:
        logits = model(torch.tensor([ids])).logits[0, -1]
    finally:
        for h in hooks:
            h.remove()
    return logits, acts


def atp(p):
    # The embeddings need a grad path: make the first layer's input a leaf that requires grad.
    emb = model.model.embed_tokens
    h = emb.register_forward_hook(lambda m, a, out: out.requires_grad_(True))
    try:
        logits, clean = run(p["clean"], True)
    finally:
        h.remove()
    m = logits[p["answer"]] - logits[p["wrong"]]
    m.backward()
    with torch.no_grad():
        _, corrupt = run(p["corrupt"], False)
        out = {}
        for k, a in clean.items():
            d = (corrupt[k] - a) * a.grad
            if k[0] == "resid":
                out[k] = d[0].sum(-1)
            elif k[0] == "z":
                out[k] = d[0].reshape(d.shape[1], n_heads, -1).sum((0, 2))
            else:
                out[k] = d[0].sum(0)
    return m.item(), out


secs = []
grid = None
for i, p in enumerate(ej["pairs"]):
    atp(p)  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        metric, out = atp(p)
        best = min(best, time.perf_counter() - t0)
        if i == 0 and grid is None:
            grid = [out[("resid", l)].tolist() for l in range(len(layers))]
    secs.append(best)
print(json.dumps({"seconds_per_pair": secs, "total_s": sum(secs), "resid_atp_pair0": grid,
                  "torch": torch.__version__, "threads": torch.get_num_threads()}))
