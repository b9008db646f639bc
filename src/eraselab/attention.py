"""Cross-attention maps of chosen words, captured during generation, and how concentrated they are.

Capture. `AttentionRecorder` wraps the attention processor of every cross-attention module (`attn2`) of
`pipe.unet` (SD 1.x/2.x and SDXL alike: SDXL's keys are its two encoders' states concatenated along features,
so token positions are those of the shared CLIP BPE). On Flux it wraps the joint attention of every
double-stream block (`transformer_blocks.*.attn`, the blocks with separate text projections) and keeps the
text→image part: image queries against the T5 text keys, softmax taken over all (text and image) keys as the
model does, so a word's map is its share of each image token's attention; tokens are T5's (`tokenizer_2`).
The wrapper calls the original processor unchanged (so images are bit-identical with and without
recording) and, beside it, recomputes softmax(QKᵀ/√d) for the conditional rows only, keeps the columns of the
chosen words' tokens, averages over heads, resamples every layer's map bilinearly to the latent resolution and
accumulates; the stored map is the mean over layers (equal weight) and denoising steps.

Contract with the generation engine (eraselab.generate's GenerationHook; no second pass):
    recorder.on_batch_start(pipe, probes)             # before the first UNet call of a batch of B probes
    recorder.on_unet_call(step, t, rows)              # before each UNet call: rows[n] = (probe index, branch)
                                                      # with branch "uncond" / "cond" / "extra<j>", or None
    recorder.on_batch_end(probes, image_keys)         # after the last step: restores processors, stores maps
Only the rows whose branch is "cond" are recorded, each into its probe's map, so any row order and any split
of a batch into several UNet calls works. Without on_unet_call (e.g. diffusers' own `pipe(...)`), the rows are
taken to be stacked [uncond × B, cond × B, extras…]: N == B rows → all conditional (no CFG); N = k·B, k ≥ 2 →
rows B…2B−1; or the caller passes `cond_rows=[...]` (one UNet row index per probe) to on_batch_start.
The latent size is read from the UNet's input, so any image size works.

Maps. For a word (several BPE tokens when the tokenizer splits it) the map at each latent pixel is the total
attention probability of its tokens, so the values of all 77 tokens sum to 1 at every pixel. Metrics normalise
a map over space into a distribution p (Σ p = 1):
    entropy            −Σ p log p (nats); normalized_entropy = entropy / log(#pixels) ∈ [0, 1]
                       (uniform → 1, one pixel → 0)
    top5_mass          share of p in the top 5 % of pixels (uniform → ≈0.05, one pixel → 1)
    spread             √(Σ p ‖x − μ‖²) with pixel centres in [0, 1]² (one pixel → 0,
                       uniform on n×n → √((n²−1)/(6n²)) ≈ 0.408)
    mass               mean over pixels of the raw map: the word's average share of the attention
`compare_attention(before, after)` turns two metric dicts into deltas and a verdict: "concentrated" (peakier:
entropy down, top-5 % mass up), "dispersed" (flatter: entropy up, top-5 % mass down), "unchanged" or "mixed" —
the concentration / dispersal of the target's tokens after erasure that SEE reports.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .errors import EraseLabError

TOP_FRACTION = 0.05


# --- tokens -------------------------------------------------------------------------------------------------
def token_positions(tokenizer, prompt: str, word: str) -> list[int]:
    """Positions (in the padded 77-token sequence, 0 = start token) of every occurrence of `word`'s tokens in
    `prompt`; [] when the word does not occur. CLIP's BPE never merges across words, so a word tokenises the
    same alone as in context."""
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length)["input_ids"]
    target = tokenizer(word, add_special_tokens=False)["input_ids"]
    if not target:
        return []
    found: list[int] = []
    for start in range(len(ids) - len(target) + 1):
        if ids[start:start + len(target)] == target:
            found.extend(range(start, start + len(target)))
    return sorted(set(found))


# --- metrics on one map ------------------------------------------------------------------------------------
def spatial_distribution(attn_map) -> np.ndarray:
    a = np.clip(np.asarray(attn_map, dtype=np.float64), 0.0, None)
    total = a.sum()
    if a.ndim != 2 or total <= 0:
        raise EraseLabError(f"an attention map must be a 2-D array with positive mass, got shape {a.shape} "
                            f"and sum {total}; record the word in a prompt that contains it")
    return a / total


def attention_metrics(attn_map) -> dict[str, float]:
    p = spatial_distribution(attn_map)
    h, w = p.shape
    flat = p.ravel()
    nz = flat[flat > 0]
    entropy = float(-(nz * np.log(nz)).sum())
    k = max(1, math.ceil(TOP_FRACTION * flat.size))
    top = float(np.sort(flat)[-k:].sum())
    ys, xs = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
    py, px = p.sum(axis=1), p.sum(axis=0)
    my, mx = (py * ys).sum(), (px * xs).sum()
    spread = math.sqrt(float((py * (ys - my) ** 2).sum() + (px * (xs - mx) ** 2).sum()))
    return {"entropy": entropy, "normalized_entropy": entropy / math.log(flat.size) if flat.size > 1 else 0.0,
            "top5_mass": top, "spread": spread, "mass": float(np.asarray(attn_map, dtype=np.float64).mean())}


def compare_attention(before: dict, after: dict, tol: float = 0.02) -> dict:
    """Deltas (after − before) of each metric and whether the map became peakier or flatter.

    `tol` is the change of normalised entropy (and of top-5 % mass) below which a map counts as unchanged."""
    delta = {
        k: after[k] - before[k] for k in ("entropy", "normalized_entropy", "top5_mass", "spread", "mass")
    }
    d_ent, d_top = delta["normalized_entropy"], delta["top5_mass"]
    if abs(d_ent) <= tol and abs(d_top) <= tol:
        verdict = "unchanged"
    elif d_ent < 0 and d_top > 0:
        verdict = "concentrated"
    elif d_ent > 0 and d_top < 0:
        verdict = "dispersed"
    else:
        verdict = "mixed"
    return {"delta": delta, "verdict": verdict, "tol": tol}


# --- heatmaps -----------------------------------------------------------------------------------------------
def save_heatmaps(
    maps: dict[str, np.ndarray], path: str | Path, image=None, title: str | None = None
) -> Path:
    """One PNG with a panel per word (optionally over the generated image), each map scaled to its own max."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not maps:
        raise EraseLabError("no attention maps to draw; record words that occur in the prompt")
    n = len(maps) + (image is not None)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9), squeeze=False)
    axes = axes[0]
    if image is not None:
        axes[0].imshow(image)
        axes[0].set_title("image", fontsize=9)
    for ax, (word, m) in zip(axes[n - len(maps):], maps.items()):
        if image is not None:
            ax.imshow(image, alpha=0.45)
            extent = (-0.5, image.size[0] - 0.5, image.size[1] - 0.5, -0.5)
        else:
            extent = None
        ax.imshow(np.asarray(m), cmap="inferno", alpha=0.75 if image is not None else 1.0, extent=extent,
                  interpolation="bilinear")
        met = attention_metrics(m)
        ax.set_title(f"{word}\nH={met['normalized_entropy']:.2f} top5%={met['top5_mass']:.2f}", fontsize=8)
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- capture ------------------------------------------------------------------------------------------------
def _grid(length: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) of a layer whose sequence has `length` positions, given the latent size (the UNet halves it,
    rounding up, at each level)."""
    H, W = latent_hw
    for level in range(8):
        h, w = math.ceil(H / 2 ** level), math.ceil(W / 2 ** level)
        if h * w == length:
            return h, w
    side = math.isqrt(length)
    if side * side == length:
        return side, side
    raise EraseLabError(f"cannot lay out an attention map of {length} positions on a {H}x{W} latent; record "
                        "through pipe.unet so that the recorder sees the latent size")


class _RecordingProcessor:
    """Runs the original processor, and records the conditional rows' attention to the chosen tokens."""

    def __init__(self, original, recorder: AttentionRecorder, name: str):
        self.original = original
        self.recorder = recorder
        self.name = name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        if encoder_hidden_states is not None:
            self.recorder._record(attn, hidden_states, encoder_hidden_states, attention_mask, self.name)
        return out


