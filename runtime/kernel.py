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
        self._cast: dict[torch.dtype, dict[str, torch.Tensor]] = {}

    def _apply(self, fn, *args, **kwargs):
        self._cast = {}  # .to(device / dtype) replaces the buffers: their casts are stale
        return super()._apply(fn, *args, **kwargs)

    def _buffers_in(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The floating buffers in the activations' dtype, cast once per dtype and kept.

        Casting them on every call was four extra kernel launches per steered layer and token: on a GPU in
        bfloat16 decode, where launches are the cost, that was a third of what a steered layer adds. A cast is
        deterministic, so the kept copy gives bit-identical outputs. Made outside inference mode, so a copy made
        during generation can still be used where autograd records. The buffers are fixed once built (nothing
        edits them in place); ``.to()`` and the like replace them and drop the copies (``_apply``)."""
        cast = self._cast.get(dtype)
        if cast is None:
            with torch.inference_mode(False):
                cast = {name: buffer.to(dtype) for name, buffer in self.named_buffers(recurse=False)
                        if buffer.is_floating_point()}
            self._cast[dtype] = cast
        return cast

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token neuron outputs ``z`` [..., K] after selection: what each neuron contributes."""
        weights = self._buffers_in(x.dtype)
        pre = F.linear(x, weights["gate"])
        if self.gated:
            z = self.act(pre) * F.linear(x, weights["up"])
        else:
            z = self.act(pre + weights["bias"])
        return self._select(z) if self.exclusive else z

    def _group_sum(self, values: torch.Tensor) -> torch.Tensor:
        """[..., K] -> [..., G]: per-strategy sums of neuron values."""
        out = values.new_zeros(*values.shape[:-1], len(self.groups))
        return out.index_add_(-1, self.group_index.to(values.device), values)

    def _select(self, z: torch.Tensor) -> torch.Tensor:
        scores = self._group_sum(z * self._buffers_in(z.dtype)["opening"].clamp(min=0))
        winner = scores.argmax(-1, keepdim=True)                          # [..., 1]
        keep = self.group_index.to(z.device) == winner                    # [..., K]
        return z * keep.to(z.dtype)

    def openings(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token opening of each strategy [..., G] (``self.groups`` order): 0 silent, 1 full strength."""
        return self._group_sum(self.activations(x) * self._buffers_in(x.dtype)["opening"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The delta added to the MLP output: only the launches that compute something (no zero start, no
        multiplication by a scale of 1, both exact no-ops), since in decode each launch is the cost."""
        weights = self._buffers_in(x.dtype)
        if self.has_neurons:
            delta = F.linear(self.activations(x), weights["down"].T)
            if self.has_additive:
                delta = delta + weights["vector"]
        elif self.has_additive:
            delta = weights["vector"]
        else:
            delta = torch.zeros((), dtype=x.dtype, device=x.device)
        return delta if self.scale == 1.0 else delta * self.scale
