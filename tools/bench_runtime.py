#!/usr/bin/env python
"""Benchmark: what a compiled adapter costs at inference, against the base model and the peers.

    .venv/bin/python tools/bench_runtime.py                       # CPU, SmolLM2-135M's shape, ~10 min
    .venv/bin/python tools/bench_runtime.py --quick               # smoke run, ~1 min
    .venv/bin/python tools/bench_runtime.py --device cuda --dtype bfloat16 --shape llama-3.1-8b --baked-in-memory

Arms, all on one randomly initialised model of a real model's shape (no weights are needed for timing):

- ``base`` and ``base-again``: the plain model, twice. Their ratio is 1 by construction, so its spread is the
  benchmark's resolution: a difference smaller than base-again's confidence interval is not shown.
- ``adapter``: a masteer adapter attached with the runtime (``masteer.runtime.attach``, forward hooks).
- ``baked``: the same adapter baked with ``masteer.runtime.bake`` and loaded back with plain transformers.
- ``baked-padN``: the baked checkpoint with its MLP widened by zero neurons to a multiple of N (``--pad-to``),
  so GEMM shapes are aligned; the logits stay equal (checked).
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
import contextlib
import copy
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

# Config dicts of real models (from their config.json); weights are random, only the shapes matter.
SHAPES: dict[str, dict] = {
    "smollm2-135m": dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                         num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                         max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=True),
    "llama-3.2-1b": dict(model_type="llama", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                         num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                         max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=True),
    "llama-3.1-8b": dict(model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                         max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=False),
    # the mechanics tests' tiny Llama: for the benchmark's own test, not for numbers
    "tiny": dict(model_type="llama", vocab_size=128, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                 tie_word_embeddings=False),
}
EMBEDDED = "embedded"  # the real embedded SmolLM2-135M-Instruct weights, via the compiler's loader
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BASE, BASE_AGAIN, ADAPTER, BAKED = "base", "base-again", "adapter", "baked"
STEERING_VECTORS, REPENG = "steering-vectors", "repeng"
WORKLOADS = ("prefill_b1", "prefill_batch", "decode_b1")


@dataclass
class BenchOptions:
    """Everything one benchmark run depends on; ``quick`` shrinks it to a smoke run."""
    shape: str = "smollm2-135m"
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 1
    rounds: int = 12
    inner: int = 1                 # calls per measurement (the mean is recorded); raise it on a GPU
    prompt_tokens: int = 32
    new_tokens: int = 32
    batch: int = 16
    layers: int = 3                # program layers (middle of the stack)
    neurons: int = 2               # gated neurons per program layer
    strength: float = 4.0
    pad_to: int = 64               # 0: no padded-bake arm
    baked_in_memory: bool = False  # skip the disk round trip of the baked checkpoint (same weights)
    peers: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.shape not in SHAPES and self.shape != EMBEDDED:
            raise ValueError(f"unknown --shape {self.shape!r}; known: {', '.join([*SHAPES, EMBEDDED])}")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown --dtype {self.dtype!r}; known: {', '.join(DTYPES)}")
        for name in ("threads", "rounds", "inner", "prompt_tokens", "new_tokens", "batch", "layers", "neurons"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.pad_to < 0:
            raise ValueError(f"--pad-to must be 0 (off) or a positive multiple, got {self.pad_to}")


QUICK = dict(rounds=2, prompt_tokens=16, new_tokens=8)


# ----------------------------------------------------------------------------- model and program
def build_model(options: BenchOptions) -> torch.nn.Module:
    """A random-initialised CausalLM of the chosen shape (or the embedded real model), in eval mode."""
    dtype = DTYPES[options.dtype]
    if options.shape == EMBEDDED:
        from masteer.compiler.common.models import load_model
        model = load_model(dtype=dtype, device=options.device).model
    else:
        from transformers import AutoConfig, AutoModelForCausalLM
        spec = dict(SHAPES[options.shape])
        config = AutoConfig.for_model(spec.pop("model_type"), pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                      **spec)
        torch.manual_seed(options.seed)
        with torch.device(options.device):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.config.architectures = [type(model).__name__]
    model.generation_config.eos_token_id = None  # decode always runs exactly --new-tokens steps
    model.generation_config.pad_token_id = 0
    return model.eval()


def program_layers(num_layers: int, count: int) -> list[int]:
    """``count`` layers spread over the middle tenth of the stack (where compiled programs steer)."""
    if count == 1:
        return [num_layers // 2]
    spots = [round((num_layers - 1) * (0.45 + 0.1 * i / (count - 1))) for i in range(count)]
    return sorted(set(spots))


def build_program(model, options: BenchOptions):
    """A compiled adapter's shape, built with the runtime API: gated neurons at the program layers, one static
    vector at the middle one. Gates are scaled so ``g.x`` is O(1) on normalised inputs: partly open, so the
    steering changes the logits and the adapter-vs-baked equality means something."""
    from masteer.runtime import SteeringAdapter, host_layout, model_fingerprint
    from masteer.runtime.hosts import activation_name
    hidden = model.config.hidden_size
    gen = torch.Generator().manual_seed(options.seed + 1)
    adapter = SteeringAdapter(base_model_name_or_path=f"random-{options.shape}", fingerprint=model_fingerprint(model),
                              host_form=host_layout(model).form, activation=activation_name(model),
                              provenance={"recipe": "bench-runtime"})
    layers = program_layers(model.config.num_hidden_layers, options.layers)

    def unit():
        vector = torch.randn(hidden, generator=gen)
        return vector / vector.norm()

    for layer in layers:
        for k in range(options.neurons):
            adapter.add_neuron(layer, f"L{layer}_n{k}", gate=unit() * 2.0, up=unit() * 2.0, direction=unit(),
                               strength=options.strength, group=f"L{layer}", opening=1.0 if k % 2 == 0 else -1.0)
    adapter.add_additive(layers[len(layers) // 2], "static", direction=unit(), strength=options.strength / 2)
    return adapter


def peer_vectors(model, adapter, options: BenchOptions) -> dict[int, torch.Tensor]:
    """One vector per program layer for the peers, in the model's dtype (so no hook upcasts the residual)."""
    gen = torch.Generator().manual_seed(options.seed + 2)
    param = next(model.parameters())
    vectors = {}
    for layer in adapter.layers:
        vector = torch.randn(model.config.hidden_size, generator=gen)
        vectors[layer] = (vector / vector.norm() * options.strength).to(device=param.device, dtype=param.dtype)
    return vectors


