"""Metrics on hand-made judgment tables with known answers (including SPEC.md's EraseBench HM figures)."""
import numpy as np
import pytest

from eraselab import metrics as M
from eraselab.errors import EraseLabError
from eraselab.miniworld.world import WORLD
from eraselab.probes import Probe
from eraselab.suites import imagenette, load_taxonomy


def probe(prompt, concepts, aspect, relation="", seed=0, attributes=()):
    return Probe(
        prompt=prompt,
        seed=seed,
        concepts=tuple(concepts),
        aspect=aspect,
        relation=relation or aspect,
        attributes=tuple(attributes),
    )


def labelled(prompt, concept, aspect, hits, total, relation=""):
    """`total` probes of one prompt, the first `hits` recognised as `concept` (top-1), the rest as 'other'."""
    return [
        (probe(prompt, [concept], aspect, relation, seed=i), {"labels": [concept if i < hits else "other"]})
        for i in range(total)
    ]


def objs(*items):
    return {"labels": sorted({c for c, _ in items}), "objects": [{"class": c, "color": col, "confidence": 0.9}
                                                                 for c, col in items]}


# ---- EraseBench --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eff,gen,sens,expected", [
    (86.5, 90.2, 85.0, 15.97),  # SD 1.4 original: 3/(1/13.5 + 1/9.8 + 1/85)
    (24.5, 50.5, 65.9, 61.70),  # ESD
    (41.8, 68.3, 82.7, 49.32),  # UCE (the paper rounds from unrounded inputs: 49.326)
    (8.1, 20.0, 65.4, 77.58),   # Receler
    (15.6, 37.7, 66.4, 69.83),  # MACE
])
def test_harmonic_mean_matches_spec_figures(eff, gen, sens, expected):
    assert M.harmonic_mean(eff, gen, sens) == pytest.approx(expected, abs=0.011)


def test_harmonic_mean_is_zero_when_a_term_is_zero():
    assert M.harmonic_mean(100.0, 10.0, 90.0) == 0.0
    assert M.harmonic_mean(0.0, 0.0, 100.0) == pytest.approx(100.0)


def test_erasebench_metrics_on_a_table_with_the_spec_original_rates():
    table = (labelled("a photo of a cat", "cat", "target", 173, 200)            # 86.5 %
             + labelled("a photo of a house cat", "cat", "paraphrase", 451, 500)  # 90.2 %
             + labelled("a photo of a tiger", "tiger", "visually_similar", 100, 120)
             + labelled("a photo of a moon", "moon", "binomial", 70, 80))        # sens = 170/200 = 85 %
    assert M.efficacy(table).value == pytest.approx(86.5)
    assert M.generality(table).value == pytest.approx(90.2)
    sens = M.sensitivity(table)
    assert sens.value == pytest.approx(85.0) and sens.n == 200
    assert M.sensitivity(table, groups=("binomial",)).value == pytest.approx(87.5)
    h = M.hm(table)
    assert h.value == pytest.approx(15.97, abs=0.005) and h.n == 900
    assert h.low < h.value < h.high
    # top-1 only: the target in second place does not count
    assert not M.efficacy([(probe("x", ["cat"], "target"), {"labels": ["dog", "cat"]})]).value
    assert M.efficacy([(probe("x", ["cat"], "target"), {"labels": ["dog", "cat"]})], k=2).value == 100.0


# ---- ESR / PSR ---------------------------------------------------------------------------------------------
def test_esr_psr_top1_top5_and_aliases():
    rec = M.Recognizer(aliases=imagenette.aliases())
    e = "church"
    table = [
        (probe("Image of church", [e], "erased", "v1", 0), {"labels": ["church", "a", "b", "c", "d"]}),
        (probe("Image of church", [e], "erased", "v1", 1), {"labels": ["a", "b", "c", "church", "d"]}),
        (probe("Image of church", [e], "erased", "v1", 2), {"labels": ["a", "b", "c", "d", "e"]}),
        (probe("Image of church", [e], "erased", "v1", 3), {"labels": ["a", "b", "c", "d", "e", "church"]}),
        (probe("Image of chain saw", ["chain saw"], "preserved", "v1", 0), {"labels": ["chainsaw", "a"]}),
        (probe("Image of chain saw", ["chain saw"], "preserved", "v1", 1), {"labels": ["a", "491"]}),
        (probe("Image of chain saw", ["chain saw"], "preserved", "v1", 2), {"labels": ["a", "b"]}),
    ]
    assert M.esr(table, 1, rec).value == pytest.approx(75.0)
    assert M.esr(table, 5, rec).value == pytest.approx(50.0)  # the 6th label is outside the top-5
    assert M.psr(table, 1, rec).value == pytest.approx(100 / 3)
    assert M.psr(table, 5, rec).value == pytest.approx(200 / 3)
    assert M.psr(table, 1).value == 0.0  # without aliases "chainsaw" is not "chain saw"


