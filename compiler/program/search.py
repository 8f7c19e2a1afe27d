"""Adaptive multi-strategy programs: anchors fitted from applicability, strategies chosen on held-out samples.

MASteer's core idea: a library proposes several strategies, each carries an anchor saying on which
inputs it helps, and at inference the anchors choose. From the library's candidates (gateable
directions at their layers) this stage:

1. fits a base anchor per candidate on the training split's MLP inputs (the tokens of every training
   target against every token of neutral sequences: the prompts, the model's own answers to them and
   decoy completions, ``neutral_answers``; ``anchors.fit_gate``);
2. measures applicability with that anchor in place: the per-sample effect on training targets and on
   val targets, and the drift on val neutral prompts (``applicability``);
3. specialises each anchor: refitted to open on the training targets where *this* candidate helps (it
   moves the target and comes within a margin of the best candidate there) and to stay shut on
   neutral tokens and on targets where it does nothing or harm. A candidate that helps too few
   samples keeps its base anchor;
4. prunes candidates that win (largest effect) on no val sample;
5. chooses the program greedily on val: start from the best single gated strategy (by the recipe's own
   behaviour score where it has one, e.g. judged refusal of short greedy answers, among the variants with
   the largest val log-odds effect, ``START_SHORTLIST``; else by val log-odds;
   with a behaviour score, the winner's anchor is also tried at the other operating points of
   ``ANCHOR_BUDGETS``, because a threshold set on every neutral token is only a proxy for the trade between
   harmful and benign prompts opened),
   add the candidate (among the ``POOL_SIZE`` that win most often) that most raises *coverage* (the share of val targets moved by at least half of what the best single
   strategy typically achieves; ties by mean effect) while the program's drift stays within budget
   and, where the recipe has a behaviour score, that score does not fall;
   stop when a step gains less than ``MIN_COVERAGE_GAIN``. Coverage and not the mean effect is the
   objective because two strategies firing on one input push it twice as far: the mean effect would
   reward that, coverage rewards reaching inputs that no chosen strategy reaches yet;
6. where the recipe has a behaviour score, tries a *catch* strategy: the first strategy's algorithm at each
   candidate layer with an anchor that opens on the training targets' undesired completions (the model
   beginning to comply after a harmful prompt) and stays shut on every neutral token. The forward pass
   decides per token, so an anchor fitted on prompt ends and desired answers shuts as soon as the answer
   drifts towards compliance; the catch re-opens there (measured on the refusal val split: refusal where
   the first anchor is open 74% -> 89%, ``tools/efficacy_variants.py``). Kept only if it raises the
   behaviour score within the drift budget and without opening on more val neutral prompt ends.

Because the search starts from the best single gated strategy and only accepts gains, the program's
val effect is never below it: at a matched drift budget, adaptive >= best single gated.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from masteer.runtime import SteeringAdapter
from masteer.runtime.artifact import INDEPENDENT

from ..capture.activations import COMPLETION, PROMPT_TAIL, Activations
from ..strategies.algorithms import Proposal
from .anchors import DEFAULT_FPR_BUDGET, Gate, fit_gate
from .applicability import adapter_drift, measure, score_adapter
from .steering_program import Program, ProgramStrategy, lower
from ..samples.sample_set import NEUTRAL, TARGET, Sample
from ..strategies.scoring import HeldOutScorer

DEFAULT_MAX_STRATEGIES = 3
MIN_COVERAGE_GAIN = 0.03   # a greedy step must move at least 3% more of the val targets
MIN_SPECIALISED = 8        # fewer helped training samples than this: keep the base anchor
POOL_SIZE = 3              # candidates tried at each greedy step (by val wins)
COVERAGE_FRACTION = 0.5    # "moved": effect >= this fraction of the best single strategy's median effect
MIN_MOVED_EFFECT = 0.01    # ... and never below this (nats), so a program that moves nothing covers nothing
MAX_PROMPT_FPR = 0.05      # an addition may not open the program on more val neutral prompts than this
# variants (candidate x anchor) judged by the behaviour score for the start, by val log-odds effect: the
# generations were a third of the search's time. Measured on refusal / SmolLM2 with all 10 variants judged: the
# start was the largest-effect variant, and no variant outside the three largest effects scored as high as
# any of those three (best outside +0.418, the three +0.428 to +0.454)
START_SHORTLIST = 3
# operating points tried for the first strategy's anchor: the share of neutral training tokens it may open on
ANCHOR_BUDGETS = (0.01, DEFAULT_FPR_BUDGET, 0.04)


@dataclass
class Candidate:
    """A gateable library strategy: a direction at a layer, named for the program."""
    name: str
    issue: str
    proposal: Proposal
    strength: float


@dataclass
class SearchRecord:
    """How the program was chosen: every candidate's numbers and every greedy step (saved in the report)."""
    candidates: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)
    moved_threshold: float = float("nan")
    train_applicability: dict = field(default_factory=dict)
    val_applicability: dict = field(default_factory=dict)
    start_scores: list[dict] = field(default_factory=list)   # behaviour scores of the start candidates, if any


