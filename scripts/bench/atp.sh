#!/usr/bin/env bash
# AtP of every resid_pre (layer × position), head z and MLP neuron on IOI pairs: engram
# (examples/bench_atp) vs transformers + torch autograd (scripts/bench/atp_reference.py), same
# weights (SmolLM2-135M-Instruct GGUF → f32), same token ids, measured in one run; also how far
# pair 0's resid AtP grids differ (max |Δ| / max |AtP|).
#
#   scripts/bench/atp.sh            # PYTHON=python3 N=4 R=3 THREADS=$(nproc)
#
# Needs scripts/fetch-models.sh and a Python with torch + transformers + gguf.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"; N="${N:-4}"; R="${R:-3}"
THREADS="${THREADS:-$(nproc)}"; export RAYON_NUM_THREADS="$THREADS" THREADS
GGUF="$HOME/.cache/engram/models/smollm2-135m-instruct.gguf"
cargo build --release --example bench_atp >/dev/null 2>&1
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
grep -m1 "model name" /proc/cpuinfo
grep -m1 flags /proc/cpuinfo | grep -o 'avx[0-9a-z_]*\|amx[a-z_0-9]*\|fma\|neon' | sort -u | tr '\n' ' '; echo
./target/release/examples/bench_atp smollm2 notebooks-data/ioi/pairs.jsonl "$N" "$R" > "$TMP/e.json"
"$PY" scripts/bench/atp_reference.py "$GGUF" "$TMP/e.json" "$R" 2>/dev/null | tail -n 1 > "$TMP/p.json"
python3 - "$TMP" <<'PY'
import json, sys
d = sys.argv[1]
e, p = json.load(open(f"{d}/e.json")), json.load(open(f"{d}/p.json"))
print(f"pairs {len(e['seconds_per_pair'])}, threads engram {e['threads']} / torch {p['threads']} ({p['torch']})")
for i, (a, b) in enumerate(zip(e["seconds_per_pair"], p["seconds_per_pair"])):
    print(f"pair {i} ({len(e['pairs'][i]['clean'])} tokens): engram {a:.3f} s, torch {b:.3f} s, ratio {b / a:.2f}x")
print(f"total: engram {e['total_s']:.3f} s, torch {p['total_s']:.3f} s, speed-up {p['total_s'] / e['total_s']:.2f}x")
ge = [x for r in e["resid_atp_pair0"] for x in r]
gp = [x for r in p["resid_atp_pair0"] for x in r]
worst = max(abs(a - b) for a, b in zip(ge, gp))
print(f"pair 0 resid AtP: max |engram − torch| = {worst:.3g}, max |AtP| = {max(map(abs, gp)):.3g}, "
      f"relative {worst / max(map(abs, gp)):.2e}")
PY
