"""report.html as a reader sees it: intervals in every plot, one vocabulary, every image behind every number,
self-contained pages, clear errors for missing images, no NaN printed as a number (issue 15).

Hand-made results dicts for the units; a tiny bench (test_bench_report's model and stand-in evaluator, two
seeds per prompt) for the page as a whole."""
import json
import re
import shutil

import numpy as np
import pytest
from test_bench_report import _spec, tiny_model_dir  # noqa: F401  (a fixture, and the stand-in evaluator)

from eraselab.errors import EraseLabError
from eraselab.metric_info import describe
from eraselab.report import plots
from eraselab.report.headline import COLUMNS, format_cell, half_width, headline
from eraselab.report.html import _sampler, write_report
from eraselab.report.vocabulary import judged_shown, verdict


def _cell(value, low=None, high=None, n=8, **extra):
    return {"value": value, "low": low, "high": high, "n": n, **extra}


def _results(**metrics_by_method) -> dict:
    return {"targets": ["circle"], "methods": {m: {"metrics": ms, "seconds": 1.0} for m, ms in
                                               metrics_by_method.items()}, "images": []}


# ---- headline cells ----------------------------------------------------------------------------------------
def test_nan_and_none_are_never_printed_as_numbers():
    assert format_cell(_cell(float("nan"), 0.0, 50.0)) == "–"
    assert format_cell(None) == "–" and format_cell(_cell(None)) == "–"
    assert "nan" not in format_cell(_cell(10.0, float("nan"), 20.0))
    assert format_cell(_cell(10.0, 5.0, 20.0)) == "10.0 [5.0, 20.0]"


def test_half_width_comes_from_results_or_from_the_interval():
    assert half_width(_cell(50.0, 30.0, 80.0)) == 25.0
    assert half_width(_cell(50.0, 30.0, 80.0, half_width=7.5)) == 7.5
    assert half_width(_cell(50.0)) is None


def test_wide_intervals_are_unreadable_and_never_the_best_of_their_column():
    results = _results(a={"target.recognition": _cell(0.0, 0.0, 40.0)},  # best value, but ±20 pp
                       b={"target.recognition": _cell(10.0, 5.0, 15.0)},
                       c={"target.recognition": _cell(30.0, 25.0, 35.0)})
    h = headline(results)
    assert [r["unreadable"][0] for r in h["rows"]] == [True, False, False]
    assert [r["best"][0] for r in h["rows"]] == [False, True, False]


def test_columns_take_their_words_from_the_metric_declarations():
    for c in COLUMNS:
        info = describe(c.key)
        assert info is not None, f"{c.key} has no declaration in metric_info"
        assert (c.label, c.better, c.unit, c.definition) == (info.label, info.direction, info.unit,
                                                             info.definition)
    labels = [c.label for c in COLUMNS]
    assert len(labels) == len(set(labels))


def test_sampler_size_zero_reads_model_default():
    text = _sampler('{"guidance":7.5,"height":0,"sampler":"ddim","steps":25,"width":0}')
    assert "model default" in text and "height 0" not in text and "steps 25" in text
    assert "512 × 768 px" in _sampler({"height": 512, "width": 768, "steps": 2})


# ---- good / bad per aspect ---------------------------------------------------------------------------------
def test_image_verdict_follows_what_the_aspect_asks_for():
    assert verdict("synonym", False, True)[0] == "bad"  # the target came back through a synonym
    assert verdict("composition", False, False)[0] == "good"
    assert verdict("sibling", False, True)[0] == "good"  # a neighbour kept
    assert verdict("unrelated", False, False)[0] == "bad"
    assert verdict("target", True, True)[0] == "ref"  # the original model is a reference, not a method
    assert verdict("target", False, None)[0] == "none"


