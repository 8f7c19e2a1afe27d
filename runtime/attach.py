"""Attach an adapter to a live transformers model, PEFT-style.

Forward hooks, one per place a strategy kind acts:

- neuron / additive: on each chosen MLP, adding the steering delta to the MLP's output;
- ablation: on every write into the residual stream (embeddings, attention output projections, MLPs),
  projecting the directions out. On an MLP this runs after the steering delta is added, so the
  projection sees the MLP's output as a whole (what the orthogonalised, widened down_proj computes);
- rotation: on the chosen decoder layers, rotating their output hidden state.

Hooks (rather than swapped modules) leave the base model's modules and state dict untouched, so
detaching restores the model exactly, and the model keeps working with ``generate``, padding and the
KV cache. Every kind is stateless per token.

Controls: ``set_scale``/``scaled`` multiply every strategy's strength: a neuron's or additive vector's
size, a rotation's angle, and the ablation coefficient (``x - scale * strength * (x R^T) R``: 0 leaves the
directions in, 1 removes them). ``bake(scale=s)`` lowers exactly what the adapter computes at scale
``s``. ``disable_adapter`` turns every kind off.
"""

from __future__ import annotations

import contextlib
import math
import os
from typing import Iterator

import torch
from torch import nn

from .ablation import Ablation, ablation_sites, check_ablation_host
from .artifact import ADDITIVE, NEURON, ROTATION, SteeringAdapter
from .bake import MLP_ALIGNMENT, check_lowerable, check_pad_to, merge_into_model
from .errors import FingerprintMismatch, HostNotSupported, MasteerError
from .fingerprint import model_fingerprint
from .hosts import decoder_layers, host_layout, mlp_activation, mlp_module, num_layers
from .kernel import LayerSteering
from .rotation import LayerRotation, rotate_layer_output


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
    _check_host(model, adapter)


def _check_host(model: nn.Module, adapter: SteeringAdapter) -> None:
    if adapter.layers and max(adapter.layers) >= num_layers(model):
        raise HostNotSupported(f"adapter uses layer {max(adapter.layers)}, model has {num_layers(model)}")
    if adapter.ablation_strategy is not None:
        check_ablation_host(model)


class _NeuronsRead(Exception):
    """Raised inside a forward pass once every gated layer's neurons are read: the rest of the pass is not needed."""


