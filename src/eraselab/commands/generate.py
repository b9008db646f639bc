"""`eraselab generate`: images for prompts × seeds into a run store, plus an images.csv any tool can open."""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Annotated

import typer

from ..errors import EraseLabError
from ..probes import MAX_PROMPT_CHARS

IMAGES_CSV = "images.csv"
_MAX_SEEDS = 1_000_000


def parse_seeds(text: str) -> list[int]:
    """"0,1,2", "0-99" or a mix ("0-3,10") → seeds in the given order, duplicates dropped."""
    seeds: list[int] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if match is None:
            raise EraseLabError(f"cannot read seeds {text!r}; write non-negative seeds as 0,1,2 or 0-99")
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        if hi < lo:
            raise EraseLabError(f"seed range {part!r} runs backwards; write it as {hi}-{lo}")
        if hi >= 2 ** 63 or len(seeds) + hi - lo + 1 > _MAX_SEEDS:
            raise EraseLabError(
                f"--seeds {text!r} asks for too many or too large seeds (at most {_MAX_SEEDS} "
                "seeds below 2^63)"
            )
        seeds += range(lo, hi + 1)
    if not seeds:
        raise EraseLabError("no seeds given; pass e.g. --seeds 0,1,2 or --seeds 0-99")
    return list(dict.fromkeys(seeds))