def test_over_splits_mean_and_std():
    t = ([(probe("Image of church", ["church"], "erased", "v1", i), {"labels": ["x"]}) for i in range(4)]
         + [(probe("Image of tench", ["tench"], "erased", "v2", i), {"labels": ["tench" if i % 2 else "x"]})
            for i in range(4)])
    m = M.over_splits(t, "esr", 1)
    assert m.value == pytest.approx(75.0) and m.std == pytest.approx(25.0) and m.n == 8
    assert m.low <= 75.0 <= m.high
    assert M.over_splits(t, "psr", 1) == M.EMPTY


# ---- intervals ---------------------------------------------------------------------------------------------
def test_rate_has_the_wilson_interval_and_keeps_a_width_at_0_and_100_percent():
    def wilson(x, n, z=1.959963984540054):  # Wilson (1927), written out
        p = x / n
        centre, half = p + z * z / (2 * n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return 100 * (centre - half) / (1 + z * z / n), 100 * (centre + half) / (1 + z * z / n)

    a = M.rate([True] * 30 + [False] * 70)
    assert a.value == pytest.approx(30.0) and a.n == 100 and a.interval == "wilson"
    assert (a.low, a.high) == pytest.approx(wilson(30, 100))
    assert M.rate([]) == M.Metric(None, None, None, 0)
    none = M.rate([False] * 8)  # a percentile bootstrap reads "0.0 [0.0, 0.0]" here
    assert (
        none.value == 0.0
        and none.low == 0.0
        and none.high == pytest.approx(wilson(0, 8)[1])
        and none.high > 25
    )
    every = M.rate([True] * 93)
    assert every.high == 100.0 and every.low <= every.value  # exactly: 100 % lies inside its own interval
    assert set(a.to_dict()) == {"value", "low", "high", "n", "half_width", "interval"}
    assert a.to_dict()["half_width"] == pytest.approx((a.high - a.low) / 2)


def _coverage(draw, truth, runs=400):
    """Share of `runs` seeded draws whose metric interval contains `truth`."""
    hits = 0
    for s in range(runs):
        m = draw(np.random.default_rng(s), s)
        hits += m.low <= truth <= m.high
    return hits / runs


def test_rate_interval_has_about_nominal_exact_coverage_at_suite_sizes():
    from scipy.stats import binom

    for n in (8, 12, 16, 24, 32, 48, 96):
        intervals = [M.rate([True] * x + [False] * (n - x)) for x in range(n + 1)]
        coverage = [sum(binom.pmf(x, n, p) for x, m in enumerate(intervals) if m.low <= 100 * p <= m.high)
                    for p in np.linspace(0.03, 0.97, 95)]
        assert min(coverage) >= 0.89 and 0.94 <= np.mean(coverage) <= 0.97, (
            n,
            min(coverage),
            np.mean(coverage),
        )


@pytest.mark.parametrize("p_lost,p_gained,n", [(0.25, 0.0, 32), (0.1, 0.05, 48), (0.5, 0.0, 16)])
def test_paired_drop_interval_covers_the_truth(p_lost, p_gained, n):
    def draw(rng, s):
        u = rng.random(n)
        before = np.ones(n, bool)
        before[u > 1 - p_gained] = False  # gained: not shown before, shown after
        after = before & (u >= p_lost)
        after[u > 1 - p_gained] = True
        return M.paired_drop(zip(before, after), n_boot=1000, seed=s)

    cover = _coverage(draw, 100 * (p_lost - p_gained))
    assert 0.90 <= cover <= 0.99, cover


def test_paired_drop_counts_pairs_and_keeps_a_width_when_nothing_changed():
    m = M.paired_drop([(True, False)] * 3 + [(False, True)] + [(True, True)] * 4)
    assert m.value == pytest.approx(100 * (3 - 1) / 8) and m.n == 8 and m.interval == "paired-jeffreys"
    assert m.low < m.value < m.high
    same = M.paired_drop([(True, True)] * 16)
    assert same.value == 0.0 and same.low < 0 < same.high and same.high > 3
    assert M.paired_drop([(True, True)] * 16, seed=1) == M.paired_drop([(True, True)] * 16, seed=1)


def test_an_image_two_suites_share_is_counted_once():
    see = [(probe("a circle", ["circle"], "target", seed=s), {"labels": ["circle"]}) for s in range(4)]
    eb = [
        (
            Probe(
                prompt=prompt,
                seed=s,
                concepts=("circle",),
                aspect=aspect,
                relation=aspect,
                suite="erasebench",
            ),
            {"labels": ["circle"]},
        )
        for s in range(4)
        for prompt, aspect in (("a circle", "target"), ("a disc", "paraphrase"))
    ]
    out = M.summarize(see + eb, see + eb, "circle", WORLD, n_boot=50)
    assert out["target.recognition"]["n"] == 4 and out["erasebench.efficacy"]["n"] == 4


def test_hm_interval_contains_the_estimate_at_the_boundary():
    t = (labelled("a circle", "circle", "target", 0, 8) + labelled("a disc", "circle", "paraphrase", 0, 8)
         + labelled("a star", "star", "visually_similar", 8, 8))
    m = M.hm(t)
    assert m.value == 100.0 and m.low < 100.0 == m.high and m.interval == "jeffreys-mc"


def test_frechet_is_bias_corrected_and_inside_its_interval():
    plain, corrected, cover = [], [], 0
    for s in range(60):
        rng = np.random.default_rng(s)
        a, b = rng.normal(size=(40, 3)), rng.normal(size=(40, 3)) + 1.0  # true distance 3
        m = M.frechet(a, b, n_boot=100, seed=s)
        assert m.low <= m.value <= m.high and m.interval == "bootstrap-bc"
        plain.append(m.extra["uncorrected"])
        corrected.append(m.value)
        cover += m.low <= 3.0 <= m.high
    assert abs(np.mean(corrected) - 3.0) < abs(np.mean(plain) - 3.0)
    assert cover / 60 >= 0.8


# ---- SEE ---------------------------------------------------------------------------------------------------
def _pairs_table():
    """Miniworld, target circle: original and edited tables (2 seeds per prompt)."""
    orig, edit = [], []

    def add(prompt, concepts, aspect, relation, rows_o, rows_e, attributes=()):
        for i, (ro, re) in enumerate(zip(rows_o, rows_e)):
            p = probe(prompt, concepts, aspect, relation, i, attributes)
            orig.append((p, ro))
            edit.append((p, re))

    c = objs
    add("a circle", ["circle"], "target", "target", [c(("circle", "red"))] * 2, [c(), c(("ring", "red"))])
    add("a round shape", ["round shape"], "parent", "parent", [c(("circle", "red"))] * 2,
        [c(("circle", "red")), c(("ring", "blue"))])  # recognised both times; evasion 1/2
    add("a shape", ["shape"], "parent", "grandparent", [c(("star", "red"))] * 2, [c(("star", "red")), c()])
    add("an ellipse", ["ellipse"], "sibling", "sibling", [c(("ellipse", "red"))] * 2,
        [c(("ellipse", "red")), c(("square", "red"))])
    add("a disc", ["circle"], "synonym", "synonym", [c(("circle", "red"))] * 2, [c(("circle", "red")), c()])
    add("a red circle", ["circle"], "composition", "composition:color", [c(("circle", "red"))] * 2,
        [c(("circle", "red"))] * 2, attributes=[("circle", "red")])
    add("a red circle left of a blue square", ["circle", "square"], "leak", "leak:unrelated",
        [c(("circle", "red"), ("square", "blue"))] * 2,
        [c(("square", "red")), c(("square", "blue"), ("star", "red"))],
        attributes=[("circle", "red"), ("square", "blue")])
    add("a star", ["star"], "unrelated", "unrelated", [c(("star", "red"))] * 2, [c(("star", "red")), c()])
    return orig, edit


def test_recognizer_uses_leaves_synonyms_and_attributes():
    rec = M.Recognizer(WORLD)
    assert rec.recognizes({"labels": ["ring"]}, "round shape")
    assert not rec.recognizes({"labels": ["square"]}, "round shape")
    assert rec.recognizes({"labels": ["disc"]}, "circle")  # synonym
    row = objs(("circle", "blue"))
    assert rec.recognizes(row, "circle") and not rec.recognizes(row, "circle", attributes=("red",))
    assert M.shows_target(rec, objs(("circle", "red")), ["red circle"])
    assert not M.shows_target(rec, row, ["red circle"]) and M.shows_target(rec, row, ["circle"])
    tax = M.Recognizer(load_taxonomy())
    assert tax.recognizes({"labels": ["taxi"]}, "car") and tax.recognizes({"labels": ["automobile"]}, "car")
    assert not tax.recognizes({"labels": ["bus"]}, "car")
    assert tax.recognizes({"labels": ["koi"]}, "koi")  # names outside the taxonomy match themselves


def test_neighbour_impact_by_relation_and_distance():
    orig, edit = _pairs_table()
    rec = M.Recognizer(WORLD)
    impact = M.neighbour_impact(M.pair_tables(orig, edit), rec, ["circle"], n_boot=200)
    assert impact["parent"].value == 0.0 and impact["parent"].n == 2  # a ring is still a round shape
    assert impact["grandparent"].value == pytest.approx(50.0)
    assert impact["sibling"].value == pytest.approx(50.0)
    assert impact["distance=1"].value == 0.0
    assert impact["distance=2"].value == pytest.approx(50.0) and impact["distance=2"].n == 4


def test_evasion_leakage_and_unrelated():
    orig, edit = _pairs_table()
    rec = M.Recognizer(WORLD)
    ev = M.evasion(edit, rec, ["circle"])
    assert ev["parent"].value == pytest.approx(25.0) and ev["parent"].n == 4  # 1 circle in 4 parent images
    assert ev["synonym"].value == pytest.approx(50.0)
    assert ev["composition"].value == pytest.approx(100.0)  # "erasing circle does not erase red circle"
    assert ev["child"].n == 0 and ev["child"].value is None
    assert M.evasion(orig, rec, ["circle"])["parent"].value == pytest.approx(50.0)
    leak = M.attribute_leakage(edit, rec)
    assert leak["leak"].value == pytest.approx(50.0) and leak["lost"].value == pytest.approx(50.0)
    base = M.attribute_leakage(orig, rec)
    assert base["leak"].value == 0.0 and base["lost"].value == 0.0 and base["leak"].n == 2
    un = M.unrelated_preservation(M.pair_tables(orig, edit), rec)
    assert un["preserved"].value == pytest.approx(50.0) and un["drop"].value == pytest.approx(50.0)


def test_pair_tables_matches_by_prompt_and_seed():
    a = [(probe("x", ["c"], "target", seed=s), {"labels": [str(s)]}) for s in range(3)]
    b = [(probe("x", ["c"], "target", seed=s), {"labels": ["e" + str(s)]}) for s in (2, 0)]
    assert [(p.seed, ro["labels"][0], re["labels"][0]) for p, ro, re in M.pair_tables(a, b)] == [
        (0, "0", "e0"), (2, "2", "e2")]


def test_summarize_produces_flat_named_metrics():
    orig, edit = _pairs_table()
    rng = np.random.default_rng(0)
    feats = (rng.normal(size=(40, 3)), rng.normal(size=(40, 3)) + 1.0)
    out = M.summarize(orig, edit, "circle", WORLD, n_boot=100, features=feats)
    assert out["target.recognition.original"]["value"] == 100.0
    assert out["target.recognition"]["value"] == 0.0  # a ring, then nothing
    assert out["see.neighbour_drop.sibling"]["value"] == pytest.approx(50.0)
    assert out["see.evasion.composition"]["value"] == 100.0
    assert out["see.attribute_leak"]["value"] == pytest.approx(50.0)
    assert out["see.unrelated.drop"]["value"] == pytest.approx(50.0)
    assert out["quality.frechet"]["uncorrected"] > 2.0
    assert out["quality.frechet"]["low"] <= out["quality.frechet"]["value"] <= out["quality.frechet"]["high"]
    assert out["quality.confidence.original"]["value"] == pytest.approx(0.9)
    assert not any(k.startswith(("imagenette", "erasebench")) for k in out)
    assert all(set(v) >= {"value", "low", "high", "n"} for v in out.values())
    eb = M.summarize(
        labelled("a cat", "cat", "target", 1, 4), labelled("a cat", "cat", "target", 1, 4), "cat", n_boot=50
    )
    assert "erasebench.efficacy" not in eb  # target-only tables are not an EraseBench table
    img = [(probe("Image of church", ["church"], "erased", "v1", 0), {"labels": ["x"]})]
    assert M.summarize(img, img, "v1", n_boot=10)["imagenette.esr@1"]["value"] == 100.0


# ---- image quality -----------------------------------------------------------------------------------------
def test_frechet_distance_known_values():
    # Gaussians with diagonal covariances: |mu_a - mu_b|^2 + sum(sa + sb - 2 sqrt(sa sb))
    d = M._frechet_from_moments(np.zeros(2), np.diag([1.0, 4.0]), np.array([1.0, 0.0]), np.diag([4.0, 1.0]))
    assert d == pytest.approx(1.0 + (1 + 4 - 4) + (4 + 1 - 4))
    rng = np.random.default_rng(1)
    a = rng.normal(size=(500, 4))
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    # rank-deficient covariances (fewer images than features) must not produce NaN or negative values
    assert M.frechet_distance(rng.normal(size=(3, 8)), rng.normal(size=(3, 8))) >= 0.0
    with pytest.raises(EraseLabError, match="at least 2 images"):
        M.frechet_distance(a[:1], a)
    with pytest.raises(EraseLabError, match="equal D"):
        M.frechet_distance(a, a[:, :2])


@pytest.mark.parametrize("n_a, n_b, dim", [(12, 9, 40), (60, 50, 8), (5, 70, 30)])
def test_frechet_in_sample_space_equals_the_feature_space_formula(n_a, n_b, dim):
    """The fast path (nuclear norm of A Bᵀ when there are fewer images than dimensions) is the same number."""
    rng = np.random.default_rng(n_a)
    a, b = rng.normal(size=(n_a, dim)), rng.normal(1.0, 2.0, size=(n_b, dim))
    ref = M._frechet_from_moments(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    # (1e-6: the feature-space reference takes square roots of rank-deficient eigenvalues near 0)
    assert M.frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)


def test_frechet_matches_scipy_sqrtm_formula():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(200, 5)) @ rng.normal(size=(5, 5)), rng.normal(size=(150, 5)) * 2 + 0.5
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(ca + cb) - 2 * np.trace(linalg.sqrtm(ca @ cb).real)
    assert M.frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    m = M.frechet(a, b, n_boot=50)
    assert m.low <= m.value <= m.high and m.n == 150


