"""UCE on Flux, as rohitgandikota/unified-concept-editing@28c81ed5a3e41277c1a0dc55f738e7ab188e9718,
trainscripts/uce_flux_edit.py (recipe "flux" of methods/uce.py).

Flux has no cross-attention: text enters the joint attention through two Linear layers of the transformer, and
the script edits exactly these (every module whose name contains 'context_embedder' or
'text_embedder.linear_1'):

- `context_embedder`: T5's hidden states (4096 wide on FLUX.1) → the joint attention's text stream;
- `time_text_embed.text_embedder.linear_1`: CLIP's pooled output (768 wide) → the time/text embedding that
  modulates every block.

Each text (erased, guide, preserved concept; guide "" for objects, "art" for styles, as in UCE) is encoded as
FluxPipeline.encode_prompt does (the same text to CLIP and T5, T5 padded to `max_sequence_length`: 256 on
-schnell, 512 otherwise) and contributes one row per module: T5's state at its last word token (position
Σ attention mask − 2, which for "" is −1, the last padding position) and CLIP's pooled vector. With
v* = W_old c + b computed by the module itself (bias included, as the script calls `module(c)`):

    W_new = (λ W_old + s_e Σ_i v*(c_i^guide) c_iᵀ + s_p Σ_j v*(c_j) c_jᵀ)
            (λ I + s_e Σ c_i c_iᵀ + s_p Σ c_j c_jᵀ)⁻¹,

biases unchanged. Defaults as the script: λ 0.5, s_e 1, s_p 1, no texts retained but the preserved concepts.
Because the layer adds its bias again, the edited layer maps each text c to about v* + b, one bias away from
the old output it was meant to keep (preserved concepts) or reach (the guide's). eraselab's option
`flux_target_bias` (true = the script) set to false takes v* = W_old c instead, so the edited layer's outputs
(bias included) are the old ones.

Deviations: the script picks each module's text by its input width (768 → pooled CLIP, else T5, with a
try/except); eraselab picks by the module's name, the same choice on FLUX.1 and also right on models whose
widths differ from FLUX.1's. The solve is in float64 (the script: float32 inverse).
"""
from __future__ import annotations

import dataclasses

import torch

from ..errors import EraseLabError
from .base import EraseRequest
from .uce import (
    ClosedFormEdit,
    effective_preserve_scale,
    preserved_concepts,
    resolve_model_defaults,
    retained_texts,
)

# Substrings of the module names the script edits, and which text each one reads.
T5_MODULE, POOLED_MODULE = "context_embedder", "text_embedder.linear_1"
SCHNELL_T5_TOKENS, DEV_T5_TOKENS = 256, 512


def flux_modules(transformer: torch.nn.Module) -> dict[str, tuple[torch.nn.Linear, str]]:
    """Edit parameter name → (module, "t5" or "pooled") for every module the script edits, in model order."""
    out = {}
    for name, module in transformer.named_modules():
        if (T5_MODULE in name or POOLED_MODULE in name) and isinstance(module, torch.nn.Linear):
            out[f"transformer.{name}.weight"] = (module, "t5" if T5_MODULE in name else "pooled")
    if not any(kind == "t5" for _, kind in out.values()):
        raise EraseLabError("this transformer has no context_embedder (the layer mapping T5 text into the "
                            "joint attention) for UCE to edit; use a FLUX.1-style model")
    return out


def default_t5_tokens(pipe) -> int:
    """uce_flux_edit.py's max_sequence_length: 256 for FLUX.1-schnell (the model without guidance embedding),
    512 otherwise."""
    guided = bool(pipe.transformer.config.get("guidance_embeds", False))
    return DEV_T5_TOKENS if guided else SCHNELL_T5_TOKENS