class _FluxRecordingProcessor:
    """Runs the original joint-attention processor, and records the image rows' attention to chosen text
    tokens."""

    def __init__(self, original, recorder: AttentionRecorder, name: str):
        self.original = original
        self.recorder = recorder
        self.name = name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None, **kwargs):
        out = self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb,
                            **kwargs)
        if encoder_hidden_states is not None:
            self.recorder._record_joint(attn, hidden_states, encoder_hidden_states, image_rotary_emb)
        return out


def _recording_sites(pipe):
    """(denoiser, [(name, module)] to wrap, processor wrapper, tokenizer of the recorded text) by family."""
    from .generation.family import family_of

    if family_of(pipe) == "flux":
        transformer = pipe.transformer
        if type(transformer).__name__ != "FluxTransformer2DModel":
            raise EraseLabError(f"attention recording reads UNet cross-attention or Flux joint attention; "
                                f"this pipeline's {type(transformer).__name__} has neither; run with "
                                "--no-attention")
        sites = [(n, m) for n, m in transformer.named_modules()
                 if n.startswith("transformer_blocks.") and n.endswith(".attn")
                 and hasattr(m, "set_processor")]
        return transformer, sites, _FluxRecordingProcessor, getattr(pipe, "tokenizer_2", None)
    sites = [(n, m) for n, m in pipe.unet.named_modules()
             if n.endswith("attn2") and hasattr(m, "set_processor")]
    return pipe.unet, sites, _RecordingProcessor, getattr(pipe, "tokenizer", None)


