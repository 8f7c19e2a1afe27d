"""The compile: recipe -> samples -> one capture -> strategies -> anchors -> program -> adapter -> report.

Every compile, from ``masteer-compile`` or from Python, is :func:`compile_program` (in memory),
:func:`evaluate_program` and :func:`save_program`; :func:`run_compile` does the three. What differs between
compiles is the *preset* that builds the program:

- ``AdaptiveOptions`` (the default): the algorithm library on one capture, calibrated, then the program
  search (``program.search``) over anchored candidates;
- ``SingleStrategy`` (``--mode single``): one algorithm at each candidate layer behind its base anchor, the
  layer chosen by val behaviour (``program.single_strategy``); its static arm is the same direction always on
  at the same strength, and its evaluation is the refusal table and the suites only (the cheap preset).

Held-out discipline, by split: ``train`` fits directions and anchors, ``val`` ranks layers,
calibrates strengths, scores applicability, chooses the program and matches the static baseline,
``test`` is only generated from, once, for the before/after table. The splits never share a prompt.

Arms of the before/after table:

- ``base``: the model as it is;
- ``static``: the library's best always-on strategy (largest val effect within the drift budget), at
  the strength whose val refusal rate on targets comes closest to the adaptive program's, so the two
  are compared at matched target effect (the question is what each costs elsewhere);
- ``single``: the best single gated strategy (the program search's starting point);
- ``adaptive``: the compiled program;
- ``per-prompt``: the same program decided once per prompt at its last token instead of per token
  (``prompt_decision``), the measured baseline of DESIGN.md.

Besides the table, the static strategy is measured on test at every strength the matching tried (the
*static frontier*), so "adaptive beats static at matched target effect" can be read on test too,
where the val-matched strength lands a few points off.
"""

from __future__ import annotations

import copy
import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

from masteer.runtime import SteeringAdapter, check_compatible, host_layout
from masteer.runtime.artifact import ABLATION, INDEPENDENT, SELECTIONS
from masteer.runtime.errors import MasteerError

from .strategies.algorithms import available
from .program.search import Candidate, ProgramContext, SearchRecord, applicability_targets, build_program
from .program.applicability import adapter_drift, score_adapter
from .evaluation.gate_report import gate_reports, open_share, prompt_openings
from .common.batching import generation_batch
from .common.models import LoadedModel, load_model
from .common.names import SELECTION_BF16_SEARCH, SELECTION_EXACT
from .common.selection_model import selection_model
from .capture.cache import BaseArmCache, ResultCache, arm_key, stored_results_name, stored_results_root
from .common.prefix_replay import first_steered_layer
from .capture.prefill_sharing import sharing_prefill
from .strategies.scorer_store import ScorerBaseStore
from .pipeline import (REPORT_NAME, SAMPLES_NAME, CompileOptions, _prepare, add_static, anchor_negatives,
                       capture_activations, fit_layer, fit_sequences, new_adapter, val_rates)
from .program.single_strategy import LayerCandidate, SingleStrategy, single_program
from .program.steering_program import Program, lower
from .samples.recipes import Recipe
from .evaluation.prompt_decision import BASE_ROUTE
from .samples.sample_set import NEUTRAL, TARGET, Sample, SampleSet, as_written, prompt_key
from .strategies.scoring import HeldOutScorer
from .strategies.library import (DEFAULT_DRIFT_BUDGET, StrategyRow, calibration_pairs, library_table,
                                 strategy_adapter)

GATEABLE = "neuron"                      # proposals a gate can carry (directions added at the MLP output)
# Library algorithms whose proposals are never gateable (weight orthogonalisation, norm-preserving rotation):
# a program cannot carry them, so by default a compile does not spend time scoring them (about a third of
# the library stage); `masteer strategies` and `--algorithms all` still survey them.
UNGATED_ALGORITHMS = ("directional_ablation", "rotation")
STATIC_MULTIPLES = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)  # of the recipe strength, tried when matching the static arm
MATCH_TOLERANCE = 0.05                   # "matched": static val target refusal within 5 points of the program's
MATCH_BISECTIONS = 4                     # extra strengths tried between two multiples to get there
COMPILE_STRENGTHS = (0.25, 0.5)          # static strengths compared inside a compile (the survey tries more)
TRAIN_APPLICABILITY = 64                 # training targets scored per candidate to specialise its anchor
TEST_EFFECT_ITEMS = 64                   # test targets in the teacher-forced effect table (taken evenly by kind)


@dataclass
class AdaptiveOptions:
    algorithms: tuple[str, ...] | None = None   # None: every registered algorithm a gate can carry; ("all",): all
    keep_layers: int = 1                         # best layers per algorithm kept as candidates
    budget: float = DEFAULT_DRIFT_BUDGET
    selection: str = INDEPENDENT
    max_strategies: int = 3
    # try a catch strategy (``adaptive`` step 6). Off by default: on the refusal recipe it raised val behaviour
    # (+0.454 -> +0.545) and test harmful refusal (69.5% -> 75.3%) but also benign refusal (12.5% -> 18.1%),
    # neutral KL (0.0042 -> 0.0151) and perplexity of plain text (5.34 -> 37.1), docs/generalisation.md
    catch: bool = False

    def __post_init__(self):
        check_adaptive_options(self)


ADAPTIVE_PRESET, SINGLE_PRESET = "adaptive", "single"


@dataclass
class ProgramCompile:
    """Everything a compile produced, stage by stage (saved beside the adapter)."""
    recipe: Recipe
    samples: SampleSet
    library: list[StrategyRow]
    program: Program
    search: SearchRecord | None                  # the program search's record (adaptive preset)
    adapter: SteeringAdapter
    single: SteeringAdapter
    static: SteeringAdapter | None
    static_match: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    loaded: LoadedModel | None = field(default=None, repr=False)   # the model it was compiled on (not saved)
    layers: tuple[int, ...] = ()                                    # the candidate layers captured
    preset: str = ADAPTIVE_PRESET
    seed: int = 0
    strength: float = float("nan")               # the recipe's (or --strength) strength the program started from
    candidates: list[LayerCandidate] = field(default_factory=list)  # every layer's numbers (single preset)
    val_base: dict[str, float] = field(default_factory=dict)        # base val rates by label (single preset)
    selection_precision: str = SELECTION_EXACT   # what the choosing ran in (``common.selection_model``)

    @property
    def chosen_layer(self) -> int:
        """The first strategy's layer (the single preset's chosen layer)."""
        return self.program.strategies[0].layer

    def report(self) -> dict:
        report = {"recipe": self.recipe.name, "issue": self.recipe.issue, "preset": self.preset,
                  "base_model": self.adapter.base_model_name_or_path, "fingerprint": self.adapter.fingerprint.digest,
                  "layers": list(self.layers), "strength": self.strength,
                  "samples": {"hash": self.samples.content_hash, "counts": self.samples.summary()},
                  "library": [r.to_dict() for r in self.library], "program": self.program.summary(),
                  "search": asdict(self.search) if self.search is not None else None,
                  "static_match": self.static_match, "selection_precision": self.selection_precision,
                  "timings_s": {k: round(v, 1) for k, v in self.timings.items()}}
        if self.preset == SINGLE_PRESET:
            report.update(chosen_layer=self.chosen_layer, val_base=self.val_base,
                          candidates=[asdict(c) for c in self.candidates])
        return report


