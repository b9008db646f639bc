"""Train the miniworld model: an AutoencoderKL (32×32 RGB → 8×8×4 latents), then a small CLIPTextModel (real
CLIP tokenizer) jointly with a UNet2DConditionModel through the diffusion loss, saved as one diffusers
StableDiffusionPipeline with SD's DDIM scheduler settings.

Training is budgeted in wall-clock minutes (the learning-rate schedules follow elapsed time) or, for the
diffusion stage, in steps (`steps`: the schedule follows the step count, so the run does not depend on the
machine's speed); it is seeded and resumable: every stage checkpoints into OUT/checkpoint and a rerun of the
same command continues from there.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ..errors import EraseLabError
from .captions import caption_with_phrases
from .grounding import CrossAttentionTap, grounding_loss, grounding_targets
from .render import IMAGE_SIZE, Scene, SceneObject, render_dataset

LATENT_SIZE = 8
TEXT_DIM = 64
CKPT = "checkpoint"


@dataclass
class TrainConfig:
    seed: int = 0
    minutes: float = 45.0
    n_images: int = 24000
    vae_fraction: float = 0.3        # share of the budget for the autoencoder
    vae_batch: int = 32
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    batch: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    cfg_dropout: float = 0.1         # empty captions, for classifier-free guidance
    ema_decay: float = 0.998
    min_snr_gamma: float = 5.0
    checkpoint_every_s: float = 120.0
    init: str | None = None  # continue from a trained pipeline ("miniworld" = the shipped weights)
    steps: int | None = None  # diffusion steps for this run instead of a time budget (the LR follows them)
    pair_share: float | None = None  # share of each batch drawn from two-object scenes (None: as rendered)
    grounding: float = 0.0           # weight of the token grounding loss (miniworld/grounding.py); 0 = off


# ---- architecture -----------------------------------------------------------------------------------------
def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=IMAGE_SIZE,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
    )


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM,
                         num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=77,
                         bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    return CLIPTextModel(cfg)


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(48, 96, 96), norm_num_groups=16, cross_attention_dim=TEXT_DIM,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8)


def sd_ddim_scheduler():
    """DDIM with Stable Diffusion 1.x's noise schedule and settings."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def assemble_pipeline(vae, text_encoder, unet):
    from diffusers import StableDiffusionPipeline

    from ..models import clip_tokenizer

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
                                   scheduler=sd_ddim_scheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_pipeline(seed: int = 0):
    """The shipped architecture with random weights: what an untrained or broken model looks like."""
    torch.manual_seed(seed)
    return assemble_pipeline(build_vae(), build_text_encoder(), build_unet())


# ---- helpers ----------------------------------------------------------------------------------------------
def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, h, w, 3) → float (n, 3, h, w) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class TokenCache:
    """Tokenise each distinct caption once (captions repeat a lot; the tokenizer is slow per call)."""

    def __init__(self):
        from ..models import clip_tokenizer

        self.tok = clip_tokenizer()
        self.cache: dict[str, torch.Tensor] = {}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if missing:
            ids = self.tok(
                missing,
                padding="max_length",
                max_length=self.tok.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            self.cache.update(zip(missing, ids))
        return torch.stack([self.cache[t] for t in texts])


def _scenes_to_json(scenes: list[Scene]) -> str:
    return json.dumps([s.to_dict() for s in scenes])


def _scenes_from_json(text: str) -> list[Scene]:
    out = []
    for d in json.loads(text):
        objs = tuple(SceneObject(**{**o, "rgb": tuple(o["rgb"])}) for o in d["objects"])
        out.append(Scene(d["layout"], objs))
    return out


def _cosine_lr(base: float, frac: float, step: int, warmup: int) -> float:
    warm = min(1.0, (step + 1) / max(1, warmup))
    return base * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def _save_optimizer(opt, path: Path):
    torch.save(opt.state_dict(), path)


def _load_optimizer(opt, path: Path):
    if path.exists():
        opt.load_state_dict(torch.load(path, weights_only=True))


class _State:
    """Stage, step, elapsed seconds and losses; written atomically with the checkpoint it describes."""

    def __init__(self, path: Path, cfg: TrainConfig):
        self.path = path
        self.data = {"config": asdict(cfg), "stage": "data", "vae_step": 0, "vae_seconds": 0.0,
                     "diff_step": 0, "diff_seconds": 0.0, "losses": {}}
        if path.exists():
            saved = json.loads(path.read_text())
            if saved.get("config", {}).get("seed") != cfg.seed:
                raise EraseLabError(
                    f"{path.parent} holds a checkpoint of seed {saved['config']['seed']}, not "
                    f"{cfg.seed}; pass the same --seed or a fresh --out folder"
                )
            self.data.update({k: v for k, v in saved.items() if k != "config"})

    def __getitem__(self, k):
        return self.data[k]

    def __setitem__(self, k, v):
        self.data[k] = v

    def save(self):
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)


