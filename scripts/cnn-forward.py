#!/usr/bin/env python3
"""A convolutional layerwise checkpoint (version 2) run in numpy, written from its interop
contract alone (ARCHITECTURE.md, "Checkpoint version 2"): the tensor names and layouts and
the metadata keys `layerwise.stages`, `layerwise.head` and `layerwise.batchnorm`.

    python3 scripts/cnn-forward.py MODEL.safetensors DATASET.safetensors [SPLIT]

prints {"split": ..., "samples": N, "accuracy": A} for the dataset's prepared (already
normalized) images of SPLIT (default test). The same network in PyTorch is
    nn.Sequential(*[Stage(downsample, in, out) ...], Head(...))
with Stage = [MaxPool2d(2) | PixelUnshuffle(2)], Conv2d(in, out, 3, padding=1,
bias=False), BatchNorm2d(out, eps, momentum), ReLU; Head = convs, AdaptiveAvgPool2d(2),
Flatten, Linear.
"""
import json
import sys

import numpy as np
from safetensors import safe_open


def load(path):
    with safe_open(path, "numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def conv3x3(x, w):
    """3x3 convolution, stride 1, padding 1, no bias: x [n, c, h, w], w [out, c, 3, 3]."""
    n, c, h, wd = x.shape
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    taps = np.stack([p[:, :, dy:dy + h, dx:dx + wd] for dy in range(3) for dx in range(3)], axis=2)
    return np.einsum("nckhw,ock->nohw", taps, w.reshape(w.shape[0], c, 9), optimize=True)


def block(x, t, prefix, eps):
    """Conv, BatchNorm with its running statistics, ReLU."""
    y = conv3x3(x, t[prefix + ".conv.weight"])
    scale = t[prefix + ".bn.weight"] / np.sqrt(t[prefix + ".bn.running_var"] + eps)
    shift = t[prefix + ".bn.bias"] - t[prefix + ".bn.running_mean"] * scale
    return np.maximum(y * scale[None, :, None, None] + shift[None, :, None, None], 0.0)


def downsample(x, kind):
    n, c, h, w = x.shape
    if kind == "maxpool":
        return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
    if kind == "psi":  # PixelUnshuffle(2): channel 4c + 2dy + dx holds pixel (2y+dy, 2x+dx)
        return x.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 3, 5, 2, 4).reshape(n, 4 * c, h // 2, w // 2)
    return x


def adaptive_avg_pool(x, out):
    """PyTorch's AdaptiveAvgPool2d(out): window i covers [floor(i*L/out), ceil((i+1)*L/out))."""
    n, c, h, w = x.shape
    y = np.zeros((n, c, out, out), dtype=x.dtype)
    for i in range(out):
        y0, y1 = i * h // out, -(-(i + 1) * h // out)
        for j in range(out):
            x0, x1 = j * w // out, -(-(j + 1) * w // out)
            y[:, :, i, j] = x[:, :, y0:y1, x0:x1].mean(axis=(2, 3))
    return y


def logits(t, meta, images):
    stages = json.loads(meta["layerwise.stages"])
    head = json.loads(meta["layerwise.head"])
    eps = json.loads(meta["layerwise.batchnorm"])["eps"]
    x = images
    for i, s in enumerate(stages):
        x = block(downsample(x, s["downsample"]), t, f"stages.{i}", eps)
    for j in range(head["convs"]):
        x = block(x, t, f"head.convs.{j}", eps)
    f = adaptive_avg_pool(x, head["pool"]).reshape(x.shape[0], -1)  # torch.flatten: channel-major
    return f @ t["head.linear.weight"].T + t["head.linear.bias"]


def main():
    model, data = sys.argv[1], sys.argv[2]
    split = sys.argv[3] if len(sys.argv) > 3 else "test"
    t, meta = load(model)
    image = json.loads(meta["layerwise"])["meta"]["cnn"]["image"]
    with safe_open(data, "numpy") as f:
        images = f.get_tensor(f"{split}.images").reshape(-1, *image).astype(np.float64)
        labels = f.get_tensor(f"{split}.labels")
    t = {k: v.astype(np.float64) for k, v in t.items()}
    correct = 0
    for s in range(0, len(labels), 100):
        correct += int((logits(t, meta, images[s:s + 100]).argmax(axis=1) == labels[s:s + 100]).sum())
    print(json.dumps({"split": split, "samples": int(len(labels)), "accuracy": correct / len(labels)}))


if __name__ == "__main__":
    main()
