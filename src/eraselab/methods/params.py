"""Which UNet parameters a method may change: the ESD parameter groups and the cross-attention K/V
projections.

diffusers names the text cross-attention of every transformer block `attn2` (self-attention is `attn1`), the
output layer `conv_norm_out`/`conv_out` and the time embedding `time_embedding`; these names are how the
reference implementations select parameters too.
"""
from __future__ import annotations

import torch

from ..errors import EraseLabError

GROUPS = ("x", "x-strict", "u", "all", "u-linear-conv")
# Module classes whose parameters esd_sd.py (rohitgandikota/erasing) trains; norm layers are not among them.
LINEAR_CONV = ("Linear", "Conv2d", "LoRACompatibleLinear", "LoRACompatibleConv")
_OUTPUT_AND_TIME = ("conv_out", "conv_norm_out", "time_embedding", "time_proj", "add_embedding")


def check_cross_attention(pipe) -> None:
    """Refuse models whose denoiser has no text cross-attention (nothing for these methods to edit)."""
    unet = getattr(pipe, "unet", None)
    if not isinstance(unet, torch.nn.Module):
        raise EraseLabError(
            "this model has no UNet (e.g. a transformer-based pipeline); these erasure methods "
            "edit a Stable-Diffusion-style UNet: use an SD 1.x/2.x model"
        )
    if not any(name.endswith("attn2") for name, _ in unet.named_modules()):
        raise EraseLabError(
            "this model's UNet has no text cross-attention (attn2) layers, so there is nothing to "
            "erase a text concept from; use a text-conditioned model such as SD 1.x"
        )


def in_group(name: str, group: str) -> bool:
    """Whether UNet parameter `name` is trained by ESD parameter group `group`.

    x: every parameter of the cross-attention modules (ESD-x, for styles and specific concepts);
    x-strict: only the cross-attention key and value projections;
    u: everything but cross-attention, the output layer and the time embedding (ESD-u, for global concepts);
    all: the whole UNet.
    """
    parts = name.split(".")
    if group == "all":
        return True
    if group == "x":
        return "attn2" in parts
    if group == "x-strict":
        return "attn2" in parts and (".attn2.to_k." in f".{name}" or ".attn2.to_v." in f".{name}")
    if group == "u":
        return "attn2" not in parts and parts[0] not in _OUTPUT_AND_TIME
    raise EraseLabError(f"parameter group must be one of {', '.join(GROUPS)}, not {group!r}")


def parameter_group(unet: torch.nn.Module, group: str) -> list[str]:
    """UNet parameter names (relative to the UNet) in `group`.

    Besides the name-based groups of `in_group`, "u-linear-conv" is esd_sd.py's esd-u: every parameter of a
    Linear or Conv2d module outside cross-attention (so the output conv and the time embedding too, but no
    norm layers), in module order."""
    if group == "u-linear-conv":
        names = [f"{m}.{n}" for m, module in unet.named_modules()
                 if type(module).__name__ in LINEAR_CONV and "attn2" not in m
                 for n, _ in module.named_parameters(recurse=False)]
    else:
        names = [n for n, _ in unet.named_parameters() if in_group(n, group)]
    if not names:
        raise EraseLabError(
            f"parameter group {group!r} selects no parameters of this UNet; choose another group"
        )
    return names


def kv_projections(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Linear]]:
    """(parameter name of the weight, module) for every cross-attention key/value projection, in model
    order."""
    out = []
    for name, module in unet.named_modules():
        if name.endswith(("attn2.to_k", "attn2.to_v")) and isinstance(module, torch.nn.Linear):
            out.append((f"{name}.weight", module))
    return out


def unet_prefixed(names) -> list[str]:
    """UNet-relative parameter names as Edit names (component-prefixed)."""
    return [f"unet.{n}" for n in names]
