"""One score-distillation step for any `DiffusionPrior`: noise the encoded renders at t drawn from
the schedule's range, predict ε under classifier-free guidance, and return the SDS loss written as
λ(t)·½‖x − sg(x̂₀)‖² (`sds.sds_loss`), with the images of StableDreamer's debug view.

Latent priors offer two losses (`loss_space`): "latent", ½λ‖z − sg(ẑ₀)‖², exactly SDS (its
gradient passes through the VAE encoder); "image", ½λ‖x − sg(D(ẑ₀))‖² on the render resized to
the prior's resolution (HiFA, threestudio's `use_img_loss`), which drops the encoder's Jacobian.
Pixel priors have one space, so both settings are the same loss there.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from recon.guidance.priors import DiffusionPrior, ViewBatch
from recon.guidance.sds import WEIGHTINGS, add_noise, classifier_free_guidance, l2_weight, predicted_x0, sds_loss, sds_weight
from renderers.shards import randint_rows, randn_rows

LOSS_SPACES = ("latent", "image")
GUIDANCE_FORMS = ("standard", "threestudio")


@dataclass(frozen=True)
class GuidanceSettings:
    scale: float = 100.0  # classifier-free guidance scale s
    form: str = "standard"  # ε_u + s(ε_c − ε_u); "threestudio": ε_c + s(ε_c − ε_u), i.e. standard at s + 1
    weighting: str = "dreamfusion"  # w(t): one of sds.WEIGHTINGS
    loss_space: str = "latent"  # latent priors: "latent" (exact SDS) or "image" (L2 to the decoded x̂₀)
    grad_clip: float = 0.0  # clamp of the SDS gradient per element (0: none); non-finite entries are zeroed

    def __post_init__(self) -> None:
        for name, value, allowed in (("form", self.form, GUIDANCE_FORMS), ("weighting", self.weighting, WEIGHTINGS), ("loss_space", self.loss_space, LOSS_SPACES)):
            if value not in allowed:
                raise ValueError(f"guidance {name} must be one of {', '.join(allowed)}, got {value!r}")


@dataclass
class Distilled:
    loss: torch.Tensor  # scalar SDS loss (gradient g/B with respect to the model input)
    t: torch.Tensor  # [B] timesteps drawn
    renders: torch.Tensor | None = None  # [B, 3, R, R] the renders as the prior sees them (debug)
    noisy: torch.Tensor | None = None  # [B, 3, R, R] x_t decoded (debug)
    x0: torch.Tensor | None = None  # [B, 3, R, R] x̂₀ decoded (debug)


def score_distillation(
    prior: DiffusionPrior,
    renders: torch.Tensor,  # [B, H, W, 3] in [0, 1], differentiable
    cond: torch.Tensor,  # [B, L, D] text embeddings per view
    uncond: torch.Tensor,  # [B, L, D]
    t_range: tuple[int, int],  # inclusive bounds of t
    views: ViewBatch,
    settings: GuidanceSettings,
    generator: torch.Generator,
    debug: bool = False,
) -> Distilled:
    batch = renders.shape[0]
    assert renders.dim() == 4 and renders.shape[-1] == 3, f"renders must be [B, H, W, 3], got {tuple(renders.shape)}"
    assert cond.shape[0] == uncond.shape[0] == batch, f"cond {tuple(cond.shape)}, uncond {tuple(uncond.shape)} for {batch} renders"
    images = prior.prepare(renders)  # [B, 3, R, R]
    x = prior.encode(images)  # [B, C, h, w]
    t = t_range[0] + randint_rows(t_range[1] + 1 - t_range[0], (batch,), generator, prior.device)  # per view: a rank's share (renderers.shards)
    alpha_bar = prior.alphas_cumprod[t]  # [B]
    noise = randn_rows(x.shape, generator, x.device)
    with torch.no_grad():
        x_t = add_noise(x.detach(), noise, alpha_bar)
        eps_uncond, eps_cond = prior.predict_noise(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([uncond, cond]), views).chunk(2)
        eps = classifier_free_guidance(eps_uncond, eps_cond, settings.scale, settings.form)
        x0 = predicted_x0(x_t, eps, alpha_bar)
    image_target = prior.space == "latent" and settings.loss_space == "image"
    if image_target:
        target = prior.decode(x0)  # [B, 3, R, R]
        lam = l2_weight(settings.weighting, alpha_bar).view(-1, 1, 1, 1)
        loss = sds_loss(images, lam * (images - target), settings.grad_clip)
    else:
        w = sds_weight(settings.weighting, alpha_bar).view(-1, 1, 1, 1)
        loss = sds_loss(x, w * (eps - noise), settings.grad_clip)
    result = Distilled(loss, t)
    if debug:
        with torch.no_grad():
            result.renders, result.noisy = images.detach(), prior.decode(x_t)
            result.x0 = target if image_target else prior.decode(x0)
    return result
