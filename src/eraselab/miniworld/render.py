"""Seeded, anti-aliased renders of miniworld scenes (one object, or two side by side / stacked) with their
ground-truth description.

Shapes are signed distance fields evaluated at pixel centres; a pixel's coverage is clip(0.5 - sdf, 0, 1)
in pixel units, which anti-aliases edges without supersampling and makes "outlined" simply |sdf| - width/2.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np

from .world import WORLD

IMAGE_SIZE = 32
BACKGROUND = (0, 0, 0)
# Saturated, well separated hues so that a colour survives the VAE and sampling blur.
COLOR_RGB = {
    "red": (225, 35, 35),
    "green": (35, 185, 55),
    "blue": (45, 85, 235),
    "yellow": (240, 220, 35),
    "purple": (155, 50, 210),
    "orange": (250, 135, 20),
    "white": (240, 240, 240),
}
LAYOUTS = ("single", "horizontal", "vertical")
# Slot centres as fractions of the image size: single objects sit in the middle, pairs in the two halves.
SLOT_CENTERS = {"center": (0.5, 0.5), "left": (0.27, 0.5), "right": (0.73, 0.5),
                "top": (0.5, 0.27), "bottom": (0.5, 0.73)}
LAYOUT_SLOTS = {"single": ("center",), "horizontal": ("left", "right"), "vertical": ("top", "bottom")}
# Radii (fraction of image size) by (layout is a pair, size).
RADIUS = {(False, "large"): 0.34, (False, "small"): 0.21, (True, "large"): 0.23, (True, "small"): 0.165}
POSITION_JITTER = 0.045   # fraction of image size
RADIUS_JITTER = 0.06      # relative
ROTATION_JITTER = 12.0    # degrees
COLOR_JITTER = 12         # per channel, 0-255


@dataclass(frozen=True)
class SceneObject:
    cls: str
    color: str
    size: str
    fill: str
    position: str          # slot: center, left, right, top, bottom
    cx: float = 0.5        # centre, fraction of the image
    cy: float = 0.5
    radius: float = 0.3    # fraction of the image
    rotation: float = 0.0  # degrees
    rgb: tuple[int, int, int] = (0, 0, 0)


@dataclass(frozen=True)
class Scene:
    layout: str
    objects: tuple[SceneObject, ...] = field(default=())

    def to_dict(self) -> dict:
        return {"layout": self.layout, "objects": [asdict(o) for o in self.objects]}


# ---- shape outlines in unit coordinates (radius ~1, y pointing down) ---------------------------------------
def _regular(n: int, start_deg: float, r: float = 1.0) -> np.ndarray:
    a = np.deg2rad(start_deg + 360.0 * np.arange(n) / n)
    return np.stack([r * np.cos(a), r * np.sin(a)], 1)


def _ellipse(rx: float, ry: float, n: int = 72, cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _star() -> np.ndarray:
    a = np.deg2rad(-90 + 36.0 * np.arange(10))
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
    return np.stack([r * np.cos(a), r * np.sin(a) + 0.08], 1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
    return np.stack([x / 16.5, -(y + 2.5) / 16.5], 1)


def _semicircle() -> np.ndarray:
    t = np.linspace(0, np.pi, 48)
    arc = np.stack([np.cos(t), -np.sin(t) + 0.42], 1)
    return arc


@lru_cache(maxsize=None)
def _shape_parts(cls: str) -> tuple[tuple[str, np.ndarray], ...]:
    """A shape as polygons combined by union ("+") or subtraction ("-"), in order."""
    square = np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]])
    arm = 0.3
    # fmt: off
    parts = {
        "circle": (("+", _ellipse(0.95, 0.95)),),
        "ellipse": (("+", _ellipse(1.0, 0.55)),),
        "ring": (("+", _ellipse(1.0, 1.0)), ("-", _ellipse(0.55, 0.55))),
        "semicircle": (("+", _semicircle()),),
        "triangle": (("+", _regular(3, -90) + [0, 0.18]),),
        "square": (("+", square),),
        "diamond": (("+", np.array([[0, -1.0], [0.68, 0], [0, 1.0], [-0.68, 0]])),),
        "pentagon": (("+", _regular(5, -90) + [0, 0.06]),),
        "hexagon": (("+", _regular(6, 0)),),
        "star": (("+", _star()),),
        "cross": (("+", np.array([[-arm, -1], [arm, -1], [arm, -arm], [1, -arm], [1, arm], [arm, arm],
                                  [arm, 1], [-arm, 1], [-arm, arm], [-1, arm], [-1, -arm], [-arm, -arm]])),),
        "heart": (("+", _heart()),),
        "arrow": (("+", np.array([[-1, -0.22], [0.15, -0.22], [0.15, -0.62], [1, 0], [0.15, 0.62],
                                  [0.15, 0.22], [-1, 0.22]])),),
        "crescent": (("+", _ellipse(1.0, 1.0)), ("-", _ellipse(0.82, 0.82, cx=0.45, cy=-0.12))),
    }
    # fmt: on
    if cls not in parts:
        raise KeyError(f"no renderer for class {cls!r}")
    return tuple((op, np.asarray(p, dtype=np.float64)) for op, p in parts[cls])


def _polygon_sdf(px: np.ndarray, py: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) from points to a closed polygon; even-odd rule for the sign."""
    a = poly
    b = np.roll(poly, -1, axis=0)
    ex, ey = (b - a)[:, 0], (b - a)[:, 1]
    wx = px[..., None] - a[:, 0]
    wy = py[..., None] - a[:, 1]
    t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    d = np.sqrt(((wx - t * ex) ** 2 + (wy - t * ey) ** 2).min(-1))
    crosses = ((a[:, 1] > py[..., None]) != (b[:, 1] > py[..., None])) & (
        px[..., None]
        < (b[:, 0] - a[:, 0]) * (py[..., None] - a[:, 1]) / (b[:, 1] - a[:, 1] + 1e-12) + a[:, 0]
    )
    inside = crosses.sum(-1) % 2 == 1
    return np.where(inside, -d, d)


