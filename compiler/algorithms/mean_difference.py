"""Mean difference (CAA / DiffMean): the average residual on desired minus undesired completions.

The simplest strong baseline in the steering literature: with paired completions of the same
prompts, the prompt content cancels and what is left is the behaviour's axis.
"""

from __future__ import annotations

from .base import FitInputs, Proposal
from .registry import register


@register
class MeanDifference:
    name = "mean_difference"

    def fit(self, inputs: FitInputs, layer: int) -> Proposal:
        acts = inputs.activations
        li = acts.layer_index(layer)
        positive = acts.resid_completion_mean[inputs.paired, li]
        negative = acts.resid_completion_mean[inputs.paired_negative, li]
        direction = positive.mean(0) - negative.mean(0)
        return Proposal(algorithm=self.name, layer=layer, direction=direction,
                        metadata={"pairs": len(inputs.paired), "norm": float(direction.norm())})
