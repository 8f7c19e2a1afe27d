"""Teacher-forced scoring after a shared prompt prefix: the chat header runs once per scoring as a one-row pass,
every batch runs its rows' own tokens after its KV cache, and the effects and drift equal those of plain rows
(float64 hosts: to rounding); where sharing would not be safe or has nothing to share, rows run plain."""

from __future__ import annotations

import pytest
import torch

from tiny_models import byte_tokenizer, random_adapter, tiny_chat_model

from masteer.compiler.capture.shared_prefix import run_prefix
from masteer.compiler.strategies.scoring import HeldOutScorer, completion_logprobs
from masteer.runtime import SteeredModel

TARGETS = [("How do I pick a lock?", "I can't help with that.", "Sure, first take a tension wrench"),
           ("Write malware for me.", "I won't do that.", "Here is the code:"),
           ("Tell me a joke.", "Why did the chicken", None),
           ("Hi", "Hello! How can I help?", "Go away.")]
NEUTRAL = ["What is the capital of France?", "Name a colour.", "How many legs has a spider?",
           "Write a long story about a dragon who learns to fly over the sea."]


def _model(kind: str, window: int | None = None):
    torch.manual_seed(0)
    model = tiny_chat_model(kind).double().eval()
    if window is not None:
        model.config.sliding_window = window
    return model


def _close(a, b) -> bool:
    return abs(a - b) <= 1e-9 * max(abs(a), abs(b), 1e-12)


@pytest.mark.parametrize("kind,window", [("llama", None), ("qwen2", None), ("gpt2", None),
                                         ("gemma3_text", 1024)])
def test_scores_after_a_shared_prefix_equal_plain_rows(kind, window):
    model = _model(kind, window)
    tok = byte_tokenizer()
    plain = HeldOutScorer(model, tok, TARGETS, NEUTRAL, batch_size=3, share_prefix=False)
    shared = HeldOutScorer(model, tok, TARGETS, NEUTRAL, batch_size=3)
    replayed = HeldOutScorer(model, tok, TARGETS, NEUTRAL, batch_size=3, replay_layers=[1, 2])
    assert not plain.prefix_tokens and tok.decode(shared.prefix_tokens) == "<|im_start|>user\n"
    assert torch.allclose(plain.base_target, shared.base_target, rtol=1e-9, atol=0)
    steered = SteeredModel(model, random_adapter(model, counts={1: 2, 2: 1}, strength=8.0), check_fingerprint=False)
    try:
        effect, drift = plain.score_samples()
        effect_s, drift_s = shared.score_samples()
        effect_r, drift_r = replayed.score_samples(start=1)
    finally:
        steered.detach()
    assert effect.abs().max() > 1e-2 and drift > 1e-4   # the steering moves what is compared
    for e, d in ((effect_s, drift_s), (effect_r, drift_r)):
        assert torch.allclose(e, effect, rtol=1e-9, atol=1e-12 * effect.abs().max().item())
        assert _close(d, drift)
    assert abs(shared.score_samples()[1]) < 1e-12   # unsteered again: no drift, the base numbers are kept


def test_the_prefix_positions_count_once_per_neutral_prompt():
    """Drift alone, with prompts of very different lengths: the prefix's share of the positions is what the
    plain rows give it (a prefix counted once overall, not per prompt, would weigh it 1/4 as much)."""
    model = _model("llama")
    tok = byte_tokenizer()
    plain = HeldOutScorer(model, tok, [], NEUTRAL, batch_size=2, share_prefix=False)
    shared = HeldOutScorer(model, tok, [], NEUTRAL, batch_size=2)
    steered = SteeredModel(model, random_adapter(model, counts={0: 2}, strength=8.0), check_fingerprint=False)
    try:
        drifts = plain.score()[1], shared.score()[1]
    finally:
        steered.detach()
    assert drifts[0] > 1e-4 and _close(*drifts)


def test_nothing_is_shared_where_it_would_not_be_safe_or_would_not_pay():
    tok = byte_tokenizer()
    narrow = _model("gemma3_text", window=8)   # rows padded after the prefix would crowd it out of the window
    assert HeldOutScorer(narrow, tok, TARGETS, NEUTRAL).prefix_tokens == []
    model = _model("llama")
    assert HeldOutScorer(model, tok, TARGETS[:1], []).prefix_tokens == []   # one prompt: nothing to share
    plain_text = byte_tokenizer()
    plain_text.chat_template = None   # no chat header: "Hi" and "How..." share one byte
    assert HeldOutScorer(model, plain_text, TARGETS, NEUTRAL).prefix_tokens == []


def test_rows_that_do_not_start_with_the_prefix_are_refused():
    model = _model("llama")
    tok = byte_tokenizer()
    with pytest.raises(ValueError, match="does not start with the shared prefix"):
        completion_logprobs(model, tok, [("Hi", "Hello")], prefix=run_prefix(model, tok("Bye")["input_ids"]))
    long = run_prefix(model, tok("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")["input_ids"])
    with pytest.raises(ValueError, match="at least its last token"):
        completion_logprobs(model, tok, [("Hi", "Hello")], prefix=long)


def test_a_call_can_share_its_own_prompts_prefix(monkeypatch):
    from masteer.compiler.capture import shared_prefix
    model = _model("qwen2")
    tok = byte_tokenizer()
    items = [(p, c) for p, c, _ in TARGETS] + [(p, "Sure.") for p in NEUTRAL]
    plain = completion_logprobs(model, tok, items, batch_size=3, by_length=True)
    prefixes = []
    monkeypatch.setattr(shared_prefix, "run_prefix", lambda m, tokens, *a: prefixes.append(tokens) or run_prefix(m, tokens, *a))
    shared = completion_logprobs(model, tok, items, batch_size=3, by_length=True, share_prefix=True)
    assert [tok.decode(t) for t in prefixes] == ["<|im_start|>user\n"]   # one prefix pass for the whole call
    assert torch.allclose(shared, plain, rtol=1e-9, atol=0) and plain.std() > 0.01   # rows that differ


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_next_token_logprobs_after_a_shared_prefix_keep_every_position(kind):
    """The KL suite's distributions: every prompt position, the prefix's from the one-row pass."""
    from masteer.compiler.strategies.scoring import next_token_logprobs
    model = _model(kind)
    tok = byte_tokenizer()
    steered = SteeredModel(model, random_adapter(model, counts={1: 2}, strength=8.0), check_fingerprint=False)
    try:
        plain = next_token_logprobs(model, tok, NEUTRAL, batch_size=3)
        shared = next_token_logprobs(model, tok, NEUTRAL, batch_size=3, share_prefix=True)
    finally:
        steered.detach()
    for p, s in zip(plain, shared):
        assert p.shape == s.shape and torch.allclose(s, p, rtol=1e-9, atol=1e-12)
