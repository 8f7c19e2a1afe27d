"""Candidate strategies from the whole algorithm library: fit, rank layers, calibrate strength.

For every registered algorithm and candidate layer this stage proposes a steering strategy from one
shared activation capture, ranks the layers per algorithm by a discriminative score on held-out
pairs, keeps the best few, and calibrates each kept strategy's strength under a drift budget.

- **Layer score** (no model pass): project the val split's paired residual differences
  (positive minus negative completion, same prompt) on the strategy's unit direction. *Sign
  consistency* is the fraction of val pairs whose difference points the direction's way, and the
  *separation* is the mean projection over its standard deviation (a paired Cohen's d). Layers
  are ranked by separation; sign consistency is reported beside it.
- **Strength calibration**: strengths are multiples of the fitted strategy (1 = the direction as
  fitted, or the fitted rotation angle, or a full ablation). For each, the held-out effect (change
  of the val target pairs' log-odds of positive over negative opening) and drift (mean next-token
  KL on val neutral prompts) are measured with the strategy applied statically on every token; the
  chosen strength is the one with the largest effect whose drift stays within the budget. Gating
  (anchors) comes later and only lowers drift, so a strategy that helps statically within budget
  is a safe candidate.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

from tqdm.auto import tqdm

from masteer.runtime import SteeredModel, SteeringAdapter
from masteer.runtime.artifact import ABLATION, ROTATION
from masteer.runtime.errors import LoweringError, MasteerError

from ..capture.activations import Activations
from ..common.prefix_replay import first_steered_layer
from .algorithms import FitInputs, Proposal, available, get_algorithm
from ..samples.sample_set import NEUTRAL, TARGET, Sample
from .scoring import HeldOutScorer

DEFAULT_DRIFT_BUDGET = 0.05    # nats of mean next-token KL on neutral prompts
DEFAULT_STRENGTHS = (0.25, 0.5, 1.0, 2.0, 4.0)
ABLATION_STRENGTHS = (0.5, 1.0)
MIN_EFFECT = 0.05              # an effect below this (log-odds, per token) counts as "did not move"
LOWERINGS = {"neuron": "gated neuron (bake: concatenation)", "additive": "MLP bias (bake)",
             ROTATION: "adapter only (no exact linear lowering)", ABLATION: "weight orthogonalisation (bake)"}


@dataclass
class StrategyRow:
    algorithm: str
    layer: int
    kind: str
    lowering: str
    separation: float               # paired Cohen's d of val differences along the direction
    sign_consistency: float         # fraction of val pairs on the direction's side
    kept: bool = False              # among the best layers of its algorithm
    strength: float | None = None   # chosen multiple of the fitted strategy (None: nothing within budget)
    effect: float = float("nan")    # val target log-odds change at the chosen strength
    drift: float = float("nan")     # mean next-token KL on val neutral prompts at the chosen strength
    tried: list[dict] = field(default_factory=list)
    error: str = ""                 # why the algorithm could not fit here, if it could not

    @property
    def moved(self) -> bool:
        return self.strength is not None and self.effect >= MIN_EFFECT

    def to_dict(self) -> dict:
        return {**asdict(self), "moved": self.moved}


def layer_scores(proposal: Proposal, acts: Activations, val_positive: Sequence[int], val_negative: Sequence[int],
                 position: str = "completion_mean") -> tuple[float, float]:
    """(separation, sign consistency) of the val paired differences along the proposal's direction."""
    u = proposal.direction.double() / proposal.direction.double().norm().clamp_min(1e-30)
    diffs = (acts.residual(position, val_positive, proposal.layer).double()
             - acts.residual(position, val_negative, proposal.layer).double()) @ u
    std = float(diffs.std()) if len(diffs) > 1 else 0.0
    return (float(diffs.mean()) / std if std > 0 else 0.0), float((diffs > 0).double().mean())


def strategy_adapter(base: SteeringAdapter, proposal: Proposal) -> SteeringAdapter:
    """The proposal as a static, always-on strategy at strength 1 (scaled during calibration)."""
    adapter = SteeringAdapter(base.base_model_name_or_path, base.fingerprint, base.host_form, base.activation,
                              provenance=dict(base.provenance))
    name = f"{proposal.algorithm}-L{proposal.layer}"
    if proposal.kind == ABLATION:
        adapter.add_ablation(name, direction=proposal.direction, strength=1.0, normalize=True,
                             algorithm=proposal.algorithm, metadata=proposal.metadata)
    elif proposal.kind == ROTATION:
        angle = math.radians(float(proposal.metadata.get("angle_degrees", 10.0)))
        adapter.add_rotation(proposal.layer, name, direction=proposal.direction, angle=angle, normalize=True,
                             algorithm=proposal.algorithm, metadata=proposal.metadata)
    else:
        adapter.add_additive(proposal.layer, name, direction=proposal.direction, strength=1.0,
                             algorithm=proposal.algorithm, metadata=proposal.metadata)
    return adapter


def calibrate(model, adapter: SteeringAdapter, scorer: HeldOutScorer, strengths: Sequence[float],
              budget: float) -> tuple[float | None, float, float, list[dict]]:
    """Largest-effect strength whose drift is within ``budget`` (None when none is)."""
    steered = SteeredModel(model, adapter)
    tried = []
    try:
        for strength in strengths:
            effect, drift = scorer.score(lambda: steered.scaled(strength), start=first_steered_layer(adapter))
            tried.append({"strength": strength, "effect": round(effect, 4), "drift": round(drift, 5)})
    finally:
        steered.detach()
    within = [t for t in tried if t["drift"] <= budget]
    if not within:
        return None, float("nan"), float("nan"), tried
    best = max(within, key=lambda t: t["effect"])
    return best["strength"], best["effect"], best["drift"], tried


