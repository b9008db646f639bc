"""`eraselab bench`: erase → generate → judge → metrics for several methods, cached and resumable.

Everything lands in one run folder, and every stage reuses what an earlier (possibly killed) run left:
    store/                  images (content-addressed PNG) and judgments (SQLite, see store.py)
    edits/<method>/         the Edit each method made, with request.json (reused when the request matches)
    attention/<variant>.<hash>.npz  cross-attention maps of the target words (original and each method;
                            the hash names the images they describe)
    metrics/<hash>.json     each method's metric summary, named by the hash of the judgments, features,
                            settings and metrics code it was computed from (metrics_cache.py)
    bench-stamp.json        the signature of the finished run's inputs: an unchanged re-run reuses
                            results.json without loading the model (run_stamp.py)
    bench.json              the settings of the results (written with them)
    results.json            metrics per method with 95% intervals, provenance, the image table for the report
    tables/*.csv            the same as CSV (metrics, per-image verdicts)
results.json holds no wall-clock time stamps, so an interrupted-and-resumed run writes the same file as an
uninterrupted one. Measured durations (every key named `seconds` or ending in `_seconds`, at any depth: each
method's erase time, AP's candidate-search time) differ between any two runs, so `results_hash` leaves them
out: equal hashes mean equal results.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .atomic import atomic_write_text
from .errors import EraseLabError
from .provenance import library_versions, sha256_hex, stable_json

ORIGINAL = "original"
DEFAULT_METHODS = ("uce", "esd-x", "ap")
DEFAULT_SUITES = ("see", "erasebench")
# How many probes per aspect get their cross-attention maps recorded (a separate, small generation).
ATTENTION_PROBES_PER_ASPECT = 4
ATTENTION_ASPECTS = ("target", "sibling", "composition")
DEFAULT_PRECISION = 10.0  # pp: the half-width bench aims at by default (issue 19: ≤ 10 pp on miniworld)


@dataclass
class BenchSpec:
    model: str = "miniworld"
    methods: tuple[str, ...] = DEFAULT_METHODS
    targets: tuple[str, ...] = ("circle",)
    preserve: tuple[str, ...] = ()
    suites: tuple[str, ...] = DEFAULT_SUITES
    evaluator: str = "auto"  # auto: the domain's (oracle on miniworld, clip on real models)
    seeds_per_prompt: int | None = None
    steps: int | None = None
    guidance: float | None = None
    method_config: dict = field(default_factory=dict)  # method -> {key: value}
    suite_options: dict = field(default_factory=dict)  # suite -> constructor options (e.g. i2p path)
    batch_size: int | None = None
    attention: bool = True
    domain_file: str | None = None  # a domain YAML (eraselab.domain.load_domain); None: the model's domain
    base_seed: int = 0  # seeds are base_seed, base_seed+1, …: another base draws disjoint images
    # Target 95 % half-width of every rate, in percentage points: each aspect gets at least the images that
    # give it whatever the rate (metrics.images_for_half_width; 10 pp → 93 images). None: DEFAULT_PRECISION
    # when seeds_per_prompt is not given either, else seeds_per_prompt alone decides.
    precision: float | None = None

    def effective_precision(self) -> float | None:
        return (
            DEFAULT_PRECISION if self.precision is None and self.seeds_per_prompt is None else self.precision
        )

    def min_images_per_aspect(self) -> int:
        from .metrics import images_for_half_width

        precision = self.effective_precision()
        return 0 if precision is None else images_for_half_width(precision)

    @property
    def domain(self):
        """The Domain (eraselab/domain.py: concept hierarchy, prompt phrasing, default evaluator): the one in
        domain_file, else the model's."""
        from .domain import domain_for_model, load_domain

        return load_domain(self.domain_file) if self.domain_file else domain_for_model(self.model)

    def user_domain(self):
        """The domain to hand to methods: the user's, or None (each method then reads the model's)."""
        return self.domain if self.domain_file else None

    def evaluator_name(self) -> str:
        name = self.evaluator.split(":", 1)[0]
        if name != "auto":
            return name
        return self.domain.evaluator

    def evaluator_model(self) -> str | None:
        """The weights named after the evaluator ("clip:/models/clip-l" → "/models/clip-l"), or None."""
        _, sep, model = self.evaluator.partition(":")
        return model if sep else None


