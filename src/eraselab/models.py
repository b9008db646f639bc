"""Load and identify text-to-image pipelines: diffusers folders, hub ids, the embedded miniworld model,
and tiny random pipelines built from configs for tests."""
from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import torch

from .errors import EraseLabError
from .pipeline_state import PipelineState, known_state, signature, state_of

MINIWORLD = "miniworld"
_TOKENIZER_DIR = "data/clip_tokenizer"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# A model under this many parameters is "small" (miniworld-sized). Two decisions read it: the methods' auto
# preset scales down to the miniworld one when the UNet is small (methods/base.py auto_preset), and the bench
# prepares variants in CPU worker processes when the whole model is (variant_jobs.plan_workers: each worker
# holds its own copy, and on a small model one thread per process keeps a core busy).
SMALL_MODEL_PARAMETERS = 50_000_000


def package_path(relative: str) -> Path:
    return Path(str(resources.files("eraselab") / relative))


def clip_tokenizer():
    """The real CLIP BPE tokenizer (49,408 ids, 77 tokens), from the vocabulary shipped in the package."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(package_path(_TOKENIZER_DIR)))


def miniworld_weights_dir() -> Path:
    return package_path("miniworld/weights")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def load_pipeline(model: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                  trust_pickle: bool = False):
    """Load a Stable-Diffusion-family pipeline.

    `model` is "miniworld" (the embedded default), a local diffusers folder, a single-file checkpoint
    (.safetensors; .ckpt pickles only with trust_pickle=True) or a hub id (looked up in the local cache when
    HF_HUB_OFFLINE=1). The safety checker is disabled, as in the reference erasure code, so that a black image
    is never mistaken for a successful erasure.
    """
    kind, path = resolve_model(model)
    if device is not None:
        device = _usable_device(device)  # before the weights load: a typo should fail in a second
    _follow_hub_progress_setting()
    if kind == "folder":
        pipe = _from_folder(path)
    elif kind == "file":
        pipe = _from_single_file(path, trust_pickle)
    else:
        pipe = _from_hub(model)
    _check_tokenizer(pipe, model)
    state_of(pipe).source = model
    if dtype is not None:
        pipe.to(dtype=dtype)
    if device is not None:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def looks_like_hub_id(name: str) -> bool:
    """"owner/name": one slash, not a relative or home path (used when no such local path exists)."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))


def resolve_model(model: str) -> tuple[str, Path | None]:
    """What `model` names, checked without loading anything: ("folder", path) for miniworld or a diffusers
    folder, ("file", path) for a single-file checkpoint, ("hub", None) for a hub id. Bad names fail here, in a
    second, with a one-line error (bench checks its model this way before any expensive step)."""
    if not isinstance(model, str) or not model.strip():
        raise EraseLabError("no model given; pass --model miniworld, a diffusers folder or a hub id")
    path = Path(model).expanduser()
    if model == MINIWORLD:
        path = miniworld_weights_dir()
        if not (path / "model_index.json").exists():
            raise EraseLabError("the miniworld weights are not in this install; train them with "
                                "`eraselab miniworld train --out DIR` and pass --model DIR")
        return "folder", path
    if path.is_dir():
        if not (path / "model_index.json").exists():
            raise EraseLabError(
                f"{path} is not a diffusers pipeline folder (no model_index.json); pass a folder "
                "written by save_pretrained, or a hub id"
            )
        return "folder", path
    if path.suffix in SINGLE_FILE_SUFFIXES:
        if not path.exists():
            raise EraseLabError(f"model file {path} does not exist; pass an existing file or folder")
        return "file", path
    if path.exists():
        raise EraseLabError(
            f"{path} is neither a diffusers folder nor a checkpoint file "
            f"({', '.join(SINGLE_FILE_SUFFIXES)}); pass a folder written by save_pretrained, a "
            ".safetensors checkpoint or a hub id"
        )
    if looks_like_hub_id(model):
        return "hub", None
    raise EraseLabError(f"model {model!r} does not exist; pass --model miniworld, a diffusers folder or a "
                        "hub id like CompVis/stable-diffusion-v1-4")


def _follow_hub_progress_setting() -> None:
    """diffusers' "Loading pipeline components" bar ignores huggingface_hub's switch (transformers' follows
    it): turn it off too when the hub's bars are off (the CLI switches them off)."""
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import are_progress_bars_disabled

    if are_progress_bars_disabled():
        diffusers_logging.disable_progress_bar()


