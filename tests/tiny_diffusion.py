"""Tiny random diffusers models in the real on-disk layouts (diffusers' own fast-test sizes), saved
with save_pretrained so the tests load them through the production path, offline: Stable
Diffusion (UNet, VAE, CLIP text model, a locally written CLIP BPE tokenizer, DDIM) and DeepFloyd
IF stage I (a 6-output-channel UNet, a T5 encoder, a locally built tokenizer, DDPM)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _clip_tokenizer():
    """A CLIP BPE tokenizer over single letters and a few merges, written from scratch."""
    from transformers import CLIPTokenizer

    tokens = ["<|startoftext|>", "<|endoftext|>", ",", *LETTERS, *(c + "</w>" for c in LETTERS), ",</w>", "sn", "ow</w>", "snow</w>"]
    with tempfile.TemporaryDirectory() as folder:
        vocab, merges = Path(folder) / "vocab.json", Path(folder) / "merges.txt"
        vocab.write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
        merges.write_text("#version: 0.2\ns n\no w</w>\nsn ow</w>\n")
        return CLIPTokenizer(str(vocab), str(merges), model_max_length=77)


def _word_tokenizer():
    """A word-level fast tokenizer with T5's special tokens (pad 0, eos 1, unk 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, ",": 3, **{w: 4 + i for i, w in enumerate(["a", "snowman", "teapot", "front", "side", "back", "overhead", "view"])}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=77)


def tiny_stable_diffusion(path: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """A random Stable Diffusion pipeline at `path`: latents 4 × 32², images 64² (VAE factor 2)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8, norm_num_groups=2, attention_head_dim=2,
    )
    vae = AutoencoderKL(
        block_out_channels=[4, 8], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, norm_num_groups=2,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=8, intermediate_size=16, num_attention_heads=2,
        num_hidden_layers=2, vocab_size=1000, max_position_embeddings=77, projection_dim=8,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=_clip_tokenizer(), unet=unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(path)
    return Path(path)


def tiny_deepfloyd_if(path: Path, seed: int = 0) -> Path:
    """A random DeepFloyd IF stage I pipeline at `path`: pixels 3 × 32², ε and variance out (6 channels)."""
    from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnAddedKVProcessor
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32, layers_per_block=1, block_out_channels=[32, 64],
        down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"], mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"], in_channels=3, out_channels=6,
        cross_attention_dim=32, encoder_hid_dim=32, attention_head_dim=8, addition_embed_type="text",
        addition_embed_type_num_heads=2, cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift", act_fn="gelu",
    )
    unet.set_attn_processor(AttnAddedKVProcessor())
    text_encoder = T5EncoderModel(T5Config(vocab_size=32, d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, pad_token_id=0, eos_token_id=1))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", beta_start=0.0001, beta_end=0.02,
                              thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.0,
                              prediction_type="epsilon", variance_type="learned_range")
    pipeline = IFPipeline(tokenizer=_word_tokenizer(), text_encoder=text_encoder, unet=unet, scheduler=scheduler,
                          safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)
    pipeline.save_pretrained(path)
    return Path(path)
