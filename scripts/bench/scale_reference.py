#!/usr/bin/env python3
"""transformers counterpart of examples/bench_scale.rs (issue 23): a Hugging Face folder in
bfloat16 or float32 (DTYPE=bf16|f32): load time, RSS after the load, one forward of B x T random
tokens, one forward of CB x CT capturing every layer's hidden states (output_hidden_states, as
engram's hook_resid_post), peak RSS, CPU seconds; after a 1 x 16 warm-up. One JSON object.
CAPTURE=0 skips the capture (torch in bfloat16 without AVX512-BF16 takes minutes for it).

    DTYPE=bf16 THREADS=2 python3 scripts/bench/scale_reference.py DIR [B T CB CT]
"""
import json, os, resource, sys, time

import torch
from transformers import AutoModelForCausalLM


def rss_mb(key="VmRSS:"):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return float("nan")


path = sys.argv[1]
b, t, cb, ct = (int(sys.argv[i]) if len(sys.argv) > i else d for i, d in ((2, 8), (3, 128), (4, 4), (5, 512)))
torch.set_num_threads(int(os.environ.get("THREADS", os.cpu_count())))
dtype = torch.float32 if os.environ.get("DTYPE") == "f32" else torch.bfloat16
t0 = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
model.eval()
load_s = time.perf_counter() - t0
rss_load = rss_mb()
vocab = model.config.vocab_size
g = torch.Generator().manual_seed(0)


def timed(b, t, **kw):
    ids = torch.randint(100, vocab, (b, t), generator=g)
    with torch.inference_mode():
        c0, t0 = time.process_time(), time.perf_counter()
        out = model(ids, **kw)
        return time.perf_counter() - t0, time.process_time() - c0, out


timed(1, 16)
fwd_s, fwd_cpu, _ = timed(b, t)
res = {
    "model": path, "dtype": str(dtype), "threads": torch.get_num_threads(), "torch": torch.__version__,
    "load_s": load_s, "rss_after_load_mb": rss_load,
    "batch": [b, t], "forward_s": fwd_s, "forward_tok_s": b * t / fwd_s, "forward_cpu_s": fwd_cpu,
}
if os.environ.get("CAPTURE", "1") != "0":
    cap_s, cap_cpu, out = timed(cb, ct, output_hidden_states=True)
    res.update({"capture_batch": [cb, ct], "capture_s": cap_s, "capture_tok_s": cb * ct / cap_s,
                "capture_cpu_s": cap_cpu})
    del out
res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(res))