# ---- stages -----------------------------------------------------------------------------------------------
def _stage_data(cfg: TrainConfig, ck: Path) -> tuple[np.ndarray, list[Scene]]:
    data = ck / "data.npz"
    if data.exists():
        z = np.load(data)
        return z["images"], _scenes_from_json((ck / "scenes.json").read_text())
    images, scenes = render_dataset(cfg.n_images, cfg.seed)
    (ck / "scenes.json").write_text(_scenes_to_json(scenes))
    np.savez(ck / "data.tmp.npz", images=images)
    (ck / "data.tmp.npz").replace(data)
    return images, scenes


def _train_vae(cfg, ck, state, images, report: Callable):
    vae = build_vae()
    if (ck / "vae.safetensors").exists():
        vae.load_state_dict(load_file(ck / "vae.safetensors"))
    if (ck / "latents.safetensors").exists() or state.data.get("init"):
        # A warm start keeps the VAE it started from (its diffusion model was trained on that VAE's latents).
        # The latents were encoded with this VAE: training it further (a resume with a larger --minutes)
        # would leave them stale, so the autoencoder stage stays finished.
        return vae.eval()
    budget = cfg.minutes * 60 * cfg.vae_fraction
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    _load_optimizer(opt, ck / "vae_opt.pt")
    gen = torch.Generator().manual_seed(cfg.seed + 11)
    x_all = to_tensor(images)
    last_ck = time.time()
    while state["vae_seconds"] < budget:
        t0 = time.time()
        step = state["vae_step"]
        for g in opt.param_groups:
            g["lr"] = _cosine_lr(cfg.vae_lr, state["vae_seconds"] / budget, step, 100)
        idx = torch.randint(0, len(x_all), (cfg.vae_batch,), generator=gen)
        x = x_all[idx]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        rec_loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
        kl = post.kl().mean() / z[0].numel()
        loss = rec_loss + cfg.vae_kl_weight * kl * z[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state["vae_step"] = step + 1
        state["vae_seconds"] += time.time() - t0
        state["losses"]["vae_rec"] = (
            0.98 * state["losses"].get("vae_rec", rec_loss.item()) + 0.02 * rec_loss.item()
        )
        report("vae", state["vae_seconds"] / budget, state["losses"]["vae_rec"])
        if time.time() - last_ck > cfg.checkpoint_every_s:
            _checkpoint(ck, state, {"vae": vae}, {"vae_opt": opt})
            last_ck = time.time()
    vae.eval()
    _checkpoint(ck, state, {"vae": vae}, {"vae_opt": opt})
    return vae


@torch.no_grad()
def _encode_latents(vae, images: np.ndarray, ck: Path) -> tuple[torch.Tensor, torch.Tensor, float]:
    path = ck / "latents.safetensors"
    if path.exists():
        d = load_file(path)
        return d["mean"], d["std"], float(d["scale"].item())
    means, stds = [], []
    x_all = to_tensor(images)
    for i in range(0, len(x_all), 256):
        post = vae.encode(x_all[i:i + 256]).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    mean, std = torch.cat(means), torch.cat(stds)
    # As in SD: scale latents to unit variance so the noise schedule fits them.
    scale = float(1.0 / torch.sqrt(mean.var() + (std ** 2).mean()))
    save_file({"mean": mean.contiguous(), "std": std.contiguous(), "scale": torch.tensor([scale])}, path)
    return mean, std, scale


class _EMA:
    def __init__(self, modules: dict[str, torch.nn.Module], decay: float):
        self.decay = decay
        self.shadow = {f"{n}.{k}": v.detach().clone() for n, m in modules.items()
                       for k, v in m.state_dict().items()}

    @torch.no_grad()
    def update(self, modules: dict[str, torch.nn.Module], step: int):
        d = min(self.decay, (1 + step) / (10 + step))
        for n, m in modules.items():
            for k, v in m.state_dict().items():
                s = self.shadow[f"{n}.{k}"]
                if v.dtype.is_floating_point:
                    s.mul_(d).add_(v.detach(), alpha=1 - d)
                else:
                    s.copy_(v)

    def state_for(self, name: str) -> dict[str, torch.Tensor]:
        p = f"{name}."
        return {k[len(p):]: v for k, v in self.shadow.items() if k.startswith(p)}


def _train_diffusion(cfg, ck, state, scenes, latents, report: Callable):
    from diffusers import DDPMScheduler

    mean, std, scale = latents
    torch.manual_seed(cfg.seed + 21)
    unet, text = build_unet(), build_text_encoder()
    modules = {"unet": unet, "text_encoder": text}
    ema = _EMA(modules, cfg.ema_decay)
    for name, m in modules.items():
        if (ck / f"{name}.safetensors").exists():
            m.load_state_dict(load_file(ck / f"{name}.safetensors"))
        if (ck / f"{name}_ema.safetensors").exists():
            ema.shadow.update(
                {f"{name}.{k}": v for k, v in load_file(ck / f"{name}_ema.safetensors").items()}
            )
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-4)
    _load_optimizer(opt, ck / "diff_opt.pt")
    noise_sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                beta_schedule="scaled_linear")
    alphas = noise_sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    # A warm start has no autoencoder stage, so the whole budget goes to the diffusion model.
    budget = cfg.minutes * 60 * (1 if state.data.get("init") else 1 - cfg.vae_fraction)
    first_step = state.data.get("init", {}).get("diffusion_steps", 0)  # warm up again after a warm start
    tokens = TokenCache()
    # Step-indexed randomness so that a resumed run draws the same batches it would have drawn.
    rng = np.random.default_rng([cfg.seed, 31, state["diff_step"]])
    gen = torch.Generator().manual_seed(cfg.seed * 100003 + state["diff_step"])
    last_ck = time.time()
    unet.train()
    text.train()
    # Rows drawn from one- and two-object scenes separately when the batch mix is set (binding is learnt from
    # the two-object captions; as rendered they are 45 % of scenes).
    by_layout = (
        (
            np.flatnonzero([s.layout == "single" for s in scenes]),
            np.flatnonzero([s.layout != "single" for s in scenes]),
        )
        if cfg.pair_share is not None
        else None
    )

    # The grounding loss reads the cross-attention maps of the same forward pass (no second UNet call).
    tap = CrossAttentionTap(unet) if cfg.grounding > 0 else None
    grounding_cache: dict = {}

    def progress() -> float:
        done = state["diff_step"] - first_step
        return done / cfg.steps if cfg.steps else state["diff_seconds"] / budget

    while progress() < 1.0:
        t0 = time.time()
        step = state["diff_step"]
        for g in opt.param_groups:
            g["lr"] = _cosine_lr(cfg.lr, progress(), step - first_step, cfg.warmup_steps)
        if by_layout is None:
            idx = rng.integers(0, len(scenes), cfg.batch)
        else:
            pair_rows = rng.random(cfg.batch) < cfg.pair_share
            idx = np.where(
                pair_rows, rng.choice(by_layout[1], cfg.batch), rng.choice(by_layout[0], cfg.batch)
            )
        described = [("", ()) if rng.random() < cfg.cfg_dropout else caption_with_phrases(scenes[i], rng)
                     for i in idx]
        texts = [text for text, _ in described]
        ids = tokens(texts)
        ti = torch.from_numpy(idx)
        z0 = (mean[ti] + std[ti] * torch.randn(mean[ti].shape, generator=gen)) * scale
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, 1000, (cfg.batch,), generator=gen)
        zt = noise_sched.add_noise(z0, noise, t)
        cond = text(ids).last_hidden_state
        pred = unet(zt, t, encoder_hidden_states=cond).sample
        weight = torch.clamp(snr[t], max=cfg.min_snr_gamma) / snr[t]   # min-SNR weighting for eps prediction
        diff_loss = (weight * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        loss = diff_loss
        if tap is not None:
            batch_scenes = [scenes[i] for i in idx]
            targets = grounding_targets(
                tokens.tok, batch_scenes, texts, [p for _, p in described], grounding_cache
            )
            g_loss = grounding_loss(tap.take(), batch_scenes, targets)
            state["losses"]["grounding"] = (0.99 * state["losses"].get("grounding", g_loss.item())
                                            + 0.01 * g_loss.item())
            loss = loss + cfg.grounding * g_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(modules, step)
        state["diff_step"] = step + 1
        state["diff_seconds"] += time.time() - t0
        d = diff_loss.item()
        state["losses"]["diffusion"] = 0.99 * state["losses"].get("diffusion", d) + 0.01 * d
        report("diffusion", progress(), state["losses"]["diffusion"])
        if time.time() - last_ck > cfg.checkpoint_every_s:
            _checkpoint(ck, state, modules, {"diff_opt": opt}, ema)
            last_ck = time.time()
    _checkpoint(ck, state, modules, {"diff_opt": opt}, ema)
    unet.load_state_dict(ema.state_for("unet"))
    text.load_state_dict(ema.state_for("text_encoder"))
    return unet.eval(), text.eval()


def _checkpoint(ck: Path, state: _State, modules: dict, optimizers: dict, ema: _EMA | None = None):
    for name, m in modules.items():
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, ck / f"{name}.tmp")
        (ck / f"{name}.tmp").replace(ck / f"{name}.safetensors")
        if ema is not None:
            save_file({k: v.contiguous() for k, v in ema.state_for(name).items()}, ck / f"{name}_ema.tmp")
            (ck / f"{name}_ema.tmp").replace(ck / f"{name}_ema.safetensors")
    for name, opt in optimizers.items():
        _save_optimizer(opt, ck / f"{name}.tmp")
        (ck / f"{name}.tmp").replace(ck / f"{name}.pt")
    state.save()


