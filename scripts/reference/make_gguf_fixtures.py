#!/usr/bin/env python3
"""Tiny f32 GGUF files of the breadth fixtures (gpt2, pythia, qwen3, phi3, olmo2), written with
the `gguf` package under llama.cpp's architecture names, metadata keys and tensor names (as
convert_hf_to_gguf.py writes them: GPT-2's Conv1D weights transposed to [out, in]; NeoX's
query_key_value and Phi-3's qkv_proj / gate_up_proj kept fused; no Q/K permutation for these
families). No tokenizer. Run by hand from the repository root:

    python3 scripts/reference/make_gguf_fixtures.py

It writes tests/fixtures/<name>/model.gguf; tests/it/gguf.rs checks that engram's GGUF loader
gives the same logits as the safetensors folder (and transformers' reference.safetensors).
"""
import json
import os
import re

import gguf
import numpy as np
from safetensors.numpy import load_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FIX = os.path.join(ROOT, "tests", "fixtures")

ARCH = {"gpt2": "gpt2", "pythia": "gptneox", "qwen3": "qwen3", "phi3": "phi3", "olmo2": "olmo2"}

TOP = {
    "transformer.wte.weight": "token_embd.weight",
    "transformer.wpe.weight": "position_embd.weight",
    "transformer.ln_f.weight": "output_norm.weight",
    "transformer.ln_f.bias": "output_norm.bias",
    "gpt_neox.embed_in.weight": "token_embd.weight",
    "gpt_neox.final_layer_norm.weight": "output_norm.weight",
    "gpt_neox.final_layer_norm.bias": "output_norm.bias",
    "embed_out.weight": "output.weight",
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
BLOCK = {
    "ln_1": "attn_norm", "ln_2": "ffn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output",
    "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down",
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "attention.query_key_value": "attn_qkv", "attention.dense": "attn_output",
    "mlp.dense_h_to_4h": "ffn_up", "mlp.dense_4h_to_h": "ffn_down",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.qkv_proj": "attn_qkv", "self_attn.o_proj": "attn_output",
    "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.gate_up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "post_feedforward_layernorm": "post_ffw_norm",
}
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def gguf_name(name, fam):
    if name in TOP:
        return TOP[name]
    m = re.match(r"(?:transformer\.h|gpt_neox\.layers|model\.layers)\.(\d+)\.(.+)\.(weight|bias)$", name)
    i, mid, kind = m.groups()
    g = BLOCK[mid]
    if fam == "olmo2" and mid == "post_attention_layernorm":
        g = "post_attention_norm"  # OLMo-2's is a post-norm (llama.cpp LLM_TENSOR_ATTN_POST_NORM)
    return f"blk.{i}.{g}.{kind}"


def main():
    print(f"gguf {gguf.__version__ if hasattr(gguf, '__version__') else '(package)'}")
    for fam, arch in ARCH.items():
        d = os.path.join(FIX, fam)
        cfg = json.load(open(os.path.join(d, "config.json")))
        w = load_file(os.path.join(d, "model.safetensors"))
        get = lambda *ks: next(cfg[k] for k in ks if k in cfg and cfg[k] is not None)
        d_model = get("hidden_size", "n_embd")
        n_heads = get("num_attention_heads", "n_head")
        d_head = d_model // n_heads
        rope = cfg.get("rope_parameters") or {}
        out = gguf.GGUFWriter(os.path.join(d, "model.gguf"), arch)
        out.add_block_count(get("num_hidden_layers", "n_layer"))
        out.add_context_length(get("max_position_embeddings", "n_positions"))
        out.add_embedding_length(d_model)
        out.add_feed_forward_length(get("intermediate_size", "n_inner"))
        out.add_head_count(n_heads)
        out.add_head_count_kv(cfg.get("num_key_value_heads", n_heads))
        if fam in ("gpt2", "pythia"):
            out.add_layer_norm_eps(get("layer_norm_eps", "layer_norm_epsilon"))
        else:
            out.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
        if fam != "gpt2":
            out.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
            out.add_rope_dimension_count(int(d_head * rope.get("partial_rotary_factor", 1.0)))
        if fam == "pythia":
            out.add_bool("gptneox.use_parallel_residual", cfg["use_parallel_residual"])
        out.add_bos_token_id(cfg["bos_token_id"])
        out.add_eos_token_id(cfg["eos_token_id"])
        out.add_pad_token_id(cfg["pad_token_id"])
        for name in sorted(w):
            t = w[name].astype(np.float32)
            if fam == "gpt2" and name.endswith(CONV1D):
                t = np.ascontiguousarray(t.T)
            out.add_tensor(gguf_name(name, fam), t)
        out.write_header_to_file()
        out.write_kv_data_to_file()
        out.write_tensors_to_file()
        out.close()
        print(f"wrote {d}/model.gguf ({os.path.getsize(os.path.join(d, 'model.gguf'))} bytes)")


if __name__ == "__main__":
    main()
