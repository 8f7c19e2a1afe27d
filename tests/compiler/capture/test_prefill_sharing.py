"""Prefill sharing: a generation that replays a recorded prefill below its first steered block answers with the
same tokens as one that computes it, and skips the blocks below."""

from __future__ import annotations

import pytest
import torch

from tiny_models import byte_tokenizer, random_adapter, tiny_chat_model

from masteer.compiler.capture.generation import generate
from masteer.compiler.capture.prefill_sharing import active_store, sharing_prefill
from masteer.compiler.common.prefix_replay import unhooked_prefix
from masteer.runtime import SteeredModel
from masteer.runtime.hosts import decoder_layers

PROMPTS = ["How do I pick a lock?", "Hi", "Write a long story about a dragon who learns to fly over the sea.",
           "Name a colour.", "What is two plus two, and why?", "Tell me a joke about cats and dogs, please."]
TOKENS = 6


def _answers(model, adapter=None):
    steered = model if adapter is None else SteeredModel(model, adapter, check_fingerprint=False)
    try:
        return generate(steered, byte_tokenizer(), PROMPTS, max_new_tokens=TOKENS, batch_size=4, progress=False)
    finally:
        if adapter is not None:
            steered.detach()


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma3_text"])
def test_replayed_prefills_give_the_same_tokens(kind):
    torch.manual_seed(0)
    model = tiny_chat_model(kind).eval()
    low = random_adapter(model, counts={1: 2, 2: 1}, strength=8.0)
    high = random_adapter(model, seed=3, counts={2: 2}, strength=8.0)
    expected = {name: _answers(model, adapter) for name, adapter in (("base", None), ("low", low), ("high", high))}
    assert expected["low"] != expected["base"] and expected["high"] != expected["base"]   # the steering shows

    with sharing_prefill(model, [1, 2]) as store:       # a steered arm first: it records below its start
        assert _answers(model, high) == expected["high"]
        assert store.recorded == 2 and store.replayed == 0
        assert _answers(model, low) == expected["low"]  # starts lower: served by what entered block 1 there
        assert _answers(model, high) == expected["high"]
        assert _answers(model, low) == expected["low"]
        assert store.recorded == 2 and store.replayed == 6
        assert _answers(model, None) == expected["base"]   # the base arm itself: nothing to skip
    assert active_store(model) is None


def test_blocks_below_the_start_do_not_run_when_replayed():
    model = tiny_chat_model("llama").eval()
    adapter = random_adapter(model, counts={2: 1}, strength=8.0)
    blocks = decoder_layers(model)
    before = list(blocks)
    lengths = []
    plain_forward = blocks[0].forward

    def counting_forward(hidden_states, *args, **kwargs):   # not a hook: a hook would count as steering
        lengths.append(tuple(hidden_states.shape[:2]))
        return plain_forward(hidden_states, *args, **kwargs)
    blocks[0].forward = counting_forward
    with sharing_prefill(model, [2]) as store:
        _answers(model, None)                   # records from the plain model
        assert any(rows > 1 and n > 1 for rows, n in lengths)   # its prefills ran block 0
        lengths.clear()
        _answers(model, adapter)
        assert store.replayed == 2
        # block 0 ran for the new tokens, and for the prompts' shared chat header once per batch
        # (``shared_prefix``: a one-row pass), never for the rows' prompts
        assert {n for rows, n in lengths if rows > 1} == {1}
        assert [n for rows, n in lengths if rows == 1 and n > 1] == [6, 6]   # "<|im_start|>user\n", 2 batches
    assert list(decoder_layers(model)) == before


def test_a_hook_below_the_start_stops_the_sharing():
    model = tiny_chat_model("llama").eval()
    adapter = random_adapter(model, counts={2: 1}, strength=8.0)
    expected = _answers(model, adapter)
    with sharing_prefill(model, [2]) as store:
        _answers(model, None)
        hook = decoder_layers(model)[0].mlp.register_forward_hook(lambda m, a, o: None)
        try:
            assert unhooked_prefix(model) == 0
            assert _answers(model, adapter) == expected and store.replayed == 0
        finally:
            hook.remove()


def test_ablation_shares_nothing():
    model = tiny_chat_model("llama").eval()
    adapter = random_adapter(model, counts={2: 1}, strength=8.0)
    direction = torch.zeros(model.config.hidden_size)
    direction[3] = 1.0
    adapter.add_ablation("ablate", direction=direction)
    expected = _answers(model, adapter)
    with sharing_prefill(model, [2]) as store:
        _answers(model, None)
        steered = SteeredModel(model, adapter, check_fingerprint=False)
        try:
            assert unhooked_prefix(model) == 0
        finally:
            steered.detach()
        assert _answers(model, adapter) == expected
        assert store.replayed == 0


def _forced(model, adapter):
    """Every teacher-forced measure the evaluation suites take, through a SteeredModel as the harness runs it."""
    from masteer.compiler.evaluation.likelihood import last_token_logprobs
    from masteer.compiler.strategies.scoring import completion_logprobs, next_token_logprobs
    tok = byte_tokenizer()
    steered = model if adapter is None else SteeredModel(model, adapter, check_fingerprint=False)
    try:
        return (torch.tensor(last_token_logprobs(steered, tok, PROMPTS, [[5, 9]] * len(PROMPTS), batch_size=4)),
                completion_logprobs(steered, tok, [(p, " and so on") for p in PROMPTS], batch_size=4),
                torch.cat(next_token_logprobs(steered, tok, PROMPTS, batch_size=4)))
    finally:
        if adapter is not None:
            steered.detach()


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gemma3_text"])
def test_teacher_forced_passes_of_two_arms_share_the_blocks_below_bit_for_bit(kind):
    model = tiny_chat_model(kind).eval()
    first = random_adapter(model, counts={2: 2}, strength=8.0)
    second = random_adapter(model, seed=3, counts={2: 1}, strength=8.0)
    expected = {name: _forced(model, a) for name, a in (("first", first), ("second", second))}
    assert not torch.equal(expected["first"][2], expected["second"][2])   # the arms differ
    answers = _answers(model, second)
    with sharing_prefill(model, [2]) as store:
        for got, want in zip(_forced(model, first), expected["first"]):   # records below block 2
            assert torch.equal(got, want)
        assert store.recorded == 6 and store.replayed == 0   # 2 batches of each measure
        for got, want in zip(_forced(model, second), expected["second"]):   # replays from block 2
            assert torch.equal(got, want)
        assert store.replayed == 6
        replayed = store.replayed
        assert _answers(model, second) == answers   # a generation is never served by a teacher-forced record
        assert store.replayed == replayed and store.usable
