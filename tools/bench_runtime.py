#!/usr/bin/env python
"""Benchmark: what a compiled adapter costs at inference, against the base model and the peers.

    .venv/bin/python tools/bench_runtime.py                       # CPU, SmolLM2-135M's shape, ~10 min
    .venv/bin/python tools/bench_runtime.py --quick               # smoke run, ~1 min
    .venv/bin/python tools/bench_runtime.py --device cuda --dtype bfloat16 --shape llama-3.1-8b --baked-in-memory

Arms, all on one randomly initialised model of a real model's shape (no weights are needed for timing):

- ``base`` and ``base-again``: the plain model, twice. Their ratio is 1 by construction, so its spread is the
  benchmark's resolution: a difference smaller than base-again's confidence interval is not shown.
- ``adapter``: a masteer adapter attached with the runtime (``masteer.runtime.attach``, forward hooks).
- ``baked``: the same adapter baked with ``masteer.runtime.bake`` (its default: MLP padded to a multiple of 64)
  and loaded back with plain transformers.
- ``baked-unpadded``: the same bake with ``pad_to=0``, its MLP at the exact width (base + neurons), as bakes were
  before they padded to a multiple of 64 (``--pad-to`` sets the baked arm's multiple; 0 leaves this arm out).
- ``steering-vectors`` (0.12.2) and ``repeng`` (0.4.0): one vector added at the output of the same decoder
  blocks the adapter steers, each peer attached its own way (a forward hook; a wrapping module).

The program has a compiled adapter's shape: ``--neurons`` gated steering neurons (one ramp-gated strategy is two
neurons) at each of ``--layers`` middle layers, plus one always-on (static) vector at the middle one.

Workloads: prefill at batch 1 and batch ``--batch`` (``--prompt-tokens`` tokens, KV cache built, last logits
only), and decode at batch 1 (``generate``, greedy, exactly ``--new-tokens`` new tokens with the KV cache).
Rounds are interleaved: each round measures every arm once per workload, adjacent in time and in an order that
rotates every round, so drift of a shared machine hits all arms alike. Reported per arm: median and IQR, min-max,
and the per-round paired ratio to ``base`` with a distribution-free 95% confidence interval of its median.
An arm that fails on a workload (repeng at batch > 1 on transformers 5) is recorded with its error, not hidden.

On a CPU shared with other jobs, use one thread (the default): two threads on two busy cores were measured
30-40x slower and far noisier (OpenMP threads waiting on each other).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from runtime_bench import QUICK, SHAPES, BenchOptions, markdown_table, run_benchmark
from runtime_bench.options import DTYPES, EMBEDDED


INT_OPTIONS = ("threads", "rounds", "inner", "prompt_tokens", "new_tokens", "batch", "layers", "neurons", "pad_to",
               "seed", "depth", "max_seconds")


def default_out(options: BenchOptions, quick: bool) -> Path:
    suffix = "-quick" if quick else ""
    return Path("docs/benchmarks") / f"runtime-{options.shape}-{options.device.split(':')[0]}-{options.dtype}{suffix}.json"


def parse(argv: list[str] | None) -> tuple[BenchOptions, Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    defaults = BenchOptions()
    parser.add_argument("--shape", default=defaults.shape, help=f"{', '.join(SHAPES)} or {EMBEDDED} (real weights)")
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--dtype", default=defaults.dtype, choices=list(DTYPES))
    for name in INT_OPTIONS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None)
    parser.add_argument("--strength", type=float, default=defaults.strength)
    parser.add_argument("--baked-in-memory", action="store_true", help="merge in memory, no save/load round trip")
    parser.add_argument("--no-peers", action="store_true", help="leave out steering-vectors and repeng")
    parser.add_argument("--kernel-clock", action="store_true",
                        help="also sum the profiler's kernel times per call (a profiled call after each timed one)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, 16 prompt and 8 new tokens")
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default docs/benchmarks/runtime-*.json)")
    args = parser.parse_args(argv)
    values = {**(QUICK if args.quick else {})}
    for name in INT_OPTIONS:
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    try:
        options = BenchOptions(shape=args.shape, device=args.device, dtype=args.dtype, strength=args.strength,
                               baked_in_memory=args.baked_in_memory, peers=not args.no_peers,
                               kernel_clock=args.kernel_clock, **values)
    except ValueError as exc:   # an unknown shape, a count below 1: one line naming the option, no traceback
        parser.error(str(exc))
    return options, args.out or default_out(options, args.quick)


def main(argv: list[str] | None = None) -> int:
    options, out = parse(argv)
    from masteer.runtime.atomic import atomic_write_text
    result = run_benchmark(options)
    result["command"] = " ".join([".venv/bin/python", "tools/bench_runtime.py", *(sys.argv[1:] if argv is None
                                                                                  else argv)])
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    for clock in dict.fromkeys(row["clock"] for row in result["rows"]):
        print(markdown_table(result, clock))
        print(f"{clock} resolution (base-again ratio's 95% CI, largest distance from 1): "
              + (", ".join(f"{w} {v:.1%}" for w, v in result["resolution"].get(clock, {}).items())
                 or "none: fewer than 6 rounds give no 95% interval"))
    if "kernel_clock_error" in result:
        print(f"kernel clock dropped: {result['kernel_clock_error']}")
    print(f"load average before {result['machine_before']['load_average']} after {result['load_average_after']}; "
          f"{result['wall_s']:.0f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
