"""The one exception type users see (a one-line message that names the problem and the fix), and the one
warning type: a setting that runs but does nothing, or something other than the user expects."""
import warnings


class EraseLabError(Exception):
    """A user-facing error. The CLI prints `error: <message>` and exits with status 2, never a traceback."""

    def __init__(self, message: str):
        # Keep it to one line: multi-line messages get lost in logs and progress bars.
        super().__init__(" ".join(str(message).split()))


class EraseLabWarning(UserWarning):
    """A one-line warning; the CLI prints `warning: <message>` on stderr."""


_warned: set[str] = set()


def warn_once(message: str) -> None:
    """Warn about `message` once per process (a setting repeated over batches or methods is said once)."""
    message = " ".join(str(message).split())
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, EraseLabWarning, stacklevel=2)
