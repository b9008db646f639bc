"""`eraselab report`: turn a bench run folder into report.html (+ report.md)."""
from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report_cmd(run: Path = typer.Option(..., "--run", help="A folder written by `eraselab bench`.")):
        """Write report.html (headline table, image grids, plots, provenance) and report.md into the run folder.

        Example: eraselab report --run eraselab-demo
        """
        from ..report.html import write_report
        from .console import console

        path = write_report(run)
        console.print(f"report: {path}")
