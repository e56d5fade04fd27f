#!/usr/bin/env python3
"""The f32 product rate PyTorch's CPU build (its BLAS: MKL on x86) reaches on given shapes.

For `cargo xtask bench --pipeline` (the MLP's products beside gemm 0.19's, in the same run):
  python3 scripts/torch-matmul-bench.py --threads 2 --shapes 250x3072x256,250x256x256 --json OUT
Each shape MxKxN is an (M x K)·(K x N) product; the best of `--seconds` of products after a
warm-up is reported as GFLOP/s. Prints one line a shape; writes [{"shape", "gflops"}] as JSON.
"""
import argparse
import json
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", required=True, help="MxKxN,... ")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    ap.add_argument("--seconds", type=float, default=1.0, help="timed seconds per shape")
    ap.add_argument("--json")
    a = ap.parse_args()
    try:
        import torch
    except ImportError as e:
        print(f"torch-matmul-bench: skipped ({e})")
        return 0
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.backends.mkldnn.allow_tf32 = False
    rows = []
    for shape in a.shapes.split(","):
        try:
            m, k, n = (int(v) for v in shape.lower().split("x"))
        except ValueError:
            sys.exit(f"torch-matmul-bench: shape {shape!r} is not MxKxN")
        x, w = torch.randn(m, k), torch.randn(k, n)
        out = torch.empty(m, n)
        torch.mm(x, w, out=out)
        reps = max(1, int(2e9 / (2 * m * k * n)))
        best, start = float("inf"), time.perf_counter()
        while time.perf_counter() - start < a.seconds:
            t = time.perf_counter()
            for _ in range(reps):
                torch.mm(x, w, out=out)
            best = min(best, (time.perf_counter() - t) / reps)
        gflops = 2 * m * k * n / best / 1e9
        print(f"({m}x{k})·({k}x{n}) through PyTorch {torch.__version__} on {torch.get_num_threads()} threads: {gflops:.1f} GFLOP/s")
        rows.append({"shape": f"{m}x{k}x{n}", "gflops": gflops, "threads": torch.get_num_threads()})
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
