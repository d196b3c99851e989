#!/usr/bin/env bash
# Stop the test cluster that tests/slurm/start.sh STATE_DIR started: cancel its jobs, stop
# slurmd, slurmctld and munged by their pid files, remove the /etc/slurm files start.sh wrote.
# Safe to run more than once and after a failed start. STATE_DIR itself is left to the caller.
set -uo pipefail

[ $# -eq 1 ] || { echo "usage: $0 STATE_DIR" >&2; exit 2; }
[ -d "$1" ] || exit 0
STATE=$(cd "$1" && pwd)
MARKER="# mdxrd test cluster"
CONF_DIR=/etc/slurm

# /etc/slurm files written by start.sh for this STATE_DIR (not another test cluster's)
ours() {
    [ -f "$CONF_DIR/$1" ] && head -n 1 "$CONF_DIR/$1" | grep -q "^$MARKER" &&
        { [ "$1" != slurm.conf ] || grep -qF "=$STATE/" "$CONF_DIR/slurm.conf"; }
}

# running jobs: cancel them while slurmctld is still there, give them a moment to end
if ours slurm.conf && [ -f "$STATE/slurmctld.pid" ]; then
    jobs=$(timeout 10 squeue -h -t PD,R,CG,S -o %i 2>/dev/null)
    if [ -n "$jobs" ]; then
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null
        for _ in $(seq 1 20); do
            [ -z "$(timeout 10 squeue -h -t PD,R,CG -o %i 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
fi

stop_pidfile() {
    local pidfile=$1 pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile" 2>/dev/null)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 40); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    fi
    rm -f "$pidfile"
}
stop_pidfile "$STATE/slurmd.pid"
stop_pidfile "$STATE/slurmctld.pid"
stop_pidfile "$STATE/munged.pid"

if ours slurm.conf; then
    rm -f "$CONF_DIR/slurm.conf"
    ours gres.conf && rm -f "$CONF_DIR/gres.conf"
fi
exit 0
