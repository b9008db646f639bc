"""The miniworld oracle: a small CNN that reads a 32×32 image as a layout (nothing / one object / a horizontal
or vertical pair) and, per slot, the object's class, colour, size and fill.

It is trained on renders augmented to look generated (a VAE round trip with perturbed latents, pixel noise)
and on "nothing" images (blank, smooth colour noise, decoded random latents), so that it can say an image
shows no recognisable object. `features` exposes its penultimate layer for Fréchet distances.
"""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import EraseLabError
from .render import IMAGE_SIZE, LAYOUT_SLOTS, LAYOUTS, Scene, render_dataset
from .world import WORLD

ORACLE_VERSION = "1"
WEIGHTS_NAME = "oracle.safetensors"
RECORD_NAME = "oracle.json"
LAYOUT_CLASSES = ("nothing",) + LAYOUTS          # index 0 = nothing recognisable
FEATURE_DIM = 256
ATTRIBUTES = ("cls", "color", "size", "fill")


def _vocab() -> dict[str, tuple[str, ...]]:
    return {"cls": WORLD.classes, "color": WORLD.colors, "size": WORLD.sizes, "fill": WORLD.fills}


class OracleNet(nn.Module):
    def __init__(self):
        super().__init__()

        def conv(cin, cout, stride=1):
            return [
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]

        # Strided convolutions keep it cheap on CPU: 32 → 16 → 8 → 4, flattened to keep where things are.
        self.body = nn.Sequential(
            *conv(3, 24), *conv(24, 32, 2), *conv(32, 64), *conv(64, 64, 2), *conv(64, 96), nn.MaxPool2d(2)
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(96 * 16, FEATURE_DIM),
                                nn.ReLU(inplace=True))
        self.layout = nn.Linear(FEATURE_DIM, len(LAYOUT_CLASSES))
        self.heads = nn.ModuleDict({f"{slot}_{attr}": nn.Linear(FEATURE_DIM, len(values))
                                    for slot in ("a", "b") for attr, values in _vocab().items()})

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(x)
        out = {"layout": self.layout(h)}
        out.update({k: head(h) for k, head in self.heads.items()})
        return out


# ---- inputs ------------------------------------------------------------------------------------------------
def images_to_tensor(images) -> torch.Tensor:
    """PIL images, uint8 arrays (n,h,w,3) or float tensors in [-1,1] (n,3,h,w) → float (n,3,32,32) in
    [-1,1]."""
    if isinstance(images, torch.Tensor):
        x = images.float()
    else:
        if isinstance(images, np.ndarray):
            arr = images
        elif len({im.size for im in images}) > 1:  # mixed sizes (models of several families): one at a time
            return torch.cat([images_to_tensor([im]) for im in images])
        else:
            arr = (
                np.stack([np.asarray(im.convert("RGB"), dtype=np.uint8) for im in images])
                if len(images)
                else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
            )
        x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    if x.shape[-1] != IMAGE_SIZE or x.shape[-2] != IMAGE_SIZE:
        x = F.interpolate(
            x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False
        )
    return x


def scene_targets(scenes: Sequence[Scene | None]) -> dict[str, torch.Tensor]:
    """Integer targets per head; -100 (ignored) where a slot is empty. None = a 'nothing' image."""
    vocab = _vocab()
    t = {"layout": []} | {f"{s}_{a}": [] for s in ("a", "b") for a in ATTRIBUTES}
    for sc in scenes:
        t["layout"].append(0 if sc is None else LAYOUT_CLASSES.index(sc.layout))
        objs = [] if sc is None else list(sc.objects)
        for slot_i, slot in enumerate(("a", "b")):
            for attr in ATTRIBUTES:
                t[f"{slot}_{attr}"].append(vocab[attr].index(getattr(objs[slot_i], attr))
                                           if slot_i < len(objs) else -100)
    return {k: torch.tensor(v) for k, v in t.items()}


