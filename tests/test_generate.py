"""The generation engine: batch-independent pixels, cache hits without UNet calls, edits, guidance hooks,
samplers, damaged files, shards, the CLI and resuming after SIGKILL."""
import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from eraselab.edits import Edit, edit_from_changes, snapshot
from eraselab.errors import EraseLabError
from eraselab.generate import generate, image_keys, images_for, lanes
from eraselab.models import default_image_size
from eraselab.probes import Probe
from eraselab.store import RunStore

STEPS = 2


def _probes(n=8, steps=STEPS, guidance=None, negative_prompt=None, sampler="ddim"):
    """n distinct probes mixing prompts, guidance scales (7.5, 3, 1) and negative prompts."""
    words = ("cat", "dog", "red car", "blue house", "tree")
    return [Probe(f"a photo of a {words[i % len(words)]}", seed=100 + i, steps=steps, sampler=sampler,
                  guidance=guidance if guidance is not None else (7.5, 3.0, 1.0)[i % 3],
                  negative_prompt=negative_prompt if negative_prompt is not None else ("blurry" if i % 4 == 1
                                                                                       else ""))
            for i in range(n)]


def _pngs(store, keys):
    return [store.image_path(k).read_bytes() for k in keys]


class _CountUnet:
    """Counts UNet forward calls (and their rows) by wrapping the module's forward."""

    def __init__(self, pipe):
        self.calls, self.rows = 0, []
        self.pipe, self.original = pipe, pipe.unet.forward

        def counting(sample, *a, **k):
            self.calls += 1
            self.rows.append(sample.shape[0])
            return self.original(sample, *a, **k)

        pipe.unet.forward = counting

    def restore(self):
        self.pipe.unet.forward = self.original



@pytest.fixture(scope="module")
def pipe():
    from eraselab.models import tiny_random_pipeline

    return tiny_random_pipeline(0)


@pytest.fixture(scope="module")
def unet_lane(pipe):
    return lanes(pipe, 16, 16).unet


def test_pixels_do_not_depend_on_batch_size_or_batch_company(pipe, tmp_path):
    probes = _probes(8)
    runs = {}
    for bs in (1, 3, 8):
        store = RunStore(tmp_path / f"bs{bs}")
        keys = generate(pipe, probes, store, batch_size=bs, progress=False)
        runs[bs] = _pngs(store, keys)
    assert runs[1] == runs[3] == runs[8]
    # Different neighbours and order: probe 5 alone, and probes 5..7 reversed with two new probes mixed in.
    store = RunStore(tmp_path / "mixed")
    others = [Probe("an astronaut", seed=7, steps=STEPS), Probe("a boat", seed=9, steps=STEPS, guidance=12.0)]
    mixed = [probes[7], others[0], probes[6], others[1], probes[5]]
    keys = generate(pipe, mixed, store, batch_size=4, progress=False)
    assert [runs[1][7], runs[1][6], runs[1][5]] == [_pngs(store, keys)[i] for i in (0, 2, 4)]
    # Distinct probes give distinct images (the comparison above is not vacuous).
    assert len(set(runs[1])) == len(probes)


def test_stochastic_sampler_pixels_do_not_depend_on_batch(pipe, tmp_path):
    probes = _probes(5, sampler="euler_a", guidance=7.5)
    a = RunStore(tmp_path / "a")
    b = RunStore(tmp_path / "b")
    ka = generate(pipe, probes, a, batch_size=1, progress=False)
    kb = generate(pipe, probes, b, batch_size=5, progress=False)
    assert _pngs(a, ka) == _pngs(b, kb)


@pytest.mark.parametrize("sampler", ["ddim", "pndm", "euler", "euler_a", "dpm++", "ddpm", "lms"])
def test_every_sampler_matches_the_diffusers_pipeline(pipe, tmp_path, sampler):
    """Same latents, steps and CFG arithmetic as pipe(...); only the network-call batch shape differs, which
    may move a channel value by one level on a few pixels."""
    from eraselab.samplers import make_scheduler

    probe = Probe("a photo of a cat", seed=5, steps=3, sampler=sampler, negative_prompt="dark")
    store = RunStore(tmp_path)
    ours = np.asarray(images_for(store, generate(pipe, [probe], store, progress=False))[0]).astype(int)
    original = pipe.scheduler
    try:
        pipe.scheduler = make_scheduler(pipe, sampler)
        ref = pipe(probe.prompt, negative_prompt="dark", num_inference_steps=3, guidance_scale=7.5,
                   generator=torch.Generator("cpu").manual_seed(5)).images[0]
    finally:
        pipe.scheduler = original
    ref = np.asarray(ref).astype(int)
    assert ours.shape == ref.shape and np.abs(ours - ref).max() <= 2
    assert (ours != ref).mean() < 0.02


