#!/usr/bin/env bash
# engram vs the Python stack (torch + transformers, eager attention) on the same machine and the
# same weights (SmolLM2-135M-Instruct dequantized to f32), measured in one run:
#   1. forward, no capture (batch B × T)      2. forward capturing every resid_post + pattern
#   3. model load (GGUF → f32)                4. peak RSS
#   5. the heads probe end-to-end (`engram heads` vs scripts/bench/heads_reference.py, same work)
# plus the bf16 path (engram --matmul bf16: bf16 products, f32 elsewhere, vs torch in bfloat16),
# the machine's measured f32 FMA and bf16 dot-product peaks, and both matmuls' GFLOP/s on the
# MLP shape. SAE training throughput (item 6) is scripts/bench/sae.sh.
#
# The four forward configurations run interleaved for ROUNDS rounds (each: best of R forwards);
# ratios are per round, reported as the median and range over rounds — single runs on a shared
# 2-core VM move by ±15%. CPU seconds per forward are printed too.
#
#   scripts/bench/run.sh                   # PYTHON=python3 B=8 T=128 R=3 ROUNDS=3 THREADS=$(nproc)
#   HEADS=0 scripts/bench/run.sh           # skip the (slow) heads comparison
#
# Needs scripts/fetch-models.sh and a Python with torch + transformers + gguf + numpy.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"
B="${B:-8}"; T="${T:-128}"; R="${R:-3}"; HEADS="${HEADS:-1}"; ROUNDS="${ROUNDS:-3}"
THREADS="${THREADS:-$(nproc)}"
export RAYON_NUM_THREADS="$THREADS" THREADS
GGUF="$HOME/.cache/engram/models/smollm2-135m-instruct.gguf"
cargo build --release --example bench_forward --bin engram >/dev/null 2>&1
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
for i in $(seq "$ROUNDS"); do
  ./target/release/examples/bench_forward smollm2 "$B" "$T" "$R" | tee -a "$TMP/e.jsonl" | sed 's/^/engram f32:   /'
  "$PY" scripts/bench/reference.py "$GGUF" "$B" "$T" "$R" 2>/dev/null | tail -n 1 | tee -a "$TMP/p.jsonl" | sed 's/^/torch f32:    /'
  MATMUL=bf16 ./target/release/examples/bench_forward smollm2 "$B" "$T" "$R" | tee -a "$TMP/e16.jsonl" | sed 's/^/engram bf16:  /'
  DTYPE=bf16 "$PY" scripts/bench/reference.py "$GGUF" "$B" "$T" "$R" 2>/dev/null | tail -n 1 | tee -a "$TMP/p16.jsonl" | sed 's/^/torch bf16:   /'
done
echo '{}' > "$TMP/he.json"; echo '{}' > "$TMP/hp.json"; echo '{}' > "$TMP/he16.json"
if [ "$HEADS" = 1 ]; then
  TABLE=notebooks-data/icl-cmr/cmr_crp_avg_20_11.npy
  FMT='{"wall_s": %e, "cpu_s": %U, "sys_s": %S, "peak_rss_mb": %M}'
  /usr/bin/time -f "$FMT" -o "$TMP/he.json" \
    ./target/release/engram --quiet heads --model smollm2 --cmr-table "$TABLE" --out "$TMP/run" >/dev/null
  /usr/bin/time -f "$FMT" -o "$TMP/hp.json" \
    "$PY" scripts/bench/heads_reference.py "$GGUF" "$TABLE" >/dev/null 2>&1
  /usr/bin/time -f "$FMT" -o "$TMP/he16.json" \
    ./target/release/engram --quiet heads --model smollm2 --matmul bf16 --cmr-table "$TABLE" --out "$TMP/run16" >/dev/null
