"""`eraselab evaluate`: (re-)judge a bench run folder, optionally with another evaluator."""
from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("evaluate")
    def evaluate_cmd(
        run: Path = typer.Option(..., "--run", help="A folder written by `eraselab bench`."),
        evaluator: str = typer.Option(
            None, "--evaluator", help="Evaluator name or NAME:MODEL (default: the run's)."
        ),
    ):
        """Judge a bench run's images (cached images and edits are reused) and rewrite its results.

        Example: eraselab evaluate --run runs/circle --evaluator oracle
        """
        from ..bench import BenchSpec, run_bench
        from ..errors import EraseLabError
        from .console import console, summary_table

        spec_path = run / "bench.json"
        if not spec_path.exists():
            raise EraseLabError(
                f"{run} is not a bench run folder (no bench.json); pass the --out of `eraselab bench`"
            )
        try:
            raw = json.loads(spec_path.read_bytes())
            if not isinstance(raw, dict):
                raise TypeError("not a JSON object")
            spec = BenchSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
        except (ValueError, TypeError) as exc:  # ValueError covers bad JSON and bad UTF-8
            raise EraseLabError(f"{spec_path} is damaged ({exc}); re-run `eraselab bench`") from exc
        if evaluator:
            spec.evaluator = evaluator
        results = run_bench(spec, run, say=lambda m: console.print(f"[dim]·[/dim] {m}"))
        console.print(summary_table(results))
