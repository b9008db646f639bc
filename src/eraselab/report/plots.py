"""Matplotlib figures of a bench run (PNG files next to report.html).

Every figure draws the same 95 % intervals as the headline table (error bars), uses the data's own scale
(integer distances get integer ticks), and keeps overlapping series visible (distinct markers, small sideways
offsets, transparency). Figures are sized to be shown at 100 % (one figure inch = DPI pixels) with text of at
least 10 pt.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from ..metric_info import describe
from .headline import is_number
from .vocabulary import ERASURE_ASPECTS, PRESERVATION_ASPECTS, aspect_label, judged_shown

DPI = 100
STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 10,
         "ytick.labelsize": 10, "legend.fontsize": 10, "figure.titlesize": 11}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
ORIGINAL_COLOR = "0.45"

_ERASURE_KEYS = ("target.recognition", "erasebench.efficacy")  # lower = better erasure
_PRESERVATION_KEYS = ("erasebench.sensitivity", "see.unrelated.preserved", "imagenette.psr@1")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matplotlib.rcParams.update(STYLE)
    return plt


def _colors(plt, n: int) -> list:
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return [cycle[i % len(cycle)] for i in range(n)]


def _label(key: str) -> str:
    info = describe(key)
    return info.label if info else key


def _interval(cell: dict | None) -> tuple[float, float, float] | None:
    """(value, low, high) of a metric dict; low/high fall back to the value where the interval is missing."""
    if not cell or not is_number(cell.get("value")):
        return None
    v = float(cell["value"])
    low = float(cell["low"]) if is_number(cell.get("low")) else v
    high = float(cell["high"]) if is_number(cell.get("high")) else v
    return v, min(low, v), max(high, v)


def _first(metrics: dict, keys) -> tuple[str, tuple[float, float, float]] | None:
    for k in keys:
        iv = _interval(metrics.get(k))
        if iv:
            return k, iv
    return None


def _yerr(points) -> np.ndarray:
    return np.array([[v - lo for v, lo, _ in points], [hi - v for v, _, hi in points]])


def tradeoff(results: dict, path: Path) -> Path | None:
    """Erasure (100 − target shown %) against preservation, one point per method and the original, each with
    its 95 % intervals on both axes."""
    methods = results["methods"]
    keys = None
    for r in methods.values():
        e, p = _first(r["metrics"], _ERASURE_KEYS), _first(r["metrics"], _PRESERVATION_KEYS)
        if e and p:
            keys = (e[0], p[0])
            break
    if keys is None:
        return None
    ek, pk = keys
    points = []
    for name, r in methods.items():
        e, p = _interval(r["metrics"].get(ek)), _interval(r["metrics"].get(pk))
        if e and p:
            points.append((name, (100 - e[0], 100 - e[2], 100 - e[1]), p))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    first = next(iter(methods.values()))["metrics"]
    oe, op = _interval(first.get(ek + ".original")), _interval(first.get(pk + ".original"))
    if oe and op:
        x = (100 - oe[0], 100 - oe[2], 100 - oe[1])
        ax.errorbar([x[0]], [op[0]], xerr=_yerr([x]), yerr=_yerr([op]), fmt="s", color=ORIGINAL_COLOR,
                    capsize=3, label="original")
    for i, ((name, x, y), color) in enumerate(zip(points, _colors(plt, len(points)))):
        ax.errorbar([x[0]], [y[0]], xerr=_yerr([x]), yerr=_yerr([y]), fmt=MARKERS[i % len(MARKERS)],
                    color=color, alpha=0.8, capsize=3, markersize=7, label=name)
    ax.set_xlabel(f"erasure: 100 − {_label(ek)}")
    ax.set_ylabel(f"preservation: {_label(pk)}")
    ax.set_xlim(-5, 105)
    ax.set_ylim(-5, 105)
    ax.grid(alpha=0.3)
    # Methods often share a corner (100, 100): the legend, not labels on the points, names them.
    ax.legend(loc="lower left", framealpha=0.85)
    ax.set_title("erasure vs preservation (up and right is better)")
    return _save(fig, plt, path)


def aspect_rates(results: dict) -> dict[str, dict[str, dict]]:
    """{aspect: {variant: metric dict}}: per aspect, the share of images showing the target (erasure aspects)
    or their own concept (the others), with the same interval method as the table's rates."""
    from ..metrics import rate

    flags = defaultdict(lambda: defaultdict(list))
    targets = results.get("targets", [])
    for e in results["images"]:
        for v, d in e["variants"].items():
            shown = judged_shown(e, d, targets)
            if shown is not None:
                flags[e["aspect"]][v].append(bool(shown))
    return {a: {v: rate(f).to_dict() for v, f in by_variant.items()} for a, by_variant in flags.items()}


