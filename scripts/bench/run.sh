#!/usr/bin/env bash
# engram vs the Python stack (torch + transformers, eager attention) on the same machine and the
# same weights (SmolLM2-135M-Instruct dequantized to f32), measured in one run:
#   1. forward, no capture (batch B × T)      2. forward capturing every resid_post + pattern
#   3. model load (GGUF → f32)                4. peak RSS
#   5. the heads probe end-to-end (`engram heads` vs scripts/bench/heads_reference.py, same work)
#   plus the bf16 path: engram --matmul bf16 (bf16 products, f32 elsewhere) vs torch in bfloat16
# plus the machine's measured f32 FMA peak and candle's matmul GFLOP/s on the MLP shape.
# SAE training throughput (item 6) is scripts/bench/sae.sh.
#
#   scripts/bench/run.sh                   # PYTHON=python3 B=8 T=128 R=3 THREADS=$(nproc)
#   HEADS=0 scripts/bench/run.sh           # skip the (slow) heads comparison
#
# Needs scripts/fetch-models.sh and a Python with torch + transformers + gguf + numpy. Run it on
# a quiet machine: both sides use every core; CPU seconds are printed too (robust to contention).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
B="${B:-8}"; T="${T:-128}"; R="${R:-3}"; HEADS="${HEADS:-1}"
THREADS="${THREADS:-$(nproc)}"
export RAYON_NUM_THREADS="$THREADS" THREADS
GGUF="$HOME/.cache/engram/models/smollm2-135m-instruct.gguf"
cargo build --release --example bench_forward --bin engram >/dev/null 2>&1
E=$(./target/release/examples/bench_forward smollm2 "$B" "$T" "$R")
P=$("$PY" scripts/bench/reference.py "$GGUF" "$B" "$T" "$R" 2>/dev/null | tail -n 1)
# bf16: engram's bf16 matmul (f32 elsewhere) vs torch with the whole model in bfloat16.
E16=$(MATMUL=bf16 ./target/release/examples/bench_forward smollm2 "$B" "$T" "$R")
P16=$(DTYPE=bf16 "$PY" scripts/bench/reference.py "$GGUF" "$B" "$T" "$R" 2>/dev/null | tail -n 1)
echo "engram:       $E"
echo "transformers: $P"
echo "engram bf16:  $E16"
echo "torch bf16:   $P16"
H_E=""; H_P=""
if [ "$HEADS" = 1 ]; then
  TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
  TABLE=notebooks-data/icl-cmr/cmr_crp_avg_20_11.npy
  /usr/bin/time -f '{"wall_s": %e, "cpu_s": %U, "sys_s": %S, "peak_rss_mb": %M}' -o "$TMP/e.json" \
    ./target/release/engram --quiet heads --model smollm2 --cmr-table "$TABLE" --out "$TMP/run" >/dev/null
  /usr/bin/time -f '{"wall_s": %e, "cpu_s": %U, "sys_s": %S, "peak_rss_mb": %M}' -o "$TMP/p.json" \
    "$PY" scripts/bench/heads_reference.py "$GGUF" "$TABLE" >/dev/null 2>&1
  H_E=$(tail -n 1 "$TMP/e.json"); H_P=$(tail -n 1 "$TMP/p.json")
  echo "heads engram: $H_E"
  echo "heads python: $H_P"
fi
python3 - "$E" "$P" "$H_E" "$H_P" "$E16" "$P16" <<'PY'
import json, sys
e, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
e16, p16 = json.loads(sys.argv[5]), json.loads(sys.argv[6])
def row(name, a, b, unit, fmt="8.0f"):
    print(f"{name:<20}{a:{fmt}} {unit} vs {b:{fmt}}  ratio {a/b:.2f}x")
row("forward tok/s", e["forward_tok_s"], p["forward_tok_s"], "")
row("capture tok/s", e["capture_tok_s"], p["capture_tok_s"], "")
for k in ("forward", "capture"):
    print(f"{k+' CPU s/run':<20}{e['cpu_s'][k]:8.2f}   vs {p['cpu_s'][k]:8.2f}  ratio {p['cpu_s'][k]/e['cpu_s'][k]:.2f}x less CPU")
print(f"{'load s':<20}{e['load_s']:8.2f}   vs {p['load_s']:8.2f}  {p['load_s']/e['load_s']:.1f}x faster")
print(f"{'peak RSS MB':<20}{e['peak_rss_mb']:8.0f}   vs {p['peak_rss_mb']:8.0f}  (after load {e['rss_after_load_mb']:.0f} MB)")
print(f"{'FMA peak GFLOP/s':<20}{e['fma_peak_gflop_s']:8.1f}   ({e['threads']} threads, measured)")
print(f"{'matmul GFLOP/s':<20}{e['matmul_gflop_s']:8.1f}   {100*e['matmul_gflop_s']/e['fma_peak_gflop_s']:.0f}% of peak, shape {e['matmul_shape']}")
print(f"{'forward GFLOP/s':<20}{e['forward_gflop_s']:8.1f}   {100*e['forward_gflop_s']/e['fma_peak_gflop_s']:.0f}% of peak")
for k in ("forward", "capture"):
    a, b, c = e16[k + "_tok_s"], p16[k + "_tok_s"], p[k + "_tok_s"]
    print(f"{k+' bf16 tok/s':<20}{a:8.0f}   vs {b:8.0f}  ratio {a/b:.2f}x vs torch bf16, {a/c:.2f}x vs torch f32")
print(f"{'bf16 peak GFLOP/s':<20}{e16['bf16_peak_gflop_s']:8.1f}   (vdpbf16ps, measured)")
print(f"{'bf16 matmul GFLOP/s':<20}{e16['matmul_bf16_gflop_s']:8.1f}   {100*e16['matmul_bf16_gflop_s']/e16['bf16_peak_gflop_s']:.0f}% of bf16 peak")
print(f"{'bf16 forward GFLOP/s':<20}{e16['forward_gflop_s']:8.1f}   {100*e16['forward_gflop_s']/e16['bf16_peak_gflop_s']:.0f}% of bf16 peak; peak RSS {e16['peak_rss_mb']:.0f} MB vs {p16['peak_rss_mb']:.0f}")
print(f"{'hook overhead':<20}{100*(e['embed_capture_s']/e['forward_s']-1):+7.1f}%   (capturing hook_embed only vs no hooks)")
if sys.argv[3]:
    he, hp = json.loads(sys.argv[3]), json.loads(sys.argv[4])
    print(f"{'heads probe wall s':<20}{he['wall_s']:8.1f}   vs {hp['wall_s']:8.1f}  {hp['wall_s']/he['wall_s']:.1f}x faster")
    ce, cp = he["cpu_s"] + he["sys_s"], hp["cpu_s"] + hp["sys_s"]
    print(f"{'heads probe CPU s':<20}{ce:8.1f}   vs {cp:8.1f}  {cp/ce:.1f}x less CPU")
    print(f"{'heads peak RSS MB':<20}{he['peak_rss_mb']/1024:8.0f}   vs {hp['peak_rss_mb']/1024:8.0f}")
PY
