"""Bad input through the command line, table-driven: every case exits non-zero with exactly one stderr line,
`error: …`, that names the problem (a word of it is checked) and the fix (an imperative hint), prints no
traceback, and leaves the files already in the output folder untouched.

Most cases call `eraselab.cli.main(argv)` in-process (capturing file descriptors 1 and 2); a few run
`python -m eraselab.cli` as a real subprocess to check the fresh-process output too.
Placeholders in the argv strings: {out} a folder holding earlier results, {model} a tiny diffusers pipeline,
{ws} this case's scratch folder, {edit} a valid edit of {model}, {other_edit} an edit of another model.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from eraselab.cli import main

# The fix: an imperative ("pass …", "choose …") or the rule the value must meet ("must be …", "at most …").
FIX_HINT = re.compile(
    r"\b(pass|use|choose|write|give|add|fix|re-run|run|install|free|convert|check|save|remove|"
    r"list|omit|load|download|train|set|move|wait|drop|make|keep|rename|unset|see|shorten|"
    r"restore|must|needs?|e\.g\.|at most|at least)\b",
    re.I,
)
BENCH = "bench --model {model} --methods uce --target car --suites see --evaluator clip --out {out}"
GEN = "generate --model {model} --prompt a --steps 1 --out {out}"
ERASE = "erase --model {model} --method uce --target car --out {out}/edit"

YAML_OK = "name: s\nversion: 1\ntargets:\n  car:\n    sibling: [bus]\n"


# ---- how to make each broken input ------------------------------------------------------------------------
def write(rel: str, content: str | bytes):
    def make(ws: Path, assets: dict) -> None:
        path = ws / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        text = content
        if isinstance(text, str):
            for name, value in assets.items():
                text = text.replace("{" + name + "}", value)
        path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)

    return make


def model_copy(change=None):
    """A copy of the tiny pipeline at {ws}/m, changed by `change(folder)`."""

    def make(ws: Path, assets: dict) -> None:
        shutil.copytree(assets["model"], ws / "m")
        if change is not None:
            change(ws / "m")

    return make


def edit_copy(change=None, source: str = "edit"):
    """A copy of a valid edit at {ws}/e, changed by `change(folder)`."""

    def make(ws: Path, assets: dict) -> None:
        shutil.copytree(assets[source], ws / "e")
        if change is not None:
            change(ws / "e")

    return make


def json_edit(rel: str, fn):
    def change(folder: Path) -> None:
        path = folder / rel
        path.write_text(json.dumps(fn(json.loads(path.read_text()))))

    return change


def truncate(rel: str, keep: int = 100):
    def change(folder: Path) -> None:
        path = folder / rel
        path.write_bytes(path.read_bytes()[:keep])

    return change


def delete(rel: str):
    def change(folder: Path) -> None:
        path = folder / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return change


def retensor(fn, rehash: bool):
    """Change the edit's tensors with fn(dict) -> dict; rehash=True also records the new hash in edit.json
    (a well-formed edit whose content is wrong), False leaves the old one (tampering)."""

    def change(folder: Path) -> None:
        from safetensors.torch import load, save

        from eraselab.edits import Edit

        tensors = fn(dict(load((folder / "edit.safetensors").read_bytes())))
        (folder / "edit.safetensors").write_bytes(save(tensors))
        if rehash:
            meta = json.loads((folder / "edit.json").read_text())
            edit = Edit(
                tensors=tensors,
                method=meta["method"],
                base_fingerprint=meta["base_fingerprint"],
                generation=meta.get("generation", {}),
            )
            meta["edit_hash"] = edit.content_hash()
            meta["parameters"] = sorted(tensors)
            (folder / "edit.json").write_text(json.dumps(meta))

    return change


def first_tensor(value):
    def fn(tensors):
        name = sorted(tensors)[0]
        t = tensors[name].clone()
        t.view(-1)[0] = value
        tensors[name] = t
        return tensors

    return fn


def reshaped(tensors):
    name = sorted(tensors)[0]
    tensors[name] = tensors[name][:, :-1].contiguous()
    return tensors


def renamed(tensors):
    name = sorted(tensors)[0]
    tensors["unet.no_such_block.weight"] = tensors.pop(name)
    return tensors


def bench_run(bench_json) -> callable:
    """{ws}/run: a bench run folder holding `bench_json` (text) and an earlier results.json."""
    return write("run/bench.json", bench_json) if isinstance(bench_json, str) else bench_json


def yaml_case(text: str | bytes):
    return write("s.yaml", text)


# ---- the table: (id, argv, a word the error must contain, how to prepare) ----------------------------------
Y = BENCH.replace("--suites see", "--suites {ws}/s.yaml")
CASES = [
    # command line
    ("unknown-command", "nope", "no such command", None),
    ("unknown-option", "bench --nope", "no such option", None),
    ("steps-not-int", BENCH + " --steps abc", "--steps", None),
    ("steps-zero", BENCH + " --steps 0", "steps", None),
    ("steps-negative", BENCH + " --steps -3", "steps", None),
    ("steps-float", BENCH + " --steps 2.5", "--steps", None),
    ("seeds-per-prompt-zero", BENCH + " --seeds-per-prompt 0", "seeds_per_prompt", None),
    ("seeds-per-prompt-negative", BENCH + " --seeds-per-prompt -2", "seeds_per_prompt", None),
    ("seeds-per-prompt-text", BENCH + " --seeds-per-prompt many", "--seeds-per-prompt", None),
    ("precision-zero", BENCH + " --precision 0", "--precision", None),
    ("precision-too-wide", BENCH + " --precision 80", "--precision", None),
    ("precision-text", BENCH + " --precision fine", "--precision", None),
    ("jobs-zero", BENCH + " --jobs 0", "jobs", None),
    ("jobs-text", "demo --jobs many --out {out}", "jobs", None),
    ("base-seed-negative", BENCH + " --base-seed -1", "--base-seed", None),
    ("domain-missing", BENCH + " --domain {ws}/nope.yaml", "nope.yaml", None),
    ("guidance-negative", BENCH + " --guidance -1", "guidance", None),
    ("guidance-nan", BENCH + " --guidance nan", "guidance", None),
    ("guidance-inf", BENCH + " --guidance inf", "guidance", None),
    ("guidance-text", BENCH + " --guidance high", "--guidance", None),
    ("batch-size-zero", BENCH + " --batch-size 0", "batch", None),
    ("batch-size-negative", BENCH + " --batch-size -4", "batch", None),
    ("methods-empty", BENCH.replace("--methods uce", "--methods ''"), "no methods", None),
    ("methods-commas", BENCH.replace("--methods uce", "--methods ,,"), "no methods", None),
    ("methods-twice", BENCH.replace("--methods uce", "--methods uce,uce"), "twice", None),
    ("method-unknown", BENCH.replace("--methods uce", "--methods nope"), "unknown method", None),
    ("suites-empty", BENCH.replace("--suites see", "--suites ''"), "no suites", None),
    ("suite-unknown", BENCH.replace("--suites see", "--suites nope"), "unknown suite", None),
    ("evaluator-unknown", BENCH.replace("--evaluator clip", "--evaluator nope"), "unknown evaluator", None),
    ("model-empty", BENCH.replace("--model {model}", "--model ''"), "no model", None),
    ("model-missing-path", BENCH.replace("--model {model}", "--model {ws}/nothing"), "does not exist", None),
    ("out-is-a-file", BENCH.replace("--out {out}", "--out {out}/keep.txt"), "keep.txt", None),
    ("suite-option-unknown", BENCH + " --suite-option see.nope=1", "nope", None),
    ("suite-option-no-scope", BENCH + " --suite-option nope=1", "scope", None),
    ("suite-option-no-value", BENCH + " --suite-option see.nope", "key=value", None),
    ("suite-option-other-suite", BENCH + " --suite-option i2p.path=x.csv", "i2p", None),
    ("gen-no-prompts", "generate --model {model} --out {out}", "no prompts", None),
    ("gen-missing-out", "generate --model {model} --prompt a", "--out", None),
    ("gen-missing-model", "generate --prompt a --out {out}", "--model", None),
    ("gen-seeds-text", GEN + " --seeds abc", "seeds", None),
    ("gen-seeds-backwards", GEN + " --seeds 5-1", "backwards", None),
    ("gen-seeds-negative", GEN + " --seeds -1", "seeds", None),
    ("gen-seeds-empty", GEN + " --seeds ''", "no seeds", None),
    ("gen-seeds-huge", GEN + " --seeds 0-99999999999", "too many", None),
    ("gen-seeds-too-large", GEN + " --seeds 9223372036854775808", "too many or too large", None),
    ("gen-steps-zero", GEN.replace("--steps 1", "--steps 0"), "steps", None),
    ("gen-guidance-negative", GEN + " --guidance -2", "guidance", None),
    ("gen-guidance-nan", GEN + " --guidance nan", "guidance", None),
    ("gen-sampler-unknown", GEN + " --sampler nope", "sampler", None),
    ("gen-size-odd", GEN + " --size 7", "multiple", None),
    ("gen-size-negative", GEN + " --size -8", "size", None),
    ("gen-batch-zero", GEN + " --batch-size 0", "batch", None),
    ("gen-shard-out-of-range", GEN + " --shard 3/2", "shard", None),
    ("gen-shard-text", GEN + " --shard x", "shard", None),
    ("gen-shard-zero", GEN + " --shard 0/0", "shard", None),
    ("gen-prompt-empty", GEN.replace("--prompt a", "--prompt ''"), "empty prompt", None),
    ("gen-prompt-blank", GEN.replace("--prompt a", "--prompt '   '"), "empty prompt", None),
    ("gen-prompt-10mb", None, "characters", None),  # argv built in the test (a 10 MB argument)
    ("erase-missing-method", "erase --model {model} --target car --out {out}/e", "--method", None),
    ("erase-unknown-method", ERASE.replace("--method uce", "--method nope"), "unknown method", None),
    ("erase-no-target", "erase --model {model} --method uce --out {out}/e", "no target", None),
    ("erase-device-unknown", ERASE + " --device tpu9", "device", None),
    ("erase-out-holds-edit", ERASE.replace("{out}/edit", "{edit}"), "already holds an edit", None),
    ("erase-out-is-file", ERASE.replace("{out}/edit", "{out}/keep.txt"), "file", None),
    ("demo-unknown-method", "demo --methods nope --out {out}", "unknown method", None),
    ("demo-empty-target", "demo --target '' --out {out}", "empty", None),
    ("report-no-run-option", "report", "--run", None),
    # --config values
    ("config-float-text", BENCH + " --config uce.lam=abc", "float", None),
    ("config-unknown-key", BENCH + " --config uce.lamb=0.5", "unknown config key", None),
    ("config-no-scope", BENCH + " --config lam=0.5", "scope", None),
    ("config-no-equals", BENCH + " --config uce.lam", "key=value", None),
    ("config-no-key", BENCH + " --config =5", "key=value", None),
    (
        "config-int-float",
        BENCH.replace("--methods uce", "--methods esd-x") + " --config esd-x.iterations=2.5",
        "int",
        None,
    ),
    (
        "config-int-zero",
        BENCH.replace("--methods uce", "--methods esd-x") + " --config esd-x.iterations=0",
        "positive",
        None,
    ),
    (
        "config-lr-text",
        BENCH.replace("--methods uce", "--methods esd-x") + " --config esd-x.lr=fast",
        "float",
        None,
    ),
    (
        "config-lr-negative",
        BENCH.replace("--methods uce", "--methods esd-x") + " --config esd-x.lr=-1e-4",
        "lr",
        None,
    ),
    (
        "config-lr-nan",
        BENCH.replace("--methods uce", "--methods esd-x") + " --config esd-x.lr=nan",
        "lr",
        None,
    ),
    ("config-lam-nan", BENCH + " --config uce.lam=nan", "lam", None),
    ("config-lam-inf", BENCH + " --config uce.lam=inf", "lam", None),
    ("config-tokens-choice", BENCH + " --config uce.tokens=everything", "tokens must be one of", None),
    ("config-preset-choice", BENCH + " --config uce.preset=huge", "preset must be one of", None),
    ("config-bool-text", BENCH + " --config uce.check=maybe", "check", None),
    (
        "config-strength-choice",
        BENCH.replace("--methods uce", "--methods sld") + " --config sld.strength=extreme",
        "strength must be one of",
        None,
    ),
    ("config-method-not-run", BENCH + " --config esd-x.iterations=5", "not in --methods", None),
    (
        "config-mace-segmenter",
        BENCH.replace("--methods uce", "--methods mace") + " --config mace.segmenter=grounded-sam",
        "not supported yet",
        None,
    ),
    (
        "config-ap-negative",
        BENCH.replace("--methods uce", "--methods ap") + " --config ap.iterations=-5",
        "iterations",
        None,
    ),
    ("erase-config-text", ERASE + " --config lam=big", "float", None),
    ("erase-config-no-equals", ERASE + " --config lam", "key=value", None),
    ("erase-config-unknown", ERASE + " --config nope=1", "unknown config key", None),
    (
        "erase-config-int",
        ERASE.replace("--method uce", "--method esd-x") + " --config iterations=2.5",
        "int",
        None,
    ),
    # suite YAML files
    ("yaml-missing", Y, "not found", None),
    ("yaml-malformed", Y, "not valid yaml", yaml_case("name: [unclosed\nversion: 1\n")),
    ("yaml-list", Y, "mapping", yaml_case("- a\n- b\n")),
    ("yaml-scalar", Y, "mapping", yaml_case("just text\n")),
    ("yaml-empty", Y, "mapping", yaml_case("")),
    ("yaml-no-name", Y, "'name'", yaml_case("version: 1\ntargets:\n  car:\n    sibling: [bus]\n")),
    ("yaml-no-version", Y, "'version'", yaml_case("name: s\ntargets:\n  car:\n    sibling: [bus]\n")),
    ("yaml-no-targets", Y, "'targets'", yaml_case("name: s\nversion: 1\n")),
    ("yaml-targets-empty", Y, "targets", yaml_case("name: s\nversion: 1\ntargets: {}\n")),
    ("yaml-targets-list", Y, "targets", yaml_case("name: s\nversion: 1\ntargets: [car]\n")),
    (
        "yaml-relation-not-list",
        Y,
        "relation",
        yaml_case("name: s\nversion: 1\ntargets:\n  car:\n    sibling: bus\n"),
    ),
    ("yaml-template-no-np", Y, "{np}", yaml_case(YAML_OK + "templates: ['a photo']\n")),
    ("yaml-templates-empty", Y, "template", yaml_case(YAML_OK + "templates: []\n")),
    ("yaml-templates-string", Y, "template", yaml_case(YAML_OK + "templates: 'a photo of {np}'\n")),
    (
        "yaml-version-text",
        Y,
        "version",
        yaml_case("name: s\nversion: one\ntargets:\n  car:\n    sibling: [bus]\n"),
    ),
    ("yaml-prompt-no-text", Y, "prompt", yaml_case(YAML_OK + "prompts:\n  - target: car\n")),
    ("yaml-prompts-not-list", Y, "prompts", yaml_case(YAML_OK + "prompts: 5\n")),
    ("yaml-target-absent", Y.replace("--target car", "--target boat"), "not a target", yaml_case(YAML_OK)),
    ("yaml-binary", Y, "s.yaml", yaml_case(b"\x00\x01\x02\xff\xfe binary")),
    ("yaml-not-utf8", Y, "utf-8", yaml_case("name: caf\xe9\nversion: 1\n".encode("latin-1"))),
    ("yaml-directory", Y, "not found", write("s.yaml/inner.txt", "x")),
    # model folders and files
    ("model-empty-folder", GEN.replace("{model}", "{ws}/m"), "model_index.json", write("m/.keep", "")),
    (
        "model-index-garbled",
        GEN.replace("{model}", "{ws}/m"),
        "could not load",
        model_copy(lambda m: (m / "model_index.json").write_text("{not json")),
    ),
    ("model-no-unet-folder", GEN.replace("{model}", "{ws}/m"), "unet", model_copy(delete("unet"))),
    (
        "model-no-unet-weights",
        GEN.replace("{model}", "{ws}/m"),
        "could not load",
        model_copy(delete("unet/diffusion_pytorch_model.safetensors")),
    ),
    (
        "model-truncated-unet",
        GEN.replace("{model}", "{ws}/m"),
        "could not load",
        model_copy(truncate("unet/diffusion_pytorch_model.safetensors")),
    ),
    (
        "model-truncated-text-encoder",
        GEN.replace("{model}", "{ws}/m"),
        "could not load",
        model_copy(truncate("text_encoder/model.safetensors")),
    ),
    (
        "model-unet-wrong-shapes",
        GEN.replace("{model}", "{ws}/m"),
        "could not load",
        model_copy(json_edit("unet/config.json", lambda c: {**c, "block_out_channels": [32, 96]})),
    ),
    (
        "model-text-wrong-width",
        GEN.replace("{model}", "{ws}/m"),
        "could not load",
        model_copy(json_edit("text_encoder/config.json", lambda c: {**c, "intermediate_size": 48})),
    ),
    (
        "model-unet-config-garbled",
        GEN.replace("{model}", "{ws}/m"),
        "could not load",
        model_copy(lambda m: (m / "unet" / "config.json").write_text("{{")),
    ),
    (
        "model-unknown-class",
        GEN.replace("{model}", "{ws}/m"),
        "could not load",
        model_copy(json_edit("model_index.json", lambda c: {**c, "_class_name": "NoSuchPipeline"})),
    ),
    ("model-no-tokenizer", GEN.replace("{model}", "{ws}/m"), "tokenizer", model_copy(delete("tokenizer"))),
    (
        "model-ckpt-refused",
        GEN.replace("{model}", "{ws}/model.ckpt"),
        "--trust-pickle",
        write("model.ckpt", b"\x80\x04garbage"),
    ),
    (
        "model-pt-refused",
        GEN.replace("{model}", "{ws}/model.pt"),
        "--trust-pickle",
        write("model.pt", b"\x80\x04x"),
    ),
    (
        "model-bin-refused",
        GEN.replace("{model}", "{ws}/model.bin"),
        "--trust-pickle",
        write("model.bin", b"xx"),
    ),
    (
        "erase-ckpt-refused",
        ERASE.replace("{model}", "{ws}/model.ckpt"),
        "--trust-pickle",
        write("model.ckpt", b"\x80\x04garbage"),
    ),
    (
        "erase-ckpt-trusted-garbage",
        ERASE.replace("{model}", "{ws}/model.ckpt") + " --trust-pickle",
        "could not load",
        write("model.ckpt", b"\x80\x04garbage"),
    ),
    (
        "model-safetensors-garbage",
        GEN.replace("{model}", "{ws}/model.safetensors"),
        "could not load",
        write("model.safetensors", b"not a safetensors file"),
    ),
    ("model-safetensors-missing", GEN.replace("{model}", "{ws}/none.safetensors"), "does not exist", None),
    ("model-text-file", GEN.replace("{model}", "{ws}/model.txt"), "model.txt", write("model.txt", "hello")),
    (
        "model-hub-not-cached",
        GEN.replace("{model}", "nobody-xyz/no-such-model"),
        "not in the local cache",
        None,
    ),
    ("model-relative-missing", GEN.replace("{model}", "./no/such/folder"), "does not exist", None),
    # edit files
    ("edit-missing", GEN + " --edit {ws}/nothing", "not an edit folder", None),
    ("edit-is-file", GEN + " --edit {ws}/e.txt", "not an edit folder", write("e.txt", "x")),
    ("edit-no-json", GEN + " --edit {ws}/e", "not an edit folder", edit_copy(delete("edit.json"))),
    ("edit-no-tensors", GEN + " --edit {ws}/e", "not an edit folder", edit_copy(delete("edit.safetensors"))),
    (
        "edit-json-garbled",
        GEN + " --edit {ws}/e",
        "not valid json",
        edit_copy(lambda e: (e / "edit.json").write_text("{")),
    ),
    (
        "edit-json-list",
        GEN + " --edit {ws}/e",
        "edit.json",
        edit_copy(lambda e: (e / "edit.json").write_text("[]")),
    ),
    (
        "edit-json-no-method",
        GEN + " --edit {ws}/e",
        "method",
        edit_copy(json_edit("edit.json", lambda m: {k: v for k, v in m.items() if k != "method"})),
    ),
    (
        "edit-json-no-base",
        GEN + " --edit {ws}/e",
        "base_fingerprint",
        edit_copy(json_edit("edit.json", lambda m: {k: v for k, v in m.items() if k != "base_fingerprint"})),
    ),
    (
        "edit-json-bad-seconds",
        GEN + " --edit {ws}/e",
        "edit.json",
        edit_copy(json_edit("edit.json", lambda m: {**m, "seconds": "slow"})),
    ),
    (
        "edit-tensors-garbled",
        GEN + " --edit {ws}/e",
        "corrupted",
        edit_copy(lambda e: (e / "edit.safetensors").write_bytes(b"garbage" * 10)),
    ),
    (
        "edit-tensors-truncated",
        GEN + " --edit {ws}/e",
        "corrupted",
        edit_copy(truncate("edit.safetensors", 60)),
    ),
    (
        "edit-tampered",
        GEN + " --edit {ws}/e",
        "does not match the hash",
        edit_copy(retensor(first_tensor(0.123), rehash=False)),
    ),
    (
        "edit-nan",
        GEN + " --edit {ws}/e",
        "non-finite",
        edit_copy(retensor(first_tensor(math.nan), rehash=True)),
    ),
    (
        "edit-inf",
        GEN + " --edit {ws}/e",
        "non-finite",
        edit_copy(retensor(first_tensor(math.inf), rehash=True)),
    ),
    ("edit-wrong-base", GEN + " --edit {other_edit}", "was made for model", None),
    ("edit-wrong-shape", GEN + " --edit {ws}/e", "shape", edit_copy(retensor(reshaped, rehash=True))),
    (
        "edit-unknown-parameter",
        GEN + " --edit {ws}/e",
        "does not have",
        edit_copy(retensor(renamed, rehash=True)),
    ),
    # prompt files
    ("prompts-missing", GEN.replace("--prompt a", "--prompts {ws}/none.txt"), "cannot read", None),
    (
        "prompts-directory",
        GEN.replace("--prompt a", "--prompts {ws}/d"),
        "cannot read",
        write("d/x.txt", "a"),
    ),
    ("prompts-empty", GEN.replace("--prompt a", "--prompts {ws}/p.txt"), "no prompts", write("p.txt", "")),
    (
        "prompts-only-comments",
        GEN.replace("--prompt a", "--prompts {ws}/p.txt"),
        "no prompts",
        write("p.txt", "# a comment\n\n   \n\t\n"),
    ),
    (
        "prompts-bom-only",
        GEN.replace("--prompt a", "--prompts {ws}/p.txt"),
        "no prompts",
        write("p.txt", b"\xef\xbb\xbf"),
    ),
    (
        "prompts-binary",
        GEN.replace("--prompt a", "--prompts {ws}/p.txt"),
        "binary",
        write("p.txt", bytes(range(256))),
    ),
    (
        "prompts-utf16",
        GEN.replace("--prompt a", "--prompts {ws}/p.txt"),
        "binary",
        write("p.txt", "a photo\n".encode("utf-16")),
    ),
    (
        "prompts-latin1",
        GEN.replace("--prompt a", "--prompts {ws}/p.txt"),
        "utf-8",
        write("p.txt", "a caf\xe9\n".encode("latin-1")),
    ),
    (
        "prompts-10mb-line",
        GEN.replace("--prompt a", "--prompts {ws}/p.txt"),
        "characters",
        write("p.txt", "a photo\n" + "x" * (10 * 1024 * 1024) + "\n"),
    ),
    (
        "prompts-10mb-words",
        GEN.replace("--prompt a", "--prompts {ws}/p.txt"),
        "characters",
        write("p.txt", "cat " * (2 * 1024 * 1024) + "\n"),
    ),
    # run folders for evaluate / report
    ("evaluate-missing-run", "evaluate --run {ws}/nothing", "not a bench run folder", None),
    ("evaluate-no-bench-json", "evaluate --run {ws}/run", "bench.json", write("run/results.json", "{}")),
    ("evaluate-bench-json-garbled", "evaluate --run {ws}/run", "damaged", bench_run("{")),
    ("evaluate-bench-json-list", "evaluate --run {ws}/run", "damaged", bench_run("[1, 2]")),
    ("evaluate-bench-json-unknown-field", "evaluate --run {ws}/run", "damaged", bench_run('{"nope": 1}')),
    (
        "evaluate-bench-json-no-methods",
        "evaluate --run {ws}/run",
        "no methods",
        bench_run('{"model": "{model}", "methods": [], "targets": ["car"]}'),
    ),
    (
        "evaluate-unknown-evaluator",
        "evaluate --run {ws}/run --evaluator nope",
        "unknown evaluator",
        bench_run('{"model": "{model}", "methods": ["uce"], "targets": ["car"]}'),
    ),
    ("report-missing-run", "report --run {ws}/nothing", "results.json", None),
    ("report-results-garbled", "report --run {ws}/run", "damaged", write("run/results.json", "{")),
    ("report-results-empty-object", "report --run {ws}/run", "results.json", write("run/results.json", "{}")),
    ("report-results-list", "report --run {ws}/run", "results.json", write("run/results.json", "[]")),
    (
        "report-results-binary",
        "report --run {ws}/run",
        "results.json",
        write("run/results.json", b"\xff\x00"),
    ),
    # targets
    ("target-empty", BENCH.replace("--target car", "--target ''"), "empty", None),
    ("target-blank", BENCH.replace("--target car", "--target '   '"), "empty", None),
    ("target-twice", BENCH + " --target car", "twice", None),
    ("target-twice-case", BENCH.replace("--target car", "--target Car --target car"), "twice", None),
    (
        "target-unknown-taxonomy",
        BENCH.replace("--target car", "--target zzqxv").replace("--suites see", "--suites erasebench"),
        "zzqxv",
        None,
    ),
    (
        "target-unknown-imagenette",
        BENCH.replace("--target car", "--target zzqxv").replace("--suites see", "--suites imagenette"),
        "zzqxv",
        None,
    ),
    ("target-also-preserved", BENCH + " --preserve car", "both a target and a preserved", None),
    (
        "target-unknown-miniworld",
        BENCH.replace("--model {model}", "--model miniworld").replace("--target car", "--target unicorn"),
        "unicorn",
        None,
    ),
    ("gen-negative-huge", GEN + " --negative " + "x" * 20000, "characters", None),
    ("erase-target-empty", ERASE.replace("--target car", "--target ''"), "empty", None),
    ("erase-target-twice", ERASE + " --target car", "twice", None),
    ("demo-target-unknown-miniworld", "demo --target unicorn --out {out}", "unicorn", None),
    ("train-grounding-negative", "miniworld train --out {out} --grounding -1", "--grounding", None),
    ("train-pair-share-over-one", "miniworld train --out {out} --pair-share 1.5", "--pair-share", None),
    ("train-minutes-zero", "miniworld train --out {out} --minutes 0", "--minutes", None),
]
SUBPROCESS_CASES = {"unknown-option", "model-truncated-unet", "edit-nan", "prompts-latin1", "yaml-malformed"}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """A tiny pipeline, an edit of it, and an edit of another tiny pipeline (built once)."""
    import eraselab
    from eraselab.models import load_pipeline, tiny_random_pipeline

    root = tmp_path_factory.mktemp("bad_input_assets")
    tiny_random_pipeline(0).save_pretrained(str(root / "tiny"))
    pipe = load_pipeline(str(root / "tiny"))  # the fingerprint of the folder, as the CLI will see it
    eraselab.erase(pipe, "uce", ["car"]).save(root / "edit")
    eraselab.erase(tiny_random_pipeline(1), "uce", ["car"]).save(root / "other_edit")
    return {"model": str(root / "tiny"), "edit": str(root / "edit"), "other_edit": str(root / "other_edit")}


def earlier_results(folder: Path) -> dict[Path, bytes]:
    """Files a previous run left in the output folder; every case must leave them as they are."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "keep.txt").write_text("earlier work\n")
    (folder / "results.json").write_text('{"earlier": true}\n')
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def check_one_error_line(code: int, err: str, expect: str) -> str:
    assert code != 0, err
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
    line = lines[0]
    assert expect.lower() in line.lower(), line
    assert FIX_HINT.search(line.split(";", 1)[-1] if ";" in line else line), f"no fix named: {line}"
    return line


