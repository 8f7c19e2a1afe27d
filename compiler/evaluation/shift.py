"""The shift suite: every held-out source prompt in every rewrite family, harmful and benign alike.

Why a suite of its own: the compile's test split shows each source prompt as written and in one family,
so a family has about ten test prompts per label there, too few to tell 80% from 95%. The shift suite
takes the same held-out source items (never fitted, selected or calibrated on: the test split's direct
samples) and writes each into *every* family with the same rules as the builder (``rewrites``), so each
family row has as many prompts as the test split has sources. Leave-one-family-out fits read it too.
"""

from __future__ import annotations

import random
from typing import Sequence

from ..samples.rewrites import ALL_FAMILIES, DIRECT, rewrite
from ..samples.sample_set import Sample, SampleSet, prompt_key

SHIFT_SEED = 20261202   # fixed: the suite is the same for every compile of a sample set


def shift_samples(samples: SampleSet, split: str = "test", families: Sequence[str] = ALL_FAMILIES,
                  seed: int = SHIFT_SEED) -> list[Sample]:
    """Each ``split`` source item (its direct sample) in each of ``families``: the item's own sample where the
    split already holds that form, else a rule rewrite; targets first, then neutral prompts, families in order."""
    rng = random.Random(seed)
    own = {(s.source_id, s.family): s for s in samples.select(split=split)}
    sources = [s for s in samples.select(split=split) if s.family in (DIRECT, "")]
    out, seen = [], set()
    for label in ("target", "neutral"):
        for family in families:
            for s in sources:
                if s.label != label:
                    continue
                sample = own.get((s.source_id, family))
                if sample is None:
                    text = rewrite(s.prompt, family, rng)
                    sample = Sample(id=f"{s.source_id}:{family}:shift", prompt=text, label=s.label, split=split,
                                    positive=s.positive, negative=s.negative, source=s.source, group=s.group,
                                    family=family, category=s.category,
                                    provenance={"source_id": s.source_id, "family": family, "backend": "rules",
                                                "original": s.prompt, "suite": "shift"})
                key = prompt_key(sample.prompt)
                if key not in seen:
                    seen.add(key)
                    out.append(sample)
    return out
