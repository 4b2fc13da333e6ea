#!/usr/bin/env python3
"""Reference gradients (torch autograd) for engram's gradient tests.

Run by hand (NOT by CI), from the repository root, after make_fixtures.py:

    python scripts/reference/make_grad_fixtures.py

(any venv with `pip install torch transformers safetensors`). It reads the committed tiny models
tests/fixtures/<name>/{config.json, model.safetensors} and the inputs of their
reference.safetensors (it does not re-draw any weights) and writes tests/fixtures/<name>/grads.safetensors:

  answer, wrong      int64 [2]      the metric's tokens per row
  metric             [2]            logits[r, -1, answer[r]] - logits[r, -1, wrong[r]]
  grad.resid_pre.{l} [2,12,d]       d(sum of metric)/d(input of decoder layer l)
  grad.final         [2,12,d]       d(sum of metric)/d(input of the final norm)
  grad.pattern.{l}   [2,H,12,12]    d(sum of metric)/d(attention probabilities of layer l)

float32, eager attention, the fixture's left-padded batch with explicit position ids. Pad
positions: compare only real query rows and real keys (the models treat fully masked pad rows
differently, which cannot reach the real rows' metric except through pattern entries over pad keys).
"""
import os
import sys

import torch
import transformers
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
from make_fixtures import decoder_parts  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures")
NAMES = [
    "llama", "llama2", "mistral", "qwen2", "gemma", "gemma2", "gemma3",
    "gpt2", "pythia", "qwen3", "phi3", "olmo2",
]
ANSWER = [3, 10]
WRONG = [7, 20]


def main():
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    for name in NAMES:
        d = os.path.join(FIX, name)
        ref = load_file(os.path.join(d, "reference.safetensors"))
        model = AutoModelForCausalLM.from_pretrained(
            d, torch_dtype=torch.float32, attn_implementation="eager"
        ).eval()
        stash = {}
        hooks = []

        def pre_hook(key):
            def f(mod, args, kwargs):
                hs = args[0] if args else kwargs["hidden_states"]
                hs.retain_grad()
                stash[key] = hs

            return f

        layers, norm = decoder_parts(model)
        for l, layer in enumerate(layers):
            hooks.append(layer.register_forward_pre_hook(pre_hook(f"resid_pre.{l}"), with_kwargs=True))
        hooks.append(norm.register_forward_pre_hook(pre_hook("final"), with_kwargs=True))
        out = model(
            input_ids=ref["input_ids"],
            attention_mask=ref["attention_mask"],
            position_ids=ref["position_ids"],
            output_attentions=True,
            use_cache=False,
        )
        for h in hooks:
            h.remove()
        for a in out.attentions:
            a.retain_grad()
        last = out.logits[:, -1, :]
        rows = torch.arange(2)
        metric = last[rows, torch.tensor(ANSWER)] - last[rows, torch.tensor(WRONG)]
        metric.sum().backward()
        res = {
            "answer": torch.tensor(ANSWER, dtype=torch.int64),
            "wrong": torch.tensor(WRONG, dtype=torch.int64),
            "metric": metric.detach().clone(),
        }
        for key, t in stash.items():
            res[f"grad.{key}"] = t.grad.detach().clone()
        for l, a in enumerate(out.attentions):
            res[f"grad.pattern.{l}"] = a.grad.detach().clone()
        save_file(res, os.path.join(d, "grads.safetensors"), metadata={
            "producer": f"scripts/reference/make_grad_fixtures.py; torch {torch.__version__}; "
            f"transformers {transformers.__version__}",
        })
        gmax = max(v.abs().max().item() for k, v in res.items() if k.startswith("grad."))
        print(f"wrote {d}/grads.safetensors: metric {metric.tolist()}, max |grad| {gmax:.3g}")


if __name__ == "__main__":
    sys.exit(main())
