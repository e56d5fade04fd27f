#!/usr/bin/env bash
# The one GPU check, on the device machine (prepared by scripts/gpu-pack.sh, checked first
# by scripts/gpu-preflight.sh). One call of at most 7 minutes; everything goes under $OUT:
#   gpu-check.log   all that it printed
#   summary.md      the summary table (scripts/gpu-summary.py over the JSON files below)
#   verify-*.json   correctness: per conv stage shape of pipelines/cnn.toml and for the MLP,
#                   logits and every gradient of the cuda path against the host kernels, as
#                   relative errors, with TF32 off (NVIDIA_TF32_OVERRIDE=0) and at the default
#   bench-conv-cuda.json, torch-cuda.json
#                   speed, side by side: each stage's training step (batch 128 and 512) in
#                   layerwise on cuda and in the image's PyTorch on the same GPU (fp32, TF32,
#                   bf16 channels-last), and an 8192^3 SGEMM through cuBLAS as the ceiling
#   flow.jsonl      the end-to-end flow: MLP depths 1-2 and a 2-stage CNN with a fine-tune,
#                   trained and evaluated on each device, a cuda checkpoint evaluated on cpu
# GPU_CHECK_DEVICES="cpu" runs it without a GPU (cuda rows then say "not run");
# GPU_CHECK_BIN names the binary (default gpu/xtask, as gpu-pack.sh leaves it).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
exec > >(tee "$out/gpu-check.log") 2>&1
devices=${GPU_CHECK_DEVICES:-cuda cpu}
xtask=$(realpath "${GPU_CHECK_BIN:-gpu/xtask}")
data=${GPU_CHECK_DATA:-gpu/cifar-3000.safetensors}
[ -x "$xtask" ] || { echo "gpu-check: no binary at $xtask (run scripts/gpu-pack.sh here first)"; exit 1; }
[ -f "$data" ] || { echo "gpu-check: no dataset at $data (run scripts/gpu-pack.sh here first)"; exit 1; }
bin=$(mktemp -d)
# The binary is every stage: called by a stage's name, it is that stage.
for stage in layerwise-train layerwise-evaluate xtask; do ln -sf "$xtask" "$bin/$stage"; done
started=$SECONDS
step() { echo; echo "== [$((SECONDS - started)) s] $*"; }
# The image's CUDA 13 libraries (cuBLAS, NVRTC, the runtime; cuDNN for later) come with its
# Python packages; the driver's libcuda.so.1 is the machine's own.
if ! ldconfig -p 2>/dev/null | grep -q libcublas.so.13; then
    libs=$(python3 - <<'PY' 2>/dev/null
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
names = ["libcublas.so.13", "libcublasLt.so.13", "libnvrtc.so.13", "libcudart.so.13", "libcudnn.so.9"]
found = {os.path.dirname(p) for r in roots for n in names for p in glob.glob(os.path.join(r, "nvidia", "**", n), recursive=True)}
print(":".join(sorted(found)))
PY
)
    export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
# dfdx compiles a few kernels at run time (NVRTC) with include paths baked in at build time
# (gpu/runtime-paths, written by gpu-pack.sh): recreate any that is missing here, dfdx's
# headers from gpu/dfdx-include and the CUDA headers from this machine's toolkit.
cuda_include=""
for c in /usr/local/cuda/include $(python3 -c 'import site,glob; print(" ".join(glob.glob(site.getsitepackages()[0] + "/nvidia/cu13/include")))' 2>/dev/null); do
    [ -f "$c/cuda_fp16.h" ] && { cuda_include=$c; break; }
done
while read -r kind path; do
    [ -n "$path" ] && [ ! -e "$path" ] || continue
    case $kind in
        dfdx-include) src=$PWD/gpu/dfdx-include ;;
        cuda-include) src=$cuda_include ;;
        *) continue ;;
    esac
    [ -n "$src" ] || { echo "gpu-check: no CUDA headers (cuda_fp16.h) found for $path"; continue; }
    mkdir -p "$(dirname "$path")" && ln -s "$src" "$path" && echo "gpu-check: $path -> $src (NVRTC include path)"
done < <(cat gpu/runtime-paths 2>/dev/null)
step "the machine"
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
ldd --version 2>/dev/null | head -n1
nproc
echo "ldd $xtask:"
ldd "$xtask"

step "correctness: the device path against the host kernels"
for dev in $devices; do
    if [ "$dev" = cuda ]; then
        NVIDIA_TF32_OVERRIDE=0 timeout 90 "$bin/xtask" verify-device --device cuda --json "$out/verify-cuda-tf32off.json" \
            || echo "FAILED: verify-device on cuda, TF32 off"
        timeout 90 "$bin/xtask" verify-device --device cuda --json "$out/verify-cuda-default.json" \
            || echo "FAILED: verify-device on cuda, default TF32"
    else
        timeout 120 "$bin/xtask" verify-device --device "$dev" --json "$out/verify-$dev.json" || echo "FAILED: verify-device on $dev"
    fi