def catch_pool(rows: Sequence[StrategyRow], proposals: dict, recipe: Recipe, strength: float) -> list[Candidate]:
    """Every gateable proposal at every layer (not only the kept ones): the catch step's candidates."""
    gateable = {r.algorithm for r in rows if r.kind == GATEABLE}
    return [Candidate(name=f"{recipe.name}-{algorithm}-L{layer}", issue=recipe.name, proposal=proposal,
                      strength=strength)
            for (algorithm, layer), proposal in sorted(proposals.items()) if algorithm in gateable]


def candidates_from(rows: Sequence[StrategyRow], proposals: dict, recipe: Recipe, strength: float) -> list[Candidate]:
    out = []
    for r in rows:
        if r.kept and not r.error and r.kind == GATEABLE:
            out.append(Candidate(name=f"{recipe.name}-{r.algorithm}-L{r.layer}", issue=recipe.name,
                                 proposal=proposals[(r.algorithm, r.layer)], strength=strength))
    return out


def behaviour_score(recipe: Recipe, loaded: LoadedModel, val: Sequence[Sample], options: CompileOptions,
                    cache=None):
    """For a refusal-metric recipe, an adapter's val refusal gap (targets minus neutral prompts, short greedy
    answers, judged) to pick the program's first strategy; other metrics: None (val log-odds decide).
    ``cache``: where the answers go (``evaluation.ResultCache``), for later stages to read."""
    if recipe.evaluation.metric != "refusal":
        return None
    groups = {TARGET: [s for s in val if s.label == TARGET], NEUTRAL: [s for s in val if s.label == NEUTRAL]}
    quiet = replace(options, progress=False)

    def score(adapter: SteeringAdapter) -> float:
        rates = val_rates(loaded, adapter, groups, quiet, cache)
        return rates[TARGET] - rates[NEUTRAL]
    return score


def best_static(rows: Sequence[StrategyRow]) -> StrategyRow | None:
    """The calibrated always-on strategy with the largest val effect within the budget (ablation excluded:
    its strength is a fraction removed, not a size to match)."""
    usable = [r for r in rows if r.kept and r.strength is not None and r.kind != ABLATION]
    return max(usable, key=lambda r: r.effect) if usable else None


def at_strength(adapter: SteeringAdapter, strength: float) -> SteeringAdapter:
    """A copy of ``adapter`` with every strategy at ``strength`` (the static arm at another strength)."""
    adapter = copy.deepcopy(adapter)
    for spec in adapter.strategies:
        spec.strength = strength
    return adapter


def match_static(loaded: LoadedModel, base: SteeringAdapter, proposal, target_rate: float, val: dict, options,
                 strength: float, log: Callable[[str], None]) -> tuple[SteeringAdapter, dict]:
    """The always-on strategy at the strength whose val target refusal is closest to ``target_rate``.

    Multiples of ``strength`` are tried from the smallest up until one reaches the target rate (a larger
    one only over-steers); then the strength is bisected between the last two, at most
    ``MATCH_BISECTIONS`` times, until a rate comes within ``MATCH_TOLERANCE`` of the target."""
    tried = []

    def attempt(value: float) -> tuple[SteeringAdapter, float]:
        adapter = at_strength(strategy_adapter(base, proposal), value)
        rate = val_rates(loaded, adapter, {TARGET: val[TARGET]}, options)[TARGET]
        tried.append({"strength": round(value, 6), "val_target_refusal": round(rate, 4)})
        log(f"static match: strength {value:.4g} -> val target refusal {rate:.2f} (adaptive {target_rate:.2f})")
        return adapter, rate

    best, lo, hi = None, 0.0, None   # strength 0 is the base model, below any target worth matching
    for multiple in STATIC_MULTIPLES:
        value = multiple * strength
        adapter, rate = attempt(value)
        if best is None or abs(rate - target_rate) < abs(best[1] - target_rate):
            best = (adapter, rate, value)
        if rate >= target_rate:
            hi = value
            break
        lo = value
    for _ in range(MATCH_BISECTIONS if hi is not None else 0):
        if round(abs(best[1] - target_rate), 9) <= MATCH_TOLERANCE:
            break
        value = (lo + hi) / 2
        adapter, rate = attempt(value)
        if abs(rate - target_rate) < abs(best[1] - target_rate):
            best = (adapter, rate, value)
        lo, hi = (value, hi) if rate < target_rate else (lo, value)
    return best[0], {"adaptive_val_target_refusal": round(target_rate, 4), "tried": tried,
                     "chosen_strength": round(best[2], 6), "chosen_val_target_refusal": round(best[1], 4),
                     "matched": round(abs(best[1] - target_rate), 9) <= MATCH_TOLERANCE}


def shut_on(others: Sequence[Sample], samples: SampleSet) -> list[Sample]:
    """Prompts of other issues as training-only neutral prompts for this compile's anchors: a new issue's
    gates must stay shut on another issue's inputs. Prompts this compile uses anywhere are left out (a
    test prompt must never be fitted on)."""
    own = {prompt_key(s.prompt) for s in samples.samples}
    out, seen = [], set()
    for s in others:
        key = prompt_key(s.prompt)
        if key in own or key in seen:
            continue
        seen.add(key)
        out.append(replace(s, id=f"other:{s.id}", label=NEUTRAL, split="train", positive=None, negative=None,
                           group=f"other:{s.group}"))
    return out


def program_algorithms(adaptive: AdaptiveOptions) -> tuple[str, ...]:
    """The algorithms a compile fits: the named ones, every registered one for ``all``, by default every
    registered one except those a gate cannot carry (``UNGATED_ALGORITHMS``)."""
    if adaptive.algorithms == ("all",):
        return tuple(available())
    return adaptive.algorithms or tuple(a for a in available() if a not in UNGATED_ALGORITHMS)


def check_adaptive_options(adaptive: AdaptiveOptions) -> None:
    if not (math.isfinite(adaptive.budget) and adaptive.budget > 0):
        raise MasteerError(f"the drift budget must be a positive number of nats, got {adaptive.budget}")
    if adaptive.keep_layers < 1 or adaptive.max_strategies < 1:
        raise MasteerError("keep_layers and max_strategies must be at least 1")
    if adaptive.selection not in SELECTIONS:
        raise MasteerError(f"selection must be one of {', '.join(SELECTIONS)}, got {adaptive.selection!r}")
    if adaptive.algorithms and "all" in adaptive.algorithms and len(adaptive.algorithms) > 1:
        raise MasteerError("algorithms: 'all' stands alone (it means every registered algorithm)")
    unknown = sorted(set(adaptive.algorithms or ()) - set(available()) - {"all"})
    if unknown:
        raise MasteerError(f"unknown algorithm(s) {', '.join(unknown)}; available: {', '.join(available())}")


