#!/usr/bin/env python3
"""Python reference for engram's forward benchmark: transformers (eager attention) on the same
GGUF weights, same batch shape, torch threads = cores. Prints one JSON object.

    /root/.venvs/ref/bin/python scripts/bench/reference.py [GGUF] [BATCH] [SEQ] [REPEATS]
"""
import json, os, resource, sys, time

import torch
from transformers import AutoModelForCausalLM

path = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/engram/models/smollm2-135m-instruct.gguf")
b = int(sys.argv[2]) if len(sys.argv) > 2 else 8
t = int(sys.argv[3]) if len(sys.argv) > 3 else 128
reps = int(sys.argv[4]) if len(sys.argv) > 4 else 3
torch.set_num_threads(int(os.environ.get("THREADS", os.cpu_count())))

t0 = time.perf_counter()
# DTYPE=bf16: the whole model in bfloat16 (torch's fast CPU path on AVX512-BF16 machines).
dtype = torch.bfloat16 if os.environ.get("DTYPE") == "bf16" else torch.float32
model = AutoModelForCausalLM.from_pretrained(
    os.path.dirname(path), gguf_file=os.path.basename(path), dtype=dtype,
    attn_implementation="eager")
model.eval()
load_s = time.perf_counter() - t0
vocab = model.config.vocab_size
g = torch.Generator().manual_seed(0)
ids = torch.randint(100, vocab, (b, t), generator=g)


cpu_s = {}


def timed(name, **kw):
    """Best wall time of `reps` runs; mean CPU seconds per run (robust on a busy machine)."""
    with torch.inference_mode():
        model(ids, **kw)  # warm-up
        best = float("inf")
        c0 = time.process_time()
        for _ in range(reps):
            t0 = time.perf_counter()
            model(ids, **kw)
            best = min(best, time.perf_counter() - t0)
        cpu_s[name] = (time.process_time() - c0) / reps
    return best


plain = timed("forward")
capture = timed("capture", output_attentions=True, output_hidden_states=True)
tokens = b * t
print(json.dumps({
    "model": os.path.basename(path), "dtype": str(dtype), "batch": b, "seq": t, "threads": torch.get_num_threads(),
    "torch": torch.__version__, "load_s": load_s,
    "forward_s": plain, "forward_tok_s": tokens / plain,
    "capture_s": capture, "capture_tok_s": tokens / capture,
    "cpu_s": cpu_s,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
