#!/usr/bin/env bash
# Build layerwise with `--features cuda` for real on a machine without a GPU or a CUDA
# install: the CUDA 13 toolkit comes from PyPI's wheels, dfdx's kernels are compiled to PTX
# with that nvcc, and the binaries link against the wheels' libraries.
#
#   scripts/cuda-build.sh            # -> target/cuda/release/{layerwise-train,layerwise-evaluate,xtask}
#   scripts/gpu-preflight.sh         # then: check the build for the lent GPU, with no GPU
#
# The toolkit is PINNED to CUDA 13.0 (nvcc 13.0.88), the lent H200's driver (580.159, CUDA
# 13.0). dfdx compiles its kernels to PTX here and the driver JIT-compiles that PTX when a
# kernel loads; a driver refuses PTX newer than its own ISA (CUDA_ERROR_UNSUPPORTED_PTX_VERSION).
# nvcc 13.0.x writes `.version 9.0`, which driver 13.0 loads; `13.*` resolves to the newest
# (13.5.37 writes `.version 9.5`) and no kernel would load there.
#   LAYERWISE_CUDA_VERSION=13.2.86 scripts/cuda-build.sh
# builds with another nvcc: its PTX ISA (13.N writes 9.N) then needs a driver of CUDA >= 13.N,
# and scripts/gpu-preflight.sh (LAYERWISE_PTX_MAX, default 9.0) refuses it for the H200 here.
# cccl and cuBLAS number their wheels apart (cccl 13.0.85, cuBLAS 13.0.2.14 ship with CUDA
# 13.0 Update 1): the default pins those; with LAYERWISE_CUDA_VERSION=X.Y.Z they are X.Y.*
# and 13.* (cuBLAS is found by its soname libcublas.so.13 at run time, the image's own).
#
# What it does, and what it fakes:
# - pip-downloads nvidia-cuda-nvcc, nvidia-nvvm (cicc, libdevice), nvidia-cuda-crt,
#   nvidia-cuda-cccl (the headers cuda_fp16.h includes), nvidia-cuda-runtime,
#   nvidia-cuda-nvrtc and nvidia-cublas (CUDA 13.0, see below) into
#   target/cuda-toolkit/ and unpacks them (the `-cu12` nvcc wheel has only ptxas);
# - `libcuda.so` (the driver library) is in no wheel. The link needs one, so the script
#   builds a STUB: a tiny shared library exporting every `cu*` function cudarc's driver
#   bindings declare, each returning CUDA_ERROR_STUB_LIBRARY (34). Its soname is
#   libcuda.so.1, so on a GPU machine the binaries load the driver's real libcuda.so.1;
#   the stub is never linked against a real driver and never shipped;
# - dfdx's build asks `nvidia-smi` for the compute capability: a fake one on PATH answers
#   9.0, and CUDA_COMPUTE_CAP=90 (H100/H200) is set anyway.
# On the GPU machine the wheels' libraries must be found at run time: the binaries carry
# an rpath to target/cuda-toolkit/lib; elsewhere set LD_LIBRARY_PATH to a copy of it.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
tk=${LAYERWISE_CUDA_TOOLKIT:-$repo/target/cuda-toolkit}
version=${LAYERWISE_CUDA_VERSION:-13.0.88}
if [ "$version" = 13.0.88 ]; then
    cccl=13.0.85 cublas=13.0.2.14
else
    cccl="$(echo "$version" | cut -d. -f1-2).*" cublas=13.*
fi
cap=${CUDA_COMPUTE_CAP:-90}
started=$(date +%s)
say() { echo "cuda-build: $*" >&2; }

root=$tk/nvidia/cu13
stamp=$tk/version
if [ -f "$stamp" ] && [ "$(cat "$stamp")" != "$version" ]; then
    say "$tk holds CUDA $(cat "$stamp"), not $version: unpacking $version afresh"
    rm -rf "$tk/nvidia" "$tk/wheels" "$stamp"