def compile_program(options: CompileOptions, preset: AdaptiveOptions | SingleStrategy | None = None,
                    loaded: LoadedModel | None = None, log: Callable[[str], None] = print,
                    others: Sequence[Sample] = ()) -> ProgramCompile:
    """Run the compile in memory with ``preset`` building the program (module docstring; default: adaptive).
    ``others``: other issues' samples, whose prompts this compile's anchors learn to stay shut on (multi-issue
    adapters, ``--add-to``; adaptive preset only)."""
    if isinstance(preset, SingleStrategy):
        if others:
            raise MasteerError("adding an issue to an adapter (--add-to) needs the adaptive preset")
        return _compile_single(options, preset, loaded, log)
    if preset is not None and not isinstance(preset, AdaptiveOptions):
        raise MasteerError(f"a compile preset is AdaptiveOptions or SingleStrategy, got {type(preset).__name__}")
    adaptive = preset or AdaptiveOptions()
    check_adaptive_options(adaptive)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    recipe, samples, loaded, layers, seed, strength = _prepare(options, loaded, log, need_val=True)
    val = samples.select(split="val")
    timings["load"] = time.perf_counter() - clock

    clock = time.perf_counter()
    train = samples.select(split="train") + shut_on(others, samples)
    seqs = fit_sequences(train + val, anchor_negatives(train, options, loaded, seed, log))
    acts = capture_activations(options, loaded, seqs, layers, samples, log)
    timings["capture"] = time.perf_counter() - clock

    clock = time.perf_counter()
    chooser, precision = selection_model(loaded, options.selection_precision)   # scores and generates to choose
    if chooser is loaded:
        log(f"selection precision: {precision}")
    else:
        what = ("the library calibrates on the model as loaded, a bfloat16 copy scores and generates for the program "
                "search" if precision == SELECTION_BF16_SEARCH else "a bfloat16 copy scores and generates to choose")
        log(f"selection precision: {precision} ({what}; the evaluation measures the model as loaded)")
    model, tokenizer = chooser.model, chooser.tokenizer
    # the search's greedy val answers, kept: the static matching reads the program's from here (the model as loaded
    # only: a bfloat16 chooser answers otherwise)
    val_answers = ResultCache()
    with sharing_prefill(model, layers):   # every val generation shares its prompt prefill below the layer
        base = new_adapter(loaded, samples, recipe)
        val_pairs = (seqs.indices("positive", paired=True, split="val"), seqs.indices("negative", paired=True, split="val"))
        val_items, val_ids = applicability_targets(val)
        neutral_val = [s.prompt for s in val if s.label == NEUTRAL]
        # the program search scores the val targets and neutral prompts too: one scorer, its base passes made once
        # (with bf16-search the library calibrates on the model as loaded, so it keeps a scorer of its own; where
        # the val items are not the calibration pairs the library makes its own, with this scorer's drift: the same
        # neutral prompts)
        calibrator = loaded if precision == SELECTION_BF16_SEARCH else chooser
        shared = val_items == calibration_pairs(val)
        # the scorers' base passes depend on the model and the rows alone: stored like the base arm's results
        scorer_store = ScorerBaseStore(log=log) if options.store_base_results else None
        calibration_scorer = (HeldOutScorer(calibrator.model, tokenizer, val_items, neutral_val, options.batch_size,
                                            replay_layers=layers, store=scorer_store)
                              if shared or calibrator is chooser else None)
        proposals: dict = {}
        rows = library_table(calibrator.model, tokenizer, base, seqs.fit_inputs(acts), val_pairs, val, layers,
                             algorithms=program_algorithms(adaptive), keep_layers=adaptive.keep_layers,
                             budget=adaptive.budget,
                             batch_size=options.batch_size, progress=options.progress, log=log,
                             strengths=COMPILE_STRENGTHS, proposals_out=proposals,
                             scorer=calibration_scorer if shared else None,
                             drift_from=calibration_scorer if calibrator is chooser else None, store=scorer_store)
        timings["library"] = time.perf_counter() - clock
        candidates = candidates_from(rows, proposals, recipe, strength)
        if not candidates:
            raise MasteerError(f"no gateable strategy could be fitted at layers {list(layers)}; see the library rows")

        clock = time.perf_counter()
        val_scorer = (calibration_scorer if calibrator is chooser else
                      HeldOutScorer(model, tokenizer, val_items, neutral_val, options.batch_size, replay_layers=layers,
                                    store=scorer_store))
        train_items, train_ids = applicability_targets(samples.select(split="train"), limit=TRAIN_APPLICABILITY)
        candidate_layers = sorted({c.proposal.layer for c in candidates})
        ctx = ProgramContext(acts=acts, sequences=seqs.samples, roles=seqs.roles, host_form=host_layout(model).form,
                             seed=seed, new_adapter=lambda: new_adapter(loaded, samples, recipe), model=model,
                             train_scorer=HeldOutScorer(model, tokenizer, train_items, [], options.batch_size,
                                                        replay_layers=candidate_layers, store=scorer_store),
                             train_ids=train_ids,
                             anchor_ids=[s.id for s in samples.select(split="train", label=TARGET)],
                             val_scorer=val_scorer,
                             val_ids=val_ids, budget=adaptive.budget,
                             start_score=behaviour_score(recipe, chooser, val, options,
                                                         val_answers if chooser is loaded else None),
                             catch_pool=catch_pool(rows, proposals, recipe, strength) if adaptive.catch else (),
                             # gate openings compare activations with thresholds: counted on the model as loaded,
                             # which is what the adapter runs on (a bfloat16 copy moves prompts across them)
                             neutral_fpr=lambda adapter: open_share(prompt_openings(
                                 loaded.model, loaded.tokenizer, adapter, neutral_val, options.batch_size)))
        program, search = build_program(ctx, candidates, selection=adaptive.selection,
                                        max_strategies=adaptive.max_strategies, progress=options.progress, log=log)
        adapter = lower(program, new_adapter(loaded, samples, recipe))
        single = lower(Program(program.strategies[:1], adaptive.selection), new_adapter(loaded, samples, recipe))
        timings["program"] = time.perf_counter() - clock

    # The static arm is matched on the model as loaded: its strength decides what the table compares with.
    clock = time.perf_counter()
    static, match = None, {}
    chosen_static = best_static(rows)
    if chosen_static is not None and options.evaluate:
        with sharing_prefill(loaded.model, layers):
            val_groups = {TARGET: samples.select(split="val", label=TARGET)}
            adaptive_rate = val_rates(loaded, adapter, val_groups, options, val_answers)[TARGET]
            static, match = match_static(loaded, base, proposals[(chosen_static.algorithm, chosen_static.layer)],
                                         adaptive_rate, val_groups, options, strength, log)
            match["strategy"] = f"{chosen_static.algorithm}-L{chosen_static.layer}"
    timings["static_match"] = time.perf_counter() - clock
    return ProgramCompile(recipe=recipe, samples=samples, library=rows, program=program, search=search,
                          adapter=adapter, single=single, static=static, static_match=match, timings=timings,
                          loaded=loaded, layers=tuple(layers), preset=ADAPTIVE_PRESET, seed=seed, strength=strength,
                          selection_precision=precision)


