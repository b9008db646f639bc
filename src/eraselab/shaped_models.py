"""Random-weight pipelines with the published architectures of real checkpoints (no download needed).

They exercise the real loading, generation and erasure code at real layer sizes — speed, memory and shapes —
where the weights themselves cannot be fetched (tests, CPU journeys, GPU benchmarks). Tiny pipelines for unit
tests live in models.py (SD 1.x) and tiny_families.py (other families).
"""
from __future__ import annotations

COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "vae")


def sd14_shaped_pipeline(seed: int = 0):
    """Stable Diffusion 1.4's architecture (its published configs: UNet 860 M, CLIP ViT-L/14 text, VAE) with
    random weights and SD 1.4's PNDM scheduler settings."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .models import clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8,
                                block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12,
                                        max_position_embeddings=77, hidden_act="quick_gelu",
                                        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407))
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=clip_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def parameter_counts(pipe) -> dict[str, int]:
    return {n: sum(p.numel() for p in getattr(pipe, n).parameters()) for n in COMPONENTS
            if getattr(pipe, n, None) is not None}