def object_alpha(obj: SceneObject, size: int = IMAGE_SIZE) -> np.ndarray:
    """Anti-aliased coverage (size×size, 0..1) of one object."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    r = obj.radius * size
    theta = np.deg2rad(obj.rotation)
    # pixel -> object frame (undo translation, rotation, scale)
    dx, dy = xx - obj.cx * size, yy - obj.cy * size
    ux = (np.cos(theta) * dx + np.sin(theta) * dy) / r
    uy = (-np.sin(theta) * dx + np.cos(theta) * dy) / r
    sdf = None
    for op, poly in _shape_parts(obj.cls):
        d = _polygon_sdf(ux, uy, poly)
        sdf = d if sdf is None else (np.minimum(sdf, d) if op == "+" else np.maximum(sdf, -d))
    sdf = sdf * r  # back to pixels
    if obj.fill == "outlined":
        width = max(1.35, 0.16 * r)
        sdf = np.abs(sdf) - width / 2
    return np.clip(0.5 - sdf, 0.0, 1.0)


def render_scene(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 array (size, size, 3)."""
    img = np.empty((size, size, 3), dtype=np.float64)
    img[:] = BACKGROUND
    for obj in scene.objects:
        a = object_alpha(obj, size)[..., None]
        img = img * (1 - a) + np.asarray(obj.rgb, dtype=np.float64) * a
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_object(rng: np.random.Generator, cls: str, color: str, size: str, fill: str, position: str,
                pair: bool) -> SceneObject:
    """Place an object in its slot with mild position, radius, rotation and colour jitter."""
    cx, cy = SLOT_CENTERS[position]
    jitter = POSITION_JITTER * (0.6 if pair else 1.0)
    rgb = np.clip(np.asarray(COLOR_RGB[color]) + rng.integers(-COLOR_JITTER, COLOR_JITTER + 1, 3), 0, 255)
    return SceneObject(
        cls=cls, color=color, size=size, fill=fill, position=position,
        cx=float(cx + rng.uniform(-jitter, jitter)), cy=float(cy + rng.uniform(-jitter, jitter)),
        radius=float(RADIUS[(pair, size)] * (1 + rng.uniform(-RADIUS_JITTER, RADIUS_JITTER))),
        rotation=float(rng.uniform(-ROTATION_JITTER, ROTATION_JITTER)),
        rgb=tuple(int(v) for v in rgb))


def random_attributes(rng: np.random.Generator) -> dict:
    return {"color": str(rng.choice(WORLD.colors)), "size": str(rng.choice(WORLD.sizes)),
            "fill": str(rng.choice(WORLD.fills))}


def sample_scene(rng: np.random.Generator, pair_prob: float = 0.45, binomial_prob: float = 0.8) -> Scene:
    """A random scene. Classes with a binomial partner appear with that partner in most of their scenes."""
    classes = WORLD.classes
    first = str(rng.choice(classes))
    partners = WORLD.binomial_partners(first)
    if partners and rng.random() < binomial_prob:
        second = str(rng.choice(partners))
    elif rng.random() < pair_prob:
        second = str(rng.choice([c for c in classes if c != first]))
    else:
        return Scene(
            "single", (make_object(rng, first, position="center", pair=False, **random_attributes(rng)),)
        )
    layout = "horizontal" if rng.random() < 0.5 else "vertical"
    pair = [first, second]
    rng.shuffle(pair)
    objs = tuple(make_object(rng, c, position=slot, pair=True, **random_attributes(rng))
                 for c, slot in zip(pair, LAYOUT_SLOTS[layout]))
    return Scene(layout, objs)


def scene_from_spec(rng: np.random.Generator, specs: list[dict], layout: str | None = None) -> Scene:
    """A scene with given objects (dicts with cls and optional color/size/fill), jittered by rng."""
    if layout is None:
        layout = "single" if len(specs) == 1 else "horizontal"
    slots = LAYOUT_SLOTS[layout]
    if len(specs) != len(slots):
        raise ValueError(f"layout {layout} holds {len(slots)} objects, got {len(specs)}")
    objs = []
    for spec, slot in zip(specs, slots):
        attrs = random_attributes(rng)
        attrs.update({k: spec[k] for k in ("color", "size", "fill") if k in spec})
        objs.append(make_object(rng, spec["cls"], position=slot, pair=len(slots) == 2, **attrs))
    return Scene(layout, tuple(objs))


def render_dataset(n: int, seed: int) -> tuple[np.ndarray, list[Scene]]:
    """n seeded random scenes and their renders (n, size, size, 3) uint8; the same seed gives the same
    data."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng) for _ in range(n)]
    images = (
        np.stack([render_scene(s) for s in scenes])
        if scenes
        else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    )
    return images, scenes


def concept_examples(domain, concept: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n renders of `concept` (a class, a superclass or an attributed class such as "red circle"), one object
    each, attributes drawn at random where the concept leaves them open, with each object's exact coverage
    (the miniworld Domain's renderer)."""
    base, attrs = domain.parse(concept)
    leaves = domain.hierarchy.leaves_under(base) or [base]
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(n):
        scene = scene_from_spec(rng, [{"cls": str(rng.choice(leaves)), **dict(attrs)}])
        images.append(render_scene(scene))
        masks.append(object_alpha(scene.objects[0]))
    return np.stack(images), np.stack(masks)