def _compile_single(options: CompileOptions, preset: SingleStrategy, loaded: LoadedModel | None,
                    log: Callable[[str], None]) -> ProgramCompile:
    """The single-strategy preset (``program.single_strategy``): one capture of the train split, the preset's
    algorithm and base anchor at every candidate layer, the layer chosen on val by judged refusal rates."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    recipe, samples, loaded, layers, seed, strength = _prepare(options, loaded, log)
    timings["load"] = time.perf_counter() - clock

    clock = time.perf_counter()
    train = samples.select(split="train")
    seqs = fit_sequences(train, anchor_negatives(train, options, loaded, seed, log))
    acts = capture_activations(options, loaded, seqs, layers, samples, log)
    timings["capture"] = time.perf_counter() - clock

    clock = time.perf_counter()
    host_form = host_layout(loaded.model).form
    fitted = {layer: fit_layer(acts, seqs, layer, preset.algorithm, host_form, seed) for layer in layers}
    timings["fit"] = time.perf_counter() - clock

    # The layer is chosen by what the repair is for: the gated strategy should make the model refuse val target
    # prompts and leave val neutral prompts alone (a teacher-forced log-odds score did not rank layers the way
    # generation does: it is dominated by late completion tokens, while a refusal is decided in the first few).
    clock = time.perf_counter()
    val = {TARGET: samples.select(split="val", label=TARGET), NEUTRAL: samples.select(split="val", label=NEUTRAL)}
    chooser, precision = (selection_model(loaded, options.selection_precision) if len(layers) > 1
                          else (loaded, SELECTION_EXACT))   # one layer: nothing to choose
    with sharing_prefill(chooser.model, layers):   # every val generation shares its prompt prefill below the layer
        def layer_rates(adapter: SteeringAdapter) -> tuple[float, float]:
            measured = val_rates(chooser, adapter, val, options)
            return measured[TARGET], measured[NEUTRAL]
        base_val = val_rates(chooser, None, val, options) if len(layers) > 1 else {}
        if base_val:
            log(f"val refusal, base model: target {base_val[TARGET]:.2f} neutral {base_val[NEUTRAL]:.2f}")
        program, candidates = single_program(recipe.name, fitted, strength, lambda: new_adapter(loaded, samples, recipe),
                                             layer_rates if len(layers) > 1 else None, log)
    adapter = lower(program, new_adapter(loaded, samples, recipe))
    static = new_adapter(loaded, samples, recipe)
    add_static(static, recipe, fitted[program.strategies[0].layer][0], strength)
    timings["program"] = time.perf_counter() - clock
    return ProgramCompile(recipe=recipe, samples=samples, library=[], program=program, search=None, adapter=adapter,
                          single=adapter, static=static, timings=timings, loaded=loaded, layers=tuple(layers),
                          preset=SINGLE_PRESET, seed=seed, strength=strength, candidates=candidates,
                          val_base=base_val, selection_precision=precision)


@dataclass
class AddedIssue:
    """An issue compiled onto an existing adapter: the new issue's compile and the merged adapter."""
    compiled: ProgramCompile
    previous: SteeringAdapter
    merged: SteeringAdapter
    previous_samples: list[SampleSet]   # every earlier issue's saved sample set (samples*.jsonl)


def add_issue(options: CompileOptions, adapter_dir: str | Path, adaptive: AdaptiveOptions | None = None,
              loaded: LoadedModel | None = None, log: Callable[[str], None] = print) -> AddedIssue:
    """Compile ``options.recipe`` and append its program to the adapter in ``adapter_dir``.

    The existing strategies are not refitted: their specs and tensors are copied bit for bit, so on
    every token where the new anchors stay shut the merged adapter computes exactly what the old one
    did. The new anchors learn to stay shut on the old issues' prompts (from the sample sets saved
    beside the adapter), and the old adapter must have been compiled for this model."""
    adapter_dir = Path(adapter_dir)
    previous = SteeringAdapter.load(adapter_dir)
    adaptive = adaptive or AdaptiveOptions(selection=previous.selection)
    if adaptive.selection != previous.selection:
        raise MasteerError(f"{adapter_dir} uses selection {previous.selection!r}; an added issue must use the same "
                           f"(got {adaptive.selection!r})")
    loaded = loaded or load_model(options.model)
    check_compatible(loaded.model, previous)
    sample_files = sorted(adapter_dir.glob("samples*.jsonl"))
    old_samples = [SampleSet.load(f) for f in sample_files]
    others = [s for sample_set in old_samples for s in sample_set.select(split="train")]
    log(f"add to {adapter_dir}: {len(previous.strategies)} existing neurons kept as they are; the new anchors stay "
        f"shut on {len(others)} training prompts of {', '.join(sorted({s.recipe for s in old_samples})) or 'no'} "
        f"earlier issue(s)")
    compiled = compile_program(options, adaptive, loaded=loaded, log=log, others=others)
    merged = SteeringAdapter.load(adapter_dir)
    lower(compiled.program, merged)
    issues = list(dict.fromkeys([*previous.provenance.get("issues", [previous.provenance.get("recipe", "")]),
                                 compiled.recipe.name]))
    merged.provenance = {**previous.provenance, "issues": [i for i in issues if i],
                         f"samples_hash:{compiled.recipe.name}": compiled.samples.content_hash}
    return AddedIssue(compiled=compiled, previous=previous, merged=merged,
                      previous_samples=old_samples)


# --------------------------------------------------------------------------- the before/after measurement
BASE_ARM, STATIC_ARM, SINGLE_ARM, ADAPTIVE_ARM = "base", "static", "single", "adaptive"
PER_PROMPT_ARM = "per-prompt"
OPEN_ARM = "anchor open"   # pseudo-arm of the breakdowns: the program is open at the prompt's last token
WRITTEN_ARM = "written refusals"   # fluency reference: the recipe's desired completions after the same prompts
BREAKDOWN_FIELDS = ("family", "category")


