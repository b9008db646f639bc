"""`eraselab erase`: run one erasure method on a model and write the Edit folder."""
from __future__ import annotations

from pathlib import Path

import typer

from ..errors import EraseLabError


def register(app: typer.Typer) -> None:
    @app.command("erase")
    def erase_cmd(
        model: str = typer.Option(..., "--model", help="miniworld, a diffusers folder or a hub id"),
        method: str = typer.Option(..., "--method", help="erasure method (`eraselab methods` lists them)"),
        target: list[str] = typer.Option(None, "--target", help="concept to erase (repeatable)"),
        preserve: list[str] = typer.Option(None, "--preserve", help="concept to keep (repeatable)"),
        config: list[str] = typer.Option(None, "--config", help="method setting key=value (repeatable)"),
        out: Path = typer.Option(..., "--out", help="folder for edit.safetensors + edit.json"),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, …"),
        force: bool = typer.Option(False, "--force", help="overwrite an edit already in --out"),
        trust_pickle: bool = typer.Option(False, "--trust-pickle", help="allow .ckpt pickle checkpoints"),
    ):
        """Erase --target concepts from --model with --method and write the edit to --out.

        Example: eraselab erase --model miniworld --method uce --target circle --out edits/uce-circle
        """
        from rich.console import Console

        from ..edits import EDIT_META
        from ..methods import build_request, erase
        from ..models import load_pipeline, pick_device
        from .options import distinct, key_values

        target, preserve = list(distinct(target, "--target")), list(distinct(preserve, "--preserve"))
        settings = key_values(config)
        # Everything that can be checked without the weights is checked first, so bad input fails in seconds.
        build_request(method, target, preserve or [], model=model, **settings)
        check_world_concepts(model, [*target, *(preserve or [])])
        if (out / EDIT_META).exists() and not force:
            raise EraseLabError(f"{out} already holds an edit; pass another --out or --force to overwrite it")
        if out.exists() and not out.is_dir():
            raise EraseLabError(f"--out {out} is a file; pass a folder")
        pipe = load_pipeline(model, device=pick_device(device), trust_pickle=trust_pickle)
        edit = erase(pipe, method, target, preserve or [], **settings)
        edit.save(out)
        console = Console()
        console.print(f"{method}: erased {', '.join(edit.targets)} in {edit.seconds:.1f} s; "
                      f"{len(edit.tensors)} tensors changed; preset {edit.config.get('preset')}; wrote {out}")
        chosen = edit.extras.get("adversarial_concepts")
        if chosen:
            console.print("adversarial concepts: " + ", ".join(f"{c['concept']} ({c['probability']:.2f})"
                                                               for c in chosen[:5]))


def check_world_concepts(model: str, concepts) -> None:
    """A model of a closed world (the embedded miniworld model) only knows its domain's words: refuse others
    ("dog", an emoji) as the demo does, instead of erasing a text the model never learnt."""
    from ..domain import domain_for_model

    domain = domain_for_model(model)
    if domain.closed_world:
        for concept in concepts:
            domain.parse(concept)
