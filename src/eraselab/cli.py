"""The `eraselab` command line: a thin layer over the library (one module per command in commands/).

Every user-facing failure is an EraseLabError and prints as one line on stderr with exit status 2.

Test hook: ERASELAB_EXTRA_MODULES="mod_a,mod_b" imports those modules before the command runs, so a test can
register a stand-in evaluator (or inject faults) in a CLI subprocess, where it cannot call Python directly.
"""
from __future__ import annotations

import errno
import importlib
import os
import sys

import typer

from . import __version__
from .errors import EraseLabError

app = typer.Typer(
    name="eraselab",
    help="Erase concepts from text-to-image diffusion models and measure what the erasure breaks.\n\n"
         "Start with `eraselab demo` (runs on the embedded miniworld model, CPU, minutes).",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]})

# Each module registers its commands; a misspelt or missing module fails at start-up, never silently.
COMMAND_MODULES = (
    "generate",
    "models",
    "methods",
    "erase",
    "evaluate",
    "bench",
    "report",
    "demo",
    "miniworld",
)


def _version_callback(value: bool):
    if value:
        typer.echo(f"eraselab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
    threads: int = typer.Option(
        None,
        "--threads",
        help=(
            "CPU threads for this job (default: its share of "
            "the usable CPUs among running eraselab jobs; env ERASELAB_THREADS)."
        ),
    ),
):
    from .threads import apply_thread_policy, parse_threads

    apply_thread_policy(parse_threads(threads))


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"eraselab.commands.{name}").register(app)


_register_all()


def _import_extra_modules() -> None:
    for name in filter(None, (n.strip() for n in os.environ.get("ERASELAB_EXTRA_MODULES", "").split(","))):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise EraseLabError(
                f"ERASELAB_EXTRA_MODULES names {name!r}, which cannot be imported ({exc}); fix "
                "the module name or PYTHONPATH, or unset the variable"
            ) from exc


def main(argv: list[str] | None = None) -> int:
    # Library advice (e.g. transformers on optional image backends) would bury eraselab's one-line errors, and
    # their progress bars ("Loading weights", "Fetching files") would interleave with eraselab's own.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    quiet_library_progress_bars()
    show_warnings_as_one_line()
    try:
        _import_extra_modules()
        status = app(args=argv, standalone_mode=False, prog_name="eraselab")
    except EraseLabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted()
    except OSError as exc:  # stdout or a file on a full disk, or a closed pipe (`eraselab methods | head -1`)
        if exc.errno not in (errno.ENOSPC, errno.EPIPE, errno.EDQUOT):
            raise
        _silence_stdout()  # Python's flush at exit would fail the same way, with a traceback
        if exc.errno != errno.EPIPE:  # the reader of a pipe has what it wanted
            print(f"error: cannot write the output ({exc.strerror}); free disk space or write it elsewhere "
                  "(earlier results are intact)", file=sys.stderr)
        return 1
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 1
    except Exception as exc:
        if not _is_usage_error(exc):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # `eraselab` or a group alone: its help is the answer
            print(exc.ctx.get_help())
            return 0
        command = exc.ctx.command_path if getattr(exc, "ctx", None) is not None else "eraselab"
        print(f"error: {' '.join(exc.format_message().split())} (see `{command} --help`)", file=sys.stderr)
        return 2
    # Outside standalone mode typer turns Ctrl-C into Exit(130) and *returns* that code instead of raising.
    if isinstance(status, int) and not isinstance(status, bool) and status:
        return _interrupted() if status == INTERRUPTED else status
    return 0


INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (a test's capture): nothing to flush at exit
        pass
    finally:
        os.close(devnull)


def _interrupted() -> int:
    print("interrupted; run the same command again to resume where it stopped", file=sys.stderr)
    return INTERRUPTED


def show_warnings_as_one_line() -> None:
    """eraselab's warnings print as `warning: <message>`, without the file and line Python adds."""
    import warnings

    from .errors import EraseLabWarning

    default = warnings.showwarning
    if getattr(default, "eraselab_one_line", False):  # installed by an earlier main() in this process
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, EraseLabWarning):
            print(f"warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)

    show.eraselab_one_line = True
    warnings.showwarning = show


def quiet_library_progress_bars() -> None:
    """Switch off huggingface_hub's and transformers' progress bars (both read this switch when imported;
    load_pipeline makes diffusers follow it). Nothing is imported here: torch must not load before the thread
    policy has set OpenMP's environment."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "huggingface_hub" in sys.modules:  # imported already (a host process): switch them now
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


def _is_usage_error(exc: Exception) -> bool:
    """A command-line usage error: typer >= 0.20 raises those of its own vendored click (TyperException),
    older typer those of click."""
    if isinstance(exc, getattr(typer, "TyperException", ())):
        return hasattr(exc, "format_message")
    try:
        import click
    except ImportError:
        return False
    return isinstance(exc, click.ClickException)


if __name__ == "__main__":
    sys.exit(main())
