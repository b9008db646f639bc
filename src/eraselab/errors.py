"""The one exception type users see: a one-line message that names the problem and the fix."""


class EraseLabError(Exception):
    """A user-facing error. The CLI prints `error: <message>` and exits with status 2, never a traceback."""

    def __init__(self, message: str):
        # Keep it to one line: multi-line messages get lost in logs and progress bars.
        super().__init__(" ".join(str(message).split()))