@dataclass
class ProgramContext:
    """What the program search reads: the capture, which sequence is whose, and how to score."""
    acts: Activations
    sequences: Sequence[Sample]         # the owner sample of each captured sequence
    roles: Sequence[str]                # "positive" | "negative" | "prompt" per sequence
    host_form: str
    seed: int
    new_adapter: Callable[[], SteeringAdapter]
    model: object
    train_scorer: HeldOutScorer         # train targets (effects only)
    train_ids: list[str]
    val_scorer: HeldOutScorer           # val targets and val neutral prompts
    val_ids: list[str]
    budget: float
    # The recipe's own behaviour score of an adapter on val (for refusal: judged refusal rate on val targets
    # minus val neutral prompts, from short greedy answers). When given, it picks the program's first
    # strategy and its anchor (specialised or base), because the teacher-forced log-odds that rank
    # coverage need not track what greedy decoding does (measured: an LDA strategy with the largest val
    # log-odds effect, +0.44, raised harmful refusal on test by 2.5 points only).
    start_score: Callable[[SteeringAdapter], float] | None = None
    # The program's share of val neutral prompts with an anchor open at the last prompt token; when given,
    # an addition may not push it above MAX_PROMPT_FPR (nor raise it, if the start is already above).
    neutral_fpr: Callable[[SteeringAdapter], float] | None = None
    # rewrite families whose samples no anchor may see (leave-one-family-out fits, ``lofo``)
    withheld: frozenset[str] = frozenset()
    # every gateable proposal of the library (any algorithm, any layer) as a candidate: where the catch step
    # (module docstring, step 6) finds the first strategy's algorithm at the other layers
    catch_pool: Sequence[Candidate] = ()
    # every training target a base anchor opens on (``train_ids``, the targets applicability is scored on, is
    # capped for time; an anchor fitted on that cap alone saw a fifth of the training set); empty: train_ids
    anchor_ids: Sequence[str] = ()
    # (layer, fire_on, avoid) -> the anchor's read-out on those tokens: a refit at another operating point reuses it
    readouts: dict = field(default_factory=dict)

    def sequences_of(self, sample_ids: set[str], split: str) -> list[int]:
        """Sequences of these samples that show the prompt and, if any, the desired completion."""
        return [i for i, (s, r) in enumerate(zip(self.sequences, self.roles))
                if s.id in sample_ids and s.split == split and r != "negative" and s.family not in self.withheld]

    def undesired_sequences(self, sample_ids: set[str], split: str) -> list[int]:
        """Sequences of these samples that show the prompt and the undesired completion."""
        return [i for i, (s, r) in enumerate(zip(self.sequences, self.roles))
                if s.id in sample_ids and s.split == split and r == "negative" and s.family not in self.withheld]

    def neutral_sequences(self, split: str = "train") -> list[int]:
        return [i for i, s in enumerate(self.sequences)
                if s.label == NEUTRAL and s.split == split and s.family not in self.withheld]


def fit_anchor(ctx: ProgramContext, layer: int, fire_on: list[int], avoid: list[int],
               fpr_budget: float = DEFAULT_FPR_BUDGET) -> Gate:
    """Open on the prompt tail and desired completion of ``fire_on``; shut on every token of ``avoid`` (all but
    ``fpr_budget`` of them)."""
    positive = ctx.acts.tokens_of(fire_on, layer, kinds=(PROMPT_TAIL, COMPLETION))
    negative = ctx.acts.tokens_of(avoid, layer)
    key = (layer, tuple(fire_on), tuple(avoid))
    gate = fit_gate(positive, negative, ctx.host_form, seed=ctx.seed, fpr_budget=fpr_budget,
                    readout=ctx.readouts.get(key))
    ctx.readouts.setdefault(key, gate.readout)
    return gate


