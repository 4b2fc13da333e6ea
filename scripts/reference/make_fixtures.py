#!/usr/bin/env python3
"""Tiny random-weight reference models + activations for engram's parity tests.

Run by hand (NOT by CI), from the repository root:

    /root/.venvs/ref/bin/python scripts/reference/make_fixtures.py

(any venv with `pip install torch transformers safetensors numpy` works). It rewrites
tests/fixtures/<name>/{config.json, model.safetensors, reference.safetensors} for
name in llama, llama2, mistral, qwen2, gemma, gemma2, gemma3.

The committed files were produced with torch 2.15.0+cu132 (run on CPU) and transformers 5.23.0,
float32, eager attention. Output is deterministic for a given torch version (fixed seed);
other torch versions may draw different random weights, which is harmless as long as the
model and reference files are regenerated together.

reference.safetensors holds (float32 unless noted):
  input_ids      int64 [2,12]  row 0: 12 random non-special tokens;
                               row 1: 4 pads (id 0, left padding) then 8 random tokens
  attention_mask int64 [2,12]  0 on pads
  position_ids   int64 [2,12]  clamp(cumsum(mask)-1, min=0), passed explicitly to the model
  logits         [2,12,V]
  resid_pre.{l}  [2,12,d]      input of decoder layer l (forward pre-hook on model.model.layers[l])
  resid_post.{l} [2,12,d]      output of decoder layer l (before the final norm)
  pattern.{l}    [2,H,12,12]   attention probabilities (output_attentions=True, eager)
  final_norm     [2,12,d]      output of model.model.norm
  single_logits  [1,8,V]       row 1's 8 real tokens run alone (positions 0..7), no padding
Pad query rows (attention_mask == 0) are garbage: compare only rows where the mask is 1.
"""
import json
import math
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GemmaConfig,
    GemmaForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "tests", "fixtures")

SEQ = 12
NPAD = 4
V = 128
D = 64

COMMON = dict(
    vocab_size=V,
    hidden_size=D,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    attn_implementation="eager",
)
N_SPECIAL = 3  # ids 0..2 are pad/bos/eos; random tokens are drawn from 3..V-1


def specs():
    """name -> (config class, model class, config kwargs, init options)."""
    return {
        "llama": (
            LlamaConfig,
            LlamaForCausalLM,
            dict(
                num_hidden_layers=4,
                rope_theta=500000.0,
                rope_scaling={
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 8,
                },
                tie_word_embeddings=False,
            ),
            dict(norm="plain"),
        ),
        "llama2": (
            LlamaConfig,
            LlamaForCausalLM,
            dict(num_hidden_layers=4, rope_theta=10000.0, tie_word_embeddings=True),
            dict(norm="plain", embed_std=0.25),
        ),
        "mistral": (
            MistralConfig,
            MistralForCausalLM,
            dict(num_hidden_layers=4, rope_theta=10000.0, sliding_window=4, tie_word_embeddings=False),
            dict(norm="plain"),
        ),
        "qwen2": (
            Qwen2Config,
            Qwen2ForCausalLM,
            dict(num_hidden_layers=4, rope_theta=1000000.0, tie_word_embeddings=False),
            dict(norm="plain", bias_std=0.3),
        ),
        "gemma": (
            GemmaConfig,
            GemmaForCausalLM,
            dict(
                num_hidden_layers=4,
                head_dim=32,
                hidden_act="gelu_pytorch_tanh",
                rope_theta=10000.0,
                bos_token_id=2,
                eos_token_id=1,
            ),
            dict(norm="gemma", embed_std=1.0 / math.sqrt(D)),
        ),
        "gemma2": (
            Gemma2Config,
            Gemma2ForCausalLM,
            dict(
                num_hidden_layers=4,
                hidden_activation="gelu_pytorch_tanh",
                rope_theta=10000.0,
                attn_logit_softcapping=50.0,
                final_logit_softcapping=30.0,
                sliding_window=4,
                query_pre_attn_scalar=24,
                bos_token_id=2,
                eos_token_id=1,
            ),
            # q/k scaled up so pre-softmax scores reach tens (softcap at 50 matters);
            # bigger tied embeddings + final norm weight so logits reach tens (softcap 30 matters)
            dict(norm="gemma", embed_std=0.5, qk_gain=5.0, final_norm_mean=0.5),
        ),
        "gemma3": (
            Gemma3TextConfig,
            Gemma3ForCausalLM,
            dict(
                num_hidden_layers=6,
                hidden_activation="gelu_pytorch_tanh",
                sliding_window=4,
                layer_types=[
                    "sliding_attention",
                    "sliding_attention",
                    "full_attention",
                    "sliding_attention",
                    "sliding_attention",
                    "full_attention",
                ],
                rope_parameters={
                    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                    "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
                },
                query_pre_attn_scalar=24,
                bos_token_id=2,
                eos_token_id=1,
            ),
            dict(norm="gemma", embed_std=1.0 / math.sqrt(D)),
        ),
    }


