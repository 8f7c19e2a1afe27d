"""Linear-probe direction (ITI, Li et al. 2023, "Inference-Time Intervention"; also steering-vectors'
``logistic_aggregator``): the weight vector of a logistic regression that tells positive-completion
residuals from negative-completion ones.

Why it exists: the mean difference is the best direction only when the within-class noise is
isotropic. Real residual streams have a few high-variance directions (outlier dimensions, position,
topic); when the classes' means also differ a little along one of those, the mean difference points
partly along it, and steering along it moves mostly what varies anyway. A discriminative probe
down-weights directions where the classes overlap and keeps the one that separates them, which is the
direction ITI found to matter for truthfulness. Use it when the pairs are noisy or the model has strong
outlier dimensions; with clean pairs it agrees with the mean difference.

The fit: L2-regularised logistic regression with an intercept, by full-batch L-BFGS in float64 from a
zero start (deterministic: no sampling, no random init). Features are centred on the pooled mean and
divided by one scalar (the root-mean-square row norm), which leaves the geometry (and so the direction)
unchanged and makes ``l2`` independent of the residual stream's scale. Large ``l2`` tends to the mean
difference direction; small ``l2`` to the max-margin direction of separable data.

The returned direction is the unit weight vector, signed to point from negative to positive, scaled as
``(u . m) u`` with ``m`` the mean paired difference (``_paired.scale_to_mean_difference``), so strength 1
moves an activation along ``u`` as far as the average pair differs along it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch.nn import functional as F

from masteer.runtime.errors import MasteerError

from ._paired import DEFAULT_POSITION, check_position, make_args, paired_residuals, scale_to_mean_difference, summary
from .base import FitInputs, Proposal
from .registry import register


@dataclass(frozen=True)
class LogisticProbeArgs:
    position: str = DEFAULT_POSITION   # residual position to read
    l2: float = 1e-2                   # weight of 0.5 * |w|^2 added to the mean cross-entropy (scale-free features)
    max_iter: int = 500                # L-BFGS iterations

    def __post_init__(self):
        check_position(self.position, "logistic_probe")
        if not self.l2 >= 0:
            raise MasteerError(f"logistic_probe: l2 must be >= 0, got {self.l2}")
        if self.max_iter < 1:
            raise MasteerError(f"logistic_probe: max_iter must be >= 1, got {self.max_iter}")


@register
class LogisticProbe:
    name = "logistic_probe"

    def __init__(self, args: LogisticProbeArgs | None = None, **kwargs):
        self.args: LogisticProbeArgs = make_args(self.name, LogisticProbeArgs, args, kwargs)

    def fit(self, inputs: FitInputs, layer: int) -> Proposal:
        positive, negative = paired_residuals(inputs, layer, self.args.position, self.name)
        mean_difference = (positive - negative).mean(0)
        x = torch.cat([positive, negative])
        y = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))]).double()
        x = x - x.mean(0)
        scale = x.square().sum(1).mean().sqrt()
        if scale == 0:
            raise MasteerError(f"{self.name}: all residuals at layer {layer} are identical; nothing to separate")
        x = x / scale
        w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
        b = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=self.args.max_iter, tolerance_grad=1e-10,
                                tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = F.binary_cross_entropy_with_logits(x @ w + b, y) + 0.5 * self.args.l2 * (w @ w)
            loss.backward()
            return loss

        with torch.enable_grad():
            opt.step(closure)
        w, b = w.detach(), b.detach()
        if w.norm() == 0 or not torch.isfinite(w).all():
            raise MasteerError(f"{self.name}: the probe at layer {layer} learned no direction (weights {w.norm():.3g})")
        direction = scale_to_mean_difference(w, mean_difference, self.name, layer)
        accuracy = float(((x @ w + b > 0).double() == y).double().mean())
        metadata = summary(direction, mean_difference, len(positive), self.args.position)
        metadata.update(args=asdict(self.args), train_accuracy=round(accuracy, 6),
                        iterations=int(opt.state[opt._params[0]].get("n_iter", 0)))
        return Proposal(algorithm=self.name, layer=layer, direction=direction.float(), kind="neuron",
                        metadata=metadata)