def test_second_run_is_a_cache_hit_without_unet_calls(pipe, tmp_path, unet_lane):
    probes = _probes(6)
    store = RunStore(tmp_path)
    counter = _CountUnet(pipe)
    try:
        first = generate(pipe, probes, store, batch_size=4, progress=False)
        assert counter.calls > 0 and set(counter.rows) == {unet_lane}  # every call has the fixed lane shape
        counter.calls = 0
        second = generate(pipe, probes + probes[:2], store, batch_size=4, progress=False)
        assert counter.calls == 0
    finally:
        counter.restore()
    assert second == first + first[:2]
    assert store.image_count() == len(set(first)) == 6
    assert image_keys(pipe, probes) == first


def test_one_unet_call_per_step_for_a_batch_that_fits_a_lane(pipe, tmp_path, unet_lane):
    counter = _CountUnet(pipe)
    try:
        generate(pipe, _probes(unet_lane // 2, guidance=7.5), RunStore(tmp_path), batch_size=unet_lane // 2,
                 progress=False)
    finally:
        counter.restore()
    assert counter.calls == STEPS  # lane/2 probes × (uncond + cond) = one full lane per step


def test_lanes_depend_on_image_size_only(pipe):
    from eraselab.generate import Lanes

    assert lanes(pipe, 16, 16) == Lanes(unet=64, text=8, vae=16)  # 8×8 latents: small, so many rows per call
    assert lanes(pipe, 256, 256).unet == 4 and lanes(pipe, 256, 256).vae == 4
    big = lanes(pipe, 1024, 1024)
    assert big.unet == 4 and big.vae == 1


def test_damaged_png_is_reported_and_regenerated(pipe, tmp_path, capsys):
    probes = _probes(3)
    store = RunStore(tmp_path)
    keys = generate(pipe, probes, store, progress=False)
    good = store.image_path(keys[1]).read_bytes()
    store.image_path(keys[1]).write_bytes(good[: len(good) // 2])
    store.image_path(keys[2]).unlink()
    counter = _CountUnet(pipe)
    try:
        assert generate(pipe, probes, store, progress=False) == keys
    finally:
        counter.restore()
    assert counter.calls > 0 and "failed their sha256 check" in capsys.readouterr().err
    assert store.image_path(keys[1]).read_bytes() == good and all(store.verify_image(k) for k in keys)
    assert store.image_count() == 3


def _edit(pipe, delta=0.3):
    param = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_v.weight
    before = snapshot(pipe)
    with torch.no_grad():
        param.add_(delta)
    edit = edit_from_changes(pipe, before, "test", targets=["cat"])
    with torch.no_grad():
        # the exact original back (subtracting delta rounds: another model, another fingerprint)
        param.copy_(before["unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_v.weight"])
    return edit, param


def test_edit_changes_pixels_and_is_reverted_even_on_error(tmp_path):
    from eraselab.models import tiny_random_pipeline

    pipe = tiny_random_pipeline(0)
    edit, param = _edit(pipe)
    original = param.detach().clone()
    probes = _probes(3)
    store = RunStore(tmp_path)
    plain = generate(pipe, probes, store, progress=False)
    edited = generate(pipe, probes, store, edit=edit, progress=False)
    assert set(plain).isdisjoint(edited)
    assert all(a != b for a, b in zip(_pngs(store, plain), _pngs(store, edited)))
    assert torch.equal(param, original)
    assert store.image_record(edited[0])["edit_hash"] == edit.content_hash()

    class Boom:
        def on_batch_start(self, pipe_, probes_):
            assert not torch.equal(param, original)  # the edit is in place while generating
            raise RuntimeError("hook failed")

    # An edit applied by the caller is recognised (same keys as passing it) and left in place.
    edit.apply(pipe)
    try:
        assert generate(pipe, probes, store, progress=False) == edited
        assert not torch.equal(param, original)
    finally:
        edit.revert(pipe)

    with pytest.raises(RuntimeError, match="hook failed"):
        generate(
            pipe, _probes(2, steps=3), RunStore(tmp_path / "b"), edit=edit, progress=False, hooks=[Boom()]
        )
    assert torch.equal(param, original)


def test_negative_prompt_guidance_hook_changes_output(pipe, tmp_path):
    """An inference-time edit that puts 'cat' in the unconditional branch: the pixels change, and equal those
    of plain CFG with negative_prompt='cat' (the hook and the probe field are the same arithmetic)."""
    from eraselab.models import fingerprint

    edit = Edit(tensors={}, method="negative_prompt", base_fingerprint=fingerprint(pipe),
                generation={"kind": "negative_prompt", "negative_prompt": "cat"})
    probes = [Probe("a photo of a cat", seed=s, steps=STEPS) for s in range(3)]
    store = RunStore(tmp_path)
    plain = _pngs(store, generate(pipe, probes, store, progress=False))
    hooked = images_for(store, generate(pipe, probes, store, edit=edit, progress=False))
    explicit = images_for(
        store,
        generate(
            pipe,
            [Probe(p.prompt, seed=p.seed, steps=STEPS, negative_prompt="cat") for p in probes],
            store,
            progress=False,
        ),
    )
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(hooked, explicit))
    hooked_bytes = _pngs(store, image_keys(pipe, probes, edit=edit))
    assert all(a != b for a, b in zip(plain, hooked_bytes))


def test_negative_prompt_equal_to_the_prompt_is_unguided_conditional_sampling(pipe, tmp_path):
    """Why the negative prompt cannot erase a concept from its own prompt on a model whose conditional
    prediction already draws it: ε(neg) + g·(ε(c) − ε(neg)) with neg = c is ε(c), i.e. sampling at guidance 1
    — the same pixels, whatever g is (tests/test_methods_effect.py measures that rate on miniworld)."""
    import eraselab

    edit = eraselab.erase(pipe, "negprompt", ["a photo of a cat"], progress=False)
    store = RunStore(tmp_path)
    probes = [Probe("a photo of a cat", seed=s, steps=3, guidance=g) for s, g in ((0, 7.5), (1, 3.0))]
    negated = images_for(store, generate(pipe, probes, store, edit=edit, progress=False))
    unguided = images_for(store, generate(pipe, [Probe(p.prompt, seed=p.seed, steps=3, guidance=1.0)
                                                 for p in probes], store, progress=False))
    guided = images_for(store, generate(pipe, probes, store, progress=False))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(negated, unguided))
    assert not any(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(negated, guided))


def test_hooks_see_batches_and_the_row_layout_of_each_unet_call(pipe, tmp_path, unet_lane):
    events = []

    class Recorder:
        def on_batch_start(self, pipe_, probes):
            events.append(("start", len(probes)))

        def on_unet_call(self, step_index, timestep, rows):
            events.append(("call", step_index, len(rows), rows[:3], rows[-1]))

        def on_batch_end(self, probes, keys):
            events.append(("end", len(keys)))

    probes = [Probe("a cat", seed=1, steps=STEPS, guidance=1.0), Probe("a dog", seed=2, steps=STEPS)]
    generate(pipe, probes, RunStore(tmp_path), progress=False, hooks=[Recorder()])
    assert events[0] == ("start", 2) and events[-1] == ("end", 2)
    calls = [e for e in events if e[0] == "call"]
    assert [c[1] for c in calls] == list(range(STEPS))
    # guidance 1.0 under plain CFG: conditional branch only; then the CFG pair; then padding rows.
    assert calls[0][2] == unet_lane and calls[0][3] == [(0, "cond"), (1, "uncond"), (1, "cond")]
    assert calls[0][4] is None


def test_explicit_shards_split_the_work_and_give_the_same_pixels(pipe, tmp_path):
    probes = _probes(7)
    whole = RunStore(tmp_path / "whole")
    keys = generate(pipe, probes, whole, progress=False)
    shared = RunStore(tmp_path / "shared")
    made = []
    for index in (0, 1):
        generate(pipe, probes, shared, shard=(index, 2), progress=False)
        made.append({k for k in keys if shared.image_record(k)
                     and shared.image_record(k)["producer"]["shard"] == [index, 2]})
    assert made[0] and made[1] and made[0].isdisjoint(made[1]) and made[0] | made[1] == set(keys)
    assert _pngs(shared, keys) == _pngs(whole, keys)
    with pytest.raises(EraseLabError, match="shard 2 of 2"):
        generate(pipe, probes, shared, shard=(2, 2), progress=False)


def test_bad_arguments_give_one_line_errors(pipe, tmp_path):
    with pytest.raises(EraseLabError, match="batch size"):
        generate(pipe, _probes(1), RunStore(tmp_path), batch_size=0, progress=False)
    with pytest.raises(EraseLabError, match="Probe objects"):
        generate(pipe, ["a cat"], RunStore(tmp_path), progress=False)
    with pytest.raises(EraseLabError, match="not in the store"):
        images_for(RunStore(tmp_path), ["0" * 32])


def test_auto_batch_size_is_positive_and_fills_a_lane(pipe, unet_lane):
    from eraselab.generate import auto_batch_size

    n = auto_batch_size(pipe, Probe("a cat"), branches=2)
    assert n == unet_lane // 2  # one lane's worth: images are stored lane by lane, whatever the free memory
    assert auto_batch_size(pipe, Probe("a cat"), branches=3) == unet_lane // 3


def test_absurd_guidance_is_an_error_not_black_images(pipe, tmp_path):
    store = RunStore(tmp_path)
    with pytest.raises(EraseLabError, match="non-finite latents"):
        generate(pipe, [Probe("a cat", seed=0, steps=STEPS, guidance=1e30)], store, progress=False)
    assert store.image_count() == 0


# ---- command line ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_pipe(tmp_path_factory, pipe):
    folder = tmp_path_factory.mktemp("tiny_pipe")
    pipe.save_pretrained(str(folder))
    return folder


class _Result:
    def __init__(self, returncode, stderr):
        self.returncode, self.stderr = returncode, stderr


def _cli(*args, capsys):
    """Run the command line in this process (a subprocess would spend seconds importing torch each time)."""
    from eraselab.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    return _Result(code, capsys.readouterr().err)


def test_cli_writes_store_and_images_csv(saved_pipe, tmp_path, capsys):
    out = tmp_path / "out"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# a comment\na red car\n\na blue house\n", encoding="utf-8")
    r = _cli("generate", "--model", saved_pipe, "--prompts", prompts, "--prompt", "a cat", "--seeds", "0-1,5",
             "--steps", STEPS, "--negative", "blurry", "--out", out, "--no-progress", capsys=capsys)
    assert r.returncode == 0, r.stderr
    with open(out / "images.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r_["prompt"], r_["seed"]) for r_ in rows] == [
        (p, s) for p in ("a cat", "a red car", "a blue house") for s in ("0", "1", "5")
    ]
    store = RunStore(out)
    assert all((out / r_["image"]).is_file() and store.verify_image(r_["image_key"]) for r_ in rows)
    assert rows[0]["negative_prompt"] == "blurry" and store.image_count() == 9
    size = str(default_image_size(pipe_of(saved_pipe)))
    assert {(r_["height"], r_["width"]) for r_ in rows} == {(size, size)}  # the generated size, not 0


def pipe_of(folder):
    from eraselab.models import load_pipeline

    return load_pipeline(str(folder), device="cpu")


def test_a_second_generate_into_the_same_folder_keeps_the_first_rows(saved_pipe, tmp_path, capsys):
    out = tmp_path / "out"
    for prompt in ("a cat", "a dog"):
        r = _cli(
            "generate",
            "--model",
            saved_pipe,
            "--prompt",
            prompt,
            "--seeds",
            "0",
            "--steps",
            STEPS,
            "--out",
            out,
            "--no-progress",
            capsys=capsys,
        )
        assert r.returncode == 0, r.stderr
    with open(out / "images.csv", newline="", encoding="utf-8") as f:
        assert [r_["prompt"] for r_ in csv.DictReader(f)] == ["a cat", "a dog"]


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent/model"], "does not exist"),
    (["--sampler", "heun"], "unknown sampler"),
    (["--steps", "-3"], "steps must be a positive integer"),
    (["--seeds", "9-2"], "runs backwards"),
    (["--batch-size", "0"], "--batch-size must be a positive"),
])
def test_cli_bad_inputs_give_one_line_errors(saved_pipe, tmp_path, args, message, capsys):
    base = {"--model": str(saved_pipe)}
    argv = ["generate", "--prompt", "a cat", "--out", tmp_path / "o", "--steps", "2", "--no-progress"]
    model_given = "--model" in args
    r = _cli(*argv, *([] if model_given else ["--model", base["--model"]]), *args, capsys=capsys)
    assert r.returncode == 2 and message in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr


def test_cli_rejects_bad_prompt_files_and_corrupted_edits(saved_pipe, tmp_path, capsys):
    from eraselab.models import tiny_random_pipeline

    cases = {"empty.txt": b"\n  \n# only a comment\n", "binary.bin": b"\x89PNG\r\n\x1a\n\x00\x00\x00",
             "latin1.txt": "caf\xe9 au lait\n".encode("latin-1")}
    expected = {"empty.txt": "holds no prompts", "binary.bin": "is binary", "latin1.txt": "is not UTF-8"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        r = _cli("generate", "--model", saved_pipe, "--prompts", tmp_path / name, "--out", tmp_path / "o",
                 capsys=capsys)
        assert r.returncode == 2 and expected[name] in r.stderr and "Traceback" not in r.stderr
    edit, _ = _edit(tiny_random_pipeline(0))
    folder = edit.save(tmp_path / "edit")
    data = (folder / "edit.safetensors").read_bytes()
    (folder / "edit.safetensors").write_bytes(data[: len(data) // 2])
    r = _cli(
        "generate",
        "--model",
        saved_pipe,
        "--prompt",
        "a cat",
        "--edit",
        folder,
        "--out",
        tmp_path / "o",
        capsys=capsys,
    )
    assert r.returncode == 2 and "corrupted" in r.stderr and "Traceback" not in r.stderr


def test_cli_resumes_after_sigkill_with_nothing_lost_or_duplicated(saved_pipe, pipe, tmp_path):
    out = tmp_path / "out"
    seeds = range(12)
    argv = [sys.executable, "-m", "eraselab.cli", "generate", "--model", str(saved_pipe), "--prompt", "a cat",
            "--prompt", "a dog", "--seeds", f"0-{len(seeds) - 1}", "--steps", "3", "--batch-size", "1",
            "--out", str(out), "--no-progress"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if (out / "store.sqlite").exists():
            try:
                done = RunStore(out).image_count()
            except EraseLabError:
                done = 0
            if done >= 2:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                killed_at = done
                break
        time.sleep(0.02)
    assert killed_at is not None, "the run ended before it could be killed"
    store = RunStore(out)
    total = 2 * len(seeds)
    assert store.image_count() < total, "the kill came too late to test a resume"
    assert not (out / "images.csv").exists()
    r = subprocess.run(argv, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    db = store._db
    assert db.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM images").fetchone() == (total, total)
    run_ids = store.runs()
    assert len(run_ids) == 1 and store.run(run_ids[0])["finished"] is not None
    assert db.execute("SELECT COUNT(*) FROM run_images").fetchone()[0] == total
    with open(out / "images.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == total and all(store.verify_image(r_["image_key"]) for r_ in rows)
    # The resumed store equals an uninterrupted in-process run (same weights, saved and reloaded: same keys).
    probes = [Probe(p, seed=s, steps=3) for p in ("a cat", "a dog") for s in seeds]
    fresh = RunStore(tmp_path / "fresh")
    keys = generate(pipe, probes, fresh, progress=False)
    assert keys == [r_["image_key"] for r_ in rows]
    assert _pngs(fresh, keys) == _pngs(store, keys)


def test_fit_lanes_make_a_few_images_cheaper_and_are_keyed_apart(pipe, tmp_path, unet_lane):
    """Lane policy "fit": two images at CFG need 4 UNet rows, not a full lane; the lane is in the key, so
    fixed- and fit-lane images never mix, and "fit" is deterministic for the same request."""
    from eraselab.generate import Guidance, lane_plan

    probes = _probes(2)
    plan = lane_plan(pipe, probes, Guidance(), "fit")
    assert [lane.unet for lane in plan.values()] == [4] and unet_lane > 4
    calls = []
    real = pipe.unet.forward

    def counting(x, *args, **kwargs):
        calls.append(x.shape[0])
        return real(x, *args, **kwargs)

    pipe.unet.forward = counting
    try:
        fit = generate(pipe, probes, RunStore(tmp_path / "fit"), progress=False, lane_policy="fit")
        fit_again = generate(pipe, probes, RunStore(tmp_path / "fit2"), progress=False, lane_policy="fit")
    finally:
        del pipe.unet.forward
    assert set(calls) == {4} and fit == fit_again
    fixed = image_keys(pipe, probes)
    assert set(fixed).isdisjoint(fit) and fixed == generate(pipe, probes, RunStore(tmp_path / "fixed"),
                                                            progress=False)
    with pytest.raises(EraseLabError, match="lane policy"):
        generate(pipe, probes, RunStore(tmp_path / "x"), progress=False, lane_policy="tight")
