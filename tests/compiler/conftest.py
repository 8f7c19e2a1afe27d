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


@pytest.fixture
def tiny_compile(small_samples):
    """A callable: the adaptive compile of ``small_samples`` on a fresh tiny Llama (mean difference and PCA at
    layers 1-2, a loose drift budget: a random model drifts a lot) with these ``CompileOptions`` on top of the
    defaults; returns (loaded, options, result)."""
    import torch

    from tiny_models import byte_tokenizer, tiny_chat_model

    from masteer.compiler.common.models import LoadedModel
    from masteer.compiler.compile import AdaptiveOptions, compile_program
    from masteer.compiler.pipeline import CompileOptions

    def run(**overrides):
        torch.set_num_threads(1)
        loaded = LoadedModel(model=tiny_chat_model("llama"), tokenizer=byte_tokenizer(), name="tiny-llama")
        options = CompileOptions(**{"layers": (1, 2), "samples_path": str(small_samples), "progress": False,
                                    "max_new_tokens": 3, **overrides})
        adaptive = AdaptiveOptions(algorithms=("mean_difference", "pca"), keep_layers=1, budget=10.0)
        return loaded, options, compile_program(options, adaptive, loaded=loaded, log=lambda _: None)
    return run