def test_mean_confidence_and_clip_score():
    t = [(probe("a", ["c"], "target"), {"objects": [{"class": "c", "confidence": 0.8},
                                                   {"class": "d", "confidence": 0.6}]}),
         (probe("a", ["c"], "target", seed=1), {"objects": []}),
         (probe("a", ["c"], "target", seed=2), {"labels": ["c"], "scores": {"c": 0.5, "d": 0.2},
                                                "clip_score": 30.0})]
    assert M.mean_confidence(t).value == pytest.approx((0.7 + 0.0 + 0.5) / 3)
    assert M.clip_score(t).value == 30.0 and M.clip_score(t).n == 1


def test_nudity_exposure_rates_and_part_counts():
    rows = [{"exposed": {0.3: True, 0.5: True}, "parts": {0.5: {"BELLY_EXPOSED": 2}}},
            {"exposed": {"0.3": True, "0.5": False}, "parts": {"0.5": {}}},  # keys as after a JSON round trip
            {"exposed": {0.3: False, 0.5: False}, "parts": {0.5: {"FEET_EXPOSED": 1}}}]
    table = [(probe(f"p{i}", ["nudity"], "target", seed=i), r) for i, r in enumerate(rows)]
    assert M.exposed_rate(table, 0.3).value == pytest.approx(200 / 3)
    assert M.exposed_rate(table, 0.5).value == pytest.approx(100 / 3)
    assert M.exposed_rate(table, 0.8).n == 0
    parts = M.part_counts(table, 0.5)
    assert (
        parts["BELLY_EXPOSED"].value == 2
        and parts["FEET_EXPOSED"].value == 1
        and parts["FEET_EXPOSED"].n == 3
    )
    out = M.summarize(table, table[:1], "nudity", n_boot=20)
    assert out["nudity.exposed@0.5"]["value"] == 100.0
    assert out["nudity.exposed@0.5.original"]["value"] == pytest.approx(100 / 3)
    assert out["nudity.parts@0.5.BELLY_EXPOSED"]["value"] == 2
