"""What generation says while it works: a progress bar with images per second, and one-line status messages
(both on stderr, so stdout stays clean for results)."""
from __future__ import annotations

import sys


def progress_bar(enabled: bool, total: int, done: int, label: str):
    """A rich Progress (disabled unless `enabled`) and its one task, already at `done` of `total` images."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class ImagesPerSecond(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:.2f} img/s" if task.speed else "… img/s", style="progress.data.speed")

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        ImagesPerSecond(), TextColumn("ETA"), TimeRemainingColumn(), TimeElapsedColumn(),
                        console=Console(stderr=True), disable=not enabled)
    task = progress.add_task(label, total=total, completed=done)
    return progress, task


def report(message: str) -> None:
    print(f"eraselab: {message}", file=sys.stderr)
