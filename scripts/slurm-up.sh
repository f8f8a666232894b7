#!/usr/bin/env bash
# Starts a real single-node Slurm (munged, slurmctld, slurmd) as root, without systemd.
#
#   eval "$(bash scripts/slurm-up.sh)"     # prints `export SLURM_CONF=...` on stdout
#   sbatch --wrap 'hostname'; bash scripts/slurm-down.sh
#
# Everything Slurm writes lives in $PARTUNE_SLURM_DIR (default /tmp/partune-slurm): the
# config, state, spool, pid and log files. Nothing under /etc is changed.
#
# Environment knobs:
#   PARTUNE_SLURM_DIR     state folder (default /tmp/partune-slurm)
#   PARTUNE_SLURM_CPUS    CPUs advertised for the node (default `nproc --all`)
#   PARTUNE_SLURM_GPUS    placeholder "gpu" GRES advertised (default 4; see make_gpu_nodes: no
#                         real device, it lets jobs ask for --gpus-per-node like on a GPU node)
#   PARTUNE_SLURM_PORT    slurmctld port (default 6817; slurmd uses port + 1)
#   PARTUNE_SLURM_WAIT_S  bound on every wait (default 60)
#
# Traps handled (see ENVIRONMENT.md): the hostname is not `localhost`, so the node is
# NodeName=localhost NodeAddr=127.0.0.1 and slurmd runs with -N localhost; no cgroups, so
# proctrack/linuxproc + task/none; `nproc` follows OMP_NUM_THREADS, so `nproc --all`;
# stale controller state blocks the node, so slurmctld -c; every wait is bounded.
set -euo pipefail

dir=${PARTUNE_SLURM_DIR:-/tmp/partune-slurm}
cpus=${PARTUNE_SLURM_CPUS:-$(nproc --all)}
gpus=${PARTUNE_SLURM_GPUS:-4}
port=${PARTUNE_SLURM_PORT:-6817}
wait_s=${PARTUNE_SLURM_WAIT_S:-60}
conf="$dir/slurm.conf"

die() { echo "slurm-up: $*" >&2; exit 2; }
log() { echo "slurm-up: $*" >&2; }

[ "$(id -u)" = 0 ] || die "must run as root (munged, slurmd and slurmctld are started directly)"
[[ $cpus =~ ^[1-9][0-9]*$ ]] || die "PARTUNE_SLURM_CPUS=$cpus is not a positive integer"
[[ $gpus =~ ^[0-9]+$ ]] || die "PARTUNE_SLURM_GPUS=$gpus is not a non-negative integer"
[[ $port =~ ^[1-9][0-9]*$ ]] || die "PARTUNE_SLURM_PORT=$port is not a port number"
for bin in munged munge unmunge slurmctld slurmd sinfo scontrol; do
  command -v "$bin" >/dev/null \
    || die "$bin not found: apt-get install slurmctld slurmd slurm-client munge"
done

# wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND every 0.2 s until it succeeds.
wait_for() {
  local seconds=$1 what=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "timed out after ${seconds}s waiting for $what"
      return 1
    fi
    sleep 0.2
  done
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "munged already running"
    return
  fi
  if [ ! -s /etc/munge/munge.key ]; then  # the package's postinst normally writes it
    log "creating /etc/munge/munge.key"
    runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key \
      || die "cannot create /etc/munge/munge.key: reinstall the munge package"
  fi
  install -d -o munge -g munge -m 0755 /run/munge
  runuser -u munge -- /usr/sbin/munged
  wait_for "$wait_s" "munged" bash -c 'munge -n | unmunge' || die "munged did not start"
  mkdir -p "$dir"
  touch "$dir/munged.started"  # slurm-down.sh stops munged only if we started it
}

# Slurm drops a GPU GRES without a device file and rejects regular files, so the placeholder
# GPUs are character devices aliasing /dev/null (1:3). Nothing opens them: they only let a job
# ask for --gpus-per-node and see SLURM_GPUS_ON_NODE / CUDA_VISIBLE_DEVICES like on a GPU node.
make_gpu_nodes() {
  mkdir -p "$dir/dev"
  local i
  for ((i = 0; i < gpus; i++)); do
    [ -c "$dir/dev/gpu$i" ] && continue
    if ! mknod "$dir/dev/gpu$i" c 1 3 2>/dev/null; then
      log "mknod failed: advertising no GPU GRES (set PARTUNE_SLURM_GPUS=0 to silence)"
      return 1
    fi
  done
}

write_conf() {
  mkdir -p "$dir/state" "$dir/spool"
  local gres_line="" node_gres=""
  if [ "$gpus" -gt 0 ] && make_gpu_nodes; then
    gres_line="GresTypes=gpu"
    node_gres="Gres=gpu:$gpus"
    echo "NodeName=localhost Name=gpu File=$dir/dev/gpu[0-$((gpus - 1))]" >"$dir/gres.conf"
  else
    rm -f "$dir/gres.conf"
  fi
  cat >"$conf" <<EOF
# Written by scripts/slurm-up.sh; a single-node test cluster.
ClusterName=partune
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
$gres_line
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=1 $node_gres State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

node_idle() {
  local state
  state=$(sinfo -h -n localhost -o %T 2>/dev/null) || return 1
  [ "$state" = idle ] || [ "$state" = mixed ] || [ "$state" = allocated ]
}

start_slurm() {
  export SLURM_CONF="$conf"
  if scontrol ping 2>/dev/null | grep -q UP && node_idle; then
    log "Slurm already running with $conf"
    return
  fi
  bash "$(dirname "$0")/slurm-down.sh" --keep-munge >/dev/null 2>&1 || true
  write_conf
  # -c: start clean (stale state from an earlier run blocks the node); -i: ignore bad state.
  slurmctld -c -i -f "$conf"
  wait_for "$wait_s" "slurmctld" bash -c 'scontrol ping | grep -q UP' \
    || die "slurmctld did not come up; see $dir/slurmctld.log"
  slurmd -N localhost -f "$conf"
  wait_for "$wait_s" "node localhost to be idle" node_idle \
    || die "node did not become idle; see $dir/slurmd.log and $dir/slurmctld.log"
  log "Slurm up: $cpus CPUs, $gpus gpu GRES, config $conf"
}

start_munge
start_slurm
printf 'export SLURM_CONF=%q\n' "$conf"
