"""One registry type for everything eraselab looks up by name: methods, suites, evaluators, guidance hooks.

    METHODS = Registry("method", base=Eraser, entry_points="eraselab.methods")
    METHODS.add("uce", "eraselab.methods.uce:UCE")      # lazy: imported on first get()
    @METHODS.register("my-method")                       # or a decorator in the defining module
    class MyMethod(Eraser): ...
    METHODS.get("uce"); METHODS.names()

An entry is a class or a lazy "module:attr" string, so listing names imports nothing. A third-party package
adds entries without editing eraselab by declaring them in its packaging metadata under the registry's
entry-point group, e.g. `[project.entry-points."eraselab.methods"] my-method = "my_pkg.erasers:MyMethod"`.
Unknown names, duplicate names and entries of the wrong type fail with a one-line EraseLabError.
"""
from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import EraseLabError

T = TypeVar("T")


def _target(obj) -> str:
    """The "module:attr" string naming `obj`, to compare a lazy entry with the object it resolves to."""
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


class Registry(Generic[T]):
    """Name → class, with lazy "module:attr" entries, a base-class check and entry-point discovery.

    kind: the singular noun used in messages ("method"); base: the class every entry must subclass;
    entry_points: the packaging entry-point group searched for third-party entries; hint: appended to the
    unknown-name error (e.g. which command lists the names)."""

    def __init__(self, kind: str, base: type | None = None, entry_points: str | None = None, hint: str = ""):
        self.kind, self.base, self.entry_point_group, self.hint = kind, base, entry_points, hint
        self._entries: dict[str, object] = {}
        self._plugins_loaded = entry_points is None

    def add(self, name: str, obj: T | str) -> T | str:
        """Register `obj` (a class, or a lazy "module:attr" string) under `name`; returns `obj`.

        Registering the object a lazy entry points to (its module registering itself on import), or the same
        object again, is allowed; any other second entry for a name is an error."""
        if not isinstance(name, str) or not name.strip():
            raise EraseLabError(f"a {self.kind} needs a non-empty name, got {name!r}")
        if isinstance(obj, str):
            if obj.count(":") != 1 or not all(obj.split(":")):
                raise EraseLabError(f"lazy {self.kind} entry {name!r} must be a 'module:attr' string, "
                                    f"got {obj!r}")
        else:
            self._check_type(name, obj)
        old = self._entries.get(name)
        if old is not None and old is not obj:
            old_target = old if isinstance(old, str) else _target(old)
            new_target = obj if isinstance(obj, str) else _target(obj)
            if old_target != new_target:
                raise EraseLabError(f"{self.kind} {name!r} is registered twice ({old_target} and "
                                    f"{new_target}); give one of them another name")
            if isinstance(obj, str):  # a lazy entry for an object already registered: keep the object
                return obj
        self._entries[name] = obj
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`: `@registry.register("name")`."""

        def decorator(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorator

    def names(self) -> list[str]:
        """Every registered name, in registration order (nothing is imported)."""
        self._load_plugins()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries

    def get(self, name: str) -> T:
        """The class registered as `name` (importing it if its entry is lazy)."""
        if name not in self._entries:
            self._load_plugins()
        if name not in self._entries:
            raise EraseLabError(self._unknown(name))
        entry = self._entries[name]
        if isinstance(entry, str):
            entry = self._resolve(name, entry)
        return entry

    def _resolve(self, name: str, target: str) -> T:
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
                raise  # the module exists but something it imports does not: its own error says more
            raise EraseLabError(f"{self.kind} {name!r} is registered as {target!r}, but there is no module "
                                f"{exc.name}; fix the entry's module name (or install the package that "
                                "provides it)") from exc
        entry = self._entries[name]  # the module may have registered the object itself on import
        if isinstance(entry, str):
            try:
                entry = getattr(module, attr)
            except AttributeError:
                raise EraseLabError(f"{self.kind} {name!r} is registered as {target!r}, but {module_name} "
                                    f"has no {attr!r}; fix the entry") from None
            self._check_type(name, entry)
            self._entries[name] = entry
        return entry

    def _check_type(self, name: str, obj) -> None:
        if self.base is not None and not (isinstance(obj, type) and issubclass(obj, self.base)):
            raise EraseLabError(f"{self.kind} {name!r} must be a subclass of {self.base.__name__}, "
                                f"got {obj!r}")

    def _load_plugins(self) -> None:
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.entry_point_group):
            self.add(ep.name, ep.value)

    def _unknown(self, name: str) -> str:
        names = self.names()
        close = difflib.get_close_matches(str(name), names, n=1)
        suggestion = f"did you mean {close[0]!r}? " if close else ""
        return (f"unknown {self.kind} {name!r}; {suggestion}choose one of {', '.join(names) or 'none'}"
                + (f" ({self.hint})" if self.hint else ""))
