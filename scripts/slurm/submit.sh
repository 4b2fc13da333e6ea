#!/usr/bin/env bash
# Submit an engram suite to Slurm as an array of N shards plus a dependent merge job.
#
#     scripts/slurm/submit.sh SUITE.toml RUN_DIR N [sbatch options for the shards...]
#
# e.g.  scripts/slurm/submit.sh probes/full.toml /shared/runs/full 6 --mem=16G --cpus-per-task=8
#
# Prints the array job id and the merge job id. ENGRAM (default: engram on PATH) is the binary
# the tasks run; RUN_DIR must be on a file system every node sees. The jobs' logs go to
# RUN_DIR/slurm/ (an --output among the options overrides the shards'). Resubmitting the same
# command resumes: finished steps are skipped.
set -euo pipefail
if [ $# -lt 3 ]; then
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
suite=$1 run=$2 n=$3
shift 3
case $n in '' | *[!0-9]* | 0) echo "submit.sh: N must be a positive integer, got '$n'" >&2; exit 2 ;; esac
[ -f "$suite" ] || { echo "submit.sh: no suite file $suite" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
suite=$(cd "$(dirname "$suite")" && pwd)/$(basename "$suite")
mkdir -p "$run"
run=$(cd "$run" && pwd)
ENGRAM=${ENGRAM:-engram}
# Check the whole suite (probes, parameters, inputs) before queueing anything.
"$ENGRAM" --quiet batch "$suite" --out "$run" --dry-run > /dev/null
export SUITE=$suite RUN=$run ENGRAM
mkdir -p "$run/slurm"
array=$(sbatch --parsable --array="1-$n" --export=ALL --chdir="$PWD" \
    --output="$run/slurm/shard-%A_%a.out" "$@" "$here/batch.sbatch")
array=${array%%;*}
merge=$(sbatch --parsable --dependency="afterany:$array" --export=ALL --chdir="$PWD" \
    --output="$run/slurm/merge-%j.out" "$here/merge.sbatch")
merge=${merge%%;*}
echo "array job $array ($n shards), merge job $merge → $run/index.html"
