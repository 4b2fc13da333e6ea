#!/usr/bin/env python3
"""Python reference for the heads probe (docs/methods.md §1), the way a notebook does it: transformers
with eager attention (pre-softmax scores captured by wrapping `eager_attention_forward`), numpy for
the scores, lag-CRPs, OV eigenvalues and the CMR grid fit. Used two ways:

* benchmark: the same work as `engram heads` (no ablation), timed stage by stage;
* cross-check: given engram's `tokens.parquet`, run on exactly those rows and compare every
  head's induction / previous-token / duplicate / copying score, lag-CRP and CMR distance with
  engram's `heads.parquet` (max abs differences in the JSON output).

    python3 scripts/bench/heads_reference.py MODEL CMR_TABLE.npy [ENGRAM_RUN_DIR [FIXTURE.json]]

MODEL is a GGUF file or a Hugging Face folder. Families: Llama/Gemma/Qwen-style (`model.layers`,
`v_proj`/`o_proj`), GPT-2 (`transformer.h`, Conv1D `c_attn`/`c_proj`) and GPT-NeoX
(`gpt_neox.layers`, per-head interleaved `query_key_value`, `dense`). For LayerNorm families the
copying score centres the folded reading weights over d_model (TransformerLens fold_ln with
centring), as engram does.

With FIXTURE.json, the reference's own numbers (tokens, per-head scores, lag-CRPs, CMR distances,
losses) are also written there: tests/real_models.rs compares engram's heads probe with them.

Prints one JSON object (timings in seconds, and the comparison when a run dir is given).
"""
import json
import os
import resource
import sys
import time

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM

path = sys.argv[1]
table_path = sys.argv[2]
run_dir = sys.argv[3] if len(sys.argv) > 3 else None
fixture = sys.argv[4] if len(sys.argv) > 4 else None
n, B, chunk, seed = 50, 16, 8, 0
torch.set_num_threads(os.cpu_count())
timings = {}

t0 = time.perf_counter()
if os.path.isdir(path):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
else:
    model = AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32,
        attn_implementation="eager")
model.eval()
timings["load"] = time.perf_counter() - t0
cfg = model.config
L, H = cfg.num_hidden_layers, cfg.num_attention_heads
family = cfg.model_type
if family == "gpt2":
    base, layers = model.transformer, model.transformer.h
    attn0 = layers[0].attn
elif family == "gpt_neox":
    base, layers = model.gpt_neox, model.gpt_neox.layers
    attn0 = layers[0].attention
else:
    base, layers = model.model, model.model.layers
    attn0 = layers[0].self_attn

# Capture pre-softmax scores: wrap the eager attention function of the model's module.
mod = sys.modules[type(attn0).__module__]
orig = mod.eager_attention_forward
scores_store = []


def eager_with_scores(module, query, key, value, attention_mask, **kw):
    # Keyword arguments only: Llama's and Gemma's eager functions order them differently.
    scaling = kw.get("scaling") or module.head_dim ** -0.5
    key_states = mod.repeat_kv(key, module.num_key_value_groups) if hasattr(mod, "repeat_kv") else key
    s = torch.matmul(query, key_states.transpose(2, 3)) * scaling
    if kw.get("softcap") is not None:
        s = torch.tanh(s / kw["softcap"]) * kw["softcap"]
    if attention_mask is not None:
        s = s + attention_mask[:, :, :, : key_states.shape[-2]]
    scores_store.append(s.detach())
    return orig(module, query, key, value, attention_mask, **kw)


mod.eager_attention_forward = eager_with_scores

# Tokens: engram's rows when a run dir is given, else [bos] + R + R with numpy's RNG.
if run_dir:
    import polars as pl
    tok = pl.read_parquet(os.path.join(run_dir, "tokens.parquet"))
    rows = (tok.sort(["sequence", "position"]).group_by("sequence", maintain_order=True)
            .agg(pl.col("token")).get_column("token").to_list())
    ids = torch.tensor(rows, dtype=torch.long)
    B, n = ids.shape[0], (ids.shape[1] - 1) // 2