def read_prompt_file(path: str | Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with # are skipped."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EraseLabError(
            f"cannot read prompt file {path}: {exc.strerror}; pass an existing text file"
        ) from exc
    if b"\x00" in data:
        raise EraseLabError(
            f"prompt file {path} is binary, not text; pass a UTF-8 text file with one prompt per line"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise EraseLabError(
            f"prompt file {path} is not UTF-8 (bad byte at offset {exc.start}); save it as UTF-8 "
            "text with one prompt per line"
        ) from exc
    prompts = [line.strip() for line in text.splitlines()]
    for number, line in enumerate(prompts, 1):
        if len(line) > MAX_PROMPT_CHARS:
            raise EraseLabError(
                f"line {number} of prompt file {path} is {len(line)} characters long; prompts are at "
                f"most {MAX_PROMPT_CHARS} characters, one prompt per line (is it the right file?)"
            )
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise EraseLabError(f"prompt file {path} holds no prompts; write one prompt per line")
    return prompts


IMAGES_COLUMNS = [
    "prompt",
    "seed",
    "image",
    "negative_prompt",
    "steps",
    "guidance",
    "sampler",
    "height",
    "width",
    "image_key",
]


def _images_csv(store, probes, keys, default_size: int, previous: str = "") -> str:
    """images.csv: the rows of an earlier run into the same folder (`previous`, the old file's text) that this
    run did not make again, then this run's rows; sizes are the generated ones (a probe's 0 = the model's
    default size)."""
    new_rows = []
    for p, k in zip(probes, keys):
        rel = store.image_path(k).relative_to(store.folder)
        new_rows.append([p.prompt, p.seed, rel.as_posix(), p.negative_prompt, p.steps, p.guidance, p.sampler,
                         p.height or default_size, p.width or default_size, k])
    made_now = {r[-1] for r in new_rows}
    old_rows = []
    if previous:
        reader = csv.reader(io.StringIO(previous))
        if next(reader, None) == IMAGES_COLUMNS:
            old_rows = [r for r in reader if len(r) == len(IMAGES_COLUMNS) and r[-1] not in made_now]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(IMAGES_COLUMNS)
    writer.writerows(old_rows + new_rows)
    return buf.getvalue()


def register(app: typer.Typer) -> None:
    @app.command("generate")
    def generate_cmd(
        model: Annotated[
            str, typer.Option("--model", "-m", help="miniworld, a diffusers folder or a hub id.")
        ],
        out: Annotated[
            Path, typer.Option("--out", "-o", help="Store folder (created; reused to resume or cache).")
        ],
        prompts: Annotated[
            Path | None, typer.Option("--prompts", help="Text file, one prompt per line.")
        ] = None,
        prompt: Annotated[
            list[str] | None, typer.Option("--prompt", "-p", help="A prompt (repeatable).")
        ] = None,
        seeds: Annotated[str, typer.Option("--seeds", "-s", help="Seeds: 0,1,2 or 0-99.")] = "0",
        edit: Annotated[
            Path | None, typer.Option("--edit", help="An edit folder from `eraselab erase`.")
        ] = None,
        steps: Annotated[int, typer.Option("--steps", help="Denoising steps.")] = 25,
        guidance: Annotated[float, typer.Option("--guidance", help="Classifier-free guidance scale.")] = 7.5,
        sampler: Annotated[
            str, typer.Option("--sampler", help="ddim, pndm, euler, euler_a, dpm++, ddpm or lms.")
        ] = "ddim",
        size: Annotated[
            int, typer.Option("--size", help="Image height and width (0: the model's default).")
        ] = 0,
        negative: Annotated[str, typer.Option("--negative", help="Negative prompt for every image.")] = "",
        batch_size: Annotated[
            int | None,
            typer.Option(
                "--batch-size",
                help="Probes per batch (default: one UNet lane's worth; never changes pixels).",
            ),
        ] = None,
        lanes: Annotated[
            str,
            typer.Option(
                "--lanes",
                help=(
                    "fit: UNet calls sized to this request (a few images cost what they need; pixels depend "
                    "on how many images are asked for together); fixed: sized by model and image size "
                    "only (pixels equal to bench's whatever the request)."
                ),
            ),
        ] = "fit",
        device: Annotated[
            str | None,
            typer.Option(
                "--device",
                help="cpu, cuda, cuda:1 … (default: the GPU if any, or the accelerate process's device).",
            ),
        ] = None,
        shard: Annotated[
            str | None,
            typer.Option(
                "--shard", help="I/N: make only share I of N (0-based); automatic under `accelerate launch`."
            ),
        ] = None,
        progress: Annotated[
            bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")
        ] = True,
    ):
        """Generate images for prompts × seeds (deterministic, batched, cached, resumable).

        Example: eraselab generate --model miniworld --prompt "a red circle" --seeds 0-7 --out gen
        """
        from ..probes import Probe

        texts = list(prompt or [])
        if prompts is not None:
            texts += read_prompt_file(prompts)
        if not texts:
            raise EraseLabError("no prompts given; pass --prompt TEXT (repeatable) or --prompts FILE")
        if batch_size is not None and batch_size < 1:
            raise EraseLabError(
                f"--batch-size must be a positive integer, got {batch_size}; omit it to choose automatically"
            )
        if size < 0:
            raise EraseLabError(f"--size must be 0 (model default) or a positive multiple of 8, got {size}")
        seed_list = parse_seeds(seeds)
        from ..generate import LANE_POLICIES

        if lanes not in LANE_POLICIES:
            raise EraseLabError(f"--lanes must be one of {', '.join(LANE_POLICIES)}, not {lanes!r}")
        # Probes first: bad settings fail in a second, before the model loads.
        probe_list = [
            Probe(
                t,
                seed=s,
                negative_prompt=negative,
                steps=steps,
                guidance=guidance,
                height=size,
                width=size,
                sampler=sampler,
            )
            for t in texts
            for s in seed_list
        ]
        shard_pair = _parse_shard(shard)
        edit_obj = None
        if edit is not None:
            from ..edits import Edit

            edit_obj = Edit.load(edit)
        _run(
            model,
            out,
            probe_list,
            edit_obj,
            batch_size,
            device,
            shard_pair,
            progress,
            {
                "command": "generate",
                "model": model,
                "edit": str(edit) if edit else None,
                "prompts": texts,
                "seeds": seeds,
                "steps": steps,
                "guidance": guidance,
                "sampler": sampler,
                "size": size,
                "negative": negative,
                "lanes": lanes,
            },
            lanes,
        )


def _parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise EraseLabError(f"cannot read --shard {text!r}; write it as I/N, e.g. 0/2") from None
    return index, count


def _run(
    model, out, probes, edit, batch_size, device, shard, progress, run_config, lane_policy="fixed"
) -> None:
    from rich.console import Console

    from ..atomic import atomic_write_text
    from ..generate import distributed_state, generate, resolve_shard
    from ..models import default_image_size, load_pipeline, pick_device
    from ..store import RunStore

    shard = resolve_shard(shard)
    distributed = shard is not None and shard == resolve_shard(None)
    if device is None:
        if distributed:
            device = str(distributed_state().device)
        else:
            device = pick_device(None)
    store = RunStore(out)
    pipe = load_pipeline(model, device=device)
    keys = generate(pipe, probes, store, edit=edit, batch_size=batch_size, progress=progress, shard=shard,
                    run_config=run_config, lane_policy=lane_policy)
    if distributed:
        distributed_state().wait_for_everyone()
    console = Console(stderr=True)
    missing = len(keys) - len(store.known_images(keys))
    if missing:
        console.print(f"shard {shard[0]}/{shard[1]} done; {missing} image(s) of other shards still to come — "
                      f"images.csv is written by the run that completes the set")
        return
    if shard is None or shard[0] == 0 or not distributed:
        listing = Path(out) / IMAGES_CSV
        previous = listing.read_text(encoding="utf-8") if listing.exists() else ""
        atomic_write_text(listing, _images_csv(store, probes, keys, default_image_size(pipe), previous))
    console.print(f"{len(set(keys))} image(s) in {store.folder} — list: {Path(out) / IMAGES_CSV}")
