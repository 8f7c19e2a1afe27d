"""Angle-preserving (rotation) steering: Angular Steering (Vu & Nguyen 2025, arXiv:2510.26243) and its
norm-preserving refinement Selective Steering (Dang & Ngo 2026, arXiv:2601.19375).

Why it exists: models with RMSNorm/LayerNorm read the *direction* of the residual stream, not its
length, and residual norms grow from layer to layer. Adding ``strength * d`` therefore does too much
to short activations and too little to long ones, and has a strength that must be tuned per layer.
Rotating the activation toward the target direction by an angle keeps its norm (so the next norm
layer sees an in-distribution input) and has one knob, the angle, whose meaning is the same at every
layer. Addition and directional ablation are special cases of a rotation in the plane of the
activation and the direction, and small models in particular keep their fluency better.

The proposal (kind ``"rotation"``): ``direction`` is the unit target direction ``d`` (the normalised
mean paired difference at ``position``), and ``metadata["angle_degrees"]`` the default angle. The
convention this proposal assumes is: each activation ``h`` is rotated toward ``d`` by the angle within
the plane ``span(h, d)``, with ``|h|`` unchanged. A rotation is not linear in ``h``, so it has no exact
lowering to a bias, a LoRA or a merged checkpoint: it is adapter-only, and asking for another target
must say so and name the strategy.

The default angle is fitted, not guessed: the mean over pairs of ``angle(negative_i, d) -
angle(positive_i, d)``, i.e. how much closer in angle the desired completion's residual is to ``d`` than
the undesired one's. Rotating an undesired activation by that angle brings it, on average, to where the
desired ones are. ``angle_degrees`` overrides it.

Selective Steering's layer criterion is reported too: ``metadata["opposite_signs"]`` is true when the
positive and negative class means project onto ``d`` with opposite signs, the layers where the paper
found rotation to be safe and effective.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from masteer.runtime.errors import MasteerError

from ._paired import DEFAULT_POSITION, check_position, make_args, paired_residuals, unit
from .base import FitInputs, Proposal
from .registry import register


@dataclass(frozen=True)
class RotationArgs:
    position: str = DEFAULT_POSITION     # residual position to read
    angle_degrees: float | None = None   # None: fitted from the pairs (see the module docstring)

    def __post_init__(self):
        check_position(self.position, "rotation")
        if self.angle_degrees is not None and not 0 < self.angle_degrees <= 180:
            raise MasteerError(f"rotation: angle_degrees must be in (0, 180], got {self.angle_degrees}")


def angle_to(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Angle in radians between each row of ``x`` and the unit vector ``d``."""
    cos = (x @ d) / x.norm(dim=1).clamp_min(1e-30)
    return torch.arccos(cos.clamp(-1.0, 1.0))


@register
class Rotation:
    name = "rotation"

    def __init__(self, args: RotationArgs | None = None, **kwargs):
        self.args: RotationArgs = make_args(self.name, RotationArgs, args, kwargs)

    def fit(self, inputs: FitInputs, layer: int) -> Proposal:
        positive, negative = paired_residuals(inputs, layer, self.args.position, self.name)
        mean_difference = (positive - negative).mean(0)
        d = unit(mean_difference, "mean paired difference", self.name, layer)
        fitted = math.degrees(float((angle_to(negative, d) - angle_to(positive, d)).mean()))
        if self.args.angle_degrees is None and not fitted > 0:
            raise MasteerError(f"{self.name}: at layer {layer} the positive residuals are not closer in angle to the "
                               f"target direction than the negative ones (mean gap {fitted:.3g} degrees); rotation "
                               f"toward it would not make activations more like the positives. Pass angle_degrees "
                               f"to force an angle, or use another layer or position")
        angle = fitted if self.args.angle_degrees is None else float(self.args.angle_degrees)
        pos_proj, neg_proj = float(positive.mean(0) @ d), float(negative.mean(0) @ d)
        metadata = {"pairs": len(positive), "position": self.args.position, "args": asdict(self.args),
                    "angle_degrees": round(angle, 6), "angle_source": "fitted" if self.args.angle_degrees is None
                    else "given", "fitted_angle_degrees": round(fitted, 6),
                    "mean_difference_norm": float(mean_difference.norm()),
                    "positive_projection": pos_proj, "negative_projection": neg_proj,
                    "opposite_signs": pos_proj * neg_proj < 0}
        return Proposal(algorithm=self.name, layer=layer, direction=d.float(), kind="rotation", metadata=metadata)
