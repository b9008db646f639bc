"""Tiny random-weight pipelines of the model families beyond SD 1.x, built from configs and fully offline,
for tests: the same component classes and wiring as the real models, with narrow layers.

The CLIP tokenizer is the real BPE shipped with eraselab (models.clip_tokenizer); the text encoders keep
CLIP's 49,408-token vocabulary and 77 positions, so real prompts tokenize as they do on the full models.
"""
from __future__ import annotations

import torch

from .models import clip_tokenizer
from .pipeline_state import state_of


def _clip_text_config(hidden: int, layers: int = 2, **extra):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden,
                          num_hidden_layers=layers, num_attention_heads=4 if hidden % 4 == 0 else 1,
                          max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407,
                          pad_token_id=49407, **extra)


def _tiny_vae(seed: int, scaling_factor: float = 0.18215):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                         norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
                         scaling_factor=scaling_factor)


def tiny_random_sdxl_pipeline(seed: int = 0):
    """A deterministic tiny StableDiffusionXLPipeline (random weights, 16-px images).

    As in SDXL base: two CLIP text encoders (CLIPTextModel, and CLIPTextModelWithProjection whose projected
    pooled output conditions the UNet), the UNet's cross-attention width is the two encoders' widths
    concatenated, addition_embed_type "text_time" (pooled text + six size/crop numbers), linear projections in
    the transformer blocks, several transformer layers in a block, the second tokenizer padding with "!", and
    an Euler scheduler. The two encoders have different widths (32 and 64) so a swapped concatenation fails
    loudly.
    """
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    width_1, width_2, pooled, time_dim = 32, 64, 64, 8
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        norm_num_groups=8, cross_attention_dim=width_1 + width_2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=time_dim, projection_class_embeddings_input_dim=pooled + 6 * time_dim)
    vae = _tiny_vae(seed + 1, scaling_factor=0.13025)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_clip_text_config(width_1, hidden_act="quick_gelu"))
    torch.manual_seed(seed + 3)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_text_config(width_2, hidden_act="gelu",
                                                                   projection_dim=pooled))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    tokenizer_2 = clip_tokenizer()
    tokenizer_2.pad_token = "!"  # SDXL's second tokenizer pads with "!" (id 0), not with end-of-text
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=clip_tokenizer(), tokenizer_2=tokenizer_2, unet=unet,
                                     scheduler=scheduler, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    state_of(pipe).source = f"tiny-random-sdxl(seed={seed})"
    return pipe.to("cpu")


def tiny_random_sd2_pipeline(seed: int = 0, text_dim: int = 1024):
    """A deterministic tiny SD-2-style StableDiffusionPipeline (random weights, 16-px images).

    As in SD 2.x (768-v): an OpenCLIP-H-style text encoder 1024 wide with GELU activations (diffusers' SD 2
    text encoder is OpenCLIP with its last layer removed, so its last hidden state is OpenCLIP's penultimate
    layer, the one SD 2 conditions on; a 2-layer stand-in plays it), per-block attention_head_dim lists,
    linear projections and upcast attention in the transformer blocks, and a v-prediction DDIM scheduler.
    """
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        norm_num_groups=8, cross_attention_dim=text_dim,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4),
        use_linear_projection=True, upcast_attention=True)
    vae = _tiny_vae(seed + 1)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_clip_text_config(text_dim, hidden_act="gelu"))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              prediction_type="v_prediction")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    state_of(pipe).source = f"tiny-random-sd2(seed={seed})"
    return pipe.to("cpu")


# Words the tiny T5 tokenizer keeps whole (prompts of the tests and examples); any other text falls back to
# single characters, so every prompt tokenizes, as with a real SentencePiece vocabulary.
_T5_WORDS = ("a an the of in on with by and at photo picture painting image portrait art artwork style "
             "artist car cat dog bird house tree red blue green circle square van gogh picasso monet nudity "
             "person man woman church parachute garbage truck").split()


def tiny_t5_tokenizer(max_length: int = 512):
    """A T5 tokenizer (SentencePiece unigram, as T5's) over a small hand-made vocabulary, built offline.

    T5's layout: <pad> 0, </s> 1, <unk> 2, pieces marked "▁" at a word's start, "</s>" appended to every text,
    right padding with <pad>. The vocabulary is single characters plus _T5_WORDS; whole words score higher
    than their letters, so the unigram model picks them. No extra_id sentinel tokens (encoders do not use
    them).
    """
    import string

    from transformers import T5TokenizerFast

    chars = string.ascii_letters + string.digits + ",.!?'-:;()"
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [(c, -8.0) for c in chars] + [("▁" + c, -6.0) for c in string.ascii_letters]
    vocab += [("▁" + w, -1.0) for w in _T5_WORDS if len(w) > 1]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=max_length)


def tiny_random_flux_pipeline(seed: int = 0, guidance_embeds: bool = True):
    """A deterministic tiny FluxPipeline (random weights), FLUX.1-dev-style, or -schnell-style with
    guidance_embeds=False.

    As in FLUX.1: a FluxTransformer2DModel (double-stream and single-stream blocks, rotary axes) on 2×2-packed
    latents of a 16-channel VAE without quant convs (Flux's scaling and shift factors); T5EncoderModel
    (gated-GELU, v1.1-style) states as the joint attention's text stream and the pooled output of a
    CLIPTextModel as the pooled projection; a FlowMatchEulerDiscreteScheduler configured as -dev's (dynamic
    shift from the image's token count) or -schnell's (no shift); -dev embeds the distilled guidance scale.
    The VAE has two blocks, so vae_scale_factor is 2 (8 on FLUX.1) and 16-px images are 4×4 packed tokens.
    The CLIP tokenizer is the real BPE; the T5 tokenizer is `tiny_t5_tokenizer` (T5's SentencePiece model is
    not shipped).
    """
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    clip_width, t5_width, latent_channels = 32, 48, 16
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * latent_channels, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=t5_width,
        pooled_projection_dim=clip_width, guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6))
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                        block_out_channels=(32, 64), norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2,
                        sample_size=32, use_quant_conv=False, use_post_quant_conv=False,
                        scaling_factor=0.3611, shift_factor=0.1159)
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(_clip_text_config(clip_width, hidden_act="quick_gelu"))
    tokenizer_2 = tiny_t5_tokenizer()
    torch.manual_seed(seed + 3)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=t5_width, d_kv=12, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, relative_attention_max_distance=32, feed_forward_proj="gated-gelu",
        dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    if guidance_embeds:  # FLUX.1-dev's scheduler config
        scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                    max_shift=1.15, base_image_seq_len=256,
                                                    max_image_seq_len=4096)
    else:  # FLUX.1-schnell's
        scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(),
                        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    variant = "dev" if guidance_embeds else "schnell"
    state_of(pipe).source = f"tiny-random-flux-{variant}(seed={seed})"
    return pipe.to("cpu")
