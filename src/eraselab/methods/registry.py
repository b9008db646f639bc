"""The method registry: name → Eraser class (each method module registers itself on import)."""
from __future__ import annotations

from ..errors import EraseLabError

_METHODS: dict[str, type] = {}


def register(cls):
    _METHODS[cls.name] = cls
    return cls


def get_method(name: str):
    if name not in _METHODS:
        raise EraseLabError(f"unknown method {name!r}; choose one of {', '.join(sorted(_METHODS))} "
                            "(`eraselab methods` lists them)")
    return _METHODS[name]


def method_names() -> list[str]:
    return list(_METHODS)