class AttentionRecorder:
    """Average cross-attention maps of chosen words per probe over layers, heads and steps (see module doc).

    words: record these words (each probe records those that occur in its prompt);
    token_indices: or record these fixed token positions (named "#i");
    neither: record each probe's own concepts.
    resolutions: keep only layers whose map side (the larger one) is in this set, e.g. {16} as in
    prompt-to-prompt; None keeps every cross-attention layer.
    """

    def __init__(self, words: Sequence[str] | None = None, token_indices: Sequence[int] | None = None,
                 resolutions: Sequence[int] | None = None):
        if words is not None and token_indices is not None:
            raise EraseLabError("pass either words or token_indices to the attention recorder, not both")
        self.words = list(words) if words is not None else None
        self.token_indices = [int(i) for i in token_indices] if token_indices is not None else None
        self.resolutions = set(resolutions) if resolutions else None
        self.maps: dict[str, dict[str, np.ndarray]] = {}
        self.prompts: dict[str, str] = {}
        self._originals: dict = {}
        self._batch: dict | None = None
        self._unet_hook = None

    # the engine's hook -----------------------------------------------------------------------------------
    def on_batch_start(self, pipe, probes: Sequence, cond_rows: Sequence[int] | None = None) -> None:
        if self._originals:
            raise EraseLabError("the attention recorder is already installed; call on_batch_end first")
        denoiser, sites, wrapper, tokenizer = _recording_sites(pipe)
        if tokenizer is None:
            from .models import clip_tokenizer

            tokenizer = clip_tokenizer()
        groups = [self._token_groups(tokenizer, p) for p in probes]
        self._batch = {"groups": groups, "n": len(probes), "latent": None,
                       "cond_rows": list(cond_rows) if cond_rows is not None else None,
                       "sums": [{w: None for w in g} for g in groups], "calls": [0] * len(probes),
                       "layout": None}
        # The latent size is read from the UNet's input at each call rather than from the probes, so the
        # layout of every layer's map is known whatever image size the engine chose.
        self._unet_hook = denoiser.register_forward_pre_hook(self._see_latent, with_kwargs=True)
        for name, module in sites:
            self._originals[name] = (module, module.processor)
            module.set_processor(wrapper(module.processor, self, name))
        if not self._originals:
            self.restore()
            self._batch = None
            raise EraseLabError("this denoiser has no cross-attention (attn2) or joint-attention modules to "
                                "record")

    def on_batch_end(self, probes: Sequence, image_keys: Sequence[str]) -> None:
        self.restore()
        batch, self._batch = self._batch, None
        if batch is None:
            raise EraseLabError("on_batch_end without on_batch_start; install the recorder first")
        if len(image_keys) != batch["n"] or len(probes) != batch["n"]:
            raise EraseLabError(
                f"on_batch_end got {len(probes)} probes and {len(image_keys)} keys for a batch "
                f"of {batch['n']}; pass the same probes as to on_batch_start"
            )
        for i, (probe, key) in enumerate(zip(probes, image_keys)):
            calls = batch["calls"][i]
            self.maps[key] = {w: (s / calls).cpu().numpy() for w, s in batch["sums"][i].items()
                              if s is not None and calls}
            self.prompts[key] = probe.prompt

    def restore(self) -> None:
        """Put the original processors back (also safe to call after an exception in the denoising loop)."""
        for module, original in self._originals.values():
            module.set_processor(original)
        self._originals = {}
        if self._unet_hook is not None:
            self._unet_hook.remove()
            self._unet_hook = None

    # internals ----------------------------------------------------------------------------------------------
    def _token_groups(self, tokenizer, probe) -> dict[str, list[int]]:
        if self.token_indices is not None:
            return {f"#{i}": [i] for i in self.token_indices}
        words = self.words if self.words is not None else list(probe.concepts)
        groups = {w: token_positions(tokenizer, probe.prompt, w) for w in words}
        return {w: pos for w, pos in groups.items() if pos}

    def _see_latent(self, denoiser, args, kwargs) -> None:
        if self._batch is None:
            return
        image_ids = kwargs.get("img_ids")
        if image_ids is not None:  # Flux: packed tokens, their (row, column) in ids columns 1 and 2
            self._batch["latent"] = (int(image_ids[:, 1].max()) + 1, int(image_ids[:, 2].max()) + 1)
            return
        sample = args[0] if args else kwargs.get("sample")
        if sample is not None:
            self._batch["latent"] = tuple(sample.shape[-2:])

    def on_unet_call(self, step_index: int, timestep, rows: Sequence) -> None:
        if self._batch is not None:
            self._batch["layout"] = list(rows)

    def _cond_rows(self, total: int) -> list[tuple[int, int]]:
        """(UNet row, probe index) of every conditional row of the current UNet call."""
        b = self._batch
        if b["layout"] is not None:
            return [(n, r[0]) for n, r in enumerate(b["layout"]) if r is not None and r[1] == "cond"]
        n = b["n"]
        if b["cond_rows"] is not None:
            rows = b["cond_rows"]
        elif total == n:
            rows = list(range(n))
        elif total % n == 0 and total >= 2 * n:
            rows = list(range(n, 2 * n))
        else:
            raise EraseLabError(f"the UNet batch has {total} rows for {n} probes; pass cond_rows to "
                                "on_batch_start or call on_unet_call with the row layout")
        return list(zip(rows, range(n)))

    def _rows_to_record(self, rows: int, call: str, denoiser: str, attribute: str) -> list[tuple[int, int]]:
        """(row, probe index) of this call's conditional rows whose probes have words to record; [] when
        nothing is being recorded."""
        b = self._batch
        if b is None or not any(b["groups"]):
            return []
        if b["latent"] is None:
            raise EraseLabError(f"the attention recorder saw a {call} call before any {denoiser} call; run "
                                f"the denoiser through pipe.{attribute}")
        return [(row, i) for row, i in self._cond_rows(rows) if b["groups"][i]]

    def _add(self, probe: int, word: str, attention_map: torch.Tensor) -> None:
        sums = self._batch["sums"][probe]
        sums[word] = attention_map if sums[word] is None else sums[word] + attention_map

    @torch.no_grad()
    def _record(self, attn, hidden_states, encoder_hidden_states, attention_mask, name: str) -> None:
        pairs = self._rows_to_record(hidden_states.shape[0], "cross-attention", "UNet", "unet")
        if not pairs:
            return
        b = self._batch
        if hidden_states.ndim == 4:
            n_, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(n_, c, h * w).transpose(1, 2)
            hw = (h, w)
        else:
            hw = _grid(hidden_states.shape[1], b["latent"])
        if self.resolutions is not None and max(hw) not in self.resolutions:
            return
        idx = torch.tensor([row for row, _ in pairs], device=hidden_states.device)
        hs = hidden_states.index_select(0, idx)
        ehs = encoder_hidden_states.index_select(0, idx)
        if getattr(attn, "group_norm", None) is not None:
            hs = attn.group_norm(hs.transpose(1, 2)).transpose(1, 2)
        if getattr(attn, "norm_cross", False):
            ehs = attn.norm_encoder_hidden_states(ehs)
        mask = None
        if attention_mask is not None:
            mask = attn.prepare_attention_mask(attention_mask.index_select(0, idx), ehs.shape[1], len(pairs))
        q = attn.head_to_batch_dim(attn.to_q(hs))
        k = attn.head_to_batch_dim(attn.to_k(ehs))
        probs = attn.get_attention_scores(q, k, mask).float()  # (rows·heads, L, T)
        probs = probs.view(len(pairs), attn.heads, probs.shape[1], probs.shape[2]).mean(dim=1)  # (rows, L, T)
        latent = b["latent"]
        for r, (_, i) in enumerate(pairs):
            groups = b["groups"][i]
            words = list(groups)
            cols = torch.stack([probs[r][:, groups[w]].sum(-1) for w in words])  # (words, L)
            grid = cols.view(len(words), 1, *hw)
            if hw != latent:
                grid = torch.nn.functional.interpolate(
                    grid, size=latent, mode="bilinear", align_corners=False
                )
            for w, m in zip(words, grid[:, 0]):
                self._add(i, w, m)
            b["calls"][i] += 1  # one (layer, step) contribution to this probe's average

    @torch.no_grad()
    def _record_joint(self, attn, hidden_states, encoder_hidden_states, rotary) -> None:
        """Flux double-stream block: image queries against [text; image] keys (RoPE as the processor applies
        it), softmax over all keys, the text columns kept; one head at a time to bound memory."""
        from diffusers.models.embeddings import apply_rotary_emb

        pairs = self._rows_to_record(hidden_states.shape[0], "joint-attention", "transformer",
                                     "transformer")
        if not pairs:
            return
        b = self._batch
        hw = b["latent"]
        if self.resolutions is not None and max(hw) not in self.resolutions:
            return
        idx = torch.tensor([row for row, _ in pairs], device=hidden_states.device)
        hs, ehs = hidden_states.index_select(0, idx), encoder_hidden_states.index_select(0, idx)
        text_len = ehs.shape[1]
        query = attn.norm_q(attn.to_q(hs).unflatten(-1, (-1, attn.head_dim)))
        key = torch.cat([attn.norm_added_k(attn.add_k_proj(ehs).unflatten(-1, (-1, attn.head_dim))),
                         attn.norm_k(attn.to_k(hs).unflatten(-1, (-1, attn.head_dim)))], dim=1)
        if rotary is not None:
            query = apply_rotary_emb(query, tuple(r[text_len:] for r in rotary), sequence_dim=1)
            key = apply_rotary_emb(key, rotary, sequence_dim=1)
        heads = query.shape[2]
        probs = 0
        for h in range(heads):
            scores = torch.einsum("bnd,bsd->bns", query[:, :, h].float(), key[:, :, h].float())
            probs = probs + (scores * query.shape[-1] ** -0.5).softmax(dim=-1)[:, :, :text_len] / heads
        for r, (_, i) in enumerate(pairs):
            groups = b["groups"][i]
            for w in groups:
                self._add(i, w, probs[r][:, groups[w]].sum(-1).view(*hw))
            b["calls"][i] += 1

    # results
    # --------------------------------------------------------------------------------------------------
    def metrics(self) -> dict[str, dict[str, dict[str, float]]]:
        """{image key: {word: attention_metrics(map)}} for everything recorded."""
        return {key: {w: attention_metrics(m) for w, m in maps.items()} for key, maps in self.maps.items()}

    def save(self, path: str | Path) -> Path:
        """All maps in one .npz, arrays named "<image key>/<word>"."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **{f"{k}/{w}": m for k, maps in self.maps.items() for w, m in maps.items()})
        return path


def load_maps(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    with np.load(path) as data:
        for name in data.files:
            key, word = name.split("/", 1)
            out.setdefault(key, {})[word] = data[name]
    return out