@pytest.mark.parametrize("case_id,argv,expect,prepare", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case_id, argv, expect, prepare, assets, tmp_path, capfd):
    ws = tmp_path / "ws"
    ws.mkdir()
    out = tmp_path / "out"
    before = earlier_results(out)
    fields = {**assets, "ws": str(ws), "out": str(out)}
    if prepare is not None:
        prepare(ws, assets)
    if case_id == "gen-prompt-10mb":
        args = shlex.split(GEN.format(**fields).replace("--prompt a", "")) + [
            "--prompt",
            "y" * (10 * 1024 * 1024),
        ]
    else:
        args = shlex.split(argv.format(**fields))
    watched = {
        **before,
        **{p: p.read_bytes() for p in ws.rglob("*") if p.is_file() and p.stat().st_size < 1e6},
    }
    if case_id in SUBPROCESS_CASES:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "eraselab.cli", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        code, err = proc.returncode, proc.stderr
    else:
        capfd.readouterr()
        code = main(args)
        err = capfd.readouterr().err
    check_one_error_line(code, err, expect)
    for path, content in watched.items():
        assert path.exists() and path.read_bytes() == content, f"{path} changed"


def test_the_table_is_large_enough():
    assert len(CASES) >= 100
    assert len({c[0] for c in CASES}) == len(CASES)  # ids are unique