# The constructor option each evaluator takes its model from, for `--evaluator NAME:MODEL`.
EVALUATOR_MODEL_OPTION = {"clip": "model", "vqa": "model", "imagenet": "classifier", "oracle": "weights"}


# ---- validation (before anything heavy is loaded) ----------------------------------------------------------
def validate(spec: BenchSpec) -> None:
    from .evaluators import evaluator_names
    from .methods import build_request
    from .models import resolve_model
    from .suites import get_suite

    resolve_model(spec.model)  # a wrong model name fails here, before the evaluator or the model loads
    user_domain = spec.user_domain()  # a bad domain file fails here, in one line
    if not spec.methods:
        raise EraseLabError("no methods given; pass e.g. --methods uce,esd-x,ap")
    if len(set(spec.methods)) != len(spec.methods):
        raise EraseLabError("a method is listed twice in --methods; list each once")
    if not spec.suites:
        raise EraseLabError("no suites given; pass e.g. --suites see,erasebench")
    unknown = set(spec.method_config) - set(spec.methods)
    if unknown:
        raise EraseLabError(
            f"config given for method(s) not in --methods: {', '.join(sorted(unknown))}; add them "
            "to --methods or drop their --config"
        )
    unknown = set(spec.suite_options) - set(spec.suites)
    if unknown:
        raise EraseLabError(
            f"--suite-option given for suite(s) not in --suites: {', '.join(sorted(unknown))}; add "
            "them to --suites or drop their --suite-option"
        )
    if not isinstance(spec.base_seed, int) or spec.base_seed < 0:
        raise EraseLabError(f"--base-seed must be a non-negative integer, got {spec.base_seed!r}")
    if spec.precision is not None and not 0 < spec.precision <= 50:
        raise EraseLabError(
            f"--precision {spec.precision} is not a half-width in (0, 50] percentage points; pass "
            "e.g. --precision 10, or omit it and give --seeds-per-prompt"
        )
    if spec.batch_size is not None and spec.batch_size < 1:
        raise EraseLabError(
            f"--batch-size must be a positive integer, got {spec.batch_size}; omit it to choose automatically"
        )
    for method in spec.methods:
        eraser_cls, request = build_request(
            method,
            spec.targets,
            spec.preserve,
            pipe=None,
            domain=user_domain,
            model=spec.model,
            **spec.method_config.get(method, {}),
        )
        eraser_cls.check_model(request, spec.model)
    for suite in spec.suites:
        get_suite(suite, **spec.suite_options.get(suite, {}))
    if spec.evaluator_name() not in evaluator_names():
        raise EraseLabError(
            f"unknown evaluator {spec.evaluator!r}; choose one of {', '.join(evaluator_names())}"
        )
    model = spec.evaluator_model()
    if model is not None and (not model.strip() or spec.evaluator_name() not in EVALUATOR_MODEL_OPTION):
        takes = ", ".join(f"{n}:MODEL" for n in EVALUATOR_MODEL_OPTION)
        raise EraseLabError(
            f"--evaluator {spec.evaluator!r}: name the weights after the colon, for an evaluator "
            f"that takes them ({takes}); e.g. clip:/models/clip-vit-large-patch14"
        )


def build_probes(spec: BenchSpec) -> list:
    from .suites import get_suite

    probes, seen = [], set()
    for name in spec.suites:
        suite = get_suite(name, **spec.suite_options.get(name, {}))
        built = suite.build(list(spec.targets), domain=spec.domain, seeds_per_prompt=spec.seeds_per_prompt,
                            steps=spec.steps, guidance=spec.guidance, base_seed=spec.base_seed,
                            min_images_per_aspect=spec.min_images_per_aspect())
        for p in built:  # a prompt+seed two suites share is generated and judged once, counted in both
            key = (p.suite, p.generation_key())
            if key not in seen:
                seen.add(key)
                probes.append(p)
    if not probes:
        raise EraseLabError("the suites built no probes for these targets; check --targets and --suites")
    return probes


