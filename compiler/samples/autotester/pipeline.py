"""The AutoTester: issue text (or recipe) -> analyst -> retriever -> writer -> reviewer -> split SampleSet.

Why this shape (MASteer's): each agent does one job and hands a typed result to the next, so a
weak link can be seen and replaced: the analysis, what was retrieved, what was written (with
provenance) and what the reviewer rejected (with reasons) all end up in the saved sample set,
whose header ``meta["autotester"]`` is the run's record.

Determinism: every random choice comes from one seed, retrieval ties break by item id, and the
LLM backends decode greedily with a disk cache, so the same issue, seed and backend give the same
file. Splits keep all framings of one base prompt together, so the test split asks questions no
fitting step saw in any wording.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from masteer.runtime.errors import MasteerError

from ..recipes import Recipe
from ..sample_set import SPLITS, TARGET, Sample, SampleSet
from .analyst import IssueAnalysis, analyse
from .corpus import load_source
from .retriever import Retrieved, retrieve
from .reviewer import REASONS, ReviewResult, Reviewer
from .writer import Candidate, Writer, WriterSettings

SPLIT_FRACTIONS = {"train": 0.6, "val": 0.15, "test": 0.25}


@dataclass
class AutoTesterOptions:
    seed: int = 0
    per_scenario: int = 24        # targets kept per scenario after review
    neutral: int = 120            # neutral prompts kept
    retrieved: int = 40           # retrieved seed items used as base prompts
    use_llm: bool = True          # let the backend analyse, paraphrase, answer and rewrite
    llm_paraphrases: int = 24
    llm_answers: int = 48
    llm_rewrites: int = 24
    llm_families: int = 48        # rewrite-family forms also asked of the LLM (the rules write the rest)
    max_tokens: int = 48
    progress: bool = True


@dataclass
class AutoTesterResult:
    samples: SampleSet
    analysis: IssueAnalysis
    review: ReviewResult
    retrieved: list[Retrieved] = field(default_factory=list)

    def summary(self) -> str:
        return format_summary(self.samples)


def _retrieve(analysis: IssueAnalysis, recipe: Recipe | None, options: AutoTesterOptions,
              rng: random.Random) -> tuple[list[Retrieved], list[str]]:
    """Target seed items and the neutral sources. A recipe's own sources are on topic by construction,
    so they are sampled (seeded) for variety; a free-text issue is matched by similarity."""
    target_sources = [s for s in analysis.sources if not s.endswith(":neutral")]
    neutral_sources = [s[: -len(":neutral")] for s in analysis.sources if s.endswith(":neutral")]
    if recipe is not None:  # (the recipe's own seeds reach the writer through the analysis)
        pool = [item for source in target_sources for item in load_source(source)]
        rng.shuffle(pool)
        return [Retrieved(item, 1.0) for item in pool[: options.retrieved]], neutral_sources
    pool = [item for source in target_sources for item in load_source(source)]
    return retrieve(analysis.query, pool, k=options.retrieved), neutral_sources


def _split(candidates: list[Candidate], rng: random.Random) -> dict[int, str]:
    """Split by base prompt (all framings of one question in one split), per label and group, seeded:
    every evaluation group gets its share of val and test prompts."""
    out: dict[int, str] = {}
    for label, group in dict.fromkeys((c.label, c.group) for c in candidates):
        bases = list(dict.fromkeys(c.base for c in candidates if (c.label, c.group) == (label, group)))
        rng.shuffle(bases)
        n = len(bases)
        n_val = max(1, round(n * SPLIT_FRACTIONS["val"])) if n >= 3 else 0
        n_test = max(1, round(n * SPLIT_FRACTIONS["test"])) if n >= 3 else 0
        assign = {b: "test" for b in bases[:n_test]}
        assign.update({b: "val" for b in bases[n_test:n_test + n_val]})
        assign.update({b: "train" for b in bases[n_test + n_val:]})
        for i, c in enumerate(candidates):
            if (c.label, c.group) == (label, group):
                out[i] = assign[c.base]
    return out


def _sample_id(name: str, prompt: str) -> str:
    return f"{name}-{hashlib.sha1(prompt.encode('utf-8')).hexdigest()[:10]}"


def run_autotester(issue_or_recipe: str | Recipe, backend=None, options: AutoTesterOptions | None = None
                   ) -> AutoTesterResult:
    """Build a reviewed, contrastive, split sample set for an issue text or a recipe."""
    options = options or AutoTesterOptions()
    rng = random.Random(options.seed)
    steps = tqdm(total=5, desc="autotester", disable=not options.progress)
    steps.set_postfix_str("analyst")
    analysis = analyse(issue_or_recipe, backend=backend, use_llm=options.use_llm)
    recipe = issue_or_recipe if isinstance(issue_or_recipe, Recipe) else None
    if recipe is None and analysis.method == "recipe":
        from ..recipes import load_recipe
        recipe = load_recipe(issue_or_recipe)
    steps.update()
    steps.set_postfix_str("retriever")
    retrieved, neutral_sources = _retrieve(analysis, recipe, options, rng)
    steps.update()
    steps.set_postfix_str("writer")
    writer = Writer(analysis, backend, seed=options.seed, progress=options.progress,
                    settings=WriterSettings(paraphrases=options.llm_paraphrases, answers=options.llm_answers,
                                            rewrites=options.llm_rewrites, llm_families=options.llm_families,
                                            max_tokens=options.max_tokens,
                                            neutral=options.neutral, retrieved=options.retrieved,
                                            use_llm=options.use_llm))
    candidates = writer.write(retrieved, neutral_sources)
    steps.update()
    steps.set_postfix_str("reviewer")
    review = Reviewer(analysis, per_scenario=options.per_scenario, neutral=options.neutral,
                      seed=options.seed).review(candidates)
    steps.update()
    steps.set_postfix_str("split")
    accepted = review.accepted
    if not any(c.label == TARGET for c in accepted):
        raise MasteerError(f"the reviewer accepted no target samples for {analysis.issue!r} "
                           f"(rejections: {review.counts()}); rephrase the issue or give a backend that can write")
    splits = _split(accepted, rng)
    samples = [Sample(id=_sample_id(analysis.name, c.prompt), prompt=c.prompt, label=c.label, split=splits[i],
                      positive=c.positive, negative=c.negative,
                      source=str(c.provenance.get("seed_item") or c.provenance.get("method", "")),
                      group=c.group, scenario=c.scenario, family=c.family,
                      provenance={**c.provenance, "base": c.base, "source_id": _sample_id(analysis.name, c.base),
                                  "family": c.family, "backend": c.provenance.get("backend", "template")})
               for i, c in enumerate(accepted)]
    order = {s: k for k, s in enumerate(SPLITS)}
    samples.sort(key=lambda s: (order[s.split], s.label != TARGET))
    steps.update()
    steps.close()
    meta = {"builder": "autotester", "seed": options.seed,
            "autotester": {"analysis": analysis.to_dict(),
                           "backend": backend.describe() if backend is not None else {"backend": "none"},
                           "backend_stats": dict(backend.stats) if backend is not None else {},
                           "retrieved": [{"id": r.item.id, "score": round(r.score, 3)} for r in retrieved],
                           "candidates": len(candidates), "rejections": review.counts(),
                           "rejected": [r.to_dict() for r in review.rejected],
                           "options": {k: v for k, v in vars(options).items() if k != "progress"}}}
    sample_set = SampleSet(issue=analysis.issue, recipe=analysis.name, samples=samples, meta=meta)
    return AutoTesterResult(samples=sample_set, analysis=analysis, review=review, retrieved=retrieved)


def format_summary(samples: SampleSet) -> str:
    """Counts per scenario and split, neutral counts, rejections by reason, and what the backend cost."""
    record = samples.meta.get("autotester", {})
    lines = [f"issue: {samples.issue}", f"analysis: {record.get('analysis', {}).get('method', '?')} "
             f"(axis {record.get('analysis', {}).get('axis', '?')}); backend: {record.get('backend', {})}"]
    table: dict[tuple[str, str], Counter] = {}
    for s in samples.samples:
        key = (s.label, s.scenario if s.label == TARGET else s.group)
        table.setdefault(key, Counter())[s.split] += 1
    lines.append(f"{'label':8s} {'scenario/group':16s} " + " ".join(f"{sp:>5s}" for sp in SPLITS) + "  total")
    for (label, name), counts in sorted(table.items()):
        lines.append(f"{label:8s} {name:16s} " + " ".join(f"{counts[sp]:5d}" for sp in SPLITS)
                     + f"  {sum(counts.values()):5d}")
    methods = Counter(str((s.provenance or {}).get("method", "?")) for s in samples.samples if s.label == TARGET)
    lines.append("targets by writer method: " + ", ".join(f"{k} {v}" for k, v in sorted(methods.items())))
    rejections = record.get("rejections", {})
    lines.append(f"candidates written: {record.get('candidates', '?')}; rejected: "
                 + (", ".join(f"{r} {rejections.get(r, 0)}" for r in REASONS) if rejections else "none"))
    by_method: dict[str, Counter] = {}
    for r in record.get("rejected", []):
        by_method.setdefault(str((r.get("provenance") or {}).get("method", "?")), Counter())[r["reason"]] += 1
    for method, counts in sorted(by_method.items()):
        lines.append(f"  rejected {method}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    stats = record.get("backend_stats")
    if stats:
        lines.append(f"backend: {stats.get('requests', 0)} requests, {stats.get('cache_hits', 0)} from cache, "
                     f"{stats.get('calls', 0)} model calls")
    return "\n".join(lines)


def build_for_recipe(recipe: Recipe, seed: int | None = None, backend=None, progress: bool = True) -> SampleSet:
    """The ``autotester`` builder: a recipe's samples, or a free-text issue's (``recipe.raw["free_text"]``).

    Built-in recipes write from their seeds and datasets (no LLM) unless a backend is passed; a
    free-text issue uses the writer its recipe names (the local embedded model by default).
    """
    seed = recipe.defaults.seed if seed is None else seed
    free = bool(recipe.raw.get("free_text"))
    if backend is None and free:
        from ..backends import make_backend
        writer = recipe.raw.get("writer", {})
        backend = make_backend(writer.get("backend", "local"), writer.get("model"))
    options = AutoTesterOptions(seed=seed, per_scenario=recipe.autotester.per_scenario,
                                neutral=recipe.autotester.neutral, progress=progress,
                                use_llm=recipe.autotester.llm and backend is not None)
    return run_autotester(recipe.issue if free else recipe, backend, options).samples