# ----------------------------------------------------------------------------- baked checkpoints
def baked_checkpoint(model, adapter, in_memory: bool) -> torch.nn.Module:
    """The adapter baked into a copy of ``model``: saved with ``masteer.runtime.bake`` and loaded back with plain
    transformers (or merged in memory: the same weights without the disk round trip)."""
    from masteer.runtime import bake, merge_into_model
    clone = copy.deepcopy(model)
    if in_memory:
        return merge_into_model(clone, adapter).eval()
    from transformers import AutoModelForCausalLM
    param = next(model.parameters())
    with tempfile.TemporaryDirectory(prefix="bench-runtime-baked-") as folder:
        bake(clone, adapter, folder)
        del clone
        loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=param.dtype, device_map=str(param.device))
    loaded.generation_config.eos_token_id = None
    loaded.generation_config.pad_token_id = 0
    return loaded.eval()


def padded_copy(baked, multiple: int) -> torch.nn.Module:
    """A copy of a baked model whose MLP width is rounded up to ``multiple`` with zero neurons.

    The zero neurons are baked the same way steering neurons are (a runtime merge of an adapter whose neurons
    have zero gate, up and direction rows), so this needs no bake option: it computes exactly what ``baked``
    does, only with an aligned width."""
    from masteer.runtime import SteeringAdapter, host_layout, merge_into_model, model_fingerprint
    from masteer.runtime.hosts import activation_name, intermediate_size
    width = intermediate_size(baked)
    extra = -width % multiple
    padded = copy.deepcopy(baked)
    if extra == 0:
        return padded
    zeros = SteeringAdapter(base_model_name_or_path="padding", fingerprint=model_fingerprint(baked),
                            host_form=host_layout(baked).form, activation=activation_name(baked))
    hidden = baked.config.hidden_size
    for k in range(extra):
        zeros.add_neuron(0, f"pad{k}", gate=torch.zeros(hidden), up=torch.zeros(hidden), direction=torch.zeros(hidden),
                         strength=0.0)
    return merge_into_model(padded, zeros).eval()