def test_erasure_probes_are_judged_on_the_target_not_their_own_concept():
    parent = {"aspect": "parent", "concepts": ["shape"]}
    assert judged_shown(parent, {"shows_concept": True, "shows_target": False}, ["circle"]) is False
    assert judged_shown(parent, {"shows_concept": True}, ["circle"]) is None  # an older run: no verdict
    target = {"aspect": "synonym", "concepts": ["circle"]}
    assert judged_shown(target, {"shows_concept": True}, ["circle"]) is True
    sibling = {"aspect": "sibling", "concepts": ["square"]}
    assert judged_shown(sibling, {"shows_concept": False, "shows_target": False}, ["circle"]) is False


# ---- plots -------------------------------------------------------------------------------------------------
@pytest.fixture
def figures(monkeypatch, tmp_path):
    """Runs a plot function and returns its matplotlib figure instead of saving it."""
    kept = []

    def keep(fig, plt, path):
        kept.append(fig)
        return path

    monkeypatch.setattr(plots, "_save", keep)
    return lambda fn, results: (fn(results, tmp_path / "x.png"), kept[-1])[1]


def _errorbar_spans(ax) -> list[float]:
    """Lengths of the error-bar segments drawn on an axis."""
    from matplotlib.collections import LineCollection

    spans = []
    for coll in ax.collections:
        if isinstance(coll, LineCollection):
            spans += [float(np.hypot(*(s[-1] - s[0]))) for s in coll.get_segments()]
    return spans


def _drops(*values) -> dict:
    return {f"see.neighbour_drop.distance={d}": _cell(v, v - 4, v + 6, 10) for d, v in values}


def test_distance_plot_has_intervals_integer_ticks_and_no_hidden_series(figures):
    results = _results(a=_drops((1, 20.0), (2, 5.0)), b=_drops((1, 20.0), (2, 5.0)))  # identical lines
    ax = figures(plots.distance_curve, results).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2"]
    assert sorted(round(s, 6) for s in _errorbar_spans(ax)) == [10.0] * 4
    series = [line for line in ax.get_lines() if line.get_marker() in plots.MARKERS]
    assert len(series) == 2 and len({line.get_marker() for line in series}) == 2
    assert tuple(series[0].get_xdata()) != tuple(series[1].get_xdata())  # side by side, not on top


def test_tradeoff_plot_has_intervals_on_both_axes(figures):
    metrics = {"target.recognition": _cell(10.0, 4.0, 22.0),
               "erasebench.sensitivity": _cell(90.0, 80.0, 95.0),
               "target.recognition.original": _cell(100.0, 90.0, 100.0),
               "erasebench.sensitivity.original": _cell(95.0, 85.0, 99.0)}
    ax = figures(plots.tradeoff, _results(a=metrics)).axes[0]
    spans = sorted(round(s, 6) for s in _errorbar_spans(ax))
    assert spans == sorted([18.0, 15.0, 10.0, 14.0])  # method x and y, original x and y


def test_aspect_plot_draws_the_rates_intervals_and_never_says_leak(figures):
    images = [{"aspect": aspect, "concepts": ["circle" if aspect != "sibling" else "square"],
               "prompt": f"p{i}", "seed": i,
               "variants": {"original": {"shows_concept": True, "shows_target": aspect != "sibling"},
                            "m": {"shows_concept": i % 2 == 0, "shows_target": i % 3 == 0}}}
              for aspect in ("target", "leak", "sibling") for i in range(6)]
    results = {"targets": ["circle"], "images": images, "methods": {}}
    ax = figures(plots.aspect_profile, results).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["target", "two-object", "sibling"]
    assert len([s for s in _errorbar_spans(ax) if s > 0]) >= 3
    rates = plots.aspect_rates(results)
    assert rates["target"]["m"]["value"] == pytest.approx(100 * 2 / 6)  # i % 3 == 0: shows the target
    assert rates["sibling"]["m"]["value"] == pytest.approx(50.0)


