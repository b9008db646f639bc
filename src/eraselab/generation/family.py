"""Which pipelines the generation engine can run, and the family object that runs each.

The engine generates with SD 1.x/2.x-style pipelines (UNet + VAE + CLIP text encoder), SDXL base-style ones
(two text encoders, pooled text, added time ids) and Flux ones (MMDiT transformer, T5 + pooled CLIP text);
check_generation_family refuses the others in one line before any work (erasure calls it too: an edit for a
pipeline the engine cannot generate with could never be used).
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


# The components each family's generation needs.
_PARTS = {"sd": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
          "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
          "flux": ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                   "scheduler")}
_DESCRIPTION = {"sd": "Stable Diffusion 1.x/2.x (UNet + VAE + CLIP text encoder)",
                "sdxl": "SDXL base (UNet + VAE + two CLIP text encoders)",
                "flux": "Flux (MMDiT transformer + VAE + CLIP and T5 text encoders)"}


def check_supported(pipe) -> None:
    """Refuse, in one line, pipelines the generation engine cannot run (so nothing is made for them)."""
    check_generation_family(pipe)


def check_generation_family(pipe) -> str:
    """The pipeline's family when the generation engine can run it; otherwise a one-line EraseLabError."""
    family = family_of(pipe)
    if family == "flux":
        return _check_flux(pipe)
    if family == "sdxl" and getattr(pipe, "text_encoder", None) is None \
            and getattr(pipe, "text_encoder_2", None) is not None:
        raise EraseLabError(
            "this SDXL pipeline has no first text encoder (an SDXL refiner, an image-to-image "
            "model); generate with the SDXL base model"
        )
    missing = [n for n in _PARTS[family] if getattr(pipe, n, None) is None]
    if missing:
        raise EraseLabError(f"the pipeline has no {missing[0]}; eraselab generates with "
                            f"{' or '.join(_DESCRIPTION.values())} pipelines")
    unet_config = getattr(pipe.unet, "config", {})
    if family == "sdxl" and unet_config.get("addition_embed_type") != "text_time":
        raise EraseLabError(f"this UNet's added condition is {unet_config.get('addition_embed_type')!r}; "
                            "eraselab generates with SDXL-style UNets whose added condition is 'text_time'")
    if unet_config.get("time_cond_proj_dim") is not None:
        raise EraseLabError("guidance-embedded (LCM-style) UNets are not supported by the generation engine; "
                            "use an SD 1.x/2.x or SDXL model")
    return family


def _check_flux(pipe) -> str:
    transformer = pipe.transformer
    if type(transformer).__name__ != "FluxTransformer2DModel":
        raise EraseLabError(f"{type(transformer).__name__} pipelines (SD3-style and other transformers) are "
                            "not supported by the generation engine; use an SD 1.x/2.x, SDXL or Flux model")
    missing = [n for n in _PARTS["flux"] if getattr(pipe, n, None) is None]
    if missing:
        raise EraseLabError(f"the Flux pipeline has no {missing[0]}; eraselab generates with "
                            f"{_DESCRIPTION['flux']} pipelines")
    return "flux"


def generation_family(pipe):
    """The object the denoising loop asks for everything family-specific (generation/sd.py, sdxl.py,
    flux.py)."""
    family = check_generation_family(pipe)
    if family == "flux":
        from .flux import FluxFamily

        return FluxFamily(pipe)
    if family == "sdxl":
        from .sdxl import SDXLFamily

        return SDXLFamily(pipe)
    from .sd import SDFamily

    return SDFamily(pipe)