@dataclass
class ProgramEvaluation:
    """The compile's held-out measurement of every arm (module docstring): generated and teacher-forced."""
    refusal: object                                  # evaluation.Evaluation: judged refusal per group and arm
    teacher_forced: dict[str, dict[str, float]]      # arm -> {"effect": ..., "kl": ...} on test targets/neutrals
    gates: list[dict]                                # gate reports of the adaptive program on test prompts
    suites: object | None = None                     # evaluation.EvalReport, when the suites ran
    frontier: list[dict] = field(default_factory=list)   # the static strategy on test at every strength tried
    timings: dict[str, float] = field(default_factory=dict)   # seconds per measurement
    # field ("family", "category") -> rows of Evaluation.breakdown over the test prompts, with the share of
    # prompts whose program is open at the last prompt token as the pseudo-arm OPEN_ARM
    breakdowns: dict[str, list[dict]] = field(default_factory=dict)
    # arm -> refusal rate on the test targets where the program is open at the last prompt token (and n)
    open_refusal: dict[str, dict] = field(default_factory=dict)
    # label -> arm -> fluency (evaluation.fluency) of the test answers; WRITTEN_ARM: the recipe's own refusals
    fluency: dict[str, dict[str, dict]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"refusal": self.refusal.to_dict(), "teacher_forced": self.teacher_forced, "gates": self.gates,
                "breakdowns": self.breakdowns, "open_refusal": self.open_refusal, "fluency": self.fluency,
                "static_frontier": self.frontier, "timings_s": {k: round(v, 1) for k, v in self.timings.items()},
                "suites": self.suites.to_dict() if self.suites is not None and hasattr(self.suites, "to_dict")
                else None}


def program_arms(result: ProgramCompile, single: bool = True) -> dict[str, SteeringAdapter | None]:
    """The arms measured on test; ``single``: the adaptive program's first strategy alone beside it (a diagnostic,
    and the same adapter whenever the program kept one strategy)."""
    arms = {BASE_ARM: None}
    if result.static is not None:
        arms[STATIC_ARM] = result.static
    if result.preset == ADAPTIVE_PRESET and single:   # in the single preset the program is its single strategy
        arms[SINGLE_ARM] = result.single
    arms[ADAPTIVE_ARM] = result.adapter
    return arms


class ArmScoring:
    """The test split's teacher-forced scorer, built once per evaluation, and what it measured per adapter content.

    The effect table and the static frontier both read it: each had built its own, paying the base passes over
    every test neutral prompt twice and scoring the matched static strength and the program twice (measured on the
    adaptive end-to-end compile: 26 of the frontier's 171 s). ``targets=False`` scores drift alone."""

    def __init__(self, loaded: LoadedModel, samples: SampleSet, layers: Sequence[int], batch_size: int,
                 targets: bool = True):
        self.layers = list(layers)
        self.items = applicability_targets(samples.select(split="test"), limit=TEST_EFFECT_ITEMS)[0] if targets else []
        self.neutral = [s.prompt for s in samples.select(split="test", label=NEUTRAL)]
        self._loaded, self._batch_size, self._scorer = loaded, batch_size, None
        self.scored: dict[str, dict] = {}   # arm_key -> effect and KL
        self.kls: dict[str, float] = {}     # arm_key -> KL, for adapters scored for drift alone

    @property
    def scorer(self) -> HeldOutScorer | None:
        """Made on first use (its base passes are the cost): None without test neutral prompts."""
        if self._scorer is None and self.neutral:
            self._scorer = HeldOutScorer(self._loaded.model, self._loaded.tokenizer, self.items, self.neutral,
                                         self._batch_size, replay_layers=self.layers)
        return self._scorer

    def arm(self, adapter: SteeringAdapter) -> dict:
        """Mean effect on the test targets and KL on the test neutral prompts (scored once per content)."""
        key = arm_key(adapter)
        if key not in self.scored:
            effect, kl = score_adapter(self._loaded.model, self.scorer, adapter)
            self.scored[key] = {"effect": round(float(effect.mean()), 4), "kl": round(kl, 5),
                                "targets": len(self.items), "neutral_prompts": len(self.neutral)}
        return dict(self.scored[key])

    def kl(self, adapter: SteeringAdapter) -> float:
        """KL on the test neutral prompts alone, taken from :meth:`arm` where that scored the same content."""
        key = arm_key(adapter)
        if key in self.scored:
            return self.scored[key]["kl"]
        if key not in self.kls:
            self.kls[key] = round(adapter_drift(self._loaded.model, self.scorer, adapter), 5)
        return self.kls[key]


def teacher_forced_table(loaded: LoadedModel, samples: SampleSet, arms: dict, batch_size: int,
                         progress: bool, scoring: ArmScoring | None = None) -> dict[str, dict[str, float]]:
    """Mean effect on (at most ``TEST_EFFECT_ITEMS`` of) the test targets and mean next-token KL from the base model
    on every test neutral prompt; ``scoring``: the evaluation's shared scorer (made here when None)."""
    scoring = scoring or ArmScoring(loaded, samples, arm_layers(arms.values()), batch_size)
    if not scoring.items or not scoring.neutral:
        return {}
    table = {}
    for arm, adapter in arms.items():
        if not (adapter is None or isinstance(adapter, SteeringAdapter)):
            continue   # a routed arm has no single forward pass to score
        # the first strategy alone is the program itself when it kept one: scored once
        table[arm] = {"effect": 0.0, "kl": 0.0} if adapter is None else scoring.arm(adapter)
    return table


def arm_layers(adapters) -> list[int]:
    """The first steered layer of each adapter among ``adapters`` (what a scorer keeps for replay)."""
    return sorted({layer for a in adapters if isinstance(a, SteeringAdapter)
                   for layer in [first_steered_layer(a)] if layer is not None})


@contextmanager
def timed(timings: dict[str, float], name: str):
    """Seconds spent in the block, stored as ``timings[name]`` (also when it raises)."""
    clock = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = time.perf_counter() - clock


def static_frontier(result: ProgramCompile, loaded: LoadedModel, groups: dict[str, list[Sample]],
                    directions: dict[str, str], max_new_tokens: int, options: CompileOptions, cache,
                    scoring: ArmScoring | None = None) -> list[dict]:
    """The matched static strategy on test at every strength the matching tried, and the program beside it on
    the same prompts (its last row): judged refusal pooled by direction on the test prompts as written (one
    form per source item, to save time; the program's answers come from the cache) and next-token KL on every
    test neutral prompt, one row per strength (ascending)."""
    from .evaluation import evaluate_refusal
    if result.static is None or not result.static_match.get("tried"):
        return []
    tried = {row["strength"]: row["val_target_refusal"] for row in result.static_match["tried"]}
    arms = {f"static@{value:g}": at_strength(result.static, value) for value in sorted(tried)}
    arms[ADAPTIVE_ARM] = result.adapter
    written = {g: as_written(members) for g, members in groups.items()}
    refusal = evaluate_refusal(loaded.model, loaded.tokenizer, arms, {g: m for g, m in written.items() if m},
                               directions, max_new_tokens=max_new_tokens,
                               batch_size=generation_batch(options.batch_size), progress=options.progress, cache=cache)
    if scoring is None or not set(arm_layers(arms.values())) <= set(scoring.layers):
        scoring = ArmScoring(loaded, result.samples, arm_layers(arms.values()), options.batch_size, targets=False)
    rows = []
    for (arm, adapter), value in zip(arms.items(), sorted(tried) + [None]):
        row = {"arm": "static" if value is not None else ADAPTIVE_ARM, "strength": value,
               "val_target_refusal": tried.get(value)}
        row.update({f"test_{d}": round(refusal.pooled(d, arm), 4) for d in dict.fromkeys(directions.values())})
        row["test_neutral_kl"] = scoring.kl(adapter) if scoring.neutral else None
        row["prompts"] = sum(len(m) for m in written.values())
        rows.append(row)
    return rows