def aspect_profile(results: dict, path: Path) -> Path | None:
    """Per probe aspect and model: % of images showing the target (erasure probes, lower is better after
    erasure) or their own concept (preservation probes, higher is better), with 95 % intervals."""
    rates = aspect_rates(results)
    if not rates:
        return None
    order = {a: i for i, a in enumerate(ERASURE_ASPECTS + PRESERVATION_ASPECTS)}
    aspects = sorted(rates, key=lambda a: (order.get(a, len(order)), a))
    variants = list(next(iter(results["images"]))["variants"])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(min(11.5, max(6.0, 0.35 * len(aspects) * len(variants) + 2.0)), 4.6))
    width = 0.8 / len(variants)
    xs = np.arange(len(aspects))
    for i, (v, color) in enumerate(zip(variants, [ORIGINAL_COLOR] + _colors(plt, len(variants) - 1))):
        cells = [_interval(rates[a].get(v)) for a in aspects]
        shown = [(x, c) for x, c in zip(xs, cells) if c]
        ax.bar([x + i * width for x, _ in shown], [c[0] for _, c in shown], width,
               yerr=_yerr([c for _, c in shown]), color=color, alpha=0.85, capsize=2, label=v,
               error_kw={"elinewidth": 1})
    erasing = [x for x, a in zip(xs, aspects) if a in ERASURE_ASPECTS]
    keeping = [x for x, a in zip(xs, aspects) if a in PRESERVATION_ASPECTS]
    for group, color, text in ((erasing, "#fbe3e3", "target should be gone (lower is better)"),
                               (keeping, "#e3f4e3", "own concept should stay (higher is better)")):
        if group:
            ax.axvspan(min(group) - width / 2 - 0.05, max(group) + 0.85 - width / 2, color=color, zorder=0)
            ax.text((min(group) + max(group) + 0.8 - width) / 2, 112, text, ha="center", fontsize=10)
    ax.set_xticks(xs + 0.4 - width / 2, [aspect_label(a) for a in aspects], rotation=25, ha="right")
    ax.set_ylabel("images showing the target (red) /\ntheir own concept (green), %")
    ax.set_ylim(0, 122)
    ax.set_yticks(range(0, 101, 20))
    ax.set_xlim(-width / 2 - 0.15, len(aspects) - 0.2 - width / 2 + 0.15)
    ax.legend(ncols=min(5, len(variants)), loc="lower right", bbox_to_anchor=(1, 1.0), frameon=False)
    ax.set_title("side effects per probe aspect", loc="left")
    return _save(fig, plt, path)


