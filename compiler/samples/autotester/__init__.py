"""The AutoTester: from an issue in plain words (or a recipe) to a reviewed, contrastive, split sample set.

One module per agent, each handing a typed result to the next (MASteer's shape):

- :mod:`.analyst`   issue text -> behaviours, scenarios, desired/undesired style, claim, trigger prompts
- :mod:`.retriever` related seed items from the recipes and packaged datasets (TF-IDF cosine)
- :mod:`.writer`    prompts with a positive and a negative reply (A/B), plus neutral prompts
- :mod:`.reviewer`  rejects malformed, duplicate, off-topic and non-contrastive items; balances scenarios
- :mod:`.pipeline`  runs them, splits by base prompt, records provenance and rejections, prints a summary

:mod:`.corpus` holds the seed sources, :mod:`.issue` turns a free-text issue into a Recipe for the
compile, and :mod:`.measure` measures a free-text repair on held-out prompts.
"""

from .pipeline import AutoTesterOptions, AutoTesterResult, format_summary, run_autotester

__all__ = ["AutoTesterOptions", "AutoTesterResult", "format_summary", "run_autotester"]
