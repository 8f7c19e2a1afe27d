"""A third-party steering algorithm, shaped as a plugin package would ship it.

A real plugin declares it in its own pyproject.toml::

    [project.entry-points."masteer.algorithms"]
    toy = "masteer_toy_plugin:ToyMedianDifference"

and masteer finds it through that entry-point group without any change to masteer's files.
test_plugin.py installs it by writing the equivalent dist-info folder into a temporary directory.
"""

from __future__ import annotations

from masteer.compiler.strategies.algorithms import FitInputs, Proposal


class ToyMedianDifference:
    """The coordinate-wise median of the paired differences, times ``scale`` (robust to outlier pairs)."""

    name = "toy"

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def fit(self, inputs: FitInputs, layer: int) -> Proposal:
        acts = inputs.activations
        differences = (acts.residual("completion_mean", inputs.paired, layer)
                       - acts.residual("completion_mean", inputs.paired_negative, layer))
        direction = self.scale * differences.median(dim=0).values
        return Proposal(algorithm=self.name, layer=layer, direction=direction, kind="neuron",
                        metadata={"pairs": len(inputs.paired), "scale": self.scale})
