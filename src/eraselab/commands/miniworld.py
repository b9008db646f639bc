"""`eraselab miniworld`: train the embedded model and its oracle, and score the shipped model against its
gates."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="The embedded synthetic world: train its model and oracle, score the quality gates.",
        no_args_is_help=True,
    )
    app.add_typer(group, name="miniworld")

    @group.command("train")
    def train_cmd(
        out: Path = typer.Option(..., "--out", help="Folder for the pipeline (and its checkpoints)."),
        seed: int = typer.Option(0, "--seed"),
        minutes: float = typer.Option(45.0, "--minutes", help="Wall-clock budget for training."),
        images: int = typer.Option(24000, "--images", help="Rendered training scenes."),
        init: str = typer.Option(
            None,
            "--init",
            help=(
                "Continue from a trained pipeline (a folder, or "
                "'miniworld' for the shipped weights) instead of from scratch; "
                "the VAE is kept and the whole budget trains the diffusion model."
            ),
        ),
        steps: int = typer.Option(
            None,
            "--steps",
            help=(
                "Train the diffusion model this many steps "
                "(the learning rate follows them) instead of until --minutes."
            ),
        ),
        pair_share: float = typer.Option(
            None,
            "--pair-share",
            help="Share of each batch drawn from two-object scenes (default: as rendered, 0.45).",
        ),
        grounding: float = typer.Option(
            0.0,
            "--grounding",
            help=(
                "Weight of the token grounding loss, "
                "which teaches cross-attention which words describe which "
                "object of a two-object scene (0: off)."
            ),
        ),
    ):
        """Train the miniworld text-to-image model (VAE, CLIP text encoder, UNet) into OUT; rerun to resume.

        Example: eraselab miniworld train --out mw-model --seed 0 --minutes 90
        Continue the shipped model: eraselab miniworld train --out mw-more --init miniworld --minutes 60
        Continue it on two-object scenes for 6000 steps: eraselab miniworld train --out mw-pairs --init miniworld \
            --steps 6000 --pair-share 0.7
        Ground each object's words in its half of the image: ... --pair-share 0.7 --grounding 0.1
        """  # noqa: E501 (typer shows the docstring line by line: the example must stay as written)
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from ..errors import EraseLabError
        from ..miniworld.train import TrainConfig, train

        if minutes <= 0 or images < 100:
            raise EraseLabError(
                "--minutes must be > 0 and --images >= 100; pass e.g. --minutes 45 --images 24000"
            )
        if steps is not None and steps < 1:
            raise EraseLabError(f"--steps must be >= 1 (got {steps}); leave it out to train until --minutes")
        if pair_share is not None and not 0.0 <= pair_share <= 1.0:
            raise EraseLabError(
                f"--pair-share must be within 0..1 (got {pair_share}); pass a share such as --pair-share 0.7"
            )
        if grounding < 0:
            raise EraseLabError(
                f"--grounding must be >= 0 (got {grounding}); "
                "pass a weight such as --grounding 0.1, or 0 for off"
            )
        cfg = TrainConfig(
            seed=seed,
            minutes=minutes,
            n_images=images,
            init=init,
            steps=steps,
            pair_share=pair_share,
            grounding=grounding,
        )
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeElapsedColumn(),
        ) as progress:
            task = progress.add_task("data", total=1.0, loss=float("nan"))
            last = {"t": 0}

            def report(stage, frac, loss):
                last["t"] += 1
                if last["t"] % 5 == 0 or stage == "data":
                    progress.update(task, description=stage, completed=min(frac, 1.0), loss=loss)

            record = train(out, cfg, report)
        typer.echo(
            json.dumps(
                {k: record[k] for k in ("command", "vae_steps", "diffusion_steps", "final_losses")}, indent=1
            )
        )

    @group.command("train-oracle")
    def train_oracle_cmd(out: Path = typer.Option(None, "--out", help="Folder for oracle.safetensors "
                                                  "(default: beside the shipped weights)."),
                         vae: str = typer.Option("miniworld", "--vae", help="Pipeline whose VAE round-trips "
                                                 "training renders so they look generated."),
                         seed: int = typer.Option(0, "--seed"),
                         minutes: float = typer.Option(8.0, "--minutes")):
        """Train the oracle classifier on augmented renders.

        Example: eraselab miniworld train-oracle --out mw-oracle --vae miniworld
        """
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from ..miniworld.oracle import train_oracle

        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TextColumn("{task.fields[info]}"), TimeElapsedColumn()) as progress:
            task = progress.add_task("oracle", total=1.0, info="")

            def report(frac, info):
                progress.update(task, completed=min(frac, 1.0), info=info)

            record = train_oracle(out, vae_source=vae, seed=seed, minutes=minutes, report=report)
        typer.echo(json.dumps(record, indent=1))

    @group.command("score")
    def score_cmd(
        model: str = typer.Option("miniworld", "--model"),
        seeds: int = typer.Option(2, "--seeds", help="Seeds per prompt (superclass prompts use 10x)."),
        steps: int = typer.Option(25, "--steps"),
        as_json: bool = typer.Option(False, "--json", help="Print the JSON object only."),
    ):
        """Generate with the model and judge with the oracle: the miniworld quality gates.

        Example: eraselab miniworld score --seeds 2 --json
        """
        from rich.console import Console
        from rich.table import Table

        from ..miniworld.score import TARGETS, score

        result = score(model=model, seeds=seeds, steps=steps)
        if as_json:
            typer.echo(json.dumps(result, indent=1))
            return
        table = Table("gate", "value", "target", "met")
        for k, target in TARGETS.items():
            v = result[k]
            table.add_row(k, f"{v:.3f}", f">= {target}", "yes" if v >= target else "NO")
        table.add_row(
            "seconds", f"{result['seconds']:.1f}", "<= 300", "yes" if result["seconds"] <= 300 else "NO"
        )
        Console().print(table)