def distance_curve(results: dict, path: Path) -> Path | None:
    """Recognition drop (pp) against hierarchy distance from the target, per method, with 95 % intervals;
    methods are offset a little sideways so equal values stay visible."""
    series = []
    for name, r in results["methods"].items():
        pts = sorted((int(k.split("=")[1]), iv) for k, m in r["metrics"].items()
                     if k.startswith("see.neighbour_drop.distance=") and (iv := _interval(m)))
        if pts:
            series.append((name, pts))
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 4.4))
    step = 0.08
    for i, ((name, pts), color) in enumerate(zip(series, _colors(plt, len(series)))):
        shift = (i - (len(series) - 1) / 2) * step
        ax.errorbar([d + shift for d, _ in pts], [iv[0] for _, iv in pts], yerr=_yerr([iv for _, iv in pts]),
                    marker=MARKERS[i % len(MARKERS)], color=color, alpha=0.8, capsize=3, markersize=7,
                    linestyle=("-", "--", ":", "-.")[i % 4], label=name)
    distances = sorted({d for _, pts in series for d, _ in pts})
    ax.set_xticks(distances, [str(d) for d in distances])
    ax.set_xlim(distances[0] - 0.5, distances[-1] + 0.5)
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("hierarchy distance from the target (edges)")
    ax.set_ylabel("recognition drop (pp, lower is better)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(framealpha=0.85)
    ax.set_title("damage vs distance in the concept hierarchy")
    return _save(fig, plt, path)


def attention_heatmaps(run_dir: Path, results: dict, out_dir: Path) -> list[dict]:
    """Per target-aspect probe (at most 3): the target word's cross-attention map over the image it belongs
    to, original and each method side by side."""
    from ..attention import attention_metrics, load_maps

    att = results.get("attention") or {}
    if not att.get("original", {}).get("maps"):
        return []
    loaded = {v: load_maps(run_dir / a["file"]) for v, a in att.items() if a.get("file")}
    images = {(e["prompt"], e["seed"]): e["variants"] for e in results["images"]}
    targets = [w for t in results["targets"] for w in t.split()]
    figures, drawn = [], set()
    for i, entry in enumerate(att["original"]["maps"]):
        if entry["aspect"] != "target" or (entry["prompt"], entry["seed"]) in drawn:
            continue
        drawn.add((entry["prompt"], entry["seed"]))
        panels = {}
        for v, a in att.items():
            match = next((m for m in a.get("maps", [])
                          if m["prompt"] == entry["prompt"] and m["seed"] == entry["seed"]), None)
            word_maps = loaded.get(v, {}).get(match["key"], {}) if match else {}
            for w in targets:
                if w in word_maps:
                    panels[v] = word_maps[w]
        if len(panels) < 2:
            continue
        plt = _plt()
        fig, axes = plt.subplots(1, len(panels), figsize=(2.8 * len(panels), 3.5), squeeze=False,
                                 layout="constrained")
        for ax, (v, m) in zip(axes[0], panels.items()):
            _overlay(ax, run_dir, images.get((entry["prompt"], entry["seed"]), {}).get(v), np.asarray(m))
            met = attention_metrics(m)
            ax.set_title(f"{v}\nentropy {met['normalized_entropy']:.2f} · top-5 % {met['top5_mass']:.2f}")
            ax.axis("off")
        fig.suptitle(f"'{entry['prompt']}', seed {entry['seed']}: attention of '{' '.join(targets)}'")
        path = _save(fig, plt, out_dir / f"attention_{i}.png")
        figures.append({"path": path, "prompt": entry["prompt"], "seed": entry["seed"]})
        if len(figures) >= 3:
            break
    return figures


def _overlay(ax, run_dir: Path, variant: dict | None, attn: np.ndarray) -> None:
    """The map, stretched over its image and half transparent; the map alone where the image is unknown."""
    from PIL import Image

    image_path = run_dir / variant["image"] if variant else None
    if image_path is not None and image_path.exists():
        with Image.open(image_path) as im:
            pixels = np.asarray(im.convert("RGB"))
        h, w = pixels.shape[:2]
        ax.imshow(pixels, extent=(0, w, h, 0))
        ax.imshow(attn, cmap="inferno", interpolation="bilinear", alpha=0.55, extent=(0, w, h, 0))
    else:
        ax.imshow(attn, cmap="inferno", interpolation="bilinear")


def _save(fig, plt, path: Path) -> Path:
    import io

    from ..atomic import atomic_write_bytes

    if fig.get_layout_engine() is None:
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=DPI, format="png")
    plt.close(fig)
    # Atomic, like every other output: a kill or a full disk never leaves a truncated figure behind.
    atomic_write_bytes(path, buf.getvalue())
    return path


__all__ = ["aspect_profile", "aspect_rates", "attention_heatmaps", "distance_curve", "tradeoff"]
