"""The evaluation's gated arms skip the teacher-forced rows their gates leave untouched and take the base arm's
values there (``strategies.untouched_rows``): every other item keeps the value a full pass gives, on float64
hosts to 1e-9, and what is skipped is counted in the report's settings."""

from __future__ import annotations

import math

import pytest
import torch

from tiny_models import byte_tokenizer, closed_adapter, random_adapter, tiny_chat_model

from masteer.compiler.capture.prefill_sharing import sharing_prefill
from masteer.compiler.evaluation import evaluate
from masteer.compiler.strategies import scoring, untouched_rows
from masteer.compiler.strategies.untouched_rows import take_base

SUITES = ["mmlu", "perplexity", "kl"]
N = 8


def _model():
    return tiny_chat_model("llama").double().eval()


def _evaluate(model, arms, shared: bool, suites=SUITES):
    """The report; ``shared``: inside the compile's prefill sharing (the only place rows can be skipped)."""
    def run():
        return evaluate(model, byte_tokenizer(), arms, suites, n=N, batch_size=3, progress=False, n_boot=50)
    if not shared:
        return run()
    with sharing_prefill(model, [1]):
        return run()


def _values(report, arm):
    """Every suite's per-item values of ``arm``, in order."""
    return {s.name: list(s.arms[arm].values.values) for s in report.suites}


def _same(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def _skip_the_quieter_half(monkeypatch):
    """A random gate is open somewhere in every row: call the rows of each batch whose largest steering is at most
    the batch's median "untouched", so that batches mix rows skipped and rows run, and count the shared chat
    header as untouched."""
    def by_median(sizes, ran, threshold):
        largest = torch.stack(list(sizes.values())).amax(0).masked_fill(~ran.bool(), 0).amax(-1)
        return untouched_rows.touched_rows(sizes, ran, float(largest.median()))
    monkeypatch.setattr(scoring, "touched_rows", by_median)
    monkeypatch.setattr(untouched_rows.RowSkipping, "prefix_untouched", lambda self, tokens, threshold: True)


def test_skipped_items_take_the_base_value_and_the_others_keep_their_own(monkeypatch):
    model = _model()
    gated = random_adapter(model, counts={1: 2}, strength=8.0)
    arms = {"base": None, "gated": gated}
    suites = ["perplexity", "kl"]   # an item's value is a number the steering moves (MMLU's is right or wrong)
    full = _evaluate(model, arms, shared=False, suites=suites)   # no recorded batches: nothing can be skipped
    assert "gated" not in full.settings["untouched_rows"]
    _skip_the_quieter_half(monkeypatch)
    skipped = _evaluate(model, arms, shared=True, suites=suites)
    base, own, got = _values(full, "base"), _values(full, "gated"), _values(skipped, "gated")
    taken = kept = 0
    for suite in suites:
        for b, o, g in zip(base[suite], own[suite], got[suite]):
            assert not _same(b, o)   # the steering moves every item: which value an item got is visible
            assert _same(g, b) or _same(g, o), (suite, b, o, g)
            taken += _same(g, b)
            kept += _same(g, o)
    counts = skipped.settings["untouched_rows"]["gated"]
    assert taken == counts["skipped"] and 0 < taken < 2 * N and kept == 2 * N - taken
    assert counts["rows"] == 2 * N   # one row per item in these suites


def test_an_arm_whose_gates_never_open_skips_every_row_and_equals_the_base():
    model = _model()
    arms = {"base": None, "closed": closed_adapter(model, counts={1: 2})}
    report = _evaluate(model, arms, shared=True)
    assert report.settings["untouched_rows"]["closed"] == {"rows": 3 * N, "skipped": 3 * N}
    base, closed = _values(report, "base"), _values(report, "closed")
    assert closed == base and all(v == 0.0 for v in closed["kl"])
    full = _evaluate(model, arms, shared=False)
    assert all(_same(a, b) for s in SUITES for a, b in zip(_values(full, "closed")[s], base[s]))


def test_always_on_steering_and_arms_before_the_base_skip_nothing():
    model = _model()
    static = random_adapter(model, counts={}, additive_layer=1)
    gated = random_adapter(model, counts={1: 2}, strength=8.0)
    report = _evaluate(model, {"gated first": gated, "base": None, "static": static}, shared=True)
    assert report.settings["untouched_rows"] == {}   # no base values yet for the first, a vector for the last


def test_a_non_finite_number_in_a_row_that_ran_computes_the_chunk_again_in_full(monkeypatch):
    """NaN marks a skipped row only while the rows that ran are finite; otherwise nothing is taken from the base."""
    model = _model()
    arms = {"base": None, "gated": random_adapter(model, counts={1: 2}, strength=8.0)}
    _skip_the_quieter_half(monkeypatch)

    def unsafe(self, logits):
        self.unsafe = True
    monkeypatch.setattr(untouched_rows.RowSkipping, "check_finite", unsafe)
    report = _evaluate(model, arms, shared=True)
    monkeypatch.undo()
    full = _evaluate(model, arms, shared=False)
    assert report.settings["untouched_rows"]["gated"]["skipped"] == 0
    for suite in SUITES:
        assert all(_same(a, b) for a, b in zip(_values(report, "gated")[suite], _values(full, "gated")[suite]))


def test_take_base_replaces_nan_entries_only_and_checks_lengths():
    assert take_base([float("nan"), 2.0, 5], [1.0, 3.0, 7]) == [1.0, 2.0, 5]
    with pytest.raises(ValueError, match="2 values but its base arm 3"):
        take_base([1.0, 2.0], [1.0, 2.0, 3.0])


def test_a_subset_of_rows_is_replayed_only_from_a_recorded_forced_pass():
    model = _model()
    ids = torch.ones(2, 4, dtype=torch.long)
    with sharing_prefill(model, [1]) as store:
        with pytest.raises(ValueError, match="only a teacher-forced pass"):
            with store.around("key", 1, forced=False, rows=[0]):
                pass
        with pytest.raises(RuntimeError, match="not recorded"):
            with store.around("key", 1, forced=True, rows=[0]):
                pass
        assert not store.can_replay("key", 1)
    del ids
