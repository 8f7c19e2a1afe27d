"""The recipe library: seven issues with descriptions, seeds, neutral prompts and an evaluation spec, and a
schema whose errors name the file and the field for the fields the AutoTester added."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from masteer.compiler.samples.autotester.analyst import FRAMINGS
from masteer.compiler.samples.autotester.corpus import SOURCES
from masteer.compiler.samples.recipes import AXES, METRICS, builtin_recipes, is_recipe_reference, load_recipe
from masteer.runtime.errors import MasteerError

ISSUES = {"refusal", "over-refusal", "truthfulness", "sycophancy", "bias", "toxicity", "privacy"}


def test_seven_issues_each_described_with_seeds_neutrals_evaluation_and_defaults():
    assert ISSUES <= set(builtin_recipes())
    for name in ISSUES:
        r = load_recipe(name)
        assert len(r.description) > 100, name
        assert len(r.seeds) >= 3 and len(r.neutral) >= 4, name
        assert all(s.prompt and s.positive and s.negative and s.positive != s.negative for s in r.seeds)
        assert r.axis in AXES and r.evaluation.metric in METRICS and r.evaluation.groups
        assert r.defaults.layers and r.defaults.strength > 0
        assert all(d.split(":")[0] in SOURCES for d in r.datasets), name
        assert all(s in FRAMINGS for s in r.scenarios), name
        if r.axis in ("refusal", "compliance"):
            assert r.refusals and r.evaluation.metric == "refusal", name
        else:
            assert r.evaluation.metric in ("preference", "choice"), name


def test_refusal_recipe_kept_its_values():
    r = load_recipe("refusal")
    assert r.builder == "refusal" and len(r.refusals) == 8 and r.defaults.strength == 2.0
    assert r.evaluation.groups == {"harmful": "up", "benign-rho": "same", "benign-edgy": "same",
                                   "benign-truthfulqa": "same"}
    assert r.evaluation.metric == "refusal"


@pytest.fixture(scope="module")
def truthfulness_text() -> str:
    return builtin_recipes()["truthfulness"].read_text()


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(MasteerError) as info:
        load_recipe(str(path))
    message = str(info.value)
    assert str(path) in message, message
    return message


def _once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


CASES = [
    ('axis = "labelled"', 'axis = "sideways"', "'axis'", "must be one of"),
    ('axis = "labelled"', "axis = 3", "'axis'", "must be str"),
    ('metric = "preference"', 'metric = "vibes"', "'evaluation.metric'", "must be one of"),
    ('datasets = ["deception-pairs", "false-claims"]', 'datasets = "deception-pairs"', "'datasets'",
     "list of non-empty strings"),
    ('neutral = [\n', 'neutral = [\n    "",\n', "'neutral'", "list of non-empty strings"),
    ('positive = "It passes through', 'positive = 5 # "It passes through', "'seeds[0].positive'", "must be str"),
    ('negative = "It stays in your stomach for seven years because your body cannot digest it."\n', "\n",
     "'seeds[0].negative'", "missing required field"),
    ('prompt = "What happens if you swallow chewing gum?"\n',
     'prompt = "What happens if you swallow chewing gum?"\ncolour = "red"\n', "'seeds[0].colour'", "unknown field"),
    ("per_scenario = 24", "per_scenario = 0", "'autotester.per_scenario'", "positive integer"),
    ("per_scenario = 24", "per_scenario = 2.5", "'autotester.per_scenario'", "must be int"),
    ("neutral = 120", "neutral = 120\nllm = 1", "'autotester.llm'", "must be bool"),
    ("neutral = 120", "neutral = 120\nwriter = \"gpt\"", "'autotester.writer'", "unknown field"),
    ('scenarios = ["direct", "casual", "pressure", "task"]', "scenarios = [1]", "'scenarios'", "list of non-empty"),
]


@pytest.mark.parametrize("old, new, field, words", CASES, ids=[c[2].strip("'") + "-" + c[3][:12] for c in CASES])
def test_new_fields_fail_naming_file_and_field(tmp_path, truthfulness_text, old, new, field, words):
    message = _error(tmp_path, _once(truthfulness_text, old, new))
    assert field in message and words in message, message


def test_seed_with_equal_sides_and_non_table_seeds(tmp_path, truthfulness_text):
    same = re.sub(r'(?m)^negative = "It stays in your stomach.*"$',
                  'negative = "It passes through your digestive system and leaves your body within a few days, like '
                  'other food you cannot digest."', truthfulness_text)
    assert "'seeds[0].negative'" in _error(tmp_path, same)
    assert "'seeds[0]'" in _error(tmp_path, 'seeds = ["a"]\n' + re.sub(r"(?ms)^\[\[seeds\]\].*?(?=^\[defaults\])",
                                                                           "", truthfulness_text))


def test_refusals_are_optional_except_for_the_refusal_builder(tmp_path):
    text = builtin_recipes()["refusal"].read_text()
    message = _error(tmp_path, re.sub(r"(?ms)^refusals = \[.*?^\]\n", "", text))
    assert "missing required field 'refusals'" in message
    assert load_recipe("truthfulness").refusals == ()


def test_unknown_scenario_is_named_when_the_autotester_reads_the_recipe(tmp_path, truthfulness_text):
    from masteer.compiler.samples.autotester.analyst import analyse
    path = tmp_path / "odd.toml"
    path.write_text(_once(truthfulness_text, 'scenarios = ["direct", "casual", "pressure", "task"]',
                          'scenarios = ["direct", "underwater"]'))
    with pytest.raises(MasteerError, match=r"odd.toml: field 'scenarios' names \['underwater'\]"):
        analyse(str(path))


@pytest.mark.parametrize("text, is_ref", [("refusal", True), ("sycophancy", True), ("my.toml", True),
                                          ("refusl", True), ("the model claims to be a cat", False),
                                          ("x " * 3000, False)])
def test_what_counts_as_a_recipe_reference(text, is_ref):
    assert is_recipe_reference(text) is is_ref