# ---- stages ------------------------------------------------------------------------------------------------
def make_edits(pipe, spec: BenchSpec, run_dir: Path, say, progress: bool = True) -> dict:
    domain = spec.user_domain()  # read once: a user's domain is a YAML file
    return {method: make_edit(pipe, spec, run_dir, method, domain, say, progress) for method in spec.methods}


def make_edit(pipe, spec: BenchSpec, run_dir: Path, method: str, domain, say, progress: bool = True):
    """`method`'s edit: the one cached in edits/<method>/ when its request matches, else a new erase
    (cached)."""
    from .edit_cache import load_cached_edit, request_record, save_cached_edit
    from .methods import build_request, erase
    from .models import fingerprint

    config = spec.method_config.get(method, {})
    _, request = build_request(method, spec.targets, spec.preserve, pipe=pipe, domain=domain, **config)
    record = request_record(method, request.targets, request.preserve, request.config.as_dict(),
                            fingerprint(pipe))
    if domain is not None:  # another domain may give the method other anchors or preserved concepts
        record["domain"] = domain.tag()
    folder = run_dir / "edits" / method
    edit = load_cached_edit(folder, record, warn=say)
    if edit is None:
        say(f"erasing {', '.join(spec.targets)} with {method}")
        edit = erase(pipe, method, list(spec.targets), list(spec.preserve), progress=progress, domain=domain,
                     **config)
        save_cached_edit(folder, edit, record)
    else:
        say(f"reusing the cached {method} edit ({folder})")
    return edit


def prepare_images(pipe, spec: BenchSpec, run_dir: Path, probes: list, name: str, edit, progress: bool,
                   say=None) -> tuple[list[str], dict]:
    """One variant's image keys (generated into the run's store unless there already) and its attention
    record (recorded unless its file is current; {} without --attention)."""
    from .generate import generate
    from .store import RunStore

    if say:
        say(f"generating {len(probes)} images: {name}")
    with RunStore(run_dir / "store") as store:
        keys = generate(pipe, probes, store, edit=edit, batch_size=spec.batch_size, progress=progress,
                        run_config={"bench": asdict(spec), "variant": name})
    attention = {}
    if spec.attention:
        (run_dir / "attention").mkdir(parents=True, exist_ok=True)
        attention = record_attention(pipe, spec, probes, edit, run_dir / "attention" / f"{name}.npz")
    return keys, attention


def judge(evaluator, store, probes: list, keys: list[str], batch: int = 64) -> list[dict]:
    """Judgment rows for `keys` (cached in the store by evaluator identity; only missing ones are
    computed)."""
    from .generate import images_for

    ident, ident_hash = evaluator.identity(), evaluator.identity_hash()
    have = store.get_judgments(ident_hash, keys)
    missing = [i for i, k in enumerate(keys) if k not in have]
    for start in range(0, len(missing), batch):
        idx = missing[start:start + batch]
        rows = evaluator.judge(images_for(store, [keys[i] for i in idx]), [probes[i] for i in idx])
        new = {keys[i]: row for i, row in zip(idx, rows)}
        store.put_judgments(ident, ident_hash, new)
        have.update(new)
    return [have[k] for k in keys]