@torch.no_grad()
def flux_text_rows(pipe, texts: list[str], t5_tokens: int) -> dict[str, dict[str, torch.Tensor]]:
    """{text: {"t5": its T5 state at its last word token (d_t5,), "pooled": CLIP's pooled output (d_clip,)}},
    float32; one batched pass per encoder."""
    texts = list(dict.fromkeys(texts))
    clip, t5 = pipe.text_encoder, pipe.text_encoder_2
    clip_ids = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids
    pooled = clip(clip_ids.to(clip.device), output_hidden_states=False).pooler_output.float()
    tokens = pipe.tokenizer_2(texts, padding="max_length", max_length=t5_tokens, truncation=True,
                              return_tensors="pt")
    states = t5(tokens.input_ids.to(t5.device), output_hidden_states=False)[0].float()
    # Σ mask − 2: the last word token before </s>; "" gives −1, i.e. the last padding position, as the
    # script's indexing does.
    last = tokens.attention_mask.sum(1) - 2
    return {x: {"t5": states[i, int(last[i])], "pooled": pooled[i].to(states.device)}
            for i, x in enumerate(texts)}


def flux_uce_weight(weight: torch.Tensor, bias: torch.Tensor | None, erase: torch.Tensor, guide: torch.Tensor,
                    preserve: torch.Tensor, lam: float, erase_scale: float,
                    preserve_scale: float) -> torch.Tensor:
    """The closed form above, in float64: rows are texts (erase and guide aligned, (n, d); preserve (m, d));
    `bias` is the one v* = W_old c + b includes (None: v* = W_old c)."""
    w = weight.double()
    ce, cg, cp = (r.double().to(w.device) for r in (erase, guide, preserve))
    b = torch.zeros(w.shape[0], dtype=torch.float64, device=w.device) if bias is None else bias.double()
    v_guide, v_keep = cg @ w.T + b, cp @ w.T + b
    mat1 = lam * w + erase_scale * v_guide.T @ ce + preserve_scale * v_keep.T @ cp
    mat2 = (lam * torch.eye(w.shape[1], dtype=torch.float64, device=w.device) + erase_scale * ce.T @ ce
            + preserve_scale * cp.T @ cp)
    # W_new = mat1 mat2⁻¹ with mat2 symmetric positive definite: (mat2⁻¹ mat1ᵀ)ᵀ.
    return torch.linalg.solve(mat2, mat1.T).T.to(weight.dtype)


def check_flux_config(cfg) -> None:
    if cfg.tokens != "last" or cfg.preserve_tokens != "last":
        raise EraseLabError("on Flux, UCE takes each text's last word token (tokens=last, "
                            "preserve_tokens=last, as uce_flux_edit.py); drop the tokens and "
                            "preserve_tokens keys")
    if cfg.check:
        raise EraseLabError("the collapse check (check=true) is for UNet cross-attention; on Flux pass "
                            "check=false")


def erase_flux(pipe, request: EraseRequest, method: str):
    domain = request.domain_for(pipe)
    cfg = resolve_model_defaults(request.config, domain)
    check_flux_config(cfg)
    cfg = dataclasses.replace(cfg, t5_tokens=cfg.t5_tokens or default_t5_tokens(pipe))
    modules = flux_modules(pipe.transformer)
    state = ClosedFormEdit(pipe, {name: module for name, (module, _) in modules.items()})
    preserve = preserved_concepts(request.targets, request.preserve, cfg.auto_preserve, domain)
    erased = [cfg.template.format(t) for t in request.targets]
    kept = retained_texts(preserve, cfg)
    rows = flux_text_rows(pipe, [*erased, cfg.guide, *kept], cfg.t5_tokens)
    s_p = effective_preserve_scale(cfg.preserve_scale, len(kept))
    new = {}
    for name, (module, kind) in modules.items():
        def stack(texts, kind=kind, like=module.weight):
            if not texts:
                return torch.zeros(0, like.shape[1])
            return torch.stack([rows[x][kind] for x in texts])

        bias = module.bias.detach() if cfg.flux_target_bias else None
        guides = stack([cfg.guide] * len(erased))
        new[name] = flux_uce_weight(state.original[name], bias, stack(erased), guides, stack(kept), cfg.lam,
                                    cfg.erase_scale, s_p)
    extras = {"text_rows": {"erase": len(erased), "preserve": len(kept)}, "t5_tokens": cfg.t5_tokens,
              "preserve_scale": s_p, "modules": {n: kind for n, (_, kind) in modules.items()}}
    return state.finish(new, method, cfg.as_dict(), request.targets, preserve, extras)