def strategy_of(candidate: Candidate, gate: Gate, strength: float | None = None) -> ProgramStrategy:
    p = candidate.proposal
    return ProgramStrategy(name=candidate.name, issue=candidate.issue, algorithm=p.algorithm, layer=p.layer,
                           direction=p.direction, strength=candidate.strength if strength is None else strength,
                           gate=gate, metadata={k: v for k, v in p.metadata.items() if k != "support"})


def program_adapter(ctx: ProgramContext, strategies: Sequence[ProgramStrategy], selection: str) -> SteeringAdapter:
    return lower(Program(list(strategies), selection), ctx.new_adapter())


def coverage(effect: torch.Tensor, threshold: float) -> float:
    return float((effect >= threshold).double().mean())


@dataclass
class Anchors:
    """Every candidate's anchors: the base anchor, the anchor it carries (specialised where it helps enough
    training targets, else the base one) and the training applicability the specialisation read."""
    base: dict[str, Gate]
    gates: dict[str, Gate]
    train: object   # applicability.Applicability
    # candidate -> anchor kind ("base", "specialised") -> the (fire_on, avoid) sequences it was fitted on
    fitted_on: dict[str, dict[str, tuple[list[int], list[int]]]] = field(default_factory=dict)


def fit_anchors(ctx: ProgramContext, candidates: Sequence[Candidate], selection: str = INDEPENDENT,
                progress: bool = True) -> Anchors:
    """Steps 1-3 of the module docstring: base anchors, training applicability, specialised anchors."""
    train_targets = set(ctx.anchor_ids or ctx.train_ids)
    neutral = ctx.neutral_sequences("train")
    base_sets = (ctx.sequences_of(train_targets, "train"), neutral)
    # a base anchor depends on the layer and the sets, not on the candidate's direction: fitted once per layer
    # (five algorithms at one layer had refitted the same gate five times), each candidate gets its own copy
    by_layer: dict[int, Gate] = {}
    for c in candidates:
        if c.proposal.layer not in by_layer:
            by_layer[c.proposal.layer] = fit_anchor(ctx, c.proposal.layer, *base_sets)
    base_gates = {c.name: copy.deepcopy(by_layer[c.proposal.layer]) for c in candidates}
    fitted_on = {c.name: {"base": base_sets} for c in candidates}
    single = {c.name: program_adapter(ctx, [strategy_of(c, base_gates[c.name])], selection) for c in candidates}
    train_app = measure(ctx.model, ctx.train_scorer, single, ctx.train_ids, progress, "applicability (train)")
    gates = {}
    for c in candidates:
        helped = {sid for sid, h in zip(ctx.train_ids, train_app.helps(c.name).tolist()) if h}
        harmed = {sid for sid, e in zip(ctx.train_ids, train_app.effect[train_app.index(c.name)].tolist()) if e <= 0}
        if len(helped) >= MIN_SPECIALISED:
            sets = (ctx.sequences_of(helped, "train"), neutral + ctx.sequences_of(harmed, "train"))
            gates[c.name] = fit_anchor(ctx, c.proposal.layer, *sets)
            fitted_on[c.name]["specialised"] = sets
        else:
            gates[c.name] = base_gates[c.name]
        gates[c.name].stats.update(specialised=len(helped) >= MIN_SPECIALISED, helped_train=len(helped),
                                   harmed_train=len(harmed))
    return Anchors(base=base_gates, gates=gates, train=train_app, fitted_on=fitted_on)


