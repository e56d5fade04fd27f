#!/usr/bin/env bash
# Prints the path of a Python that imports PyTorch, for `cargo xtask bench --conv --against
# pytorch`: $LAYERWISE_TORCH_PYTHON when set, else target/torch-venv/bin/python, made here the
# first time (python3 -m venv, then PyPI's torch 2.15.0: its Linux wheel brings the CUDA
# libraries too, about 5 GB, which `import torch` loads even on the CPU).
# Exits 3, saying why on stderr, when python3 is missing or the install fails, or when
# LAYERWISE_TORCH_NO_INSTALL=1 and there is nothing installed yet.
set -euo pipefail
if [ -n "${LAYERWISE_TORCH_PYTHON:-}" ]; then
  echo "$LAYERWISE_TORCH_PYTHON"
  exit 0
fi
venv="$(cd "$(dirname "$0")/.." && pwd)/target/torch-venv"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import torch" 2> /dev/null; then
  echo "$venv/bin/python"
  exit 0
fi
if [ "${LAYERWISE_TORCH_NO_INSTALL:-}" = 1 ]; then
  echo "PyTorch is not installed in $venv: run scripts/torch-venv.sh once (about 5 GB)" >&2
  exit 3
fi
if ! command -v python3 > /dev/null; then
  echo "python3 not found: install Python 3.11+ to compare with PyTorch" >&2
  exit 3
fi
echo "torch-venv: installing torch 2.15.0 from PyPI into $venv (once; about 5 GB)" >&2
if ! { python3 -m venv "$venv" >&2 && "$venv/bin/pip" install -q "torch==2.15.0" >&2; }; then
  echo "torch-venv: the install failed (see above)" >&2
  exit 3
fi
echo "$venv/bin/python"
