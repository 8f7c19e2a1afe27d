"""Workloads and the interleaved timing rounds."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .arms import Arm
from .options import CLOCKS, KERNELS, WORKLOADS, BenchOptions, clocks


@dataclass
class Rounds:
    """What the interleaved rounds measured: ``times[clock][workload][arm]`` is seconds per round, ``errors``
    the arms whose warm-up raised (``{workload: {arm: error}}``, left out of the rounds), and
    ``kernel_clock_error`` why the profiler's clock was dropped, if it was (the other clocks went on)."""
    times: dict[str, dict[str, dict[str, list[float]]]]
    errors: dict[str, dict[str, str]]
    kernel_clock_error: str | None = None


def workload_inputs(options: BenchOptions, vocab: int) -> dict[str, dict]:
    """Random token ids (no special ids, no padding), one input set per workload."""
    gen = torch.Generator().manual_seed(options.seed + 3)

    def ids(batch: int) -> dict:
        tokens = torch.randint(3, vocab, (batch, options.prompt_tokens), generator=gen).to(options.device)
        return {"input_ids": tokens, "attention_mask": torch.ones_like(tokens)}
    return {"prefill_b1": ids(1), "prefill_batch": ids(options.batch), "decode_b1": ids(1)}


def workload_call(name: str, model, inputs: dict, new_tokens: int) -> Callable[[], object]:
    if name.startswith("prefill"):
        return lambda: model(**inputs, use_cache=True, logits_to_keep=1)

    def decode():
        out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=0)
        if out.shape[1] != inputs["input_ids"].shape[1] + new_tokens:
            raise RuntimeError(f"decode produced {out.shape[1] - inputs['input_ids'].shape[1]} tokens, "
                               f"not {new_tokens}")
        return out
    return decode


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(arm: Arm, call: Callable[[], object], device: str, inner: int, warm: bool = False) -> tuple[float, float]:
    """(wall, CPU) seconds per call: ``inner`` calls back to back with the arm switched on, device work included;
    with ``warm``, one untimed call first (a GPU that idled through a host-bound decode starts a prefill slower).

    The CPU seconds are this process's, all threads: on a CPU shared with other jobs they count the work done,
    not the time spent waiting for a core, so they are far less noisy than the wall clock there. On a GPU they
    mean little (the host waits); read the wall clock."""
    with arm.active():
        if warm:
            call()
        synchronise(device)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(inner):
            call()
        synchronise(device)
        return (time.perf_counter() - wall) / inner, (time.process_time() - cpu) / inner


def kernel_seconds(arm: Arm, call: Callable[[], object], device: str) -> float:
    """Seconds of work of one call by the profiler: the self times of every GPU kernel (or, on a CPU, of every
    operator) summed, in a profiled call of its own (profiling slows the host, so it never shares a call with the
    wall clock; kernel times barely vary, so one call is enough).

    Why a third clock: on a lent GPU the wall clock of a host-bound decode wandered 2x between rounds (845-1575
    ms for the same 32 tokens of an 8B shape, resolution 17%), so it could not tell 3% apart. The kernels' summed
    time is what an arm adds to the device's work whatever the host's speed, which is the cost a server that
    feeds the GPU well (CUDA graphs, vLLM) would see. It leaves out launch overhead: read it beside the wall."""
    from torch.profiler import ProfilerActivity, profile
    cuda = device.startswith("cuda")
    with arm.active(), profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
        call()
        synchronise(device)
    if cuda:
        total_us = sum(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) or 0
                       for e in prof.key_averages())
    else:
        total_us = sum(e.self_cpu_time_total for e in prof.key_averages())
    if total_us <= 0:
        raise RuntimeError(f"the profiler recorded no {'kernel' if cuda else 'operator'} time on {device}")
    return total_us / 1e6


def run_rounds(arms: list[Arm], options: BenchOptions, inputs: dict[str, dict],
               log: Callable[[str], None] = print) -> Rounds:
    """Warm every (workload, arm) once, then ``rounds`` interleaved rounds, on the clocks ``wall`` and ``cpu``
    (and ``kernels`` with ``options.kernel_clock``). An arm whose warm-up raised is recorded with the error and
    left out of the rounds; if the profiler fails, the kernel clock is dropped and the run goes on.
    With ``options.max_seconds``, no round starts after that many seconds from the first: fewer rounds, all
    complete (every arm measured in each), so the result stays paired."""
    started_all = time.perf_counter()
    times = {clock: {w: {a.name: [] for a in arms} for w in WORKLOADS} for clock in clocks(options)}
    errors: dict[str, dict[str, str]] = {w: {} for w in WORKLOADS}
    kernel_clock_error = None
    with torch.inference_mode():
        for workload in WORKLOADS:
            for arm in arms:
                try:
                    measure(arm, workload_call(workload, arm.model, inputs[workload], options.new_tokens),
                            options.device, 1)
                except Exception as exc:  # noqa: BLE001 - a peer failing is a result, recorded verbatim
                    last = traceback.extract_tb(exc.__traceback__)[-1]
                    errors[workload][arm.name] = (f"{type(exc).__name__}: {exc} "
                                                  f"(at {Path(last.filename).name}:{last.lineno})")
                    for clock in times:
                        times[clock][workload].pop(arm.name)
                    log(f"  {workload:13s} {arm.name}: FAILED {errors[workload][arm.name]}")
        for r in range(options.rounds):
            if options.max_seconds and time.perf_counter() - started_all > options.max_seconds:
                log(f"  stopped after {r} of {options.rounds} rounds: --max-seconds {options.max_seconds} passed")
                break
            started = time.perf_counter()
            order = arms[r % len(arms):] + arms[:r % len(arms)]  # rotate: no arm always runs first
            for workload in WORKLOADS:
                for arm in order:
                    if arm.name in times["wall"][workload]:
                        call = workload_call(workload, arm.model, inputs[workload], options.new_tokens)
                        seconds = measure(arm, call, options.device, options.inner,
                                          warm=options.device.startswith("cuda") and workload.startswith("prefill"))
                        for clock, value in zip(CLOCKS, seconds):
                            times[clock][workload][arm.name].append(value)
                        if KERNELS in times:
                            try:
                                times[KERNELS][workload][arm.name].append(
                                    kernel_seconds(arm, call, options.device))
                            except Exception as exc:  # noqa: BLE001 - a profiler failure must not cost the run
                                kernel_clock_error = f"{type(exc).__name__}: {exc}"
                                times.pop(KERNELS)
                                log(f"  kernel clock dropped: {kernel_clock_error}")
            log(f"  round {r + 1}/{options.rounds}: {time.perf_counter() - started:.1f} s")
    return Rounds(times, errors, kernel_clock_error)
