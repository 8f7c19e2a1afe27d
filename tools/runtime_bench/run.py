"""One benchmark run end to end: build the arms, check their logits, time them, summarise."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict
from typing import Callable

import torch

from .arms import build_arms
from .exactness import logit_checks
from .options import BenchOptions
from .stats import resolution, summarise
from .timing import run_rounds, workload_inputs


def machine(options: BenchOptions) -> dict:
    import transformers
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "load_average": [round(x, 2) for x in os.getloadavg()]}
    if options.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(options.device))
    return info


def run_benchmark(options: BenchOptions, log: Callable[[str], None] = print) -> dict:
    """Build the arms, check their logits, time the interleaved rounds: the result as a JSON-ready dict."""
    torch.set_num_threads(options.threads)
    from transformers.utils import logging as transformers_logging
    transformers_logging.disable_progress_bar()  # the bake's save/load bars would drown the rounds' log
    started = time.perf_counter()
    before = machine(options)
    arms, built = build_arms(options, log)
    vocab = arms[0].model.config.vocab_size
    inputs = workload_inputs(options, vocab)
    checks = logit_checks(arms, inputs["prefill_b1"])
    log("logit checks: " + ", ".join(f"{k} {v:.3g}" for k, v in checks.items()))
    rounds = run_rounds(arms, options, inputs, log)
    rows = [row for clock, times in rounds.times.items()
            for row in summarise(times, rounds.errors, clock)]   # a dropped clock is absent
    return {"options": asdict(options), "machine_before": before,
            "load_average_after": [round(x, 2) for x in os.getloadavg()], "built": built,
            "arms": {arm.name: arm.note for arm in arms}, "logit_checks": checks, "rows": rows,
            "resolution": resolution(rows), "raw_seconds": rounds.times,
            "wall_s": round(time.perf_counter() - started, 1),
            **({"kernel_clock_error": rounds.kernel_clock_error} if rounds.kernel_clock_error else {})}
