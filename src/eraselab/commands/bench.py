"""`eraselab bench`: erase with several methods, generate, judge and compute the side-effect metrics."""
from __future__ import annotations

from pathlib import Path

import typer

from .options import comma_list, distinct, scoped_key_values


def register(app: typer.Typer) -> None:
    @app.command("bench")
    def bench_cmd(
        model: str = typer.Option(
            "miniworld", "--model", "-m", help="miniworld, a diffusers folder or a hub id."
        ),
        methods: str = typer.Option(
            "uce,esd-x,ap", "--methods", help="Comma-separated methods (see `eraselab methods`)."
        ),
        target: list[str] = typer.Option(
            [], "--target", "-t", help="Concept to erase (repeat for several; required)."
        ),
        preserve: list[str] = typer.Option(
            [], "--preserve", help="Concept to preserve (repeat for several)."
        ),
        suites: str = typer.Option(
            "see,erasebench", "--suites", help="Comma-separated suites, or suite .yaml files."
        ),
        evaluator: str = typer.Option(
            "auto",
            "--evaluator",
            help=(
                "auto (oracle on miniworld, clip otherwise), a name, or NAME:MODEL with the evaluator's "
                "weights (clip:/models/clip-l, vqa:FOLDER, imagenet:efficientnet-lite0, oracle:FILE)."
            ),
        ),
        seeds_per_prompt: int = typer.Option(
            None,
            "--seeds-per-prompt",
            help="Seeds per prompt (alone, this fixes the images; with --precision, the least per prompt).",
        ),
        precision: float = typer.Option(
            None,
            "--precision",
            help=(
                "Target 95 % half-width of every rate in percentage points: each aspect gets the images that "
                "reach it (10 → 93 per aspect). Default: 10 unless --seeds-per-prompt is given."
            ),
        ),
        domain: Path = typer.Option(
            None,
            "--domain",
            help=(
                "A domain YAML (concept hierarchy, prompt template, vocabulary; see "
                "eraselab.domain.load_domain) instead of the model's."
            ),
        ),
        base_seed: int = typer.Option(
            0,
            "--base-seed",
            help="First seed; seeds are BASE, BASE+1, … (another base draws disjoint images).",
        ),
        steps: int = typer.Option(None, "--steps", help="Sampling steps (suite default if omitted)."),
        guidance: float = typer.Option(None, "--guidance", help="CFG scale (suite default if omitted)."),
        config: list[str] = typer.Option(
            [], "--config", help="Method setting, METHOD.KEY=VALUE (repeatable)."
        ),
        suite_option: list[str] = typer.Option(
            [], "--suite-option", help="Suite option, SUITE.KEY=VALUE, e.g. i2p.path=i2p.csv."
        ),
        batch_size: int = typer.Option(
            None, "--batch-size", help="Probes per batch (default: from free memory)."
        ),
        attention: bool = typer.Option(
            True, "--attention/--no-attention", help="Record cross-attention maps of the target."
        ),
        out: Path = typer.Option(
            Path("eraselab-bench"), "--out", "-o", help="Run folder (created; reused to resume)."
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
        """Erase TARGET with each method, run the suites on the original and edited models, judge, and write
        results.json + tables/*.csv to --out. Re-running resumes: cached edits, images and judgments are
        reused.

        Example: eraselab bench --model miniworld --methods uce,esd-x --target circle --suites see,erasebench --out runs/circle
        """  # noqa: E501 (typer shows the docstring line by line: the example must stay as written)
        from ..bench import BenchSpec, run_bench
        from ..errors import EraseLabError
        from ..variant_jobs import parse_jobs
        from .console import console, summary_table

        if not target:  # a bench is minutes to hours of work: never start one nobody asked for in full
            raise EraseLabError(
                "no target given; pass --target CONCEPT (e.g. --target circle), or run `eraselab "
                "demo` for the ready-made miniworld run"
            )

        workers = parse_jobs(jobs)
        spec = BenchSpec(
            model=model,
            methods=comma_list(methods),
            targets=distinct(target, "--target"),
            preserve=distinct(preserve, "--preserve"),
            suites=comma_list(suites),
            evaluator=evaluator,
            seeds_per_prompt=seeds_per_prompt,
            steps=steps,
            guidance=guidance,
            method_config=scoped_key_values(config, "--config"),
            suite_options=scoped_key_values(suite_option, "--suite-option"),
            batch_size=batch_size,
            attention=attention,
            base_seed=base_seed,
            precision=precision,
            domain_file=str(domain) if domain else None,
        )
        results = run_bench(spec, out, say=lambda m: console.print(f"[dim]·[/dim] {m}"), jobs=workers)
        console.print(summary_table(results))
        console.print(f"results: {out / 'results.json'}")
