#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine from Debian's packages (slurmctld, slurmd,
# slurm-client, munge), for tests/test_slurm.py. Root only, no systemd.
#
#   tests/slurm/start.sh STATE_DIR      # then: tests/slurm/stop.sh STATE_DIR
#
# STATE_DIR (created, must be reachable by every user: munged checks the socket's directories)
# gets the munge key and socket, the daemons' state, pid files and logs. The configuration goes
# to /etc/slurm (slurm.conf, gres.conf) because jobs need it there: the executor's jobstep
# drops every SLURM_* variable, SLURM_CONF included, before it calls srun. A slurm.conf or
# gres.conf in /etc/slurm that this script did not write is never touched (exit 3).
# One node, partitions "cpu" (default) and "gpu", two fake GPUs (gres.conf.in).
# Exit status: 0 when the node is idle, 2 not root or binaries missing, 3 foreign
# configuration, 1 anything else (the daemons it started are left for stop.sh).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
[ $# -eq 1 ] || { echo "usage: $0 STATE_DIR" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "start.sh: must run as root" >&2; exit 2; }
for bin in munged slurmctld slurmd sinfo sbatch srun scontrol; do
    command -v "$bin" >/dev/null || { echo "start.sh: $bin not found" >&2; exit 2; }
done

MARKER="# mdxrd test cluster"
CONF_DIR=/etc/slurm
for f in slurm.conf gres.conf; do
    if [ -e "$CONF_DIR/$f" ] && ! head -n 1 "$CONF_DIR/$f" | grep -q "^$MARKER"; then
        echo "start.sh: $CONF_DIR/$f exists and was not written by this script; not touching it" >&2
        exit 3
    fi
done
# a configuration of ours whose daemons still run belongs to another test cluster: leave it;
# one whose daemons are gone (a killed test) is overwritten
if [ -f "$CONF_DIR/slurm.conf" ]; then
    for key in SlurmctldPidFile SlurmdPidFile; do
        pidfile=$(sed -n "s/^$key=//p" "$CONF_DIR/slurm.conf")
        if [ -n "$pidfile" ] && [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            echo "start.sh: another mdxrd test cluster is running ($pidfile); stop it with stop.sh" >&2
            exit 3
        fi
    done
fi

mkdir -p "$1"
STATE=$(cd "$1" && pwd)
chmod 755 "$STATE"
mkdir -p "$STATE/munge" "$STATE/slurmctld" "$STATE/slurmd"
chmod 711 "$STATE/munge"

HOST=$(hostname -s)
CPUS=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc honours OMP_NUM_THREADS: a test run with it set to 1 would get a 1-CPU node
MEM_MB=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
GPUS=$(grep -c '^NodeName=' "$here/gres.conf.in")
fill() {
    sed -e "s|@HOST@|$HOST|g" -e "s|@STATE@|$STATE|g" -e "s|@CPUS@|$CPUS|g" -e "s|@MEM_MB@|$MEM_MB|g" \
        -e "s|@GPUS@|$GPUS|g" -e "s|@CTLD_PORT@|${MDXRD_SLURMCTLD_PORT:-6817}|g" \
        -e "s|@SLURMD_PORT@|${MDXRD_SLURMD_PORT:-6818}|g" "$1"
}
mkdir -p "$CONF_DIR"
fill "$here/slurm.conf.in" >"$CONF_DIR/slurm.conf"
fill "$here/gres.conf.in" >"$CONF_DIR/gres.conf"

# munge: own key and socket under STATE (the system's munge, if any, is left alone)
dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$STATE/munge/munge.key"
munged --force --socket="$STATE/munge/munge.socket" --key-file="$STATE/munge/munge.key" \
    --pid-file="$STATE/munged.pid" --log-file="$STATE/munged.log" --seed-file="$STATE/munge/munged.seed"
munge -n -S "$STATE/munge/munge.socket" | unmunge -S "$STATE/munge/munge.socket" >/dev/null

slurmctld
slurmd

# wait for the node to come up idle (10-20 s); give up at once when a daemon died
deadline=$((SECONDS + 60))
state=
while [ $SECONDS -lt $deadline ]; do
    for d in slurmctld slurmd; do
        kill -0 "$(cat "$STATE/$d.pid" 2>/dev/null || echo 0)" 2>/dev/null || {
            echo "start.sh: $d is not running" >&2
            tail -n 20 "$STATE/$d.log" >&2 || true
            exit 1
        }
    done
    state=$(timeout 5 sinfo -h -N -n "$HOST" -o %t 2>/dev/null | head -n 1 || true)
    case "$state" in
        idle) sinfo; exit 0 ;;
        drain* | drng | down*) timeout 5 scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 0.5
done
echo "start.sh: node $HOST not idle after 60 s (state: ${state:-none})" >&2
sinfo -N -l >&2 || true
tail -n 20 "$STATE/slurmctld.log" "$STATE/slurmd.log" >&2 || true
exit 1
