"""Time a whole compile the way a user runs it, and record where the time and memory went.

    .venv/bin/python tools/bench_compile.py                                   # masteer-compile refusal, defaults
    .venv/bin/python tools/bench_compile.py --json docs/benchmarks/compile-smollm2.json
    .venv/bin/python tools/bench_compile.py --model qwen2.5-coder-0.5b-instruct -- --no-suites

Runs ``masteer-compile RECIPE --out <temp> --quiet [extra arguments]`` as a child process, then reads the
compile report's seconds per stage and reports the wall time, the child's peak resident memory
(``getrusage``), the load average before and after (a second process on a 2-core machine slows a compile
far more than its share: read the numbers with it) and whether the activation capture was stored already.
Speed goals live here, not in timed tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default="refusal")
    parser.add_argument("--model", help="a model name or folder (default: the embedded SmolLM2)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--keep", type=Path, help="copy the compiled adapter folder here (to compare programs)")
    parser.add_argument("extra", nargs="*", help="more masteer-compile arguments, after --")
    args = parser.parse_args(argv)
    from masteer.runtime.atomic import atomic_write_text

    compile_cmd = Path(sys.executable).with_name("masteer-compile")
    with tempfile.TemporaryDirectory(prefix="masteer-bench-compile-") as tmp:
        out = Path(tmp) / "adapter"
        command = [str(compile_cmd), args.recipe, "--out", str(out), "--quiet", *args.extra]
        if args.model:
            command += ["--model", args.model]
        load_before = os.getloadavg()
        start = time.perf_counter()
        run = subprocess.run(command, capture_output=True, text=True)
        wall = time.perf_counter() - start
        load_after = os.getloadavg()
        if run.returncode != 0:
            sys.stderr.write(run.stdout[-3000:] + run.stderr[-3000:])
            print(f"bench_compile: masteer-compile failed (exit {run.returncode})", file=sys.stderr)
            return run.returncode
        report = json.loads((out / "compile_report.json").read_text())
        if args.keep:
            shutil.copytree(out, args.keep, dirs_exist_ok=True)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    evaluation = report.get("evaluation") or {}
    result = {"command": " ".join(["masteer-compile", args.recipe, "--quiet", *args.extra]
                                  + (["--model", args.model] if args.model else [])),
              "model": report.get("base_model"), "commit": git_commit(), "date": time.strftime("%Y-%m-%d"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "capture_stored": "reusing the stored capture" in run.stderr,
              "base_results_stored": "base results: reusing" in run.stderr,
              "selection_precision": report.get("selection_precision"),
              "wall_s": round(wall, 1), "peak_rss_gib": round(peak_kib / 2**20, 2),
              "load_average_before": [round(x, 2) for x in load_before],
              "load_average_after": [round(x, 2) for x in load_after],
              "compile_s": report.get("timings_s", {}), "evaluation_s": evaluation.get("timings_s", {}),
              "program": [s["name"] for s in report["program"]["strategies"]]}
    print(json.dumps(result, indent=2))
    if args.json:
        atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
