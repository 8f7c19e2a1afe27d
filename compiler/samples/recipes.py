"""Recipes: one TOML file per issue kind, validated against a small typed schema.

A recipe is data, not code: the issue in words, which sample builder reads the packaged datasets,
seed examples of the desired and undesired response, neutral prompts the repair must leave alone,
and defaults for layers, strength and evaluation. A wrong field must fail at load time with the
file and the field named (``'defaults.strength'``, ``'seeds[2].positive'``), not deep inside a
compile.

Schema (``*`` = required):

=========================  ==============================================================================
field                      meaning
=========================  ==============================================================================
name* issue* builder*      short name; the issue in plain words; the sample builder (``refusal``,
                           ``autotester``)
desired* undesired*        the response style the repair should produce, and the one it should remove
refusals                   seed refusals (required by the ``refusal`` builder, which pairs them with prompts)
description                longer notes: what the issue covers, what the data are, what a 135M model can show
axis                       what positive and negative completions differ on: ``refusal`` (positive refuses,
                           negative complies), ``compliance`` (the reverse), ``negation`` (positive denies
                           or corrects the claim the negative makes), ``labelled`` (pairs come labelled from
                           a dataset); the AutoTester's reviewer checks pairs against it
scenarios keywords         the situations the issue shows up in; words that put a prompt on the issue's topic
datasets                   packaged seed sources the retriever draws from (see ``autotester.corpus.SOURCES``)
neutral                    prompts on which steering must stay silent (restraint)
[[seeds]]                  seed examples: ``prompt``*, ``positive``*, ``negative``*, ``scenario``
[defaults]*                ``layers``* (candidate layer indices), ``strength``* (> 0, finite), ``seed``
[evaluation]*              ``max_new_tokens``* (> 0), ``groups``* (group -> up/down/same), ``metric``
                           (``refusal``: judged refusal rate; ``preference``: held-out log-odds of positive
                           over negative; ``choice``: accuracy of the truthful option), ``description``
[autotester]               ``per_scenario`` (target prompts kept per scenario), ``neutral`` (neutral prompts
                           kept), ``llm`` (let an LLM backend paraphrase prompts and write responses)
=========================  ==============================================================================
"""

from __future__ import annotations

import importlib.resources
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from masteer.runtime.bounds import MAX_STRENGTH
from masteer.runtime.errors import MasteerError


@dataclass(frozen=True)
class RecipeDefaults:
    layers: tuple[int, ...]
    strength: float
    seed: int = 0


@dataclass(frozen=True)
class RecipeEvaluation:
    max_new_tokens: int
    groups: dict[str, str]
    metric: str = "refusal"
    description: str = ""


@dataclass(frozen=True)
class SeedExample:
    """A hand-written contrast: the same prompt answered in the desired and the undesired style."""
    prompt: str
    positive: str
    negative: str
    scenario: str = ""


@dataclass(frozen=True)
class AutoTesterSettings:
    per_scenario: int = 24
    neutral: int = 120
    llm: bool = True


@dataclass(frozen=True)
class Recipe:
    name: str
    issue: str
    builder: str
    desired: str
    undesired: str
    refusals: tuple[str, ...]
    defaults: RecipeDefaults
    evaluation: RecipeEvaluation
    path: str = ""
    raw: dict = field(default_factory=dict, compare=False, repr=False)
    description: str = ""
    axis: str = "refusal"
    scenarios: tuple[str, ...] = ()
    keywords: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()
    neutral: tuple[str, ...] = ()
    seeds: tuple[SeedExample, ...] = ()
    autotester: AutoTesterSettings = AutoTesterSettings()


DIRECTIONS = ("up", "down", "same")
AXES = ("refusal", "compliance", "negation", "labelled")
METRICS = ("refusal", "preference", "choice")
BUILDERS_NEEDING_REFUSALS = ("refusal",)