def build_program(ctx: ProgramContext, candidates: Sequence[Candidate], selection: str = INDEPENDENT,
                  max_strategies: int = DEFAULT_MAX_STRATEGIES, progress: bool = True,
                  log: Callable[[str], None] = print) -> tuple[Program, SearchRecord]:
    """Anchors, applicability, pruning and greedy selection (module docstring); returns the program and its record."""
    if not candidates:
        raise ValueError("no candidate strategies to build a program from")
    record = SearchRecord()
    anchors = fit_anchors(ctx, candidates, selection, progress)
    base_gates, gates, train_app = anchors.base, anchors.gates, anchors.train
    strategies = {c.name: strategy_of(c, gates[c.name]) for c in candidates}
    singles = {name: program_adapter(ctx, [s], selection) for name, s in strategies.items()}
    val_app = measure(ctx.model, ctx.val_scorer, singles, ctx.val_ids, progress, "applicability (val)")
    record.train_applicability, record.val_applicability = train_app.to_dict(), val_app.to_dict()

    wins = val_app.win_counts()
    within = [n for n in strategies if val_app.drift[val_app.index(n)] <= ctx.budget]
    for c in candidates:
        k = val_app.index(c.name)
        record.candidates.append({"name": c.name, "algorithm": c.proposal.algorithm, "layer": c.proposal.layer,
                                  "strength": c.strength, "val_effect": round(float(val_app.effect[k].mean()), 4),
                                  "val_drift": round(val_app.drift[k], 5), "val_wins": wins[c.name],
                                  "train_helped": gates[c.name].stats["helped_train"],
                                  "specialised": gates[c.name].stats["specialised"]})
    if not within:
        raise ValueError(f"no gated candidate stays within the drift budget {ctx.budget:g} on val neutral prompts "
                         f"(drifts: {record.val_applicability['drift']})")
    if ctx.start_score is None:
        best = max(within, key=lambda n: (float(val_app.effect[val_app.index(n)].mean()), n))
        effect, drift = val_app.effect[val_app.index(best)], val_app.drift[val_app.index(best)]
        behaviour = float("nan")   # no behaviour score: val log-odds coverage alone decides
    else:
        best, strategies[best], effect, drift, behaviour = start_by_behaviour(
            ctx, candidates, strategies, base_gates, val_app, selection, record, progress, log, anchors.fitted_on)
    threshold = max(COVERAGE_FRACTION * float(effect.median()), MIN_MOVED_EFFECT)
    record.moved_threshold = threshold
    record.pruned = [n for n in strategies if wins[n] == 0 and n != best]
    chosen = [best]
    record.steps.append({"chosen": best, "coverage": coverage(effect, threshold),
                         "mean_effect": round(float(effect.mean()), 4), "drift": round(drift, 5)})
    log(f"program: start with {best} (val coverage {coverage(effect, threshold):.2f}, mean effect "
        f"{float(effect.mean()):+.3f}, drift {drift:.4f})")
    fpr = ctx.neutral_fpr(program_adapter(ctx, [strategies[best]], selection)) if ctx.neutral_fpr else 0.0
    record.steps[0]["neutral_fpr"] = round(fpr, 4)
    pool = [n for n in within if n not in chosen and n not in record.pruned]
    pool = sorted(pool, key=lambda n: -wins[n])[:POOL_SIZE]   # the candidates that win most often
    while pool and len(chosen) < max_strategies:
        tried = {}
        for name in tqdm(pool, desc=f"program step {len(chosen) + 1}: additions (val)", disable=not progress,
                         leave=False):
            trial = program_adapter(ctx, [strategies[n] for n in chosen + [name]], selection)
            tried[name] = score_adapter(ctx.model, ctx.val_scorer, trial)
        scored = {n: (coverage(e, threshold), float(e.mean()), d) for n, (e, d) in tried.items()
                  if d <= ctx.budget}
        step = {"tried": {n: {"coverage": round(c, 4), "mean_effect": round(m, 4), "drift": round(d, 5)}
                          for n, (c, m, d) in scored.items()}}
        if not scored:
            record.steps.append({**step, "chosen": None, "why": "every addition exceeds the drift budget"})
            break
        name = max(scored, key=lambda n: (scored[n][0], scored[n][1]))
        gain = scored[name][0] - coverage(effect, threshold)
        if gain < MIN_COVERAGE_GAIN:
            record.steps.append({**step, "chosen": None, "why": f"best coverage gain {gain:+.3f} < {MIN_COVERAGE_GAIN}"})
            break
        trial = program_adapter(ctx, [strategies[n] for n in chosen + [name]], selection)
        if ctx.neutral_fpr is not None:   # each anchor adds its own false openings: keep the program's in bounds
            trial_fpr = ctx.neutral_fpr(trial)
            step["neutral_fpr"] = {"before": round(fpr, 4), "with": round(trial_fpr, 4), "name": name}
            if trial_fpr > max(MAX_PROMPT_FPR, fpr):
                _stop(record, step, log, f"adding {name} opens the program on {trial_fpr:.3f} of val neutral "
                                         f"prompts (limit {max(MAX_PROMPT_FPR, fpr):.3f})")
                break
            fpr = trial_fpr
        if ctx.start_score is not None:   # the recipe's own behaviour must not get worse (e.g. more neutral refusals)
            trial_behaviour = float(ctx.start_score(trial))
            step["behaviour"] = {"before": round(behaviour, 4), "with": round(trial_behaviour, 4), "name": name}
            if trial_behaviour < behaviour:
                _stop(record, step, log, f"adding {name} lowers the val behaviour score {behaviour:+.3f} -> "
                                         f"{trial_behaviour:+.3f}")
                break
            behaviour = trial_behaviour
        chosen.append(name)
        pool.remove(name)
        effect, drift = tried[name]
        record.steps.append({**step, "chosen": name, "coverage": scored[name][0],
                             "mean_effect": round(scored[name][1], 4), "drift": round(drift, 5)})
        log(f"program: + {name} (val coverage {scored[name][0]:.2f}, mean effect {scored[name][1]:+.3f}, "
            f"drift {drift:.4f})")
    program = [strategies[n] for n in chosen]
    if ctx.start_score is not None and ctx.catch_pool and len(program) < max_strategies:
        program += catch_step(ctx, program, behaviour, fpr, selection, record, progress, log)
    return Program(program, selection), record


