"""Method config fields are declared once (methods/base.py `setting`): default, help and bound in one place;
`Config.help`, `eraselab methods --verbose` and `validate` read the declaration."""
from dataclasses import dataclass

import pytest

from eraselab.cli import main
from eraselab.errors import EraseLabError
from eraselab.methods.base import NON_NEGATIVE, POSITIVE, Eraser, MethodConfig, OneOf, setting


@dataclass
class SketchConfig(MethodConfig):
    steps: int = setting(10, "sketch steps of the declaration test", POSITIVE)
    weight: float = setting(0.5, "sketch weight", NON_NEGATIVE)
    mode: str = setting("soft", "soft or hard", OneOf(("soft", "hard")))
    quiet: bool = setting(False)  # no help: not listed


@dataclass
class LongerSketchConfig(SketchConfig):
    steps: int = 40  # only the default changes: help and bound stay those SketchConfig declared


def test_help_is_derived_from_the_declarations_in_field_order():
    assert list(SketchConfig.help) == ["seed", "preset", "recipe", "steps", "weight", "mode"]
    assert SketchConfig.help["steps"] == "sketch steps of the declaration test"
    assert LongerSketchConfig.help == SketchConfig.help
    assert SketchConfig().steps == 10 and LongerSketchConfig().steps == 40


@pytest.mark.parametrize("overrides,message", [
    ({"steps": "0"}, "config steps must be positive, got 0"),
    ({"weight": -1.0}, "config weight must be zero or positive, got -1.0"),
    ({"mode": "loud"}, "config mode must be one of soft, hard, not 'loud'"),
])
def test_declared_bounds_are_enforced_with_one_line_errors(overrides, message):
    for config in (SketchConfig, LongerSketchConfig):
        with pytest.raises(EraseLabError) as caught:
            config.build(overrides)
        assert str(caught.value) == message
    assert SketchConfig.build({"steps": "3", "mode": "hard"}).steps == 3


def test_a_help_passed_where_the_bound_goes_is_refused():
    with pytest.raises(TypeError, match="bound="):
        setting(1, POSITIVE)


def test_methods_verbose_lists_a_declared_field_once_declared(monkeypatch, capsys):
    from eraselab.methods import METHODS, register

    monkeypatch.setattr(METHODS, "_entries", dict(METHODS._entries))  # leave the real registry as it was

    @register
    class Sketch(Eraser):
        name = "sketch-method"
        description = "a config-declaration test method"
        Config = SketchConfig

    assert main(["methods", "--verbose"]) == 0
    text = capsys.readouterr().out
    block = text[text.index("\nsketch-method\n"):]
    assert "  steps: sketch steps of the declaration test\n" in block
    assert "  mode: soft or hard\n" in block and "  quiet:" not in block
    assert "steps=10" in text  # the declared default in the defaults column
