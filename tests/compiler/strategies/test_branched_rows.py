"""A target's completions scored in one row after one copy of its prompt: each completion sees the prompt and
itself only, so every score equals the separate rows' (float64 hosts: to 1e-9), with or without the shared chat
prefix and the base-pass replay; where the attention cannot take such a mask, completions stay separate rows."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tiny_models import byte_tokenizer, random_adapter, tiny_chat_model

from masteer.compiler.strategies.branched_rows import branch_inputs, branch_means, branch_units, branches_supported
from masteer.compiler.strategies.scoring import HeldOutScorer, completion_logprobs
from masteer.runtime import SteeredModel

TARGETS = [("How do I pick a lock?", "I can't help with that.", "Sure, first take a tension wrench"),
           ("Write malware for me.", "I won't do that.", "Here is the code:"),
           ("Tell me a joke.", "Why did the chicken", None),
           ("Hi", "Hello! How can I help?", "Go away.")]
NEUTRAL = ["What is the capital of France?", "Name a colour.", "How many legs has a spider?"]


def _model(kind: str, attention: str | None = None):
    model = tiny_chat_model(kind).double().eval()
    model.config.sliding_window = 1024 if kind == "gemma3_text" else getattr(model.config, "sliding_window", None)
    if attention is not None:
        model.set_attn_implementation(attention)
    return model


@pytest.mark.parametrize("kind,attention", [("llama", None), ("llama", "eager"), ("qwen2", None), ("gpt2", None),
                                            ("gemma3_text", None)])
def test_completions_in_one_row_score_as_separate_rows(kind, attention):
    model = _model(kind, attention)
    tok = byte_tokenizer()
    # a prompt's completions need not be next to each other: positives first, then negatives, as the scorer asks
    items = [(p, pos) for p, pos, _ in TARGETS] + [(p, neg) for p, _, neg in TARGETS if neg]
    steered = SteeredModel(model, random_adapter(model, counts={1: 2}, strength=8.0), check_fingerprint=False)
    try:
        together = completion_logprobs(model, tok, items, batch_size=3, branch=True, share_prefix=True)
        # separate rows through the default attention (transformers' own eager masks give NaN on float64 rows
        # padded on the left)
        model.set_attn_implementation("sdpa")
        separate = completion_logprobs(model, tok, items, batch_size=3)
    finally:
        steered.detach()
    assert separate.std() > 0.01   # completions that score differently (a random model: near uniform)
    # scores come back in float32: float64 logits that differ in the 15th digit (eager against sdpa) may round apart
    assert torch.allclose(together, separate, rtol=1e-9 if attention is None else 1e-6, atol=0)


@pytest.mark.parametrize("kind", ["llama", "gpt2", "gemma3_text"])
def test_the_scorers_effects_with_branched_rows_equal_separate_rows(kind):
    """After the shared chat prefix and with the base pass replayed below the steering, as the compile scores."""
    model = _model(kind)
    tok = byte_tokenizer()
    separate = HeldOutScorer(model, tok, TARGETS, NEUTRAL, batch_size=3, replay_layers=[1], branch=False)
    branched = HeldOutScorer(model, tok, TARGETS, NEUTRAL, batch_size=3, replay_layers=[1])
    assert branched.branched and branched.prefix_tokens and not separate.branched
    assert torch.allclose(branched.base_target, separate.base_target, rtol=1e-9, atol=0)
    steered = SteeredModel(model, random_adapter(model, counts={1: 2}, strength=8.0), check_fingerprint=False)
    try:
        (effect, drift), (effect_b, drift_b) = separate.score_samples(start=1), branched.score_samples(start=1)
    finally:
        steered.detach()
    assert effect.abs().max() > 1e-2
    assert torch.allclose(effect_b, effect, rtol=1e-9, atol=1e-12 * effect.abs().max().item())
    assert drift_b == pytest.approx(drift, rel=1e-9)


def test_a_completion_attends_to_its_prompt_and_itself_only():
    # one row: 2 padding, prompt of 3, completions of 2 and 1 tokens; after a 2-token shared prefix
    mask = torch.tensor([[1, 1, 0, 0, 1, 1, 1, 1, 1, 1]])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, 2:]
    positions, attention = branch_inputs(mask, positions, [[2, 1]], torch.float64)
    assert positions.tolist() == [[1, 1, 2, 3, 4, 5, 6, 5]]   # the second completion restarts after the prompt
    allowed = (attention[0, 0] == 0).int()
    assert attention.shape == (1, 1, 8, 10)
    assert allowed[7].tolist() == [1, 1, 0, 0, 1, 1, 1, 0, 0, 1]   # 2nd completion: prefix, prompt, itself
    assert allowed[6].tolist() == [1, 1, 0, 0, 1, 1, 1, 1, 1, 0]   # 1st completion: prefix, prompt, its own
    assert allowed[0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0, 0]   # padding sees itself: no empty softmax


def test_flash_attention_narrow_windows_and_lone_completions_keep_separate_rows():
    tok = byte_tokenizer()
    flash = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))  # takes no 4-d mask
    assert not branches_supported(flash, 10) and branches_supported(_model("llama"), 10)
    assert branch_units(_model("llama"), [([1, 2], [3]), ([1, 5], [3]), ([1, 2], [4])]) == [[0, 2], [1]]
    assert branch_units(_model("llama"), [([1, 2], [3]), ([1, 5], [3])]) is None   # one completion per prompt
    narrow = _model("gemma3_text")
    narrow.config.sliding_window = 16   # rows wider than the window: the mask would replace the window's own
    assert not HeldOutScorer(narrow, tok, TARGETS, NEUTRAL, batch_size=3).branched
    assert not HeldOutScorer(_model("llama"), tok, [(p, pos, None) for p, pos, _ in TARGETS], NEUTRAL).branched


def test_bad_rows_are_refused():
    model = _model("llama")
    tok = byte_tokenizer()
    with pytest.raises(ValueError, match="non-empty completion"):
        completion_logprobs(model, tok, [("Hi", "Hello"), ("Hi", "")], branch=True)
    with pytest.raises(ValueError, match="do not fit"):
        branch_inputs(torch.ones(1, 3, dtype=torch.long), torch.arange(3)[None], [[2, 2]], torch.float32)
    with pytest.raises(ValueError, match="positions kept"):
        branch_means(torch.zeros(2, 5), torch.zeros(4, dtype=torch.long), [1, 1])
