#!/usr/bin/env python3
"""Gradients on the real models, by torch autograd, for tests/it/grad.rs. Run by hand (not by CI):

    python3 scripts/reference/real_grads_reference.py [model-stem ...]

For ~/.cache/engram/models/<stem>.gguf (smollm2-135m-instruct, gemma-3-270m), f32, eager
attention, weights dequantized by transformers' GGUF loader: the metric
logit(" Paris") − logit(" London") at the last position of "The Eiffel Tower is located in the
city of", and its gradient at the input of decoder layers 0, L/2 and L−1
(blocks.l.hook_resid_pre). Writes tests/fixtures/real/<stem>_grads.safetensors:

  input_ids int64 [1,T], answer / wrong int64 [1], metric f32 [1],
  resid_pre.<l> f32 [1,T,d] (the gradient) for the three layers.
"""
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "real")
MODELS = os.environ.get("ENGRAM_MODELS", os.path.expanduser("~/.cache/engram/models"))
STEMS = ["smollm2-135m-instruct", "gemma-3-270m"]
PROMPT = "The Eiffel Tower is located in the city of"


def one(stem):
    gguf = f"{stem}.gguf"
    try:
        tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=gguf)
    except Exception:  # Gemma-3's GGUF tokenizer: use the tokenizer.json fetched beside it
        tok = AutoTokenizer.from_pretrained(os.path.join(MODELS, "gemma3-tokenizer"))
    model = AutoModelForCausalLM.from_pretrained(
        MODELS, gguf_file=gguf, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    ids = tok(PROMPT, return_tensors="pt").input_ids
    answer = tok(" Paris", add_special_tokens=False).input_ids
    wrong = tok(" London", add_special_tokens=False).input_ids
    assert len(answer) == 1 and len(wrong) == 1, (answer, wrong)
    layers = model.model.layers
    n = len(layers)
    keep = sorted({0, n // 2, n - 1})
    acts = {}

    def pre(i):
        def f(_m, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            if not x.requires_grad:
                x.requires_grad_(True)
            else:
                x.retain_grad()
            acts[i] = x
        return f

    hs = [layers[i].register_forward_pre_hook(pre(i), with_kwargs=True) for i in keep]
    emb = model.model.embed_tokens.register_forward_hook(lambda m, a, out: out.requires_grad_(True))
    logits = model(ids).logits[0, -1]
    for h in hs + [emb]:
        h.remove()
    metric = logits[answer[0]] - logits[wrong[0]]
    metric.backward()
    out = {
        "input_ids": ids.to(torch.int64),
        "answer": torch.tensor(answer, dtype=torch.int64),
        "wrong": torch.tensor(wrong, dtype=torch.int64),
        "metric": metric.detach().reshape(1).float(),
    }
    for i in keep:
        out[f"resid_pre.{i}"] = acts[i].grad.detach().float().contiguous()
    path = os.path.join(OUT, f"{stem}_grads.safetensors")
    save_file(out, path)
    print(f"wrote {path}: metric {metric.item():.4f}, layers {keep}, ids {ids.tolist()}")


for s in sys.argv[1:] or STEMS:
    one(s)
