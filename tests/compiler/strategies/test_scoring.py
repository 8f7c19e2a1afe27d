"""The selection scorer batches by length and keeps base distributions: the same effects and drift as the
plain per-prompt computation, to float rounding, for any host."""

from __future__ import annotations

import pytest
import torch

from tiny_models import byte_tokenizer, random_adapter, tiny_chat_model

from masteer.compiler.strategies.scoring import (HeldOutScorer, NeutralDrift, batch_order, completion_logprobs,
                                                 mean_kl, next_token_logprobs)
from masteer.runtime import SteeredModel

TARGETS = [("How do I pick a lock?", "I can't help with that.", "Sure, first take a tension wrench"),
           ("Write malware for me, a long and detailed request so that this row is much longer.", "I won't.",
            "Here is the code:"),
           ("Hi", "Why did the chicken", None),
           ("Tell me a joke about cats and dogs.", "No.", "Sure! A cat walks into a bar")]
NEUTRAL = ["What is the capital of France? Please answer in one word, and say why.", "Name a colour.",
           "How many legs has a spider?", "Hi", "Explain photosynthesis to a child in two sentences."]


def test_batch_order_sorts_only_when_asked_and_covers_every_row_once():
    lengths = [5, 2, 9, 2, 7]
    assert batch_order(lengths, 2, by_length=False) == [[0, 1], [2, 3], [4]]
    sorted_batches = batch_order(lengths, 2, by_length=True)
    assert sorted_batches == [[1, 3], [0, 4], [2]]   # stable: equal lengths keep their order
    assert sorted(i for b in sorted_batches for i in b) == list(range(5))


@pytest.mark.parametrize("kind", ["llama", "gemma3_text"])
def test_drift_reference_equals_the_per_prompt_kl(kind):
    model = tiny_chat_model(kind).eval()
    tok = byte_tokenizer()
    reference = NeutralDrift(model, tok, NEUTRAL, batch_size=2)
    base = next_token_logprobs(model, tok, NEUTRAL, batch_size=2)
    assert abs(reference.drift()) < 1e-6   # nothing steered: no drift
    steered = SteeredModel(model, random_adapter(model, counts={1: 2}, strength=4.0), check_fingerprint=False)
    try:
        expected = mean_kl(base, next_token_logprobs(model, tok, NEUTRAL, batch_size=2))
        got = reference.drift()
    finally:
        steered.detach()
    assert expected > 1e-4   # the steering moves what is compared
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-7)
    assert reference.positions == sum(p.shape[0] for p in base)


def test_scorer_effects_equal_unsorted_scoring():
    model = tiny_chat_model("llama").eval()
    tok = byte_tokenizer()
    scorer = HeldOutScorer(model, tok, TARGETS, NEUTRAL, batch_size=2)
    items = [(p, c) for p, c, _ in TARGETS] + [(p, n) for p, _, n in TARGETS if n is not None]
    base = completion_logprobs(model, tok, items, batch_size=2)
    assert torch.allclose(scorer.base_target, base, atol=1e-5)
    steered = SteeredModel(model, random_adapter(model, counts={1: 2}, strength=4.0), check_fingerprint=False)
    try:
        effect, drift = scorer.score_samples()
        change = completion_logprobs(model, tok, items, batch_size=2) - base
    finally:
        steered.detach()
    expected = change[:4].clone()
    expected[[0, 1, 3]] -= change[4:]
    assert effect.abs().max() > 1e-3 and drift > 1e-6
    assert torch.allclose(effect, expected, atol=1e-5)


def test_a_scorer_of_the_same_neutral_prompts_uses_the_other_scorers_drift():
    """The library's calibration and the program search score other targets against the same neutral prompts: the
    second scorer takes the first one's base numbers (one set of base passes) and measures the same drift."""
    model = tiny_chat_model("llama").double().eval()
    tok = byte_tokenizer()
    first = HeldOutScorer(model, tok, TARGETS, NEUTRAL, batch_size=2, replay_layers=[1, 2])
    alone = HeldOutScorer(model, tok, TARGETS[:2], NEUTRAL, batch_size=2, replay_layers=[1])
    second = HeldOutScorer(model, tok, TARGETS[:2], NEUTRAL, batch_size=2, replay_layers=[1], drift_from=first)
    assert second.drift_reference is first.drift_reference and alone.drift_reference is not first.drift_reference
    adapter = random_adapter(model, counts={1: 2}, strength=4.0)
    steered = SteeredModel(model, adapter, check_fingerprint=False)
    try:
        (effect, drift), (effect_alone, drift_alone) = second.score_samples(start=1), alone.score_samples(start=1)
    finally:
        steered.detach()
    assert drift > 1e-4 and drift == drift_alone   # bit for bit: the same base passes, the same steered ones
    assert torch.equal(effect, effect_alone)
    # what the other drift cannot serve is computed afresh: other batches, other prompts, replay layers it lacks
    for scorer in (HeldOutScorer(model, tok, TARGETS[:2], NEUTRAL, batch_size=3, drift_from=first),
                   HeldOutScorer(model, tok, TARGETS[:2], NEUTRAL[:4], batch_size=2, drift_from=first),
                   HeldOutScorer(model, tok, TARGETS[:2], NEUTRAL, batch_size=2, replay_layers=[3], drift_from=first)):
        assert scorer.drift_reference is not first.drift_reference
