"""Matplotlib figures of a bench run (PNG files next to report.html)."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from .headline import COLUMNS

_ERASURE_KEYS = ("target.recognition", "erasebench.efficacy")  # lower = better erasure
_PRESERVATION_KEYS = ("erasebench.sensitivity", "see.unrelated.preserved", "imagenette.psr@1")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _first(metrics: dict, keys) -> tuple[str, float] | None:
    for k in keys:
        m = metrics.get(k)
        if m and m.get("value") is not None:
            return k, float(m["value"])
    return None


def tradeoff(results: dict, path: Path) -> Path | None:
    """Erasure (100 − target shown %) against preservation, one point per method (and the original)."""
    points = []
    for name, r in results["methods"].items():
        e, p = _first(r["metrics"], _ERASURE_KEYS), _first(r["metrics"], _PRESERVATION_KEYS)
        if e and p:
            points.append((name, 100 - e[1], p[1], e[0], p[0]))
    if not points:
        return None
    first = next(iter(results["methods"].values()))["metrics"]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 4))
    ek, pk = points[0][3], points[0][4]
    orig_e, orig_p = first.get(ek + ".original"), first.get(pk + ".original")
    if orig_e and orig_p and orig_e.get("value") is not None and orig_p.get("value") is not None:
        ax.scatter([100 - orig_e["value"]], [orig_p["value"]], marker="s", color="gray")
        ax.annotate("original", (100 - orig_e["value"], orig_p["value"]), fontsize=8, xytext=(4, 4),
                    textcoords="offset points")
    for name, x, y, _, _ in points:
        ax.scatter([x], [y], s=40)
        ax.annotate(name, (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(f"erasure: 100 − {ek} (%)")
    ax.set_ylabel(f"preservation: {pk} (%)")
    ax.set_xlim(-5, 105)
    ax.set_ylim(-5, 105)
    ax.grid(alpha=0.3)
    ax.set_title("erasure vs preservation (up and right is better)", fontsize=9)
    return _save(fig, plt, path)


def aspect_profile(results: dict, path: Path) -> Path | None:
    """Share of images showing their own concept, per aspect, original vs each method."""
    by = defaultdict(lambda: defaultdict(list))
    for e in results["images"]:
        for v, d in e["variants"].items():
            if d.get("shows_concept") is not None:
                by[e["aspect"]][v].append(bool(d["shows_concept"]))
    if not by:
        return None
    aspects = sorted(by)
    variants = list(next(iter(results["images"]))["variants"])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5, 0.9 * len(aspects) + 2), 3.6))
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        vals = [100 * np.mean(by[a][v]) if by[a][v] else 0 for a in aspects]
        ax.bar(np.arange(len(aspects)) + i * width, vals, width, label=v)
    ax.set_xticks(np.arange(len(aspects)) + 0.4 - width / 2, aspects, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("images showing their concept (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7, ncols=min(4, len(variants)))
    ax.set_title("side-effect profile per aspect", fontsize=9)
    return _save(fig, plt, path)


def distance_curve(results: dict, path: Path) -> Path | None:
    """Recognition drop (pp) against hierarchy distance from the target, per method."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    drew = False
    for name, r in results["methods"].items():
        pts = sorted((int(k.split("=")[1]), m["value"]) for k, m in r["metrics"].items()
                     if k.startswith("see.neighbour_drop.distance=") and m.get("value") is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
            drew = True
    if not drew:
        plt.close(fig)
        return None
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xlabel("hierarchy distance from the target (edges)")
    ax.set_ylabel("recognition drop (pp)")
    ax.legend(fontsize=8)
    ax.set_title("damage vs distance in the concept hierarchy", fontsize=9)
    return _save(fig, plt, path)


def attention_heatmaps(run_dir: Path, results: dict, out_dir: Path) -> list[dict]:
    """Per target-aspect probe: heatmaps of the target word, original and each method side by side."""
    from ..attention import attention_metrics, load_maps

    att = results.get("attention") or {}
    if not att.get("original", {}).get("maps"):
        return []
    loaded = {v: load_maps(run_dir / a["file"]) for v, a in att.items() if a.get("file")}
    targets = [w for t in results["targets"] for w in t.split()]
    figures, drawn = [], set()
    for i, entry in enumerate(att["original"]["maps"]):
        if entry["aspect"] != "target" or (entry["prompt"], entry["seed"]) in drawn:
            continue
        drawn.add((entry["prompt"], entry["seed"]))
        panels = {}
        for v, a in att.items():
            match = next((m for m in a.get("maps", []) if m["prompt"] == entry["prompt"] and m["seed"] == entry["seed"]),
                         None)
            word_maps = loaded.get(v, {}).get(match["key"], {}) if match else {}
            for w in targets:
                if w in word_maps:
                    panels[v] = word_maps[w]
        if len(panels) < 2:
            continue
        plt = _plt()
        fig, axes = plt.subplots(1, len(panels), figsize=(2.4 * len(panels), 2.7), squeeze=False)
        for ax, (v, m) in zip(axes[0], panels.items()):
            ax.imshow(m, cmap="inferno", interpolation="bilinear")
            met = attention_metrics(m)
            ax.set_title(f"{v}\nH={met['normalized_entropy']:.2f} top5%={met['top5_mass']:.2f}", fontsize=8)
            ax.axis("off")
        fig.suptitle(f"'{entry['prompt']}' seed {entry['seed']}: attention of {'/'.join(targets)}", fontsize=8)
        path = _save(fig, plt, out_dir / f"attention_{i}.png")
        figures.append({"path": path, "prompt": entry["prompt"], "seed": entry["seed"]})
        if len(figures) >= 3:
            break
    return figures


def _save(fig, plt, path: Path) -> Path:
    import io

    from ..atomic import atomic_write_bytes

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    # Atomic, like every other output: a kill or a full disk never leaves a truncated figure behind.
    atomic_write_bytes(path, buf.getvalue())
    return path


__all__ = ["tradeoff", "aspect_profile", "distance_curve", "attention_heatmaps", "COLUMNS"]
