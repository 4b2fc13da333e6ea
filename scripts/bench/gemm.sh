#!/usr/bin/env bash
# The linear layers' products alone: engram's packed kernels (every one this CPU has, both
# formats) and candle's f32 matmul (`examples/bench_gemm.rs paths`) against torch's
# `F.linear` in f32 and bfloat16 (scripts/bench/gemm_torch.py), on SmolLM2-135M's and a 1B
# model's shapes at 1, 8, 128 and 1024 rows, the two programs alternating for ROUNDS rounds
# (each best of ROUNDS_IN interleaved rounds per shape). Prints both tables of the last
# round and, per shape and row count, the median over rounds of engram's GFLOP/s over
# torch's (f32 kernel / torch f32, bf16 kernel / torch f32 and / torch bf16).
#
#   scripts/bench/gemm.sh [smollm2|1b|all] [ROWS,..]    # ROUNDS=3 ROUNDS_IN=3 PYTHON=python3
#   RAYON_NUM_THREADS=1 THREADS=1 CPU_TIME=1 scripts/bench/gemm.sh   # one core, by CPU time
#
# Needs a Python with torch. Uses $CARGO_TARGET_DIR (default ./target).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-python3}"; ROUNDS="${ROUNDS:-3}"
WHICH="${1:-all}"; ROWS="${2:-1,8,128,1024}"
TARGET="${CARGO_TARGET_DIR:-target}"
cargo build --release --example bench_gemm >/dev/null 2>&1
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
for i in $(seq "$ROUNDS"); do
  ROUNDS="${ROUNDS_IN:-3}" "$TARGET/release/examples/bench_gemm" paths "$WHICH" "$ROWS" >"$TMP/e$i.md"
  ROUNDS="${ROUNDS_IN:-3}" "$PY" scripts/bench/gemm_torch.py "$WHICH" "$ROWS" >"$TMP/t$i.md"
done
cat "$TMP/e$ROUNDS.md" "$TMP/t$ROUNDS.md"
"$PY" - "$TMP" "$ROUNDS" <<'PY'
import re, statistics, sys
tmp, rounds = sys.argv[1], int(sys.argv[2])

def table(path):
    rows, head = {}, None
    for line in open(path):
        if not line.startswith("| ") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if head is None:
            head = cells
            continue
        num = lambda c: float(re.match(r"[0-9.]+", c).group()) if re.match(r"[0-9.]", c) else None
        rows[(cells[0], cells[1])] = {h: num(c) for h, c in zip(head[2:], cells[2:])}
    return rows

e = [table(f"{tmp}/e{i}.md") for i in range(1, rounds + 1)]
t = [table(f"{tmp}/t{i}.md") for i in range(1, rounds + 1)]
pairs = [("F32 Avx2", "torch f32"), ("candle f32", "torch f32"), ("Bf16 Avx2", "torch f32"),
         ("Bf16 Avx2", "torch bf16")]
# Whatever the best kernels here are called (Avx512, Amx on other hosts).
names = list(e[0][next(iter(e[0]))].keys())
best = lambda fmt: [n for n in names if n.startswith(fmt)][-1]
pairs = [(best("F32"), "torch f32"), ("candle f32", "torch f32"), (best("Bf16"), "torch f32"),
         (best("Bf16"), "torch bf16")]
print("\nmedian over rounds of engram / torch GFLOP/s (range):")
print("| shape | rows | " + " | ".join(f"{a} / {b}" for a, b in pairs) + " |")
print("|---|---|" + "---|" * len(pairs))
for key in e[0]:
    cells = []
    for a, b in pairs:
        r = [ei[key][a] / ti[key][b] for ei, ti in zip(e, t) if ei[key][a] and ti[key][b]]
        cells.append(f"{statistics.median(r):.2f}× ({min(r):.2f}–{max(r):.2f})" if r else "–")
    print(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
PY
