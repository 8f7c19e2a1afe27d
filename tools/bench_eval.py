#!/usr/bin/env python
"""Benchmark: how long `masteer eval` takes on the default suite subset, from a cold cache.

    .venv/bin/python tools/bench_eval.py --adapter out/refusal [--threads 2] [--out out/bench_eval]

Runs exactly what `masteer eval --adapter DIR` runs (the base model and the adapter, the default
suites: refusal, over-refusal, over-refusal-benign, mmlu, perplexity, kl, with their default sizes),
with the result cache emptied first, on ``--threads`` CPU threads. Prints the wall time per phase
and writes ``bench_eval.json`` (times, suite sizes, machine load) into ``--out`` beside the report.
The budget is 10 minutes on 2 CPU cores; the script exits 1 when it is exceeded. A busy machine
(load average above the thread count, shown in the output) makes the wall time pessimistic, so the
process's CPU time is reported too: CPU seconds / threads is what the run needs on idle cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

BUDGET_S = 600.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapter", default="out/refusal", help="adapter folder (e.g. from masteer-compile)")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="out/bench_eval")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="seconds allowed (default 600)")
    args = parser.parse_args(argv)
    if not (Path(args.adapter) / "adapter_config.json").is_file():
        print(f"no adapter at {args.adapter}: compile one first, e.g. .venv/bin/masteer-compile refusal "
              f"--out {args.adapter}", file=sys.stderr)
        return 2

    import torch
    torch.set_num_threads(args.threads)
    from masteer.compiler.evaluation import DEFAULT_SUITES, EvalOptions, run_eval

    load_before = os.getloadavg()
    lines: list[str] = []
    start = time.perf_counter()
    report, paths = run_eval(EvalOptions(model=args.model, adapters=(args.adapter,), out=args.out, resume=False,
                                         progress=False), log=lines.append)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    result = {
        "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "idle_estimate_s": round(cpu / args.threads, 1),
        "budget_s": args.budget, "within_budget": wall <= args.budget,
        "phases_s": {k: round(v, 1) for k, v in report.timings.items()},
        "suites": {s.name: s.suite["n"] for s in report.suites}, "default_suites": list(DEFAULT_SUITES),
        "arms": report.arms, "threads": args.threads, "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(), "torch": torch.__version__,
        "command": f"{sys.executable} tools/bench_eval.py --adapter {args.adapter} --threads {args.threads}",
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bench_eval.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"default suites {', '.join(result['suites'])} (items {sum(result['suites'].values())} x "
          f"{len(report.arms)} arms) on {args.threads} threads: {wall:.0f} s wall, {cpu:.0f} CPU s "
          f"(~{cpu / args.threads:.0f} s on idle cores; budget {args.budget:.0f} s)")
    for phase, seconds in result["phases_s"].items():
        print(f"  {phase:24s} {seconds:7.1f} s")
    print(f"  load average before/after: {result['load_average_before']} / {result['load_average_after']}")
    print(f"wrote {Path(args.out) / 'bench_eval.json'} and the report: {', '.join(map(str, paths.values()))}")
    return 0 if result["within_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
