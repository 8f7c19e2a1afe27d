"""Likelihood scoring on a tiny random model, checked against sums computed by hand from the logits."""

from __future__ import annotations


import pytest
import torch


from tiny_models import byte_tokenizer, random_adapter, tiny_chat_model  # noqa: E402

from masteer.compiler.capture.activations import encode_completion, encode_prompt  # noqa: E402
from masteer.compiler.evaluation.harness import evaluate  # noqa: E402
from masteer.compiler.common.judge import RefusalJudge  # noqa: E402
from masteer.compiler.evaluation.likelihood import by_length, completion_nll, kl_sums, option_logprobs, single_token_ids
from masteer.compiler.evaluation.suites import CHOICE, EvalItem, Suite  # noqa: E402
from masteer.compiler.strategies.scoring import completion_logprobs, next_token_logprobs  # noqa: E402
from masteer.runtime import SteeredModel  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model_and_tokenizer():
    return tiny_chat_model("llama"), byte_tokenizer()


def _hand_logprobs(model, tokenizer, prompt: str, completion: str) -> list[float]:
    """log p(each completion token | prompt and the tokens before it), from one unpadded forward pass."""
    p, c = encode_prompt(tokenizer, prompt), encode_completion(tokenizer, completion)
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return [float(logp[len(p) - 1 + k, token]) for k, token in enumerate(c)]


MMLU_STYLE = [
    ("What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer with the letter of the correct option.", 1),
    ("Which is a colour?\nA. red\nB. seven\nC. run\nD. under\nAnswer with the letter of the correct option.", 0),
    ("Pick D.\nA. no\nB. no\nC. no\nD. yes\nAnswer with the letter of the correct option.", 3),
]


def test_single_letter_options_match_hand_computation(model_and_tokenizer):
    model, tok = model_and_tokenizer
    letters = ("A", "B", "C", "D")
    assert single_token_ids(tok, letters) is not None
    scores = option_logprobs(model, tok, [q for q, _ in MMLU_STYLE], [letters] * len(MMLU_STYLE), batch_size=2)
    for (question, _), row in zip(MMLU_STYLE, scores):
        hand = [_hand_logprobs(model, tok, question, letter)[0] for letter in letters]
        assert row == pytest.approx(hand, abs=1e-4)
        # the one-pass shortcut is the same number completion_logprobs computes with a pass per option
        slow = completion_logprobs(model, tok, [(question, letter) for letter in letters], max_tokens=1)
        assert row == pytest.approx(slow.tolist(), abs=1e-4)


def test_multi_token_options_use_the_mean_token_logprob(model_and_tokenizer):
    model, tok = model_and_tokenizer
    options = ("(A)", "(B) longer")
    assert single_token_ids(tok, options) is None
    (row,) = option_logprobs(model, tok, ["Agree or disagree?"], [options])
    hand = [sum(v) / len(v) for v in (_hand_logprobs(model, tok, "Agree or disagree?", o) for o in options)]
    assert row == pytest.approx(hand, abs=1e-4)


def test_mmlu_style_accuracy_through_the_harness_matches_hand_argmax(model_and_tokenizer):
    model, tok = model_and_tokenizer
    items = tuple(EvalItem(id=f"q{i}", prompt=q, options=("A", "B", "C", "D"), answer=a)
                  for i, (q, a) in enumerate(MMLU_STYLE))
    suite = Suite(name="mini-mmlu", kind=CHOICE, metric="accuracy", better="higher", split="3 hand-written", items=items)
    report = evaluate(model, tok, {"base": None}, [suite], judge=RefusalJudge(relevance=False), progress=False, n_boot=100)
    hand = []
    for question, answer in MMLU_STYLE:
        scores = [_hand_logprobs(model, tok, question, letter)[0] for letter in "ABCD"]
        hand.append(float(max(range(4), key=scores.__getitem__) == answer))
    result = report.suite("mini-mmlu").arms["base"]
    assert result.values.values == hand
    assert result.estimate.value == pytest.approx(sum(hand) / 3)


def test_completion_nll_is_the_summed_negative_log_likelihood(model_and_tokenizer):
    model, tok = model_and_tokenizer
    pairs = [("Tell me about the sea.", "The sea is wide and deep."), ("Hi", "Hello there, friend!")]
    out = completion_nll(model, tok, pairs, max_tokens=10)
    for (prompt, text), (nll, count) in zip(pairs, out):
        hand = _hand_logprobs(model, tok, prompt, text)[:10]
        assert count == len(hand) == 10
        assert nll == pytest.approx(-sum(hand), abs=1e-3)


def test_kl_is_zero_for_the_same_model_and_positive_under_steering(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompts = ["How do tides work?", "Name a fruit."]
    base = next_token_logprobs(model, tok, prompts)
    same = kl_sums(base, next_token_logprobs(model, tok, prompts))
    assert all(abs(s) < 1e-6 and n == len(encode_prompt(tok, p)) for (s, n), p in zip(same, prompts))
    steered = SteeredModel(model, random_adapter(model, additive_layer=1))
    try:
        moved = kl_sums(base, next_token_logprobs(steered, tok, prompts))
    finally:
        steered.detach()
    assert all(s > 1e-4 for s, _ in moved)


def test_by_length_restores_the_original_order():
    items = ["ccc", "a", "bb", "dddd"]
    seen = []
    out = by_length(items, [len(x) for x in items], lambda chunk: seen.extend(chunk) or [x.upper() for x in chunk])
    assert seen == ["a", "bb", "ccc", "dddd"]
    assert out == ["CCC", "A", "BB", "DDDD"]


class _NoKeep(torch.nn.Module):
    """The same model behind a forward that does not take ``logits_to_keep``: every position's logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)


def test_completion_logprobs_keep_only_the_last_logits_and_agree_with_every_position(model_and_tokenizer):
    """Completions of different lengths in one left-padded batch, longer than ``max_tokens`` too: the
    last-positions shortcut gives the hand-computed mean log-probability, as the full logits do."""
    model, tok = model_and_tokenizer
    items = [("Hi", "a"), ("A much longer prompt here", "some longer completion text"), ("Mid prompt", "xyz")]
    fast = completion_logprobs(model, tok, items, max_tokens=8, batch_size=3)
    full = completion_logprobs(_NoKeep(model), tok, items, max_tokens=8, batch_size=3)
    for (prompt, completion), got, every in zip(items, fast.tolist(), full.tolist()):
        hand = _hand_logprobs(model, tok, prompt, completion)[:8]
        assert got == pytest.approx(sum(hand) / len(hand), abs=1e-4)
        assert every == pytest.approx(got, abs=1e-5)