# ---- the page ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):  # noqa: F811
    from eraselab.bench import run_bench

    out = tmp_path_factory.mktemp("report_run")
    spec = _spec(tiny_model_dir, seeds_per_prompt=2, suites=("see",))
    run_bench(spec, out, say=lambda m: None, progress=False)
    return out


@pytest.fixture
def run_copy(run, tmp_path):
    """A copy of the run to damage."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def test_every_seed_of_every_prompt_is_in_the_page(run):
    html = write_report(run).read_text()
    results = json.loads((run / "results.json").read_text())
    images = {d["image"] for e in results["images"] for d in e["variants"].values()}
    shown = set(re.findall(r'<figure class="thumb [a-z]+"><img src="([^"]+)"', html))
    assert shown == images
    seeds = {}
    for e in results["images"]:
        seeds.setdefault(e["prompt"], set()).add(e["seed"])
    assert min(len(s) for s in seeds.values()) >= 2  # more than the first seed of each prompt


def test_grid_colours_mean_good_or_bad_for_the_method(run):
    html = write_report(run).read_text()
    results = json.loads((run / "results.json").read_text())
    expected = {}
    for e in results["images"]:
        d = e["variants"]["uce"]
        preserve = e["aspect"] in ("sibling", "unrelated")
        shown = d["shows_concept"] if preserve else d["shows_target"]
        good = shown if preserve else not shown
        expected[d["image"]] = "good" if good else "bad"
    found = {src: cls for cls, src in re.findall(r'<figure class="thumb ([a-z]+)"><img src="([^"]+)"', html)
             if src in expected}
    assert found == expected
    assert 'id="grid-legend"' in html and "good" in html.split('id="grid-legend"')[1][:800]


def test_glossary_tooltips_and_one_meaning_of_leak(run):
    from markupsafe import escape

    html = write_report(run).read_text()
    glossary = html.split('id="glossary"')[1].split("<h2>Images</h2>")[0]
    keys = re.findall(r'data-key="([^"]+)"', html)
    assert "target.recognition" in keys
    for key in keys:
        info = describe(key)
        assert str(escape(info.definition)) in glossary
        header = re.search(rf'<th title="([^"]+)" data-key="{re.escape(key)}"', html).group(1)
        assert str(escape(info.label)) in header and "is better" in header
    # "leak" is the attribute-leak metric's word only: the probe aspect of that name reads "two-object".
    without_code = re.sub(r"<code>.*?</code>|<script>.*?</script>", "", html, flags=re.DOTALL)
    visible = re.sub(r"<[^>]+>", " ", without_code)
    assert not re.search(r"\bleak\b", visible)
    assert "two-object" in visible


def test_missing_images_are_one_clear_error_and_no_page(run_copy):
    results = json.loads((run_copy / "results.json").read_text())
    gone = results["images"][3]["variants"]["uce"]["image"]
    (run_copy / gone).unlink()
    before = (run_copy / "report.html").read_bytes() if (run_copy / "report.html").exists() else None
    with pytest.raises(EraseLabError, match=r"missing \(first: .*\); run `eraselab evaluate --run") as err:
        write_report(run_copy)
    assert gone in str(err.value) and "\n" not in str(err.value)
    after = (run_copy / "report.html").read_bytes() if (run_copy / "report.html").exists() else None
    assert after == before  # no page written


def test_missing_images_exit_non_zero_from_the_command(run_copy, capfd):
    from eraselab.cli import main

    results = json.loads((run_copy / "results.json").read_text())
    (run_copy / results["images"][0]["variants"]["original"]["image"]).unlink()
    code = main(["report", "--run", str(run_copy)])
    err = capfd.readouterr().err
    assert code != 0 and len([line for line in err.splitlines() if line.strip()]) == 1 and "missing" in err


def test_nan_in_results_is_a_dash_with_a_tooltip(run_copy):
    results = json.loads((run_copy / "results.json").read_text())
    results["methods"]["uce"]["metrics"]["target.recognition"] = _cell(float("nan"), 0.0, 50.0)
    (run_copy / "results.json").write_text(json.dumps(results))  # json writes NaN, as a crashed metric would
    html = write_report(run_copy).read_text()
    head = html.split('id="headline"')[1].split("</table>")[0]
    assert not re.search(r"\bnan\b", head, re.IGNORECASE)
    assert 'title="no images behind this value">–<' in head


def test_self_contained_report_embeds_every_image(run_copy):
    html = write_report(run_copy, self_contained=True).read_text()
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    linked = re.findall(r'<img [^>]*src="([^"]+)"', write_report(run_copy).read_text())
    assert len(linked) == len(srcs) and all((run_copy / s).is_file() for s in linked)


def test_report_in_the_browser_shows_every_image_the_glossary_and_interval_plots(run_copy, tmp_path):
    """The self-contained page, moved away from its (then deleted) run folder: every plot and every seed's
    image still loads; the browser check also stores a screenshot."""
    from report_browser import check_in_browser

    results = json.loads((run_copy / "results.json").read_text())
    alone = tmp_path / "alone" / "report.html"
    alone.parent.mkdir()
    shutil.move(str(write_report(run_copy, self_contained=True)), alone)
    shutil.rmtree(run_copy)
    dom = check_in_browser(alone, tmp_path, methods=1)
    thumbs = dom.count('<figure class="thumb ')
    assert thumbs == len({(e["aspect"], e["prompt"], e["seed"], v) for e in results["images"]
                          for v in e["variants"]})
    loaded = int(re.search(r'data-images-loaded="(\d+)"', dom).group(1))
    assert loaded == thumbs + dom.count('<img class="plot"')


def test_an_unchanged_report_is_not_rebuilt(run_copy):
    page = write_report(run_copy)
    stamp_before, mtime = (run_copy / ".report-stamp.json").read_text(), page.stat().st_mtime_ns
    assert write_report(run_copy).stat().st_mtime_ns == mtime  # same results and code: kept
    assert write_report(run_copy, self_contained=True).stat().st_mtime_ns != mtime  # another kind of page
    mtime = page.stat().st_mtime_ns
    results = json.loads((run_copy / "results.json").read_text())
    results["targets"] = ["circle", "square"]
    (run_copy / "results.json").write_text(json.dumps(results))
    assert write_report(run_copy, self_contained=True).stat().st_mtime_ns != mtime  # other results: rebuilt
    for png in (run_copy / "report_assets").rglob("*.png"):
        png.unlink()
    write_report(run_copy, self_contained=True)  # a deleted plot: rebuilt, not a page with holes
    assert list((run_copy / "report_assets").rglob("*.png")) and stamp_before


def test_a_yaml_suite_relation_gets_metrics_and_a_row_in_the_report(tmp_path):
    """A relation no metric declares ("lookalike") is measured anyway: its recognition rate and drop."""
    from eraselab import metrics as M
    from eraselab.probes import Probe

    def table(shown):
        return [
            (
                Probe(
                    prompt=f"a van {i}", seed=i, concepts=("van",), aspect="lookalike", relation="lookalike"
                ),
                {"labels": ["van"] if shown(i) else []},
            )
            for i in range(8)
        ]

    out = M.summarize(table(lambda i: True), table(lambda i: i < 2), "car")
    assert out["aspect.lookalike.drop"]["value"] == pytest.approx(75.0)
    assert (
        out["aspect.lookalike.shown"]["value"] == 25.0
        and out["aspect.lookalike.shown.original"]["value"] == 100
    )
    results = {"methods": {"uce": {"metrics": out}}}
    from eraselab.report.html import _every_metric

    rows = {r["key"]: r for r in _every_metric(results)["rows"]}
    assert rows["aspect.lookalike.drop"]["label"] == "lookalike drop pp"
    assert rows["aspect.lookalike.drop"]["cells"][1]["text"] == "75.0"
    assert rows["aspect.lookalike.shown"]["cells"][0]["text"] == "100.0"  # the original model's value