def frontier_markdown(rows: Sequence[dict]) -> str:
    """The static frontier with the program's own row last (same prompts), for reading side by side."""
    if not rows:
        return ""
    directions = [k[len("test_"):] for k in rows[0] if k.startswith("test_") and k != "test_neutral_kl"]
    lines = ["| arm | strength | val target refusal | " + " | ".join(f"test refusal ({d})" for d in directions)
             + " | test neutral KL |", "|---" * (4 + len(directions)) + "|"]
    for r in rows:
        kl = r["test_neutral_kl"] if r["test_neutral_kl"] is not None else float("nan")
        if r.get("arm", "static") == "static":
            lines.append(f"| static | {r['strength']:g} | {100 * r['val_target_refusal']:.1f}% | "
                         + " | ".join(f"{100 * r[f'test_{d}']:.1f}%" for d in directions) + f" | {kl:.4f} |")
        else:
            lines.append(f"| **{r['arm']}** | | | " + " | ".join(f"**{100 * r[f'test_{d}']:.1f}%**" for d in directions)
                         + f" | **{kl:.4f}** |")
    return "\n".join(lines)


def evaluate_program(result: ProgramCompile, loaded: LoadedModel, options: CompileOptions, suites: bool = True,
                     log: Callable[[str], None] = print, frontier: bool = True,
                     detail: bool | None = None) -> ProgramEvaluation:
    """Every arm on the test split: judged refusal per recipe group; with ``detail`` (default: the adaptive preset
    with ``options.full_report``) also the program decided per prompt and its first strategy alone beside it,
    fluency, teacher-forced effect and KL, gate reports and the static frontier (``frontier``); then
    (``suites``) the evaluation suites with bootstrap intervals for base, static, adaptive."""
    from .evaluation import evaluate_compile, evaluate_refusal
    from .evaluation.prompt_decision import decided_per_prompt
    detail = (result.preset == ADAPTIVE_PRESET and options.full_report) if detail is None else detail
    recipe, samples = result.recipe, result.samples
    groups = {g: samples.select(split="test", group=g) for g in recipe.evaluation.groups}
    missing = [g for g, s in groups.items() if not s]
    if missing:
        raise MasteerError(f"{recipe.path}: evaluation groups {missing} have no test samples")
    max_new_tokens = options.max_new_tokens or recipe.evaluation.max_new_tokens
    arms: dict = program_arms(result, single=detail)
    timings: dict[str, float] = {}
    cache = stored_base_results(loaded.model, log) if options.store_base_results else ResultCache()
    with sharing_prefill(loaded.model, sorted(set(result.layers) | set(arm_layers(arms.values())))):
        fluent, forced, rows, gates, breakdowns, open_refusal = {}, {}, [], [], {}, {}
        with timed(timings, "refusal_table"):
            if detail:
                test_prompts = [s.prompt for g in groups.values() for s in g]
                arms[PER_PROMPT_ARM] = decided_per_prompt(loaded.model, loaded.tokenizer, result.program, result.adapter,
                                                          test_prompts, options.batch_size)
            refusal = evaluate_refusal(loaded.model, loaded.tokenizer, arms, groups, recipe.evaluation.groups,
                                       max_new_tokens=max_new_tokens, batch_size=generation_batch(options.batch_size),
                                       progress=options.progress, cache=cache)
            if detail:
                open_at_end = {p: key != BASE_ROUTE for p, key in arms[PER_PROMPT_ARM].route.items()}
                breakdowns, open_refusal = held_out_breakdowns(refusal, [s for g in groups.values() for s in g],
                                                               open_at_end)
        if detail:
            with timed(timings, "fluency"):
                fluent = answer_fluency(loaded, refusal, groups, options.batch_size)
            with timed(timings, "teacher_forced"):
                scoring = ArmScoring(loaded, samples, arm_layers(arms.values()), options.batch_size)
                forced = teacher_forced_table(loaded, samples, arms, options.batch_size, options.progress, scoring)
            if frontier:
                with timed(timings, "static_frontier"):
                    rows = static_frontier(result, loaded, groups, recipe.evaluation.groups, max_new_tokens, options,
                                           cache, scoring)
            with timed(timings, "gate_report"):
                targets = [s.prompt for s in as_written(samples.select(split="test", label=TARGET))]
                neutrals = [s.prompt for s in as_written(samples.select(split="test", label=NEUTRAL))]
                # the refusal table's answers of the program are what its gates opened on: scored, not generated again
                answers = refusal.responses.get(ADAPTIVE_ARM, {})
                answers = answers if all(p in answers for p in targets + neutrals) else None
                gates = [r.to_dict() for r in gate_reports(loaded.model, loaded.tokenizer, result.adapter, targets,
                                                           neutrals, max_new_tokens=max_new_tokens,
                                                           batch_size=options.batch_size, progress=options.progress,
                                                           answers=answers)]
        report = None
        if suites:
            with timed(timings, "suites"):
                chosen = {k: v for k, v in arms.items() if k in (BASE_ARM, STATIC_ARM, ADAPTIVE_ARM)}
                # the suites' one batch size also batches MMLU scoring: kept, so their numbers round as before
                report = evaluate_compile(loaded.model, loaded.tokenizer, samples, recipe.evaluation.groups, chosen,
                                          max_new_tokens=max_new_tokens, batch_size=2 * options.batch_size, cache=cache,
                                          seed=result.seed, progress=options.progress, log=log)
        return ProgramEvaluation(refusal=refusal, teacher_forced=forced, gates=gates, suites=report, frontier=rows,
                                 timings=timings, breakdowns=breakdowns, open_refusal=open_refusal, fluency=fluent)


def stored_base_results(model, log: Callable[[str], None] = print):
    """The evaluation's cache with the base arm's results stored beside the captures (``capture.cache.BaseArmCache``)."""
    cache = BaseArmCache(stored_results_root() / stored_results_name(model), log)
    if len(cache.stored):
        log(f"base results: reusing {len(cache.stored)} stored in {cache.stored.path}")
    return cache


