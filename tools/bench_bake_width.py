#!/usr/bin/env python
"""Benchmark: where a baked checkpoint's extra cost comes from: the wider MLP, its alignment, or the MLP biases.

    .venv/bin/python tools/bench_bake_width.py [--shape smollm2-135m] [--rounds 10] [--batch 16] [--tokens 16]
    .venv/bin/python tools/bench_bake_width.py --device cuda --dtype bfloat16 --shape llama-3.1-8b --depth 16 \
        --batch 16 --tokens 512 --inner 5 --rounds 12 --pad-to 8,16,64 --out bake-width-cuda.json   # a GPU

A baked adapter changes a Llama in two ways: ``intermediate_size`` grows by the neuron count (1536 -> 1538 on
SmolLM2), and an always-on vector becomes the MLP's output bias, which on Llama switches on ``mlp_bias`` for all
three projections (gate and up get all-zero biases too). This times the base model against copies that carry
only zero neurons and zero biases (so every variant computes the base model's logits exactly), to separate
those effects: base, a plain copy (memory placement), +bias, +K neurons, padded to a multiple of 64, and both.
Prefill at one batch, interleaved rounds, this process's CPU time (one thread; see bench_runtime.py for why)
and the wall clock (the one to read on a GPU: the work is synchronised before each reading), paired ratio to base
with a distribution-free 95% interval. ``--depth`` keeps fewer decoder layers so that all the copies of a large
shape fit on one device; each layer is timed alike, so the ratios are the full model's.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch

from masteer.runtime.bake import check_pad_to
from runtime_bench import BenchOptions
from runtime_bench.baking import zero_program
from runtime_bench.models import build_model
from runtime_bench.options import DTYPES
from runtime_bench.stats import median_interval, quantile
from runtime_bench.timing import synchronise


def variants(base, extra: int, multiples: list[int]) -> dict[str, torch.nn.Module]:
    """The base model and copies that differ from it only by zero neurons and zero biases: the exact bake width
    (``extra`` more neurons) and that width padded to each of ``multiples``, each without and with MLP biases."""
    from masteer.runtime import merge_into_model
    from masteer.runtime.bake import padded_width
    from masteer.runtime.hosts import intermediate_size
    width = intermediate_size(base)
    widths = sorted({padded_width(extra, width, m) for m in multiples} | {extra})

    def widened(neurons: int, bias: bool):
        return merge_into_model(copy.deepcopy(base), zero_program(base, neurons, bias), pad_to=0).eval()
    built = {"base": base, "copy": copy.deepcopy(base), "bias": widened(0, True)}
    for neurons in widths:
        built[f"w{width + neurons}"] = widened(neurons, False)
        built[f"w{width + neurons}+bias"] = widened(neurons, True)
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--extra", type=int, default=2, help="neurons the bake adds (a ramp gate: 2)")
    parser.add_argument("--pad-to", default="64", help="multiples to pad the width to, comma-separated")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--depth", type=int, default=0, help="decoder layers (0: the shape's own)")
    parser.add_argument("--inner", type=int, default=1, help="calls per measurement (raise it on a GPU)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks/bake-width-cpu.json"))
    args = parser.parse_args(argv)
    try:   # the runtime benchmark's own checks: an unknown shape, a count below 1, a negative depth
        options = BenchOptions(shape=args.shape, device=args.device, dtype=args.dtype, depth=args.depth,
                               threads=args.threads, rounds=args.rounds, inner=args.inner, batch=args.batch)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        multiples = [check_pad_to(int(m)) for m in str(args.pad_to).split(",") if m.strip()]
    except ValueError:
        parser.error(f"--pad-to takes whole numbers >= 0, comma-separated (0: no padding), got {args.pad_to!r}")
    if args.tokens < 1:   # BenchOptions calls its prompt length --prompt-tokens: checked here under this tool's name
        parser.error(f"--tokens must be at least 1, got {args.tokens}")
    if args.extra < 0:
        parser.error(f"--extra must be 0 or more, got {args.extra}")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    base = build_model(options)
    models = variants(base, args.extra, multiples)
    ids = torch.randint(3, base.config.vocab_size, (args.batch, args.tokens),
                        generator=torch.Generator().manual_seed(0)).to(args.device)
    times = {clock: {name: [] for name in models} for clock in ("cpu", "wall")}
    with torch.inference_mode():
        reference = base(input_ids=ids).logits
        exact = {name: float((m(input_ids=ids).logits - reference).abs().max()) for name, m in models.items()}
        del reference
        for model in models.values():  # warm-up at the timed shapes (kernel choice, allocator), not timed
            model(input_ids=ids, use_cache=True, logits_to_keep=1)
        for r in range(args.rounds):
            names = list(models)
            for name in names[r % len(names):] + names[:r % len(names)]:
                synchronise(args.device)
                cpu, wall = time.process_time(), time.perf_counter()
                for _ in range(args.inner):
                    models[name](input_ids=ids, use_cache=True, logits_to_keep=1)
                synchronise(args.device)
                times["cpu"][name].append((time.process_time() - cpu) / args.inner)
                times["wall"][name].append((time.perf_counter() - wall) / args.inner)
    rows = []
    for clock, per_model in times.items():
        for name, values in per_model.items():
            ratios = [v / b for v, b in zip(values, per_model["base"])]
            interval = median_interval(ratios)
            rows.append({"clock": clock, "variant": name, "median_ms": 1000 * quantile(values, 0.5),
                         "ratio_median": quantile(ratios, 0.5), "ratio_ci95": list(interval) if interval else None,
                         "max_abs_logit_diff_vs_base": exact[name]})
    from masteer.runtime.atomic import atomic_write_text
    result = {"command": " ".join([".venv/bin/python", "tools/bench_bake_width.py", *(argv or sys.argv[1:])]),
              "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "raw_seconds": times,
              "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print("| clock | variant | median ms | x base (median, 95% CI) | max logit diff vs base |\n|---|---|---|---|---|")
    for row in rows:
        ci = f" ({row['ratio_ci95'][0]:.3f}-{row['ratio_ci95'][1]:.3f})" if row["ratio_ci95"] else ""
        print(f"| {row['clock']} | {row['variant']} | {row['median_ms']:.1f} | {row['ratio_median']:.3f}{ci} | "
              f"{row['max_abs_logit_diff_vs_base']:.2g} |")
    print(f"load average before {result['load_average_before']} after {result['load_average_after']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
