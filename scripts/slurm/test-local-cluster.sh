#!/usr/bin/env bash
# End-to-end test of sharded batches on a real (single-node, localhost) Slurm cluster:
#
#     scripts/slurm/test-local-cluster.sh [SUITE] [SHARDS]
#
# SUITE defaults to tests/fixtures/suites/cluster.toml (tiny fixtures, ~1 min in all; what
# .ci/run runs); probes/smoke.toml is the full smoke suite (minutes; needs
# scripts/fetch-models.sh). SHARDS defaults to 3. Needs root (installs Debian's slurm-wlm and
# munge if missing and starts munged, slurmctld and slurmd); without root it prints SKIPPED and
# exits 0 (1 with ENGRAM_REQUIRE_SLURM=1). ENGRAM is the binary (default: the newer of
# target/release/engram and target/debug/engram); KILL_STEP the model-free step phase 3 kills
# (default: the costliest, the last of equals). Checks:
#   1. a single-process run of the suite (the reference);
#   2. the suite as an array of SHARDS tasks plus the dependent merge: every step ran exactly
#      once (one shard record says `ok`), the merge succeeded, every Parquet file is
#      byte-identical to the reference and every link of index.html resolves;
#   3. a fresh run whose longest step's task is killed mid-step (scancel), then the array
#      resubmitted: the finished steps are skipped (their manifests unchanged), the killed step
#      reruns, no partial directory is left, and the merged Parquet files again match.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
suite=${1:-tests/fixtures/suites/cluster.toml}
n=${2:-3}
if [ -z "${ENGRAM:-}" ]; then
    # The newer of the release and the test build (`cargo test` builds target/debug/engram).
    ENGRAM=$repo/target/debug/engram
    if [ -x target/release/engram ] && { [ ! -x "$ENGRAM" ] || [ target/release/engram -nt "$ENGRAM" ]; }; then
        ENGRAM=$repo/target/release/engram
    fi
fi
if [ "$(id -u)" != 0 ]; then
    [ "${ENGRAM_REQUIRE_SLURM:-0}" = 1 ] && fail_early=1 || fail_early=0
    echo "test-local-cluster.sh: SKIPPED: starting a local Slurm cluster needs root" >&2
    exit "$fail_early"
fi
[ -x "$ENGRAM" ] || { echo "test-local-cluster.sh: no engram binary at $ENGRAM (cargo build --release)" >&2; exit 1; }
export ENGRAM
work=$(mktemp -d /tmp/engram-slurm.XXXXXX)
cluster=$work/cluster
cleanup() { scripts/slurm/local-cluster.sh down "$cluster" > /dev/null 2>&1 || true; }
trap cleanup EXIT
t_start=$(date +%s)
say() { echo "[$(($(date +%s) - t_start))s] $*"; }
fail() { echo "test-local-cluster.sh: FAILED: $*" >&2; exit 1; }

scripts/slurm/local-cluster.sh up "$cluster"
export SLURM_CONF=$cluster/slurm.conf

# Wait until none of the given job ids is queued or running (timeout in seconds).
wait_jobs() {
    local timeout=$1
    shift
    local t0=$SECONDS
    while squeue -h -j "$(IFS=,; echo "$*")" 2> /dev/null | grep -q .; do
        [ $((SECONDS - t0)) -lt "$timeout" ] || fail "jobs $* still queued after ${timeout}s"
        sleep 1
    done
}

# The job ids printed by submit.sh: "array job A (N shards), merge job M → ..."
submit() {
    local line
    line=$(scripts/slurm/submit.sh "$suite" "$1" "$n")
    echo "$line" >&2
    set -- $line
    echo "$3 $8"
}

parquet_list() { (cd "$1" && find . -name '*.parquet' -not -path '*/.*' | sort); }
same_parquet() {
    local a=$1 b=$2
    diff <(parquet_list "$a") <(parquet_list "$b") > /dev/null || fail "different Parquet files in $a and $b"
    local count=0 f
    while read -r f; do
        cmp -s "$a/$f" "$b/$f" || fail "$b/$f differs from the single-process run"
        count=$((count + 1))
    done < <(parquet_list "$a")
    [ "$count" -gt 0 ] || fail "no Parquet files in $a"
    echo "$count"
}

python3 - "$suite" > /dev/null <<'PY' || fail "python3 is needed for the JSON checks"
import json, sys
PY