class SteeredModel(nn.Module):
    """A base model with a masteer adapter attached; call it and ``generate`` as the base model."""

    def __init__(self, model: nn.Module, adapter: SteeringAdapter, check_fingerprint: bool = True):
        super().__init__()
        if check_fingerprint:
            check_compatible(model, adapter)
        else:
            host_layout(model)
            _check_host(model, adapter)
        self.base_model = model
        self.adapter = adapter
        device = next(model.parameters()).device
        self.steering = nn.ModuleDict({
            str(layer): LayerSteering(adapter, layer, mlp_activation(model, layer)).to(device)
            for layer in adapter.layers
            if adapter.block(layer, NEURON) is not None or adapter.block(layer, ADDITIVE) is not None
        })
        self.rotation = nn.ModuleDict({
            str(layer): LayerRotation(adapter, layer).to(device)
            for layer in adapter.layers if adapter.block(layer, ROTATION) is not None
        })
        spec = adapter.ablation_strategy
        self.ablation = Ablation(adapter.ablation_directions, spec.strength).to(device) if spec else None
        self._handles = []
        try:
            self._register_hooks()
        except BaseException:
            self.detach()
            raise

    def _register_hooks(self) -> None:
        model = self.base_model
        mlp_layers = set(map(int, self.steering))
        if self.ablation is not None:
            for site in ablation_sites(model):
                if site.role != "mlp":  # MLP sites share the MLP hook below, after the steering delta
                    self._handles.append(site.hook.register_forward_hook(self._ablation_hook(self.ablation)))
            mlp_layers = set(range(num_layers(model)))
        for layer in sorted(mlp_layers):
            hook = self._mlp_hook(self.steering[str(layer)] if str(layer) in self.steering else None, self.ablation)
            self._handles.append(mlp_module(model, layer).register_forward_hook(hook))
        layers = decoder_layers(model)
        for key, rotation in self.rotation.items():
            self._handles.append(layers[int(key)].register_forward_hook(self._rotation_hook(rotation)))

    @staticmethod
    def _mlp_hook(steering: LayerSteering | None, ablation: Ablation | None):
        def steer_mlp(module, args, output):
            if steering is not None and steering.enabled:
                output = output + steering(args[0])
            if ablation is not None:  # after the delta: the MLP's output is projected as a whole
                output = ablation(output)
            return output
        return steer_mlp

    @staticmethod
    def _ablation_hook(ablation: Ablation):
        def project(module, args, output):
            return ablation(output)
        return project

    @staticmethod
    def _rotation_hook(rotation: LayerRotation):
        def rotate(module, args, output):
            return rotate_layer_output(rotation, output)
        return rotate

    def _controls(self) -> list[nn.Module]:
        """Every module with a ``scale`` and an ``enabled`` switch."""
        return [*self.steering.values(), *self.rotation.values(), *([self.ablation] if self.ablation else [])]

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
        """Multiply every strategy's strength by ``scale`` (0 turns steering off, 1 is as compiled).

        Neurons and additive vectors: their size; rotations: their angle; ablation: the fraction of the
        directions' component removed from each residual write (at 2 the component is reflected).
        """
        if not math.isfinite(scale):
            raise MasteerError(f"scale must be a finite number, got {scale!r}")
        for control in self._controls():
            control.scale = float(scale)

    @contextlib.contextmanager
    def scaled(self, scale: float) -> Iterator["SteeredModel"]:
        previous = [(c, c.scale) for c in self._controls()]
        self.set_scale(scale)
        try:
            yield self
        finally:
            for control, value in previous:
                control.scale = value

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[nn.Module]:
        """Run the base model as if no adapter were attached (PEFT's name for it)."""
        previous = [(c, c.enabled) for c in self._controls()]
        for control, _ in previous:
            control.enabled = False
        try:
            yield self.base_model
        finally:
            for control, value in previous:
                control.enabled = value

    @torch.no_grad()
    def gate_activations(self, **inputs) -> dict[int, torch.Tensor]:
        """Per-token neuron outputs ``z`` [batch, seq, K] for each layer with neurons."""
        per_layer = self._read_neurons(lambda steering, x: steering.activations(x).float(), **inputs)
        return {layer: z for layer, (_, z) in per_layer.items()}

    @torch.no_grad()
    def delta_sizes(self, **inputs) -> dict[int, torch.Tensor]:
        """The largest entry of what the steering adds to each token's MLP output, ``max |delta|`` [batch, seq], at
        every layer with neurons (0 where it is disabled). Where a row's sizes stay below rounding at every layer,
        the steered model computes that row as the base model does: a caller measuring drift may skip it. One
        pass, up to the last layer with neurons; an adapter with always-on vectors elsewhere needs more than this."""
        def size(steering, x):
            return steering(x).abs().amax(-1).float() if steering.enabled else x.new_zeros(x.shape[:-1]).float()
        return {layer: values for layer, (_, values) in self._read_neurons(size, **inputs).items()}

    @torch.no_grad()
    def openings(self, **inputs) -> dict[str, torch.Tensor]:
        """Per-token opening of every gated strategy, ``{strategy: [batch, seq]}``: 0 where it is silent,
        1 where it writes its full strength (after exclusive selection, if the adapter uses it).

        One forward pass of the steered model, so a strategy on a later layer sees the steering of
        earlier ones, exactly as in generation. This is what ``masteer inspect`` prints."""
        per_layer = self._read_neurons(lambda steering, x: steering.openings(x).float(), **inputs)
        return {name: values[..., g] for steering, values in per_layer.values()
                for g, name in enumerate(steering.groups)}

    def _read_neurons(self, read, **inputs) -> dict[int, tuple[LayerSteering, torch.Tensor]]:
        """One forward pass, up to the last layer with neurons; ``read(steering, mlp_input)`` at every layer with
        neurons, keyed by layer. The blocks above it and the vocabulary projection would change nothing read
        (on SmolLM2 a gate at layer 14 of 30: half the pass), so the pass stops there."""
        captured: dict[int, tuple[LayerSteering, torch.Tensor]] = {}
        handles = []
        gated = [int(key) for key, steering in self.steering.items() if steering.has_neurons]
        for key, steering in self.steering.items():
            if not steering.has_neurons:
                continue
            def grab(module, args, layer=int(key), steering=steering):
                captured[layer] = (steering, read(steering, args[0]))
                if len(captured) == len(gated):
                    raise _NeuronsRead
            handles.append(mlp_module(self.base_model, int(key)).register_forward_pre_hook(grab))
        try:
            self.base_model(**inputs)
        except _NeuronsRead:
            pass
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

    def merge_and_unload(self, pad_to: int = MLP_ALIGNMENT) -> nn.Module:
        """Detach and return the base model with the program baked into its weights (in place), the MLP
        padded to a multiple of ``pad_to`` with zero neurons (0: the exact width).

        Raises LoweringError (and stays attached) when a strategy has no exact lowering, e.g. a rotation.
        """
        scales = {c.scale for c in self._controls()}
        if len(scales) > 1:
            raise ValueError("strategies have different scales; set one scale before merging")
        check_pad_to(pad_to)
        check_lowerable(self.base_model, self.adapter)
        model = self.detach()
        return merge_into_model(model, self.adapter, scale=next(iter(scales), 1.0), pad_to=pad_to)


def attach(model: nn.Module, adapter: SteeringAdapter | str | os.PathLike,
           check_fingerprint: bool = True) -> SteeredModel:
    if not isinstance(adapter, SteeringAdapter):
        adapter = SteeringAdapter.load(adapter)
    return SteeredModel(model, adapter, check_fingerprint=check_fingerprint)
