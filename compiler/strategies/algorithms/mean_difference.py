"""Mean difference (CAA, Rimsky et al. 2024; DiffMean): the average residual on desired minus undesired
completions of the same prompts.

The simplest strong baseline in the steering literature: with paired completions of the same
prompts, the prompt content cancels and what is left is the behaviour's axis. It is the reference
every other algorithm's strength is expressed in (``_paired.scale_to_mean_difference``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ._paired import DEFAULT_POSITION, check_position, make_args, paired_residuals, summary
from .base import FitInputs, Proposal
from .registry import register


@dataclass(frozen=True)
class MeanDifferenceArgs:
    position: str = DEFAULT_POSITION   # residual position to read (see activations.RESIDUAL_POSITIONS)

    def __post_init__(self):
        check_position(self.position, "mean_difference")


@register
class MeanDifference:
    name = "mean_difference"

    def __init__(self, args: MeanDifferenceArgs | None = None, **kwargs):
        self.args: MeanDifferenceArgs = make_args(self.name, MeanDifferenceArgs, args, kwargs)

    def fit(self, inputs: FitInputs, layer: int) -> Proposal:
        positive, negative = paired_residuals(inputs, layer, self.args.position, self.name)
        direction = positive.mean(0) - negative.mean(0)
        metadata = summary(direction, direction, len(positive), self.args.position)
        metadata.update(args=asdict(self.args))
        return Proposal(algorithm=self.name, layer=layer, direction=direction.float(), kind="neuron",
                        metadata=metadata)
