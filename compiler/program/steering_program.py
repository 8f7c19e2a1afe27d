"""The compiled program: which strategies fire, where, behind which anchor, how strongly; and its lowering.

A program is the compiler's last typed stage before an artifact: a list of gated strategies
(layer, direction, strength, gate) and a selection policy. Lowering writes it into a masteer
adapter: each strategy becomes its gate's host-form neurons (a two-neuron ramp, see ``anchors``)
sharing one *group*, with opening weights so that the runtime can report, per token, how far each
strategy is open (0 silent, 1 full strength) and, in exclusive mode, pick one per layer.

Lowering *appends*: lowering into an adapter that already holds strategies (``--add-to``) leaves
every existing tensor and spec untouched, so the old strategies compute exactly what they did.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from masteer.runtime import SteeringAdapter
from masteer.runtime.artifact import INDEPENDENT, SELECTIONS
from masteer.runtime.errors import MasteerError

from .anchors import Gate


@dataclass
class ProgramStrategy:
    name: str
    issue: str
    algorithm: str
    layer: int
    direction: torch.Tensor      # [H] at strength 1, in mean-difference units (algorithms/_paired.py)
    strength: float
    gate: Gate
    metadata: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"name": self.name, "issue": self.issue, "algorithm": self.algorithm, "layer": self.layer,
                "strength": self.strength, "direction_norm": round(float(self.direction.norm()), 4),
                "gate": {k: round(v, 4) if isinstance(v, float) else v for k, v in self.gate.stats.items()}}


@dataclass
class Program:
    strategies: list[ProgramStrategy]
    selection: str = INDEPENDENT

    def __post_init__(self):
        if self.selection not in SELECTIONS:
            raise MasteerError(f"selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")
        names = [s.name for s in self.strategies]
        if len(set(names)) != len(names):
            raise MasteerError(f"program strategy names repeat: {sorted(n for n in set(names) if names.count(n) > 1)}")

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.strategies]

    def summary(self) -> dict:
        return {"selection": self.selection, "strategies": [s.summary() for s in self.strategies]}


def add_gated_strategy(adapter: SteeringAdapter, strategy: ProgramStrategy) -> None:
    """Append ``strategy`` as its gate's neurons, grouped under the strategy's name."""
    anchor = {"threshold": strategy.gate.threshold, "unit": strategy.gate.unit, "kappa": strategy.gate.kappa,
              **{k: round(v, 4) if isinstance(v, float) else v for k, v in strategy.gate.stats.items()}}
    for neuron in strategy.gate.neurons:
        adapter.add_neuron(
            strategy.layer, strategy.name if neuron.role == "open" else f"{strategy.name}:{neuron.role}",
            gate=neuron.gate, up=neuron.up, bias=neuron.bias,
            direction=neuron.sign * strategy.gate.output_scale * strategy.direction, strength=strategy.strength,
            issue=strategy.issue, algorithm=strategy.algorithm,
            metadata={"gate_role": neuron.role, "anchor": anchor, **strategy.metadata},
            group=strategy.name, opening=neuron.sign * strategy.gate.output_scale)


def lower(program: Program, adapter: SteeringAdapter) -> SteeringAdapter:
    """Write ``program`` into ``adapter`` (in place, appending) and return it."""
    taken = {s.strategy for s in adapter.strategies}
    clash = sorted(taken & set(program.names))
    if clash:
        raise MasteerError(f"the adapter already has strategies named {clash}; give the new issue another name")
    if adapter.strategies and adapter.selection != program.selection:
        raise MasteerError(f"the adapter uses selection {adapter.selection!r}, the program {program.selection!r}: "
                           f"one adapter has one selection policy")
    adapter.selection = program.selection
    for strategy in program.strategies:
        add_gated_strategy(adapter, strategy)
    return adapter
