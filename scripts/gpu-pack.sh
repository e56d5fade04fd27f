#!/usr/bin/env bash
# Prepare the one GPU check a session with a lent GPU runs (the `device` tool), in one
# command: build the CUDA binary here (scripts/cuda-build.sh, CUDA 13.0), strip it, put it
# with a small CIFAR-10 slice into gpu/ (ignored by git; carried), then run
# scripts/gpu-preflight.sh on it. The device machine has no Rust toolchain and no network,
# and at most 64 MiB travel: a stripped xtask (~10 MB, every stage in one binary), 3,000
# prepared images (~37 MB) and the tree.
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
# The slice is prepared by the same binary, called as layerwise-prepare (no second build):
# here the build's libcuda stub stands in for the driver, which preparing never calls.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp target/cuda-toolkit/lib/libcuda.so "$tmp/libcuda.so.1"
ln -s "$PWD/gpu/xtask" "$tmp/layerwise-prepare"
LD_LIBRARY_PATH="$tmp:$PWD/target/cuda-toolkit/lib" "$tmp/layerwise-prepare" --source "$src" \
    --out gpu/cifar-3000.safetensors --limit-train 2500 --limit-test 500
# dfdx compiles a few kernels at run time with NVRTC (reshape, concat, stack, to_dtype), with
# include paths baked in at build time: the toolkit's include folder (cuda_fp16.h) and dfdx's
# build folder (cuda_utils.cuh). Neither exists on the device: the headers travel in
# gpu/dfdx-include, and gpu/runtime-paths lists the baked paths for gpu-check.sh to recreate.
rm -rf gpu/dfdx-include
mkdir -p gpu/dfdx-include
: >gpu/runtime-paths
for out in target/cuda/release/build/dfdx-*/out; do
    [ -f "$out/cuda_utils.cuh" ] || continue
    abs=$(cd "$out" && pwd)
    grep -qaF "$abs" gpu/xtask || continue
    cp "$out"/*.cuh gpu/dfdx-include/
    echo "dfdx-include $abs" >>gpu/runtime-paths
done
echo "cuda-include $PWD/target/cuda-toolkit/include" >>gpu/runtime-paths
du -sh gpu/* >&2
scripts/gpu-preflight.sh gpu/xtask
echo "gpu-pack: ready; carry [\"gpu\"] and run scripts/gpu-check.sh there (timeout_s 480)" >&2
