#!/usr/bin/env bash
# Check a CUDA build for the lent GPU here, with no GPU, before any device time is spent.
#
#   scripts/gpu-preflight.sh                 # after scripts/gpu-pack.sh: checks gpu/xtask and gpu/
#   scripts/gpu-preflight.sh --ptx FILE...   # only the PTX rule, on PTX files (tested on fixtures)
#
# 1. PTX: every PTX module dfdx compiled (target/cuda/release/build/*/out/*.ptx, by name) and
#    every module embedded in the binary has `.version` <= LAYERWISE_PTX_MAX (9.0: the H200's
#    driver 580.159 is CUDA 13.0, whose JIT refuses newer PTX) and a `.target` of at most
#    sm_${LAYERWISE_SM_MAX:-90} (the H200 is sm_90); a module over either is named, with its
#    version and target.
# 2. readelf -d: the binary needs only libraries the device image has: the driver's
#    libcuda.so.1 (never carried: no libcuda* may travel), the CUDA 13 libraries of the
#    image's Python packages (cuBLAS, cuBLASLt, NVRTC, the runtime) and the C library's.
#    dfdx compiles a few kernels at run time (NVRTC) with include paths baked in at build
#    time: gpu/runtime-paths must name them and gpu/dfdx-include hold dfdx's headers.
# 3. The highest GLIBC_ symbol version it needs is at most LAYERWISE_DEVICE_GLIBC (2.35, the
#    oldest C library this project expects of the device image; gpu-check.sh prints the real one).
# 4. What travels (the working tree git would send, plus gpu/) is at most 64 MiB.
# 5. GPU_CHECK_DEVICES=cpu scripts/gpu-check.sh runs end to end on the built binary (the
#    build's libcuda stub stands in for the driver here, as libcuda.so.1 in a temp folder).
# Exit 0 when all pass; 1 naming each failure.
set -uo pipefail
cd "$(dirname "$0")/.."
ptx_max=${LAYERWISE_PTX_MAX:-9.0}
sm_max=${LAYERWISE_SM_MAX:-90}
glibc_max=${LAYERWISE_DEVICE_GLIBC:-2.35}
fail=0
say() { echo "gpu-preflight: $*"; }
bad() { echo "gpu-preflight: FAIL: $*"; fail=1; }

