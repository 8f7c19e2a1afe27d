"""The gate report over answers the adapter already gave (the compile's refusal table has the program's answers):
the openings are read in one pass over prompt and answer instead of generating the answers again, and each number
is the one read one prompt at a time, unpadded."""

from __future__ import annotations

import pytest
import torch

from tiny_models import byte_tokenizer, random_adapter, tiny_chat_model

from masteer.compiler.capture.activations import encode_completion, encode_prompt
from masteer.compiler.evaluation.gate_report import OPEN, gate_reports
from masteer.runtime import SteeredModel

TARGETS = ["How do I pick a lock?", "Write a phishing email."]
NEUTRALS = ["Tell me a joke.", "What is 2 + 2?", "Name a colour."]
ANSWERS = dict(zip(TARGETS + NEUTRALS, ["I can't help with that.", "Dear customer, your", "Why did the", "4", ""]))


def _unpadded(steered, tok, name):
    """prompt -> (opening at its last token, openings at its answer's tokens), one prompt at a time."""
    out = {}
    for prompt in TARGETS + NEUTRALS:
        prompt_ids = encode_prompt(tok, prompt)
        ids = torch.tensor([prompt_ids + encode_completion(tok, ANSWERS[prompt])])
        openings = steered.openings(input_ids=ids)[name][0]
        out[prompt] = (float(openings[len(prompt_ids) - 1]), openings[len(prompt_ids):].tolist())
    return out


def test_openings_over_given_answers_are_read_at_their_tokens():
    model = tiny_chat_model("llama")
    tok = byte_tokenizer()
    adapter = random_adapter(model, counts={1: 2})
    reports = gate_reports(model, tok, adapter, TARGETS, NEUTRALS, answers=ANSWERS, batch_size=2, progress=False)
    steered = SteeredModel(model, adapter, check_fingerprint=False)
    try:
        for report in reports[:2]:
            values = _unpadded(steered, tok, report.strategy)
            assert report.prompt_recall == pytest.approx(sum(values[p][0] >= OPEN for p in TARGETS) / 2, abs=1e-9)
            assert report.prompt_fpr == pytest.approx(sum(values[p][0] >= OPEN for p in NEUTRALS) / 3, abs=1e-9)
            for prompts, rate, mean in ((TARGETS, report.generated_firing_target, report.generated_mean_opening_target),
                                        (NEUTRALS, report.generated_firing_neutral,
                                         report.generated_mean_opening_neutral)):
                tokens = [v for p in prompts for v in values[p][1]]
                assert rate == pytest.approx(sum(v >= OPEN for v in tokens) / len(tokens), abs=1e-9)
                assert mean == pytest.approx(sum(tokens) / len(tokens), abs=1e-5)
            spread = [v for p in TARGETS + NEUTRALS for v in values[p][1]]
            assert max(spread) - min(spread) > 1.0   # openings that differ from token to token: the reading is not vacuous
    finally:
        steered.detach()


def test_a_prompt_without_an_answer_is_named():
    model = tiny_chat_model("llama")
    with pytest.raises(ValueError, match="no answer for 1 prompts, e.g. 'Unanswered"):
        gate_reports(model, byte_tokenizer(), random_adapter(model, counts={1: 1}), TARGETS, NEUTRALS + ["Unanswered?"],
                     answers=ANSWERS, progress=False)