# ----------------------------------------------------------------------------- arms
@dataclass
class Arm:
    """A way to run the model: which module to call and what to switch on around each measurement."""
    name: str
    model: torch.nn.Module
    active: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    note: str = ""


def adapter_arm(model, adapter) -> Arm:
    from masteer.runtime import attach

    @contextlib.contextmanager
    def attached() -> Iterator[None]:
        steered = attach(model, adapter, check_fingerprint=False)
        try:
            yield
        finally:
            steered.detach()
    return Arm(ADAPTER, model, attached, "masteer.runtime.attach (forward hooks on the program layers' MLPs)")


def steering_vectors_arm(model, vectors) -> Arm:
    from steering_vectors import SteeringVector
    vector = SteeringVector(layer_activations=dict(vectors), layer_type="decoder_block")

    @contextlib.contextmanager
    def patched() -> Iterator[None]:
        handle = vector.patch_activations(model)
        try:
            yield
        finally:
            handle.remove()
    return Arm(STEERING_VECTORS, model, patched, "SteeringVector.patch_activations (forward hook per decoder block)")


def import_repeng():
    """repeng 0.4.0 annotates with ``np.float_``, gone in NumPy 2: provide it only while importing."""
    import numpy as np
    added = not hasattr(np, "float_")
    if added:
        np.float_ = np.float64
    try:
        import repeng
    finally:
        if added:
            del np.float_
    return repeng


def repeng_arm(model, vectors) -> Arm:
    repeng = import_repeng()
    control = repeng.ControlVector(model_type=model.config.model_type,
                                   directions={layer: v.float().cpu().numpy() for layer, v in vectors.items()})

    @contextlib.contextmanager
    def wrapped() -> Iterator[None]:
        controlled = repeng.ControlModel(model, list(vectors))
        controlled.set_control(control, coeff=1.0)
        try:
            yield
        finally:
            controlled.unwrap()
    return Arm(REPENG, model, wrapped, "ControlModel wrapping the decoder blocks (ControlModule)")