def _check_tokenizer(pipe, model: str) -> None:
    """A folder without its tokenizer still loads (transformers builds an empty one whose max length is 1e30),
    and fails later deep inside tokenization; refuse it here, where the problem is."""
    tokenizer, encoder = getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None)
    limit = getattr(getattr(encoder, "config", None), "max_position_embeddings", None)
    if tokenizer is None or not limit:
        return
    if not 0 < int(tokenizer.model_max_length) <= int(limit):
        raise EraseLabError(
            f"the tokenizer of {model} is missing or incomplete (max length "
            f"{tokenizer.model_max_length}, the text encoder has {limit} positions); restore its "
            "tokenizer folder"
        )


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def pick_device(device: str | torch.device | None = None) -> str | torch.device:
    """The device to run on: None or "auto" → the GPU when PyTorch sees one, else CPU; anything else is
    returned as given (load_pipeline / the evaluators check it and name a wrong one in a one-line error)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return device


def _usable_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise EraseLabError(f"{device!r} is not a device name; pass cpu, cuda or cuda:N") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise EraseLabError(f"device {device!r} asked for, but this machine has no CUDA GPU PyTorch can use; "
                            "pass --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise EraseLabError(f"device {device!r} does not exist (this machine has {torch.cuda.device_count()} "
                            "GPU(s)); pass cuda:0 … or cpu")
    return dev


def _pipeline_kwargs(index: dict | None = None) -> dict:
    """Switch the safety checker off in pipelines that have one (SDXL and Flux pipelines have none, and warn
    about arguments they do not take). `index` is the pipeline's model_index.json, when known."""
    if index is not None and "safety_checker" not in index:
        return {}
    return {"safety_checker": None, "requires_safety_checker": False}


def _model_index(path: Path) -> dict | None:
    import json

    try:
        return json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable: loading reports it in its own words
        return None