CATCH = "catch"


def fit_catch_anchor(ctx: ProgramContext, layer: int) -> Gate:
    """Open on the undesired completions of every training target, shut on every neutral training token."""
    targets = set(ctx.anchor_ids or ctx.train_ids)
    gate = fit_gate(ctx.acts.tokens_of(ctx.undesired_sequences(targets, "train"), layer, kinds=(COMPLETION,)),
                    ctx.acts.tokens_of(ctx.neutral_sequences("train"), layer), ctx.host_form, seed=ctx.seed)
    gate.stats["anchor"] = CATCH
    return gate


def catch_step(ctx: ProgramContext, program: list[ProgramStrategy], behaviour: float, fpr: float, selection: str,
               record: SearchRecord, progress: bool, log: Callable[[str], None]) -> list[ProgramStrategy]:
    """Step 6 of the module docstring: the best catch strategy that raises the behaviour score, or none."""
    first = program[0]
    pool = [c for c in ctx.catch_pool if c.proposal.algorithm == first.algorithm]
    step: dict = {"catch": {}}
    best: tuple[float, ProgramStrategy] | None = None
    if not ctx.undesired_sequences(set(ctx.anchor_ids or ctx.train_ids), "train"):
        pool = []   # no undesired completions to fit a catch anchor on
    for candidate in tqdm(pool, desc="catch strategy (val behaviour)", disable=not progress, leave=False):
        trial = strategy_of(replace(candidate, name=f"{candidate.name}-{CATCH}"),
                            fit_catch_anchor(ctx, candidate.proposal.layer))
        adapter = program_adapter(ctx, program + [trial], selection)
        drift = adapter_drift(ctx.model, ctx.val_scorer, adapter)
        row: dict = {"drift": round(drift, 5)}
        if drift <= ctx.budget:
            trial_fpr = ctx.neutral_fpr(adapter) if ctx.neutral_fpr else 0.0
            row["neutral_fpr"] = round(trial_fpr, 4)
            if trial_fpr <= max(MAX_PROMPT_FPR, fpr):
                row["behaviour"] = round(float(ctx.start_score(adapter)), 4)
                if row["behaviour"] > behaviour and (best is None or row["behaviour"] > best[0]):
                    best = (row["behaviour"], trial)
        step["catch"][trial.name] = row
    if best is None:
        _stop(record, {**step, "behaviour_before": round(behaviour, 4)}, log,
              "no catch strategy raises the val behaviour score")
        return []
    record.steps.append({**step, "chosen": best[1].name, "behaviour": {"before": round(behaviour, 4),
                                                                        "with": best[0]}})
    log(f"program: + {best[1].name} (catch: val behaviour {behaviour:+.3f} -> {best[0]:+.3f})")
    return [best[1]]


def _stop(record: SearchRecord, step: dict, log: Callable[[str], None], why: str) -> None:
    """End the greedy search at this step, recording and saying why."""
    record.steps.append({**step, "chosen": None, "why": why})
    log(f"program: stop: {why}")


