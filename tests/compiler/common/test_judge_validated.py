"""The validated refusal judge (phrases + relevance): accuracy on pyrit's human labels, and its rules."""

from __future__ import annotations

import pytest
import torch

from masteer.compiler.common import datasets
from masteer.compiler.common.judge import (ANSWER, EMPTY, OFF_TOPIC, PHRASES, RELEVANCE_THRESHOLD, RefusalJudge,
                                           Verdict, validate_judge)
from masteer.runtime.errors import MasteerError


def test_validated_judge_reaches_090_on_pyrit_labels():
    """Measured: accuracy 0.933, precision 1.000, recall 0.900 (tp 63 fp 0 fn 7 tn 35, n 105)."""
    v = validate_judge()
    assert v.n == 105 and v.tp + v.fp + v.fn + v.tn == 105
    assert v.accuracy >= 0.92
    assert v.precision >= 0.97
    assert v.recall >= 0.88
    assert v.settings["relevance_threshold"] == RELEVANCE_THRESHOLD
    # the phrase matcher alone tops out far lower on the same labels: the relevance check is what helps
    assert validate_judge(RefusalJudge(relevance=False)).accuracy <= 0.82


def test_validated_judge_on_the_held_out_extra_labels():
    """refusal_extra.csv chose nothing (not the phrases, not the threshold). Measured: 0.938 / 1.000 / 0.897."""
    extra = datasets.refusal_judge_labels(include_extra=True)[105:]
    v = validate_judge(labels=extra, source="refusal_extra.csv")
    assert v.n == 64
    assert v.accuracy >= 0.9 and v.precision >= 0.97


def test_validation_holds_on_responses_cut_to_evaluation_length():
    """Evaluation reads 24-token answers (about 100 characters); the judge must not need whole responses."""
    labels = [datasets.LabelledResponse(x.objective, x.response[:100], x.is_refusal)
              for x in datasets.refusal_judge_labels()]
    assert validate_judge(labels=labels, source="cut to 100 characters").accuracy >= 0.9


class FakeEncoder:
    """Similarity = 1 when request and response share their first word, else 0."""
    name = "fake"

    def similarity(self, first, second):
        return [1.0 if a.split()[:1] == b.split()[:1] else 0.0 for a, b in zip(first, second)]


def test_verdict_rules_in_order():
    judge = RefusalJudge(encoder=FakeEncoder())
    requests = ["Bake bread", "Bake bread", "Bake bread", "Bake bread"]
    responses = ["", "Bake bread? I'm sorry, but I can't help with that.", "Quantum computing is ...", "Bake it at 200C."]
    assert judge.judge(requests, responses) == [
        Verdict(True, EMPTY, 0.0), Verdict(True, PHRASES, 1.0), Verdict(True, OFF_TOPIC, 0.0), Verdict(False, ANSWER, 1.0)]
    phrases = RefusalJudge(relevance=False)
    assert [v.refusal for v in phrases.judge(requests, responses)] == [True, True, False, False]
    assert phrases.describe() == {"judge": "phrases", "phrases": "masteer.compiler.common.judge.is_refusal"}


def test_real_encoder_separates_on_and_off_topic_answers():
    judge = RefusalJudge()
    verdicts = judge.judge(["Give me a recipe for chicken curry."] * 2,
                           ["Here is a simple chicken curry: fry onions, add spices and chicken, simmer.",
                            "The French Revolution began in 1789 with the storming of the Bastille."])
    assert [v.reason for v in verdicts] == [ANSWER, OFF_TOPIC]
    assert verdicts[0].relevance > 0.5 > RELEVANCE_THRESHOLD > verdicts[1].relevance
    vectors = judge.encoder.encode(["a", "b c"])
    assert vectors.shape == (2, 384) and torch.allclose(vectors.norm(dim=-1), torch.ones(2), atol=1e-5)


@pytest.mark.parametrize("call, message", [
    (lambda: RefusalJudge(threshold=1.5), "threshold must be in"),
    (lambda: RefusalJudge(relevance=False).judge(["a", "b"], ["x"]), "one request per response"),
    (lambda: RefusalJudge(relevance=False).judge(["a"], [None]), "expects string responses"),
    (lambda: validate_judge(RefusalJudge(relevance=False), labels=[]), "at least one labelled"),
])
def test_bad_judge_input_is_named(call, message):
    with pytest.raises(MasteerError, match=message):
        call()


def test_encoder_keeps_a_repeated_list_and_returns_the_same_bits():
    from masteer.compiler.common.embeddings import RECENT_LISTS, SentenceEncoder
    encoder = SentenceEncoder()
    calls = []
    plain = encoder._encode
    encoder._encode = lambda texts, size: calls.append(list(texts)) or plain(texts, size)
    first = encoder.encode(["How do I bake bread?", "Name a colour."])
    again = encoder.encode(["How do I bake bread?", "Name a colour."])
    assert torch.equal(first, again) and len(calls) == 1   # the second list was not encoded again
    again[0] = 0.0                                             # a caller's edit does not reach the kept copy
    assert torch.equal(encoder.encode(["How do I bake bread?", "Name a colour."]), first)
    assert len(calls) == 1
    encoder.encode(["Name a colour."])                         # another list (a sub-list) is encoded
    assert len(calls) == 2
    for i in range(RECENT_LISTS):                              # the oldest lists are dropped
        encoder.encode([f"text {i}"])
    encoder.encode(["How do I bake bread?", "Name a colour."])
    assert len(calls) == 3 + RECENT_LISTS


def test_a_stored_validation_is_read_back_in_a_new_process_and_keyed_by_what_it_depends_on(tmp_path, monkeypatch):
    from masteer.compiler.capture.cache import ResultCache
    from masteer.compiler.common import judge as judge_module
    phrases = RefusalJudge(relevance=False)
    path = tmp_path / "stored.jsonl"
    monkeypatch.setattr(judge_module, "_VALIDATIONS", {})
    first = validate_judge(phrases, store=ResultCache(path))
    assert len(ResultCache(path)) == 1

    def judging(*args):
        raise AssertionError("a stored validation must not judge again")
    monkeypatch.setattr(judge_module, "_VALIDATIONS", {})   # a new process
    monkeypatch.setattr(RefusalJudge, "judge", judging)
    again = validate_judge(phrases, store=ResultCache(path))
    assert again == first and again.n == 105 and again.accuracy == first.accuracy
    labels = datasets.refusal_judge_labels()
    key = judge_module._stored_validation_key(phrases, labels)
    relabelled = [datasets.LabelledResponse(labels[0].objective, labels[0].response, not labels[0].is_refusal)]
    assert key != judge_module._stored_validation_key(phrases, relabelled + labels[1:])
    assert key != judge_module._stored_validation_key(RefusalJudge(), labels)
