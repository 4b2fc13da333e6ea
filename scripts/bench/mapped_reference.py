#!/usr/bin/env python3
"""transformers reference for the mapped bf16 weights (docs/performance.md, issue 23): a Hugging
Face folder (e.g. one written by examples/random_checkpoint.rs) in bfloat16 or float32: load
time, one forward of BATCH x SEQ random tokens, greedy decode of NEW tokens after a PROMPT-token
prompt, peak RSS. Prints one JSON object.

    DTYPE=bf16|f32 python3 scripts/bench/mapped_reference.py DIR [BATCH] [SEQ] [PROMPT] [NEW]
"""
import json, os, resource, sys, time

import torch
from transformers import AutoModelForCausalLM

path = sys.argv[1]
b, t, p, new = (int(sys.argv[i]) if len(sys.argv) > i else d for i, d in ((2, 2), (3, 128), (4, 16), (5, 16)))
torch.set_num_threads(int(os.environ.get("THREADS", os.cpu_count())))
dtype = torch.float32 if os.environ.get("DTYPE") == "f32" else torch.bfloat16
t0 = time.perf_counter()
model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
model.eval()
load_s = time.perf_counter() - t0
vocab = model.config.vocab_size
g = torch.Generator().manual_seed(0)
with torch.inference_mode():
    ids = torch.randint(100, vocab, (b, t), generator=g)
    t1 = time.perf_counter()
    model(ids)
    forward_s = time.perf_counter() - t1
    prompt = torch.tensor([[(i * 7919 + 13) % vocab for i in range(p)]])
    t2 = time.perf_counter()
    out = model(prompt, use_cache=True)
    prefill_s = time.perf_counter() - t2
    past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
    t3 = time.perf_counter()
    for _ in range(new):
        out = model(nxt, past_key_values=past, use_cache=True)
        past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
    decode_s = time.perf_counter() - t3
print(json.dumps({
    "model": path, "dtype": str(dtype), "threads": torch.get_num_threads(), "load_s": load_s,
    "batch": b, "seq": t, "forward_s": forward_s, "forward_tok_s": b * t / forward_s,
    "prefill_s": prefill_s, "new": new, "decode_s": decode_s, "decode_tok_s": new / decode_s,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