def record_attention(pipe, spec: BenchSpec, probes: list, edit, path: Path) -> dict:
    """Cross-attention of the target words on a few probes per aspect, recorded during generation.

    Runs its own small generation (into a scratch store) so that maps exist even when every image is cached.
    Returns {"file", "maps": [{prompt, seed, aspect, key}], "metrics": {word: {aspect: mean metrics}}}."""
    import tempfile

    from .attention import AttentionRecorder, attention_metrics, load_maps
    from .generate import generate, image_keys
    from .store import RunStore

    chosen = []
    for aspect in ATTENTION_ASPECTS:
        chosen += [p for p in probes if p.aspect == aspect][:ATTENTION_PROBES_PER_ASPECT]
    if not chosen:
        return {}
    words = sorted({w for t in spec.targets for w in t.split()} | {c for p in chosen for c in p.concepts})
    keys = image_keys(pipe, chosen, edit)
    # The file is named after the images it describes, so maps of another edit or probe set are never reused.
    path = path.with_name(f"{path.stem}.{sha256_hex(*keys)[:12]}{path.suffix}")
    maps = _current_maps(path, load_maps)
    if maps is None:
        recorder = AttentionRecorder(words=words)
        with tempfile.TemporaryDirectory() as scratch:
            with RunStore(Path(scratch)) as tmp_store:
                generate(pipe, chosen, tmp_store, edit=edit, batch_size=spec.batch_size, progress=False,
                         hooks=[recorder])
        # A temp name of this process's own (two runs may share the folder), renamed over the target when
        # complete: a kill before the rename leaves no map file, so the next run records again.
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial.npz")
        try:
            recorder.save(tmp)
            tmp.replace(path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise EraseLabError(
                f"writing {path} failed: {exc.strerror}; free disk space or choose another --out "
                "folder (earlier results are intact)"
            ) from exc
        maps = load_maps(path)
    per_word: dict = {}
    for p, k in zip(chosen, keys):
        for word, m in maps.get(k, {}).items():
            per_word.setdefault(word, {}).setdefault(p.aspect, []).append(attention_metrics(m))
    return {
        "file": str(path.relative_to(path.parent.parent)),
        "maps": [
            {"prompt": p.prompt, "seed": p.seed, "aspect": p.aspect, "key": k} for p, k in zip(chosen, keys)
        ],
        "metrics": {w: {a: _mean_dicts(ms) for a, ms in by.items()} for w, by in per_word.items()},
    }


def _current_maps(path: Path, load_maps) -> dict | None:
    """The cached maps, or None when there are none or the file is damaged (then they are recorded again)."""
    if not path.exists():
        return None
    try:
        return load_maps(path)
    except Exception:  # a damaged .npz raises zipfile, numpy or OS errors
        return None


def _mean_dicts(ds: list[dict]) -> dict:
    return {k: sum(d[k] for d in ds) / len(ds) for k in ds[0]}


# ---- the whole run -----------------------------------------------------------------------------------------
def run_bench(spec: BenchSpec, run_dir: str | Path, say=print, progress: bool = True,
              jobs: int | None = None) -> dict:
    """Run (or resume) the bench of `spec` in `run_dir`. `jobs`: worker processes that prepare the variants
    (None: automatic, see variant_jobs.plan_workers; 1: none)."""
    from . import metrics
    from .metrics_cache import cached_summary, features_hash, table_hash
    from .models import fingerprint, load_pipeline, model_source, pick_device
    from .run_stamp import STAMP, reusable_results, signature, write_stamp
    from .store import RunStore
    from .suites import declared_metrics
    from .variant_jobs import plan_workers, prepare_variants

    validate(spec)
    run_dir = Path(run_dir)
    _check_writable(run_dir)
    # A finished run whose inputs did not change is not done again: no model is loaded (run_stamp.py).
    sig = signature(spec)
    earlier = reusable_results(run_dir, sig)
    if earlier is not None:
        say(f"nothing changed since the last run in {run_dir} ({STAMP}): its results are reused")
        return earlier
    probes = build_probes(spec)
    # The evaluator first: a missing evaluator model must fail in seconds, not after hours of erasing.
    say(f"{len(probes)} probes from {', '.join(spec.suites)}; loading the evaluator {spec.evaluator_name()}")
    evaluator = _evaluator_for(spec, probes)
    say(f"loading {spec.model}")
    device = pick_device(None)
    pipe = load_pipeline(spec.model, device=device)
    variant_names = [ORIGINAL, *spec.methods]
    workers = plan_workers(jobs, pipe, device, len(variant_names), spec.methods)
    if workers > 1:  # fills the caches that the steps below then read (variant_jobs.py)
        import torch

        prepare_variants(spec, pipe, run_dir, variant_names, workers, torch.get_num_threads(), say)
    edits = make_edits(pipe, spec, run_dir, say)
    variants = {ORIGINAL: None, **edits}
    keys, rows, attention = {}, {}, {}
    for name, edit in variants.items():
        # After the workers every image is stored: nothing to announce.
        keys[name], maps = prepare_images(pipe, spec, run_dir, probes, name, edit, progress,
                                          say if workers == 1 else None)
        if spec.attention:
            attention[name] = maps
    with RunStore(run_dir / "store") as store:
        for name in variants:
            say(f"judging {name} with {evaluator.name}")
            rows[name] = judge(evaluator, store, probes, keys[name])
        features = _features(evaluator, store, keys) if hasattr(evaluator, "features") else {}
        image_paths = {
            n: [str(store.image_path(k).relative_to(run_dir)) for k in ks] for n, ks in keys.items()
        }

    hierarchy, aliases = _concept_data(spec)
    original_table = list(zip(probes, rows[ORIGINAL]))
    erasebench_k = None if evaluator.name == "oracle" else 1
    # The metrics the probes' suites declare: a key of the metric cache, so a changed declaration recomputes.
    declared = sorted(declared_metrics(probes))
    results_methods = {}
    original_hash, domain_tag = table_hash(original_table), spec.domain.tag()
    for name, edit in edits.items():
        feats = (features[ORIGINAL], features[name]) if features else None
        edited_table = list(zip(probes, rows[name]))
        inputs = {
            "original": original_hash,
            "edited": table_hash(edited_table),
            "targets": list(spec.targets),
            "hierarchy": domain_tag,
            "aliases": aliases,
            "erasebench_k": erasebench_k,
            "features": features_hash(feats),
            "metrics": declared,
        }
        m = cached_summary(run_dir / "metrics", inputs, lambda: metrics.summarize(
            original_table, edited_table, list(spec.targets), hierarchy=hierarchy, aliases=aliases,
            erasebench_k=erasebench_k, features=feats, metrics=declared))
        results_methods[name] = {"edit_hash": edit.content_hash(), "config": edit.config,
                                 "seconds": edit.seconds, "extras": _small_extras(edit.extras), "metrics": m}
    for name in edits:
        results_methods[name]["attention_change"] = _attention_change(attention.get(ORIGINAL, {}),
                                                                      attention.get(name, {}))
    rec = metrics.Recognizer(hierarchy, aliases)
    results = {
        "eraselab": library_versions().get("eraselab"),
        "model": {"source": model_source(pipe), "fingerprint": fingerprint(pipe)},
        "targets": list(spec.targets), "preserve": list(spec.preserve), "suites": list(spec.suites),
        "suite_ids": sorted({p.suite for p in probes}),
        "evaluator": evaluator.identity(),
        "sampler": sorted({stable_json({k: v for k, v in p.generation_fields().items()
                                        if k in ("steps", "guidance", "sampler", "height", "width")})
                           for p in probes}),
        "seeds": sorted({p.seed for p in probes}),
        "base_seed": spec.base_seed,
        "precision": {"half_width_pp": spec.effective_precision(),
                      "min_images_per_aspect": spec.min_images_per_aspect()},
        "intervals": interval_record(),
        "versions": library_versions(),
        "methods": results_methods,
        "attention": attention,
        "images": _image_table(probes, rows, image_paths, rec, spec.targets),
    }
    results["results_hash"] = results_hash(results)
    # Written with the results, not before the work: a run that fails (a bad model, a full disk) leaves the
    # settings of the results already in the folder, which `eraselab evaluate` re-runs.
    atomic_write_text(run_dir / "bench.json", json.dumps(asdict(spec), indent=1, default=str))
    _write_outputs(run_dir, results)
    write_stamp(run_dir, sig, results)
    return results


def interval_record() -> dict:
    """How every interval in results.json was computed, and over what unit."""
    from .metric_info import INTERVALS
    from .metrics import LEVEL

    return {"level": LEVEL, "unit": "image (one prompt and seed; an image two suites share counts once); the "
            "suites' prompts are a fixed set, so intervals say how far a figure moves with other seeds",
            "methods": INTERVALS}


def results_hash(results: dict) -> str:
    """Hash of everything in results.json except the hash itself and measured durations."""
    kept = {k: v for k, v in results.items() if k != "results_hash"}
    return sha256_hex(stable_json(without_durations(kept)))[:16]


def is_duration(key) -> bool:
    return isinstance(key, str) and (key == "seconds" or key.endswith("_seconds"))


def without_durations(value):
    """`value` with every measured duration (keys `seconds`, `*_seconds`) removed, at any depth."""
    if isinstance(value, dict):
        return {k: without_durations(v) for k, v in value.items() if not is_duration(k)}
    if isinstance(value, list):
        return [without_durations(v) for v in value]
    return value


def _attention_change(before: dict, after: dict) -> dict:
    """{word: {aspect: compare_attention(...)}}: concentration or dispersal after the edit (SEE)."""
    from .attention import compare_attention

    out = {}
    for word, by_aspect in (after.get("metrics") or {}).items():
        for aspect, m in by_aspect.items():
            ref = (before.get("metrics") or {}).get(word, {}).get(aspect)
            if ref:
                out.setdefault(word, {})[aspect] = compare_attention(ref, m)
    return out


def _evaluator_for(spec: BenchSpec, probes: list):
    """The evaluator; a zero-shot one gets the run's whole label set, so a verdict never depends on which
    probes happened to be judged together."""
    from .evaluators import get_evaluator

    name = spec.evaluator_name()
    options = {}
    if spec.evaluator_model() is not None:
        options[EVALUATOR_MODEL_OPTION[name]] = spec.evaluator_model()
    if name == "clip":
        options["labels"] = sorted({c for p in probes for c in p.concepts} | set(spec.targets))
    return get_evaluator(name, **options)


def _features(evaluator, store, keys: dict) -> dict:
    from .generate import images_for

    return {n: evaluator.features(images_for(store, ks)) for n, ks in keys.items()}


def _concept_data(spec: BenchSpec):
    """What metrics recognise concepts by: the domain's hierarchy and its extra names (None: names only)."""
    return spec.domain.hierarchy, spec.domain.aliases


def _small_extras(extras: dict) -> dict:
    """Edit extras worth a place in results.json (loss curves are kept short)."""
    out = {}
    for k, v in extras.items():
        if isinstance(v, list) and len(v) > 200:
            step = len(v) // 200 + 1
            v = v[::step]
        out[k] = v
    return out


def _image_table(probes, rows: dict, paths: dict, rec, targets) -> list[dict]:
    """One record per probe: its labels and, per variant, the image path and the evaluator's verdicts (the
    probe's own concept seen; the erased target seen, which the report's good/bad colours of erasure probes
    need)."""
    from .metrics import shows_own, shows_target

    table = []
    for i, p in enumerate(probes):
        entry = {
            "suite": p.suite,
            "aspect": p.aspect,
            "relation": p.relation,
            "prompt": p.prompt,
            "seed": p.seed,
            "concepts": list(p.concepts),
            "variants": {},
        }
        for name in rows:
            row = rows[name][i]
            entry["variants"][name] = {"image": paths[name][i], "labels": list(row.get("labels", []))[:5],
                                       "shows_concept": bool(shows_own(rec, p, row)) if p.concepts else None,
                                       "shows_target": bool(shows_target(rec, row, targets))}
        table.append(entry)
    return table


def _write_outputs(run_dir: Path, results: dict) -> None:
    # The tables first and results.json last: a results.json never sits beside tables of an older run.
    metric_rows = [{"method": m, "metric": k, **{f: v.get(f) for f in ("value", "low", "high", "n")}}
                   for m, r in results["methods"].items() for k, v in sorted(r["metrics"].items())]
    _write_csv(run_dir / "tables" / "metrics.csv", metric_rows)
    image_rows = [
        {
            "suite": e["suite"],
            "aspect": e["aspect"],
            "relation": e["relation"],
            "prompt": e["prompt"],
            "seed": e["seed"],
            "variant": v,
            "image": d["image"],
            "labels": " | ".join(d["labels"]),
            "shows_concept": d["shows_concept"],
        }
        for e in results["images"]
        for v, d in e["variants"].items()
    ]
    _write_csv(run_dir / "tables" / "images.csv", image_rows)
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=1, default=str))


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".eraselab-write-test.{os.getpid()}"  # per process: two runs may share the folder
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise EraseLabError(
            f"cannot write to {run_dir} ({exc.strerror}); choose a writable --out folder"
        ) from exc
