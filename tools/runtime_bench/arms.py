"""The arms: each a model to call and what to switch on around a measurement (masteer, the peers)."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from .baking import baked_checkpoint
from .models import build_model, build_program, peer_vectors
from .options import ADAPTER, BAKED, BAKED_UNPADDED, BASE, BASE_AGAIN, REPENG, STEERING_VECTORS, BenchOptions


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
    baked = baked_checkpoint(model, adapter, options.baked_in_memory, options.pad_to)
    how = "merged in memory" if options.baked_in_memory else "loaded back with AutoModelForCausalLM"
    arms.append(Arm(BAKED, baked, note=f"masteer.runtime.bake (MLP padded to a multiple of {options.pad_to}), {how}"))
    from masteer.runtime.hosts import intermediate_size
    built = {"program_layers": adapter.layers, "neurons_per_layer": options.neurons,
             "static_layer": adapter.layers[len(adapter.layers) // 2],
             "base_mlp_width": intermediate_size(model), "baked_mlp_width": intermediate_size(baked)}
    if options.pad_to > 1:
        unpadded = baked_checkpoint(model, adapter, options.baked_in_memory, 0)
        arms.append(Arm(BAKED_UNPADDED, unpadded, note=f"masteer.runtime.bake with pad_to=0 (exact width), {how}"))
        built["unpadded_mlp_width"] = intermediate_size(unpadded)
    log(f"baked (MLP {built['base_mlp_width']} -> {built['baked_mlp_width']}"
        + (f", unpadded {built['unpadded_mlp_width']}" if options.pad_to > 1 else "")
        + f") in {time.perf_counter() - started:.0f} s")
    if options.peers:
        vectors = peer_vectors(model, adapter, options)
        for make in (steering_vectors_arm, repeng_arm):
            try:
                arms.append(make(model, vectors))
            except ImportError as exc:  # recorded: a missing peer shows in the results, it does not vanish
                built.setdefault("peer_errors", {})[make.__name__] = f"{type(exc).__name__}: {exc}"
    return arms, built
