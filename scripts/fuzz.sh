#!/usr/bin/env bash
# Fuzz every parser (examples/fuzz.rs) for up to SECONDS each (default 120) or 10^6 executions,
# one target after another, and print a summary table. Exit code 1 if any target crashed,
# aborted (a huge allocation) or hung; the input is then in target/fuzz/.
#
#     scripts/fuzz.sh [SECONDS] [TARGET...]
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-120}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf gguf-real safetensors npy config suite sae-cfg tokenizer-json)
cargo build --release --example fuzz -q || exit 1
echo "host: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs; $(date -u +%FT%TZ)"
status=0
for t in "${targets[@]}"; do
    out=$(target/release/examples/fuzz "$t" --seconds "$seconds" --runs 1000000 2>&1)
    rc=$?
    line=$(echo "$out" | grep -E '^fuzz |allocation of|hang' | tail -1)
    echo "${line:-fuzz $t: exit $rc: $out}"
    [ $rc -eq 0 ] || status=1
done
exit $status
