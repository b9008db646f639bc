"""The method registry: name → Eraser class.

Built-in methods are listed here as lazy "module:attr" entries, so listing them imports no method module; a
method module also registers its classes with `@register` when imported (the same classes, so no conflict).
Third-party packages add methods under the entry-point group "eraselab.methods" (see eraselab/registry.py).
"""
from __future__ import annotations

from ..registry import Registry
from .base import Eraser

METHODS: Registry[type[Eraser]] = Registry("method", base=Eraser, entry_points="eraselab.methods",
                                           hint="`eraselab methods` lists them")

# The order is the order `eraselab methods` lists them in.
for _name, _target in {
    "esd-x": "eraselab.methods.esd:ESDX",
    "esd-u": "eraselab.methods.esd:ESDU",
    "esd-x-strict": "eraselab.methods.esd:ESDXStrict",
    "uce": "eraselab.methods.uce:UCE",
    "rece": "eraselab.methods.rece:RECE",
    "ap": "eraselab.methods.ap:AP",
    "age": "eraselab.methods.age:AGE",
    "ca": "eraselab.methods.ca:CA",
    "negprompt": "eraselab.methods.negprompt:NegativePrompt",
    "sld": "eraselab.methods.sld:SLD",
    "advunlearn": "eraselab.methods.advunlearn:AdvUnlearn",
    "spm": "eraselab.methods.spm:SPM",
    "mace": "eraselab.methods.mace:MACE",
    "receler": "eraselab.methods.receler:Receler",
}.items():
    METHODS.add(_name, _target)


def register(cls: type[Eraser]) -> type[Eraser]:
    """Class decorator: register an Eraser subclass under its `name`."""
    METHODS.add(cls.name, cls)
    return cls


def get_method(name: str) -> type[Eraser]:
    return METHODS.get(name)


def method_names() -> list[str]:
    return METHODS.names()
