"""The steering-neuron kernel: the host MLP's own arithmetic on K extra rows.

For all K neuron strategies of a layer at once (no Python loop over strategies or tokens)::

    gated host:  z = act(x @ G.T) * (x @ U.T)        plain host:  z = act(x @ G.T + b)
    delta = z @ (strength[:, None] * D) + sum_a strength_a * v_a

``x`` is the MLP input. The delta is added to the MLP output, which is exactly what the baked
checkpoint computes with its widened MLP. Everything is stateless per token, so padding, batching
and the KV cache need no special handling.

Exclusive selection (adapter only) adds one step between ``z`` and the delta, still without a loop:
each group's anchor score (its positively weighted neurons' ``opening * z``) is summed with one
``index_add``, the argmax group per token is kept and every other group's ``z`` is zeroed.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .artifact import ADDITIVE, EXCLUSIVE, NEURON, SteeringAdapter
from .hosts import GATED


class LayerSteering(nn.Module):
    """All strategies of one layer; ``scale`` multiplies every strength (a global dial)."""

    def __init__(self, adapter: SteeringAdapter, layer: int, act: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.layer = layer
        self.gated = adapter.host_form == GATED
        self.act = act
        self.scale = 1.0
        self.enabled = True
        neurons = adapter.block(layer, NEURON)
        self.has_neurons = neurons is not None
        if neurons is not None:
            self.register_buffer("gate", neurons["gate"].clone())
            self.register_buffer("up" if self.gated else "bias", neurons["up" if self.gated else "bias"].clone())
            self.register_buffer("down", (neurons["direction"] * adapter.strengths(layer, NEURON)[:, None]).clone())
            self.groups, group_index, opening = adapter.neuron_groups(layer)
            self.register_buffer("group_index", group_index)
            self.register_buffer("opening", opening)
            self.exclusive = adapter.selection == EXCLUSIVE and len(self.groups) > 1
        additive = adapter.block(layer, ADDITIVE)
        self.has_additive = additive is not None
        if additive is not None:
            self.register_buffer("vector", (additive["direction"] * adapter.strengths(layer, ADDITIVE)[:, None]).sum(0))

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token neuron outputs ``z`` [..., K] after selection: what each neuron contributes."""
        pre = F.linear(x, self.gate.to(x.dtype))
        if self.gated:
            z = self.act(pre) * F.linear(x, self.up.to(x.dtype))
        else:
            z = self.act(pre + self.bias.to(x.dtype))
        return self._select(z) if self.exclusive else z

    def _group_sum(self, values: torch.Tensor) -> torch.Tensor:
        """[..., K] -> [..., G]: per-strategy sums of neuron values."""
        out = values.new_zeros(*values.shape[:-1], len(self.groups))
        return out.index_add_(-1, self.group_index.to(values.device), values)

    def _select(self, z: torch.Tensor) -> torch.Tensor:
        scores = self._group_sum(z * self.opening.to(z).clamp(min=0))
        winner = scores.argmax(-1, keepdim=True)                          # [..., 1]
        keep = self.group_index.to(z.device) == winner                    # [..., K]
        return z * keep.to(z.dtype)

    def openings(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token opening of each strategy [..., G] (``self.groups`` order): 0 silent, 1 full strength."""
        return self._group_sum(self.activations(x) * self.opening.to(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delta = torch.zeros((), dtype=x.dtype, device=x.device)
        if self.has_neurons:
            delta = F.linear(self.activations(x), self.down.T.to(x.dtype))
        if self.has_additive:
            delta = delta + self.vector.to(x.dtype)
        return delta * self.scale
