"""Recipes: one TOML file per issue kind, validated against a small typed schema.

A recipe is data, not code: the issue in words, which sample builder reads the packaged datasets,
seed examples of the desired response, and defaults for layers, strength and evaluation. A wrong
field must fail at load time with the file and the field named, not deep inside a compile.
"""

from __future__ import annotations

import importlib.resources
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

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


# field -> (python type(s), required)
_TOP = {"name": (str, True), "issue": (str, True), "builder": (str, True), "desired": (str, True),
        "undesired": (str, True), "refusals": (list, True), "defaults": (dict, True), "evaluation": (dict, True)}
_DEFAULTS = {"layers": (list, True), "strength": ((int, float), True), "seed": (int, False)}
_EVALUATION = {"max_new_tokens": (int, True), "groups": (dict, True)}
DIRECTIONS = ("up", "down", "same")


def _check(table: dict, schema: dict, where: str, prefix: str = "") -> None:
    for key in table:
        if key not in schema:
            raise MasteerError(f"{where}: unknown field {prefix}{key!r}; expected one of {sorted(schema)}")
    for key, (types, required) in schema.items():
        if key not in table:
            if required:
                raise MasteerError(f"{where}: missing required field {prefix}{key!r}")
            continue
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, types):
            expected = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
            raise MasteerError(f"{where}: field {prefix}{key!r} must be {expected}, got "
                               f"{type(value).__name__} {value!r}")


def parse_recipe(data: dict, where: str) -> Recipe:
    _check(data, _TOP, where)
    _check(data["defaults"], _DEFAULTS, where, "defaults.")
    _check(data["evaluation"], _EVALUATION, where, "evaluation.")
    if not data["refusals"] or not all(isinstance(r, str) and r.strip() for r in data["refusals"]):
        raise MasteerError(f"{where}: field 'refusals' must be a non-empty list of non-empty strings")
    layers = data["defaults"]["layers"]
    if not layers or not all(isinstance(l, int) and not isinstance(l, bool) and l >= 0 for l in layers):
        raise MasteerError(f"{where}: field 'defaults.layers' must be a non-empty list of layer indices")
    for group, direction in data["evaluation"]["groups"].items():
        if direction not in DIRECTIONS:
            raise MasteerError(f"{where}: field 'evaluation.groups.{group}' must be one of {DIRECTIONS}, "
                               f"got {direction!r}")
    return Recipe(
        name=data["name"], issue=data["issue"], builder=data["builder"], desired=data["desired"],
        undesired=data["undesired"], refusals=tuple(data["refusals"]),
        defaults=RecipeDefaults(layers=tuple(layers), strength=float(data["defaults"]["strength"]),
                                seed=int(data["defaults"].get("seed", 0))),
        evaluation=RecipeEvaluation(max_new_tokens=data["evaluation"]["max_new_tokens"],
                                    groups=dict(data["evaluation"]["groups"])),
        path=where, raw=data)


def builtin_recipes() -> dict[str, Path]:
    folder = importlib.resources.files("masteer.recipes")
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".toml")}


def load_recipe(name_or_path: str) -> Recipe:
    """A built-in recipe by name, or a TOML file by path."""
    builtin = builtin_recipes()
    if name_or_path in builtin:
        path = builtin[name_or_path]
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise MasteerError(f"no built-in recipe named {name_or_path!r} and no file at that path; "
                               f"built-in recipes: {', '.join(sorted(builtin))}")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise MasteerError(f"{path}: not valid TOML: {exc}") from None
    return parse_recipe(data, str(path))
