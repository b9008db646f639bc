"""Every command's help is complete, and the examples it shows run exactly as written."""
import re
import shlex

import pytest
import typer

from eraselab.cli import app, main

FAST = ("methods", "models", "erase", "generate")  # examples run in the default test run
SLOW = ("bench", "evaluate", "report")  # minutes on miniworld (ESD) — run with -m slow, in this order


def _commands():
    """(name, click command) for every command and sub-command."""
    root = typer.main.get_command(app)
    out = []
    for name, cmd in root.commands.items():
        if hasattr(cmd, "commands"):
            out += [(f"{name} {sub}", c) for sub, c in cmd.commands.items()]
        else:
            out.append((name, cmd))
    return out


def _example(cmd) -> str:
    found = re.search(r"Example:\s*(eraselab[^\n(]*)", cmd.help or "")
    return found.group(1).strip() if found else ""


@pytest.mark.parametrize("name,cmd", _commands(), ids=[n for n, _ in _commands()])
def test_help_is_complete(name, cmd, capsys):
    assert main([*name.split(), "--help"]) == 0
    shown = capsys.readouterr().out
    assert (cmd.help or "").strip(), f"{name} has no description"
    assert _example(cmd), f"{name}'s help shows no example"
    for param in cmd.params:
        if (
            param.name != "help"
            and getattr(param, "help", None) is None
            and param.param_type_name == "option"
        ):
            if not param.hidden and param.default is None and param.required:
                pytest.fail(f"{name} --{param.name} is required but undocumented")
    assert "Usage" in shown


def _run_example(name: str, capsys) -> str:
    cmd = dict(_commands())[name]
    argv = shlex.split(_example(cmd))[1:]
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, f"`{_example(cmd)}` exited {code}: {captured.err[-500:]}"
    return captured.out


def test_fast_examples_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert "uce" in _run_example("methods", capsys)
    assert "miniworld" in _run_example("models", capsys)
    _run_example("erase", capsys)
    assert (tmp_path / "edits" / "uce-circle" / "edit.safetensors").exists()
    _run_example("generate", capsys)
    rows = (tmp_path / "gen" / "images.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 8  # header + seeds 0-7


@pytest.mark.slow
def test_slow_examples_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _run_example("bench", capsys)
    assert (tmp_path / "runs" / "circle" / "results.json").exists()
    _run_example("evaluate", capsys)
    (tmp_path / "eraselab-demo").symlink_to(tmp_path / "runs" / "circle")
    _run_example("report", capsys)
    assert (tmp_path / "runs" / "circle" / "report.html").exists()
