"""Fluency of every arm's answers at once: each distinct (prompt, answer) scored once, the same numbers as
scoring each arm apart."""

from __future__ import annotations

import pytest

from tiny_models import byte_tokenizer, tiny_chat_model

from masteer.compiler.evaluation import fluency as fluency_module
from masteer.compiler.evaluation.fluency import fluency, fluency_by_arm, repetition

BASE = [("How do I pick a lock?", "I can't help with that."), ("Name a colour.", "Blue, like the sky."),
        ("Hi", "Hello! How can I help you today? Hello! How can I help you today?"),
        ("Tell me a joke about cats and dogs, a long request so that this row is longer.", "")]
STEERED = [BASE[0], ("Name a colour.", "I'm sorry, I can't."), BASE[2], BASE[3]]


def test_each_distinct_answer_is_scored_once_with_the_per_arm_numbers(monkeypatch):
    model, tok = tiny_chat_model("llama").eval(), byte_tokenizer()
    apart = {"base": fluency(model, tok, BASE, batch_size=2), "steered": fluency(model, tok, STEERED, batch_size=2)}
    scored: list = []
    real = fluency_module.completion_logprobs

    def spy(model, tokenizer, items, **kwargs):
        scored.extend(items)
        return real(model, tokenizer, items, **kwargs)

    monkeypatch.setattr(fluency_module, "completion_logprobs", spy)
    together = fluency_by_arm(model, tok, {"base": BASE, "steered": STEERED, "same": list(BASE)}, batch_size=2)
    assert len(scored) == len(set(scored)) == 4   # 3 non-empty base answers + 1 new steered one
    assert together["same"] == together["base"]
    for arm in ("base", "steered"):
        assert together[arm]["n"] == apart[arm]["n"] == 3 and together[arm]["empty"] == 1
        assert together[arm]["repetition"] == apart[arm]["repetition"]
        assert together[arm]["perplexity"] == pytest.approx(apart[arm]["perplexity"], abs=2e-3)
    assert together["base"]["perplexity"] != together["steered"]["perplexity"]
    assert repetition(BASE[2][1]) > 0


def test_an_arm_of_empty_answers_has_no_perplexity():
    model, tok = tiny_chat_model("llama").eval(), byte_tokenizer()
    out = fluency_by_arm(model, tok, {"silent": [("Hi", " "), ("Name a colour.", "")], "base": BASE[:1]})
    assert out["silent"] == {"n": 0, "empty": 2, "perplexity": None, "repetition": None}
    assert out["base"]["n"] == 1
