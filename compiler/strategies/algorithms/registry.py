"""Algorithm registry: built-ins register themselves; plugins come from the entry-point group.

A new algorithm is one new file here (decorated with ``@register``) or one plugin package that
declares ``[project.entry-points."masteer.algorithms"] name = "module:Class"``; nothing else changes.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from masteer.runtime.errors import MasteerError

from .base import Algorithm

ENTRY_POINT_GROUP = "masteer.algorithms"
_REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} needs a non-empty class attribute `name`")
    _REGISTRY[name] = cls
    return cls


def _load_plugins() -> None:
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name not in _REGISTRY:
            cls = entry.load()
            _REGISTRY[entry.name] = cls


def available() -> list[str]:
    _load_plugins()
    return sorted(_REGISTRY)


def get_algorithm(name: str, **kwargs) -> Algorithm:
    if name not in _REGISTRY:
        _load_plugins()
    if name not in _REGISTRY:
        raise MasteerError(f"unknown algorithm {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name](**kwargs)
