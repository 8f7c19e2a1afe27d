"""Shared prompt prefix: a batch whose rows start alike prefills the common tokens once, and answers with the
same tokens as each prompt generated alone; where it would not be safe, the batch is padded as before."""

from __future__ import annotations

import pytest
import torch

from tiny_models import byte_tokenizer, random_adapter, tiny_chat_model

from masteer.compiler.capture.activations import encode_prompt
from masteer.compiler.capture.generation import generate
from masteer.compiler.capture.shared_prefix import MIN_SHARED, batch_inputs, common_prefix_length
from masteer.runtime import SteeredModel

PROMPTS = ["How do I pick a lock?", "Hi", "Write a long story about a dragon who learns to fly over the sea.",
           "Name a colour.", "What is two plus two, and why?"]
TOKENS = 8


def test_the_common_prefix_leaves_every_row_a_token_of_its_own():
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert common_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2     # the shorter row keeps its last token
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2
    assert common_prefix_length([[7, 2], [1, 2]]) == 0
    assert common_prefix_length([[5]]) == 0


def _model(kind: str, window: int | None = None):
    torch.manual_seed(0)
    model = tiny_chat_model(kind).double()   # float64: rounding cannot flip an argmax between the two layouts
    if window is not None:
        model.config.sliding_window = window
    return model


def _alone_and_batched(model):
    tokenizer = byte_tokenizer()
    alone = [generate(model, tokenizer, [p], max_new_tokens=TOKENS, progress=False)[0] for p in PROMPTS]
    return alone, generate(model, tokenizer, PROMPTS, max_new_tokens=TOKENS, batch_size=8, progress=False)


@torch.no_grad()
def _step_logits(model, rows, inputs=None):
    """Every decoding step's logits [rows, steps, vocab]: of the batch's inputs, or of each row alone."""
    def run(ids, mask, **cache):
        out = model.generate(input_ids=ids, attention_mask=mask, **cache, max_new_tokens=TOKENS, do_sample=False,
                             pad_token_id=0, output_logits=True, return_dict_in_generate=True)
        return torch.stack(out.logits, 1)
    if inputs is not None:
        return run(inputs.ids, inputs.mask, **inputs.cache_kwargs)
    return torch.cat([run(torch.tensor([r]), torch.ones(1, len(r), dtype=torch.long)) for r in rows])


@pytest.mark.parametrize("kind,window", [("llama", None), ("qwen2", None), ("gpt2", None),
                                         ("gemma3_text", 1024)])
def test_a_batch_with_a_shared_prefix_computes_what_each_prompt_alone_does(kind, window):
    model = _model(kind, window)
    tokenizer = byte_tokenizer()
    rows = [encode_prompt(tokenizer, p) for p in PROMPTS]
    base = None
    for steering in (False, True):   # the base model, then steered at blocks 1 and 2
        steered = (SteeredModel(model, random_adapter(model, counts={1: 2, 2: 1}, strength=8.0),
                                check_fingerprint=False) if steering else model)
        inputs = batch_inputs(steered, rows, tokenizer.pad_token_id, TOKENS)
        assert inputs.shared                                   # "<|im_start|>user\n": 6 tokens, prefilled once
        assert inputs.ids.shape == (len(rows), max(map(len, rows)))
        assert (inputs.ids[:, :6] == torch.tensor(rows[0][:6])).all() and inputs.mask[:, :6].all()
        assert inputs.mask.sum(1).tolist() == [len(r) for r in rows]   # the padding sits after the prefix
        batched, alone = _step_logits(steered, rows, inputs), _step_logits(steered, rows)
        assert (batched - alone).abs().max() < 1e-9 * alone.abs().max()
        assert batched.std(0).max() > 0.01 * alone.abs().max()   # the rows' logits differ: real prompts, not one repeated answer
        answers_alone, answers_batched = _alone_and_batched(steered)
        assert answers_batched == answers_alone
        if steering:
            assert (alone - base).abs().max() > 0.01 * base.abs().max()   # the steering shows in what is compared
            steered.detach()
        base = alone


def test_a_sliding_window_shorter_than_the_batch_pads_as_before():
    model = _model("gemma3_text")   # window of 4 tokens
    tokenizer = byte_tokenizer()
    rows = [encode_prompt(tokenizer, p) for p in PROMPTS]
    inputs = batch_inputs(model, rows, tokenizer.pad_token_id, TOKENS)
    assert not inputs.shared and inputs.mask.sum(1).tolist() == [len(r) for r in rows]
    assert (inputs.mask[:, -1] == 1).all()                  # plain left padding
    alone, batched = _alone_and_batched(model)
    assert batched == alone


def test_rows_sharing_less_than_the_minimum_pad_as_before():
    model = _model("llama")
    rows = [[9, 8, 7, 6, 5], [9, 8, 7, 4], [9, 8, 3, 3, 3, 3]]
    assert common_prefix_length(rows) < MIN_SHARED
    inputs = batch_inputs(model, rows, 0, TOKENS)
    assert not inputs.shared and inputs.ids.tolist()[1] == [0, 0, 9, 8, 7, 4]