def build_arms(options: BenchOptions, log: Callable[[str], None] = print) -> tuple[list[Arm], dict]:
    """Every arm on one model (the baked ones on their own copies), and what was built."""
    started = time.perf_counter()
    model = build_model(options)
    log(f"model {options.shape} ({options.dtype}, {options.device}): {sum(p.numel() for p in model.parameters())/1e6:.0f}M "
        f"parameters, built in {time.perf_counter() - started:.0f} s")
    adapter = build_program(model, options)
    arms = [Arm(BASE, model, note="plain forward"), Arm(BASE_AGAIN, model, note="plain forward, measured again"),
            adapter_arm(model, adapter)]
    started = time.perf_counter()
    baked = baked_checkpoint(model, adapter, options.baked_in_memory)
    arms.append(Arm(BAKED, baked, note="masteer.runtime.bake, " + ("merged in memory" if options.baked_in_memory
                                                                  else "loaded back with AutoModelForCausalLM")))
    from masteer.runtime.hosts import intermediate_size
    built = {"program_layers": adapter.layers, "neurons_per_layer": options.neurons,
             "static_layer": adapter.layers[len(adapter.layers) // 2],
             "base_mlp_width": intermediate_size(model), "baked_mlp_width": intermediate_size(baked)}
    if options.pad_to:
        padded = padded_copy(baked, options.pad_to)
        arms.append(Arm(f"baked-pad{options.pad_to}", padded,
                        note=f"baked, MLP zero-padded to a multiple of {options.pad_to}"))
        built["padded_mlp_width"] = intermediate_size(padded)
    log(f"baked ({built['base_mlp_width']} -> {built['baked_mlp_width']}"
        + (f", padded {built['padded_mlp_width']}" if options.pad_to else "")
        + f") in {time.perf_counter() - started:.0f} s")
    if options.peers:
        vectors = peer_vectors(model, adapter, options)
        for make in (steering_vectors_arm, repeng_arm):
            try:
                arms.append(make(model, vectors))
            except ImportError as exc:  # recorded: a missing peer shows in the results, it does not vanish
                built.setdefault("peer_errors", {})[make.__name__] = f"{type(exc).__name__}: {exc}"
    return arms, built


# ----------------------------------------------------------------------------- workloads
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


def measure(arm: Arm, call: Callable[[], object], device: str, inner: int) -> float:
    """Seconds per call: ``inner`` calls back to back with the arm switched on, device work included."""
    with arm.active():
        synchronise(device)
        start = time.perf_counter()
        for _ in range(inner):
            call()
        synchronise(device)
        return (time.perf_counter() - start) / inner


def run_rounds(arms: list[Arm], options: BenchOptions, inputs: dict[str, dict],
               log: Callable[[str], None] = print) -> tuple[dict, dict]:
    """Warm every (workload, arm) once, then ``rounds`` interleaved rounds.

    Returns ({workload: {arm: [seconds per round]}}, {workload: {arm: error}}); an arm whose warm-up raised is
    recorded with the error and left out of the rounds."""
    times = {w: {a.name: [] for a in arms} for w in WORKLOADS}
    errors: dict[str, dict[str, str]] = {w: {} for w in WORKLOADS}
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
                    times[workload].pop(arm.name)
                    log(f"  {workload:13s} {arm.name}: FAILED {errors[workload][arm.name]}")
        for r in range(options.rounds):
            started = time.perf_counter()
            order = arms[r % len(arms):] + arms[:r % len(arms)]  # rotate: no arm always runs first
            for workload in WORKLOADS:
                for arm in order:
                    if arm.name in times[workload]:
                        call = workload_call(workload, arm.model, inputs[workload], options.new_tokens)
                        times[workload][arm.name].append(measure(arm, call, options.device, options.inner))
            log(f"  round {r + 1}/{options.rounds}: {time.perf_counter() - started:.1f} s")
    return times, errors


# ----------------------------------------------------------------------------- statistics
def quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), without numpy."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Distribution-free confidence interval of the median: the order statistics ``x_(j)``, ``x_(n+1-j)`` with
    the largest ``j`` whose binomial(n, 1/2) coverage is at least ``level``; None when even the whole range
    covers less (fewer than 6 values at 95%)."""
    ordered, n = sorted(values), len(values)
    best = None
    for j in range(1, n // 2 + 1):
        if 1 - 2 * sum(math.comb(n, i) for i in range(j)) / 2 ** n >= level:
            best = j
    return None if best is None else (ordered[best - 1], ordered[n - best])


def summarise(times: dict, errors: dict) -> list[dict]:
    """One row per (workload, arm): time statistics in ms and the paired per-round ratio to base."""
    rows = []
    for workload in WORKLOADS:
        base = times[workload].get(BASE)
        for arm, values in times[workload].items():
            ms = [1000 * v for v in values]
            row = {"workload": workload, "arm": arm, "rounds": len(ms), "median_ms": quantile(ms, 0.5),
                   "q1_ms": quantile(ms, 0.25), "q3_ms": quantile(ms, 0.75), "min_ms": min(ms), "max_ms": max(ms)}
            if base:
                ratios = [v / b for v, b in zip(values, base)]
                interval = median_interval(ratios)
                row.update(ratio_median=quantile(ratios, 0.5), ratio_q1=quantile(ratios, 0.25),
                           ratio_q3=quantile(ratios, 0.75), ratio_ci95=list(interval) if interval else None)
            rows.append(row)
        for arm, error in errors[workload].items():
            rows.append({"workload": workload, "arm": arm, "rounds": 0, "error": error})
    return rows


def resolution(rows: list[dict]) -> dict[str, float]:
    """Per workload, the largest distance of base-again's ratio interval from 1: the smallest difference that
    the run can tell apart from noise (a 3% goal needs this at or below 0.03)."""
    return {r["workload"]: max(1 - r["ratio_ci95"][0], r["ratio_ci95"][1] - 1)
            for r in rows if r["arm"] == BASE_AGAIN and r.get("ratio_ci95")}


# ----------------------------------------------------------------------------- exactness
@torch.no_grad()
def logit_checks(arms: list[Arm], inputs: dict) -> dict[str, float]:
    """Max |logit difference| on a prefill batch: each arm against base (it steers), the adapter against the
    baked checkpoint and the baked against the padded one (both should be float rounding)."""
    logits = {}
    for arm in arms:
        with arm.active():
            try:
                logits[arm.name] = arm.model(**inputs).logits.float()
            except Exception:  # noqa: BLE001 - the failure is recorded by run_rounds
                continue
    checks = {f"{name}_vs_base": float((value - logits[BASE]).abs().max()) for name, value in logits.items()
              if name not in (BASE, BASE_AGAIN)}
    checks["adapter_vs_baked"] = float((logits[ADAPTER] - logits[BAKED]).abs().max())
    padded = [name for name in logits if name.startswith("baked-pad")]
    for name in padded:
        checks[f"baked_vs_{name}"] = float((logits[BAKED] - logits[name]).abs().max())
    checks["logit_scale"] = float(logits[BASE].abs().max())
    return checks


# ----------------------------------------------------------------------------- the run
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
    times, errors = run_rounds(arms, options, inputs, log)
    rows = summarise(times, errors)
    return {"options": asdict(options), "machine_before": before,
            "load_average_after": [round(x, 2) for x in os.getloadavg()], "built": built,
            "arms": {arm.name: arm.note for arm in arms}, "logit_checks": checks, "rows": rows,
            "resolution": resolution(rows), "raw_seconds": times, "wall_s": round(time.perf_counter() - started, 1)}


def markdown_table(result: dict) -> str:
    """The rows as a markdown table: median ms [IQR], min-max, and the ratio to base with its 95% interval."""
    lines = ["| workload | arm | median ms [IQR] | min-max ms | x base (median, 95% CI) |", "|---|---|---|---|---|"]
    for row in result["rows"]:
        if "error" in row:
            lines.append(f"| {row['workload']} | {row['arm']} | failed: {row['error'][:90]} | | |")
            continue
        ratio = f"{row['ratio_median']:.3f}" if "ratio_median" in row else ""
        if row.get("ratio_ci95"):
            ratio += f" ({row['ratio_ci95'][0]:.3f}-{row['ratio_ci95'][1]:.3f})"
        lines.append(f"| {row['workload']} | {row['arm']} | {row['median_ms']:.1f} [{row['q1_ms']:.1f}-{row['q3_ms']:.1f}]"
                     f" | {row['min_ms']:.1f}-{row['max_ms']:.1f} | {ratio} |")
    return "\n".join(lines)


def default_out(options: BenchOptions) -> Path:
    suffix = "-quick" if options.rounds == QUICK["rounds"] else ""
    return Path("docs/benchmarks") / f"runtime-{options.shape}-{options.device.split(':')[0]}-{options.dtype}{suffix}.json"


def parse(argv: list[str] | None) -> tuple[BenchOptions, Path | None]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    defaults = BenchOptions()
    parser.add_argument("--shape", default=defaults.shape, help=f"{', '.join(SHAPES)} or {EMBEDDED} (real weights)")
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--dtype", default=defaults.dtype, choices=list(DTYPES))
    for name in ("threads", "rounds", "inner", "prompt_tokens", "new_tokens", "batch", "layers", "neurons",
                 "pad_to", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None)
    parser.add_argument("--strength", type=float, default=defaults.strength)
    parser.add_argument("--baked-in-memory", action="store_true", help="merge in memory, no save/load round trip")
    parser.add_argument("--no-peers", action="store_true", help="leave out steering-vectors and repeng")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds, 16 prompt and 8 new tokens")
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default docs/benchmarks/runtime-*.json)")
    args = parser.parse_args(argv)
    values = {**(QUICK if args.quick else {})}
    for name in ("threads", "rounds", "inner", "prompt_tokens", "new_tokens", "batch", "layers", "neurons",
                 "pad_to", "seed"):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    options = BenchOptions(shape=args.shape, device=args.device, dtype=args.dtype, strength=args.strength,
                           baked_in_memory=args.baked_in_memory, peers=not args.no_peers, **values)
    return options, args.out


def main(argv: list[str] | None = None) -> int:
    options, out = parse(argv)
    from masteer.runtime.atomic import atomic_write_text
    import json
    result = run_benchmark(options)
    result["command"] = " ".join([".venv/bin/python", "tools/bench_runtime.py", *(sys.argv[1:] if argv is None
                                                                                  else argv)])
    out = out or default_out(options)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(markdown_table(result))
    print("resolution (base-again ratio's 95% CI, largest distance from 1): "
          + (", ".join(f"{w} {v:.1%}" for w, v in result["resolution"].items())
             or "none: fewer than 6 rounds give no 95% interval"))
    print(f"load average before {result['machine_before']['load_average']} after {result['load_average_after']}; "
          f"{result['wall_s']:.0f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
