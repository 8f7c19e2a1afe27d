"""The interface every steering algorithm implements: captured activations in, a proposal out.

An algorithm sees only the typed ``FitInputs`` (activations indexed by sample, plus which samples
are paired, target or neutral) and returns a ``Proposal``: a direction at a layer and how it wants
to be lowered. It never runs the model; capture happens once, before all algorithms.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from ...capture.activations import Activations


@dataclass
class FitInputs:
    activations: Activations
    paired: list[int]       # sequence indices holding (prompt + positive completion)
    paired_negative: list[int]  # the same prompts with the negative completion, aligned with ``paired``
    target_prompts: list[int]   # sequences whose prompt is a target of the issue
    neutral_prompts: list[int]  # sequences whose prompt must not be steered


@dataclass
class Proposal:
    algorithm: str
    layer: int
    direction: torch.Tensor      # [H], in residual-stream units (strength 1 = as fitted)
    kind: str = "neuron"         # lowering kind requested: "neuron" (gated) or "additive" (always on)
    metadata: dict = field(default_factory=dict)


@runtime_checkable
class Algorithm(Protocol):
    name: str

    def fit(self, inputs: FitInputs, layer: int) -> Proposal:
        ...
