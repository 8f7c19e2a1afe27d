"""Samples used to compile are never evaluated on: an overlap is an error that names the sample."""

from __future__ import annotations

import pytest

from masteer.compiler.common import datasets
from masteer.compiler.evaluation.overlap import SplitOverlapError, check_overlap
from masteer.compiler.evaluation.suites import PERPLEXITY, REFUSAL, EvalItem, Suite, compile_suites, load_suites
from masteer.compiler.samples.sample_set import NEUTRAL, TARGET, Sample, SampleSet


def _set(*samples: Sample) -> SampleSet:
    return SampleSet(issue="test", recipe="refusal", samples=list(samples))


def _suite(name: str, *prompts: str, kind: str = REFUSAL, references=()) -> Suite:
    return Suite(name=name, kind=kind, metric="refusal rate", better="higher", split="hand-made",
                 items=tuple(EvalItem(id=f"{name}-{k}", prompt=p, references=references) for k, p in enumerate(prompts)))


def test_an_overlap_is_caught_and_named():
    samples = _set(Sample(id="adv-7", prompt="How do I pick a lock?", label=TARGET, split="train"),
                   Sample(id="ok-1", prompt="Tell me a joke.", label=NEUTRAL, split="val"))
    suite = _suite("refusal", "How to bake bread?", "  how do I PICK a lock?\n")   # case and spacing differ
    with pytest.raises(SplitOverlapError) as err:
        check_overlap([suite], samples)
    message = str(err.value)
    assert "suite 'refusal' item 'refusal-1' is compile sample 'adv-7' (train split, prompt)" in message
    assert "1 evaluation item(s)" in message
    assert err.value.overlaps == [{"suite": "refusal", "item": "refusal-1", "sample": "adv-7", "split": "train",
                                   "field": "prompt", "text": "  how do I PICK a lock?\n"}]


def test_completions_and_reference_texts_are_checked_too():
    samples = _set(Sample(id="pair-3", prompt="Q?", label=TARGET, split="val", positive="I can't help with that.",
                          negative="Sure, here is how."))
    suite = _suite("perplexity", "Explain tides.", kind=PERPLEXITY, references=("Sure, here is how.",))
    with pytest.raises(SplitOverlapError, match=r"'pair-3' \(val split, negative\)"):
        check_overlap([suite], samples)


def test_the_held_out_test_split_may_be_evaluated_on():
    samples = _set(Sample(id="t1", prompt="How do I pick a lock?", label=TARGET, split="test", group="harmful"))
    result = check_overlap([_suite("refusal", "How do I pick a lock?")], samples)
    assert result["checked"] and result["overlaps"] == 0 and result["splits"] == ["train", "val"]


def test_without_a_sample_set_the_report_says_it_could_not_check():
    assert check_overlap([_suite("x", "a")], None)["checked"] is False


def test_many_overlaps_are_counted_and_a_few_shown():
    samples = _set(*[Sample(id=f"s{k}", prompt=f"prompt {k}", label=TARGET, split="train") for k in range(8)])
    with pytest.raises(SplitOverlapError, match=r"(?s)8 evaluation item\(s\).*and 3 more"):
        check_overlap([_suite("refusal", *[f"prompt {k}" for k in range(8)])], samples)


def test_the_packaged_kl_and_perplexity_splits_are_disjoint_from_a_refusal_compile():
    from masteer.compiler.samples.builders import build_samples
    from masteer.compiler.samples.recipes import load_recipe
    samples = build_samples(load_recipe("refusal"))
    suites = load_suites(["kl", "perplexity", "mmlu"], 20)
    assert check_overlap(suites, samples)["checked"]
    # while the packaged edgy split shares prompts with the compile's training data: that is why
    # `masteer eval` uses the compile's own test split for it when it knows the sample set
    with pytest.raises(SplitOverlapError, match="over-refusal"):
        check_overlap(load_suites(["over-refusal"]), samples)
    own = compile_suites(samples, {"harmful": "up", "benign-edgy": "same"})
    assert [s.name for s in own] == ["refusal", "over-refusal"]
    assert check_overlap(own, samples)["checked"]
    # the compile's test prompts as written are the packaged edgy prompts; its rewrites name them as their origin
    assert {x.origin or x.prompt for x in own[1].items} <= {e.text for e in datasets.overrefusal_prompts()}
    assert any(x.origin for x in own[1].items) and any(not x.origin for x in own[1].items)
    assert len(own[0].items) == len(samples.select(split="test", group="harmful"))
