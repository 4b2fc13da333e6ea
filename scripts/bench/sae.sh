#!/usr/bin/env bash
# SAE training throughput: engram (`sae train`, hand-written backward on candle) vs a plain
# PyTorch loop (scripts/bench/sae_reference.py, autograd) on the same activations, same shapes,
# same machine, same thread count. Prints both JSON lines and the ratio.
#
#   scripts/bench/sae.sh STORE_DIR        # a store from `engram sae collect`
#   KIND=topk STEPS=100 B=1024 THREADS=2 PYTHON=python3 scripts/bench/sae.sh STORE_DIR
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
P=$("$PY" scripts/bench/sae_reference.py "$STORE" --kind "$KIND" --steps "$STEPS" --batch-size "$B" --threads "$THREADS" | tail -n 1)
python3 - "$TMP/sae/train_report.json" "$P" <<'PY'
import json, sys
e = json.load(open(sys.argv[1])); p = json.loads(sys.argv[2])
print(json.dumps({"impl": "engram", "kind": e["kind"], "d": e["d"], "dict_size": e["dict_size"],
                  "batch_size": e["batch_size"], "steps": e["steps"], "steps_per_s": e["steps_per_sec"]}))
print(json.dumps(p))
r = e["steps_per_sec"] / p["steps_per_s"]
print(f"{e['kind']} SAE d {e['d']} × {e['dict_size']}, batch {e['batch_size']}: engram {e['steps_per_sec']:.2f} steps/s, "
      f"PyTorch {p['steps_per_s']:.2f} steps/s, ratio {r:.2f}x")
PY
