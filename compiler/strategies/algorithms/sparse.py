"""Sparse steering: the top-``k`` coordinates of the mean paired difference, every other coordinate zero.

Why it exists: a dense vector writes into every residual coordinate, including ones that carry
unrelated features, and every coordinate it touches is a way to drift. Sparse steering edits few
coordinates, so the edit is small, cheap to inspect ("which dimensions does this strategy move?") and
interferes less with what it does not target. YaPO (Bounhar et al. 2026, arXiv:2601.08441, "Learnable
Sparse Activation Steering Vectors") learns sparse steering codes in a sparse autoencoder's latent space
with a preference objective; with no SAE at hand this is the training-free baseline of the same idea in
the residual basis itself: keep the ``k`` coordinates where the positive and negative completions differ
most. It helps when a behaviour is carried by a few coordinates (residual streams do have a few
large-magnitude "massive" dimensions); when it is spread thinly over many, the kept part is small, and
``metadata["kept_norm_fraction"]`` says so.

``k`` defaults to 5% of the hidden size (rounded up, at least 1); ``k = H`` gives back the mean
difference exactly. Ties in magnitude are broken by the lower coordinate index, so the support is
deterministic. Kept coordinates keep their mean-difference values (no rescaling): strength 1 moves
each kept coordinate by as much as the average pair differs in it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from masteer.runtime.errors import MasteerError

from ._paired import DEFAULT_POSITION, check_position, make_args, paired_residuals, unit
from .base import FitInputs, Proposal
from .registry import register

DEFAULT_FRACTION = 0.05


@dataclass(frozen=True)
class SparseArgs:
    position: str = DEFAULT_POSITION  # residual position to read
    k: int | None = None              # kept coordinates; None: ceil(5% of the hidden size)

    def __post_init__(self):
        check_position(self.position, "sparse")
        if self.k is not None and (not isinstance(self.k, int) or isinstance(self.k, bool) or self.k < 1):
            raise MasteerError(f"sparse: k must be a positive integer, got {self.k!r}")

    def resolve_k(self, hidden: int) -> int:
        return max(1, math.ceil(DEFAULT_FRACTION * hidden)) if self.k is None else self.k


def top_k_support(values: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest ``|values|``, ties to the lower index, in ascending index order."""
    order = torch.sort(values.abs(), descending=True, stable=True).indices
    return order[:k].sort().values


@register
class Sparse:
    name = "sparse"

    def __init__(self, args: SparseArgs | None = None, **kwargs):
        self.args: SparseArgs = make_args(self.name, SparseArgs, args, kwargs)

    def fit(self, inputs: FitInputs, layer: int) -> Proposal:
        positive, negative = paired_residuals(inputs, layer, self.args.position, self.name)
        mean_difference = (positive - negative).mean(0)
        hidden = mean_difference.numel()
        k = self.args.resolve_k(hidden)
        if k > hidden:
            raise MasteerError(f"{self.name}: k={k} is larger than the hidden size {hidden}")
        unit(mean_difference, "mean paired difference", self.name, layer)  # raises when there is nothing to keep
        support = top_k_support(mean_difference, k)
        direction = torch.zeros_like(mean_difference)
        direction[support] = mean_difference[support]
        metadata = {"pairs": len(positive), "position": self.args.position, "args": asdict(self.args), "k": k,
                    "support": support.tolist(), "norm": float(direction.norm()),
                    "mean_difference_norm": float(mean_difference.norm()),
                    "kept_norm_fraction": round(float(direction.norm() / mean_difference.norm()), 6)}
        return Proposal(algorithm=self.name, layer=layer, direction=direction.float(), kind="neuron",
                        metadata=metadata)
