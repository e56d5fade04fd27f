#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for trying `--scheduler slurm` and for CI.
#
#   scripts/slurm-local.sh start    install the packages if missing, start munged,
#                                   slurmctld and slurmd, wait until the node is idle
#   scripts/slurm-local.sh stop     stop exactly the daemons `start` started
#   scripts/slurm-local.sh status   sinfo against that cluster
#   scripts/slurm-local.sh env      print `export SLURM_CONF=...` (eval it in your shell)
#
# Everything (config, state, logs, the munge key and socket) lives under
# $LAYERWISE_SLURM_DIR (default: target/slurm-local in the repo); nothing is written to
# /etc/slurm or /etc/munge. Clients find the cluster through SLURM_CONF, which
# `start` prints and the tests read. Must run as root (the daemons run as root).
# Ports: $LAYERWISE_SLURM_PORT (slurmctld, default 16817) and the next one (slurmd).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="${LAYERWISE_SLURM_DIR:-$repo/target/slurm-local}"
port="${LAYERWISE_SLURM_PORT:-16817}"
conf="$dir/slurm.conf"
pids="$dir/pids"

say() { echo "slurm-local: $*" >&2; }

install_packages() {
  local missing=()
  for bin in slurmctld slurmd sbatch munged; do
    command -v "$bin" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin" command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing slurmctld slurmd slurm-client munge (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

# A pid from our pid file that still runs the program we started.
alive() { # pid name
  [ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q "$2"
}

stop() {
  [ -f "$pids" ] || { say "not running (no $pids)"; return 0; }
  local pid name
  # slurmd first, munged last (the others need it to shut down cleanly).
  for name in slurmd slurmctld munged; do
    pid="$(awk -v n="$name" '$1 == n { print $2 }' "$pids")"
    [ -n "$pid" ] && alive "$pid" "$name" && kill "$pid" 2>/dev/null || true
  done
  for _ in $(seq 50); do
    local left=0
    while read -r name pid; do alive "$pid" "$name" && left=1; done <"$pids"
    [ $left -eq 0 ] && break
    sleep 0.1
  done
  while read -r name pid; do alive "$pid" "$name" && kill -9 "$pid" 2>/dev/null || true; done <"$pids"
  rm -f "$pids"
  say "stopped"
}

start() {
  [ "$(id -u)" -eq 0 ] || { say "run as root (the daemons run as root)"; exit 1; }
  install_packages
  export PATH="$PATH:/usr/sbin"
  stop >/dev/null 2>&1 || true
  # A fresh cluster each start: slurmctld refuses a state folder of another cluster.
  rm -rf "$dir"
  mkdir -p "$dir"/{munge,state/ctld,state/d,log,run}
  chmod 0700 "$dir/munge"
  head -c 1024 /dev/urandom >"$dir/munge/munge.key"
  chmod 0400 "$dir/munge/munge.key"
  local cpus mem
  cpus="$(nproc)"
  mem="$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)"
  cat >"$conf" <<EOF
# Written by scripts/slurm-local.sh: a one-node cluster on this machine.
ClusterName=layerwise-local
SlurmctldHost=localhost
SlurmctldPort=$port
SlurmdPort=$((port + 1))
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/munge.socket.2
StateSaveLocation=$dir/state/ctld
SlurmdSpoolDir=$dir/state/d
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MessageTimeout=5
MinJobAge=600
SchedulerParameters=bf_interval=1,sched_min_interval=100000
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  : >"$pids"
  munged -F --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.socket.2" \
    --pid-file="$dir/run/munged.pid" --seed-file="$dir/munge/seed" --log-file="$dir/log/munged.log" \
    >>"$dir/log/munged.out" 2>&1 &
  echo "munged $!" >>"$pids"
  for _ in $(seq 50); do [ -S "$dir/munge/munge.socket.2" ] && break; sleep 0.1; done
  slurmctld -D -f "$conf" >>"$dir/log/slurmctld.out" 2>&1 &
  echo "slurmctld $!" >>"$pids"
  slurmd -D -N localhost -f "$conf" >>"$dir/log/slurmd.out" 2>&1 &
  echo "slurmd $!" >>"$pids"
  export SLURM_CONF="$conf"
  local state=""
  for _ in $(seq 60); do
    state="$(timeout 5 sinfo -h -N -o '%T' 2>/dev/null | head -1 || true)"
    [ "$state" = "idle" ] && break
    sleep 0.5
  done
  if [ "$state" != "idle" ]; then
    say "the node did not come up (state: '${state:-no answer}'); logs in $dir/log:"
    tail -n 5 "$dir"/log/*.log "$dir"/log/*.out >&2 || true
    stop
    exit 1
  fi
  say "up: node localhost idle with $cpus CPUs; export SLURM_CONF=$conf"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) SLURM_CONF="$conf" timeout 10 sinfo ;;
  env) echo "export SLURM_CONF=$conf" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