_TEXT_LIST = "list of strings"
# field -> (python type(s), required); the string _TEXT_LIST means a list of non-empty strings
_TOP = {"name": (str, True), "issue": (str, True), "builder": (str, True), "desired": (str, True),
        "undesired": (str, True), "refusals": (_TEXT_LIST, False), "defaults": (dict, True),
        "evaluation": (dict, True), "description": (str, False), "axis": (str, False),
        "scenarios": (_TEXT_LIST, False), "keywords": (_TEXT_LIST, False), "datasets": (_TEXT_LIST, False),
        "neutral": (_TEXT_LIST, False), "seeds": (list, False), "autotester": (dict, False)}
_DEFAULTS = {"layers": (list, True), "strength": ((int, float), True), "seed": (int, False)}
_EVALUATION = {"max_new_tokens": (int, True), "groups": (dict, True), "metric": (str, False),
               "description": (str, False)}
_SEED = {"prompt": (str, True), "positive": (str, True), "negative": (str, True), "scenario": (str, False)}
_AUTOTESTER = {"per_scenario": (int, False), "neutral": (int, False), "llm": (bool, False)}


def _type_names(types) -> str:
    return " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))


def _check(table: dict, schema: dict, where: str, prefix: str = "") -> None:
    """Unknown keys, missing required keys and wrong types, each naming ``prefix + key`` as one name."""
    for key in table:
        if key not in schema:
            raise MasteerError(f"{where}: unknown field {prefix + key!r}; expected one of {sorted(schema)}")
    for key, (types, required) in schema.items():
        name = prefix + key
        if key not in table:
            if required:
                raise MasteerError(f"{where}: missing required field {name!r}")
            continue
        value = table[key]
        if types == _TEXT_LIST:
            if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
                raise MasteerError(f"{where}: field {name!r} must be a list of non-empty strings, got "
                                   f"{type(value).__name__} {value!r}")
            continue
        wants_bool = types is bool
        if isinstance(value, bool) != wants_bool or not isinstance(value, types):
            raise MasteerError(f"{where}: field {name!r} must be {_type_names(types)}, got "
                               f"{type(value).__name__} {value!r}")


def _one_of(value: str, allowed: tuple[str, ...], where: str, name: str) -> str:
    if value not in allowed:
        raise MasteerError(f"{where}: field {name!r} must be one of {allowed}, got {value!r}")
    return value


def _positive_int(value: int, where: str, name: str) -> int:
    if value <= 0:
        raise MasteerError(f"{where}: field {name!r} must be a positive integer, got {value}")
    return value


def _seeds(items: list, where: str) -> tuple[SeedExample, ...]:
    out = []
    for i, item in enumerate(items):
        name = f"seeds[{i}]"
        if not isinstance(item, dict):
            raise MasteerError(f"{where}: field {name!r} must be a table with prompt, positive and negative, got "
                               f"{type(item).__name__} {item!r}")
        _check(item, _SEED, where, f"{name}.")
        for key in ("prompt", "positive", "negative"):
            if not item[key].strip():
                raise MasteerError(f"{where}: field {f'{name}.{key}'!r} must be a non-empty string")
        if item["positive"].strip() == item["negative"].strip():
            raise MasteerError(f"{where}: field {f'{name}.negative'!r} equals {f'{name}.positive'!r}; a seed "
                               f"example must contrast the two")
        out.append(SeedExample(prompt=item["prompt"].strip(), positive=item["positive"].strip(),
                               negative=item["negative"].strip(), scenario=item.get("scenario", "").strip()))
    return tuple(out)