def answer_fluency(loaded: LoadedModel, refusal, groups: dict[str, list[Sample]], batch_size: int
                   ) -> dict[str, dict[str, dict]]:
    """Base-model fluency of each arm's test answers, targets and neutral prompts apart, with the recipe's
    written refusals after the target prompts as the reference for a fluent refusal."""
    from .evaluation.fluency import fluency_by_arm
    pairs: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for label in (TARGET, NEUTRAL):
        chosen = [s for g in groups.values() for s in g if s.label == label]
        if not chosen:
            continue
        arms = refusal.arms if label == TARGET else [a for a in refusal.arms if a in (BASE_ARM, ADAPTIVE_ARM)]
        pairs.update({(label, arm): [(s.prompt, refusal.responses[arm][s.prompt]) for s in chosen] for arm in arms})
        written = [(s.prompt, s.positive) for s in chosen if s.positive]
        if label == TARGET and written:
            pairs[(label, WRITTEN_ARM)] = written
    scored = fluency_by_arm(loaded.model, loaded.tokenizer, pairs, batch_size)   # each distinct answer scored once
    out: dict[str, dict[str, dict]] = {}
    for (label, arm), value in scored.items():
        out.setdefault(label, {})[arm] = value
    return out


def held_out_breakdowns(refusal, samples: Sequence[Sample], open_at_end: dict[str, bool]
                        ) -> tuple[dict[str, list[dict]], dict[str, dict]]:
    """Per-family and per-category rows of the test table (``OPEN_ARM`` beside the arms), and each arm's
    refusal rate on the test targets where the program is open at the last prompt token."""
    refusal.verdicts[OPEN_ARM] = {p: open_at_end.get(p, False) for p in refusal.verdicts[refusal.arms[0]]}
    refusal.arms.append(OPEN_ARM)
    try:
        breakdowns = {f: refusal.breakdown([s for s in samples if getattr(s, f, "")], f) for f in BREAKDOWN_FIELDS}
    finally:
        refusal.arms.remove(OPEN_ARM)
        del refusal.verdicts[OPEN_ARM]
    opened = [s.prompt for s in samples if s.label == TARGET and open_at_end.get(s.prompt)]
    open_refusal = {arm: {"n": len(opened), "refusal": round(sum(refusal.verdicts[arm][p] for p in opened)
                                                              / len(opened), 4) if opened else None}
                    for arm in refusal.arms}
    return {f: rows for f, rows in breakdowns.items() if rows}, open_refusal


# --------------------------------------------------------------------------- output

def forced_markdown(table: dict[str, dict[str, float]]) -> str:
    if not table:
        return ""
    lines = ["| arm | effect on test targets (log-odds, teacher-forced) | KL from base on test neutral prompts |",
             "|---|---|---|"]
    lines += [f"| {arm} | {row['effect']:+.3f} | {row['kl']:.4f} |" for arm, row in table.items()]
    return "\n".join(lines)


def summary_markdown(result: ProgramCompile, evaluation: ProgramEvaluation | None) -> str:
    """What the compile prints: the program, then every measured table."""
    lines = [f"Program ({result.preset} preset, {result.program.selection} selection):"]
    lines += [f"- {s.name}: {s.algorithm} at layer {s.layer}, strength {s.strength:g}" for s in result.program.strategies]
    if result.candidates and not math.isnan(result.candidates[0].score):
        lines.append("Layers on val (judged refusal, gated strategy): " + "; ".join(
            f"L{c.layer} target {c.val_target_rate:.2f} neutral {c.val_neutral_rate:.2f}" for c in result.candidates)
            + (f"; base target {result.val_base[TARGET]:.2f} neutral {result.val_base[NEUTRAL]:.2f}"
               if result.val_base else ""))
    if result.preset == SINGLE_PRESET and result.static is not None:
        lines.append(f"Static baseline: the same direction always on at strength {result.strength:g}")
    if result.static_match:
        lines.append(f"Static baseline: {result.static_match['strategy']} always on at strength "
                     f"{result.static_match['chosen_strength']:g} (val target refusal "
                     f"{result.static_match['chosen_val_target_refusal']:.2f} vs adaptive "
                     f"{result.static_match['adaptive_val_target_refusal']:.2f})")
    if evaluation is not None:
        from .evaluation.gate_report import GateReport, format_gate_reports
        lines += ["", evaluation.refusal.markdown(), "", forced_markdown(evaluation.teacher_forced), "",
                  format_gate_reports([GateReport(**g) for g in evaluation.gates])]
        if evaluation.open_refusal:
            shown = {a: v for a, v in evaluation.open_refusal.items() if v["refusal"] is not None}
            if shown:
                n = next(iter(shown.values()))["n"]
                lines += ["", f"Refusal on the {n} test targets where the program is open at the last prompt token: "
                          + ", ".join(f"{a} {100 * v['refusal']:.1f}%" for a, v in shown.items())]
        if evaluation.fluency:
            lines += ["", "Fluency of the test answers (base-model perplexity of each answer given its prompt, median; "
                          "share of repeated word trigrams):", "", "| answers to | arm | n | perplexity | repetition |",
                      "|---|---|---|---|---|"]
            lines += [f"| {label} | {arm} | {f['n']} | {f['perplexity']} | {f['repetition']} |"
                      for label, per_arm in evaluation.fluency.items() for arm, f in per_arm.items()]
        from .evaluation import breakdown_markdown
        for name, rows in evaluation.breakdowns.items():
            arms = [a for a in list(evaluation.refusal.arms) + [OPEN_ARM] if any(a in r for r in rows)]
            lines += ["", f"Test refusal by {name} ({OPEN_ARM}: the program open at the last prompt token):", "",
                      breakdown_markdown(rows, name, arms)]
        if evaluation.frontier:
            lines += ["", f"The static strategy at every strength the matching tried, on the "
                          f"{evaluation.frontier[0].get('prompts', '')} test prompts as written:", "",
                      frontier_markdown(evaluation.frontier)]
        if evaluation.suites is not None:
            lines += ["", evaluation.suites.markdown()]
    return "\n".join(lines + ["", timing_line(result, evaluation)])


def timing_line(result: ProgramCompile, evaluation: ProgramEvaluation | None) -> str:
    """Seconds per stage (also in compile_report.json), so a slow compile says where its time went."""
    stages = ", ".join(f"{k.replace('_', ' ')} {v:.0f}" for k, v in result.timings.items())
    total = sum(result.timings.values())
    if evaluation is not None and evaluation.timings:
        stages += "; evaluation: " + ", ".join(f"{k.replace('_', ' ')} {v:.0f}" for k, v in evaluation.timings.items())
        total += sum(evaluation.timings.values())
    return f"Time per stage (s): {stages}; {total / 60:.1f} minutes in all."


