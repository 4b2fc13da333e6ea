#!/usr/bin/env bash
# Issue 23's scale benchmark: engram and transformers on the same random checkpoint of a real
# shape (examples/random_checkpoint.rs; bf16 safetensors, written to $CKPT_ROOT/SHAPE if
# missing), measured in one run:
#   load, RSS after the load, forward of B x T (8 x 128) without hooks, forward of CB x CT
#   (4 x 512) capturing every hook_resid_post, peak RSS  (examples/bench_scale.rs,
#   scripts/bench/scale_reference.py);
#   greedy generation: prefill of a 16-token prompt, NEW decode steps through the KV cache,
#   and the memory read bandwidth that bounds decode  (examples/bench_generate.rs,
#   scripts/bench/mapped_reference.py).
# engram runs mapped bf16 (`--matmul bf16`: the weights where they lie) and f32; transformers
# runs float32 and bfloat16 (REF_BF16_CAPTURE=0 skips torch's bf16 capture, minutes on CPUs
# without AVX512-BF16). Ratios are printed at the end; the host's CPU and flags first.
#
#   scripts/bench/scale.sh [SHAPE]      # SHAPE: llama-3.2-1b (default), llama-3.2-3b, gemma-2-2b, llama-3-8b
#   FORWARD=0 scripts/bench/scale.sh llama-3.2-3b   # load, RSS and generation only
#   HEADS=1 scripts/bench/scale.sh                  # also the heads probe vs heads_reference.py
#
# Needs a Python with torch + transformers (PYTHON=...). Run on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
SHAPE="${1:-llama-3.2-1b}"
PY="${PYTHON:-python3}"
THREADS="${THREADS:-$(nproc)}"; NEW="${NEW:-16}"; FORWARD="${FORWARD:-1}"
REF_F32="${REF_F32:-1}"; REF_BF16_CAPTURE="${REF_BF16_CAPTURE:-0}"; ENGRAM_F32="${ENGRAM_F32:-1}"
B="${B:-8}"; T="${T:-128}"; CB="${CB:-4}"; CT="${CT:-512}"
DIR="${CKPT_ROOT:-/tmp/engram-ckpt}/$SHAPE"
export RAYON_NUM_THREADS="$THREADS" THREADS
cargo build --release --example bench_scale --example bench_generate --example random_checkpoint >/dev/null 2>&1
[ -f "$DIR/config.json" ] || ./target/release/examples/random_checkpoint --shape "$SHAPE" --out "$DIR"
echo "host: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; flags: $(grep -o -w -E 'avx2|fma|f16c|avx512f|avx512_bf16|amx_tile|asimd' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "checkpoint: $DIR ($(du -sh "$DIR" | cut -f1))"
OUT=$(mktemp -d); trap 'rm -rf "$OUT"' EXIT
run() { # NAME COMMAND...: one JSON line into $OUT/NAME.json, echoed
  "${@:2}" 2>/dev/null | tail -n 1 > "$OUT/$1.json" || echo '{}' > "$OUT/$1.json"
  echo "$1: $(cat "$OUT/$1.json")"
}
run gen_mapped env MATMUL=bf16 ./target/release/examples/bench_generate "$DIR" 16 "$NEW"
run gen_ref_bf16 env DTYPE=bf16 "$PY" scripts/bench/mapped_reference.py "$DIR" 1 8 16 "$NEW"
if [ "$FORWARD" = 1 ]; then
  run fwd_mapped env MATMUL=bf16 ./target/release/examples/bench_scale "$DIR" "$B" "$T" "$CB" "$CT"
  [ "$ENGRAM_F32" = 1 ] && run fwd_f32 env DTYPE=f32 ./target/release/examples/bench_scale "$DIR" "$B" "$T" "$CB" "$CT"
  [ "$REF_F32" = 1 ] && run fwd_ref_f32 env DTYPE=f32 "$PY" scripts/bench/scale_reference.py "$DIR" "$B" "$T" "$CB" "$CT"
  run fwd_ref_bf16 env DTYPE=bf16 CAPTURE="$REF_BF16_CAPTURE" "$PY" scripts/bench/scale_reference.py "$DIR" "$B" "$T" "$CB" "$CT"
fi
if [ "${HEADS:-0}" = 1 ]; then # the heads probe end to end, same work and CMR table
  TABLE=notebooks-data/icl-cmr/cmr_crp_avg_20_11.npy
  FMT='{"wall_s": %e, "cpu_s": %U, "sys_s": %S, "peak_rss_kb": %M}'
  /usr/bin/time -f "$FMT" -o "$OUT/heads_mapped.json" ./target/release/engram --quiet heads \
    --model "$DIR" --matmul bf16 --cmr-table "$TABLE" --out "$OUT/heads_mapped" >/dev/null
  /usr/bin/time -f "$FMT" -o "$OUT/heads_ref_f32.json" "$PY" scripts/bench/heads_reference.py \
    "$DIR" "$TABLE" >/dev/null 2>&1 || echo '{}' > "$OUT/heads_ref_f32.json"
  echo "heads_mapped: $(cat "$OUT/heads_mapped.json")"; echo "heads_ref_f32: $(cat "$OUT/heads_ref_f32.json")"
fi
python3 - "$OUT" <<'PY'
import json, os, sys
d = sys.argv[1]
j = {f[:-5]: json.load(open(os.path.join(d, f))) for f in os.listdir(d) if f.endswith(".json")}
def ratio(a, b, key, inverse=False):
    x, y = j.get(a, {}).get(key), j.get(b, {}).get(key)
    if not x or not y:
        return "–"
    return f"{(y / x if inverse else x / y):.2f}×"
g = j.get("gen_mapped", {})
print(f"decode: engram mapped {g.get('decode_tok_s', float('nan')):.2f} tok/s, transformers bf16 "
      f"{j.get('gen_ref_bf16', {}).get('decode_tok_s', float('nan')):.2f} ({ratio('gen_mapped', 'gen_ref_bf16', 'decode_tok_s')}); "
      f"read bandwidth {g.get('read_bandwidth_gb_s', float('nan')):.1f} GB/s over {g.get('weight_gb_per_token', float('nan')):.2f} GB "
      f"of weights per token bounds decode at {g.get('decode_bound_tok_s', float('nan')):.2f} tok/s")
print(f"load: mapped {g.get('load_s', float('nan')):.1f} s vs transformers bf16 {j.get('gen_ref_bf16', {}).get('load_s', float('nan')):.1f} s; "
      f"peak RSS {g.get('peak_rss_mb', float('nan')):.0f} vs {j.get('gen_ref_bf16', {}).get('peak_rss_mb', float('nan')):.0f} MB")
if "heads_mapped" in j and "heads_ref_f32" in j:
    print(f"heads probe: engram mapped {j['heads_mapped'].get('wall_s')} s, transformers f32 "
          f"{j['heads_ref_f32'].get('wall_s')} s ({ratio('heads_mapped', 'heads_ref_f32', 'wall_s', True)})")
for e, r in [("fwd_mapped", "fwd_ref_bf16"), ("fwd_mapped", "fwd_ref_f32"), ("fwd_f32", "fwd_ref_f32")]:
    if e in j and r in j:
        print(f"{e} vs {r}: forward {ratio(e, r, 'forward_tok_s')}, capture {ratio(e, r, 'capture_tok_s')}, "
              f"peak RSS {ratio(e, r, 'peak_rss_mb')}")
PY
