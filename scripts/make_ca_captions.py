"""Build CA's anchor-caption data under src/eraselab/data/.

1. ca_anchor_{cat,dog,fish,robot}.txt: the four caption lists that nupurkmr9/concept-ablation ships
   (assets/finetune_prompts/<anchor>.txt, 200 captions each, MIT licence; see ca_captions_LICENSE.txt), copied
   verbatim below a one-line provenance header.
2. ca_caption_templates.txt: 200 caption templates ("{}" stands for the anchor word) for anchors the official
   code would caption with an LLM (Llama-3-8B-Instruct or gpt-3.5-turbo, asked for 200 terse factual captions
   that contain the anchor word). We cannot ship or rerun that; these templates are eraselab's own wording,
   built combinatorially from the phrase lists below, and stand in for it.
3. ca_painting_captions.txt: 200 painting captions for style ablation. The official code uses
   assets/finetune_prompts/painting.txt, alt texts retrieved from LAION: third-party web text whose authors
   never licensed it, so it is not shipped; these are eraselab's own wording.

Run: python scripts/make_ca_captions.py /path/to/concept-ablation-checkout   (the checkout only for step 1;
without it, steps 2 and 3 still run).
"""
import itertools
import sys
from pathlib import Path

REPO = "nupurkmr9/concept-ablation"
COMMIT = "c11fb1bdc7cd97ea65877b0d41722f5e3ef2561f"
OFFICIAL_ANCHORS = ("cat", "dog", "fish", "robot")
DATA = Path(__file__).resolve().parents[1] / "src" / "eraselab" / "data"
N = 200

# Object templates: a framing (photo, drawing, ...) times a situation. "a {}" gets its article fixed when
# filled (see eraselab.methods.ca.fill_template).
FRAMES = ("a photo of a {}", "a close-up photo of a {}", "a drawing of a {}", "a painting of a {}",
          "a picture of a {}", "a blurry photo of a {}", "a black and white photo of a {}", "a {}")
SITUATIONS = ("on a wooden table", "in a garden", "next to a window", "on a city street", "in a living room",
              "on the beach", "in the snow", "under a tree", "on a shelf", "in a park", "at night",
              "in the rain", "on a white background", "in a forest", "near a river", "in a kitchen",
              "on a sofa", "in a field of grass", "beside a red door", "in the morning light", "on a rooftop",
              "in front of a brick wall", "on a desert road", "in a small room", "at the edge of a lake")
# Painting captions for style ablation: a subject times a setting.
SUBJECTS = ("a house", "a bridge", "a sailing boat", "a lighthouse", "a village church", "an old farmhouse",
            "a country road", "a harbour", "a windmill", "a market square", "a mountain cabin",
            "a garden path",
            "a fishing village", "a stone tower", "a riverside town", "a train station", "a wheat field",
            "a vase of flowers", "a woman reading", "a man with a hat")
SETTINGS = ("at sunset", "in winter", "in spring", "on a rainy day", "under a starry sky", "at dawn",
            "in the fog", "in summer", "by the sea", "in autumn")


def templates() -> list[str]:
    pairs = itertools.product(SITUATIONS, FRAMES)
    return [f"{frame} {situation}" for situation, frame in itertools.islice(pairs, N)]


def paintings() -> list[str]:
    return [f"a painting of {s} {t}" for s, t in itertools.islice(itertools.product(SUBJECTS, SETTINGS), N)]


def write(name: str, header: str, lines: list[str]) -> None:
    assert len(lines) == N and all(line.strip() and not line.startswith("#") for line in lines), name
    (DATA / name).write_text(f"# {header}\n" + "\n".join(lines) + "\n")


def main(checkout: str | None) -> None:
    if checkout:
        import subprocess

        for anchor in OFFICIAL_ANCHORS:
            source = f"{COMMIT}:assets/finetune_prompts/{anchor}.txt"
            text = subprocess.run(["git", "-C", checkout, "show", source], check=True, capture_output=True,
                                  text=True).stdout
            write(f"ca_anchor_{anchor}.txt", f"CA anchor captions for '{anchor}': {REPO}@{COMMIT}:assets/"
                  f"finetune_prompts/{anchor}.txt, verbatim (MIT licence: ca_captions_LICENSE.txt)",
                  text.splitlines())
    write("ca_caption_templates.txt", "CA caption templates ({} = anchor word), eraselab's own wording from "
          "scripts/make_ca_captions.py, standing in for the official LLM-generated captions", templates())
    write("ca_painting_captions.txt", "CA painting captions for style ablation, eraselab's own wording from "
          "scripts/make_ca_captions.py, standing in for the official LAION-retrieved painting.txt",
          paintings())


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
