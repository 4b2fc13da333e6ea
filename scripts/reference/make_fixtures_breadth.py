#!/usr/bin/env python3
"""Tiny random reference models of the families beyond Llama/Gemma (issue 19): GPT-2, GPT-NeoX
(Pythia), Qwen3, Phi-3 and OLMo-2, with the same reference layout as make_fixtures.py.

Run by hand (NOT by CI), from the repository root:

    python3 scripts/reference/make_fixtures_breadth.py

It rewrites tests/fixtures/<name>/{config.json, model.safetensors, reference.safetensors} for
name in gpt2, pythia, qwen3, phi3, olmo2 only (the seven fixtures of make_fixtures.py are left
alone: they were drawn with another torch version). Reference tensors: see make_fixtures.py and
tests/fixtures/README.md. Seeds 2234 + index of the model.
"""
import math
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    Olmo2Config,
    Olmo2ForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

sys.path.insert(0, os.path.dirname(__file__))
from make_fixtures import COMMON, D, NPAD, OUT, V, make_inputs, run_reference  # noqa: E402

LLAMA_LIKE = {k: v for k, v in COMMON.items()}


def specs():
    """name -> (model class, config)."""
    return {
        "gpt2": (
            GPT2LMHeadModel,
            GPT2Config(
                vocab_size=V,
                n_embd=D,
                n_layer=4,
                n_head=4,
                n_inner=128,
                n_positions=64,
                activation_function="gelu_new",
                layer_norm_epsilon=1e-5,
                bos_token_id=1,
                eos_token_id=2,
                pad_token_id=0,
                attn_implementation="eager",
            ),
        ),
        "pythia": (
            GPTNeoXForCausalLM,
            GPTNeoXConfig(
                vocab_size=V,
                hidden_size=D,
                num_hidden_layers=4,
                num_attention_heads=4,
                intermediate_size=128,
                hidden_act="gelu",
                rotary_pct=0.5,
                rotary_emb_base=10000,
                max_position_embeddings=64,
                layer_norm_eps=1e-5,
                use_parallel_residual=True,
                tie_word_embeddings=False,
                bos_token_id=1,
                eos_token_id=2,
                pad_token_id=0,
                attn_implementation="eager",
            ),
        ),
        "qwen3": (
            Qwen3ForCausalLM,
            Qwen3Config(**LLAMA_LIKE, num_hidden_layers=4, rope_theta=1000000.0, tie_word_embeddings=False),
        ),
        "phi3": (
            Phi3ForCausalLM,
            Phi3Config(
                **{k: v for k, v in LLAMA_LIKE.items() if k != "head_dim"},
                num_hidden_layers=4,
                rope_theta=10000.0,
                partial_rotary_factor=0.75,
                tie_word_embeddings=False,
            ),
        ),
        "olmo2": (
            Olmo2ForCausalLM,
            Olmo2Config(**LLAMA_LIKE, num_hidden_layers=4, rope_theta=500000.0, tie_word_embeddings=False),
        ),
    }


@torch.no_grad()
def reinit(model, gen):
    def normal(p, mean, std):
        p.copy_(torch.randn(p.shape, generator=gen) * std + mean)

    gpt2 = isinstance(model, GPT2LMHeadModel)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            normal(p, 0.0, 0.1)
        elif "norm" in name or ".ln_" in name:
            normal(p, 1.0, 0.3)
        elif any(k in name for k in ("embed_tokens", "wte", "embed_in")):
            normal(p, 0.0, 1.0)
        elif "wpe" in name:
            normal(p, 0.0, 0.5)
        elif "lm_head" in name or "embed_out" in name:
            normal(p, 0.0, 2.0 / math.sqrt(p.shape[1]))
        else:  # Linear [out, in]; GPT-2's Conv1D [in, out]
            fan_in = p.shape[0] if gpt2 else p.shape[1]
            std = 1.5 / math.sqrt(fan_in) if any(k in name for k in ("q_proj", "k_proj")) else 1.0 / math.sqrt(fan_in)
            normal(p, 0.0, std)


def main():
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    torch.set_num_threads(1)
    only = set(sys.argv[1:])
    for i, (name, (model_cls, cfg)) in enumerate(specs().items()):
        if only and name not in only:
            continue
        torch.manual_seed(2234 + i)
        gen = torch.Generator().manual_seed(2234 + i)
        model = model_cls(cfg).to(torch.float32).eval()
        reinit(model, gen)
        ids, mask, pos = make_inputs(gen)
        ref = run_reference(model, ids, mask, pos)
        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        model.save_pretrained(d, safe_serialization=True)
        gc = os.path.join(d, "generation_config.json")
        if os.path.exists(gc):
            os.remove(gc)
        save_file(ref, os.path.join(d, "reference.safetensors"), metadata={
            "producer": f"scripts/reference/make_fixtures_breadth.py; torch {torch.__version__}; "
            f"transformers {transformers.__version__}",
        })
        m = mask.bool()
        lg = ref["logits"][m]
        diff = (ref["logits"][1, NPAD:] - ref["single_logits"][0]).abs().max()
        print(f"wrote {d}: logits std {lg.std():.2f} max|.| {lg.abs().max():.2f}; batched-vs-single {diff:.2e}")
        re = model_cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
        with torch.no_grad():
            lg2 = re(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
        d2 = (lg2 - ref["logits"])[m].abs().max().item()
        assert d2 < 1e-5, f"{name}: reloaded model differs by {d2}"


if __name__ == "__main__":
    sys.exit(main())
