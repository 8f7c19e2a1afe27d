"""Applicability: how much each candidate strategy moves each target sample, and how much it drifts.

This is what anchors are fitted from. A strategy's anchor should open on the inputs where *it*
helps, so the compiler first measures, for every candidate and every target sample, the effect of
applying that candidate (teacher-forced: the change of the sample's log-odds of its desired over
its undesired opening, or of its desired opening alone where it has no undesired one; see
``scoring.HeldOutScorer``), and the candidate's drift on neutral prompts.

From the matrix follow the per-sample *winner* (the candidate with the largest effect), the win
counts (a candidate that never wins anywhere is pruned), and each candidate's *help mask*: the
samples where it moves the target and comes within ``margin`` of the best candidate there.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from tqdm.auto import tqdm

from masteer.runtime import SteeredModel, SteeringAdapter
from masteer.runtime.artifact import NEURON

from ..common.prefix_replay import first_steered_layer
from ..strategies.scoring import HeldOutScorer

HELP_MARGIN = 0.25   # a candidate "helps" a sample when its effect is > 0 and >= best - margin * |best|


@dataclass
class Applicability:
    strategies: list[str]
    sample_ids: list[str]
    effect: torch.Tensor     # [K, N] effect of strategy k on target sample n
    drift: list[float]       # [K] mean next-token KL on neutral prompts (NaN when measured without them)

    def __post_init__(self):
        if tuple(self.effect.shape) != (len(self.strategies), len(self.sample_ids)):
            raise ValueError(f"effect has shape {tuple(self.effect.shape)}, expected "
                             f"({len(self.strategies)}, {len(self.sample_ids)})")

    def index(self, name: str) -> int:
        return self.strategies.index(name)

    def mean_effect(self, name: str) -> float:
        return float(self.effect[self.index(name)].mean())

    def winners(self) -> torch.Tensor:
        """[N] index of the candidate with the largest effect on each sample."""
        return self.effect.argmax(0)

    def win_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.winners(), minlength=len(self.strategies))
        return {name: int(c) for name, c in zip(self.strategies, counts)}

    def helps(self, name: str, margin: float = HELP_MARGIN) -> torch.Tensor:
        """[N] bool: the samples where ``name`` moves the target and is within ``margin`` of the best."""
        effect = self.effect[self.index(name)]
        best = self.effect.max(0).values
        return (effect > 0) & (effect >= best - margin * best.abs())

    def to_dict(self) -> dict:
        return {"strategies": self.strategies, "samples": len(self.sample_ids),
                "mean_effect": {n: round(float(e.mean()), 4) for n, e in zip(self.strategies, self.effect)},
                "drift": {n: round(d, 5) for n, d in zip(self.strategies, self.drift)},
                "wins": self.win_counts()}


@contextmanager
def _attached(model, adapter: SteeringAdapter):
    """``adapter`` attached to ``model`` for the block: yields its first steered layer (where a replaying scorer
    starts) and the steered model when every strategy is a gated neuron (whose untouched rows drift skips)."""
    steered = SteeredModel(model, adapter, check_fingerprint=False)
    gated = bool(adapter.strategies) and all(s.kind == NEURON for s in adapter.strategies)
    try:
        yield first_steered_layer(adapter), steered if gated else None
    finally:
        steered.detach()


def score_adapter(model, scorer: HeldOutScorer, adapter: SteeringAdapter) -> tuple[torch.Tensor, float]:
    """(per-sample effect, drift) of one adapter (a single strategy or a whole program) attached to ``model``."""
    with _attached(model, adapter) as (start, gates):
        return scorer.score_samples(start=start, gates=gates)


def adapter_drift(model, scorer: HeldOutScorer, adapter: SteeringAdapter) -> float:
    """The drift alone of ``adapter`` attached to ``model``: what :func:`score_adapter` gives without the targets'
    pass, for callers that read no effect."""
    with _attached(model, adapter) as (start, gates):
        return scorer.score_drift(start=start, gates=gates)


def measure(model, scorer: HeldOutScorer, adapters: Mapping[str, SteeringAdapter], sample_ids: Sequence[str],
            progress: bool = True, desc: str = "applicability") -> Applicability:
    """Each adapter attached alone to ``model``, scored on every target item of ``scorer``."""
    scored = [score_adapter(model, scorer, adapter)
              for adapter in tqdm(adapters.values(), desc=desc, disable=not progress, leave=False)]
    return Applicability(strategies=list(adapters), sample_ids=list(sample_ids),
                         effect=torch.stack([effect for effect, _ in scored]), drift=[drift for _, drift in scored])
