"""Erasure speed: seconds per erasure for every method, UCE against a naive per-layer re-encoding
implementation, and ESD's per-iteration cost against its floor (the rollout plus three UNet passes).

Run: HF_HUB_OFFLINE=1 python benchmarks/erase_speed.py [--iterations 5] [--threads 1] [--miniworld]
Models: a tiny random pipeline with SD 1.x shapes (768-d text, 16 cross-attention blocks, narrow channels),
and the embedded miniworld model when its weights are installed. Iterative methods run `--iterations` steps;
the report gives seconds per step and the projected seconds of a full run at the preset's iteration count.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import eraselab
from eraselab.methods import build_request
from eraselab.methods.diffusion import NoiseSchedule, ddim_rollout, latent_shape
from eraselab.methods.esd import ESD
from eraselab.methods.params import kv_projections
from eraselab.methods.text import PromptEncoder
from eraselab.methods.training import TrainingSession
from eraselab.methods.vocabulary import en3k
from eraselab.models import MINIWORLD, miniworld_weights_dir, tiny_random_pipeline
from eraselab.provenance import library_versions

ITERATIVE = {"esd-x", "esd-u", "esd-x-strict", "ap", "age", "ca"}
SMALL_RUN = {"ap": {"num_centers": 20, "k_closest": 200}, "age": {"num_centers": 20, "k_closest": 200},
             "ca": {"anchor": "shape", "anchor_images": 8}}


def time_methods(pipe, iterations: int) -> list[dict]:
    rows = []
    for method in eraselab.methods.method_names():
        extra = dict(SMALL_RUN.get(method, {}))
        if method in ITERATIVE:
            extra["iterations"] = iterations
        if method == "ca" and pipe_is_miniworld(pipe):
            extra.pop("anchor")
        _, full = build_request(method, ["circle"], pipe=pipe)
        start = time.perf_counter()
        edit = eraselab.erase(pipe, method, ["circle"], progress=False, **extra)
        seconds = time.perf_counter() - start
        row = {"method": method, "seconds": round(seconds, 3), "tensors": len(edit.tensors)}
        if method in ITERATIVE:
            full_its = full.config.iterations * (2 if method in ("ap", "age") else 1)
            run_its = iterations * (2 if method in ("ap", "age") else 1)
            # AP/AGE scan the vocabulary once before training; that cost does not grow with the steps.
            once = edit.extras.get("candidate_search_seconds", 0.0)
            per_step = (seconds - once) / run_its
            row.update({"steps_run": run_its, "once_s": once, "seconds_per_step": round(per_step, 4),
                        "projected_full_run_s": round(once + per_step * full_its, 1),
                        "preset": full.config.preset, "preset_steps": full_its})
        rows.append(row)
        print(json.dumps(row))
    return rows


def pipe_is_miniworld(pipe) -> bool:
    return eraselab.models.model_source(pipe) == MINIWORLD


# ---- UCE: ours vs naive ------------------------------------------------------------------------------------
def naive_uce(pipe, target: str, guide: str, preserve: list[str], lam=0.5, s_e=1.0, s_p=1.0):
    """The original code's structure: per layer, per concept, encode the text again, accumulate, invert."""
    def encode(prompt):
        tok = pipe.tokenizer(
            prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        )
        with torch.no_grad():
            h = pipe.text_encoder(tok.input_ids)[0][0]
        return h, max(int(tok.attention_mask.sum()) - 2, 0)

    out = {}
    for name, layer in kv_projections(pipe.unet):
        w = layer.weight.detach().double()
        mat1 = lam * w
        mat2 = lam * torch.eye(w.shape[1], dtype=torch.float64)
        pairs = [(target, guide, s_e)] + [(p, p, s_p) for p in preserve]
        for old, new, scale in pairs:
            ho, io = encode(old)
            hn, inew = encode(new)
            n = 77 - max(io, inew)
            c_old, c_new = ho[io:io + n].double(), hn[inew:inew + n].double()
            values = c_new @ w.T
            mat1 += scale * values.T @ c_old
            mat2 += scale * c_old.T @ c_old
        out[f"unet.{name}"] = (mat1 @ torch.inverse(mat2)).float()
    return out


def uce_vs_naive(pipe, n_preserve: int = 100) -> dict:
    preserve = [w for w in en3k() if w != "circle"][:n_preserve]
    start = time.perf_counter()
    edit = eraselab.erase(pipe, "uce", ["circle"], preserve, check=False, progress=False)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    naive = naive_uce(pipe, "circle", "", preserve)
    slow = time.perf_counter() - start
    diff = max(float((naive[n] - edit.tensors[n]).abs().max() / edit.tensors[n].abs().max()) for n in naive)
    row = {
        "preserved": n_preserve,
        "matrices": len(naive),
        "ours_s": round(ours, 3),
        "naive_s": round(slow, 2),
        "speedup": round(slow / ours, 1),
        "max_rel_difference": diff,
    }
    print(json.dumps(row))
    return row


# ---- ESD: one iteration vs rollout + 3 UNet passes ---------------------------------------------------------
def esd_iteration_cost(pipe, stop: int = 10, steps: int = 20, repeats: int = 5) -> dict:
    enc = PromptEncoder(pipe)
    c, u = enc(["circle", ""])
    schedule = NoiseSchedule.from_pipe(pipe, steps)
    cfg = build_request("esd-x", ["circle"], pipe=pipe, ddim_steps=steps)[1].config
    t = int(schedule.timesteps[stop])
    session = TrainingSession(pipe, "x", cfg.lr, 0)
    original = NoiseSchedule.sample_step_and_timestep
    NoiseSchedule.sample_step_and_timestep = lambda self, g: (stop, t)
    try:
        ESD.iteration(session, schedule, c, u, cfg, pipe)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            ESD.iteration(session, schedule, c, u, cfg, pipe)
        per_iteration = (time.perf_counter() - start) / repeats
    finally:
        NoiseSchedule.sample_step_and_timestep = original
        session.restore()
    x = torch.randn(latent_shape(pipe))
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(repeats):
            ddim_rollout(pipe.unet, schedule, x, c, u, stop, 3.0)
            for cond in (u, c, c):
                pipe.unet(x, t, encoder_hidden_states=cond[None])
        floor = (time.perf_counter() - start) / repeats
    row = {"rollout_steps": stop, "esd_iteration_s": round(per_iteration, 4),
           "rollout_plus_3_passes_s": round(floor, 4), "ratio": round(per_iteration / floor, 3)}
    print(json.dumps(row))
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--miniworld", action="store_true", help="also time the miniworld model (needs its weights)"
    )
    ap.add_argument("--out", default="", help="write the results as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = tiny_random_pipeline(0, sd1_shapes=True)
    result = {
        "versions": library_versions(),
        "threads": args.threads,
        "device": "cpu",
        "sd1_shapes": {
            "methods": time_methods(pipe, args.iterations),
            "uce_vs_naive": uce_vs_naive(pipe),
            "esd_iteration": esd_iteration_cost(pipe),
        },
    }
    if args.miniworld and (miniworld_weights_dir() / "model_index.json").exists():
        mw = eraselab.load_pipeline(MINIWORLD)
        result["miniworld"] = {
            "methods": time_methods(mw, args.iterations),
            "esd_iteration": esd_iteration_cost(mw),
        }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
