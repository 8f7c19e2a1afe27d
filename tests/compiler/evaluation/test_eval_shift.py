"""Shift suites: every source prompt in every rewrite family, rows per family and per harm category, and an
overlap check that follows a rewrite back to the prompt it was written from."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from tiny_models import byte_tokenizer, random_adapter, tiny_chat_model

from masteer.compiler.compile import held_out_breakdowns
from masteer.compiler.samples.builders import build_refusal
from masteer.compiler.evaluation import EvalReport, SplitOverlapError, check_overlap, evaluate, evaluate_refusal
from masteer.compiler.evaluation.suites import SHIFT_SUITES, compile_shift_suite, load_suites
from masteer.compiler.common.judge import RefusalJudge
from masteer.compiler.samples.recipes import load_recipe
from masteer.compiler.samples.rewrites import ALL_FAMILIES
from masteer.compiler.samples.sample_set import NEUTRAL, TARGET, Sample, SampleSet

torch.set_num_threads(1)


def test_packaged_shift_suites_write_each_source_in_every_family():
    harmful, benign = load_suites(["refusal-shift", "over-refusal-shift"], n=3)
    for suite in (harmful, benign):   # a rewrite that repeats another prompt of the suite is left out
        assert 3 * len(ALL_FAMILIES) - 2 <= len(suite.items) <= 3 * len(ALL_FAMILIES)
        assert set(Counter(x.family for x in suite.items)) == set(ALL_FAMILIES)
        assert all(x.origin for x in suite.items)
        assert len({x.origin for x in suite.items}) == 3
    assert all(x.category for x in harmful.items) and not any(x.category for x in benign.items)
    again = load_suites(["refusal-shift"], n=3)[0]
    assert again.items == harmful.items   # fixed seed: the same suite every run


def test_the_overlap_check_follows_a_rewrite_to_its_source():
    suite = load_suites(["refusal-shift"], n=2)[0]
    rewritten = next(x for x in suite.items if x.family == "past")
    samples = SampleSet(issue="i", recipe="r", samples=[
        Sample(id="fit-me", prompt=rewritten.origin, label=TARGET, split="train", positive="No.")])
    with pytest.raises(SplitOverlapError, match="fit-me"):
        check_overlap([suite], samples)


def test_compile_shift_suite_takes_the_test_split_in_every_family():
    samples = build_refusal(load_recipe("refusal"))
    harmful = compile_shift_suite(samples, "refusal-shift")
    benign = compile_shift_suite(samples, "over-refusal-shift")
    test_sources = {s.source_id for s in samples.select(split="test", label=TARGET)}
    assert {x.source for x in harmful.items} == test_sources
    assert set(Counter(x.family for x in harmful.items)) == set(ALL_FAMILIES)
    assert len(benign.items) >= 10 * len(samples.select(split="test", label=NEUTRAL, )) // 2
    assert SHIFT_SUITES == {"refusal-shift": TARGET, "over-refusal-shift": NEUTRAL}
    check_overlap([harmful, benign], samples)   # test rewrites never touch a fitted prompt


def test_the_report_has_rows_per_family_and_category():
    model, tok = tiny_chat_model("llama"), byte_tokenizer()
    adapter = random_adapter(model, additive_layer=1)
    report = evaluate(model, tok, {"base": None, "static": adapter}, load_suites(["refusal-shift"], n=2),
                      judge=RefusalJudge(relevance=False), max_new_tokens=2, batch_size=8, progress=False, n_boot=50)
    result = report.suite("refusal-shift")
    families = result.breakdowns["family"]
    n = len(load_suites(["refusal-shift"], n=2)[0].items)
    assert list(families) == list(ALL_FAMILIES) and sum(row["n"] for row in families.values()) == n
    for row in families.values():
        assert 0.0 <= row["base"] <= 1.0 and 0.0 <= row["static"] <= 1.0
    overall = result.arms["static"].estimate.value
    assert sum(r["static"] * r["n"] for r in families.values()) / n == pytest.approx(overall, abs=1e-3)
    assert "refusal-shift by family" in report.markdown() and "refusal-shift by category" in report.markdown()
    again = EvalReport.from_dict(report.to_dict())
    assert again.suite("refusal-shift").breakdowns == result.breakdowns


def test_compile_breakdowns_count_the_judged_answers_and_the_open_anchor():
    model, tok = tiny_chat_model("llama"), byte_tokenizer()
    samples = [Sample(id=f"t{i}", prompt=f"harmful {i}", label=TARGET, split="test", family=f, category="cyber")
               for i, f in enumerate(["direct", "past", "past"])]
    samples += [Sample(id="n", prompt="benign", label=NEUTRAL, split="test", family="past")]
    evaluation = evaluate_refusal(model, tok, {"base": None}, {"t": samples[:3], "n": samples[3:]},
                                  {"t": "up", "n": "same"}, max_new_tokens=2, progress=False)
    evaluation.verdicts["base"] = {"harmful 0": True, "harmful 1": False, "harmful 2": True, "benign": False}
    opened = {"harmful 0": True, "harmful 1": True, "harmful 2": False, "benign": True}
    breakdowns, open_refusal = held_out_breakdowns(evaluation, samples, opened)
    rows = {(r["label"], r["family"]): r for r in breakdowns["family"]}
    assert rows[(TARGET, "past")]["base"] == 0.5 and rows[(TARGET, "past")]["anchor open"] == 0.5
    assert rows[(NEUTRAL, "past")]["anchor open"] == 1.0
    assert open_refusal["base"] == {"n": 2, "refusal": 0.5}
    assert evaluation.arms == ["base"] and "anchor open" not in evaluation.verdicts   # left as it was
