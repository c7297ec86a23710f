"""Diffusion priors for score distillation behind one small interface (`DiffusionPrior`):
Stable Diffusion (latent), DeepFloyd IF stage I (pixel, 64²), both built on diffusers from local
weights only, and the exact-noise oracle for a known target (`recon.guidance.oracle`).

A prior turns renders into its model space (`encode`, differentiable), back into images
(`decode`), predicts ε for noisy inputs (v-prediction models are converted) and embeds prompts
(cached on disk). Weights come from a local directory or the local Hugging Face cache, never
from the network: HF_HUB_OFFLINE is set before diffusers or transformers are imported.
"""
from __future__ import annotations

import gc
import json
import os
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from recon.guidance.prompts import EmbeddingCache
from recon.guidance.sds import v_to_epsilon
from renderers.shards import randn_rows

TEXT_LENGTH = 77  # tokens per prompt (CLIP's context, and IF's T5 length)


@dataclass
class ViewBatch:
    """The cameras of a batch of renders, for priors that look at the scene (the oracle)."""

    K: torch.Tensor  # [B, 3, 3] at the render's resolution
    c2w: torch.Tensor  # [B, 4, 4] OpenCV
    width: int
    height: int
    background: torch.Tensor  # [B, H, W, 3] what the renders were composited on


class DiffusionPrior(ABC):
    """What score distillation needs from a 2D diffusion model."""

    key: str  # names the model in the embedding cache
    space: str  # "pixel" or "latent"
    resolution: int  # renders are resized to resolution² before `encode`
    alphas_cumprod: torch.Tensor  # [T] ā_t, float32, on the prior's device
    device: torch.device

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    @abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, R, R] in [0, 1] → model input x [B, C, h, w], differentiable."""

    @abstractmethod
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space [B, C, h, w] → images [B, 3, R, R] in [0, 1]."""

    @abstractmethod
    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor, views: ViewBatch) -> torch.Tensor:
        """ε̂ [B, C, h, w] for x_t [B, C, h, w], timesteps t [B] and text embeddings [B, L, D];
        `views` holds the cameras of the B inputs (the same B views twice under CFG)."""

    @abstractmethod
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """[P, L, D] embeddings of the prompts, on the prior's device."""

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Renders [B, H, W, 3] → [B, 3, R, R], bilinear (antialiased when shrinking)."""
        x = images.permute(0, 3, 1, 2)
        if x.shape[-2:] == (self.resolution, self.resolution):
            return x
        return F.interpolate(x, (self.resolution, self.resolution), mode="bilinear", align_corners=False, antialias=x.shape[-1] > self.resolution)


# ---- diffusers models from local weights ----------------------------------------------------
HOW_TO_GET = {
    "sd": "huggingface-cli download stabilityai/stable-diffusion-2-1-base --local-dir DIR",
    "if": "accept the licence at huggingface.co/DeepFloyd/IF-I-XL-v1.0, then huggingface-cli download DeepFloyd/IF-I-XL-v1.0 --local-dir DIR",
}
NAMES = {"sd": "Stable Diffusion", "if": "DeepFloyd IF stage I"}
PREDICTION_TYPES = ("epsilon", "v_prediction")  # what the UNet predicts; v is converted to ε
REQUIRED = ("unet/config.json", "scheduler/scheduler_config.json", "tokenizer", "text_encoder/config.json")


def model_directory(source: str | Path, kind: str) -> Path:
    """The local directory of a diffusers model given as a path or as a repository id found in the
    local Hugging Face cache; ValueError naming `source` and how to get the weights otherwise."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    path = Path(source).expanduser()
    if not path.exists() and str(source).count("/") == 1:
        from huggingface_hub import snapshot_download

        try:
            path = Path(snapshot_download(str(source), local_files_only=True))
        except Exception:  # noqa: BLE001 — any miss of the local cache is the same user error
            pass
    required = REQUIRED + (("vae/config.json",) if kind == "sd" else ())
    missing = [name for name in required if not (path / name).exists()]
    if missing:
        where = "does not exist" if not path.exists() else f"lacks {', '.join(missing)}"
        raise ValueError(f"{source}: no {NAMES[kind]} model there ({where}); weights are never downloaded at run time — on a machine with internet: {HOW_TO_GET[kind]}")
    scheduler = path / "scheduler" / "scheduler_config.json"
    try:
        prediction_type = json.loads(scheduler.read_text()).get("prediction_type", "epsilon")
    except (ValueError, AttributeError) as error:
        raise ValueError(f"{scheduler}: not a scheduler config ({error})") from None
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"{scheduler}: prediction_type {prediction_type!r} is not supported (expected one of {', '.join(PREDICTION_TYPES)})")
    return path