def parse_recipe(data: dict, where: str) -> Recipe:
    _check(data, _TOP, where)
    _check(data["defaults"], _DEFAULTS, where, "defaults.")
    _check(data["evaluation"], _EVALUATION, where, "evaluation.")
    _check(data.get("autotester", {}), _AUTOTESTER, where, "autotester.")
    if data["builder"] in BUILDERS_NEEDING_REFUSALS and "refusals" not in data:
        raise MasteerError(f"{where}: missing required field 'refusals' (the {data['builder']!r} builder pairs "
                           f"them with prompts)")
    if "refusals" in data and not data["refusals"]:
        raise MasteerError(f"{where}: field 'refusals' must be a non-empty list of non-empty strings")
    layers = data["defaults"]["layers"]
    if not layers or not all(isinstance(l, int) and not isinstance(l, bool) and l >= 0 for l in layers):
        raise MasteerError(f"{where}: field 'defaults.layers' must be a non-empty list of layer indices")
    strength = data["defaults"]["strength"]
    if not (math.isfinite(strength) and 0 < strength <= MAX_STRENGTH):
        raise MasteerError(f"{where}: field 'defaults.strength' must be a positive finite number up to "
                           f"{MAX_STRENGTH:g}, got {strength}")
    evaluation = data["evaluation"]
    max_new_tokens = _positive_int(evaluation["max_new_tokens"], where, "evaluation.max_new_tokens")
    for group, direction in evaluation["groups"].items():
        if direction not in DIRECTIONS:
            raise MasteerError(f"{where}: field {f'evaluation.groups.{group}'!r} must be one of {DIRECTIONS}, "
                               f"got {direction!r}")
    metric = _one_of(evaluation.get("metric", "refusal"), METRICS, where, "evaluation.metric")
    axis = _one_of(data.get("axis", "refusal"), AXES, where, "axis")
    settings = data.get("autotester", {})
    autotester = AutoTesterSettings(
        per_scenario=_positive_int(settings.get("per_scenario", AutoTesterSettings.per_scenario), where,
                                   "autotester.per_scenario"),
        neutral=_positive_int(settings.get("neutral", AutoTesterSettings.neutral), where, "autotester.neutral"),
        llm=settings.get("llm", AutoTesterSettings.llm))
    strings = lambda key: tuple(s.strip() for s in data.get(key, ()))  # noqa: E731
    return Recipe(
        name=data["name"], issue=data["issue"], builder=data["builder"], desired=data["desired"],
        undesired=data["undesired"], refusals=tuple(data.get("refusals", ())),
        defaults=RecipeDefaults(layers=tuple(layers), strength=float(strength),
                                seed=int(data["defaults"].get("seed", 0))),
        evaluation=RecipeEvaluation(max_new_tokens=max_new_tokens, groups=dict(evaluation["groups"]),
                                    metric=metric, description=evaluation.get("description", "").strip()),
        path=where, raw=data, description=data.get("description", "").strip(), axis=axis,
        scenarios=strings("scenarios"), keywords=strings("keywords"), datasets=strings("datasets"),
        neutral=strings("neutral"), seeds=_seeds(data.get("seeds", []), where), autotester=autotester)


def builtin_recipes() -> dict[str, Path]:
    folder = importlib.resources.files("masteer.recipes")
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".toml")}


def is_recipe_reference(text: str) -> bool:
    """Whether ``text`` names a built-in recipe or a TOML file, rather than describing an issue in words.

    One word (no spaces) counts as a recipe name, so a mistyped name is reported as an unknown
    recipe instead of being compiled as a one-word issue.
    """
    text = text.strip()
    if text in builtin_recipes() or text.endswith(".toml") or not any(ch.isspace() for ch in text):
        return True
    try:
        return Path(text).is_file() or Path(text).is_dir()   # a folder is a mistaken recipe path, said so
    except (OSError, ValueError):  # a long sentence is not a valid file name
        return False


def load_recipe(name_or_path: str) -> Recipe:
    """A built-in recipe by name, or a TOML file by path."""
    builtin = builtin_recipes()
    if name_or_path in builtin:
        path = builtin[name_or_path]
    else:
        path = Path(name_or_path)
        if path.is_dir():
            raise MasteerError(f"recipe {name_or_path} is a folder; give a recipe's TOML file, or a built-in "
                               f"recipe name: {', '.join(sorted(builtin))}")
        if not path.is_file():
            raise MasteerError(f"no built-in recipe named {name_or_path!r} and no file at that path; "
                               f"built-in recipes: {', '.join(sorted(builtin))}")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise MasteerError(f"{path}: not UTF-8 text ({exc}); recipes are UTF-8 TOML files") from None
    except tomllib.TOMLDecodeError as exc:
        raise MasteerError(f"{path}: not valid TOML: {exc}") from None
    return parse_recipe(data, str(path))
