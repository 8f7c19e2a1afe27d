"""The compile's shared stages: options, checks before the model loads, the fitting sequences, the capture,
one layer's fit, the adapters' skeletons and the val rates; and the library survey (``masteer strategies``).

Every compile runs through ``compile.compile_program``; this module holds what its presets (adaptive program
search, single strategy) and the survey have in common, so each step exists once.

Held-out discipline, by split: ``train`` fits directions and gates, ``val`` chooses layers, strengths and the
program, ``test`` is only generated from, once, for the before/after table. The three never share a prompt
(checked, not assumed).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from masteer.runtime import SteeringAdapter, host_layout, model_fingerprint
from masteer.runtime.errors import MasteerError
from masteer.runtime.hosts import activation_name

from .capture.activation_store import ActivationStore
from .capture.activations import COMPLETION, PROMPT_TAIL, Activations, capture
from .strategies.algorithms import FitInputs, Proposal, available, get_algorithm
from .program.anchors import Gate, fit_gate
from .samples.builders import build_samples, resolve_recipe
from .evaluation import evaluate_refusal
from .common.batching import generation_batch
from .common.models import EMBEDDED_NAME, LoadedModel, check_model_resolvable, contiguous_head_input, load_model
from .common.names import SELECTION_EXACT, SELECTION_PRECISIONS
from .capture.neutral_answers import ANCHOR_ONLY, decoy_completions, extra_neutral_items, neutral_answers
from .samples.recipes import Recipe
from .samples.sample_set import NEUTRAL, TARGET, Sample, SampleSet
from .strategies.library import DEFAULT_DRIFT_BUDGET, MIN_EFFECT, StrategyRow, as_dicts, format_table, library_table

REPORT_NAME = "compile_report.json"
SAMPLES_NAME = "samples.jsonl"
SELECTION_TOKENS = 12  # a refusal announces itself in its first words


@dataclass
class CompileOptions:
    """Everything a compile can be told; ``None`` means "the recipe's default"."""
    recipe: str = "refusal"
    model: str = EMBEDDED_NAME
    layers: tuple[int, ...] | None = None
    strength: float | None = None
    seed: int | None = None
    samples_path: str | None = None     # a saved (possibly hand-edited) sample set instead of the builder
    evaluate: bool = True
    suites: bool = True                 # after the quick table, the evaluation suites with intervals (slower)
    # the adaptive preset's diagnostics too: the program decided per prompt, its first strategy alone, fluency,
    # teacher-forced effect and KL, gate reports, breakdowns by family and category, the static frontier (about
    # two thirds of the evaluation's time, so off unless asked: ``--full-report``)
    full_report: bool = False
    max_new_tokens: int | None = None
    batch_size: int = 16
    progress: bool = True
    cache_activations: bool = True      # reuse a stored capture of the same model, sequences and layers
    store_base_results: bool = True     # keep the base model's evaluation answers and values for later compiles
    # what calibration and the program search score and generate with (``common.selection_model``): "exact" =
    # the model as loaded, "bf16" = a bfloat16 copy (2.4x faster selection on 2 AMX cores, but it chose another
    # program of the same quality on refusal: docs/benchmarks/compile.md), "bf16-search" = the library calibrated
    # on the model as loaded and the program search on the copy, "auto" = bf16 where the device has
    # bfloat16 units, else exact; the evaluation always measures the model as loaded
    selection_precision: str = SELECTION_EXACT

    def __post_init__(self):
        """Every value a user types is checked here, where it is made, not minutes later in the stage that reads it."""
        if not isinstance(self.recipe, str) or not self.recipe.strip():
            raise MasteerError(f"recipe must be a recipe name, a TOML file or an issue in words, got {self.recipe!r}")
        if self.layers is not None:
            self.layers = tuple(self.layers)
            if not self.layers or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in self.layers):
                raise MasteerError(f"layers must be non-negative layer indices, got {list(self.layers)}")
            if len(set(self.layers)) != len(self.layers):
                raise MasteerError(f"layers repeat a layer: {list(self.layers)}")
        if self.strength is not None and not (isinstance(self.strength, (int, float)) and math.isfinite(self.strength)
                                              and self.strength > 0):
            raise MasteerError(f"strength must be a positive finite number, got {self.strength}")
        for name in ("batch_size", "max_new_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise MasteerError(f"{name} must be a positive whole number, got {value!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise MasteerError(f"seed must be a whole number, got {self.seed!r}")
        if self.selection_precision not in SELECTION_PRECISIONS:
            raise MasteerError(f"selection_precision must be one of {', '.join(SELECTION_PRECISIONS)}, "
                               f"got {self.selection_precision!r}")


# --------------------------------------------------------------------------- stage helpers
@dataclass
class FitSequences:
    """The (prompt, completion) sequences captured for fitting, and what each one is."""
    items: list[tuple[str, str | None]]
    samples: list[Sample]
    roles: list[str]   # "positive" | "negative" | "prompt" | "answer" | "decoy" (neutral_answers)

    def indices(self, role: str | None = None, label: str | None = None, paired: bool | None = None,
                split: str | None = None, withheld: frozenset[str] = frozenset()) -> list[int]:
        """Sequences by role, label, pairing and split; none of a ``withheld`` rewrite family."""
        return [i for i, (s, r) in enumerate(zip(self.samples, self.roles))
                if (role is None or r == role) and (label is None or s.label == label)
                and (paired is None or s.has_pair == paired) and (split is None or s.split == split)
                and s.family not in withheld]

    def fit_inputs(self, acts: Activations, split: str = "train", withheld: frozenset[str] = frozenset()) -> FitInputs:
        """What algorithms see: the given split's pairs, target and neutral sequences (not the anchor-only
        answers and decoys, which would count a neutral prompt several times), none of a ``withheld`` family."""
        return FitInputs(activations=acts, paired=self.indices("positive", paired=True, split=split, withheld=withheld),
                         paired_negative=self.indices("negative", paired=True, split=split, withheld=withheld),
                         target_prompts=self.indices(label=TARGET, split=split, withheld=withheld),
                         neutral_prompts=[i for i in self.indices(label=NEUTRAL, split=split, withheld=withheld)
                                          if self.roles[i] not in ANCHOR_ONLY])

    def anchor_negatives(self, split: str = "train") -> list[int]:
        """Every neutral sequence of the split, answers and decoys included: where an anchor stays shut."""
        return self.indices(label=NEUTRAL, split=split)


def fit_sequences(samples: Sequence[Sample], extra: Sequence[tuple[Sample, str, str]] = ()) -> FitSequences:
    """Each sample's prompt with each completion it has (or alone, when it has none), then ``extra``
    (owner, role, completion) sequences: neutral prompts with answers and decoys (``neutral_answers``)."""
    items, owners, roles = [], [], []
    for s in samples:
        for role, completion in (("positive", s.positive), ("negative", s.negative)):
            if completion is not None:
                items.append((s.prompt, completion)); owners.append(s); roles.append(role)
        if s.positive is None and s.negative is None:
            items.append((s.prompt, None)); owners.append(s); roles.append("prompt")
    for s, role, completion in extra:
        items.append((s.prompt, completion)); owners.append(s); roles.append(role)
    return FitSequences(items=items, samples=owners, roles=roles)


def anchor_negatives(samples: Sequence[Sample], options: CompileOptions, loaded: LoadedModel, seed: int,
                     log: Callable[[str], None]) -> list[tuple[Sample, str, str]]:
    """Neutral prompts with the model's own answers and with decoy completions: tokens where anchors must stay
    shut while the model writes (``neutral_answers`` says why). Answers are cached beside the activations."""
    cache_dir = ActivationStore().root if options.cache_activations else None
    answers = neutral_answers(loaded.model, loaded.tokenizer, samples, options.batch_size, cache_dir,
                              options.progress, log)
    return extra_neutral_items(samples, answers, decoy_completions(samples), seed)


def check_disjoint(samples: SampleSet) -> None:
    """No prompt may be in two splits: a test prompt seen by fitting would flatter the table."""
    seen: dict[str, str] = {}
    for s in samples.samples:
        key = " ".join(s.prompt.lower().split())
        if key in seen and seen[key] != s.split:
            raise MasteerError(f"sample {s.id!r} ({s.split}) repeats a prompt of the {seen[key]} split: "
                               f"{s.prompt[:80]!r}; held-out splits must not share prompts")
        seen.setdefault(key, s.split)


def capture_activations(options: CompileOptions, loaded: LoadedModel, seqs: FitSequences, layers: Sequence[int],
                        samples: SampleSet, log: Callable[[str], None]) -> Activations:
    """The one model pass of fitting: from the on-disk store when this exact capture was made before."""
    if not options.cache_activations:
        return capture(loaded.model, loaded.tokenizer, seqs.items, layers, batch_size=options.batch_size,
                       progress=options.progress)
    return ActivationStore().capture(loaded.model, loaded.tokenizer, seqs.items, layers, batch_size=options.batch_size,
                                     progress=options.progress, samples_hash=samples.content_hash, log=log)


def fit_layer(acts: Activations, seqs: FitSequences, layer: int, algorithm: str, host_form: str,
              seed: int) -> tuple[Proposal, Gate]:
    """The strategy direction (from paired completions) and its anchor (from target vs neutral tokens)."""
    inputs = seqs.fit_inputs(acts)
    if not inputs.paired:
        raise MasteerError("the training split has no samples with both a positive and a negative completion; "
                           "a direction needs pairs")
    if not inputs.target_prompts or not inputs.neutral_prompts:
        raise MasteerError("the training split needs both target and neutral samples to fit a gate")
    proposal = get_algorithm(algorithm).fit(inputs, layer)
    # The gate learns where to fire from what it will see while generating: a target prompt's tail
    # followed by the *desired* completion (once steering works, that is the text being written),
    # against neutral prompts with any completion (so refusal words alone do not open it).
    # Every token of a neutral sequence, from the system prompt on, is a place to stay silent.
    fire_on = [i for i in inputs.target_prompts if seqs.roles[i] != "negative"]
    gate = fit_gate(acts.tokens_of(fire_on, layer, kinds=(PROMPT_TAIL, COMPLETION)),
                    acts.tokens_of(seqs.anchor_negatives(), layer), host_form, seed=seed)
    return proposal, gate


def new_adapter(loaded: LoadedModel, samples: SampleSet, recipe: Recipe) -> SteeringAdapter:
    layout = host_layout(loaded.model)
    return SteeringAdapter(base_model_name_or_path=loaded.name, fingerprint=model_fingerprint(loaded.model),
                           host_form=layout.form, activation=activation_name(loaded.model),
                           provenance={"recipe": recipe.name, "recipe_file": Path(recipe.path).name,
                                       "samples_hash": samples.content_hash})


def add_static(adapter: SteeringAdapter, recipe: Recipe, proposal: Proposal, strength: float) -> None:
    adapter.add_additive(proposal.layer, f"{recipe.name}-{proposal.algorithm}-L{proposal.layer}-static",
                         direction=proposal.direction, strength=strength, issue=recipe.name,
                         algorithm=proposal.algorithm, metadata=dict(proposal.metadata))


def val_rates(loaded: LoadedModel, adapter: SteeringAdapter | None, val: dict[str, list[Sample]],
              options: CompileOptions, cache=None) -> dict[str, float]:
    """Judged refusal rates of short greedy answers to the val prompts, by label; answers already in ``cache``
    (an ``evaluation.ResultCache``; None: a fresh one) are read, not generated."""
    evaluation = evaluate_refusal(loaded.model, loaded.tokenizer, {"arm": adapter}, val, {},
                                  max_new_tokens=SELECTION_TOKENS, batch_size=generation_batch(options.batch_size),
                                  progress=options.progress, cache=cache)
    return {g.group: g.rates["arm"] for g in evaluation.groups}


# --------------------------------------------------------------------------- the compile
def check_compile_samples(recipe: Recipe, samples: SampleSet, evaluate: bool, need_val: bool) -> None:
    """What the stages will need from the sample set, checked before the model loads."""
    where = f"sample set {samples.content_hash} ({samples.recipe})"
    train = samples.select(split="train")
    if not any(s.label == TARGET and s.has_pair for s in train):
        raise MasteerError(f"{where}: the train split has no target sample with both a positive and a negative "
                           f"completion; a steering direction needs such pairs")
    if not any(s.label == NEUTRAL for s in train):
        raise MasteerError(f"{where}: the train split has no neutral prompts; anchors learn from them where to stay shut")
    val = samples.select(split="val")
    if need_val and not (any(s.label == TARGET and s.has_pair for s in val) and any(s.label == NEUTRAL for s in val)):
        raise MasteerError(f"{where}: the val split needs target samples with both completions and neutral prompts "
                           f"(they choose layers, strengths and the program)")
    if evaluate:
        groups = recipe.evaluation.groups
        if not groups:
            raise MasteerError(f"{recipe.path}: [evaluation] groups is empty; name the sample groups to measure "
                               f"(or compile with --no-eval)")
        have = sorted({s.group for s in samples.select(split="test") if s.group})
        missing = [g for g in groups if g not in have]
        if missing:
            raise MasteerError(f"{recipe.path}: evaluation groups {missing} have no test samples; the test split has "
                               f"groups {have}")


def _prepare(options: CompileOptions, loaded: LoadedModel | None, log: Callable[[str], None],
             need_val: bool = False):
    """Recipe, checked samples, model, candidate layers, seed and strength, with every input validated before the
    model loads."""
    recipe = resolve_recipe(options.recipe)  # a recipe name or file, or an issue in words (AutoTester)
    if loaded is None:
        check_model_resolvable(options.model)
    seed = recipe.defaults.seed if options.seed is None else options.seed
    layers = tuple(options.layers or recipe.defaults.layers)
    strength = recipe.defaults.strength if options.strength is None else float(options.strength)
    if not (math.isfinite(strength) and strength > 0):
        raise MasteerError(f"strength must be a positive finite number, got {strength}")
    torch.manual_seed(seed)
    samples = SampleSet.load(options.samples_path) if options.samples_path else build_samples(recipe, seed)
    check_disjoint(samples)
    check_compile_samples(recipe, samples, options.evaluate, need_val or len(layers) > 1)
    log(f"samples: {len(samples.samples)} ({samples.content_hash}); "
        + ", ".join(f"{k}={v}" for k, v in samples.summary().items()))
    loaded = loaded or load_model(options.model)
    contiguous_head_input(loaded.model)
    n_layers = model_fingerprint(loaded.model).num_layers
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise MasteerError(f"candidate layers {bad} are outside the model's 0..{n_layers - 1}")
    return recipe, samples, loaded, layers, seed, strength


# --------------------------------------------------------------------------- the library survey
@dataclass
class StrategySurvey:
    """Every algorithm x candidate layer on one capture: layer scores, calibrated strength, effect, drift."""
    recipe: str
    base_model: str
    samples_hash: str
    budget: float
    rows: list[StrategyRow]
    timings: dict[str, float] = field(default_factory=dict)

    def table(self) -> str:
        return format_table(self.rows, self.budget)

    def summary(self) -> str:
        """Which algorithms moved the target within the drift budget at some kept layer, and which did not."""
        moved = sorted({r.algorithm for r in self.rows if r.moved})
        fitted = dict.fromkeys(r.algorithm for r in self.rows)
        still = [a for a in fitted if a not in moved]
        return (f"moved the target (effect >= {MIN_EFFECT} within drift budget {self.budget:g}): "
                f"{', '.join(moved) or 'none'}\ndid not move: {', '.join(still) or 'none'}")

    def to_dict(self) -> dict:
        return {"recipe": self.recipe, "base_model": self.base_model, "samples_hash": self.samples_hash,
                "drift_budget": self.budget, "rows": as_dicts(self.rows),
                "timings_s": {k: round(v, 1) for k, v in self.timings.items()}}


def survey_strategies(options: CompileOptions, loaded: LoadedModel | None = None,
                      algorithms: Sequence[str] | None = None, budget: float = DEFAULT_DRIFT_BUDGET,
                      keep_layers: int = 2, log: Callable[[str], None] = print) -> StrategySurvey:
    """Fit the whole algorithm library on one capture of the train and val splits, rank and calibrate."""
    if keep_layers < 1:
        raise MasteerError(f"keep_layers must be at least 1, got {keep_layers}")
    if not (math.isfinite(budget) and budget > 0):
        raise MasteerError(f"the drift budget must be a positive number of nats, got {budget}")
    unknown = sorted(set(algorithms or ()) - set(available()))
    if unknown:
        raise MasteerError(f"unknown algorithm(s) {', '.join(unknown)}; available: {', '.join(available())}")
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    recipe, samples, loaded, layers, _, _ = _prepare(options, loaded, log)
    timings["load"] = time.perf_counter() - clock
    clock = time.perf_counter()
    seqs = fit_sequences(samples.select(split="train") + samples.select(split="val"))
    acts = capture_activations(options, loaded, seqs, layers, samples, log)
    timings["capture"] = time.perf_counter() - clock
    clock = time.perf_counter()
    val_pairs = (seqs.indices("positive", paired=True, split="val"), seqs.indices("negative", paired=True, split="val"))
    rows = library_table(loaded.model, loaded.tokenizer, new_adapter(loaded, samples, recipe), seqs.fit_inputs(acts),
                         val_pairs, samples.select(split="val"), layers, algorithms=algorithms,
                         keep_layers=keep_layers, budget=budget, batch_size=options.batch_size,
                         progress=options.progress, log=log)
    timings["fit_and_calibrate"] = time.perf_counter() - clock
    return StrategySurvey(recipe=recipe.name, base_model=loaded.name, samples_hash=samples.content_hash,
                          budget=budget, rows=rows, timings=timings)