# Every step owned by exactly one shard record in which it is `ok` (phase 2) / the statuses of
# the newest records (phase 3); index.html links.
check_records() {
    python3 - "$@" <<'PY'
import json, os, sys, glob, urllib.parse, re
run, mode = sys.argv[1], sys.argv[2]
batch = json.load(open(os.path.join(run, "batch.json")))
records = [json.load(open(p)) for p in sorted(glob.glob(os.path.join(run, "shards", "shard-*.json")))]
bad = []
for step in batch["steps"]:
    owners = [s for r in records for s in r["steps"] if s["id"] == step["id"] and s["status"] != "deselected"]
    oks = [s for s in owners if s["status"] == "ok"]
    if mode == "once" and (len(owners) != 1 or len(oks) != 1):
        bad.append(f'{step["id"]}: owned by {len(owners)} shard runs, ok in {len(oks)}')
    if step["status"] not in ("ok", "skipped"):
        bad.append(f'{step["id"]}: merged status {step["status"]}')
    if not step.get("shard"):
        bad.append(f'{step["id"]}: no shard in batch.json')
    m = json.load(open(os.path.join(run, step["dir"], "manifest.json")))
    notes = [x for x in m["notes"] if x.startswith("batch: ")]
    if len(notes) != 1:
        bad.append(f'{step["id"]}: {len(notes)} batch notes in its manifest')
if len(batch.get("shards", [])) < 1:
    bad.append("batch.json lists no shards")
html = open(os.path.join(run, "index.html")).read()
links = re.findall(r'(?:href|src)="([^"]+)"', html)
for l in links:
    if l.startswith("#"):
        if f'id="{l[1:]}"' not in html:
            bad.append(f"index.html: anchor {l} missing")
        continue
    p = os.path.join(run, urllib.parse.unquote(l.split("#")[0]))
    if not os.path.exists(p):
        bad.append(f"index.html: link {l} does not resolve")
if bad:
    print("\n".join(bad))
    sys.exit(1)
print(f'{len(batch["steps"])} steps, {len(records)} shard records, {len(links)} links ok')
PY
}

say "reference: single-process run of $suite"
"$ENGRAM" --quiet batch "$suite" --out "$work/ref" > "$work/ref.log" 2>&1 || { cat "$work/ref.log"; fail "single-process run"; }

say "phase 2: $n array tasks + merge"
read -r array merge < <(submit "$work/sharded")
wait_jobs 1800 "$array" "$merge"
state=$(scontrol -o show job "$merge" | grep -o 'JobState=[A-Z]*' | head -1)
[ "$state" = JobState=COMPLETED ] || { tail -n 5 "$work"/sharded/slurm/*.out || true; fail "merge job $merge: $state"; }
check_records "$work/sharded" once || fail "records of the sharded run"
files=$(same_parquet "$work/ref" "$work/sharded")
say "phase 2 ok: $files Parquet files byte-identical to the single-process run"

say "phase 3: kill the task running the longest step mid-step, resubmit"
# The step to kill: KILL_STEP, else the costliest model-free step (the last of equals).
longest=${KILL_STEP:-$(python3 - "$suite" <<'PY'
import sys, tomllib
s = tomllib.load(open(sys.argv[1], "rb"))
steps = [x for x in s["step"] if x.get("per_model", True) is False]
best = max(reversed(steps), key=lambda x: x.get("cost", 1))
print(best.get("name") or best["probe"].replace(" ", "-"))
PY
)}
task=$("$ENGRAM" --quiet batch "$suite" --out "$work/killed" --dry-run --shard "1/$n" | awk -v id="$longest" '$NF != "" && $0 ~ ("[[:space:]]" id "[[:space:]]") { match($0, /\[[0-9]+\//); print substr($0, RSTART + 1, RLENGTH - 2); exit }')
[ -n "$task" ] || fail "no shard found for step $longest"
read -r array merge < <(submit "$work/killed")
t0=$SECONDS
until [ -d "$work/killed/.$longest.partial" ]; do
    [ $((SECONDS - t0)) -lt 600 ] || fail "step $longest never started"
    sleep 0.2
done
scancel "${array}_${task}"
say "cancelled task ${array}_${task} while $longest ran"
wait_jobs 1800 "$array" "$merge"
[ ! -d "$work/killed/$longest" ] || fail "the killed step $longest has a finished directory"
before=$(cd "$work/killed" && find . -name manifest.json -path './*/*' -not -path './.*' | sort | xargs sha256sum)
read -r array merge < <(submit "$work/killed")
wait_jobs 1800 "$array" "$merge"
state=$(scontrol -o show job "$merge" | grep -o 'JobState=[A-Z]*' | head -1)
[ "$state" = JobState=COMPLETED ] || fail "merge after resubmission: $state"
check_records "$work/killed" resumed || fail "records after resubmission"
python3 - "$work/killed" "$longest" <<'PY' || fail "resubmission redid finished steps"
import json, sys
run, longest = sys.argv[1], sys.argv[2]
b = json.load(open(f"{run}/batch.json"))
bad = [s["id"] for s in b["steps"] if (s["status"] == "ok") != (s["id"] == longest)]
if bad:
    print("unexpected statuses:", [(s["id"], s["status"]) for s in b["steps"]])
    sys.exit(1)
PY
after=$(cd "$work/killed" && find . -name manifest.json -path './*/*' -not -path './.*' | sort | xargs sha256sum)
# Every manifest that existed before the resubmission is byte-identical after it.
while read -r line; do
    grep -qxF "$line" <<< "$after" || fail "a finished step's manifest changed: $line"
done <<< "$before"
[ -z "$(find "$work/killed" -name '*.partial')" ] || fail "partial directories left"
files=$(same_parquet "$work/ref" "$work/killed")
say "phase 3 ok: resumed, $files Parquet files byte-identical"
say "all checks passed (work directory $work)"