def _nothing_images(n: int, rng: np.random.Generator) -> np.ndarray:
    """Blank, dim, and smooth-noise images: what a wrecked or fully erased model tends to produce."""
    out = np.zeros((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)
    kind = rng.integers(0, 3, n)
    for i in range(n):
        if kind[i] == 0:
            out[i] = rng.uniform(0, 40) + rng.normal(0, rng.uniform(0, 12), (IMAGE_SIZE, IMAGE_SIZE, 3))
        else:
            res = int(rng.choice([2, 4, 8, 16]))
            low = torch.from_numpy(
                rng.uniform(0, 255 if kind[i] == 1 else 120, (1, 3, res, res)).astype(np.float32)
            )
            out[i] = F.interpolate(low, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                                   align_corners=False)[0].permute(1, 2, 0).numpy()
    return np.clip(out, 0, 255).astype(np.uint8)


@torch.no_grad()
def vae_roundtrip(vae, x: torch.Tensor, rng: torch.Generator, latent_noise: tuple[float, float] = (0.0, 0.35),
                  batch: int = 256) -> torch.Tensor:
    """Encode, perturb the scaled latents, decode: images with the blur and colour drift of generated ones."""
    out = []
    scale = float(getattr(vae.config, "scaling_factor", 1.0))
    for i in range(0, len(x), batch):
        post = vae.encode(x[i:i + batch]).latent_dist
        z = post.mean
        level = torch.empty(len(z), 1, 1, 1).uniform_(*latent_noise, generator=rng)
        z = z + level * torch.randn(z.shape, generator=rng) / scale
        out.append(vae.decode(z).sample.clamp(-1, 1))
    return torch.cat(out)


# ---- the oracle --------------------------------------------------------------------------------------------
class Oracle:
    """Per image: the objects present (class, colour, size, fill, position, confidence) or nothing."""

    def __init__(self, net: OracleNet, record: dict | None = None, device: str | torch.device = "cpu",
                 batch_size: int = 256):
        self.net = net.eval().to(device)
        self.device = torch.device(device)
        self.record = record or {}
        self.batch_size = batch_size

    @classmethod
    def load(cls, folder: str | Path | None = None, device: str | torch.device = "cpu") -> "Oracle":
        from safetensors.torch import load_file

        from ..models import miniworld_weights_dir

        folder = Path(folder) if folder else miniworld_weights_dir()
        path = folder / WEIGHTS_NAME
        if not path.exists():
            raise EraseLabError(
                f"no oracle weights at {path}; train them with `eraselab miniworld train-oracle`"
            )
        net = OracleNet()
        net.load_state_dict(load_file(path))
        record = json.loads((folder / RECORD_NAME).read_text()) if (folder / RECORD_NAME).exists() else {}
        record["weights_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        return cls(net, record, device)

    @torch.no_grad()
    def logits(self, images) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        x = images_to_tensor(images)
        outs, feats = [], []
        for i in range(0, len(x), self.batch_size):
            xb = x[i:i + self.batch_size].to(self.device)
            h = self.net.features(xb)
            feats.append(h.cpu())
            o = {"layout": self.net.layout(h)}
            o.update({k: head(h) for k, head in self.net.heads.items()})
            outs.append({k: v.cpu() for k, v in o.items()})
        if not outs:
            return {}, torch.zeros(0, FEATURE_DIM)
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}, torch.cat(feats)

    def features(self, images) -> np.ndarray:
        """The penultimate layer (n × 256), for Fréchet distances between image sets."""
        return self.logits(images)[1].numpy().astype(np.float64)

    def predict(self, images, threshold: float = 0.5) -> list[dict]:
        """One dict per image: layout, nothing (bool) and objects (best first). An object is reported when
        P(layout) × P(class) ≥ threshold; an image with no such object is 'nothing recognisable'."""
        logits, _ = self.logits(images)
        if not logits:
            return []
        vocab = _vocab()
        probs = {k: v.softmax(-1) for k, v in logits.items()}
        rows = []
        for i in range(len(probs["layout"])):
            li = int(probs["layout"][i].argmax())
            layout = LAYOUT_CLASSES[li]
            lp = float(probs["layout"][i, li])
            objects = []
            if layout != "nothing":
                for slot_i, position in enumerate(LAYOUT_SLOTS[layout]):
                    slot = "ab"[slot_i]
                    obj = {"position": position}
                    conf = lp
                    for attr in ATTRIBUTES:
                        p = probs[f"{slot}_{attr}"][i]
                        j = int(p.argmax())
                        obj["class" if attr == "cls" else attr] = vocab[attr][j]
                        obj[f"{'class' if attr == 'cls' else attr}_p"] = float(p[j])
                    obj["confidence"] = conf * obj["class_p"]
                    if obj["confidence"] >= threshold:
                        objects.append(obj)
            objects.sort(key=lambda o: -o["confidence"])
            rows.append({"layout": layout, "layout_p": lp, "nothing": not objects, "objects": objects,
                         "nothing_p": float(probs["layout"][i, 0])})
        return rows


# ---- training ----------------------------------------------------------------------------------------------
def _load_vae(source: str):
    from ..models import load_pipeline

    if source.endswith(".safetensors"):
        from safetensors.torch import load_file

        from .train import build_vae

        vae = build_vae()
        vae.load_state_dict(load_file(source))
        latents = Path(source).with_name(
            "latents.safetensors"
        )  # a training checkpoint records the scale here
        if latents.exists():
            vae.register_to_config(scaling_factor=float(load_file(latents)["scale"].item()))
        return vae.eval()
    return load_pipeline(source).vae.eval()


def heldout_accuracy(oracle: Oracle, n: int = 2000, seed: int = 987654, vae=None) -> dict:
    """Per-attribute accuracy on fresh renders (optionally VAE round-tripped), layout included."""
    images, scenes = render_dataset(n, seed)
    x = images_to_tensor(images)
    if vae is not None:
        x = vae_roundtrip(vae, x, torch.Generator().manual_seed(seed), latent_noise=(0.0, 0.0))
    logits, _ = oracle.logits(x)
    t = scene_targets(scenes)
    acc = {"layout": float((logits["layout"].argmax(-1) == t["layout"]).float().mean())}
    for attr in ATTRIBUTES:
        correct, total = 0, 0
        for slot in ("a", "b"):
            m = t[f"{slot}_{attr}"] >= 0
            correct += int((logits[f"{slot}_{attr}"].argmax(-1)[m] == t[f"{slot}_{attr}"][m]).sum())
            total += int(m.sum())
        acc["class" if attr == "cls" else attr] = correct / max(1, total)
    acc["min"] = min(acc.values())
    return acc


def train_oracle(out: str | Path | None, vae_source: str = "miniworld", seed: int = 0, minutes: float = 8.0,
                 n_images: int = 16000, report: Callable[[float, str], None] | None = None) -> dict:
    """Train the oracle within `minutes` and write oracle.safetensors + oracle.json into `out`."""
    from safetensors.torch import save_file

    from ..models import miniworld_weights_dir

    report = report or (lambda frac, info: None)
    out = Path(out) if out else miniworld_weights_dir()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    rng = np.random.default_rng([seed, 41])
    gen = torch.Generator().manual_seed(seed + 41)
    torch.manual_seed(seed + 41)
    report(0.0, "rendering")
    images, scenes = render_dataset(n_images, seed + 1000)   # disjoint from the model's training seed
    n_nothing = n_images // 12
    x_obj = images_to_tensor(images)
    vae = _load_vae(vae_source)
    report(0.0, "vae round trip")
    # Half the renders pass through the VAE (with latent noise), so the oracle sees generated-looking images.
    half = torch.from_numpy(rng.random(len(x_obj)) < 0.5)
    x_obj[half] = vae_roundtrip(vae, x_obj[half], gen)
    z = torch.randn(n_nothing // 3, 4, 8, 8, generator=gen) / float(vae.config.scaling_factor)
    with torch.no_grad():
        decoded_noise = vae.decode(z).sample.clamp(-1, 1)
    x_nothing = torch.cat([images_to_tensor(_nothing_images(n_nothing - len(z), rng)), decoded_noise])
    x_all = torch.cat([x_obj, x_nothing])
    targets = scene_targets(list(scenes) + [None] * len(x_nothing))
    net = OracleNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    budget = minutes * 60 - (time.time() - t_start)
    if budget <= 10:
        raise EraseLabError(
            f"--minutes {minutes} leaves no time to train after rendering; pass a larger value"
        )
    train_start, step = time.time(), 0
    net.train()
    while (elapsed := time.time() - train_start) < budget:
        frac = elapsed / budget
        for g in opt.param_groups:
            g["lr"] = 2e-3 * min(1.0, (step + 1) / 100) * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * frac)))
        idx = torch.randint(0, len(x_all), (128,), generator=gen)
        xb = x_all[idx]
        sigma = torch.empty(len(xb), 1, 1, 1).uniform_(0, 0.08, generator=gen)
        xb = (xb + sigma * torch.randn(xb.shape, generator=gen)).clamp(-1, 1)
        out_l = net(xb)
        loss = sum(F.cross_entropy(out_l[k], targets[k][idx], ignore_index=-100)
                   if (targets[k][idx] >= 0).any() else out_l[k].sum() * 0 for k in out_l)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 20 == 0:
            report(frac, f"step {step} loss {loss.item():.3f}")
    net.eval()
    oracle = Oracle(net)
    acc = heldout_accuracy(oracle)
    acc_vae = heldout_accuracy(oracle, n=500, vae=vae)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, out / WEIGHTS_NAME)
    record = {
        "version": ORACLE_VERSION,
        "seed": seed,
        "minutes": minutes,
        "steps": step,
        "n_images": n_images,
        "vae": vae_source,
        "final_loss": round(loss.item(), 4),
        "heldout_renders": {k: round(v, 4) for k, v in acc.items()},
        "heldout_vae_roundtrip": {k: round(v, 4) for k, v in acc_vae.items()},
        "command": f"eraselab miniworld train-oracle --vae {vae_source} --seed {seed} --minutes {minutes:g}",
        "seconds": round(time.time() - t_start, 1),
    }
    (out / RECORD_NAME).write_text(json.dumps(record, indent=1))
    return record