def make_config(cfg_cls, kw):
    kw = {**COMMON, **kw}
    try:
        return cfg_cls(**kw)
    except TypeError:
        # strict configs may reject unknown keys (e.g. hidden_act on Gemma)
        kw.pop("hidden_act", None)
        return cfg_cls(**kw)


@torch.no_grad()
def reinit(model, opts, gen):
    """Re-draw every parameter so activations are O(1), logits vary and norm weights are random."""

    def normal(p, mean, std):
        p.copy_(torch.randn(p.shape, generator=gen) * std + mean)

    gemma = opts["norm"] == "gemma"
    for name, p in model.named_parameters():
        if "norm" in name:
            if gemma:  # Gemma RMSNorm multiplies by (1 + w); w is initialised at 0
                mean = opts.get("final_norm_mean", 0.0) if name == "model.norm.weight" else 0.0
                normal(p, mean, 0.3)
            else:  # Llama RMSNorm multiplies by w; w is initialised at 1
                normal(p, 1.0, 0.3)
        elif name.endswith("bias"):
            normal(p, 0.0, opts.get("bias_std", 0.1))
        elif "embed_tokens" in name:
            normal(p, 0.0, opts.get("embed_std", 1.0))
        elif "lm_head" in name:
            normal(p, 0.0, 2.0 / math.sqrt(p.shape[1]))
        else:  # Linear [out, in]
            std = 1.0 / math.sqrt(p.shape[1])
            if any(k in name for k in ("q_proj", "k_proj")):
                std *= opts.get("qk_gain", 1.5)
            normal(p, 0.0, std)


def make_inputs(gen):
    ids = torch.randint(N_SPECIAL, V, (2, SEQ), generator=gen, dtype=torch.int64)
    ids[1, :NPAD] = 0
    mask = torch.ones(2, SEQ, dtype=torch.int64)
    mask[1, :NPAD] = 0
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, pos


@torch.no_grad()
def decoder_parts(model):
    """(decoder layers, final norm) of any family's module names."""
    if hasattr(model, "transformer"):  # GPT-2
        return model.transformer.h, model.transformer.ln_f
    if hasattr(model, "gpt_neox"):  # Pythia
        return model.gpt_neox.layers, model.gpt_neox.final_layer_norm
    return model.model.layers, model.model.norm


