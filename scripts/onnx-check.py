"""Check an exported model from Python, as a user would run it (used by xtask/tests/export.rs).

usage: onnx-check.py MODEL.safetensors MODEL.onnx PIXELS.f32 EXPECTED.f64 N
PIXELS.f32: N images, float32 [N, C, H, W], values 0-255 (CHW, RGB).
EXPECTED.f64: layerwise-predict's probabilities, float64 [N, classes].
Prints the largest difference of each way of running the model; exits 1 above 1e-5.
"""
import json
import sys

import numpy as np
import onnxruntime
import safetensors.numpy
from safetensors import safe_open

ckpt, onnx_path, pixels_path, expected_path, n = sys.argv[1:6]
n = int(n)

# The ONNX file, in one line.
pixels = np.fromfile(pixels_path, dtype=np.float32)
pixels = pixels.reshape(n, -1)
with safe_open(ckpt, "np") as f:
    contract = json.loads(f.metadata()["layerwise"])["meta"]["input"]
c, h, w = contract["shape"]
pixels = pixels.reshape(n, c, h, w)
probs_onnx = onnxruntime.InferenceSession(onnx_path).run(None, {"pixels": pixels})[0]

expected = np.fromfile(expected_path, dtype=np.float64).reshape(n, -1)
d_onnx = float(np.abs(probs_onnx - expected).max())
same_class = bool((probs_onnx.argmax(1) == expected.argmax(1)).all())
with safe_open(ckpt, "np") as f:
    convolutional = json.loads(f.metadata()["layerwise"])["meta"].get("cnn") is not None
if convolutional:  # the guide's numpy lines are the MLP's (scripts/cnn-forward.py runs a CNN)
    print(f"max |onnx - predict| = {d_onnx:.3g} over {n} images")
    print(f"same top class for every image: {same_class}")
    sys.exit(0 if d_onnx <= 1e-5 and same_class else 1)

# The checkpoint with numpy (the guide's lines): x is the input contract's row per image.
x = pixels.reshape(n, -1) / 255.0
mean = np.repeat(np.array(contract["mean"]), h * w)
std = np.repeat(np.array(contract["std"]), h * w)
x = ((x - mean) / std).astype(np.float32)
# the guide's three lines (docs/guide.md), as they are there:
w = safetensors.numpy.load_file(ckpt)
for i in range(sum(k.endswith(".weight") for k in w if k.startswith("hidden."))): x = np.maximum(x @ w[f"hidden.{i}.weight"].T + w[f"hidden.{i}.bias"], 0)
logits = x @ w["head.weight"].T + w["head.bias"]
e = np.exp(logits - logits.max(axis=1, keepdims=True))
probs_numpy = e / e.sum(axis=1, keepdims=True)

d_numpy = float(np.abs(probs_numpy - expected).max())
print(f"max |onnx - predict| = {d_onnx:.3g}, max |numpy - predict| = {d_numpy:.3g} over {n} images")
print(f"same top class for every image: {same_class}")
sys.exit(0 if d_onnx <= 1e-5 and d_numpy <= 1e-5 and same_class else 1)
