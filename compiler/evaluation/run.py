"""Entry points: ``masteer eval`` (:func:`run_eval`) and the end of a compile (:func:`evaluate_compile`).

Both run the same suites through :func:`~.harness.evaluate`. A compile evaluates on its own held-out
test split (its refusal-type groups) plus the packaged capability suites. ``masteer eval`` loads a
model and any adapters or baked checkpoints, and evaluates on the packaged splits; when an adapter
folder carries the sample set it was compiled from (``samples.jsonl``), the refusal-type suites
use that set's test split instead (``split="auto"``), because the packaged prompts of those
suites are the very pools the compile drew its training samples from. Either way the overlap
check runs against every known compile sample set, and an overlap is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from masteer.runtime import SteeringAdapter
from masteer.runtime.artifact import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME
from masteer.runtime.errors import MasteerError
from masteer.runtime.output_folder import check_report_folder

from ..common.model_checks import context_length
from ..common.models import EMBEDDED_NAME, load_model
from ..samples.sample_set import SampleSet
from ..capture.cache import CACHE_NAME, ResultCache
from .harness import Arm, evaluate
from .overlap import check_overlap
from .report import REPORT_JSON, REPORT_MD, EvalReport
from .report_files import write_report
from .suites import (GROUP_SUITES, REFUSAL, SHIFT_SUITES, SUITES, compile_shift_suite, compile_suites, load_suites,
                     resolve_names)

COMPILE_CAPABILITY_SUITES = ("mmlu", "perplexity", "kl")
SAMPLES_NAME = "samples.jsonl"
SPLITS = ("auto", "packaged")
REPORT_MARKERS = (REPORT_JSON, REPORT_MD, CACHE_NAME)   # an earlier report in --out: resumed or refreshed


def group_suite(group: str) -> str:
    return GROUP_SUITES.get(group, group)


def recipe_targets(groups: Mapping[str, str]) -> list[str]:
    """The suites a recipe's repair should move: its groups whose direction is not "same"."""
    return [group_suite(g) for g, direction in groups.items() if direction != "same"]


def evaluate_compile(model, tokenizer, samples: SampleSet, groups: Mapping[str, str], arms, *,
                     max_new_tokens: int = 24, batch_size: int = 16, cache: ResultCache | None = None,
                     capability: tuple[str, ...] = COMPILE_CAPABILITY_SUITES, progress: bool = True,
                     log: Callable[[str], None] = lambda line: None, **kwargs) -> EvalReport:
    """The suites a compile ends with: its test split per recipe group, then the capability suites."""
    suites = compile_suites(samples, groups) + load_suites(capability)
    return evaluate(model, tokenizer, arms, suites, compile_samples=samples, targets=recipe_targets(groups),
                    cache=cache, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress, log=log,
                    **kwargs)


