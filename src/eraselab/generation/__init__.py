"""The generation engine's parts, one job per module; `eraselab.generate` is the entry point that uses them.

    family.py      which pipelines the engine can run, and the family object that runs each
    sd.py          the SD 1.x/2.x family: text conditioning, latents, denoiser call, decode
    sdxl.py        the SDXL family: two text encoders, pooled text, added time ids
    flux.py        the Flux family: MMDiT on packed latents, T5 + pooled CLIP text, flow matching
    hooks.py       the GenerationHook protocol (attention recording and other observers)
    lanes.py       rows per network call ("lanes"), the rows each probe needs, running a network in lanes
    keys.py        image identity: what decides a probe's pixels, hashed into its image key
    sharding.py    which share of the images this process makes (explicit shards or `accelerate launch`)
    text_cache.py  text embeddings, each distinct string encoded once per request
    denoise.py     the denoising loop for one batch of probes
    png.py         PNG bytes with provenance, and images back from the store
    progress.py    the progress bar and one-line status messages
"""
