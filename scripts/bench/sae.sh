#!/usr/bin/env bash
# SAE training throughput: engram (`sae train`, hand-written backward on candle) vs SAELens
# itself (scripts/bench/saelens_reference.py: its training SAE classes and trainer step) and a
# plain PyTorch loop (scripts/bench/sae_reference.py, autograd; threshold/topk/relu only) on the
# same activations, same shapes, same machine, same thread count. Prints the JSON lines, the
# ratios and the CPU flags.
#
#   scripts/bench/sae.sh STORE_DIR        # a store from `engram sae collect`
#   KIND=batchtopk STEPS=100 B=1024 THREADS=2 PYTHON=python3 scripts/bench/sae.sh STORE_DIR
#
# Both count only the training step (batch already in memory). Run on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
STORE="${1:?usage: scripts/bench/sae.sh STORE_DIR}"
PY="${PYTHON:-python3}"
KIND="${KIND:-threshold}"; STEPS="${STEPS:-50}"; B="${B:-1024}"; THREADS="${THREADS:-$(nproc)}"
cargo build --release --bin engram >/dev/null 2>&1
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
RAYON_NUM_THREADS="$THREADS" ./target/release/engram --quiet sae train --store "$STORE" --kind "$KIND" \
  --steps "$STEPS" --batch-size "$B" --out "$TMP/sae" >/dev/null
S=$("$PY" scripts/bench/saelens_reference.py "$STORE" --kind "$KIND" --steps "$STEPS" --batch-size "$B" --threads "$THREADS" | tail -n 1)
case "$KIND" in threshold|topk|relu)
  P=$("$PY" scripts/bench/sae_reference.py "$STORE" --kind "$KIND" --steps "$STEPS" --batch-size "$B" --threads "$THREADS" | tail -n 1);;
  *) P="";;
esac
echo "host: $(lscpu | sed -n 's/^Model name: *//p'); flags: $(grep -o -w -E 'avx2|avx512f|avx512_bf16|amx_tile|neon|asimd' /proc/cpuinfo | sort -u | tr '\n' ' ')"
python3 - "$TMP/sae/train_report.json" "$S" "$P" <<'PY'
import json, sys
e = json.load(open(sys.argv[1]))
print(json.dumps({"impl": "engram", "kind": e["kind"], "d": e["d"], "dict_size": e["dict_size"],
                  "batch_size": e["batch_size"], "steps": e["steps"], "steps_per_s": e["steps_per_sec"]}))
for name, line in (("SAELens", sys.argv[2]), ("PyTorch loop", sys.argv[3])):
    if not line:
        continue
    p = json.loads(line)
    print(json.dumps(p))
    r = e["steps_per_sec"] / p["steps_per_s"]
    print(f"{e['kind']} SAE d {e['d']} × {e['dict_size']}, batch {e['batch_size']}: engram "
          f"{e['steps_per_sec']:.2f} steps/s, {name} {p['steps_per_s']:.2f} steps/s, ratio {r:.2f}x")
PY
