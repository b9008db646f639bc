"""`eraselab report`: turn a bench run folder into report.html (+ report.md)."""
from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report_cmd(run: Path = typer.Option(..., "--run", help="A folder written by `eraselab bench`."),
                   self_contained: bool = typer.Option(
                       False, "--self-contained",
                       help="Embed every image and plot in report.html (data: URIs), so the one file can be "
                            "moved or mailed without the run folder; it grows by the size of the images.")):
        """Write report.html (headline table, plots, glossary, image grids, provenance) and report.md into the
        run folder. Images are linked from the run folder unless --self-contained embeds them.

        Example: eraselab report --run eraselab-demo --self-contained
        """
        from ..report.html import write_report
        from .console import console

        path = write_report(run, self_contained=self_contained)
        size = path.stat().st_size / 1e6
        console.print(f"report: {path} ({size:.1f} MB{', images embedded' if self_contained else ''})")