def run_reference(model, ids, mask, pos):
    layers, final = decoder_parts(model)
    store = {}
    hooks = []

    def pre_hook(l):
        def f(mod, args, kwargs):
            hs = args[0] if args else kwargs["hidden_states"]
            store[f"resid_pre.{l}"] = hs.detach().clone()

        return f

    def post_hook(l):
        def f(mod, args, kwargs, out):
            hs = out[0] if isinstance(out, (tuple, list)) else out
            store[f"resid_post.{l}"] = hs.detach().clone()

        return f

    for l, layer in enumerate(layers):
        hooks.append(layer.register_forward_pre_hook(pre_hook(l), with_kwargs=True))
        hooks.append(layer.register_forward_hook(post_hook(l), with_kwargs=True))
    hooks.append(final.register_forward_hook(lambda m, a, o: store.__setitem__("final_norm", o.detach().clone())))
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, output_attentions=True, use_cache=False)
    for h in hooks:
        h.remove()
    store["logits"] = out.logits.detach().clone()
    assert out.attentions is not None and len(out.attentions) == len(layers)
    for l, a in enumerate(out.attentions):
        store[f"pattern.{l}"] = a.detach().clone()

    real = ids[1:, NPAD:]
    single = model(
        input_ids=real,
        attention_mask=torch.ones_like(real),
        position_ids=torch.arange(real.shape[1]).unsqueeze(0),
        use_cache=False,
    )
    store["single_logits"] = single.logits.detach().clone()
    store["input_ids"] = ids
    store["attention_mask"] = mask
    store["position_ids"] = pos
    return {k: v.contiguous() for k, v in store.items()}


@torch.no_grad()
def diagnostics(name, model, ref):
    mask = ref["attention_mask"].bool()
    lg = ref["logits"][mask]
    msg = [f"logits std {lg.std():.2f} max|.| {lg.abs().max():.2f}"]
    b = ref["single_logits"][0]
    a = ref["logits"][1, NPAD:]
    msg.append(f"batched-vs-single max diff {(a - b).abs().max():.2e}")
    cfg = model.config
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(cfg, key, None) is not None:
            old = getattr(cfg, key)
            setattr(cfg, key, None)
            for layer in model.model.layers:  # attention modules copy the value at init
                if hasattr(layer.self_attn, key):
                    setattr(layer.self_attn, key, None)
            out = model(
                input_ids=ref["input_ids"],
                attention_mask=ref["attention_mask"],
                position_ids=ref["position_ids"],
                output_attentions=True,
                use_cache=False,
            )
            setattr(cfg, key, old)
            for layer in model.model.layers:
                if hasattr(layer.self_attn, key):
                    setattr(layer.self_attn, key, old)
            d_logit = (out.logits - ref["logits"])[mask].abs().max()
            d_pat = max(
                (out.attentions[l] - ref[f"pattern.{l}"]).abs().amax(dim=(1, 3))[mask].max()
                for l in range(len(out.attentions))
            )
            msg.append(f"without {key}: logits differ by {d_logit:.3f}, patterns by {d_pat:.3f}")
    nan = [k for k, v in ref.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if nan:
        msg.append(f"non-finite in {nan}")
    print(f"  {name}: " + "; ".join(msg))


def main():
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    for i, (name, (cfg_cls, model_cls, kw, opts)) in enumerate(specs().items()):
        torch.manual_seed(1234 + i)
        gen = torch.Generator().manual_seed(1234 + i)
        cfg = make_config(cfg_cls, kw)
        model = model_cls(cfg).to(torch.float32).eval()
        reinit(model, opts, gen)
        if cfg.tie_word_embeddings:
            assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        ids, mask, pos = make_inputs(gen)
        ref = run_reference(model, ids, mask, pos)

        d = os.path.join(OUT, name)
        os.makedirs(d, exist_ok=True)
        model.save_pretrained(d, safe_serialization=True)
        gc = os.path.join(d, "generation_config.json")
        if os.path.exists(gc):
            os.remove(gc)
        save_file(ref, os.path.join(d, "reference.safetensors"), metadata={
            # one key: safetensors writes metadata from a hash map, so several keys reorder between runs
            "producer": f"scripts/reference/make_fixtures.py; torch {torch.__version__}; "
            f"transformers {transformers.__version__}",
        })
        print(f"wrote {d}: layer_types={getattr(cfg, 'layer_types', None)}")
        diagnostics(name, model, ref)

        # reload check: the saved files reproduce the logits
        re = model_cls.from_pretrained(d, torch_dtype=torch.float32, attn_implementation="eager").eval()
        with torch.no_grad():
            lg = re(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
        diff = (lg - ref["logits"])[mask.bool()].abs().max().item()
        assert diff < 1e-5, f"{name}: reloaded model differs by {diff}"


if __name__ == "__main__":
    sys.exit(main())
