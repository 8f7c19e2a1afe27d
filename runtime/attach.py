"""Attach an adapter to a live transformers model, PEFT-style.

A forward hook on each chosen MLP adds the steering delta to that MLP's output. Hooks (rather
than swapped modules) leave the base model's modules and state dict untouched, so detaching
restores the model exactly, and the model keeps working with ``generate``, padding and the KV cache.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
from torch import nn

from .artifact import SteeringAdapter
from .errors import FingerprintMismatch, HostNotSupported
from .fingerprint import model_fingerprint
from .hosts import host_layout, mlp_activation, mlp_module, num_layers
from .kernel import LayerSteering


def check_compatible(model: nn.Module, adapter: SteeringAdapter) -> None:
    layout = host_layout(model)
    if layout.form != adapter.host_form:
        raise HostNotSupported(f"adapter was compiled for a {adapter.host_form} MLP host, but "
                               f"{type(model).__name__} has a {layout.form} MLP")
    actual = model_fingerprint(model)
    if not adapter.fingerprint.matches(actual):
        raise FingerprintMismatch(
            "adapter was compiled for another base model:\n"
            f"  adapter expects: {adapter.fingerprint.describe()}\n"
            f"  this model is:   {actual.describe()}\n"
            "Load the base model the adapter was compiled for "
            f"({adapter.base_model_name_or_path or 'see adapter_config.json'}), "
            "or pass check_fingerprint=False if you know better.")
    if adapter.layers and max(adapter.layers) >= num_layers(model):
        raise HostNotSupported(f"adapter uses layer {max(adapter.layers)}, model has {num_layers(model)}")


class SteeredModel(nn.Module):
    """A base model with a masteer adapter attached; call it and ``generate`` as the base model."""

    def __init__(self, model: nn.Module, adapter: SteeringAdapter, check_fingerprint: bool = True):
        super().__init__()
        if check_fingerprint:
            check_compatible(model, adapter)
        else:
            host_layout(model)
        self.base_model = model
        self.adapter = adapter
        device = next(model.parameters()).device
        self.steering = nn.ModuleDict({
            str(layer): LayerSteering(adapter, layer, mlp_activation(model, layer)).to(device)
            for layer in adapter.layers
        })
        self._handles = [
            mlp_module(model, layer).register_forward_hook(self._hook(self.steering[str(layer)]))
            for layer in adapter.layers
        ]

    @staticmethod
    def _hook(steering: LayerSteering):
        def add_delta(module, args, output):
            if not steering.enabled:
                return output
            return output + steering(args[0])
        return add_delta

    @classmethod
    def from_pretrained(cls, model: nn.Module, adapter_path: str | os.PathLike,
                        check_fingerprint: bool = True) -> "SteeredModel":
        return cls(model, SteeringAdapter.load(adapter_path), check_fingerprint=check_fingerprint)

    # ------------------------------------------------------------ delegation
    def forward(self, *args, **kwargs):
        return self.base_model(*args, **kwargs)

    def generate(self, *args, **kwargs):
        return self.base_model.generate(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.base_model, name)

    # ------------------------------------------------------------ controls
    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def set_scale(self, scale: float) -> None:
        """Multiply every strategy's strength by ``scale`` (0 turns steering off, 1 is as compiled)."""
        for steering in self.steering.values():
            steering.scale = float(scale)

    @contextlib.contextmanager
    def scaled(self, scale: float) -> Iterator["SteeredModel"]:
        previous = {k: s.scale for k, s in self.steering.items()}
        self.set_scale(scale)
        try:
            yield self
        finally:
            for key, value in previous.items():
                self.steering[key].scale = value

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[nn.Module]:
        """Run the base model as if no adapter were attached (PEFT's name for it)."""
        previous = {k: s.enabled for k, s in self.steering.items()}
        for steering in self.steering.values():
            steering.enabled = False
        try:
            yield self.base_model
        finally:
            for key, value in previous.items():
                self.steering[key].enabled = value

    @torch.no_grad()
    def gate_activations(self, **inputs) -> dict[int, torch.Tensor]:
        """Per-token neuron outputs ``z`` [batch, seq, K] for each layer with neurons."""
        captured: dict[int, torch.Tensor] = {}
        handles = []
        for key, steering in self.steering.items():
            if not steering.has_neurons:
                continue
            def grab(module, args, layer=int(key), steering=steering):
                captured[layer] = steering.activations(args[0]).float()
            handles.append(mlp_module(self.base_model, int(key)).register_forward_pre_hook(grab))
        try:
            self.base_model(**inputs)
        finally:
            for handle in handles:
                handle.remove()
        return captured

    def detach(self) -> nn.Module:
        """Remove the hooks and return the untouched base model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        return self.base_model

    def merge_and_unload(self) -> nn.Module:
        """Detach and return the base model with the program baked into its weights (in place)."""
        from .bake import merge_into_model
        scale = {int(k): s.scale for k, s in self.steering.items()}
        if len(set(scale.values())) > 1:
            raise ValueError("layers have different scales; set one scale before merging")
        model = self.detach()
        return merge_into_model(model, self.adapter, scale=next(iter(scale.values()), 1.0))


def attach(model: nn.Module, adapter: SteeringAdapter | str | os.PathLike,
           check_fingerprint: bool = True) -> SteeredModel:
    if not isinstance(adapter, SteeringAdapter):
        adapter = SteeringAdapter.load(adapter)
    return SteeredModel(model, adapter, check_fingerprint=check_fingerprint)
