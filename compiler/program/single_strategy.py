"""The single-strategy preset of the compile: one algorithm, its base anchor, one layer chosen by val behaviour.

This is the smallest program the compiler can ship, and the one to reach for when a compile must be cheap or
easy to read: the library survey and the program search are skipped, every candidate layer gets the same
algorithm's direction behind the anchor fitted on where the target behaviour shows (``anchors.fit_gate``),
and the layer whose gated strategy moves the val targets most while leaving the val neutral prompts alone is
kept. The result is a ``Program`` of one strategy, lowered and measured exactly like the adaptive one.

Scoring is passed in (a callable on an adapter) because scoring generates and judges answers, which belongs
to a later stage than this one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping

from masteer.runtime import SteeringAdapter
from masteer.runtime.artifact import INDEPENDENT
from masteer.runtime.errors import MasteerError

from ..strategies.algorithms import Proposal, available
from .anchors import Gate
from .steering_program import Program, ProgramStrategy, lower

SINGLE_ALGORITHM = "mean_difference"


@dataclass
class SingleStrategy:
    """The preset's one setting: which algorithm fits the direction at every candidate layer."""
    algorithm: str = SINGLE_ALGORITHM

    def __post_init__(self):
        if not isinstance(self.algorithm, str) or self.algorithm not in available():
            raise MasteerError(f"unknown algorithm {self.algorithm!r}; available: {', '.join(available())}")


@dataclass
class LayerCandidate:
    """One layer's fitted strategy and anchor, with the held-out numbers that ranked it."""
    layer: int
    direction_norm: float
    gate_stats: dict
    val_target_rate: float = float("nan")   # val target prompts answered as the recipe wants, gated adapter
    val_neutral_rate: float = float("nan")  # the same on val neutral prompts (should stay at base)
    score: float = float("nan")             # target rate minus neutral rate


def strategy_name(recipe_name: str, algorithm: str, layer: int) -> str:
    return f"{recipe_name}-{algorithm}-L{layer}"


def as_strategy(issue: str, proposal: Proposal, gate: Gate, strength: float) -> ProgramStrategy:
    return ProgramStrategy(name=strategy_name(issue, proposal.algorithm, proposal.layer), issue=issue,
                           algorithm=proposal.algorithm, layer=proposal.layer, direction=proposal.direction,
                           strength=strength, gate=gate,
                           metadata={k: v for k, v in proposal.metadata.items() if k != "support"})


def single_program(issue: str, fitted: Mapping[int, tuple[Proposal, Gate]], strength: float,
                   new_adapter: Callable[[], SteeringAdapter],
                   val_rates: Callable[[SteeringAdapter], tuple[float, float]] | None,
                   log: Callable[[str], None] = print) -> tuple[Program, list[LayerCandidate]]:
    """The program of one strategy at the best of the ``fitted`` layers, and every layer's numbers.

    ``val_rates(adapter)`` gives (target rate, neutral rate) on the val split; it is only called when there
    is a choice to make (more than one layer). Ties go to the layer with the lower neutral rate, then to the
    earlier layer."""
    if not fitted:
        raise MasteerError("the single-strategy preset needs at least one candidate layer")
    choose = len(fitted) > 1
    if choose and val_rates is None:
        raise MasteerError("choosing among several layers needs target and neutral samples in the val split")
    candidates = []
    for layer, (proposal, gate) in fitted.items():
        candidate = LayerCandidate(layer=layer, direction_norm=float(proposal.direction.norm()),
                                   gate_stats=dict(gate.stats))
        if choose:
            adapter = lower(Program([as_strategy(issue, proposal, gate, strength)], INDEPENDENT), new_adapter())
            candidate.val_target_rate, candidate.val_neutral_rate = val_rates(adapter)
            candidate.score = candidate.val_target_rate - candidate.val_neutral_rate
        log(f"layer {layer:>2}: |direction| {candidate.direction_norm:6.1f}  gate train recall "
            f"{gate.stats['train_recall']:.2f} fpr {gate.stats['train_fpr']:.2f}  val refusal target "
            f"{candidate.val_target_rate:.2f} neutral {candidate.val_neutral_rate:.2f}")
        candidates.append(candidate)
    chosen = max(candidates, key=lambda c: (c.score, -c.val_neutral_rate)).layer if choose else candidates[0].layer
    proposal, gate = fitted[chosen]
    log(f"chosen layer: {chosen} (strength {strength:g} x the {proposal.algorithm} direction)")
    return Program([as_strategy(issue, proposal, gate, strength)], INDEPENDENT), candidates