@dataclass
class EvalOptions:
    """Everything ``masteer eval`` can be told."""
    model: str = EMBEDDED_NAME
    adapters: tuple[str, ...] = ()
    checkpoints: tuple[str, ...] = ()
    suites: tuple[str, ...] = ()             # empty: the default subset
    out: str = "out/eval"
    samples_path: str | None = None          # the compile's sample set, when not inside the adapter folder
    targets: tuple[str, ...] | None = None   # None: from the adapter's recipe
    split: str = "auto"                      # auto | packaged
    n: int | None = None                     # cap on items per suite
    max_new_tokens: int = 24
    batch_size: int = 16
    seed: int = 0
    n_boot: int = 1000
    resume: bool = True
    plots: bool = True
    card: bool = False                       # write the headline metrics into each adapter's model card
    progress: bool = True
    arm_names: dict[str, str] = field(default_factory=dict)   # path -> arm name (default: folder name)

    def __post_init__(self):
        """Checked where made, before a model loads."""
        if self.split not in SPLITS:
            raise MasteerError(f"split must be one of {SPLITS}, got {self.split!r}")
        for name in ("max_new_tokens", "batch_size", "n_boot") + (("n",) if self.n is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MasteerError(f"{name} must be a positive whole number, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise MasteerError(f"seed must be a whole number, got {self.seed!r}")


def _arm_name(path: str, taken: set[str], names: Mapping[str, str]) -> str:
    name = names.get(path) or Path(path).name or "arm"
    candidate, k = name, 2
    while candidate in taken:
        candidate, k = f"{name}-{k}", k + 1
    taken.add(candidate)
    return candidate


def _recipe_groups(adapter: SteeringAdapter) -> dict[str, str] | None:
    name = (adapter.provenance or {}).get("recipe")
    if not name:
        return None
    from ..samples.recipes import load_recipe
    try:
        return dict(load_recipe(name).evaluation.groups)
    except MasteerError:
        return None


def _choose_suites(names: list[str], samples: SampleSet | None, split: str, n: int | None) -> list:
    if split not in SPLITS:
        raise MasteerError(f"split must be one of {SPLITS}, got {split!r}")
    by_suite = {}
    if split == "auto" and samples is not None:
        groups = {s.group for s in samples.select(split="test") if s.group}
        by_suite = {group_suite(g): g for g in groups}
    out = []
    shifted = split == "auto" and samples is not None and any(s.family for s in samples.samples)
    for name in names:
        if name in by_suite and SUITES[name].kind == REFUSAL:
            out += compile_suites(samples, {by_suite[name]: "same"})
        elif name in SHIFT_SUITES and shifted:
            out.append(compile_shift_suite(samples, name))
        else:
            out += load_suites([name], n)
    return out


def run_eval(options: EvalOptions, log: Callable[[str], None] = print) -> tuple[EvalReport, dict[str, Path]]:
    """Load, evaluate, write ``eval_report.{json,md}`` and plots into ``options.out``; resumable.

    Everything that can be wrong with the input (a suite name, an adapter folder, an overlap of the
    suites with the compile's samples) is found before any model is loaded.
    """
    check_report_folder(options.out, REPORT_MARKERS, inputs=[*options.adapters, *options.checkpoints,
                                                             *([options.model] if Path(options.model).exists() else [])])
    names = resolve_names(options.suites)
    taken: set[str] = {"base"}
    adapter_arms, sample_sets, groups = [], [], None
    for path in options.adapters:
        adapter = SteeringAdapter.load(path)
        adapter_arms.append(Arm(_arm_name(path, taken, options.arm_names), adapter=adapter, source=str(path)))
        if (Path(path) / SAMPLES_NAME).is_file():
            sample_sets.append(SampleSet.load(Path(path) / SAMPLES_NAME))
        groups = groups or _recipe_groups(adapter)
    if options.samples_path:
        sample_sets.insert(0, SampleSet.load(options.samples_path))
    distinct = {s.content_hash: s for s in sample_sets}
    if len(distinct) > 1:
        log(f"note: {len(distinct)} different compile sample sets: every suite uses its packaged split")
    suites = _choose_suites(names, sample_sets[0] if len(distinct) == 1 else None, options.split, options.n)
    for samples in distinct.values():
        check_overlap(suites, samples)
    targets = options.targets
    if targets is None:
        targets = tuple(t for t in recipe_targets(groups or {}) if t in {s.name for s in suites})

    loaded = load_model(options.model)
    limit = context_length(loaded.model)
    if limit is not None and options.max_new_tokens >= limit:
        raise MasteerError(f"--max-new-tokens {options.max_new_tokens} does not fit model {options.model!r}, which "
                           f"reads at most {limit} tokens, prompt included")
    arms = [Arm("base", source=options.model)] + adapter_arms
    for path in options.checkpoints:
        other = load_model(path)
        if len(other.tokenizer) != len(loaded.tokenizer):
            raise MasteerError(f"checkpoint {path} has a tokenizer of {len(other.tokenizer)} tokens, the base model "
                               f"{options.model} one of {len(loaded.tokenizer)}: arms must share a tokenizer")
        arms.append(Arm(_arm_name(path, taken, options.arm_names), model=other.model, source=str(path)))
    out = Path(options.out)
    cache_path = out / CACHE_NAME
    if not options.resume and cache_path.exists():
        cache_path.unlink()
    cache = ResultCache(cache_path)
    if len(cache):
        log(f"resuming: {len(cache)} finished results in {cache_path}")
    report = evaluate(loaded.model, loaded.tokenizer, arms, suites,
                      compile_samples=sample_sets[0] if sample_sets else None, targets=targets, cache=cache,
                      max_new_tokens=options.max_new_tokens, batch_size=options.batch_size, seed=options.seed,
                      n_boot=options.n_boot, progress=options.progress, log=log)
    report.settings["command"] = {"model": options.model, "adapters": list(options.adapters),
                                  "checkpoints": list(options.checkpoints), "suites": names, "split": options.split,
                                  "n": options.n, "samples": options.samples_path}
    paths = write_report(report, out, plots=options.plots)
    if options.card:
        for arm in arms:
            if arm.adapter is not None:
                paths[f"card:{arm.name}"] = update_card(arm.source, report, arm.name)
    return report, paths


def card_metrics(report: EvalReport, arms: list[str] | None = None, quick_table: str | None = None) -> dict:
    """``adapter.metrics`` for a model card: the headline table (chosen arms) and how it was measured.

    ``quick_table`` (a compile's phrase-judged refusal table, markdown) is appended to the note.
    """
    table = report.headline()["table"]
    if arms is not None:
        keep = {"suite", "metric", "should", "n", *arms}
        table = [{k: v for k, v in row.items() if k in keep} for row in table]
    g = report.settings.get("generation", {})
    judge = report.judge
    note = (f"95% bootstrap intervals over items. Generation: {g.get('decoding', 'greedy')}, "
            f"{g.get('max_new_tokens')} new tokens. "
            + (f"Refusal judge ({judge.judge}): accuracy {judge.accuracy:.3f}, precision {judge.precision:.3f}, "
               f"recall {judge.recall:.3f} on pyrit's {judge.n} labelled responses." if judge else ""))
    if quick_table:
        note += ("\n\nThe compile's quick table (phrase-matching judge, no intervals; every number above and "
                 "more is in compile_report.json):\n\n" + quick_table)
    return {"table": table, "note": note}


def update_card(adapter_dir: str | Path, report: EvalReport, arm: str) -> Path:
    """Rewrite an adapter folder (atomically, other files kept) with the report's headline metrics."""
    adapter_dir = Path(adapter_dir)
    adapter = SteeringAdapter.load(adapter_dir)
    adapter.metrics = card_metrics(report, [a for a in (report.base_arm, arm) if a])
    extra = {}
    for path in sorted(adapter_dir.iterdir()):
        if path.is_file() and path.name not in (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME):
            try:
                extra[path.name] = path.read_text()
            except UnicodeDecodeError:
                raise MasteerError(f"{path} is not a text file; cannot carry it over when rewriting the card") from None
    return adapter.save(adapter_dir, extra_files=extra)


def render_report(path: str | Path, out: str | Path, plots: bool = True) -> tuple[EvalReport, dict[str, Path]]:
    """Re-render a saved report (``eval_report.json`` or a compile's ``compile_report.json``): no model needed."""
    check_report_folder(out, REPORT_MARKERS, inputs=[path])
    report = EvalReport.load_json(path)
    return report, write_report(report, out, plots=plots)