def start_by_behaviour(ctx: ProgramContext, candidates: Sequence[Candidate], strategies: dict[str, ProgramStrategy],
                       base_gates: dict[str, Gate], val_app, selection: str, record: SearchRecord, progress: bool,
                       log: Callable[[str], None], fitted_on: dict | None = None
                       ) -> tuple[str, ProgramStrategy, torch.Tensor, float, float]:
    """The first strategy by ``ctx.start_score``: every candidate with its specialised anchor and, where that
    differs, its base anchor, within the drift budget; ties by val log-odds effect. Then the winner's anchor at
    the other operating points of ``ANCHOR_BUDGETS`` (the share of neutral training tokens it may open on):
    where its prompts end, a threshold set on every neutral token is only a proxy for the prompt-level trade
    between harmful prompts opened and benign ones, which the behaviour score measures. Returns the name, the
    strategy (with the winning anchor), its per-sample val effect, its drift and its score. Only the
    ``START_SHORTLIST`` variants with the largest val effect within the budget are generated for; the rest are
    recorded unscored."""
    variants = []
    for c in candidates:
        k = val_app.index(c.name)
        variants.append((c.name, "specialised", strategies[c.name], val_app.effect[k], val_app.drift[k]))
        if strategies[c.name].gate is not base_gates[c.name]:
            plain = strategy_of(c, base_gates[c.name])
            effect, drift = score_adapter(ctx.model, ctx.val_scorer, program_adapter(ctx, [plain], selection))
            variants.append((c.name, "base", plain, effect, drift))
    within = sorted((v for v in variants if v[4] <= ctx.budget), key=lambda v: (-float(v[3].mean()), v[0], v[1]))
    shortlist = {(v[0], v[1]) for v in within[:START_SHORTLIST]}
    scored = []
    for name, anchor, strategy, effect, drift in tqdm(variants, desc="start strategy (val behaviour)",
                                                      disable=not progress, leave=False):
        row = {"name": name, "anchor": anchor, "val_effect": round(float(effect.mean()), 4),
               "val_drift": round(float(drift), 5)}
        if (name, anchor) in shortlist:
            row["score"] = round(float(ctx.start_score(program_adapter(ctx, [strategy], selection))), 4)
            scored.append((row["score"], float(effect.mean()), name, anchor, strategy, effect, drift))
        elif drift <= ctx.budget:
            row["shortlisted"] = False   # its val effect ranks below the START_SHORTLIST largest: not generated
        record.start_scores.append(row)
    if not scored:
        raise ValueError(f"no gated candidate stays within the drift budget {ctx.budget:g} on val neutral prompts")
    score, _, name, anchor, strategy, effect, drift = max(scored, key=lambda t: (t[0], t[1], t[2], t[3]))
    if fitted_on is not None and anchor in fitted_on.get(name, {}):
        candidate = next(c for c in candidates if c.name == name)
        for budget in ANCHOR_BUDGETS:
            if budget == DEFAULT_FPR_BUDGET:
                continue
            gate = fit_anchor(ctx, candidate.proposal.layer, *fitted_on[name][anchor], fpr_budget=budget)
            gate.stats.update({k: v for k, v in strategy.gate.stats.items() if k not in gate.stats})
            gate.stats["fpr_budget"] = budget
            trial = strategy_of(candidate, gate)
            trial_adapter = program_adapter(ctx, [trial], selection)
            trial_effect, trial_drift = score_adapter(ctx.model, ctx.val_scorer, trial_adapter)
            row = {"name": name, "anchor": f"{anchor}@{budget:g}", "val_effect": round(float(trial_effect.mean()), 4),
                   "val_drift": round(float(trial_drift), 5)}
            if trial_drift <= ctx.budget:
                row["score"] = round(float(ctx.start_score(trial_adapter)), 4)
                if row["score"] > score:
                    score, strategy, effect, drift = row["score"], trial, trial_effect, trial_drift
                    anchor = row["anchor"]
            record.start_scores.append(row)
    log(f"program: start strategy by val behaviour: {name} ({anchor} anchor, score {score:+.3f}); "
        + ", ".join(f"{r['name']}/{r['anchor']} {r.get('score', float('nan')):+.3f}" for r in record.start_scores))
    return name, strategy, effect, float(drift), score


def applicability_targets(samples: Sequence[Sample], limit: int | None = None
                          ) -> tuple[list[tuple[str, str, str | None]], list[str]]:
    """(prompt, positive, negative) items and ids of the target samples that have a desired completion.

    With ``limit``, at most that many, taken evenly across the kinds of target in their order (group, source
    set and rewrite family: so a cap keeps every kind), deterministic."""
    chosen = [s for s in samples if s.label == TARGET and s.positive is not None]
    if limit is not None and len(chosen) > limit:
        groups: dict[tuple[str, str, str], list[Sample]] = {}
        for s in chosen:
            source_set = s.source_id.split(":")[0].split("-")[0] if ":" in s.source_id else ""
            groups.setdefault((s.group, source_set, s.family), []).append(s)
        chosen, k = [], 0
        while len(chosen) < limit:
            chosen += [g[k] for g in groups.values() if k < len(g)][:limit - len(chosen)]
            k += 1
    return [(s.prompt, s.positive, s.negative) for s in chosen], [s.id for s in chosen]
