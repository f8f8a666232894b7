#!/usr/bin/env bash
# Stops the single-node Slurm started by scripts/slurm-up.sh: cancels its jobs, stops slurmd
# and slurmctld (by the pid files in $PARTUNE_SLURM_DIR), and munged if slurm-up.sh started it.
# Every wait is bounded; a daemon that ignores SIGTERM for PARTUNE_SLURM_WAIT_S gets SIGKILL.
#   bash scripts/slurm-down.sh [--keep-munge]
set -uo pipefail

keep_munge=0
[ "${1:-}" = --keep-munge ] && keep_munge=1

dir=${PARTUNE_SLURM_DIR:-/tmp/partune-slurm}
wait_s=${PARTUNE_SLURM_WAIT_S:-30}
export SLURM_CONF="$dir/slurm.conf"

log() { echo "slurm-down: $*" >&2; }

# stop_pid PID NAME: SIGTERM, wait up to wait_s, then SIGKILL.
stop_pid() {
  local pid=$1 name=$2 deadline=$((SECONDS + wait_s))
  kill -TERM "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$name (pid $pid) ignored SIGTERM for ${wait_s}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null
      return 0
    fi
    sleep 0.2
  done
}

# stop_pidfile FILE NAME: stop the process named in FILE if it is still that daemon.
stop_pidfile() {
  local file=$1 name=$2 pid
  [ -r "$file" ] || return 0
  pid=$(cat "$file")
  if [[ $pid =~ ^[0-9]+$ ]] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ]; then
    stop_pid "$pid" "$name"
  fi
  rm -f "$file"
}

cancel_jobs() {
  [ -r "$SLURM_CONF" ] || return 0
  timeout 10 scontrol ping 2>/dev/null | grep -q UP || return 0
  local jobs
  jobs=$(timeout 10 squeue -h -o %A 2>/dev/null) || return 0
  [ -n "$jobs" ] || return 0
  # shellcheck disable=SC2086  # job ids are plain integers
  timeout 10 scancel $jobs 2>/dev/null
  local deadline=$((SECONDS + wait_s))
  while [ -n "$(timeout 10 squeue -h -o %A 2>/dev/null)" ] && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.5
  done
}

cancel_jobs
stop_pidfile "$dir/slurmd.pid" slurmd
stop_pidfile "$dir/slurmctld.pid" slurmctld
if [ "$keep_munge" = 0 ] && [ -e "$dir/munged.started" ]; then
  stop_pidfile /run/munge/munged.pid munged
  rm -f "$dir/munged.started"
fi
log "Slurm stopped ($dir kept for its logs)"
