"""Parsing helpers shared by commands: comma lists and `key=value` settings."""
from __future__ import annotations

from ..errors import EraseLabError


def comma_list(text: str | None) -> tuple[str, ...]:
    if text is None:
        return ()
    return tuple(s.strip() for s in text.split(",") if s.strip())


def key_values(items: list[str] | None, what: str = "--config") -> dict[str, str]:
    """["lr=1e-5", "iterations=200"] → {"lr": "1e-5", "iterations": "200"} (values stay strings; the consumer
    converts them to its typed fields and names any wrong type)."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise EraseLabError(f"{what} {item!r} is not key=value; write e.g. {what} iterations=200")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def scoped_key_values(items: list[str] | None, what: str) -> dict[str, dict[str, str]]:
    """["uce.lamb=0.5", "ap.iterations=100"] → {"uce": {"lamb": "0.5"}, "ap": {"iterations": "100"}}."""
    out: dict[str, dict[str, str]] = {}
    for key, value in key_values(items, what).items():
        if "." not in key:
            raise EraseLabError(f"{what} {key}={value} needs a scope; write e.g. {what} uce.{key}={value}")
        scope, name = key.split(".", 1)
        out.setdefault(scope, {})[name] = value
    return out


def distinct(values: list[str] | tuple[str, ...] | None, flag: str) -> tuple[str, ...]:
    """The values of a repeatable option, refusing one given twice (in any letter case): a duplicate target is
    a typo, and silently merging it would make the run differ from what was asked."""
    seen: dict[str, str] = {}
    for v in values or ():
        key = v.strip().lower()
        if key in seen:
            raise EraseLabError(f"{flag} {v!r} is given twice; list each concept once")
        seen[key] = v
    return tuple(values or ())
