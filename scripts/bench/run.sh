#!/usr/bin/env bash
# engram vs transformers on the same machine, same weights (SmolLM2-135M-Instruct dequantized to
# f32), batch 8 × 128: forward, forward + capture of every resid_post and pattern, load time,
# peak RSS. Prints both JSON lines and the ratios. Needs scripts/fetch-models.sh and a Python
# with torch + transformers + gguf (PYTHON=/path/to/python; default /root/.venvs/ref/bin/python).
# Run on a quiet machine: both sides use every core.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-/root/.venvs/ref/bin/python}"
B="${B:-8}"; T="${T:-128}"; R="${R:-3}"
cargo build --release --example bench_forward >/dev/null
E=$(./target/release/examples/bench_forward smollm2 "$B" "$T" "$R")
P=$("$PY" scripts/bench/reference.py "$HOME/.cache/engram/models/smollm2-135m-instruct.gguf" "$B" "$T" "$R" 2>/dev/null | tail -n 1)
echo "engram:       $E"
echo "transformers: $P"
python3 - "$E" "$P" <<'PY'
import json, sys
e, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"forward            {e['forward_tok_s']:8.0f} tok/s vs {p['forward_tok_s']:8.0f}  ratio {e['forward_tok_s']/p['forward_tok_s']:.2f}x")
print(f"forward + capture  {e['capture_tok_s']:8.0f} tok/s vs {p['capture_tok_s']:8.0f}  ratio {e['capture_tok_s']/p['capture_tok_s']:.2f}x")
print(f"load               {e['load_s']:8.2f} s     vs {p['load_s']:8.2f}  ratio {p['load_s']/e['load_s']:.1f}x faster")
print(f"peak RSS           {e['peak_rss_mb']:8.0f} MB    vs {p['peak_rss_mb']:8.0f}")
print(f"engram GFLOP/s     {e['forward_gflop_s']:8.1f} (f32 sgemm ceiling here ~168 GFLOP/s with 2 threads)")
print(f"hook overhead      capture of hook_embed only: {100*(e['embed_capture_s']/e['forward_s']-1):+.1f}% vs no hooks")
PY
