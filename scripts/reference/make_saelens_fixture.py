#!/usr/bin/env python3
"""A tiny JumpReLU SAE written by SAELens itself, for engram's SAELens-layout loader test.

Run by hand (NOT by CI), from the repository root:

    python3 -m pip install sae-lens==6.54.12   # pulls torch, transformer_lens, ...
    python3 scripts/reference/make_saelens_fixture.py

It builds `sae_lens.JumpReLUSAE` (d_in 16, d_sae 48, apply_b_dec_to_input = True, so the
b_dec-subtraction path is exercised) with seeded random weights and per-latent thresholds
spread so that roughly half of the pre-activations clear them, saves it with SAELens's own
`save_model` into tests/fixtures/saelens_jumprelu/ (cfg.json + sae_weights.safetensors, exactly
as SAELens writes them), then loads it back with `SAE.load_from_disk` and writes what SAELens
computes for 32 random inputs into expected.safetensors:

  x            [32, 16]   inputs (float32)
  feature_acts [32, 48]   sae.encode(x)
  sae_out      [32, 16]   sae.decode(sae.encode(x))

With `--check-engram DIR` it instead loads an SAE that engram saved (DIR/cfg.json +
DIR/sae_weights.safetensors) with SAELens and prints its architecture and shapes, to check the
other direction by hand.

The committed files were produced with sae-lens 6.54.12 and torch 2.15.0 (CPU).
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import save_file

import sae_lens
from sae_lens import SAE, JumpReLUSAE, JumpReLUSAEConfig

ap = argparse.ArgumentParser()
ap.add_argument("--out", default="tests/fixtures/saelens_jumprelu")
ap.add_argument("--check-engram", default=None)
args = ap.parse_args()

if args.check_engram:
    sae = SAE.load_from_disk(args.check_engram, device="cpu")
    print(type(sae).__name__, sae.cfg.architecture(), tuple(sae.W_enc.shape), tuple(sae.W_dec.shape))
    print("metadata:", sae.cfg.metadata)
    x = torch.randn(4, sae.cfg.d_in)
    print("L0 of 4 random inputs:", (sae.encode(x) > 0).sum(-1).tolist())
    sys.exit(0)

torch.manual_seed(20251122)
d_in, d_sae, n = 16, 48, 32
cfg = JumpReLUSAEConfig(
    d_in=d_in,
    d_sae=d_sae,
    dtype="float32",
    device="cpu",
    apply_b_dec_to_input=True,
    normalize_activations="none",
)
cfg.metadata.hook_name = "blocks.1.hook_resid_post"
cfg.metadata.model_name = "tiny-llama-fixture"
cfg.metadata.context_size = 16
cfg.metadata.prepend_bos = True
cfg.metadata.sae_lens_version = sae_lens.__version__
sae = JumpReLUSAE(cfg)
with torch.no_grad():
    sae.W_enc.copy_(torch.randn(d_in, d_sae) / d_in**0.5)
    sae.W_dec.copy_(torch.randn(d_sae, d_in) / d_in**0.5)
    sae.b_enc.copy_(0.1 * torch.randn(d_sae))
    sae.b_dec.copy_(0.2 * torch.randn(d_in))
    sae.threshold.copy_(torch.rand(d_sae) * 1.2)

os.makedirs(args.out, exist_ok=True)
sae.save_model(args.out)

back = SAE.load_from_disk(args.out, device="cpu")
x = torch.randn(n, d_in)
with torch.no_grad():
    z = back.encode(x)
    out = back.decode(z)
save_file(
    {"x": x.contiguous(), "feature_acts": z.contiguous(), "sae_out": out.contiguous()},
    os.path.join(args.out, "expected.safetensors"),
)
l0 = (z > 0).float().sum(-1)
print(f"wrote {args.out}: L0 mean {l0.mean():.1f} (min {l0.min():.0f}, max {l0.max():.0f}); "
      f"cfg keys {sorted(json.load(open(os.path.join(args.out, 'cfg.json'))))}")