fi
python3 - "$TMP" <<'PY'
import json, statistics, sys
d = sys.argv[1]
load = lambda f: [json.loads(l) for l in open(f"{d}/{f}") if l.strip()]
e, p, e16, p16 = load("e.jsonl"), load("p.jsonl"), load("e16.jsonl"), load("p16.jsonl")
last = lambda f: json.loads(open(f"{d}/{f}").read().strip().splitlines()[-1])
med = statistics.median
def ratio(name, a, b, key, note=""):
    r = [x[key] / y[key] for x, y in zip(a, b)]
    print(f"{name:<24}{med(x[key] for x in a):8.0f} vs {med(y[key] for y in b):8.0f}   "
          f"ratio {med(r):.2f}x (rounds {min(r):.2f}–{max(r):.2f}){note}")
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"{cpu}; {len(e)} rounds, batch {e[0]['batch']} × {e[0]['seq']}, {e[0]['threads']} threads; medians")
ratio("forward tok/s (f32)", e, p, "forward_tok_s")
ratio("capture tok/s (f32)", e, p, "capture_tok_s")
for k in ("forward", "capture"):
    r = [y["cpu_s"][k] / x["cpu_s"][k] for x, y in zip(e, p)]
    print(f"{k+' CPU s (f32)':<24}{med(x['cpu_s'][k] for x in e):8.2f} vs {med(y['cpu_s'][k] for y in p):8.2f}   "
          f"{med(r):.2f}x less CPU (rounds {min(r):.2f}–{max(r):.2f})")
ratio("forward tok/s (bf16)", e16, p16, "forward_tok_s", " vs torch bf16")
ratio("capture tok/s (bf16)", e16, p16, "capture_tok_s", " vs torch bf16")
ratio("forward bf16 / torch f32", e16, p, "forward_tok_s")
ratio("capture bf16 / torch f32", e16, p, "capture_tok_s")
print(f"{'load s':<24}{med(x['load_s'] for x in e):8.2f} vs {med(y['load_s'] for y in p):8.2f}")
print(f"{'peak RSS MB (f32)':<24}{med(x['peak_rss_mb'] for x in e):8.0f} vs {med(y['peak_rss_mb'] for y in p):8.0f}"
      f"   (engram RSS right after load {med(x['rss_now_after_load_mb'] for x in e):.0f} MB)")
print(f"{'peak RSS MB (bf16)':<24}{med(x['peak_rss_mb'] for x in e16):8.0f} vs {med(y['peak_rss_mb'] for y in p16):8.0f}")
# A CPU without AVX512-BF16 has no bf16 dot peak (null): medians over the values present only.
def med_of(xs):
    xs = [x for x in xs if x is not None]
    return med(xs) if xs else None
fp, bp = med_of(x["fma_peak_gflop_s"] for x in e), med_of(x["bf16_peak_gflop_s"] for x in e16)
mm, mb = med_of(x["matmul_gflop_s"] for x in e), med_of(x["matmul_bf16_gflop_s"] for x in e16)
print(f"{'f32 FMA peak GFLOP/s':<24}{fp:8.1f}   matmul {mm:.1f} ({100*mm/fp:.0f}%), "
      f"forward {med(x['forward_gflop_s'] for x in e):.1f} ({100*med(x['forward_gflop_s'] for x in e)/fp:.0f}%)")
fb = med(x['forward_gflop_s'] for x in e16)
if bp is None or mb is None:
    print(f"{'bf16 dot peak GFLOP/s':<24}    none   (no AVX512-BF16 / AMX: --matmul bf16 runs the portable kernel"
          + (f", matmul {mb:.1f} GFLOP/s" if mb is not None else "") + ")")
elif e16[0].get("amx"):
    print(f"{'bf16 on AMX tiles':<24}matmul {mb:.1f} GFLOP/s ({mb/fp:.2f}x the f32 FMA peak), forward {fb:.1f}; "
          f"the vdpbf16ps peak ({bp:.1f}) is not its ceiling")
else:
    print(f"{'bf16 dot peak GFLOP/s':<24}{bp:8.1f}   matmul {mb:.1f} ({100*mb/bp:.0f}%), forward {fb:.1f} ({100*fb/bp:.0f}%)")
h = [100 * (x["embed_capture_s"] / x["forward_s"] - 1) for x in e]
print(f"{'hook overhead':<24}{med(h):+7.1f}%   (hook_embed only vs no hooks; rounds {min(h):+.1f}…{max(h):+.1f}%)")
he, hp, he16 = last("he.json"), last("hp.json"), last("he16.json")
if he:
    for name, x in (("heads probe (f32)", he), ("heads probe (bf16)", he16)):
        print(f"{name:<24}{x['wall_s']:8.1f} vs {hp['wall_s']:8.1f} s   {hp['wall_s']/x['wall_s']:.1f}x faster, "
              f"CPU {x['cpu_s']+x['sys_s']:.1f} vs {hp['cpu_s']+hp['sys_s']:.1f} s, "
              f"RSS {x['peak_rss_mb']/1024:.0f} vs {hp['peak_rss_mb']/1024:.0f} MB")
PY