def _warm_start(ck: Path, state: _State, source: str) -> None:
    """Seed an empty checkpoint with a trained pipeline's weights: the VAE as finished, its UNet and text
    encoder (the EMA weights a pipeline ships) as both the live and the EMA weights; the optimizer starts
    afresh."""
    from ..models import MINIWORLD, load_pipeline, miniworld_weights_dir

    pipe = load_pipeline(source, device="cpu", dtype=torch.float32)
    for name in ("vae", "unet", "text_encoder"):
        weights = {k: v.detach().float().contiguous() for k, v in getattr(pipe, name).state_dict().items()}
        save_file(weights, ck / f"{name}.safetensors")
        if name != "vae":
            save_file(weights, ck / f"{name}_ema.safetensors")
    folder = miniworld_weights_dir() if source == MINIWORLD else Path(source)
    record_path = folder / "TRAINING.json"
    earlier = json.loads(record_path.read_text()) if record_path.is_file() else {}
    state["init"] = {"source": source, "diffusion_steps": int(earlier.get("diffusion_steps", 0)),
                     "earlier_command": earlier.get("command")}
    state["diff_step"] = state["init"]["diffusion_steps"]  # new batches, not a replay of the earlier run's
    state.save()


def train(
    out: str | Path, cfg: TrainConfig, report: Callable[[str, float, float], None] | None = None
) -> dict:
    """Train (or resume) and save the pipeline into `out`; returns the training record also written to
    out/TRAINING.json."""
    from ..provenance import library_versions

    report = report or (lambda stage, frac, loss: None)
    out = Path(out)
    ck = out / CKPT
    ck.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    fresh = not (ck / "state.json").exists()
    state = _State(ck / "state.json", cfg)
    if cfg.init and fresh:
        _warm_start(ck, state, cfg.init)
    t_start = time.time()
    report("data", 0.0, float("nan"))
    images, scenes = _stage_data(cfg, ck)
    vae = _train_vae(cfg, ck, state, images, report)
    latents = _encode_latents(vae, images, ck)
    vae.register_to_config(scaling_factor=latents[2])
    unet, text = _train_diffusion(cfg, ck, state, scenes, latents, report)
    pipe = assemble_pipeline(vae, text, unet)
    pipe.save_pretrained(str(out), safe_serialization=True)
    record = {
        "command": f"eraselab miniworld train --out {out} --seed {cfg.seed} --minutes {cfg.minutes:g}"
        + (f" --init {cfg.init}" if cfg.init else "")
        + (f" --steps {cfg.steps}" if cfg.steps else "")
        + (f" --pair-share {cfg.pair_share:g}" if cfg.pair_share is not None else "")
        + (f" --grounding {cfg.grounding:g}" if cfg.grounding else ""),
        "warm_start": state.data.get("init"),
        "config": asdict(cfg),
        "vae_steps": state["vae_step"],
        "vae_seconds": round(state["vae_seconds"], 1),
        "diffusion_steps": state["diff_step"],
        "diffusion_seconds": round(state["diff_seconds"], 1),
        "final_losses": {k: round(v, 5) for k, v in state["losses"].items()},
        "latent_scaling_factor": latents[2],
        "parameters": {
            n: sum(p.numel() for p in m.parameters())
            for n, m in {"vae": vae, "text_encoder": text, "unet": unet}.items()
        },
        "this_session_seconds": round(time.time() - t_start, 1),
        "torch_threads": torch.get_num_threads(),
        "library_versions": library_versions(),
    }
    (out / "TRAINING.json").write_text(json.dumps(record, indent=1))
    return record