fi
if [ ! -x "$root/bin/nvcc" ] || [ ! -x "$root/nvvm/bin/cicc" ] || [ ! -e "$root/include/cccl/nv/target" ]; then
    say "downloading the CUDA $version wheels from PyPI into $tk/wheels"
    command -v pip >/dev/null || { say "pip is needed (python3 -m ensurepip)"; exit 1; }
    mkdir -p "$tk/wheels"
    pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 \
        -d "$tk/wheels" \
        "nvidia-cuda-nvcc==$version" "nvidia-nvvm==$version" "nvidia-cuda-crt==$version" "nvidia-cuda-cccl==$cccl" \
        "nvidia-cuda-runtime==$version" "nvidia-cuda-nvrtc==$version" "nvidia-cublas==$cublas"
    for w in "$tk"/wheels/*.whl; do
        python3 -m zipfile -e "$w" "$tk"
    done
    chmod +x "$root"/bin/* "$root"/nvvm/bin/* 2>/dev/null || true
    echo "$version" > "$stamp"
fi
[ -f "$root/include/cuda.h" ] || { say "no cuda.h under $root/include: the wheels did not unpack as expected"; exit 1; }

# A CUDA_ROOT the build scripts understand: include/ and lib/ with unversioned names.
mkdir -p "$tk/lib" "$tk/bin"
ln -sfn "$root/include" "$tk/include"
for lib in cudart cublas cublasLt nvrtc; do
    real=$(ls "$root"/lib/lib$lib.so.* 2>/dev/null | sort | head -n1)
    [ -n "$real" ] || { say "lib$lib.so.* missing from the wheels"; exit 1; }
    ln -sfn "$real" "$tk/lib/lib$lib.so"
    ln -sfn "$real" "$tk/lib/$(basename "$real")"
done
for real in "$root"/lib/*.so.*; do ln -sfn "$real" "$tk/lib/$(basename "$real")"; done

# The driver stub: every cu* function cudarc's driver bindings declare.
cudarc=$(cargo metadata --format-version 1 --manifest-path "$repo/Cargo.toml" 2>/dev/null |
    python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc"))')
sys_rs=$(dirname "$cudarc")/src/driver/sys.rs
[ -f "$sys_rs" ] || { say "cannot find cudarc's driver bindings ($sys_rs)"; exit 1; }
{
    # Error names and strings succeed, so an error met through the stub can be printed.
    echo 'int cuGetErrorName(int e, const char **s) { (void)e; *s = "CUDA_ERROR_STUB_LIBRARY"; return 0; }'
    echo 'int cuGetErrorString(int e, const char **s) { (void)e; *s = "layerwise build stub: no NVIDIA driver here"; return 0; }'
    grep -o 'pub fn cu[A-Za-z0-9_]*' "$sys_rs" | sed 's/pub fn //' | sort -u | grep -v '^cuGetError\(Name\|String\)$' |
        awk '{ printf "int %s(void) { return 34; /* CUDA_ERROR_STUB_LIBRARY */ }\n", $1 }'
} > "$tk/libcuda-stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$tk/lib/libcuda.so" "$tk/libcuda-stub.c"
say "built the libcuda stub ($(wc -l < "$tk/libcuda-stub.c") functions, soname libcuda.so.1): link-time only"

# dfdx's build.rs asks nvidia-smi for the compute capability.
cat > "$tk/bin/nvidia-smi" <<EOF
#!/bin/sh
# Fake nvidia-smi for building without a GPU (scripts/cuda-build.sh).
echo compute_cap
echo $(echo "$cap" | sed 's/\(.\)$/.\1/')
EOF
chmod +x "$tk/bin/nvidia-smi"

export CUDA_ROOT=$tk CUDA_PATH=$tk CUDA_COMPUTE_CAP=$cap
export PATH=$root/bin:$root/nvvm/bin:$tk/bin:$PATH
export RUSTFLAGS="${RUSTFLAGS:-} -C link-arg=-Wl,-rpath-link,$tk/lib -C link-arg=-Wl,-rpath,$tk/lib"
say "nvcc: $(nvcc --version | tail -n1); compute capability $cap"
cargo build --release --features cuda -p layerwise-train -p layerwise-evaluate -p xtask --target-dir "$repo/target/cuda"
for b in layerwise-train layerwise-evaluate xtask; do
    f=$repo/target/cuda/release/$b
    [ -x "$f" ] || { say "$f was not built"; exit 1; }
    needs=$(readelf -d "$f" | grep -o 'lib\(cuda\|cublas\|nvrtc\)[A-Za-z]*\.so[.0-9]*' | sort -u | tr '\n' ' ')
    say "$f: needs $needs"
done
say "done in $(( $(date +%s) - started )) s (binaries in target/cuda/release; kernels compiled for sm_$cap)"
