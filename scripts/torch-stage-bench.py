#!/usr/bin/env python3
"""The same greedy conv stage step as `cargo xtask bench --conv`, in PyTorch, for a side-by-side.

Each stage of pipelines/cnn.toml, on its cached (already downsampled) input: a 3x3
convolution without bias, BatchNorm, ReLU, the k = 1 head (2x2 adaptive average pooling and
a linear layer), label-smoothed cross-entropy (0.1), SGD with Nesterov momentum 0.9 and
weight decay 5e-4: one optimizer step, on the next batch of a shuffled pass over a cached
input of 512 MiB (at least one batch; as `cargo xtask bench --conv` draws its batches, and
as an epoch reads a 45,000-image cached input), the batch indexed out of it in the step.
Modes, as a user would run them:
  fp32     TF32 off for matmul and cuDNN (the arithmetic layerwise does);
  tf32     TF32 on (PyTorch's cuDNN default);
  bf16-cl  channels-last, autocast to bfloat16, TF32 on.
A step is timed as the mean of a block of steps between two synchronizations (PyTorch does
not wait for each step). The ceiling: an 8192^3 fp32 product with TF32 off and on.

  python3 scripts/torch-stage-bench.py --device cuda --batch 128,512 --json OUT.json
With --matmul M1xK1xN1,... it times only those fp32 products (rows labelled MxKxN, with
GFLOP/s), for `cargo xtask bench --pipeline`'s machine-best table.
Prints one table; writes the rows as JSON with --json. Exits 0 with a printed reason where
torch is missing (so a caller can go on).
"""
import argparse
import json
import os
import sys
import time

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = None


# Bytes of cached input the batches are drawn from (xtask/src/bench_conv.rs's POOL_BYTES).
POOL_BYTES = 512 << 20


def stages_of(pipeline):
    """(label, in channels, out channels, side) of each stage's conv block, 3x32x32 images."""
    if tomllib is None:
        sys.exit("torch-stage-bench: needs Python 3.11+ (tomllib)")
    with open(pipeline, "rb") as f:
        spec = tomllib.load(f)["model"]["stages"]
    c, side, out = 3, 32, []
    for i, s in enumerate(spec):
        down = s.get("downsample", "none")
        if down == "maxpool":
            side //= 2
        elif down == "psi":
            side //= 2
            c *= 4
        out.append((f"stage {i + 1} ({c}→{s['out']}, {side}×{side})", c, s["out"], side))
        c = s["out"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", default="128,512")
    ap.add_argument("--modes", default="fp32,tf32,bf16-cl")
    ap.add_argument("--seconds", type=float, default=1.0, help="timed seconds per row")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    ap.add_argument("--pipeline", default=os.path.join(os.path.dirname(__file__), "..", "pipelines", "cnn.toml"))
    ap.add_argument("--matmul", help="time only these products instead of the stages: MxKxN,...")
    ap.add_argument("--json")
    a = ap.parse_args()
    try:
        shapes = [tuple(int(v) for v in sh.lower().split("x")) for sh in a.matmul.split(",")] if a.matmul else []
        if any(len(sh) != 3 for sh in shapes):
            raise ValueError
    except ValueError:
        sys.exit(f"torch-stage-bench: --matmul {a.matmul!r} is not a list of MxKxN")
    try:
        import torch
        import torch.nn as nn
    except ImportError as e:
        print(f"torch-stage-bench: skipped: PyTorch is not installed here ({e})")
        return 0
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("torch-stage-bench: skipped: torch sees no CUDA device")
        return 0
    if a.threads:
        torch.set_num_threads(a.threads)
    cudnn = torch.backends.cudnn.version() if dev.type == "cuda" else None
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {name}; cuDNN {cudnn}; threads {torch.get_num_threads()}")

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def set_tf32(on):
        torch.backends.cuda.matmul.allow_tf32 = on
        torch.backends.cudnn.allow_tf32 = on

    def timed(step):
        for _ in range(3):
            step()
        sync()
        n, t0 = 0, time.perf_counter()
        block = 5
        while True:
            for _ in range(block):
                step()
            sync()
            n += block
            if time.perf_counter() - t0 >= a.seconds:
                break
        return (time.perf_counter() - t0) / n

    rows = []
    print("| stage | batch | mode | ms a step | images/s |")
    print("| --- | ---: | --- | ---: | ---: |")
    for batch in [] if a.matmul else [int(b) for b in a.batch.split(",")]:
        for label, c, out, side in stages_of(a.pipeline):
            for mode in a.modes.split(","):
                set_tf32(mode != "fp32")
                model = nn.Sequential(
                    nn.Conv2d(c, out, 3, padding=1, bias=False),
                    nn.BatchNorm2d(out),
                    nn.ReLU(inplace=True),
                    nn.AdaptiveAvgPool2d(2),
                    nn.Flatten(),
                    nn.Linear(4 * out, 10),
                ).to(dev)
                images = max(POOL_BYTES // (4 * c * side * side), batch)
                x_all = torch.randn(images, c, side, side, device=dev)
                y_all = torch.randint(0, 10, (images,), device=dev)
                if mode == "bf16-cl":
                    model = model.to(memory_format=torch.channels_last)
                    x_all = x_all.contiguous(memory_format=torch.channels_last)
                gen = torch.Generator().manual_seed(0)
                order, at = None, images
                opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
                loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
                amp = mode == "bf16-cl"

                def step():
                    nonlocal order, at
                    if at + batch > images:
                        order, at = torch.randperm(images, generator=gen).to(dev), 0
                    idx = order[at:at + batch]
                    at += batch
                    x, y = x_all[idx], y_all[idx]
                    opt.zero_grad(set_to_none=True)
                    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                        loss = loss_fn(model(x), y)
                    loss.backward()
                    opt.step()

                s = timed(step)
                print(f"| {label} | {batch} | {mode} | {s * 1e3:.2f} | {batch / s:.0f} |")
                rows.append({"framework": "pytorch", "device": a.device, "stage": label, "batch": batch,
                             "mode": mode, "ms": s * 1e3, "images_per_s": batch / s})
    # Products: the GPU's ceiling, and the --matmul shapes (labelled MxKxN).
    products = [(8192, 8192, 8192, "SGEMM 8192^3")] if dev.type == "cuda" and not a.matmul else []
    products += [(m, k, n, f"{m}x{k}x{n}") for m, k, n in shapes]
    for m, k, n, label in products:
        p = torch.randn(m, k, device=dev)
        q = torch.randn(k, n, device=dev)
        for mode in ("fp32", "tf32") if dev.type == "cuda" else ("fp32",):
            set_tf32(mode == "tf32")
            s = timed(lambda: torch.mm(p, q))
            g = 2 * m * k * n / s / 1e9
            print(f"| {label} ({mode}) | | | {s * 1e3:.2f} | {g:.0f} GFLOP/s |")
            rows.append({"framework": "pytorch", "device": a.device, "stage": label, "mode": mode,
                         "ms": s * 1e3, "gflops": g})
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
