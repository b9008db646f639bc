"""I2P suite: the Inappropriate Image Prompts CSV (Schramowski et al.), one seeded probe per row, for nudity.

The CSV is not shipped (licence and content); pass its path: `get_suite("i2p", path="i2p.csv")`.
Columns read (first match wins):
    prompt                                       required
    evaluation_seed | sd_seed | seed             required (the per-row seed the published numbers use)
    evaluation_guidance | sd_guidance | guidance optional (else the suite's guidance, 7.5)
    categories                                   optional; with `category="sexual"` only rows listing it are
    kept
Probes: aspect "target", concepts ("nudity",), relation = the row's categories (or "i2p").
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

from ..domain import Domain, as_domain
from ..errors import EraseLabError
from ..probes import Probe
from .base import Spec, Suite

SEED_COLUMNS = ("evaluation_seed", "sd_seed", "seed")
GUIDANCE_COLUMNS = ("evaluation_guidance", "sd_guidance", "guidance")


def _column(header: list[str], names: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in header), None)


@dataclass
class I2PSuite(Suite):
    # NudeNet's exposure rates and part counts read the evaluator's rows, so they need no declaration: every
    # suite judged by NudeNet gets them.
    METRICS = ("target.recognition",)
    name: str = "i2p"
    version: int = 1
    ASPECTS: tuple[str, ...] = ("target",)
    path: str | None = None
    category: str | None = None

    def build(self, target: str = "nudity", domain: Domain | str = "real", **settings) -> list[Probe]:
        domain = as_domain(domain)
        if domain.closed_world:
            raise EraseLabError(f"the i2p suite needs a real Stable Diffusion model, not the closed world "
                                f"{domain.name}")
        gen = self.settings(**settings)
        rows = self.read()
        # One image per row with the row's own seed: the protocol, so seeds_per_prompt does not apply.
        suite_id = f"{self.name}@v{self.version}+{Path(str(self.path)).name}"
        probes = []
        for _, row in rows:
            spec = Spec(row["prompt"], (target,), "target", row["categories"] or "i2p")
            probe = self.expand([spec], gen, suite_id)[0]
            guidance = gen.guidance if row["guidance"] is None else row["guidance"]
            probes.append(replace(probe, seed=row["seed"], guidance=guidance))
        return probes

    def read(self) -> list[tuple[int, dict]]:
        """(line number, {prompt, seed, guidance, categories}) per kept row; one-line errors for bad files."""
        if not self.path:
            raise EraseLabError(
                "the i2p suite needs the I2P prompts CSV, which is not shipped: pass its path "
                "(e.g. --i2p-csv i2p_benchmark.csv)"
            )
        p = Path(self.path)
        if not p.is_file():
            raise EraseLabError(f"I2P CSV {p} not found; download the I2P prompts CSV and pass its path")
        with p.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            reader.fieldnames = header
            if not header:
                raise EraseLabError(
                    f"I2P CSV {p} is empty; it needs a header with prompt and evaluation_seed "
                    "columns and one row per prompt"
                )
            seed_col, guide_col = _column(header, SEED_COLUMNS), _column(header, GUIDANCE_COLUMNS)
            missing = [n for n, c in (("prompt", "prompt" if "prompt" in header else None),
                                      (" or ".join(SEED_COLUMNS), seed_col)) if c is None]
            if missing:
                raise EraseLabError(f"I2P CSV {p} has no {' / '.join(missing)} column (found: "
                                    f"{', '.join(header)}); it needs prompt and evaluation_seed columns")
            rows = []
            for line, raw in enumerate(reader, start=2):
                cats = (raw.get("categories") or "").strip()
                if self.category and self.category not in [c.strip() for c in cats.split(",")]:
                    continue
                prompt = (raw.get("prompt") or "").strip()
                if not prompt:
                    raise EraseLabError(
                        f"I2P CSV {p} line {line}: empty prompt; remove the row or fill it in"
                    )
                rows.append(
                    (
                        line,
                        {
                            "prompt": prompt,
                            "seed": _number(raw.get(seed_col), int, p, line, seed_col),
                            "guidance": _number(raw.get(guide_col), float, p, line, guide_col)
                            if guide_col and (raw.get(guide_col) or "").strip()
                            else None,
                            "categories": cats,
                        },
                    )
                )
        if not rows:
            what = f" with category {self.category!r}" if self.category else ""
            raise EraseLabError(
                f"I2P CSV {p} has no prompt rows{what}; check the file (and the category filter)"
            )
        return rows


def _number(text, kind, path: Path, line: int, column: str):
    try:
        return kind(float(text)) if kind is int else kind(text)
    except (TypeError, ValueError):
        raise EraseLabError(f"I2P CSV {path} line {line}: {column} {text!r} is not a number; fix or drop the "
                            "row") from None
