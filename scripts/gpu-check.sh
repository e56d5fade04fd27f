#!/usr/bin/env bash
# The GPU check, on the device machine (see scripts/gpu-pack.sh): the CUDA build of
# layerwise against the CPU on the same data and the same commands, then the benchmark on
# the GPU. Everything it prints also goes to $OUT/gpu-check.log.
#   - train depth 1 and depth 2 on cuda and on cpu, evaluate both, print their accuracies;
#   - the same for a convolutional network (2 stages: 32 channels, then max-pooling and 64,
#     SGD, label smoothing; the device path of layerwise_nn::convnet), and a finetune of
#     both stages (every stage traced through dfdx's autograd);
#   - `xtask bench --device cuda` (synthetic data of CIFAR-10's shape) and
#     `xtask bench --conv --device cuda` (a grown stage's step against a cuBLAS product).
# GPU_CHECK_DEVICES="cpu" runs the flow without a GPU (to check the script itself).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
exec > >(tee "$out/gpu-check.log") 2>&1
devices=${GPU_CHECK_DEVICES:-cuda cpu}
bin=$PWD/gpu/bin
mkdir -p "$bin"
for stage in layerwise-train layerwise-evaluate xtask; do ln -sf "$PWD/gpu/xtask" "$bin/$stage"; done
# The image's CUDA 13 libraries (cuBLAS, NVRTC) come with its Python packages.
if ! ldconfig -p 2>/dev/null | grep -q libcublas.so.13; then
    libs=$(python3 - <<'PY' 2>/dev/null
import glob, os, site
roots = site.getsitepackages() + [site.getusersitepackages()]
found = {os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "nvidia", "**", "libcublas.so.13"), recursive=True)}
found |= {os.path.dirname(p) for r in roots for p in glob.glob(os.path.join(r, "nvidia", "**", "libnvrtc.so.13"), recursive=True)}
print(":".join(sorted(found)))
PY
)
    export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
data=gpu/cifar-3000.safetensors
runs=$(mktemp -d)
for dev in $devices; do
    SECONDS=0
    "$bin/layerwise-train" --data "$data" --out "$runs/$dev-1" --epochs 10 --device "$dev" --plain || echo "FAILED: train depth 1 on $dev"
    "$bin/layerwise-train" --data "$data" --from "$runs/$dev-1/model.safetensors" --out "$runs/$dev-2" --epochs 10 --device "$dev" --plain || echo "FAILED: train depth 2 on $dev"
    for d in 1 2; do
        "$bin/layerwise-evaluate" --model "$runs/$dev-$d/model.safetensors" --data "$data" --split test --out "$runs/$dev-$d/eval.json" --device "$dev" || echo "FAILED: evaluate depth $d on $dev"
    done
    echo "== $dev: ${SECONDS} s for 2 depths x 10 epochs and 2 evaluations"
done
for dev in $devices; do
    for d in 1 2; do
        python3 -c "import json,sys; e=json.load(open(sys.argv[1])); h=json.load(open(sys.argv[2])); print(f'$dev depth $d: val_acc {h[\"epochs\"][-1][\"val_accuracy\"]:.4f} test_acc {e[\"accuracy\"]:.4f} test_loss {e[\"loss\"]:.4f} epoch s {min(x[\"seconds\"] for x in h[\"epochs\"]):.3f}')" "$runs/$dev-$d/eval.json" "$runs/$dev-$d/train.json" 2>/dev/null || echo "$dev depth $d: no result"
    done
done
# The convolutional network: the same three commands on each device.
cnn="--stages 32,maxpool:64 --optimizer sgd --momentum 0.9 --nesterov --lr 0.05 --label-smoothing 0.1 --batch-size 128"
for dev in $devices; do
    SECONDS=0
    "$bin/layerwise-train" --data "$data" --out "$runs/$dev-cnn1" $cnn --epochs 4 --device "$dev" --plain || echo "FAILED: cnn stage 1 on $dev"
    "$bin/layerwise-train" --data "$data" --from "$runs/$dev-cnn1/model.safetensors" --out "$runs/$dev-cnn2" $cnn --epochs 4 --device "$dev" --plain || echo "FAILED: cnn stage 2 on $dev"
    "$bin/layerwise-train" --data "$data" --from "$runs/$dev-cnn2/model.safetensors" --out "$runs/$dev-cnnft" $cnn --regime finetune --epochs 2 --device "$dev" --plain || echo "FAILED: cnn finetune on $dev"
    for d in cnn1 cnn2 cnnft; do
        "$bin/layerwise-evaluate" --model "$runs/$dev-$d/model.safetensors" --data "$data" --split test --out "$runs/$dev-$d/eval.json" --device "$dev" || echo "FAILED: evaluate $d on $dev"
    done
    echo "== $dev: ${SECONDS} s for 2 conv stages x 4 epochs, a 2-epoch finetune and 3 evaluations"
done
for dev in $devices; do
    for d in cnn1 cnn2 cnnft; do
        python3 -c "import json,sys; e=json.load(open(sys.argv[1])); h=json.load(open(sys.argv[2])); print(f'$dev $d: val_acc {h[\"epochs\"][-1][\"val_accuracy\"]:.4f} test_acc {e[\"accuracy\"]:.4f} test_loss {e[\"loss\"]:.4f} epoch s {min(x[\"seconds\"] for x in h[\"epochs\"]):.3f}')" "$runs/$dev-$d/eval.json" "$runs/$dev-$d/train.json" 2>/dev/null || echo "$dev $d: no result"
    done
done
# A cuda checkpoint evaluated on the cpu (the contract does not depend on the device).
for dev in $devices; do
    [ "$dev" = cpu ] && continue
    "$bin/layerwise-evaluate" --model "$runs/$dev-cnn2/model.safetensors" --data "$data" --split test --out "$runs/$dev-cnn2/eval-cpu.json" --device cpu \
        && python3 -c "import json,sys; a=json.load(open(sys.argv[1])); b=json.load(open(sys.argv[2])); print(f'$dev cnn2 evaluated on cpu: {b[\"accuracy\"]:.4f} (on $dev: {a[\"accuracy\"]:.4f})')" "$runs/$dev-cnn2/eval.json" "$runs/$dev-cnn2/eval-cpu.json" \
        || echo "FAILED: evaluate the $dev cnn on cpu"
done
for dev in $devices; do
    [ "$dev" = cpu ] && continue
    "$bin/xtask" bench --device "$dev" --train 40000 --epochs 4 || echo "FAILED: bench on $dev"
    "$bin/xtask" bench --conv --device "$dev" || echo "FAILED: bench --conv on $dev"
done