def calibration_pairs(val: Sequence[Sample]) -> list[tuple[str, str, str]]:
    """The (prompt, positive, negative) items calibration measures its effect on: val targets with both."""
    return [(s.prompt, s.positive, s.negative) for s in val if s.label == TARGET and s.has_pair]


def held_out_scorer(model, tokenizer, val: Sequence[Sample], batch_size: int = 16,
                    replay_layers: Sequence[int] = (), drift_from: HeldOutScorer | None = None,
                    store=None) -> HeldOutScorer:
    pairs = calibration_pairs(val)
    neutral = [s.prompt for s in val if s.label == NEUTRAL]
    if not pairs or not neutral:
        raise MasteerError("calibration needs val target samples with both completions and val neutral prompts")
    return HeldOutScorer(model, tokenizer, pairs, neutral, batch_size=batch_size, replay_layers=replay_layers,
                         drift_from=drift_from, store=store)


def propose_all(inputs: FitInputs, layers: Sequence[int], algorithms: Sequence[str] | None = None
                ) -> list[tuple[str, int, Proposal | None, str]]:
    """(algorithm, layer, proposal or None, error) for every algorithm x layer; fitting failures are kept."""
    out = []
    for name in algorithms or available():
        algorithm = get_algorithm(name)
        for layer in layers:
            try:
                out.append((name, layer, algorithm.fit(inputs, layer), ""))
            except MasteerError as exc:
                out.append((name, layer, None, str(exc)))
    return out


def library_table(model, tokenizer, base: SteeringAdapter, inputs: FitInputs, val_pairs: tuple[list[int], list[int]],
                  val: Sequence[Sample], layers: Sequence[int], algorithms: Sequence[str] | None = None,
                  keep_layers: int = 2, budget: float = DEFAULT_DRIFT_BUDGET, batch_size: int = 16,
                  progress: bool = True, log: Callable[[str], None] = print,
                  strengths: Sequence[float] = DEFAULT_STRENGTHS,
                  proposals_out: dict | None = None, scorer: HeldOutScorer | None = None,
                  drift_from: HeldOutScorer | None = None, store=None) -> list[StrategyRow]:
    """Every algorithm x layer with its layer score; the best ``keep_layers`` per algorithm calibrated.

    ``proposals_out``, when given, receives every fitted proposal keyed by (algorithm, layer). ``scorer``: a
    scorer of ``val``'s pairs and neutral prompts made already (the compile's program search scores the same
    items: its base passes are then made once), replaying at least the kept layers; else one is made here, with
    the drift of ``drift_from`` (a scorer of other target items against the same neutral prompts) where it serves
    and its base passes read from ``store`` (``scorer_store.ScorerBaseStore``) where they are stored."""
    rows: list[StrategyRow] = []
    proposals: dict[tuple[str, int], Proposal] = {} if proposals_out is None else proposals_out
    for name, layer, proposal, error in propose_all(inputs, layers, algorithms):
        if proposal is None:
            rows.append(StrategyRow(name, layer, "-", "-", float("nan"), float("nan"), error=error))
            continue
        separation, sign = layer_scores(proposal, inputs.activations, *val_pairs,
                                        position=proposal.metadata.get("position", "completion_mean"))
        rows.append(StrategyRow(name, layer, proposal.kind, LOWERINGS.get(proposal.kind, proposal.kind),
                                separation, sign))
        proposals[(name, layer)] = proposal
    for name in dict.fromkeys(r.algorithm for r in rows):
        fitted = sorted((r for r in rows if r.algorithm == name and not r.error), key=lambda r: -r.separation)
        for r in fitted[:keep_layers]:
            r.kept = True
    kept = [r for r in rows if r.kept]
    if scorer is None:
        scorer = held_out_scorer(model, tokenizer, val, batch_size, replay_layers=sorted({r.layer for r in kept}),
                                 drift_from=drift_from, store=store)
    for r in tqdm(kept, desc="calibrating strategies", disable=not progress, leave=False):
        grid = ABLATION_STRENGTHS if r.kind == ABLATION else strengths
        try:
            adapter = strategy_adapter(base, proposals[(r.algorithm, r.layer)])
        except (MasteerError, LoweringError) as exc:
            r.error = str(exc)
            continue
        r.strength, r.effect, r.drift, r.tried = calibrate(model, adapter, scorer, grid, budget)
        log(f"{r.algorithm:>22} L{r.layer:<2} {r.kind:>8}: strength {r.strength}  effect {r.effect:+.3f}  "
            f"drift {r.drift:.4f}")
    return rows


def format_table(rows: Sequence[StrategyRow], budget: float) -> str:
    lines = [f"| algorithm | layer | separation | sign | kept | strength | effect | drift (KL, budget {budget:g}) "
             f"| lowering |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.error:
            lines.append(f"| {r.algorithm} | {r.layer} | - | - | - | - | - | - | could not fit: {r.error[:80]} |")
            continue
        strength = "-" if not r.kept else ("none within budget" if r.strength is None else f"{r.strength:g}")
        effect = f"{r.effect:+.3f}" if r.kept and r.strength is not None else "-"
        drift = f"{r.drift:.4f}" if r.kept and r.strength is not None else "-"
        lines.append(f"| {r.algorithm} | {r.layer} | {r.separation:.2f} | {r.sign_consistency:.2f} | "
                     f"{'yes' if r.kept else ''} | {strength} | {effect} | {drift} | {r.lowering} |")
    return "\n".join(lines)


def as_dicts(rows: Sequence[StrategyRow]) -> list[dict]:
    return [r.to_dict() for r in rows]

