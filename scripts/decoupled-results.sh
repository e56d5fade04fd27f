#!/usr/bin/env bash
# docs/results/decoupled, from one command (CIFAR10_DIR set, Open MPI and libclang
# installed, about 50 minutes on 2 cores):
#   1. timing: one epoch of pipelines/cnn-decoupled.toml's network on 20,000 training
#      images with 1 group on one core (each stage's own step time), 1 group on both
#      cores, 2 groups as threads and 2 groups as MPI ranks;
#   2. the whole pipelines/cnn-decoupled.toml (8 epochs a stage, 45,000 images, 2 thread
#      groups), against sequential greedy's docs/results/cnn (cnn.toml: the same network,
#      settings and epochs per stage);
#   3. scripts/decoupled-summary.py: README.md and summary.json, the wall-time model.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CIFAR10_DIR:?set CIFAR10_DIR to the CIFAR-10 binary release}"
work="${WORK:-artifacts/decoupled-results}"
out="${OUT:-docs/results/decoupled}"
mkdir -p "$work" "$out"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
cargo build --release --workspace --features mpi 2>&1 | tail -1
x=target/release/xtask
timing="$work/cnn-decoupled-timing.toml"
sed -e 's/^name = "cnn-decoupled" /name = "cnn-decoupled-timing"/' -e 's/^epochs = 8 /epochs = 1 /' \
    -e 's/^val_fraction = 0.1 /val_fraction = 0.1\nlimit_train = 20000/' pipelines/cnn-decoupled.toml > "$timing"
grep -q '^limit_train = 20000' "$timing" && grep -q '^epochs = 1 ' "$timing"
run() { # NAME SECONDS-FILE ARGS...
  local name=$1; shift
  rm -rf "$work/$name"
  local t0=$EPOCHREALTIME
  "$@" --source "$CIFAR10_DIR" --artifacts "$work/artifacts" --run-dir "$work/$name" --plain > "$work/$name.log" 2>&1
  python3 -c "print(round($EPOCHREALTIME - $t0, 1))" > "$work/$name.seconds"
  echo "$name: $(cat "$work/$name.seconds") s (the command; training alone: $work/$name/decoupled.json)"
}
RAYON_NUM_THREADS=1 run time-1group-1core $x greedy --pipeline "$timing" --groups 1
run time-1group $x greedy --pipeline "$timing" --groups 1
run time-2threads $x greedy --pipeline "$timing" --groups 2
run time-2ranks $x greedy --pipeline "$timing" --groups 2 --launcher mpi
run full-2threads $x greedy --pipeline pipelines/cnn-decoupled.toml --groups 2
python3 scripts/decoupled-summary.py --work "$work" --sequential docs/results/cnn --out "$out"