else:
    rng = np.random.default_rng(seed)
    bos = cfg.bos_token_id or 0
    r = rng.integers(100, cfg.vocab_size, size=(B, n))
    ids = torch.tensor(np.concatenate([np.full((B, 1), bos), r, r], axis=1), dtype=torch.long)

T = 2 * n + 1
LAGS = np.arange(-8, 8)
t0 = time.perf_counter()
ind = np.zeros((L, H)); prev = np.zeros((L, H)); dup = np.zeros((L, H))
lag_s = np.zeros((L, H, 16)); lag_p = np.zeros((L, H, 16)); lag_n = np.zeros(16)
n_dest = 0
loss1 = loss2 = 0.0
with torch.inference_mode():
    for c in range(0, B, chunk):
        x = ids[c:c + chunk]
        scores_store.clear()
        out = model(x, output_attentions=True)
        lp = torch.log_softmax(out.logits, -1)
        nll = -lp[:, :-1].gather(-1, x[:, 1:, None])[..., 0]
        loss1 += nll[:, 1:n].sum().item(); loss2 += nll[:, n + 1:2 * n].sum().item()
        # Second-copy destinations i = n+1..2n; first occurrence p = i - n.
        dest = np.arange(n + 1, T)
        first = dest - n
        for l in range(L):
            p = out.attentions[l].float().numpy()  # [b, h, T, T]
            s = scores_store[l].float().numpy()
            prev[l] += p[:, :, np.arange(1, T), np.arange(T - 1)].sum(axis=(0, 2))
            ind[l] += p[:, :, dest, first + 1].sum(axis=(0, 2))
            dup[l] += p[:, :, dest, first].sum(axis=(0, 2))
            for k, lag in enumerate(LAGS):
                key = first + lag
                ok = (key >= 1) & (key <= dest)
                lag_s[l, :, k] += s[:, :, dest[ok], key[ok]].sum(axis=(0, 2))
                lag_p[l, :, k] += p[:, :, dest[ok], key[ok]].sum(axis=(0, 2))
                if l == 0:
                    lag_n[k] += ok.sum() * x.shape[0]
        n_dest += x.shape[0] * len(dest)
prev /= B * (T - 1); ind /= n_dest; dup /= n_dest
lag_s /= lag_n; lag_p /= lag_n
loss1 /= B * (n - 1); loss2 /= B * (n - 1)
timings["forward_and_scores"] = time.perf_counter() - t0

