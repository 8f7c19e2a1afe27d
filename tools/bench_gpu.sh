#!/usr/bin/env bash
# The runtime benchmarks on a GPU in one call: what a lent GPU (15 minutes a session) runs, prepared ahead.
#
#   bash tools/bench_gpu.sh                   # a CUDA machine: Llama-3.1-8B's shape, bfloat16, under 10 minutes
#   SHAPE=tiny DEVICE=cpu PY=.venv/bin/python bash tools/bench_gpu.sh    # a rehearsal of the same steps here
#
# 1. tools/bench_bake_width.py: where a baked checkpoint's cost comes from (wider MLP, its alignment to 8, 16 or
#    64, MLP biases), on SHAPE cut to DEPTH decoder layers so its eleven copies fit on one device.
# 2. tools/bench_runtime.py: base, adapter, baked (padded to 64, the bake's default) and baked unpadded (with
#    PEERS=1 also steering-vectors and repeng) on a randomly initialised model of SHAPE (no weights are needed for
#    timing), 512-token prompts; with the kernel clock (summed GPU kernel times), since the wall clock of a
#    host-bound decode did not resolve 3% on the lent VM (with it: 0.1-0.4% on 2026-12-04).
# Results and logs go to $OUT (the device tool's folder; /tmp/bench-gpu elsewhere), to be copied into
# docs/benchmarks/. The peers and gguf travel as wheels in .whl (docs/benchmarks/runtime.md says how to fetch
# them; `carry: [".whl"]`); masteer's runtime is imported from this checkout through a folder of links, nothing
# is installed. PEERS takes 0 or 1.
set -uo pipefail
OUT=${OUT:-/tmp/bench-gpu}
SHAPE=${SHAPE:-llama-3.1-8b}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
DEPTH=${DEPTH:-16}
ROUNDS=${ROUNDS:-12}
PY=${PY:-python3}
case "${PEERS:-0}" in
    0) peers=--no-peers ;;
    1) peers= ;;
    *) echo "bench_gpu.sh: PEERS must be 0 or 1, got '${PEERS}'" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/bench-gpu-site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/bench-gpu-site${PYTHONPATH:+:$PYTHONPATH}
fi
links=$(mktemp -d)/masteer-src
mkdir -p "$links/masteer" && ln -s "$PWD/runtime" "$links/masteer/runtime"
export PYTHONPATH=$links${PYTHONPATH:+:$PYTHONPATH}   # set -u: unset when no peer wheels were carried
{ date -u; nvidia-smi 2>/dev/null || echo "no nvidia-smi"; "$PY" -c "import torch, transformers;
print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"; } \
    2>&1 | tee "$OUT/machine.txt"
tag="$SHAPE-${DEVICE%%:*}-$DTYPE"
timeout "${WIDTH_TIMEOUT:-170}" "$PY" tools/bench_bake_width.py --device "$DEVICE" --dtype "$DTYPE" --shape "$SHAPE" \
    --depth "$DEPTH" --batch 16 --tokens 512 --inner 5 --rounds "$ROUNDS" --pad-to 8,16,64 \
    --out "$OUT/bake-width-$tag.json" 2>&1 | tee "$OUT/bake-width-$tag.log"
echo "bench_bake_width rc ${PIPESTATUS[0]}"
# Rounds on the 8B shape with the kernel clock took 50-57 s with the five own arms and 74-82 s with the two peers
# as well (2026-12-04, 18:01-18:11; the profiled calls cost more than the estimate of 35 s written here before),
# and a 95% interval needs 6 rounds: so the peers are left out unless PEERS=1 (their wall clock was measured at
# 11:59 that day with 12 rounds, their kernel clock at 18:01 with 3), and rounds start for 300 s (6 rounds; the whole script about 8.5 minutes).
# RUNTIME_EXTRA: more bench_runtime.py options, which override these.
timeout "${RUNTIME_TIMEOUT:-400}" "$PY" tools/bench_runtime.py --device "$DEVICE" --dtype "$DTYPE" --shape "$SHAPE" \
    --baked-in-memory --prompt-tokens 512 --inner 2 --rounds "$ROUNDS" --max-seconds 300 --kernel-clock $peers \
    ${RUNTIME_EXTRA:-} \
    --out "$OUT/runtime-$tag.json" 2>&1 | tee "$OUT/runtime-$tag.log"
echo "bench_runtime rc ${PIPESTATUS[0]}"
