"""Directional ablation (Arditi et al. 2024, "Refusal in Language Models Is Mediated by a Single Direction").

Why it exists: adding a vector pushes every input the same way, so its strength trades the effect
against drift. When a behaviour is mediated by one direction, *removing* that direction from the
residual stream, ``x <- x - (r . x) r`` with ``r`` a unit vector, switches the behaviour off while
leaving inputs that do not use the direction untouched, and there is no strength to tune. Arditi et
al. showed this for refusal (ablating the refusal direction jailbreaks; adding it induces refusal).

The proposal is the unit direction ``r`` (kind ``"ablation"``); it says nothing about strength. Its
exact lowering is weight orthogonalisation: ``W <- W - r r^T W`` on every matrix that writes into the
residual stream (embedding, attention and MLP output projections), which the runtime implements.

``contrast`` chooses which mean difference ``r`` normalises:

- ``"pairs"`` (default): positive minus negative completions of the same prompts at ``position``
  (default ``completion_mean``), as every paired algorithm here reads. ``r`` points from negative to
  positive; ablation is sign-blind, so this only matters for reading the metadata.
- ``"prompts"``: target prompts minus neutral prompts, Arditi et al.'s own recipe (harmful minus
  harmless instructions at the post-instruction tokens). Read at ``last_prompt`` by default; prompts
  without a completion have no ``completion_mean``, so that position is refused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from masteer.runtime.errors import MasteerError

from ._paired import DEFAULT_POSITION, check_position, group_residuals, make_args, paired_residuals, unit
from .base import FitInputs, Proposal
from .registry import register


@dataclass(frozen=True)
class DirectionalAblationArgs:
    contrast: Literal["pairs", "prompts"] = "pairs"
    position: str | None = None  # None: completion_mean for "pairs", last_prompt for "prompts"

    def __post_init__(self):
        if self.contrast not in ("pairs", "prompts"):
            raise MasteerError(f"directional_ablation: contrast must be 'pairs' or 'prompts', got {self.contrast!r}")
        if self.position is not None:
            check_position(self.position, "directional_ablation")
        if self.contrast == "prompts" and self.position == "completion_mean":
            raise MasteerError("directional_ablation: contrast='prompts' reads prompts, which may have no completion; "
                               "use position='last_prompt' (default) or 'last_token'")

    @property
    def read_position(self) -> str:
        if self.position is not None:
            return self.position
        return DEFAULT_POSITION if self.contrast == "pairs" else "last_prompt"


@register
class DirectionalAblation:
    name = "directional_ablation"

    def __init__(self, args: DirectionalAblationArgs | None = None, **kwargs):
        self.args: DirectionalAblationArgs = make_args(self.name, DirectionalAblationArgs, args, kwargs)

    def fit(self, inputs: FitInputs, layer: int) -> Proposal:
        position = self.args.read_position
        if self.args.contrast == "pairs":
            positive, negative = paired_residuals(inputs, layer, position, self.name)
        else:
            positive = group_residuals(inputs.target_prompts, "target prompt", inputs, layer, position, self.name)
            negative = group_residuals(inputs.neutral_prompts, "neutral prompt", inputs, layer, position, self.name)
        mean_difference = positive.mean(0) - negative.mean(0)
        r = unit(mean_difference, f"mean difference ({self.args.contrast})", self.name, layer)
        metadata = {"position": position, "contrast": self.args.contrast, "positive": len(positive),
                    "negative": len(negative), "mean_difference_norm": float(mean_difference.norm()),
                    "args": asdict(self.args)}
        return Proposal(algorithm=self.name, layer=layer, direction=r.float(), kind="ablation", metadata=metadata)
