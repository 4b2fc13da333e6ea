#!/usr/bin/env python3
"""A tiny BatchTopK SAE trained and saved by SAELens itself, for engram's loader test.

Run by hand (NOT by CI), from the repository root:

    python3 -m pip install sae-lens==6.54.12   # pulls torch, transformer_lens, ...
    python3 scripts/reference/make_saelens_batchtopk_fixture.py

It builds `sae_lens.BatchTopKTrainingSAE` (d_in 16, d_sae 48, k 4; SAELens's defaults:
rescale_acts_by_decoder_norm, apply_b_dec_to_input, decoder init norm 0.1), trains it for 200
steps with SAELens's own `training_forward_pass` (the batch-level top-k, the AuxK loss, the
EMA of the smallest kept activation that becomes its threshold) and Adam on a synthetic sparse
dictionary, then saves the inference model with `save_inference_model` into
tests/fixtures/saelens_batchtopk/ (SAELens turns it into a JumpReLU SAE with one global
threshold and folds the decoder norms), loads it back with `SAE.load_from_disk` and writes
what SAELens computes for 32 inputs from the same distribution into expected.safetensors:

  x            [32, 16]   inputs (float32)
  feature_acts [32, 48]   sae.encode(x)
  sae_out      [32, 16]   sae.decode(sae.encode(x))

The committed files were produced with sae-lens 6.54.12 and torch 2.15.0 (CPU).
"""
import json
import os

import torch
from safetensors.torch import save_file

import sae_lens
from sae_lens import SAE
from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput

out_dir = "tests/fixtures/saelens_batchtopk"
torch.manual_seed(20261203)
d_in, d_sae, k, n_atoms = 16, 48, 4, 24
atoms = torch.nn.functional.normalize(torch.randn(n_atoms, d_in), dim=-1)


def batch(n):
    on = (torch.rand(n, n_atoms) < 3.0 / n_atoms).float()
    mag = 1.0 + torch.rand(n, n_atoms)
    return (on * mag) @ atoms + 0.01 * torch.randn(n, d_in)


cfg = BatchTopKTrainingSAEConfig(d_in=d_in, d_sae=d_sae, k=k, dtype="float32", device="cpu")
cfg.metadata.hook_name = "blocks.1.hook_resid_post"
cfg.metadata.model_name = "tiny-llama-fixture"
cfg.metadata.context_size = 16
cfg.metadata.prepend_bos = True
cfg.metadata.sae_lens_version = sae_lens.__version__
sae = BatchTopKTrainingSAE(cfg)
opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
for step in range(200):
    x = batch(256)
    out = sae.training_forward_pass(
        TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=None, n_training_steps=step,
                       is_logging_step=False)
    )
    opt.zero_grad()
    out.loss.backward()
    opt.step()

os.makedirs(out_dir, exist_ok=True)
sae.save_inference_model(out_dir)
back = SAE.load_from_disk(out_dir, device="cpu")
x = batch(32)
with torch.no_grad():
    z = back.encode(x)
    y = back.decode(z)
save_file(
    {"x": x.contiguous(), "feature_acts": z.contiguous(), "sae_out": y.contiguous()},
    os.path.join(out_dir, "expected.safetensors"),
)
l0 = (z > 0).float().sum(-1)
cfg_out = json.load(open(os.path.join(out_dir, "cfg.json")))
print(
    f"wrote {out_dir}: {type(back).__name__} architecture {cfg_out.get('architecture')}, "
    f"threshold {float(sae.topk_threshold):.4f}, L0 mean {l0.mean():.2f}, "
    f"FVU {float(((y - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()):.3f}"
)