def save_program(result: ProgramCompile, evaluation: ProgramEvaluation | None, out: str | Path,
                 previous_dir: str | Path | None = None, adapter: SteeringAdapter | None = None,
                 extra_report: dict | None = None) -> Path:
    """The adapter folder with the sample set(s) and the compile report, one atomic write.

    With ``previous_dir`` (``--add-to``) the earlier issues' sample sets and reports are carried over,
    and the new issue's are stored as ``samples-<recipe>.jsonl`` and ``compile_report-<recipe>.json``."""
    from .evaluation import card_metrics
    adapter = adapter or result.adapter
    report = {**result.report(), "evaluation": evaluation.to_dict() if evaluation else None, **(extra_report or {})}
    extra: dict[str, str] = {}
    if previous_dir is None:
        extra[SAMPLES_NAME] = result.samples.to_jsonl()
        extra[REPORT_NAME] = json.dumps(report, indent=2, default=str) + "\n"
    else:
        previous_dir = Path(previous_dir)
        for path in sorted(previous_dir.glob("samples*.jsonl")) + sorted(previous_dir.glob("compile_report*.json")):
            extra[path.name] = path.read_text()
        name = result.recipe.name
        extra[f"samples-{name}.jsonl"] = result.samples.to_jsonl()
        extra[f"compile_report-{name}.json"] = json.dumps(report, indent=2, default=str) + "\n"
    if evaluation is not None and evaluation.suites is not None:
        adapter.metrics = card_metrics(evaluation.suites, quick_table=evaluation.refusal.markdown())
    elif evaluation is not None:
        adapter.metrics = {"table": evaluation.refusal.table_rows(),
                           "note": "Judged refusal rates on held-out test prompts (greedy decoding)."}
    return adapter.save(out, extra_files=extra)


PREVIOUS_ARM, MERGED_ARM = "previous", "merged"


def evaluate_added(added: AddedIssue, loaded: LoadedModel, options: CompileOptions) -> dict:
    """Held-out numbers for an added issue: the new issue moves (base vs previous vs merged), and every
    earlier issue does not (previous vs merged on its own test split: no cross-talk)."""
    from .evaluation import evaluate_refusal, within_interval_rows
    arms = {BASE_ARM: None, PREVIOUS_ARM: added.previous, MERGED_ARM: added.merged}
    cache = ResultCache()
    out = {}
    new_name = added.compiled.recipe.name
    sets = [(new_name, added.compiled.samples)]
    for samples in added.previous_samples:   # named by their recipe; a clash with the new name gets a suffix
        sets.append((samples.recipe if samples.recipe not in dict(sets) else f"{samples.recipe} (earlier)", samples))
    for name, samples in sets:
        directions = held_out_directions(samples)
        groups = {g: [s for s in samples.select(split="test") if (s.group or s.label) == g] for g in directions}
        max_new_tokens = options.max_new_tokens or added.compiled.recipe.evaluation.max_new_tokens
        refusal = evaluate_refusal(loaded.model, loaded.tokenizer, arms, groups, directions,
                                   max_new_tokens=max_new_tokens, batch_size=generation_batch(options.batch_size),
                                   progress=options.progress, cache=cache)
        forced = teacher_forced_table(loaded, samples, arms, options.batch_size, options.progress)
        out[name] = {"refusal": refusal, "teacher_forced": forced}
        if name != new_name:   # an earlier issue: the merged adapter must not move it
            out[name]["cross_talk"] = within_interval_rows(refusal, PREVIOUS_ARM, MERGED_ARM)
    return out


def cross_talk_markdown(rows: Sequence[dict]) -> str:
    """The earlier issue's rates: previous adapter with its 95% Wilson interval, merged adapter, inside or not."""
    lines = ["| group | n | previous | 95% interval | merged | within |", "|---|---|---|---|---|---|"]
    for r in rows:
        low, high = r["interval"]
        lines.append(f"| {r['group']} | {r['n']} | {100 * r[PREVIOUS_ARM]:.1f}% | [{100 * low:.1f}, {100 * high:.1f}] "
                     f"| {100 * r[MERGED_ARM]:.1f}% | {'yes' if r['within'] else 'NO'} |")
    return "\n".join(lines)


def held_out_directions(samples: SampleSet) -> dict[str, str]:
    """Test groups of a sample set and which way each should move: "up" for targets, "same" for neutral ones.
    (Read from the samples, so an earlier issue's table needs nothing but its saved sample set.)"""
    directions: dict[str, str] = {}
    for s in samples.select(split="test"):
        directions.setdefault(s.group or s.label, "up" if s.label == TARGET else "same")
    return directions


def run_compile(options: CompileOptions, preset: AdaptiveOptions | SingleStrategy | None, out: str | Path,
                add_to: str | Path | None = None, log: Callable[[str], None] = print,
                overwrite: bool = False) -> tuple[Path, str]:
    """What ``masteer-compile`` does, in either preset: compile (or add to an adapter), measure, save, summarise.
    ``out`` is replaced as a whole: checked before any work as the command line checks it (missing or empty, or
    with ``overwrite`` a folder masteer wrote; never an input), so a Python caller cannot lose a folder either."""
    from masteer.runtime.output_folder import check_output_folder
    inputs = [add_to, options.samples_path, options.model if options.model and Path(options.model).exists() else None]
    check_output_folder(out, inputs=inputs, overwrite=overwrite, option="out", switch="overwrite=True")
    if add_to is not None and isinstance(preset, SingleStrategy):
        raise MasteerError("adding an issue to an adapter (--add-to) needs the adaptive preset")
    if add_to is None:
        result = compile_program(options, preset, log=log)
        loaded = result.loaded
        evaluation = evaluate_program(result, loaded, options, suites=options.suites, log=log) \
            if options.evaluate else None
        return save_program(result, evaluation, out), summary_markdown(result, evaluation)
    added = add_issue(options, add_to, preset, log=log)
    tables = evaluate_added(added, added.compiled.loaded, options) if options.evaluate else {}
    path = save_program(added.compiled, None, out, previous_dir=add_to, adapter=added.merged,
                        extra_report={"added_to": str(add_to), "tables": {
                            name: {"refusal": t["refusal"].to_dict(), "teacher_forced": t["teacher_forced"],
                                   **({"cross_talk": t["cross_talk"]} if "cross_talk" in t else {})}
                            for name, t in tables.items()}})
    lines = [summary_markdown(added.compiled, None)]
    for name, t in tables.items():
        lines += ["", f"Issue {name} (test split): base / previous adapter / merged adapter", "",
                  t["refusal"].markdown(), "", forced_markdown(t["teacher_forced"])]
        if "cross_talk" in t:
            lines += ["", f"Cross-talk check for {name}: is the merged adapter's rate inside the previous adapter's "
                          "95% Wilson interval?", "", cross_talk_markdown(t["cross_talk"])]
    return path, "\n".join(lines)