# Copying score: eigenvalues of W_O W_U W_E W_V (d_head × d_head), ln1 folded into W_V,
# the final norm into W_U.
t0 = time.perf_counter()
with torch.inference_mode():
    d = cfg.hidden_size
    dh = cfg.head_dim if getattr(cfg, "head_dim", None) else d // H
    layer_norm = family in ("gpt2", "gpt_neox")
    centre = (lambda w: w - w.mean(0, keepdim=True)) if layer_norm else (lambda w: w)
    if family == "gpt2":
        W_E, nf = base.wte.weight.float(), base.ln_f.weight.float()
    elif family == "gpt_neox":
        W_E, nf = base.embed_in.weight.float(), base.final_layer_norm.weight.float()
    else:
        W_E, nf = base.embed_tokens.weight.float(), base.norm.weight.float()
    W_U = model.get_output_embeddings().weight.float()
    if "gemma" in cfg.model_type:
        nf = nf + 1.0
    P = centre((W_U.T @ W_E) * nf[:, None])  # [d, d]
    g = H // getattr(cfg, "num_key_value_heads", H)
    copying = np.zeros((L, H))
    for l in range(L):
        # Per head: W_V rows [dh, d] (Linear layout) and W_O columns [d, dh].
        if family == "gpt2":
            ln1 = layers[l].ln_1.weight.float()
            Wv = layers[l].attn.c_attn.weight.float()[:, 2 * d:].T  # Conv1D [d, 3d] -> v rows
            Wo = layers[l].attn.c_proj.weight.float().T  # Conv1D [in, out] -> [d, H*dh]
        elif family == "gpt_neox":
            ln1 = layers[l].input_layernorm.weight.float()
            qkv = layers[l].attention.query_key_value.weight.float()  # [H*3*dh, d], per-head q,k,v
            Wv = qkv.reshape(H, 3, dh, d)[:, 2].reshape(H * dh, d)
            Wo = layers[l].attention.dense.weight.float()
        else:
            a = layers[l].self_attn
            ln1 = (layers[l].input_layernorm.weight.float() if hasattr(layers[l], "input_layernorm")
                   else torch.ones(d))
            if "gemma" in cfg.model_type:
                ln1 = ln1 + 1.0
            Wv = a.v_proj.weight.float()  # [K*dh, d]
            Wo = a.o_proj.weight.float()  # [d, H*dh]
        for h in range(H):
            wv = centre((Wv[(h // g) * dh:(h // g + 1) * dh] * ln1[None, :]).T)  # [d, dh]
            wo = Wo[:, h * dh:(h + 1) * dh].T  # [dh, d]
            ev = np.linalg.eigvals((wo @ P @ wv).double().numpy())
            copying[l, h] = ev.real.sum() / np.abs(ev).sum()
timings["copying"] = time.perf_counter() - t0

# CMR fit on lags -5..5 against the table [20, 21, 11, 17] (lags -8..8).
t0 = time.perf_counter()
tab = np.load(table_path).reshape(-1, 17)[:, 3:14]
c = tab / tab.sum(1, keepdims=True)
c = c - c.min(1, keepdims=True)
cmax = c.max(1)
a = lag_s.reshape(-1, 16)[:, 3:14]
ap = a - a.min(1, keepdims=True)
var = ap.var(1)
s = ap.max(1)[:, None] / cmax[None, :]  # [heads, grid]
d = ((s[:, :, None] * c[None] - ap[:, None, :]) ** 2).mean(2) / var[:, None]
d = np.where(np.isfinite(d), d, np.inf)
dist = d.min(1).reshape(L, H)
timings["cmr_fit"] = time.perf_counter() - t0
timings["total"] = sum(timings.values())

result = {
    "model": os.path.basename(path), "torch": torch.__version__,
    "transformers": transformers.__version__, "threads": torch.get_num_threads(),
    "batch": B, "n": n, "seconds": timings,
    "loss_first_copy": loss1, "loss_second_copy": loss2,
    "share_cmr_like": float((dist < 0.5).mean()),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}
if run_dir:
    import polars as pl
    hd = pl.read_parquet(os.path.join(run_dir, "heads.parquet")).sort(["layer", "head"])
    lc = pl.read_parquet(os.path.join(run_dir, "lag_crp.parquet")).sort(["layer", "head", "lag"])
    e = lambda col: hd.get_column(col).to_numpy().reshape(L, H)
    diff = lambda x, y: float(np.nanmax(np.abs(x - y)))
    result["max_abs_diff"] = {
        "induction_score": diff(ind, e("induction_score")),
        "prev_token_score": diff(prev, e("prev_token_score")),
        "duplicate_score": diff(dup, e("duplicate_score")),
        "copying_score": diff(copying, e("copying_score")),
        "lag_crp_score": diff(lag_s, lc.get_column("score").to_numpy().reshape(L, H, 16)),
        "lag_crp_prob": diff(lag_p, lc.get_column("prob").to_numpy().reshape(L, H, 16)),
        "cmr_distance": diff(dist, e("cmr_distance")),
    }
if fixture:
    with open(fixture, "w") as f:
        json.dump({
            "source": "scripts/bench/heads_reference.py (transformers eager + numpy)",
            "model": os.path.basename(path), "transformers": transformers.__version__,
            "n": n, "batch": B, "tokens": ids.tolist(),
            "induction_score": ind.tolist(), "prev_token_score": prev.tolist(),
            "duplicate_score": dup.tolist(), "copying_score": copying.tolist(),
            "lag_crp_score": lag_s.tolist(), "lag_crp_prob": lag_p.tolist(),
            "cmr_distance": dist.tolist(),
            "loss_first_copy": loss1, "loss_second_copy": loss2,
        }, f)
print(json.dumps(result))
