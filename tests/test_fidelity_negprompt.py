"""Negative prompt against its reference: the diffusers StableDiffusionPipeline called with the target as
`negative_prompt` (huggingface/diffusers@438514c pipeline_stable_diffusion.py)."""
import numpy as np
import torch

from eraselab.generate import generate, images_for
from eraselab.methods import erase
from eraselab.probes import Probe
from eraselab.store import RunStore


def test_the_edit_samples_what_the_pipeline_samples_with_the_target_as_negative_prompt(tiny_pipe, tmp_path):
    edit = erase(tiny_pipe, "negprompt", ["cat"], progress=False)
    assert edit.extras["recipe"]["name"] == "diffusers"
    assert edit.extras["recipe"]["repository"] == "huggingface/diffusers"
    probe = Probe("a photo of a dog", seed=3, steps=3)
    store = RunStore(tmp_path)
    ours = np.asarray(images_for(store, generate(tiny_pipe, [probe], store, edit=edit, progress=False))[0])
    ref = tiny_pipe(probe.prompt, negative_prompt="cat", num_inference_steps=3, guidance_scale=7.5,
                    generator=torch.Generator("cpu").manual_seed(3)).images[0]
    plain = tiny_pipe(probe.prompt, num_inference_steps=3, guidance_scale=7.5,
                      generator=torch.Generator("cpu").manual_seed(3)).images[0]
    ours, ref, plain = (np.asarray(x).astype(int) for x in (ours, ref, plain))
    # Only the network-call batch shape differs from the pipeline (the engine's fixed lanes): a level on a few
    # pixels at most, while the negative prompt itself moves many.
    assert np.abs(ours - ref).max() <= 2 and (ours != ref).mean() < 0.02
    assert (ref != plain).mean() > 0.1
