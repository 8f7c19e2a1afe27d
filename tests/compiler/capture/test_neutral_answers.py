"""Anchor negatives from neutral answers and decoys: which sequences are added, that algorithms never see
them, that the answers are cached, and that an anchor fitted with them stays shut on answer tokens."""

from __future__ import annotations


import torch


from tiny_models import byte_tokenizer, tiny_chat_model  # noqa: E402

from masteer.compiler.program.anchors import fit_gate  # noqa: E402
from masteer.compiler.capture.neutral_answers import ANSWER, ANSWER_CACHE, DECOY, extra_neutral_items, neutral_answers
from masteer.compiler.pipeline import fit_sequences  # noqa: E402
from masteer.compiler.samples.sample_set import NEUTRAL, TARGET, Sample, SampleSet  # noqa: E402
from masteer.runtime.hosts import GATED  # noqa: E402


def _samples(small_samples) -> list[Sample]:
    return SampleSet.load(small_samples).select(split="train")


def test_only_neutral_prompts_without_completions_get_an_answer_and_a_decoy(small_samples):
    train = _samples(small_samples)
    bare = [s for s in train if s.label == NEUTRAL and s.positive is None and s.negative is None]
    assert bare and any(s.label == NEUTRAL and s.positive is not None for s in train)  # both kinds present
    answers = {s.prompt: f"answer to {s.id}" for s in train}
    items = extra_neutral_items(train, answers, ["I'm sorry, I can't help with that."], seed=0)
    assert sorted((s.id, role) for s, role, _ in items) == sorted(
        [(s.id, ANSWER) for s in bare] + [(s.id, DECOY) for s in bare])
    assert {c for s, role, c in items if role == ANSWER} == {f"answer to {s.id}" for s in bare}


def test_decoys_are_target_completions_drawn_deterministically(small_samples):
    train = _samples(small_samples)
    decoys = [s.positive for s in train if s.label == TARGET and s.positive is not None]
    first = extra_neutral_items(train, {}, decoys, seed=3)
    assert first and all(role == DECOY and c in decoys for _, role, c in first)
    assert first == extra_neutral_items(train, {}, decoys, seed=3)
    assert extra_neutral_items(train, {}, [], seed=3) == []   # no targets with completions: nothing to borrow


def test_algorithms_never_see_answers_or_decoys_but_anchors_do(small_samples):
    train = _samples(small_samples)
    items = extra_neutral_items(train, {s.prompt: "Sure." for s in train}, ["No."], seed=0)
    plain, extended = fit_sequences(train), fit_sequences(train, items)
    assert len(extended.items) == len(plain.items) + len(items)
    inputs = extended.fit_inputs(acts=None)
    assert inputs.neutral_prompts == plain.fit_inputs(acts=None).neutral_prompts
    added = set(range(len(plain.items), len(extended.items)))
    assert added <= set(extended.anchor_negatives())
    assert not added & set(inputs.neutral_prompts)


def test_answers_are_generated_once_then_read_from_the_cache(small_samples, tmp_path):
    model, tokenizer = tiny_chat_model("llama"), byte_tokenizer()
    train = _samples(small_samples)
    lines: list[str] = []
    first = neutral_answers(model, tokenizer, train, batch_size=8, cache_dir=tmp_path, progress=False,
                            log=lines.append)
    wanted = {s.prompt for s in train if s.label == NEUTRAL and s.positive is None and s.negative is None}
    assert set(first) == wanted and all(isinstance(a, str) for a in first.values())
    assert (tmp_path / ANSWER_CACHE).exists()
    again = neutral_answers(model, tokenizer, train, batch_size=8, cache_dir=tmp_path, progress=False,
                            log=lines.append)
    assert again == first
    assert lines[-1].endswith(f"({len(wanted)} from the cache)")


def test_an_anchor_fitted_with_answers_stays_shut_on_answer_tokens():
    """Synthetic tokens: targets and neutral answers share an 'answer turn' feature that neutral prompts
    lack. Without answer negatives the anchor learns the turn and opens on neutral answers; with them it
    must use the target feature and stay shut there."""
    g = torch.Generator().manual_seed(0)
    dim, n = 16, 400

    def tokens(target: float, turn: float) -> torch.Tensor:
        x = torch.randn(n, dim, generator=g) * 0.3
        x[:, 0] += 4.0            # a near-constant coordinate (normalised hidden states have one)
        x[:, 1] += 3.0 * target   # weak target feature
        x[:, 2] += 3.0 * turn     # "this is the assistant's turn"
        return x

    targets, neutral_prompts, neutral_answers_ = tokens(0.6, 1.0), tokens(0.0, 0.0), tokens(0.0, 1.0)
    prompt_only = fit_gate(targets, neutral_prompts, GATED)
    with_answers = fit_gate(targets, torch.cat([neutral_prompts, neutral_answers_]), GATED)
    assert float((prompt_only.opening(neutral_answers_) >= 0.5).double().mean()) > 0.5   # the failure, reproduced
    assert float((with_answers.opening(neutral_answers_) >= 0.5).double().mean()) <= 0.05
    assert float((with_answers.opening(targets) >= 0.5).double().mean()) >= 0.9
