#!/usr/bin/env python3
"""The summary table of scripts/gpu-check.sh, from the JSON files it leaves in its output folder.

  python3 scripts/gpu-summary.py OUT_DIR "cuda cpu"

Three tables: correctness (relative error of the device path against the host kernels),
speed side by side (layerwise on cuda against PyTorch on the same GPU), and the end-to-end
flow. A device the check did not run on reads "not run".
"""
import json
import os
import sys

NOT_RUN = "not run"


def load(out, name):
    path = os.path.join(out, name)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def fmt_err(row):
    if row is None:
        return NOT_RUN
    num = lambda v: f"{v:.1e}" if isinstance(v, (int, float)) else str(v)
    floor = row.get("device_floor") or 0
    cell = num(row["rel_error"]) + (f" [{num(floor)}]" if floor else "")
    return cell + ("" if row["ok"] else " FAIL")


def correctness(out):
    columns = [("cuda, TF32 off", "verify-cuda-tf32off.json"), ("cuda, default", "verify-cuda-default.json"),
               ("dfdx path on cpu", "verify-cpu.json")]
    runs = [(label, load(out, f)) for label, f in columns]
    checks = []
    for _, rows in runs:
        for r in rows or []:
            if r["check"] not in checks:
                checks.append(r["check"])
    print("### Correctness: the device path against the host kernels")
    print()
    print("‖device − host‖₂ / ‖host‖₂ of the worst tensor; in brackets the device against itself on the batch in")
    print("reverse order (its own fp32 rounding). `cargo xtask verify-device` passes a check within 1e-4, or within")
    print("4× the larger reordering error of host and device (that of the host is in verify-*.json).")
    print()
    print("| check | " + " | ".join(label for label, _ in runs) + " |")
    print("| --- |" + " ---: |" * len(runs))
    if not checks:
        print("| (no check ran) |" + f" {NOT_RUN} |" * len(runs))
    for c in checks:
        cells = []
        for _, rows in runs:
            row = next((r for r in rows or [] if r["check"] == c), None)
            cells.append(fmt_err(row) + (f" ({row['worst']})" if row and not row["ok"] else ""))
        print(f"| {c} | " + " | ".join(cells) + " |")
    print()


def speed(out):
    ours = load(out, "bench-conv-cuda.json")
    torch = load(out, "torch-cuda.json")
    print("### Speed on the GPU: a conv stage's training step, images/s (ratio: layerwise / PyTorch)")
    print()
    modes = ["fp32", "tf32", "bf16-cl"]
    print("| stage | batch | layerwise cuda | PyTorch fp32 | PyTorch TF32 | PyTorch bf16 channels-last | "
          "layerwise / PyTorch fp32 | layerwise / PyTorch best |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    if ours is None and torch is None:
        print(f"| (cuda) | | {NOT_RUN} | {NOT_RUN} | {NOT_RUN} | {NOT_RUN} | | |")
        print()
        return
    keys = []
    for r in (ours or []) + (torch or []):
        if "batch" in r and (r["stage"], r["batch"]) not in keys:
            keys.append((r["stage"], r["batch"]))
    for stage, batch in keys:
        mine = next((r for r in ours or [] if r["stage"] == stage and r.get("batch") == batch), None)
        theirs = {m: next((r for r in torch or [] if r["stage"] == stage and r.get("batch") == batch
                           and r["mode"] == m), None) for m in modes}
        cell = lambda r: f"{r['images_per_s']:.0f}" if r else NOT_RUN
        ratio = lambda a, b: f"{a['images_per_s'] / b['images_per_s']:.2f}" if a and b else ""
        best = max((r for r in theirs.values() if r), key=lambda r: r["images_per_s"], default=None)
        print(f"| {stage} | {batch} | {cell(mine)} | " + " | ".join(cell(theirs[m]) for m in modes)
              + f" | {ratio(mine, theirs['fp32'])} | {ratio(mine, best)} |")
    ceiling = [r for r in (ours or []) + (torch or []) if str(r["stage"]).startswith("SGEMM")]
    for r in ceiling:
        who = "layerwise (dfdx → cuBLAS)" if r.get("framework") is None else f"PyTorch {r['mode']}"
        print(f"| {r['stage']}, {who} | | {r['gflops']:.0f} GFLOP/s | | | | | |")
    print()


def flow(out, devices):
    rows = []
    try:
        with open(os.path.join(out, "flow.jsonl")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        pass
    runs = ["mlp depth 1", "mlp depth 2", "cnn1", "cnn2", "cnnft"]
    cols = ["cuda", "cpu", "cuda→cpu"]
    print("### The flow: test accuracy (fastest epoch, s) on each device")
    print()
    print("| run | " + " | ".join(cols) + " |")
    print("| --- |" + " ---: |" * len(cols))
    for run in runs:
        cells = []
        for c in cols:
            r = next((x for x in rows if x["device"] == c and x["run"] == run), None)
            if r is None:
                ran = c.split("→")[0] in devices.split() and (c != "cuda→cpu" or run in ("mlp depth 2", "cnn2"))
                cells.append("FAILED" if ran else NOT_RUN)
            else:
                cells.append(f"{r['test_acc']:.4f} ({r['epoch_s']:.2f} s)")
        print(f"| {run} | " + " | ".join(cells) + " |")
    print()


def main():
    out = sys.argv[1]
    devices = sys.argv[2] if len(sys.argv) > 2 else "cuda cpu"
    correctness(out)
    speed(out)
    flow(out, devices)


if __name__ == "__main__":
    main()
