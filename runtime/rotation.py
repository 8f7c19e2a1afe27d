"""Angle-preserving steering (Angular Steering, Vu & Nguyen 2025): rotate hidden states toward a direction.

At a decoder layer's output each token's hidden state ``h`` is written as ``h = a d + b u`` with
``d`` the unit target direction, ``a = h.d``, ``b = |h - a d|`` and ``u`` the unit orthogonal part.
Its angle to ``d`` is ``phi = atan2(b, a)`` in [0, pi]. The rotation sets the angle to
``clamp(phi - theta, 0, pi)`` inside the plane span(d, u) and keeps ``|h|``::

    h' = |h| (cos(phi') d + sin(phi') u)

- ``theta = strength * scale`` in radians; a positive angle turns toward ``d``, a negative one away.
- No overshoot: a token whose angle to ``d`` is below ``theta`` ends exactly on ``d`` (``|h| d``);
  turning away stops at ``-d``.
- Where the plane is undefined (``h`` parallel or antiparallel to ``d``, or ``h = 0``) the token is
  left as it is: parallel is already the target, and antiparallel has no preferred way round.
- ``theta = 0`` (or scale 0) returns the input tensor itself, bit for bit.
- Several rotations on one layer are applied in their row (= config) order.
- It acts on the layer's output, after that layer's MLP steering and any ablation of its writes; a
  target direction with a component along an ablated direction puts that component back.

The map is not linear in ``h``, so it has no exact lowering into weights: adapter only.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .artifact import ROTATION, SteeringAdapter

DEGENERATE = 1e-6  # |h_perp| <= DEGENERATE * |h|: h is (anti)parallel to d and the plane is undefined


def rotate_toward(h: torch.Tensor, direction: torch.Tensor, angle: float) -> torch.Tensor:
    """Turn each row of ``h`` [..., H] by ``angle`` radians toward the unit ``direction`` [H], keeping norms."""
    y = h.float()
    d = direction.to(device=h.device, dtype=torch.float32)
    a = y @ d
    perp = y - a[..., None] * d
    b = perp.norm(dim=-1)
    norm = y.norm(dim=-1)
    phi = torch.atan2(b, a)
    new = (phi - angle).clamp(0.0, math.pi)
    defined = b > DEGENERATE * norm
    u = perp / torch.where(defined, b, torch.ones_like(b))[..., None]
    out = norm[..., None] * (torch.cos(new)[..., None] * d + torch.sin(new)[..., None] * u)
    return torch.where(defined[..., None], out, y).to(h.dtype)


class LayerRotation(nn.Module):
    """All rotations of one layer; ``scale`` multiplies every angle."""

    def __init__(self, adapter: SteeringAdapter, layer: int):
        super().__init__()
        self.layer = layer
        block = adapter.block(layer, ROTATION)
        if block is None:
            raise ValueError(f"layer {layer} has no rotation strategies")
        self.register_buffer("directions", block["direction"].clone())
        self.angles = [float(a) for a in adapter.strengths(layer, ROTATION)]
        self.scale = 1.0
        self.enabled = True

    @property
    def active(self) -> bool:
        return self.enabled and self.scale != 0.0 and any(a != 0.0 for a in self.angles)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return h
        for direction, angle in zip(self.directions, self.angles):
            if angle * self.scale != 0.0:
                h = rotate_toward(h, direction, angle * self.scale)
        return h


def rotate_layer_output(rotation: LayerRotation, output):
    """Apply ``rotation`` to a decoder layer's output: a tensor, or a tuple/list whose first item is the
    hidden state (transformers versions differ; 5.x returns the tensor, 4.x a tuple)."""
    if not rotation.active:
        return output
    if isinstance(output, torch.Tensor):
        return rotation(output)
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        rest = list(output[1:])
        return [rotation(output[0]), *rest] if isinstance(output, list) else (rotation(output[0]), *rest)
    raise TypeError(f"cannot find the hidden state in a decoder layer output of type {type(output).__name__}")