@contextmanager
def _quiet_loading():
    """No diffusers/transformers loading bars: eraselab shows its own progress, and a failed load should end
    in one error line, not in half-drawn bars."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    before = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if before[0]:
            diffusers_logging.enable_progress_bar()
        if before[1]:
            transformers_logging.enable_progress_bar()


def _from_folder(path: Path):
    from diffusers import DiffusionPipeline

    try:
        with _quiet_loading():
            return DiffusionPipeline.from_pretrained(str(path), local_files_only=True,
                                                     **_pipeline_kwargs(_model_index(path)))
    except Exception as exc:
        # a damaged folder fails in many ways (safetensors, JSON, class and shape errors)
        raise EraseLabError(f"could not load the pipeline in {path}: {_first_line(exc)}; check that the "
                            "folder is complete (model_index.json and every component's weights)") from exc


def _from_hub(model_id: str):
    from diffusers import DiffusionPipeline

    try:
        with _quiet_loading():
            return DiffusionPipeline.from_pretrained(
                model_id, local_files_only=_offline(), **_pipeline_kwargs()
            )
    except Exception as exc:
        # hub errors come in many classes (OSError, HTTP errors, LocalEntryNotFoundError)
        raise EraseLabError(
            f"model {model_id} is not in the local cache; download it with `hf download "
            f"{model_id}` on a machine with network access, or pass a folder"
        ) from exc


def _from_single_file(path: Path, trust_pickle: bool):
    if not path.exists():
        raise EraseLabError(f"model file {path} does not exist; pass an existing file or folder")
    if path.suffix != ".safetensors" and not trust_pickle:
        raise EraseLabError(f"{path.name} is a pickle checkpoint, which can run arbitrary code when loaded; "
                            "convert it to safetensors or pass --trust-pickle if you trust its source")
    from diffusers import StableDiffusionPipeline

    try:
        with _quiet_loading():
            return StableDiffusionPipeline.from_single_file(
                str(path), local_files_only=True, **_pipeline_kwargs()
            )
    except Exception as exc:
        raise EraseLabError(
            f"could not load single-file checkpoint {path}: {_first_line(exc)}; "
            "pass a diffusers folder instead"
        ) from exc


def fingerprinted_modules(pipe) -> dict[str, torch.nn.Module]:
    """The modules whose weights identify a model: the denoiser and the text encoder(s)."""
    names = ("unet", "transformer", "text_encoder", "text_encoder_2")
    return {n: getattr(pipe, n) for n in names if isinstance(getattr(pipe, n, None), torch.nn.Module)}


def fingerprinted_tensors(pipe) -> dict[str, torch.Tensor]:
    """The state-dict tensors the fingerprint covers, by component-prefixed name ("unet.conv_in.weight")."""
    return {f"{comp}.{name}": t for comp, module in fingerprinted_modules(pipe).items()
            for name, t in module.state_dict().items()}


def compute_fingerprint(pipe, base: dict[str, torch.Tensor] | None = None) -> str:
    """sha256 over the names, shapes, dtypes and bytes of the UNet and text-encoder parameters (first 16 hex).
    `base`: values to hash instead of the current ones (what eraselab overwrote in place), by tensor name."""
    h = hashlib.sha256()
    base = base or {}
    for comp, module in fingerprinted_modules(pipe).items():
        for name, tensor in sorted(module.state_dict().items()):
            t = base.get(f"{comp}.{name}", tensor).detach().to("cpu").contiguous()
            h.update(f"{comp}.{name}|{tuple(t.shape)}|{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def fingerprint(pipe) -> str:
    """The base model's fingerprint: the weights' hash, with the values an applied Edit overwrote taken from
    before it. Cached per pipeline; any other in-place change of the weights (see pipeline_state) makes it
    computed again."""
    state = state_of(pipe)
    tensors = fingerprinted_tensors(pipe)
    _check_write_back(state, tensors)
    base = state.edit_originals
    return state.model.get(tensors, lambda: compute_fingerprint(pipe, base), known=base)


def _check_write_back(state, tensors: dict[str, torch.Tensor]) -> None:
    """After a method's erase: the parameters it wrote and then put back to the snapshot's values still have
    the fingerprint the snapshot fixed, so the cache need not hash the model again."""
    snap, state.awaiting_write_back = state.awaiting_write_back, None
    if snap is None or state.model.value != snap.fingerprint:
        return
    written = [n for n, sig in signature({n: tensors[n] for n in snap if n in tensors}).items()
               if sig != state.model.signature.get(n)]
    state.model.confirm(tensors, [n for n in written if _same_values(tensors[n], snap[n])])


def _same_values(t: torch.Tensor, old: torch.Tensor) -> bool:
    return t.shape == old.shape and t.dtype == old.dtype and torch.equal(t.detach().cpu(), old.cpu())


def confirm_written_back(pipe, names) -> None:
    """eraselab has just written back, in place, the values these parameters had when the fingerprint was
    last confirmed (a revert): the cached fingerprint still holds for them."""
    state_of(pipe).model.confirm(fingerprinted_tensors(pipe), names)


def model_source(pipe) -> str:
    state = known_state(pipe)
    return state.source if state is not None else PipelineState.source


def tiny_random_pipeline(seed: int = 0, sd1_shapes: bool = False, text_dim: int = 32):
    """A deterministic tiny StableDiffusionPipeline built from configs (random weights), for tests.

    sd1_shapes=True gives SD 1.x's text width (768) and its 16 cross-attention blocks (2+2+2 down, 1 mid,
    3+3+3 up) with narrow channels, so closed-form methods meet real matrix shapes.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    if sd1_shapes:
        text_dim = 768
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(32, 32, 64, 64), norm_num_groups=8, cross_attention_dim=text_dim,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, attention_head_dim=8)
    else:
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
            norm_num_groups=8, cross_attention_dim=text_dim,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                        norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16)
    torch.manual_seed(seed + 2)
    text_config = CLIPTextConfig(vocab_size=49408, hidden_size=text_dim, intermediate_size=2 * text_dim,
                                 num_hidden_layers=2, num_attention_heads=4 if text_dim % 4 == 0 else 1,
                                 max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                                 pad_token_id=49407)
    text_encoder = CLIPTextModel(text_config)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    state_of(pipe).source = f"tiny-random(seed={seed}{', sd1' if sd1_shapes else ''})"
    return pipe.to("cpu")


def default_image_size(pipe) -> int:
    """The pipeline's own default image side: the UNet's sample size in pixels (SD 1.x 512, SD 2.x-v 768,
    SDXL 1024), or a transformer pipeline's default sample size (Flux: 128 latent pixels, 1024 px)."""
    unet = getattr(pipe, "unet", None)
    sample = unet.config.sample_size if unet is not None else getattr(pipe, "default_sample_size", 128)
    return int(sample) * int(getattr(pipe, "vae_scale_factor", 8))


def list_local_models() -> list[dict]:
    """Pipelines usable offline: the embedded miniworld model and diffusers pipelines in the hub cache."""
    found = []
    if (miniworld_weights_dir() / "model_index.json").exists():
        found.append({"model": MINIWORLD, "where": str(miniworld_weights_dir()), "kind": "embedded"})
    try:
        from huggingface_hub import scan_cache_dir

        for repo in scan_cache_dir().repos:
            for rev in repo.revisions:
                if any(f.file_name == "model_index.json" for f in rev.files):
                    found.append(
                        {"model": repo.repo_id, "where": str(rev.snapshot_path), "kind": "hub cache"}
                    )
                    break
    except Exception:  # no cache directory yet: nothing cached, not an error
        pass
    return found
