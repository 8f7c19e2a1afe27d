"""PCA of paired differences (RepE, Zou et al. 2023; repeng's ``pca_diff``; steering-vectors' ``pca_aggregator``).

Why it exists: the mean difference weighs every pair's difference equally, so a few pairs that
differ in something else (length, topic, a stray token) pull it off the behaviour's axis. The first
principal component of the differences is the single axis that explains most of how the pairs
differ; on clean contrast data it agrees with the mean difference, on noisy data it follows the
shared axis and ignores idiosyncratic directions that only a few pairs carry.

Two conventions exist in the peer libraries, and ``center`` picks one:

- ``center=False`` (default; steering-vectors' ``pca_aggregator``, and RepE with randomly ordered pairs):
  the top eigenvector of the second moment ``E[d d^T] = m m^T + Cov(d)``. It keeps the mean shift
  ``m``, so it finds the behaviour axis whenever the pairs agree on it.
- ``center=True`` (repeng 0.4.0 ``pca_diff``, which hands the differences to scikit-learn's PCA, and that
  centres them): the top eigenvector of ``Cov(d)``. It finds the axis along which the pairs differ
  *by different amounts*. When every pair shows the behaviour about equally strongly, centring removes
  exactly that shared shift and what is left is noise, which is why it is not the default here.

Sign and scale follow the library's rule (``_paired.scale_to_mean_difference``): the component points
from negative to positive on average (``u . m > 0``; repeng uses a majority vote of the pairs instead,
which agrees except on pathological data) and is returned as ``(u . m) u``, so strength 1 moves an
activation along ``u`` as far as the average pair differs along it, as ``mean_difference`` does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from masteer.runtime.errors import MasteerError

from ._paired import DEFAULT_POSITION, check_position, make_args, paired_residuals, scale_to_mean_difference, summary
from .base import FitInputs, Proposal
from .registry import register


@dataclass(frozen=True)
class PCAArgs:
    position: str = DEFAULT_POSITION   # residual position to read (see activations.RESIDUAL_POSITIONS)
    center: bool = False               # True: repeng's pca_diff (PCA of centred differences)

    def __post_init__(self):
        check_position(self.position, "pca")


@register
class PCADiff:
    name = "pca"

    def __init__(self, args: PCAArgs | None = None, **kwargs):
        self.args: PCAArgs = make_args(self.name, PCAArgs, args, kwargs)

    def fit(self, inputs: FitInputs, layer: int) -> Proposal:
        positive, negative = paired_residuals(inputs, layer, self.args.position, self.name)
        differences = positive - negative
        mean_difference = differences.mean(0)
        if self.args.center:
            if len(differences) < 2:
                raise MasteerError(f"{self.name}: center=True needs at least 2 pairs (one centred difference is zero)")
            differences = differences - mean_difference
        _, singular, vh = torch.linalg.svd(differences, full_matrices=False)
        if singular[0] == 0:
            raise MasteerError(f"{self.name}: the paired differences at layer {layer} are all zero; "
                               f"there is no component to fit")
        direction = scale_to_mean_difference(vh[0], mean_difference, self.name, layer)
        energy = singular.square()
        metadata = summary(direction, mean_difference, len(positive), self.args.position)
        metadata.update(args=asdict(self.args), explained_variance_ratio=round(float(energy[0] / energy.sum()), 6))
        return Proposal(algorithm=self.name, layer=layer, direction=direction.float(), kind="neuron",
                        metadata=metadata)
