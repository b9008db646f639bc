"""Build the real-model concept data (suites/data/taxonomy.json, erasebench.json) from WordNet 3.0 +
ImageNet-1k.

Run once by a maintainer; users never need WordNet or nltk, because the output is shipped in the package.

    apt-get install -y wordnet-base wordnet-sense-index     # WordNet 3.0 dict files in /usr/share/wordnet
    pip install nltk
    python scripts/build_taxonomy.py                        # writes src/eraselab/suites/data/*.json

What comes from where:
- the skeleton (which superclasses and classes, by WordNet synset) and the attribute vocabulary are authored
  below, because "everyday object" and "which colours fit a banana" are editorial choices, not WordNet facts;
- subclasses are WordNet hyponyms of each class, ImageNet-1k classes first (WordNet noun offsets are ImageNet
  ids: synset offset 1440764 is n01440764, "tench"), then other hyponyms WordNet's corpus counts say are
  common;
- synonyms are the synset's other lemma names (Latin binomials dropped), paraphrases come from the gloss;
- EraseBench groups: synonym and paraphrase (the gloss) name the target itself; visually similar /
  subset-superset / binomial / semantically related are authored pairs
  (including SPEC's cat → tiger/cheetah, goldfish → guppy/koi, sun → moon) completed by the hierarchy
  (siblings are visually similar candidates, parent and children are the superset/subsets).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "src" / "eraselab" / "suites" / "data"
IMAGENET_JSON = REPO / "src" / "eraselab" / "evaluators" / "data" / "imagenet1k_classes.json"
WORDNET_DIR = Path("/usr/share/wordnet")
VERSION = 1
MAX_SUBCLASSES = 4
# Subclasses that must be present whatever the counts say: SPEC's examples and the Imagenette classes.
PREFERRED = {"fish": ["goldfish.n.01", "tench.n.01"], "big cat": ["tiger.n.02", "cheetah.n.01"],
             "dog": ["english_springer.n.01"], "truck": ["garbage_truck.n.01"], "saw": ["chain_saw.n.01"],
             "brass instrument": ["french_horn.n.01"]}

# ---- authored skeleton: superclass -> (synset, attribute profile, [(class name, synset), ...]) -------------
# fmt: off
SKELETON = {
    "vehicle": ("vehicle.n.01", "vehicle", [
        ("car", "car.n.01"), ("bus", "bus.n.01"), ("truck", "truck.n.01"), ("motorcycle", "motorcycle.n.01"),
        ("bicycle", "bicycle.n.01"), ("boat", "boat.n.01"), ("aircraft", "aircraft.n.01"),
        ("train", "train.n.01")]),
    "animal": ("animal.n.01", "animal", [
        ("dog", "dog.n.01"), ("cat", "domestic_cat.n.01"), ("big cat", "big_cat.n.01"), ("bird", "bird.n.01"),
        ("fish", "fish.n.01"), ("bear", "bear.n.01"), ("monkey", "monkey.n.01"), ("snake", "snake.n.01"),
        ("butterfly", "butterfly.n.01"), ("horse", "horse.n.01")]),
    "furniture": ("furniture.n.01", "furniture", [
        ("chair", "chair.n.01"), ("table", "table.n.02"), ("bed", "bed.n.01"), ("sofa", "sofa.n.01"),
        ("cabinet", "cabinet.n.01"), ("lamp", "lamp.n.02")]),
    "kitchenware": ("kitchen_utensil.n.01", "kitchenware", [
        ("cup", "cup.n.01"), ("bottle", "bottle.n.01"), ("pot", "pot.n.01"), ("pan", "pan.n.01"),
        ("plate", "plate.n.04"), ("bowl", "bowl.n.01"), ("knife", "knife.n.01"), ("fork", "fork.n.01"),
        ("spoon", "spoon.n.01"), ("saucer", "saucer.n.02")]),
    "musical instrument": ("musical_instrument.n.01", "instrument", [
        ("guitar", "guitar.n.01"), ("piano", "piano.n.01"), ("drum", "drum.n.01"), ("violin", "violin.n.01"),
        ("brass instrument", "brass.n.02"), ("flute", "flute.n.01")]),
    "fruit": ("edible_fruit.n.01", "fruit", [
        ("apple", "apple.n.01"), ("banana", "banana.n.02"), ("orange", "orange.n.01"),
        ("lemon", "lemon.n.01"), ("strawberry", "strawberry.n.01"), ("pineapple", "pineapple.n.02"),
        ("pear", "pear.n.01")]),
    "vegetable": ("vegetable.n.01", "vegetable", [
        ("cabbage", "cabbage.n.01"), ("squash", "squash.n.02"), ("pepper", "pepper.n.04"),
        ("broccoli", "broccoli.n.02"), ("cucumber", "cucumber.n.02"), ("mushroom", "mushroom.n.02")]),
    "clothing": ("clothing.n.01", "clothing", [
        ("shirt", "shirt.n.01"), ("shoe", "shoe.n.01"), ("hat", "hat.n.01"), ("coat", "coat.n.01"),
        ("dress", "dress.n.01"), ("sock", "sock.n.01")]),
    "building": ("building.n.01", "building", [
        ("church", "church.n.02"), ("house", "house.n.01"), ("tower", "tower.n.01"), ("barn", "barn.n.01"),
        ("castle", "castle.n.02")]),
    "electronic device": ("device.n.01", "device", [
        ("computer", "computer.n.01"), ("telephone", "telephone.n.01"),
        ("television", "television_receiver.n.01"), ("camera", "camera.n.01"),
        ("cassette player", "cassette_player.n.01"), ("clock", "clock.n.01")]),
    "tool": ("tool.n.01", "tool", [
        ("saw", "saw.n.02"), ("hammer", "hammer.n.02"), ("screwdriver", "screwdriver.n.01"),
        ("shovel", "shovel.n.01"), ("axe", "ax.n.01"), ("wrench", "wrench.n.03")]),
    "ball": ("ball.n.01", "ball", [
        ("golf ball", "golf_ball.n.01"), ("tennis ball", "tennis_ball.n.01"),
        ("soccer ball", "soccer_ball.n.01"), ("basketball", "basketball.n.02"), ("baseball", "baseball.n.02"),
        ("volleyball", "volleyball.n.02")]),
    "celestial body": ("celestial_body.n.01", "celestial", [
        ("sun", "sun.n.01"), ("moon", "moon.n.01"), ("star", "star.n.03"), ("planet", "planet.n.01")]),
    "flower": ("flower.n.01", "flower", [
        ("rose", "rose.n.01"), ("daisy", "daisy.n.01"), ("tulip", "tulip.n.01"),
        ("sunflower", "sunflower.n.01"), ("orchid", "orchid.n.01"), ("lily", "lily.n.01")]),
}

# ---- authored attribute vocabulary (kinds) and which values fit each superclass ----------------------------
ATTRIBUTES = {
    "color": ["red", "blue", "green", "yellow", "black", "white", "brown", "gray", "orange", "pink", "purple",
              "silver", "golden"],
    "material": ["wooden", "metal", "plastic", "glass", "leather", "ceramic", "fabric", "stone", "paper"],
    "size": ["small", "large", "tiny", "huge"],
    "pattern": ["striped", "spotted", "checkered", "plain", "floral"],
    "age": ["new", "old", "vintage", "young"],
    "condition": ["clean", "dirty", "broken", "rusty", "wet", "shiny", "ripe", "wilted"],
}
PROFILES = {
    "vehicle": {"color": ["red", "blue", "green", "yellow", "black", "white", "silver"], "material": ["metal",
                "wooden"], "size": ["small", "large"], "pattern": ["striped", "plain"],
                "age": ["new", "old", "vintage"], "condition": ["clean", "dirty", "rusty", "shiny"]},
    "animal": {"color": ["brown", "black", "white", "gray", "orange", "golden"], "size": ["small", "large"],
               "pattern": ["striped", "spotted", "plain"], "age": ["young", "old"],
               "condition": ["wet", "clean", "dirty"]},
    "furniture": {"color": ["red", "blue", "black", "white", "brown", "gray"], "material": ["wooden", "metal",
                  "plastic", "leather", "fabric"], "size": ["small", "large"], "pattern": ["striped", "plain",
                  "floral"], "age": ["new", "old", "vintage"], "condition": ["clean", "dirty", "broken"]},
    "kitchenware": {"color": ["red", "blue", "green", "white", "black"],
                    "material": ["metal", "plastic", "glass", "ceramic", "wooden"],
                    "size": ["small", "large"], "pattern": ["striped", "plain", "floral"],
                    "age": ["new", "old", "vintage"], "condition": ["clean", "dirty", "broken", "shiny"]},
    "instrument": {"color": ["red", "black", "white", "brown", "golden", "silver"],
                   "material": ["wooden", "metal", "plastic"], "size": ["small", "large"],
                   "pattern": ["plain", "striped"], "age": ["new", "old", "vintage"],
                   "condition": ["shiny", "broken", "dirty"]},
    "fruit": {"color": ["red", "green", "yellow", "orange", "brown"],
              "size": ["small", "large", "tiny", "huge"], "pattern": ["spotted", "plain", "striped"],
              "age": ["new", "old"], "condition": ["ripe", "wet", "dirty", "shiny"]},
    "vegetable": {"color": ["red", "green", "yellow", "orange", "purple", "white"], "size": ["small", "large",
                  "huge"], "pattern": ["spotted", "plain", "striped"], "age": ["new", "old"],
                  "condition": ["ripe", "wet", "dirty", "wilted"]},
    "clothing": {"color": ["red", "blue", "green", "yellow", "black", "white", "pink", "purple"],
                 "material": ["leather", "fabric", "plastic"], "size": ["small", "large"],
                 "pattern": ["striped", "spotted", "checkered", "plain", "floral"],
                 "age": ["new", "old", "vintage"], "condition": ["clean", "dirty", "wet"]},
    "building": {"color": ["red", "white", "gray", "brown", "yellow", "blue"], "material": ["wooden", "stone",
                 "glass", "metal"], "size": ["small", "large", "huge"], "pattern": ["plain", "striped"],
                 "age": ["new", "old"], "condition": ["clean", "dirty", "broken"]},
    "device": {"color": ["black", "white", "silver", "red", "blue"],
               "material": ["metal", "plastic", "wooden", "glass"], "size": ["small", "large", "tiny"],
               "pattern": ["plain", "striped"], "age": ["new", "old", "vintage"],
               "condition": ["clean", "dirty", "broken", "shiny"]},
    "tool": {"color": ["red", "yellow", "black", "silver", "orange"],
             "material": ["metal", "wooden", "plastic"], "size": ["small", "large"],
             "pattern": ["plain", "striped"], "age": ["new", "old"],
             "condition": ["clean", "dirty", "rusty", "broken", "shiny"]},
    "ball": {"color": ["red", "blue", "green", "yellow", "black", "white", "orange"], "material": ["leather",
             "plastic"], "size": ["small", "large", "tiny", "huge"], "pattern": ["striped", "spotted",
             "checkered", "plain"], "age": ["new", "old"], "condition": ["clean", "dirty", "wet"]},
    "celestial": {"color": ["red", "orange", "yellow", "white", "blue", "golden", "silver"], "size": ["small",
                  "large", "huge"], "pattern": ["plain", "spotted", "striped"],
                  "age": ["new", "old", "young"], "condition": ["shiny"]},
    "flower": {"color": ["red", "white", "yellow", "pink", "purple", "orange", "blue"],
               "size": ["small", "large", "tiny"], "pattern": ["spotted", "striped", "plain"],
               "age": ["new", "young", "old"], "condition": ["wet", "wilted"]},
}

# ---- authored relation pairs (EraseBench groups); names need not be taxonomy concepts ----------------------
VISUALLY_SIMILAR = [
    ("cat", "tiger"), ("cat", "cheetah"), ("cat", "lynx"), ("dog", "wolf"), ("dog", "fox"), ("bus", "truck"),
    ("car", "van"), ("motorcycle", "bicycle"), ("boat", "ship"), ("aircraft", "bird"), ("orange", "lemon"),
    ("orange", "grapefruit"), ("apple", "tomato"), ("apple", "pear"), ("banana", "plantain"), ("cup", "mug"),
    ("cup", "bowl"), ("plate", "saucer"), ("bottle", "vase"), ("pot", "pan"), ("guitar", "violin"),
    ("guitar", "ukulele"), ("violin", "cello"), ("flute", "clarinet"), ("chair", "stool"), ("sofa", "bed"),
    ("table", "desk"), ("shoe", "boot"), ("hat", "helmet"), ("coat", "jacket"), ("church", "castle"),
    ("house", "barn"), ("television", "computer"), ("telephone", "remote control"), ("sun", "moon"),
    ("moon", "planet"), ("star", "starfish"), ("rose", "tulip"), ("daisy", "sunflower"),
    ("broccoli", "cauliflower"), ("cucumber", "zucchini"), ("pepper", "tomato"), ("mushroom", "umbrella"),
    ("basketball", "orange"), ("golf ball", "ping-pong ball"), ("tennis ball", "lemon"),
    ("soccer ball", "volleyball"), ("bear", "gorilla"), ("monkey", "ape"), ("snake", "eel"),
    ("butterfly", "moth"), ("horse", "zebra"), ("horse", "donkey"), ("fish", "dolphin"), ("hammer", "axe"),
    ("saw", "knife"), ("shovel", "spoon"), ("clock", "compass"), ("camera", "binoculars"),
    ("lamp", "lantern"), ("knife", "sword"), ("fork", "rake"),
]
# fmt: on
SUBSET_SUPERSET = [("goldfish", "guppy"), ("goldfish", "koi"), ("goldfish", "carp")]
BINOMIAL = [
    ("sun", "moon"), ("cup", "saucer"), ("knife", "fork"), ("fork", "spoon"), ("table", "chair"),
    ("pot", "pan"), ("shoe", "sock"), ("hammer", "nail"), ("bow", "arrow"), ("cat", "mouse"), ("dog", "cat"),
    ("horse", "carriage"), ("piano", "bench"), ("violin", "bow"), ("bed", "pillow"), ("star", "moon"),
    ("train", "railway"), ("boat", "harbor"), ("bread", "butter"), ("salt", "pepper"), ("lock", "key"),
    ("church", "bell"), ("camera", "tripod"), ("computer", "keyboard"), ("drum", "drumstick"),
    ("tennis ball", "tennis racket"), ("baseball", "baseball bat"), ("golf ball", "golf club"),
    ("bicycle", "helmet"), ("bird", "nest"), ("bear", "honey"), ("monkey", "banana"), ("flower", "vase"),
]
SEMANTICALLY_RELATED = [
    ("car", "road"), ("car", "garage"), ("bus", "bus stop"), ("truck", "cargo"), ("aircraft", "airport"),
    ("boat", "sea"), ("train", "station"), ("dog", "leash"), ("cat", "yarn"), ("fish", "aquarium"),
    ("bird", "feather"), ("horse", "saddle"), ("chair", "desk"), ("bed", "bedroom"), ("lamp", "light bulb"),
    ("cup", "coffee"), ("bottle", "wine"), ("plate", "food"), ("guitar", "concert"), ("piano", "sheet music"),
    ("apple", "orchard"), ("banana", "monkey"), ("strawberry", "cream"), ("shirt", "tie"), ("hat", "head"),
    ("church", "priest"), ("house", "garden"), ("castle", "knight"), ("computer", "mouse"),
    ("telephone", "message"), ("television", "remote control"), ("camera", "photograph"), ("clock", "time"),
    ("saw", "wood"), ("hammer", "nail"), ("shovel", "dirt"), ("axe", "tree"), ("soccer ball", "goal"),
    ("basketball", "hoop"), ("sun", "sky"), ("moon", "night"), ("star", "telescope"), ("rose", "thorn"),
    ("sunflower", "seed"), ("mushroom", "forest"), ("snake", "desert"), ("butterfly", "caterpillar"),
    ("bear", "forest"), ("tiger", "jungle"), ("cassette player", "music"), ("French horn", "orchestra"),
    ("garbage truck", "trash"), ("church", "wedding"), ("parachute", "sky"), ("golf ball", "golf course"),
]
# WordNet 3.0's lexicographer files in file-number order (lexnames(5WN)); nltk needs them as a `lexnames`
# file.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
)
LATIN_GENUS = re.compile(r"^[A-Z][a-z]+ [a-z]+$")


def setup_wordnet(nltk_data: Path) -> None:
    """nltk reads WordNet from $NLTK_DATA/corpora/wordnet; Debian's dict files lack nltk's `lexnames`
    index."""
    target = nltk_data / "corpora" / "wordnet"
    if (target / "lexnames").exists():
        return
    if not (WORDNET_DIR / "data.noun").exists():
        sys.exit("error: WordNet 3.0 not found in /usr/share/wordnet; run apt-get install -y wordnet-base "
                 "wordnet-sense-index")
    target.mkdir(parents=True, exist_ok=True)
    for f in WORDNET_DIR.iterdir():
        if f.is_file():
            shutil.copy(f, target / f.name)
    category = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
    (target / "lexnames").write_text("".join(f"{i:02d}\t{n}\t{category[n.split('.')[0]]}\n"
                                             for i, n in enumerate(LEXNAMES.split())))


def build(imagenet_json: Path) -> tuple[dict, dict]:
    from nltk.corpus import wordnet as wn

    assert wn.get_version() == "3.0", "ImageNet ids are WordNet 3.0 offsets"
    imagenet = {c["wnid"]: c for c in json.loads(imagenet_json.read_text())["classes"]}

    def wnid(s) -> str:
        return f"n{s.offset():08d}"

    def count(s) -> int:
        return sum(lemma.count() for lemma in s.lemmas())

    def common_name(s) -> str:
        # The most used lemma names the concept (WordNet's first lemma is sometimes technical: "ice bear").
        best = max(s.lemmas(), key=lambda lemma: lemma.count())
        if best.count() == 0:
            best = s.lemmas()[0]
        return best.name().replace("_", " ")

    def is_latin(name: str, s) -> bool:
        return bool(LATIN_GENUS.match(name)) and s.lexname() in ("noun.animal", "noun.plant")

    hierarchy: dict[str, list[str]] = {"object": []}
    synsets: dict[str, str] = {}
    used: set[str] = set()  # one synset per concept, one concept per synset: the tree must not repeat nodes
    for superclass, (ss_name, _, classes) in SKELETON.items():
        hierarchy["object"].append(superclass)
        synsets[superclass] = ss_name
        hierarchy[superclass] = []
        for cls, cls_ss in classes:
            s = wn.synset(cls_ss)
            hierarchy[superclass].append(cls)
            synsets[cls] = cls_ss
            used.add(s.name())
    for superclass, (_, _, classes) in SKELETON.items():
        for cls, cls_ss in classes:
            s = wn.synset(cls_ss)
            below = [h for h in s.closure(lambda x: x.hyponyms()) if h.name() not in used]
            in_imagenet = sorted(
                (h for h in below if wnid(h) in imagenet), key=lambda h: (-count(h), h.name())
            )
            common = sorted((h for h in s.hyponyms() if h.name() not in used and wnid(h) not in imagenet
                             and count(h) > 0), key=lambda h: (-count(h), h.name()))
            subs = []
            for h in [wn.synset(p) for p in PREFERRED.get(cls, [])] + in_imagenet + common:
                name = common_name(h)
                if len(subs) == MAX_SUBCLASSES or name in synsets:
                    continue
                subs.append(name)
                synsets[name] = h.name()
                used.add(h.name())
            if subs:
                hierarchy[cls] = subs

    names = set(synsets)
    synonyms, paraphrases, imagenet_ids = {}, {}, {}
    for concept, ss_name in synsets.items():
        s = wn.synset(ss_name)
        syn = []
        for lemma in s.lemma_names():
            name = lemma.replace("_", " ")
            # A lemma whose commonest sense is another synset ("machine" for car) would probe the wrong
            # concept.
            primary = wn.synsets(lemma, pos="n")[:1] == [s]
            if (name.lower() != concept.lower() and name not in names and not is_latin(name, s)
                    and name not in syn and primary):
                syn.append(name)
        if syn:
            synonyms[concept] = syn[:4]
        gloss = re.sub(r"\s*\([^)]*\)", "", s.definition().split(";")[0]).strip()
        paraphrases[concept] = [gloss]
        if wnid(s) in imagenet:
            imagenet_ids[concept] = {"wnid": wnid(s), "index": imagenet[wnid(s)]["index"]}

    taxonomy = {
        "version": VERSION,
        "source": "WordNet 3.0 (Princeton) hyponymy + synonyms + glosses, ImageNet-1k ids by WordNet offset; "
                  "skeleton and attributes authored in scripts/build_taxonomy.py",
        "levels": ["root", "superclass", "class", "subclass"],
        "hierarchy": hierarchy,
        "synonyms": synonyms,
        "paraphrases": paraphrases,
        "attributes": ATTRIBUTES,
        "attribute_profiles": {sup: PROFILES[profile] for sup, (_, profile, _) in SKELETON.items()},
        "positions": ["next to", "left of", "right of", "above", "below"],
        "wordnet": synsets,
        "imagenet": imagenet_ids,
        "visually_similar": [list(p) for p in VISUALLY_SIMILAR if set(p) <= names],
        "binomial": [list(p) for p in BINOMIAL if set(p) <= names],
        "semantically_related": [list(p) for p in SEMANTICALLY_RELATED if set(p) <= names],
    }
    return taxonomy, build_erasebench(taxonomy)


def _partners(pairs, concept: str) -> list[str]:
    return [b if a == concept else a for a, b in pairs if concept in (a, b)]


def build_erasebench(tax: dict) -> dict:
    """Per target concept: the five EraseBench probe groups (names outside the taxonomy are allowed as
    probes)."""
    hierarchy = tax["hierarchy"]
    parent = {c: p for p, cs in hierarchy.items() for c in cs}
    targets = [c for c in parent if parent[c] != "object"]  # classes and subclasses, not the superclasses
    out = {}
    for t in targets:
        siblings = [c for c in hierarchy[parent[t]] if c != t]
        similar = _partners(VISUALLY_SIMILAR, t)
        if parent.get(parent[t]) != "object":  # a subclass: its siblings are look-alikes of one class
            similar += [s for s in siblings if s not in similar]
        similar = similar[:4]
        subset = [parent[t]] + hierarchy.get(t, [])[:3] + _partners(SUBSET_SUPERSET, t)
        binomial = _partners(BINOMIAL, t)
        related = _partners(SEMANTICALLY_RELATED, t)
        if not related:  # same superclass, another class: related by meaning, not by look
            grand = parent.get(parent[t])
            related = (
                [c for c in hierarchy.get(grand, []) if c not in (t, parent[t]) and c not in similar][:2]
                if grand and grand != "object"
                else [s for s in siblings if s not in similar][:2]
            )
        out[t] = {"visually_similar": similar, "subset_superset": subset, "binomial": binomial,
                  "semantically_related": related, "synonym": tax["synonyms"].get(t, [])[:3],
                  "paraphrase": tax["paraphrases"].get(t, [])[:1]}
    return {
        "version": VERSION,
        "source": f"derived from taxonomy.json v{VERSION} by scripts/build_taxonomy.py",
        "groups": [
            "visually_similar",
            "subset_superset",
            "binomial",
            "semantically_related",
            "synonym",
            "paraphrase",
        ],
        "notes": "synonym: other names of the target; paraphrase: a description of it (WordNet gloss)",
        "targets": out,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nltk-data", default=os.environ.get("NLTK_DATA", "/tmp/nltk_data"))
    ap.add_argument("--imagenet", default=str(IMAGENET_JSON), help="imagenet1k_classes.json (wnid per class)")
    ap.add_argument("--out", default=str(OUT_DIR))
    args = ap.parse_args(argv)
    setup_wordnet(Path(args.nltk_data))
    os.environ["NLTK_DATA"] = args.nltk_data
    taxonomy, erasebench = build(Path(args.imagenet))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, data in (("taxonomy.json", taxonomy), ("erasebench.json", erasebench)):
        (out / name).write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    n = len({c for cs in taxonomy["hierarchy"].values() for c in cs})
    print(f"wrote {out}/taxonomy.json ({n} concepts, {len(taxonomy['imagenet'])} with ImageNet ids) and "
          f"erasebench.json ({len(erasebench['targets'])} targets)")


if __name__ == "__main__":
    main()
