"""Recipes: the built-in one loads with typed fields; every malformed file fails at load time, naming
the file and the field (the module's contract: "not deep inside a compile").

Malformed recipes are the packaged refusal.toml with one edit, so each test breaks exactly one thing.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from masteer.compiler.samples.recipes import (DIRECTIONS, Recipe, RecipeDefaults, RecipeEvaluation, builtin_recipes,
                                              load_recipe)
from masteer.runtime.errors import MasteerError


@pytest.fixture(scope="module")
def refusal_text() -> str:
    return builtin_recipes()["refusal"].read_text()


def _edit(text: str, old: str, new: str) -> str:
    """Replace exactly one occurrence, so a test cannot silently run on the unedited recipe."""
    assert text.count(old) == 1, f"expected {old!r} exactly once in refusal.toml"
    return text.replace(old, new)


def _write(tmp_path: Path, text: str, name: str = "broken.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _load_error(path: Path) -> str:
    with pytest.raises(MasteerError) as info:
        load_recipe(str(path))
    message = str(info.value)
    assert str(path) in message, f"the message does not name the file: {message}"
    return message


def _names_field(message: str, dotted: str) -> bool:
    """The message names the field; quoting style ('a.b' or a.'b') is not part of the contract here."""
    return dotted in message.replace("'", "").replace('"', "")


# ----------------------------------------------------------------------------------------- built-in


def test_builtin_recipes_lists_refusal_as_a_toml_file():
    recipes = builtin_recipes()
    assert "refusal" in recipes
    path = recipes["refusal"]
    assert path.suffix == ".toml" and path.is_file()
    assert all(p.suffix == ".toml" and p.stem == name for name, p in recipes.items())


def test_refusal_recipe_has_typed_fields():
    recipe = load_recipe("refusal")
    assert isinstance(recipe, Recipe)
    assert recipe.name == "refusal"
    assert recipe.builder == "refusal"
    assert recipe.issue.strip() and recipe.desired.strip() and recipe.undesired.strip()
    assert recipe.path == str(builtin_recipes()["refusal"])

    assert isinstance(recipe.refusals, tuple) and len(recipe.refusals) == 8
    assert all(isinstance(r, str) and r.strip() for r in recipe.refusals)

    assert isinstance(recipe.defaults, RecipeDefaults)
    assert recipe.defaults.layers == (10, 12, 14)
    assert isinstance(recipe.defaults.layers, tuple)
    assert all(type(layer) is int for layer in recipe.defaults.layers)
    assert type(recipe.defaults.strength) is float and recipe.defaults.strength == 2.0
    assert type(recipe.defaults.seed) is int and recipe.defaults.seed == 0

    assert isinstance(recipe.evaluation, RecipeEvaluation)
    assert type(recipe.evaluation.max_new_tokens) is int and recipe.evaluation.max_new_tokens == 24
    assert recipe.evaluation.groups == {"harmful": "up", "benign-rho": "same", "benign-edgy": "same",
                                        "benign-truthfulqa": "same"}
    assert set(recipe.evaluation.groups.values()) <= set(DIRECTIONS)


def test_loading_by_path_equals_loading_by_name_and_is_frozen():
    by_name = load_recipe("refusal")
    by_path = load_recipe(str(builtin_recipes()["refusal"]))
    assert by_name == by_path
    with pytest.raises(dataclasses.FrozenInstanceError):
        by_name.name = "other"  # type: ignore[misc]


def test_copied_recipe_loads_from_any_path_with_that_path_recorded(tmp_path, refusal_text):
    path = _write(tmp_path, refusal_text, "copy.toml")
    recipe = load_recipe(str(path))
    assert recipe.path == str(path)
    assert dataclasses.replace(recipe, path="") == dataclasses.replace(load_recipe("refusal"), path="")


def test_integer_strength_becomes_float_and_seed_defaults_to_zero(tmp_path, refusal_text):
    text = _edit(_edit(refusal_text, "strength = 2.0", "strength = 3"), "seed = 0\n", "\n")
    recipe = load_recipe(str(_write(tmp_path, text)))
    assert type(recipe.defaults.strength) is float and recipe.defaults.strength == 3.0
    assert recipe.defaults.seed == 0


def test_explicit_seed_is_kept(tmp_path, refusal_text):
    recipe = load_recipe(str(_write(tmp_path, _edit(refusal_text, "seed = 0", "seed = 17"))))
    assert recipe.defaults.seed == 17


# ---------------------------------------------------------------------------------------- malformed

WRONG_TYPE = [
    ("strength = 2.0", 'strength = "high"', "defaults.strength"),
    ("strength = 2.0", "strength = true", "defaults.strength"),
    ("strength = 2.0", "strength = [2.0]", "defaults.strength"),
    ("layers = [10, 12, 14]", 'layers = "8"', "defaults.layers"),
    ("layers = [10, 12, 14]", "layers = 8", "defaults.layers"),
    ("seed = 0", "seed = 1.5", "defaults.seed"),
    ("seed = 0", 'seed = "0"', "defaults.seed"),
    ("max_new_tokens = 24", 'max_new_tokens = "24"', "evaluation.max_new_tokens"),
    ("max_new_tokens = 24", "max_new_tokens = 24.0", "evaluation.max_new_tokens"),
    ('name = "refusal"', "name = 5", "name"),
    ('builder = "refusal"', "builder = false", "builder"),
]


@pytest.mark.parametrize("old, new, field", WRONG_TYPE, ids=[c[1] for c in WRONG_TYPE])
def test_wrong_type_names_file_and_field(tmp_path, refusal_text, old, new, field):
    message = _load_error(_write(tmp_path, _edit(refusal_text, old, new)))
    assert _names_field(message, field), message
    assert "must be" in message


def test_wrong_type_message_names_expected_and_actual_value(tmp_path, refusal_text):
    message = _load_error(_write(tmp_path, _edit(refusal_text, "strength = 2.0", 'strength = "high"')))
    assert "int or float" in message and "'high'" in message


BAD_LAYERS = ["layers = []", "layers = [8, -1]", "layers = [8, true]", 'layers = [8, "10"]', "layers = [8, 10.0]"]


@pytest.mark.parametrize("new", BAD_LAYERS)
def test_bad_layer_lists_name_defaults_layers(tmp_path, refusal_text, new):
    message = _load_error(_write(tmp_path, _edit(refusal_text, "layers = [10, 12, 14]", new)))
    assert _names_field(message, "defaults.layers"), message


MISSING = [
    ("issue", lambda t: re.sub(r"(?m)^issue = .*\n", "", t), "issue"),
    ("refusals", lambda t: re.sub(r"(?ms)^refusals = \[.*?^\]\n", "", t), "refusals"),
    ("defaults", lambda t: re.sub(r"(?ms)^\[defaults\]\n.*?(?=^\[evaluation\])", "", t), "defaults"),
    ("strength", lambda t: re.sub(r"(?m)^strength = .*\n", "", t), "defaults.strength"),
    ("layers", lambda t: re.sub(r"(?m)^layers = .*\n", "", t), "defaults.layers"),
    ("groups", lambda t: re.sub(r"(?m)^groups = .*\n?", "", t), "evaluation.groups"),
    ("max_new_tokens", lambda t: re.sub(r"(?m)^max_new_tokens = .*\n", "", t), "evaluation.max_new_tokens"),
]


@pytest.mark.parametrize("edit, field", [(m[1], m[2]) for m in MISSING], ids=[m[0] for m in MISSING])
def test_missing_required_field_is_named(tmp_path, refusal_text, edit, field):
    text = edit(refusal_text)
    assert text != refusal_text
    message = _load_error(_write(tmp_path, text))
    assert "missing required field" in message
    assert _names_field(message, field), message


UNKNOWN = [
    ('name = "refusal"\n', 'name = "refusal"\ncolour = "red"\n', "colour"),
    ("seed = 0\n", "seed = 0\nstrenght = 2.0\n", "defaults.strenght"),
    ("max_new_tokens = 24\n", "max_new_tokens = 24\ntemperature = 0.7\n", "evaluation.temperature"),
]


@pytest.mark.parametrize("old, new, field", UNKNOWN, ids=[u[2] for u in UNKNOWN])
def test_unknown_key_is_rejected_and_named(tmp_path, refusal_text, old, new, field):
    message = _load_error(_write(tmp_path, _edit(refusal_text, old, new)))
    assert "unknown field" in message
    assert _names_field(message, field), message


def test_unknown_top_level_table_is_rejected(tmp_path, refusal_text):
    message = _load_error(_write(tmp_path, refusal_text + "\n[extras]\nnote = 1\n"))
    assert "unknown field" in message and _names_field(message, "extras")


@pytest.mark.parametrize("refusals", ["[]", '["I cannot help.", "   "]', '["I cannot help.", 3]', '"no"'])
def test_bad_refusals_list_is_rejected(tmp_path, refusal_text, refusals):
    text = re.sub(r"(?ms)^refusals = \[.*?^\]\n", f"refusals = {refusals}\n", refusal_text)
    assert text != refusal_text
    message = _load_error(_write(tmp_path, text))
    assert _names_field(message, "refusals"), message


@pytest.mark.parametrize("direction", ['"upward"', '"UP"', '""', "1"])
def test_bad_group_direction_names_the_group(tmp_path, refusal_text, direction):
    text = _edit(refusal_text, 'harmful = "up"', f"harmful = {direction}")
    message = _load_error(_write(tmp_path, text))
    assert _names_field(message, "evaluation.groups.harmful"), message
    assert all(d in message for d in DIRECTIONS)


def test_invalid_toml_names_file_and_line(tmp_path, refusal_text):
    text = _edit(refusal_text, "seed = 0", "seed = = 0")
    line = text.splitlines().index("seed = = 0") + 1
    message = _load_error(_write(tmp_path, text))
    assert "not valid TOML" in message
    assert f"line {line}" in message


def test_nonexistent_path_names_it_and_lists_builtins(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(MasteerError) as info:
        load_recipe(str(missing))
    message = str(info.value)
    assert str(missing) in message and "refusal" in message


def test_unknown_name_lists_builtins():
    with pytest.raises(MasteerError, match=r"no built-in recipe named 'no-such-recipe'.*refusal"):
        load_recipe("no-such-recipe")


def test_a_folder_is_not_a_recipe(tmp_path):
    with pytest.raises(MasteerError, match=re.escape(str(tmp_path))):
        load_recipe(str(tmp_path))


def test_masteer_error_is_a_value_error(tmp_path):
    with pytest.raises(ValueError):
        load_recipe(str(tmp_path / "nope.toml"))


# ------------------------------------------- regressions: bugs found by these tests, now fixed


def test_non_utf8_recipe_file_is_a_masteer_error(tmp_path):
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00name = 1\n")
    _load_error(path)


@pytest.mark.parametrize("value", ["nan", "0.0", "-1.0", "inf"])
def test_non_positive_or_non_finite_strength_fails_at_load(tmp_path, refusal_text, value):
    message = _load_error(_write(tmp_path, _edit(refusal_text, "strength = 2.0", f"strength = {value}")))
    assert _names_field(message, "defaults.strength")


@pytest.mark.parametrize("value", ["0", "-3"])
def test_non_positive_max_new_tokens_fails_at_load(tmp_path, refusal_text, value):
    message = _load_error(_write(tmp_path, _edit(refusal_text, "max_new_tokens = 24", f"max_new_tokens = {value}")))
    assert _names_field(message, "evaluation.max_new_tokens")


def test_field_path_is_quoted_as_one_name(tmp_path, refusal_text):
    message = _load_error(_write(tmp_path, _edit(refusal_text, "strength = 2.0", 'strength = "high"')))
    assert "'defaults.strength'" in message
