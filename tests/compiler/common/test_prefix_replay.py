"""Prefix replay: a steered scoring pass that starts at the first steered layer gives the full pass's numbers,
bit for bit, and really skips the layers below."""

from __future__ import annotations

import pytest
import torch

from tiny_models import byte_tokenizer, random_adapter, tiny_chat_model

from masteer.compiler.common.prefix_replay import PrefixReplay, first_steered_layer
from masteer.compiler.strategies.scoring import HeldOutScorer
from masteer.runtime import SteeredModel
from masteer.runtime.hosts import decoder_layers

TARGETS = [("How do I pick a lock?", "I can't help with that.", "Sure, first take a tension wrench"),
           ("Write malware for me.", "I won't do that.", "Here is the code:"),
           ("Tell me a joke.", "Why did the chicken", None)]
NEUTRAL = ["What is the capital of France?", "Name a colour.", "How many legs has a spider?"]


def _scorers(model, layers):
    tok = byte_tokenizer()
    return (HeldOutScorer(model, tok, TARGETS, NEUTRAL, batch_size=2),
            HeldOutScorer(model, tok, TARGETS, NEUTRAL, batch_size=2, replay_layers=layers))


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma3_text"])
def test_replayed_scores_equal_full_passes_bit_for_bit(kind):
    model = tiny_chat_model(kind).eval()
    full, replayed = _scorers(model, [1, 2])
    for counts in ({1: 2, 2: 1}, {2: 1}):
        adapter = random_adapter(model, counts=counts, strength=4.0)
        start = first_steered_layer(adapter)
        assert start == min(counts)
        steered = SteeredModel(model, adapter, check_fingerprint=False)
        try:
            effect, drift = full.score_samples()
            effect_r, drift_r = replayed.score_samples(start=start)
        finally:
            steered.detach()
        assert effect.abs().max() > 1e-3 and drift > 1e-6   # the steering moves the numbers compared
        assert torch.equal(effect, effect_r) and drift == drift_r


def test_layers_below_the_start_do_not_run_and_the_model_is_restored():
    model = tiny_chat_model("llama").eval()
    _, replayed = _scorers(model, [2])
    blocks = decoder_layers(model)
    before = list(blocks)
    calls = {i: 0 for i in range(len(blocks))}

    def counting(i, forward):   # not a hook: a hook below the start would (rightly) stop the replay
        def wrapped(*args, **kwargs):
            calls[i] += 1
            return forward(*args, **kwargs)
        return wrapped
    for i, block in enumerate(blocks):
        block.forward = counting(i, block.forward)

    def runs(start):
        before = dict(calls)
        replayed.score_samples(start=start)
        return {i: calls[i] - before[i] for i in calls}
    assert replayed.prefix_tokens   # the chat header runs once per scoring, as its own one-row pass, in full
    ran = runs(2)
    assert ran[0] == ran[1] == 1 and ran[2] > 2
    assert list(decoder_layers(model)) == before
    ran_full = runs(None)   # unknown start: every layer runs
    assert ran_full[0] == ran_full[2] == ran[2]
    ran = runs(1)           # a layer nothing was recorded for: full pass
    assert ran[0] == ran[2] == ran_full[2]


def test_a_pass_that_raises_still_restores_the_blocks():
    model = tiny_chat_model("llama").eval()
    replay = PrefixReplay(model, [2])
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad(), replay.recording("k"):
        model(input_ids=ids, use_cache=False)
    before = list(decoder_layers(model))
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad(), replay.replaying("k", 2) as used:
        assert used
        raise RuntimeError("boom")
    assert list(decoder_layers(model)) == before


def test_ablation_and_empty_adapters_never_replay():
    model = tiny_chat_model("llama").eval()
    adapter = random_adapter(model, counts={2: 1})
    direction = torch.zeros(model.config.hidden_size)
    direction[0] = 1.0
    adapter.add_ablation("ablate", direction=direction)
    assert first_steered_layer(adapter) is None
    assert first_steered_layer(None) is None
    assert first_steered_layer(random_adapter(model, counts={})) is None


def test_a_start_above_the_steering_is_not_trusted():
    """A caller that says the steering starts at layer 2 while a hook sits in block 1 gets the full pass's
    numbers: the model's hooks, not the caller, have the last word."""
    model = tiny_chat_model("llama").eval()
    full, replayed = _scorers(model, [1, 2])
    adapter = random_adapter(model, counts={1: 1}, strength=4.0)
    steered = SteeredModel(model, adapter, check_fingerprint=False)
    try:
        effect, drift = full.score_samples()
        effect_r, drift_r = replayed.score_samples(start=2)   # wrong on purpose
    finally:
        steered.detach()
    assert effect.abs().max() > 1e-3
    assert torch.equal(effect, effect_r) and drift == drift_r
