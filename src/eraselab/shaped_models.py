"""Random-weight pipelines with the published architectures of real checkpoints (no download needed).

They exercise the real loading, generation and erasure code at real layer sizes — speed, memory and shapes —
where the weights themselves cannot be fetched (tests, CPU journeys, GPU benchmarks). Tiny pipelines for unit
tests live in models.py (SD 1.x) and tiny_families.py (other families).
"""

from __future__ import annotations

from contextlib import contextmanager

COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "vae")


def _clip_vit_l_text():
    """CLIP ViT-L/14's text encoder (SD 1.x's, SDXL's first, Flux's pooled one) with random weights."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )


def _sd_vae(**config):
    """The SD-family KL autoencoder (4 blocks of 128–512 channels, 8× downsampling) with random weights;
    `config` sets what differs by model (latent channels, scaling, quant convs)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        layers_per_block=2,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        **config,
    )


@contextmanager
def _networks_on(device, dtype):
    """Networks built inside draw their random weights on `device` in `dtype` (seconds on a GPU instead of
    minutes on a CPU; "meta" builds no weights at all, to check shapes)."""
    import torch

    previous = torch.get_default_dtype()
    if dtype is not None:
        torch.set_default_dtype(dtype)
    try:
        with torch.device(device or "cpu"):
            yield
    finally:
        torch.set_default_dtype(previous)


def sd14_shaped_pipeline(seed: int = 0, device=None, dtype=None):
    """Stable Diffusion 1.4's architecture (its published configs: UNet 860 M, CLIP ViT-L/14 text, VAE) with
    random weights and SD 1.4's PNDM scheduler settings."""
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from .models import clip_tokenizer

    with _networks_on(device, dtype):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=64,
            cross_attention_dim=768,
            attention_head_dim=8,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
        )
        vae = _sd_vae(sample_size=512)
        text = _clip_vit_l_text()
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def parameter_counts(pipe) -> dict[str, int]:
    return {
        n: sum(p.numel() for p in getattr(pipe, n).parameters())
        for n in COMPONENTS
        if getattr(pipe, n, None) is not None
    }


def sdxl_shaped_pipeline(seed: int = 0, device=None, dtype=None):
    """SDXL base 1.0's architecture (UNet 2.6 B with 10-layer transformer blocks, CLIP ViT-L and OpenCLIP
    ViT-bigG text encoders, SDXL VAE scaling, Euler scheduler) with random weights."""
    import torch
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from .models import clip_tokenizer

    with _networks_on(device, dtype):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=128,
            cross_attention_dim=2048,
            block_out_channels=(320, 640, 1280),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
        vae = _sd_vae(sample_size=1024, scaling_factor=0.13025)
        text = _clip_vit_l_text()
        text_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(
                vocab_size=49408,
                hidden_size=1280,
                intermediate_size=5120,
                num_hidden_layers=32,
                num_attention_heads=20,
                max_position_embeddings=77,
                hidden_act="gelu",
                projection_dim=1280,
                bos_token_id=49406,
                eos_token_id=49407,
                pad_token_id=0,
            )
        )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    tokenizer_2 = clip_tokenizer()
    tokenizer_2.pad_token = "!"
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text,
        text_encoder_2=text_2,
        tokenizer=clip_tokenizer(),
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux_shaped_pipeline(seed: int = 0, device=None, dtype=None):
    """FLUX.1-dev's architecture (transformer 11.9 B: 19 double- and 38 single-stream blocks; T5-XXL encoder
    4.8 B; CLIP ViT-L pooled text; 16-channel VAE) with random weights. The T5 tokenizer is eraselab's small
    offline one (tiny_families.tiny_t5_tokenizer): T5's SentencePiece model is not shipped, and token ids only
    index the random embedding."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    from .models import clip_tokenizer
    from .tiny_families import tiny_t5_tokenizer

    with _networks_on(device, dtype):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=19,
            num_single_layers=38,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=4096,
            pooled_projection_dim=768,
            guidance_embeds=True,
            axes_dims_rope=(16, 56, 56),
        )
        vae = _sd_vae(sample_size=1024, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False,
                      scaling_factor=0.3611, shift_factor=0.1159)
        text = _clip_vit_l_text()
        text_2 = T5EncoderModel(
            T5Config(
                vocab_size=32128,
                d_model=4096,
                d_kv=64,
                d_ff=10240,
                num_layers=24,
                num_heads=64,
                feed_forward_proj="gated-gelu",
                dropout_rate=0.0,
                pad_token_id=0,
                eos_token_id=1,
                decoder_start_token_id=0,
            )
        )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text,
        tokenizer=clip_tokenizer(),
        text_encoder_2=text_2,
        tokenizer_2=tiny_t5_tokenizer(),
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


SHAPED = {"sd14": sd14_shaped_pipeline, "sdxl": sdxl_shaped_pipeline, "flux": flux_shaped_pipeline}
