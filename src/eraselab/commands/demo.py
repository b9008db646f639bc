"""`eraselab demo`: the main job — erase one concept with three methods on miniworld and write the report."""
from __future__ import annotations

import time
from pathlib import Path

import typer

from .options import comma_list

# The demo is a first look in minutes: enough images for ±25 pp at worst (12 per aspect; rates near 0 % or
# 100 % come out far narrower), where `eraselab bench` defaults to ±10 pp (93 per aspect); the report greys
# out cells wider than ±10 pp.
DEMO_PRECISION = 25.0


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        model: str = typer.Option(
            "miniworld", "--model", "-m", help="miniworld (CPU, minutes) or a real checkpoint."
        ),
        methods: str = typer.Option("uce,esd-x,ap", "--methods", help="Comma-separated methods."),
        target: str = typer.Option("circle", "--target", "-t", help="The concept to erase."),
        out: Path = typer.Option(Path("eraselab-demo"), "--out", "-o", help="Where the run and report go."),
        precision: float = typer.Option(
            DEMO_PRECISION,
            "--precision",
            help=(
                "Target 95 % half-width of every rate in percentage points (25 → 12 images per aspect; "
                "larger is faster and coarser)."
            ),
        ),
        jobs: str = typer.Option(
            "auto",
            "--jobs",
            help=(
                "Worker processes that prepare the variants (erase, images) side by side: auto (on the CPU "
                "for small models such as miniworld) or a number; 1: none."
            ),
        ),
    ):
        """Erase TARGET with each method, run the SEE and EraseBench suites on the original and edited models,
        judge the images, and write report.html. A second run reuses every cached edit, image and judgment.

        Example: eraselab demo            (miniworld, target circle, methods uce, esd-x, ap → ./eraselab-demo)
        """
        from ..bench import BenchSpec, run_bench
        from ..report.html import write_report
        from ..variant_jobs import parse_jobs
        from .console import console, summary_table

        start = time.perf_counter()
        workers = parse_jobs(jobs)
        spec = BenchSpec(
            model=model,
            methods=comma_list(methods),
            targets=(target,),
            suites=("see", "erasebench"),
            precision=precision,
        )
        results = run_bench(spec, out, say=lambda m: console.print(f"[dim]·[/dim] {m}"), jobs=workers)
        report = write_report(out)
        console.print(summary_table(results))
        console.print(f"report: [bold]{report.resolve()}[/bold]  ({time.perf_counter() - start:.0f} s)")