done

for dev in $devices; do
    [ "$dev" = cpu ] && continue
    step "speed on $dev: layerwise"
    timeout 150 "$bin/xtask" bench --conv --device "$dev" --batch 128,512 --json "$out/bench-conv-$dev.json" \
        || echo "FAILED: bench --conv on $dev"
    step "speed on $dev: PyTorch, the same steps"
    timeout 150 python3 scripts/torch-stage-bench.py --device "$dev" --batch 128,512 --json "$out/torch-$dev.json" \
        || echo "FAILED: torch-stage-bench on $dev"
done

runs=$(mktemp -d)
record() { # device, what, run folder: one line of flow.jsonl
    python3 - "$1" "$2" "$3/eval.json" "$3/train.json" >>"$out/flow.jsonl" <<'PY' || echo "$1 $2: no result"
import json, sys
dev, what, ev, tr = sys.argv[1:]
e, h = json.load(open(ev)), json.load(open(tr))
print(json.dumps({"device": dev, "run": what, "test_acc": e["accuracy"], "test_loss": e["loss"],
                  "val_acc": h["epochs"][-1]["val_accuracy"], "epoch_s": min(x["seconds"] for x in h["epochs"])}))
PY
}
: >"$out/flow.jsonl"
for dev in $devices; do
    step "flow on $dev: MLP depths 1 and 2"
    train() { timeout 120 "$bin/layerwise-train" --data "$data" --device "$dev" --plain "$@"; }
    evaluate() { timeout 60 "$bin/layerwise-evaluate" --model "$runs/$dev-$1/model.safetensors" --data "$data" --split test --out "$runs/$dev-$1/eval.json" --device "$dev"; }
    SECONDS_AT=$SECONDS
    train --out "$runs/$dev-1" --epochs 10 || echo "FAILED: train depth 1 on $dev"
    train --from "$runs/$dev-1/model.safetensors" --out "$runs/$dev-2" --epochs 10 || echo "FAILED: train depth 2 on $dev"
    for d in 1 2; do evaluate $d && record "$dev" "mlp depth $d" "$runs/$dev-$d" || echo "FAILED: evaluate depth $d on $dev"; done
    step "flow on $dev: CNN, 2 stages (32, maxpool:64) and a fine-tune"
    cnn="--stages 32,maxpool:64 --optimizer sgd --momentum 0.9 --nesterov --lr 0.05 --label-smoothing 0.1 --batch-size 128"
    train --out "$runs/$dev-cnn1" $cnn --epochs 4 || echo "FAILED: cnn stage 1 on $dev"
    train --from "$runs/$dev-cnn1/model.safetensors" --out "$runs/$dev-cnn2" $cnn --epochs 4 || echo "FAILED: cnn stage 2 on $dev"
    train --from "$runs/$dev-cnn2/model.safetensors" --out "$runs/$dev-cnnft" $cnn --regime finetune --epochs 2 || echo "FAILED: cnn finetune on $dev"
    for d in cnn1 cnn2 cnnft; do evaluate $d && record "$dev" "$d" "$runs/$dev-$d" || echo "FAILED: evaluate $d on $dev"; done
    echo "flow on $dev: $((SECONDS - SECONDS_AT)) s"
done
for dev in $devices; do
    [ "$dev" = cpu ] && continue
    step "a $dev checkpoint evaluated on the cpu"
    for d in 2 cnn2; do
        label=$([ "$d" = 2 ] && echo "mlp depth 2" || echo "$d")
        mkdir -p "$runs/$dev-$d-on-cpu"
        timeout 60 "$bin/layerwise-evaluate" --model "$runs/$dev-$d/model.safetensors" --data "$data" --split test \
            --out "$runs/$dev-$d-on-cpu/eval.json" --device cpu \
            && cp "$runs/$dev-$d/train.json" "$runs/$dev-$d-on-cpu/" && record "$dev→cpu" "$label" "$runs/$dev-$d-on-cpu" \
            || echo "FAILED: evaluate the $dev $d checkpoint on cpu"
    done
    step "MLP throughput on $dev (xtask bench)"
    timeout 90 "$bin/xtask" bench --device "$dev" --train 40000 --epochs 3 || echo "FAILED: bench on $dev"
done

step "summary"
python3 scripts/gpu-summary.py "$out" "$devices" | tee "$out/summary.md"
echo "gpu-check: $((SECONDS - started)) s in all"