def _quiet_loading() -> None:
    """diffusers and transformers report errors only, without progress bars, as every recon run does."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()


@contextmanager
def _on(module: torch.nn.Module, device: torch.device, offload: bool):
    """Run `module` on `device`; with `offload` it lives on the CPU between uses."""
    if offload:
        module.to(device)
    try:
        yield module
    finally:
        if offload:
            module.to("cpu")


class DiffusersPrior(DiffusionPrior):
    """Shared loading of a diffusers UNet, scheduler and text encoder (fp16 on CUDA, float32 on a
    CPU; attention slicing and model CPU offload as options)."""

    kind: str  # "sd" or "if"
    text_encoder_class: str  # transformers class of the text encoder

    def __init__(self, source: str | Path, device: torch.device | str, *, attention_slicing: bool = False, cpu_offload: bool = False, cache_root: Path | None = None) -> None:
        from diffusers import UNet2DConditionModel

        self.path = model_directory(source, self.kind)
        _quiet_loading()
        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.offload = cpu_offload and self.device.type == "cuda"
        self.key = f"{type(self).__name__}:{self.path.resolve()}"
        self.cache = EmbeddingCache(self.key, cache_root)
        scheduler = self._scheduler()
        self.prediction_type = scheduler.config.prediction_type  # one of PREDICTION_TYPES (model_directory checked)
        self.alphas_cumprod = scheduler.alphas_cumprod.float().to(self.device)  # [T]
        self.unet = self._frozen(UNet2DConditionModel.from_pretrained(self.path, subfolder="unet", torch_dtype=self.dtype))
        if attention_slicing:
            self.unet.set_attention_slice("auto")

    def _frozen(self, module: torch.nn.Module) -> torch.nn.Module:
        module.requires_grad_(False).eval()
        return module.to("cpu" if self.offload else self.device)

    @abstractmethod
    def _scheduler(self):
        """The model's noise scheduler (for ā_t and prediction_type)."""

    def _unet(self, x_t: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        with _on(self.unet, self.device, self.offload) as unet:
            out = unet(x_t.to(self.dtype), t, encoder_hidden_states=embeddings.to(self.dtype)).sample.float()
        if self.prediction_type == "v_prediction":
            out = v_to_epsilon(out, x_t, self.alphas_cumprod[t])
        return out

    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        return self.cache.get(prompts, self._encode_prompts).to(self.device)

    @torch.no_grad()
    def _encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Build the tokenizer and text encoder, encode, free them (only for prompts not cached)."""
        import transformers
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.path, subfolder="tokenizer")
        encoder = getattr(transformers, self.text_encoder_class).from_pretrained(self.path, subfolder="text_encoder", torch_dtype=self.dtype).to(self.device).eval()
        tokens = tokenizer(prompts, padding="max_length", max_length=TEXT_LENGTH, truncation=True, return_tensors="pt").to(self.device)
        embeddings = self._run_text_encoder(encoder, tokens).float().cpu()  # [P, L, D]
        del encoder, tokenizer
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        return embeddings

    @staticmethod
    def _run_text_encoder(encoder, tokens) -> torch.Tensor:
        return encoder(tokens.input_ids)[0]


class StableDiffusionGuidance(DiffusersPrior):
    """Latent guidance: renders → VAE latents (input in [−1, 1], × scaling_factor); ε- or
    v-prediction UNets (checked at load); CLIP text encoder."""

    kind, space, text_encoder_class = "sd", "latent", "CLIPTextModel"

    def __init__(self, source: str | Path, device: torch.device | str, *, resolution: int | None = None, generator: torch.Generator | None = None, **options) -> None:
        from diffusers import AutoencoderKL

        super().__init__(source, device, **options)
        self.vae = self._frozen(AutoencoderKL.from_pretrained(self.path, subfolder="vae", torch_dtype=self.dtype))
        self.scaling_factor = float(self.vae.config.scaling_factor)
        vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.resolution = resolution or self.unet.config.sample_size * vae_scale  # 512 for SD 2.1-base
        self.generator = generator  # draws the VAE's latent samples (exact resume)

    def _scheduler(self):
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_pretrained(self.path, subfolder="scheduler")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        assert images.dim() == 4 and images.shape[1] == 3, f"images must be [B, 3, R, R], got {tuple(images.shape)}"
        with _on(self.vae, self.device, self.offload) as vae:
            posterior = vae.encode((images * 2 - 1).to(self.dtype)).latent_dist
        latents = posterior.mean + posterior.std * randn_rows(posterior.mean.shape, self.generator, self.device, posterior.mean.dtype)
        return latents.float() * self.scaling_factor  # [B, 4, R/8, R/8] for SD

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        with _on(self.vae, self.device, self.offload) as vae:
            images = vae.decode((x / self.scaling_factor).to(self.dtype)).sample.float()
        return ((images + 1) / 2).clamp(0, 1)

    def predict_noise(self, x_t, t, embeddings, views):
        return self._unet(x_t, t, embeddings)


class DeepFloydIFGuidance(DiffusersPrior):
    """Pixel guidance at the UNet's resolution (64² for IF-I): renders in [−1, 1]; the UNet's 6
    output channels are ε and the learned variance, of which the first 3 (ε) are used; T5 text
    encoder with its attention mask."""

    kind, space, text_encoder_class = "if", "pixel", "T5EncoderModel"

    def __init__(self, source: str | Path, device: torch.device | str, **options) -> None:
        super().__init__(source, device, **options)
        self.resolution = int(self.unet.config.sample_size)

    def _scheduler(self):
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_pretrained(self.path, subfolder="scheduler")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        assert images.dim() == 4 and images.shape[1] == 3, f"images must be [B, 3, R, R], got {tuple(images.shape)}"
        return images * 2 - 1

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return ((x + 1) / 2).clamp(0, 1)

    def predict_noise(self, x_t, t, embeddings, views):
        out = self._unet(x_t, t, embeddings)  # [B, 6, h, w]: ε, variance
        return out[:, : x_t.shape[1]]

    @staticmethod
    def _run_text_encoder(encoder, tokens) -> torch.Tensor:
        return encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
