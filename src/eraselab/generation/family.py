"""Which pipelines the generation engine can run: SD 1.x/2.x-style (UNet + VAE + CLIP text encoder).

Generation and erasure both refuse the others in one line before any work (an edit for a model family the
engine cannot generate with could never be used).
"""
from __future__ import annotations

from ..errors import EraseLabError

# The model families eraselab names: "sd" (SD 1.x/2.x: UNet + one CLIP text encoder), "sdxl" (UNet + two text
# encoders, pooled text and added time ids), "flux" (MMDiT transformer, T5 + CLIP pooled text, flow matching).
FAMILIES = ("sd", "sdxl", "flux")


def family_of(pipe) -> str:
    """The family of a diffusers pipeline (or an object with the same components), from its parts."""
    if getattr(pipe, "unet", None) is None and getattr(pipe, "transformer", None) is not None:
        return "flux"
    unet_config = getattr(getattr(pipe, "unet", None), "config", {})
    if getattr(pipe, "text_encoder_2", None) is not None or unet_config.get("addition_embed_type"):
        return "sdxl"
    return "sd"


def check_supported(pipe) -> None:
    """Refuse, in one line, pipelines the generation engine cannot run (so nothing is made for them)."""
    parts = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    missing = [n for n in parts if getattr(pipe, n, None) is None]
    if missing and not (missing == ["unet"] and getattr(pipe, "transformer", None) is not None):
        raise EraseLabError(f"the pipeline has no {missing[0]}; eraselab generates with Stable Diffusion "
                            "1.x/2.x style pipelines (UNet + VAE + CLIP text encoder)")
    check_family(pipe)


def check_family(pipe) -> None:
    """Refuse model families the engine does not support yet (SDXL, transformer-based, guidance-embedded)."""
    if getattr(pipe, "unet", None) is None and getattr(pipe, "transformer", None) is not None:
        raise EraseLabError("transformer-based pipelines (Flux/SD3-style) are not supported yet; use an SD "
                            "1.x/2.x model")
    unet_config = getattr(getattr(pipe, "unet", None), "config", {})
    if getattr(pipe, "text_encoder_2", None) is not None or unet_config.get("addition_embed_type"):
        raise EraseLabError("SDXL-style pipelines (two text encoders, added time ids) are not supported by "
                            "the generation engine yet; use an SD 1.x/2.x model")
    if unet_config.get("time_cond_proj_dim") is not None:
        raise EraseLabError("guidance-embedded (LCM-style) UNets are not supported by the generation engine; "
                            "use an SD 1.x/2.x model")