# The PTX rule over a text stream ($2 names it): one line per module that breaks it.
ptx_rule() {
    tr '\0' '\n' <"$1" | awk -v src="$2" -v max="$ptx_max" -v smmax="$sm_max" '
        function num(v,   p) { split(v, p, "."); return p[1] * 1000 + p[2] }
        function done() {
            if (mod == 0) return
            if (num(ver) > num(max)) printf "%s: module %d%s has PTX .version %s, above %s (the driver JITs at most %s)\n", src, mod, entry, ver, max, max
            t = target; sub(/^sm_/, "", t); sub(/[^0-9].*$/, "", t)
            if (target == "" || t + 0 > smmax + 0) printf "%s: module %d%s has .target %s, above sm_%s\n", src, mod, entry, (target == "" ? "(none)" : target), smmax
        }
        /^[ \t]*\.version[ \t]/ { done(); mod++; ver = $2; target = ""; entry = ""; next }
        /^[ \t]*\.target[ \t]/ && mod > 0 && target == "" { target = $2; sub(/,$/, "", target); next }
        /\.entry[ \t]/ && mod > 0 && entry == "" { e = $0; sub(/.*\.entry[ \t]+/, "", e); sub(/[ \t(].*/, "", e); entry = " (first kernel " e ")" }
        END { done(); if (mod == 0) printf "%s: no PTX module found\n", src }'
}

check_ptx() { # file, label: count the modules, fail on any over the rule
    local found
    found=$(ptx_rule "$1" "$2")
    local n
    n=$(tr '\0' '\n' <"$1" | grep -c '^[[:space:]]*\.version[[:space:]]')
    if [ -n "$found" ]; then
        while IFS= read -r line; do bad "$line"; done <<<"$found"
    else
        say "$2: $n PTX module(s), each .version <= $ptx_max and .target <= sm_$sm_max"
    fi
}

if [ "${1:-}" = "--ptx" ]; then
    shift
    [ $# -gt 0 ] || { echo "usage: scripts/gpu-preflight.sh --ptx FILE..." >&2; exit 2; }
    for f in "$@"; do
        [ -f "$f" ] || { bad "$f: no such file"; continue; }
        check_ptx "$f" "$f"
    done
    exit $fail
fi

binary=${1:-gpu/xtask}
[ -x "$binary" ] || { bad "no binary at $binary: run scripts/gpu-pack.sh first"; exit 1; }

# 1. PTX, by module file and as embedded.
modules=$(ls target/cuda/release/build/*/out/*.ptx 2>/dev/null)
if [ -n "$modules" ]; then
    for f in $modules; do check_ptx "$f" "$(basename "$f")"; done
else
    say "no PTX files under target/cuda/release/build (checking the embedded modules only)"
fi
check_ptx "$binary" "$binary (embedded)"

# 2. The libraries it needs.
allowed='^(libcuda\.so\.1|libcublas\.so\.13|libcublasLt\.so\.13|libnvrtc\.so\.13|libcudart\.so\.13|libc\.so\.6|libm\.so\.6|libgcc_s\.so\.1|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|ld-linux-x86-64\.so\.2)$'
needed=$(readelf -d "$binary" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
for lib in $needed; do
    grep -qE "$allowed" <<<"$lib" || bad "$binary needs $lib, which the device image does not have"
done
say "$binary needs: $(echo $needed)"
grep -q '^libcuda\.so\.1$' <<<"$needed" || bad "$binary does not need libcuda.so.1: is it a CUDA build?"
carried=$(find gpu -name 'libcuda*' 2>/dev/null)
[ -z "$carried" ] || bad "the driver library must never travel: $carried"

# NVRTC's include paths, baked into the binary: gpu-check.sh recreates them from gpu/.
if [ ! -s gpu/runtime-paths ] || [ ! -f gpu/dfdx-include/cuda_utils.cuh ]; then
    bad "gpu/runtime-paths or gpu/dfdx-include/cuda_utils.cuh missing: dfdx's run-time kernels (NVRTC) would not compile there (run scripts/gpu-pack.sh)"
else
    while read -r kind path; do
        grep -qaF "$path" "$binary" || bad "gpu/runtime-paths: $kind $path is not the path baked into $binary (stale gpu/: run scripts/gpu-pack.sh)"
    done <gpu/runtime-paths
    grep -q '^dfdx-include ' gpu/runtime-paths || bad "gpu/runtime-paths names no dfdx include folder"
    say "NVRTC include paths baked into $binary, recreated there from gpu/: $(awk '{ print $2 }' gpu/runtime-paths | tr '\n' ' ')"
fi

# 3. The C library.
glibc=$(readelf -V "$binary" | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1)
if [ -z "$glibc" ]; then
    bad "$binary: no GLIBC_ symbol versions found"
elif [ "$(printf '%s\n%s\n' "$glibc" "$glibc_max" | sort -V | tail -n1)" != "$glibc_max" ]; then
    bad "$binary needs GLIBC_$glibc, above the device image's $glibc_max"
else
    say "$binary needs at most GLIBC_$glibc (device image: $glibc_max or newer)"
fi

# 4. What travels.
tree=$( (git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null) | awk '{ s += $1 } END { print s + 0 }')
gpu=$(du -sb gpu | cut -f1)
total=$((tree + gpu))
limit=$((64 * 1024 * 1024))
if [ "$total" -gt "$limit" ]; then
    bad "what travels is $((total / 1048576)) MiB (tree $((tree / 1048576)), gpu/ $((gpu / 1048576))), over 64 MiB"
else
    say "what travels: $((total / 1048576)) MiB of 64 (tree $((tree / 1048576)) MiB, gpu/ $((gpu / 1048576)) MiB)"
fi

# 5. The check itself, on the CPU, with the build's stub as the driver.
stub=target/cuda-toolkit/lib/libcuda.so
if [ "${GPU_PREFLIGHT_SKIP_RUN:-}" = 1 ]; then
    say "GPU_PREFLIGHT_SKIP_RUN=1: not running gpu-check.sh on the cpu"
elif [ ! -f "$stub" ]; then
    bad "no libcuda stub at $stub (scripts/cuda-build.sh makes it): cannot start the binary here"
else
    fake=$(mktemp -d)
    cp "$stub" "$fake/libcuda.so.1"
    libs=$fake:$(dirname "$stub")
    run=$(mktemp -d)
    if GPU_CHECK_DEVICES=cpu GPU_CHECK_BIN="$binary" OUT="$run" LD_LIBRARY_PATH="$libs" scripts/gpu-check.sh >"$run.log" 2>&1 \
        && ! grep -q '^FAILED' "$run/gpu-check.log"; then
        say "GPU_CHECK_DEVICES=cpu scripts/gpu-check.sh ran end to end ($run/summary.md):"
        cat "$run/summary.md"
    else
        bad "GPU_CHECK_DEVICES=cpu scripts/gpu-check.sh failed (log: $run/gpu-check.log):"
        grep -E '^(FAILED|gpu-check:)' "$run/gpu-check.log" "$run.log" | head -n 20
    fi
    rm -rf "$fake"
fi
[ $fail -eq 0 ] && say "all checks passed: ready for the device" || say "not ready: fix the failures above"
exit $fail
