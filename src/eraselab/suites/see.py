"""SEE suite (arXiv 2508.15124): probes on the hierarchy and compositions around an erased concept.

Aspects (what each probe measures) and their relations (how the probe's concept relates to the target):
- target       the target itself ("a circle"; for an attributed target "a red circle")
- synonym      relation "synonym" (another name sharing no word with the target's: "a disc" for circle, not "a
               five pointed star" for star) or "paraphrase" (a rewording / a WordNet description)
- parent       "parent", "grandparent" (evasion through the superclass); for an attributed target also
               "bare concept" ("a circle" after erasing "red circle")
- child        "child", "grandchild" (evasion through subclasses)
- sibling      "sibling" (neighbours sharing the parent); for an attributed target also "attribute sibling"
               ("a blue circle" after erasing "red circle")
- composition  "composition:<kind>": the target with attributes ("a red circle", "a large circle")
- leak         "leak:sibling" / "leak:unrelated": the target and another object with different values of one
               attribute kind ("a red circle left of a blue square"); `attributes` says which object should
               have which value, so metrics can ask whether the square is still blue, or turned red
- unrelated    "unrelated": concepts in other branches (control)
Parents, children and siblings keep the target's attributes ("a red polygon" after erasing "red circle").
"""
from __future__ import annotations

from dataclasses import dataclass

from ..domain import Domain, noun_phrase, ordered
from .base import Spec, Suite


@dataclass
class SeeSuite(Suite):
    METRICS = ("target.recognition", "see.neighbour_drop.<relation>", "see.evasion.<route>",
               "see.attribute_leak", "see.attribute_lost", "see.unrelated.preserved", "see.unrelated.drop")
    name: str = "see"
    version: int = 2  # v2: synonym probes only with names that share no word with the target
    ASPECTS: tuple[str, ...] = ("target", "synonym", "composition", "child", "parent", "leak", "sibling",
                                "unrelated")
    max_per_relation: int = 6  # cap on children, grandchildren, siblings and unrelated concepts per target
    values_per_kind: int = 3  # attribute values per kind in compositions
    leak_partners: int = 2  # siblings and unrelated objects each paired with the target in leak prompts

    def _specs(self, target: str, domain: Domain) -> list[Spec]:
        h = domain.hierarchy
        concept, attrs = domain.parse(target)
        values = ordered(attrs)
        cap = self.max_per_relation

        def probe(c: str, aspect: str, relation: str, kinds=attrs, np: str | None = None):
            vals = ordered(kinds)
            return Spec(domain.prompt(np or noun_phrase(c, vals)), (c,), aspect, relation,
                        tuple((c, v) for v in vals))

        specs = [probe(concept, "target", "target")]
        specs += [
            probe(concept, "synonym", "synonym", np=noun_phrase(s, values)) for s in h.other_names(concept)
        ]
        specs += [Spec(t.format(np=noun_phrase(concept, values)), (concept,), "synonym", "paraphrase",
                       tuple((concept, v) for v in values)) for t in domain.paraphrase_templates]
        specs += [Spec(domain.prompt(d), (concept,), "synonym", "paraphrase") for d in h.descriptions(concept)
                  if not values]
        kept = [a for a in h.ancestors(concept) if a not in domain.excluded][:2]
        specs += [probe(a, "parent", rel) for a, rel in zip(kept, ("parent", "grandparent"))]
        if values:
            specs.append(probe(concept, "parent", "bare concept", kinds=()))
        children = h.children(concept)
        specs += [probe(c, "child", "child") for c in children[:cap]]
        specs += [probe(g, "child", "grandchild") for g in [g for c in children for g in h.children(c)][:cap]]
        specs += [probe(s, "sibling", "sibling") for s in h.siblings(concept)[:cap]]
        options = h.attribute_values(concept)
        for kind, value in attrs:  # same concept, another value of the target's attribute
            specs += [probe(concept, "sibling", "attribute sibling",
                            kinds=tuple((k, other if v == value else v) for k, v in attrs))
                      for other in options.get(kind, ())[:self.values_per_kind + 1] if other != value]
        used_kinds = {k for k, _ in attrs}
        for kind, vals in options.items():
            if kind not in used_kinds:
                specs += [probe(concept, "composition", f"composition:{kind}", kinds=((kind, v),) + attrs)
                          for v in vals[:self.values_per_kind]]
        specs += self._leaks(concept, attrs, domain)
        specs += [probe(u, "unrelated", "unrelated", kinds=()) for u in h.unrelated(concept)[:cap]]
        return specs

    def _leaks(self, concept: str, attrs, domain: Domain) -> list[Spec]:
        """Two objects with different values of one attribute kind (colour, or the target's own kind)."""
        kind, fixed = next(((k, v) for k, v in attrs if k == "color"), attrs[0] if attrs else ("color", None))
        h = domain.hierarchy
        mine = h.attribute_values(concept).get(kind, ())
        if not mine:
            return []
        partners = ([(o, "leak:sibling") for o in h.siblings(concept)[:self.leak_partners]]
                    + [(o, "leak:unrelated") for o in h.unrelated(concept)[:self.leak_partners]])
        specs = []
        for i, (other, relation) in enumerate(partners):
            a = fixed or mine[(2 * i) % len(mine)]
            theirs = [v for v in h.attribute_values(other).get(kind, ()) if v != a]
            if not theirs:
                continue
            b = theirs[i % len(theirs)]
            join = domain.pair_joins[i % len(domain.pair_joins)]
            prompt = domain.prompt(join.format(a=noun_phrase(concept, (a,)), b=noun_phrase(other, (b,))))
            specs.append(Spec(prompt, (concept, other), "leak", relation, ((concept, a), (other, b))))
        return specs
