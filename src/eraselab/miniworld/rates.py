"""How often the miniworld model draws a class: the share of seeded "a <concept>" images in which the oracle
finds that class. One definition for the effect tests (tests/test_methods_effect.py) and the preset trials
(benchmarks/preset_trials.py), so both judge an erasure by the same count."""
from __future__ import annotations


def shown_rate(pipe, store, oracle, concept: str, edit, seeds: int, guidance: float | None = None) -> float:
    """Share of `seeds` images of "a <concept>" (seeds 0..seeds−1, the pipeline's sampler; `edit` applied
    when given) in which the oracle finds an object of class `concept`."""
    from ..generate import generate, images_for
    from ..probes import Probe

    extra = {} if guidance is None else {"guidance": guidance}
    probes = [Probe(prompt=f"a {concept}", seed=s, concepts=(concept,), **extra) for s in range(seeds)]
    rows = oracle.predict(images_for(store, generate(pipe, probes, store, edit=edit, progress=False)))
    return sum(any(o["class"] == concept for o in r["objects"]) for r in rows) / len(rows)
