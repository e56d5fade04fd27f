#!/usr/bin/env python3
"""Same bytes, before and after a refactor: run small versions of the committed pipelines
with two xtask binaries and `cmp` every checkpoint they write.

    python3 scripts/same-bytes.py BEFORE_XTASK AFTER_XTASK [--work DIR] [--only NAME,...] [--reuse-before]

Each case is a committed pipeline made small (3,000 images, narrow layers, two epochs a
depth) by rewriting keys of its TOML, written under WORK/pipelines. Cases named `*-killed`
run once with LAYERWISE_STOP_AFTER_EPOCH=1 (the run stops after saving epoch 1's state,
as a SIGKILL between epochs would leave it), then again without it; their checkpoints are
compared with the uninterrupted run of the same pipeline by the same binary and with the
other binary's. Reads CIFAR10_DIR (default ../shared/data/cifar-10-batches-bin). Prints one
line a checkpoint and exits non-zero when any differs.
"""
import argparse
import hashlib
import os
import pathlib
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent

SMALL = {"data": {"limit_train": "3000", "limit_test": "500"}}


def edit(text, changes):
    """Set `key = value` in `[section]` (added when missing); section "" is the top."""
    lines = text.splitlines()
    for section, keys in changes.items():
        for key, value in keys.items():
            start, end = 0, len(lines)
            if section:
                head = [i for i, l in enumerate(lines) if l.strip().startswith(f"[{section}]")]
                if not head:
                    lines += ["", f"[{section}]"]
                    head = [len(lines) - 1]
                start = head[0] + 1
                nxt = [i for i in range(start, len(lines)) if lines[i].strip().startswith("[")]
                end = nxt[0] if nxt else len(lines)
            else:
                nxt = [i for i, l in enumerate(lines) if l.strip().startswith("[")]
                end = nxt[0] if nxt else len(lines)
            pat = re.compile(rf"^\s*{re.escape(key)}\s*=")
            hit = [i for i in range(start, end) if pat.match(lines[i])]
            if hit:
                lines[hit[0]] = f"{key} = {value}"
            else:
                lines.insert(end, f"{key} = {value}")
    return "\n".join(lines) + "\n"


def merge(*dicts):
    out = {}
    for d in dicts:
        for s, kv in d.items():
            out.setdefault(s, {}).update(kv)
    return out


MLP = merge(SMALL, {"train": {"width": "64", "epochs": "2"}, "greedy": {"max_depth": "2"}})
STAGES = {"finetune": {"epochs": "2"}, "baseline": {"epochs": "2"}}
AE = {"train": {"probe_epochs": "2"}}
CASES = {
    "smoke": ("smoke", {}),
    "seed": ("seed", merge(MLP, {"greedy": {"max_depth": "3"}})),
    "seed-dropout": ("seed", merge(MLP, {"train": {"dropout": "0.2", "weight_decay": "0.01", "head": '"retrain"'}})),
    "cnn-smoke": ("cnn-smoke", {"train": {"epochs": "2"}}),
    "autoencoder-tied": ("autoencoder", merge(MLP, AE, STAGES)),
    "autoencoder-untied": ("autoencoder", merge(MLP, AE, STAGES, {"train": {"decoder": '"untied"'}})),
    "bengio2007": (
        "bengio2007",
        merge(MLP, STAGES, {"autoencoder": {"epochs": "2", "probe_epochs": "2"}}),
    ),
    "compare": ("compare", merge(MLP, STAGES)),
    "finetune-augmented-adam": (
        "smoke",
        merge(SMALL, {"train": {"epochs": "2", "augment": '"flip-crop"', "lr_schedule": '"cosine"'},
                      "greedy": {"max_depth": "2"}, "finetune": {"depths": '"all"', "epochs": "2"}}),
    ),
    "cnn-finetune-augmented-adam": (
        "cnn-smoke",
        {"train": {"epochs": "2", "optimizer": '"adam"', "lr": "0.001", "augment": '"flip-crop"'},
         "greedy": {"max_depth": "2"}, "finetune": {"depths": '"all"', "epochs": "2"}},
    ),
    "seed-killed": ("seed", merge(MLP, {"greedy": {"max_depth": "3"}})),
    "cnn-smoke-killed": ("cnn-smoke", {"train": {"epochs": "2"}}),
    "autoencoder-tied-killed": ("autoencoder", merge(MLP, AE, STAGES)),
}


def checkpoints(run):
    return sorted(p.relative_to(run) for p in run.rglob("model.safetensors"))


def sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16]


def run(xtask, pipeline, run_dir, artifacts, env_extra=None, check=True):
    env = dict(os.environ, **(env_extra or {}))
    cmd = [xtask, "greedy", "--pipeline", str(pipeline), "--run-dir", str(run_dir), "--artifacts", str(artifacts),
           "--source", env.get("CIFAR10_DIR", str(ROOT.parent / "shared/data/cifar-10-batches-bin")), "--plain"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if check and r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--work", default="/tmp/same-bytes")
    ap.add_argument("--only", default="")
    ap.add_argument("--reuse-before", action="store_true", help="keep WORK/before's runs where they have checkpoints")
    a = ap.parse_args()
    work = pathlib.Path(a.work)
    (work / "pipelines").mkdir(parents=True, exist_ok=True)
    only = [c for c in a.only.split(",") if c]
    differ = 0
    t0 = time.time()
    for name, (base, changes) in CASES.items():
        if only and name not in only:
            continue
        text = (ROOT / "pipelines" / f"{base}.toml").read_text()
        pipeline = work / "pipelines" / f"{name}.toml"
        pipeline.write_text(edit(text, merge({"": {"name": f'"{name}"'}}, changes)))
        runs = {}
        for side, xtask in (("before", a.before), ("after", a.after)):
            run_dir = work / side / "runs" / name
            runs[side] = run_dir
            if side == "before" and a.reuse_before and checkpoints(run_dir):
                continue
            subprocess.run(["rm", "-rf", str(run_dir)])
            t = time.time()
            if name.endswith("-killed"):
                r = run(xtask, pipeline, run_dir, work / side, {"LAYERWISE_STOP_AFTER_EPOCH": "1"}, check=False)
                if r.returncode == 0:
                    sys.exit(f"{name} ({side}): LAYERWISE_STOP_AFTER_EPOCH=1 did not stop the run")
            run(xtask, pipeline, run_dir, work / side)
            print(f"  {name} {side}: {time.time() - t:.0f} s", flush=True)
        before, after = checkpoints(runs["before"]), checkpoints(runs["after"])
        if before != after or not before:
            print(f"DIFFER {name}: checkpoints before {list(map(str, before))}, after {list(map(str, after))}")
            differ += 1
            continue
        for rel in before:
            x, y = runs["before"] / rel, runs["after"] / rel
            same = subprocess.run(["cmp", "-s", str(x), str(y)]).returncode == 0
            differ += not same
            print(f"{'same  ' if same else 'DIFFER'} {name}/{rel} {sha(x)} {sha(y)}", flush=True)
        if name.endswith("-killed"):
            plain = work / "after" / "runs" / name.removesuffix("-killed")
            for rel in after:
                if (plain / rel).exists():
                    same = subprocess.run(["cmp", "-s", str(plain / rel), str(runs["after"] / rel)]).returncode == 0
                    differ += not same
                    print(f"{'same  ' if same else 'DIFFER'} {name}/{rel} vs uninterrupted", flush=True)
    print(f"same-bytes: {differ} differing, {time.time() - t0:.0f} s")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
