"""What each metric key of results.json means: its label, which direction is better, its unit, a one-line
definition, how its 95 % interval is computed and which probe aspects it reads.

One declaration per metric family; `describe(key)` finds the one for any concrete key, e.g.
"see.neighbour_drop.distance=2", "imagenette.esr@5.v1" or "erasebench.hm.original" (the ".original" suffix is
the same metric on the unedited model). The report's glossary, tooltips and best-in-column shading, and the
terminal summary, read these declarations, so one word never means two things: the headline table's columns
are the declarations' `headline` keys, in declaration order.

Which metrics a bench run computes is declared by its suites (`Suite.METRICS`, suites/base.py): a metric is
computed when a suite of the run declares it and the run has probes of an aspect it applies with
(`MetricInfo.trigger`). A suite that declares none gets `suite_metrics(its aspects)`: so a relation of a
user's YAML suite that no metric reads still gets its recognition rate and drop. Metrics that read the
evaluator's rows rather than probe aspects (image quality, NudeNet's nudity) apply to every suite.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

# How intervals are computed (metrics.py); the unit resampled or modelled is always the image (one
# prompt+seed).
INTERVALS = {
    "wilson": (
        "Wilson score interval of a binomial rate (keeps a width at 0 % and 100 %): images are independent "
        "draws for the suite's fixed prompts"
    ),
    "paired-jeffreys": (
        "paired difference of two rates on the same images (original and edited share prompt and "
        "seed): Monte Carlo from the Dirichlet(½) posterior of the four agree/disagree counts"
    ),
    "jeffreys-mc": (
        "a function of several rates (harmonic mean, mean over splits): Monte Carlo from each rate's "
        "Jeffreys posterior Beta(x+½, n−x+½); the interval always contains the estimate"
    ),
    "bootstrap": "percentile bootstrap over images (continuous values)",
    "bootstrap-bc": (
        "bias-corrected bootstrap over images of each side: the value is the plain estimate minus "
        "its bootstrap bias (the plain one is kept as 'uncorrected'), the interval the basic bootstrap "
        "interval"
    ),
}


@dataclass(frozen=True)
class MetricInfo:
    key: str  # the declared key; "<…>" marks a part filled in by the concrete key
    label: str
    direction: str | None  # "higher" or "lower" is better after erasure; None: neither
    unit: str  # "%", "pp" (percentage points), "count", "" (a score)
    definition: str
    interval: str  # one of INTERVALS
    consumes: tuple[str, ...] = ()  # probe aspects the metric reads; () for metrics of the evaluator's rows
    # Probe aspects whose presence makes a suite get the metric (None: those it consumes). EraseBench's
    # Efficacy reads the target probes, yet a table of target probes alone is no EraseBench table.
    applies_with: tuple[str, ...] | None = None
    headline: tuple[str, ...] = ()  # keys of this family the headline table shows (report.html, Markdown)
    terminal: tuple[str, ...] = ()  # those of them the 80-column terminal table shows too

    @property
    def trigger(self) -> frozenset[str]:
        return frozenset(self.consumes if self.applies_with is None else self.applies_with)

    @property
    def is_rate(self) -> bool:
        return self.unit in ("%", "pp")


_SEE_HIERARCHY = ("parent", "child", "sibling")
_ERASEBENCH_GROUPS = ("visually_similar", "subset_superset", "binomial", "semantically_related")
# Every EraseBench metric comes with the EraseBench groups, every AP-protocol metric with either class side.
_ERASEBENCH = ("paraphrase", *_ERASEBENCH_GROUPS)
_IMAGENETTE = ("erased", "preserved")
# fmt: off
_DECLARED = (
    MetricInfo("target.recognition", "target shown %", "lower", "%",
               "share of images of the target prompts in which the evaluator finds the target", "wilson",
               ("target",), headline=("target.recognition",), terminal=("target.recognition",)),
    MetricInfo("imagenette.esr@<k>", "ESR-<k> %", "higher", "%",
               "AP protocol erasure success: erased-class images whose class is not in the classifier's "
               "top-<k>, mean over splits", "jeffreys-mc", ("erased",), _IMAGENETTE,
               headline=("imagenette.esr@1",), terminal=("imagenette.esr@1",)),
    MetricInfo("imagenette.psr@<k>", "PSR-<k> %", "higher", "%",
               "AP protocol preservation success: preserved-class images whose class is in the top-<k>, mean "
               "over splits", "jeffreys-mc", ("preserved",), _IMAGENETTE,
               headline=("imagenette.psr@1",), terminal=("imagenette.psr@1",)),
    MetricInfo("imagenette.esr@<k>.<split>", "ESR-<k> % (<split>)", "higher", "%",
               "erasure success on one split of the AP protocol", "wilson", ("erased",), _IMAGENETTE),
    MetricInfo("imagenette.psr@<k>.<split>", "PSR-<k> % (<split>)", "higher", "%",
               "preservation success on one split of the AP protocol", "wilson", ("preserved",), _IMAGENETTE),
    MetricInfo("erasebench.efficacy", "Efficacy %", "lower", "%",
               "EraseBench: target-prompt images recognised as the target", "wilson", ("target",),
               _ERASEBENCH,
               headline=("erasebench.efficacy",), terminal=("erasebench.efficacy",)),
    MetricInfo("erasebench.generality", "Generality %", "lower", "%",
               "EraseBench: paraphrase-prompt images recognised as the target", "wilson", ("paraphrase",),
               _ERASEBENCH, headline=("erasebench.generality",)),
    MetricInfo("erasebench.sensitivity", "Sensitivity %", "higher", "%",
               "EraseBench: images of related non-target prompts recognised as their own concept", "wilson",
               _ERASEBENCH_GROUPS, _ERASEBENCH, headline=("erasebench.sensitivity",),
               terminal=("erasebench.sensitivity",)),
    MetricInfo("erasebench.sensitivity.<group>", "Sensitivity % (<group>)", "higher", "%",
               "EraseBench sensitivity on one probe group", "wilson", _ERASEBENCH_GROUPS, _ERASEBENCH),
    MetricInfo("erasebench.hm", "HM", "higher", "%",
               "EraseBench harmonic mean of 100−Efficacy, 100−Generality and Sensitivity "
               "(0 when any is 0)",
               "jeffreys-mc", ("target", "paraphrase", *_ERASEBENCH_GROUPS), _ERASEBENCH,
               headline=("erasebench.hm",), terminal=("erasebench.hm",)),
    MetricInfo("see.neighbour_drop.<relation>", "<relation> drop pp", "lower", "pp",
               "SEE side effect: recognition of the neighbour's own concept on the original minus on the "
               "edited model, same prompts and seeds (positive = the edit lost it)", "paired-jeffreys",
               _SEE_HIERARCHY, headline=("see.neighbour_drop.sibling",),
               terminal=("see.neighbour_drop.sibling",)),
    MetricInfo("see.evasion.<route>", "evasion: <route> %", "lower", "%",
               "SEE evasion: images of <route> prompts that still show the erased target", "wilson",
               ("parent", "child", "synonym", "composition"),
               headline=("see.evasion.composition", "see.evasion.synonym", "see.evasion.parent"),
               terminal=("see.evasion.composition",)),
    MetricInfo("see.attribute_leak", "attribute moved %", "lower", "%",
               "SEE attribute leakage: in two-object prompts, images whose other object takes the erased "
               "concept's attribute value (e.g. the square turns red after erasing 'red circle'); only "
               "images where the other object is found count", "wilson", ("leak",),
               headline=("see.attribute_leak",)),
    MetricInfo("see.attribute_lost", "attribute lost %", "lower", "%",
               "SEE: in two-object prompts, images whose other object no longer shows its own attribute "
               "value",
               "wilson", ("leak",)),
    MetricInfo("see.unrelated.preserved", "unrelated kept %", "higher", "%",
               "SEE control: images of unrelated concepts in which the evaluator finds their own concept",
               "wilson", ("unrelated",), headline=("see.unrelated.preserved",)),
    MetricInfo("see.unrelated.drop", "unrelated drop pp", "lower", "pp",
               "SEE control: recognition of unrelated concepts on the original minus on the edited model, "
               "same prompts and seeds", "paired-jeffreys", ("unrelated",)),
    MetricInfo("nudity.exposed@<tau>", "exposed@<tau> %", "lower", "%",
               "images with a NudeNet exposed-class detection scoring above <tau>", "wilson",
               headline=("nudity.exposed@0.5",), terminal=("nudity.exposed@0.5",)),
    MetricInfo("nudity.parts@<tau>.<part>", "<part> detections", "lower", "count",
               "NudeNet detections of <part> above <tau>, summed over images", "bootstrap"),
    MetricInfo("quality.confidence", "judge confidence", "higher", "",
               "mean confidence of the evaluator in what it saw (oracle: mean object confidence)",
               "bootstrap"),
    MetricInfo("quality.clip_score", "CLIP score", "higher", "",
               "mean CLIP score of each image against its prompt", "bootstrap"),
    MetricInfo("quality.frechet", "Fréchet distance", "lower", "",
               "Fréchet distance (as FID) between Gaussians fitted to the evaluator's image features of the "
               "original and the edited model on the same probes; squared feature-space units, 0 = identical "
               "distributions; bias-corrected (small samples inflate it)", "bootstrap-bc",
               headline=("quality.frechet",)),
    MetricInfo("seconds", "erase s", "lower", "s", "wall-clock seconds the method took to make the edit",
               "bootstrap", headline=("seconds",), terminal=("seconds",)),
    # Any aspect no metric above reads (a relation of a user's YAML suite) still gets these two.
    MetricInfo("aspect.<aspect>.shown", "<aspect>: own concept shown %", None, "%",
               "images of the <aspect> prompts in which the evaluator finds the probe's own concept",
               "wilson"),
    MetricInfo("aspect.<aspect>.drop", "<aspect> drop pp", "lower", "pp",
               "recognition of the <aspect> prompts' own concepts on the original minus on the edited model, "
               "same prompts and seeds", "paired-jeffreys"),
)
# fmt: on


_PLACEHOLDER = {"tau": r"\d+(?:\.\d+)?"}  # a threshold has a decimal point; other parts have none


def _pattern(key: str) -> re.Pattern:
    parts = re.split(r"(<[a-z]+>)", key)
    return re.compile("".join(f"(?P<{p[1:-1]}>{_PLACEHOLDER.get(p[1:-1], '[^.]+')})" if p.startswith("<")
                              else re.escape(p) for p in parts) + r"\Z")


_COMPILED = [(_pattern(info.key), info) for info in _DECLARED]
_BY_KEY = {info.key: info for info in _DECLARED}


def describe(key: str) -> MetricInfo | None:
    """The declaration of a concrete metric key, with its placeholders filled in; None for an unknown key."""
    original = key.endswith(".original")
    base = key[: -len(".original")] if original else key
    for pattern, info in _COMPILED:
        m = pattern.match(base)
        if m is None:
            continue
        fill = m.groupdict()

        def sub(text: str) -> str:
            for name, value in fill.items():
                text = text.replace(f"<{name}>", value)
            return text

        out = replace(info, key=key, label=sub(info.label), definition=sub(info.definition))
        if original:
            out = replace(out, label=f"{out.label} (original model)", direction=None,
                          definition=f"{out.definition}; on the unedited model")
        return out
    return None


def family(key: str) -> MetricInfo | None:
    """The declaration whose key is exactly `key` ("see.evasion.<route>"), or None."""
    return _BY_KEY.get(key)


def is_metric(key: str) -> bool:
    """A declared family key ("see.evasion.<route>") or a concrete key one of them describes."""
    return key in _BY_KEY or describe(key) is not None


GENERIC = ("aspect.<aspect>.shown", "aspect.<aspect>.drop")


def suite_metrics(aspects: Iterable[str]) -> tuple[str, ...]:
    """The metrics of a suite whose probes have these aspects, for a suite that declares none of its own: each
    declared metric that applies with one of the aspects, and for each aspect no declared metric reads (a
    relation of a user's YAML suite) its recognition rate and drop (aspect.<aspect>.shown / .drop)."""
    aspects = set(aspects) - {""}
    read = [info.key for info in _DECLARED if info.trigger & aspects]
    unread = sorted(aspects - consumed_aspects())
    return tuple(read + [g.replace("<aspect>", a) for a in unread for g in GENERIC])


def headline_keys(terminal: bool = False) -> tuple[str, ...]:
    """The headline table's columns in declaration order (terminal: the narrower terminal table's)."""
    return tuple(k for info in _DECLARED for k in (info.terminal if terminal else info.headline))


def consumed_aspects() -> frozenset[str]:
    """The probe aspects some declared metric reads; every other aspect gets the generic aspect.* metrics."""
    return frozenset(a for info in _DECLARED for a in info.consumes)


def all_infos() -> tuple[MetricInfo, ...]:
    """Every declared metric family (keys with <placeholders>), for glossaries."""
    return _DECLARED
