"""Fixtures shared by the compiler tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from masteer.compiler.samples.builders import build_samples
from masteer.compiler.samples.recipes import load_recipe
from masteer.compiler.samples.sample_set import SampleSet

SMALL_PER_GROUP = 6  # items per (split, group) in the small refusal sample set


@pytest.fixture(scope="session")
def small_samples(tmp_path_factory) -> Path:
    """The refusal recipe's sample set cut to ``SMALL_PER_GROUP`` items per (split, group), saved as JSONL:
    every stage of a compile runs on it in seconds on a tiny model."""
    full = build_samples(load_recipe("refusal"))
    kept, counts = [], {}
    for s in full.samples:
        key = (s.split, s.group)
        if counts.get(key, 0) < SMALL_PER_GROUP:
            counts[key] = counts.get(key, 0) + 1
            kept.append(s)
    path = tmp_path_factory.mktemp("samples") / "small.jsonl"
    SampleSet(issue=full.issue, recipe=full.recipe, samples=kept, meta=full.meta).save(path)
    return path
