"""Fisher's linear discriminant (LDA) with shrinkage: the class-conditionally whitened mean difference
``Sigma_w^{-1} (mu_pos - mu_neg)``.

Why it exists: the same failure of the mean difference that the logistic probe addresses (noise that is
not isotropic: outlier dimensions, prompt topic, position), solved in closed form. Whitening by the
pooled within-class covariance divides out directions along which positive and negative residuals
vary anyway, so what remains is the axis that *separates* the classes, not merely the one their means
lie along. Marks et al. (2023, "The Geometry of Truth") used this whitened mean difference as a probe;
it is the Bayes-optimal linear discriminant for two Gaussians with a shared covariance. It needs no
iterative fit, so it is exact and deterministic.

Shrinkage: the within-class covariance of N residuals has rank at most N - 2, far below the hidden
size for typical sample sets, so it is singular and its small eigenvalues are noise. It is replaced by
``(1 - a) Sigma_w + a (tr(Sigma_w) / H) I``: ``a = 1`` gives back the mean difference direction, ``a = 0``
plain LDA. ``shrinkage="auto"`` (default) picks ``a`` by the Ledoit-Wolf formula (Ledoit & Wolf 2004, as
in scikit-learn's ``LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto")``), which estimates the
mix that minimises the expected squared error of the covariance estimate from the data itself.

The returned direction is the unit discriminant, signed to point from negative to positive (it always
does: ``m . Sigma^{-1} m > 0``), scaled as ``(u . m) u`` with ``m`` the mean paired difference, so
strength 1 means what it means for ``mean_difference`` (``_paired.scale_to_mean_difference``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch

from masteer.runtime.errors import MasteerError

from ._paired import DEFAULT_POSITION, check_position, make_args, paired_residuals, scale_to_mean_difference, summary
from .base import FitInputs, Proposal
from .registry import register


@dataclass(frozen=True)
class LDAArgs:
    position: str = DEFAULT_POSITION              # residual position to read
    shrinkage: float | Literal["auto"] = "auto"   # a in [0, 1], or Ledoit-Wolf

    def __post_init__(self):
        check_position(self.position, "lda")
        if self.shrinkage != "auto" and not (isinstance(self.shrinkage, (int, float)) and 0 <= self.shrinkage <= 1):
            raise MasteerError(f"lda: shrinkage must be a number in [0, 1] or 'auto', got {self.shrinkage!r}")


def ledoit_wolf_shrinkage(x: torch.Tensor) -> float:
    """Ledoit-Wolf shrinkage intensity toward ``(tr(S) / H) I`` for centred rows ``x`` [N, H]."""
    n, h = x.shape
    cov = x.T @ x / n
    mu = torch.trace(cov) / h
    delta = (cov - mu * torch.eye(h, dtype=x.dtype)).square().sum() / h
    if delta == 0:
        return 1.0
    # sum_k |x_k x_k^T - S|_F^2 = sum_k |x_k|^4 - 2 x_k^T S x_k + |S|_F^2 ; averaged and divided by N
    row_sq = x.square().sum(1)
    beta = (row_sq.square().sum() - 2 * ((x @ cov) * x).sum() + n * cov.square().sum()) / (n * n * h)
    return float(torch.clamp(beta, max=delta) / delta)


@register
class LDA:
    name = "lda"

    def __init__(self, args: LDAArgs | None = None, **kwargs):
        self.args: LDAArgs = make_args(self.name, LDAArgs, args, kwargs)

    def fit(self, inputs: FitInputs, layer: int) -> Proposal:
        positive, negative = paired_residuals(inputs, layer, self.args.position, self.name)
        hidden = positive.shape[1]
        mean_difference = positive.mean(0) - negative.mean(0)
        within = torch.cat([positive - positive.mean(0), negative - negative.mean(0)])
        dof = max(len(within) - 2, 1)
        cov = within.T @ within / dof
        scale = torch.trace(cov) / hidden
        if scale == 0:  # no within-class spread at all: every direction is equally reliable
            alpha, whitened = 1.0, mean_difference
        else:
            alpha = ledoit_wolf_shrinkage(within) if self.args.shrinkage == "auto" else float(self.args.shrinkage)
            shrunk = (1 - alpha) * cov + alpha * scale * torch.eye(hidden, dtype=cov.dtype)
            whitened = torch.linalg.solve(shrunk, mean_difference)
        if not whitened.norm() > 0:
            raise MasteerError(f"{self.name}: the class means at layer {layer} coincide; there is no direction to fit")
        direction = scale_to_mean_difference(whitened, mean_difference, self.name, layer)
        metadata = summary(direction, mean_difference, len(positive), self.args.position)
        metadata.update(args=asdict(self.args), shrinkage=round(alpha, 6))
        return Proposal(algorithm=self.name, layer=layer, direction=direction.float(), kind="neuron",
                        metadata=metadata)
