#!/usr/bin/env python3
"""Tiny SAEs in the layouts of three pretrained-SAE sources, for tests/it/sae_pretrained.rs.

Run by hand (NOT by CI), from the repository root:

    python3 -m pip install numpy safetensors
    python3 scripts/reference/make_pretrained_sae_fixtures.py

Writes tests/fixtures/sae_pretrained/ (d_in 16, d_sae 32, float32, seeded):

  gemma_scope_2/params.safetensors + config.json   Gemma Scope 2: w_enc [d, n], w_dec [n, d],
                                                   b_enc, b_dec, threshold (lower-case keys)
  gemma_scope_npz/params.npz                       Gemma Scope: W_enc, W_dec, b_enc, b_dec,
                                                   threshold (np.savez, uncompressed)
  llama_scope/hyperparams.json                     Llama Scope: d_model, d_sae,
  llama_scope/checkpoints/final.safetensors        jump_relu_threshold, dataset_average_
                                                   activation_norm {in, out}, hook_point_in;
                                                   encoder.weight [n, d], decoder.weight [d, n],
                                                   encoder.bias, decoder.bias
  expected.safetensors                             x [8, 16] and, per layout, `<layout>.feature_acts`
                                                   [8, 32] and `<layout>.sae_out` [8, 16]

The expected outputs are computed with numpy (float64, stored as float32) the way SAELens's
loaders convert each layout (sae_lens/loading/pretrained_sae_loaders.py, sae-lens 6.54.12):
Gemma Scope (2) as stored; Llama Scope with f = sqrt(d_model) / dataset_average_activation_norm.in,
W_enc = encoder.weight.T * f, W_dec = decoder.weight.T / f, b_dec = decoder.bias / f and a
threshold of jump_relu_threshold * f for every latent. JumpReLU: z = relu(pre) * (pre > threshold),
pre = x @ W_enc + b_enc; sae_out = z @ W_dec + b_dec. Seeds are redrawn until no pre-activation is
within 1e-3 of its threshold, so float32 rounding cannot flip a latent.

The committed files were produced with numpy 2.x and safetensors 0.7 (see `producer` metadata).
The SAELens layout (cfg.json + sae_weights.safetensors) reuses tests/fixtures/saelens_jumprelu,
written by SAELens itself (scripts/reference/make_saelens_fixture.py).
"""
import json
import os

import numpy as np
import safetensors
from safetensors.numpy import save_file

OUT = "tests/fixtures/sae_pretrained"
D, N, B = 16, 32, 8
PRODUCER = {
    "producer": f"scripts/reference/make_pretrained_sae_fixtures.py numpy {np.__version__} "
    f"safetensors {safetensors.__version__}"
}


def jumprelu(x, w_enc, w_dec, b_enc, b_dec, thr):
    pre = x @ w_enc + b_enc
    z = np.maximum(pre, 0) * (pre > thr)
    return pre, z, z @ w_dec + b_dec


def draw(seed):
    rng = np.random.default_rng(seed)
    w_enc = rng.normal(0, 1 / np.sqrt(D), (D, N))
    w_dec = rng.normal(0, 1 / np.sqrt(N), (N, D))
    b_enc = rng.normal(0, 0.2, N)
    b_dec = rng.normal(0, 0.2, D)
    thr = rng.uniform(0.05, 1.0, N)
    return [a.astype(np.float32) for a in (w_enc, w_dec, b_enc, b_dec, thr)]


def clear(x, params):
    p = [a.astype(np.float64) for a in params]
    pre, _, _ = jumprelu(x.astype(np.float64), *p)
    return np.min(np.abs(pre - p[4])) > 1e-3


rng = np.random.default_rng(20261203)
x = rng.normal(0, 1, (B, D)).astype(np.float32)
expected = {"x": x}
os.makedirs(OUT, exist_ok=True)


def record(name, params):
    p = [a.astype(np.float64) for a in params]
    _, z, out = jumprelu(x.astype(np.float64), *p)
    expected[f"{name}.feature_acts"] = z.astype(np.float32)
    expected[f"{name}.sae_out"] = out.astype(np.float32)
    print(name, "mean L0", (z > 0).sum(-1).mean())


def first_clear(seed, make=lambda p: p):
    while not clear(x, make(draw(seed))):
        seed += 1
    return draw(seed)


# Gemma Scope 2.
w_enc, w_dec, b_enc, b_dec, thr = first_clear(1)
d = os.path.join(OUT, "gemma_scope_2")
os.makedirs(d, exist_ok=True)
save_file(
    {"w_enc": w_enc, "w_dec": w_dec, "b_enc": b_enc, "b_dec": b_dec, "threshold": thr},
    os.path.join(d, "params.safetensors"),
    metadata=PRODUCER,
)
with open(os.path.join(d, "config.json"), "w") as f:
    json.dump({"architecture": "jump_relu", "model_name": "gemma-v3-270m-pt",
               "hf_hook_point_in": "model.layers.9.output"}, f, indent=2)
record("gemma_scope_2", (w_enc, w_dec, b_enc, b_dec, thr))

# Gemma Scope (params.npz).
w_enc, w_dec, b_enc, b_dec, thr = first_clear(101)
d = os.path.join(OUT, "gemma_scope_npz")
os.makedirs(d, exist_ok=True)
np.savez(os.path.join(d, "params.npz"), W_enc=w_enc, W_dec=w_dec, b_enc=b_enc, b_dec=b_dec,
         threshold=thr)
record("gemma_scope_npz", (w_enc, w_dec, b_enc, b_dec, thr))

# Llama Scope.
NORM_IN, THETA = 2.5, 0.4
F = np.sqrt(D) / NORM_IN


def llama_folded(p):
    w_enc, w_dec, b_enc, b_dec, _ = p
    return (w_enc * F, w_dec / F, b_enc, b_dec / F, np.full(N, THETA * F, np.float32))


w_enc, w_dec, b_enc, b_dec, thr = first_clear(201, llama_folded)
d = os.path.join(OUT, "llama_scope")
os.makedirs(os.path.join(d, "checkpoints"), exist_ok=True)
save_file(
    {"encoder.weight": np.ascontiguousarray(w_enc.T), "decoder.weight": np.ascontiguousarray(w_dec.T),
     "encoder.bias": b_enc, "decoder.bias": b_dec},
    os.path.join(d, "checkpoints", "final.safetensors"),
    metadata=PRODUCER,
)
with open(os.path.join(d, "hyperparams.json"), "w") as f:
    json.dump({"d_model": D, "d_sae": N, "act_fn": "jumprelu", "jump_relu_threshold": THETA,
               "dataset_average_activation_norm": {"in": NORM_IN, "out": NORM_IN},
               "hook_point_in": "blocks.15.hook_resid_post",
               "hook_point_out": "blocks.15.hook_resid_post"}, f, indent=2)
record("llama_scope", llama_folded((w_enc, w_dec, b_enc, b_dec, thr)))

save_file(expected, os.path.join(OUT, "expected.safetensors"), metadata=PRODUCER)
