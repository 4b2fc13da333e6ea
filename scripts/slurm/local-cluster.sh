#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for tests (root; Debian's slurm-wlm + munge).
#
#     scripts/slurm/local-cluster.sh up DIR     # installs the packages if missing, writes
#                                               # DIR/slurm.conf, starts munged, slurmctld, slurmd
#     scripts/slurm/local-cluster.sh down DIR   # stops them
#
# After `up`, use the cluster with SLURM_CONF=DIR/slurm.conf (sbatch, squeue, scancel, ...).
set -euo pipefail
cmd=${1:-} dir=${2:-}
if [ -z "$cmd" ] || [ -z "$dir" ]; then
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
conf=$dir/slurm.conf
export SLURM_CONF=$conf

down() {
    for d in slurmd slurmctld; do
        if [ -f "$dir/$d.pid" ]; then kill "$(cat "$dir/$d.pid")" 2>/dev/null || true; fi
    done
    sleep 1
    pkill -f "slurmd -f $conf" 2>/dev/null || true
    pkill -f "slurmctld -f $conf" 2>/dev/null || true
}

case $cmd in
down) down; exit 0 ;;
up) ;;
*) echo "local-cluster.sh: unknown command '$cmd' (up, down)" >&2; exit 2 ;;
esac

[ "$(id -u)" = 0 ] || { echo "local-cluster.sh: needs root (starts munged and slurmd)" >&2; exit 1; }
if ! command -v slurmctld > /dev/null || ! command -v munged > /dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq > /dev/null
    apt-get install -y -qq slurm-wlm munge > /dev/null
fi

# munge: a key, then the daemon (as root, hence --force).
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
if ! munge -n > /dev/null 2>&1; then
    munged --force
    for _ in $(seq 50); do munge -n > /dev/null 2>&1 && break; sleep 0.1; done
fi
munge -n | unmunge > /dev/null || { echo "local-cluster.sh: munge does not work" >&2; exit 1; }

host=$(hostname -s)
cpus=$(nproc)
mem=$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)
mkdir -p "$dir/state" "$dir/spool" "$dir/log"
cat > "$conf" <<CONF
ClusterName=engram-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
MinJobAge=3600
KillWait=5
InactiveLimit=0
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
down
slurmctld -f "$conf" -c -i
slurmd -f "$conf" -c -N "$host"
for _ in $(seq 100); do
    if sinfo -h -o %T 2> /dev/null | grep -q idle; then
        echo "local Slurm cluster up: SLURM_CONF=$conf ($host, $cpus CPUs, ${mem} MB)"
        exit 0
    fi
    sleep 0.2
done
echo "local-cluster.sh: the node did not come up; logs in $dir/log" >&2
sinfo >&2 || true
tail -5 "$dir/log/"*.log >&2 || true
exit 1
