"""A free-text issue as a Recipe, so ``masteer-compile "ISSUE TEXT"`` runs the same compile as a recipe name.

Why a synthesised recipe: the compile reads its defaults (candidate layers, strength, seed) and
its evaluation spec from a Recipe. A free-text issue gets them from the recipe that covers its
behaviour when the analyst found one (a request for harmful help compiles like ``refusal``), and
otherwise from the free-text defaults below. Its builder is ``autotester``, and ``raw`` records that
the samples come from the issue text with the local writer (the embedded model unless told
otherwise), so the sample set is built exactly as ``masteer samples "ISSUE TEXT"`` builds it.
"""

from __future__ import annotations

from ...common.models import EMBEDDED_NAME
from ..recipes import AutoTesterSettings, Recipe, RecipeDefaults, RecipeEvaluation, load_recipe
from .analyst import template_analysis

# A free-text issue on a non-refusal axis: one candidate layer, because the compile chooses among
# several by a refusal judge, which says nothing about, e.g., a claim being denied. Layer 10 with
# strength 4 is what the val split chose for the human-claim issue on SmolLM2-135M (docs/autotester.md);
# give --layers/--strength for other models.
FREE_TEXT_LAYERS = (10,)
FREE_TEXT_STRENGTH = 4.0


def recipe_from_issue(text: str, writer_backend: str = "local", writer_model: str = EMBEDDED_NAME) -> Recipe:
    analysis = template_analysis(text)
    covering = load_recipe(analysis.recipe) if analysis.recipe else None
    refusal_like = analysis.axis in ("refusal", "compliance")
    groups = {"target": "down" if analysis.axis == "compliance" else "up", "neutral": "same"}
    if analysis.near_misses:
        groups["near-miss"] = "same"
    metric = "refusal" if refusal_like else "preference"
    defaults = covering.defaults if covering is not None else RecipeDefaults(FREE_TEXT_LAYERS, FREE_TEXT_STRENGTH, 0)
    how = ("judged refusal rate of held-out targets" if refusal_like else
           "held-out log-odds of the desired over the undesired reply (masteer.compiler.measure_autotester)")
    return Recipe(
        name=analysis.name, issue=analysis.issue, builder="autotester", desired=analysis.desired,
        undesired=analysis.undesired, refusals=tuple(analysis.refusals), defaults=defaults,
        evaluation=RecipeEvaluation(max_new_tokens=24, groups=groups, metric=metric, description=how),
        path=f"issue text {analysis.issue[:60]!r}",
        raw={"free_text": True, "writer": {"backend": writer_backend, "model": writer_model},
             "analysis": analysis.to_dict()},
        description="; ".join(analysis.notes), axis=analysis.axis, scenarios=tuple(analysis.scenarios),
        keywords=tuple(analysis.keywords), datasets=tuple(analysis.sources), neutral=tuple(analysis.near_misses),
        autotester=AutoTesterSettings())
