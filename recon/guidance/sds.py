"""Score distillation written as an L2 loss toward the one-step denoised image (StableDreamer §3).

Notation (DDPM, diffusers): ā_t = alphas_cumprod[t], a_t = √ā_t, s_t = √(1 − ā_t); x is the render
(pixel models) or its latent. x_t = a_t·x + s_t·ε and x̂₀ = (x_t − s_t·ε̂)/a_t, so
x − x̂₀ = (s_t/a_t)(ε̂ − ε): the SDS gradient w(t)(ε̂ − ε) is the gradient of
½·λ(t)·‖x − sg(x̂₀)‖² with λ(t) = w(t)·a_t/s_t, for the same (t, ε).
"""
from __future__ import annotations

import torch

WEIGHTINGS = ("dreamfusion", "uniform", "fantasia3d", "l2")  # w(t): 1 − ā, 1, √ā(1 − ā), √((1 − ā)/ā)


def _per_sample(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[B] → [B, 1, …] broadcastable against `like` [B, …]."""
    return value.view(-1, *([1] * (like.dim() - 1)))


def add_noise(x: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_t = √ā·x + √(1 − ā)·ε for x, noise [B, …] and ā [B]."""
    assert x.shape == noise.shape and alpha_bar.shape == (x.shape[0],), f"x {tuple(x.shape)}, noise {tuple(noise.shape)}, ā {tuple(alpha_bar.shape)}"
    return _per_sample(alpha_bar.sqrt(), x) * x + _per_sample((1 - alpha_bar).sqrt(), x) * noise


def v_to_epsilon(v: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """ε̂ = a_t·v̂ + s_t·x_t for v-prediction models (e.g. SD 2.1 at 768 px)."""
    return _per_sample(alpha_bar.sqrt(), v) * v + _per_sample((1 - alpha_bar).sqrt(), v) * x_t


def classifier_free_guidance(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float, form: str = "standard") -> torch.Tensor:
    """"standard": ε_u + s(ε_c − ε_u) (diffusers, DreamGaussian, LucidDreamer);
    "threestudio": ε_c + s(ε_c − ε_u), the standard form at scale s + 1."""
    if form == "standard":
        return eps_uncond + scale * (eps_cond - eps_uncond)
    if form == "threestudio":
        return eps_cond + scale * (eps_cond - eps_uncond)
    raise ValueError(f"guidance form must be 'standard' or 'threestudio', got {form!r}")


def predicted_x0(x_t: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """The one-step denoised x̂₀ = (x_t − s_t·ε̂)/a_t."""
    return (x_t - _per_sample((1 - alpha_bar).sqrt(), x_t) * eps) / _per_sample(alpha_bar.sqrt(), x_t)


def sds_weight(kind: str, alpha_bar: torch.Tensor) -> torch.Tensor:
    """w(t) [B] of the SDS gradient w(t)(ε̂ − ε)."""
    if kind == "dreamfusion":
        return 1 - alpha_bar
    if kind == "uniform":
        return torch.ones_like(alpha_bar)
    if kind == "fantasia3d":
        return alpha_bar.sqrt() * (1 - alpha_bar)
    if kind == "l2":
        return ((1 - alpha_bar) / alpha_bar).sqrt()
    raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {kind!r}")


def l2_weight(kind: str, alpha_bar: torch.Tensor) -> torch.Tensor:
    """λ(t) = w(t)·a_t/s_t [B]: the weight of ½‖x − sg(x̂₀)‖² with the same gradient as SDS."""
    return sds_weight(kind, alpha_bar) * (alpha_bar / (1 - alpha_bar)).sqrt()


def sds_loss(x: torch.Tensor, gradient: torch.Tensor, clip: float = 0.0) -> torch.Tensor:
    """The reparameterised SDS loss ½‖x − sg(x − g)‖² / B, whose gradient with respect to x is g/B.

    gradient g [B, …] = w(t)(ε̂ − ε) or λ(t)(x − x̂₀); non-finite entries are zeroed and, with
    clip > 0, the rest clamped to ±clip (threestudio's gradient hygiene)."""
    assert gradient.shape == x.shape, f"gradient {tuple(gradient.shape)} for x {tuple(x.shape)}"
    g = torch.nan_to_num(gradient.detach(), nan=0.0, posinf=0.0, neginf=0.0)
    if clip > 0:
        g = g.clamp(-clip, clip)
    target = (x - g).detach()
    return 0.5 * ((x - target) ** 2).sum() / x.shape[0]
