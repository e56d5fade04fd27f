#!/usr/bin/env bash
# Prepare the one GPU check a session with a lent GPU runs (the `device` tool): build the
# CUDA binary here (scripts/cuda-build.sh), strip it, and put it with a small CIFAR-10
# slice into gpu/ (ignored by git; carry it). The device machine has no Rust toolchain and
# no network, and at most 64 MiB travel: a stripped xtask (~9 MB, every stage in one
# binary) and 3,000 prepared images (~37 MB).
#
#   CIFAR10_DIR=../shared/data/cifar-10-batches-bin scripts/gpu-pack.sh
#   then: device run, carry ["gpu"], command "scripts/gpu-check.sh", timeout_s 480
set -euo pipefail
cd "$(dirname "$0")/.."
src=${CIFAR10_DIR:-../shared/data/cifar-10-batches-bin}
[ -d "$src" ] || { echo "gpu-pack: CIFAR-10 not found at $src (set CIFAR10_DIR)" >&2; exit 1; }
scripts/cuda-build.sh
mkdir -p gpu
# gpu/ is in .gitignore: it travels only as a carried path.
strip -o gpu/xtask target/cuda/release/xtask
# The CPU side of the comparison runs this same binary with --device cpu.
cargo build --release -p layerwise-prepare
target/release/layerwise-prepare --source "$src" --out gpu/cifar-3000.safetensors --limit-train 2500 --limit-test 500
du -sh gpu/* >&2
echo "gpu-pack: ready; carry [\"gpu\"] and run scripts/gpu-check.sh there" >&2
