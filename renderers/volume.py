"""Volume rendering: per-sample weights from densities, and compositing along rays.

`render_weights` calls nerfacc (its dense path runs on any device); `render_weights_reference`
is the plain formula the tests hold it to:
    α_i = 1 − exp(−σ_i δ_i),  T_i = Π_{j<i} (1 − α_j),  w_i = T_i α_i.
"""
from __future__ import annotations

import nerfacc
import torch


def render_weights(
    t_starts: torch.Tensor,  # [R, S]
    t_ends: torch.Tensor,  # [R, S]
    sigmas: torch.Tensor,  # [R, S] non-negative densities
) -> torch.Tensor:
    """[R, S] compositing weights (sum ≤ 1 along each ray)."""
    assert t_starts.shape == t_ends.shape == sigmas.shape, "t_starts, t_ends, sigmas must all be [R, S]"
    weights, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, sigmas)
    return weights


def render_weights_reference(t_starts: torch.Tensor, t_ends: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    alphas = 1.0 - torch.exp(-sigmas * (t_ends - t_starts))
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alphas[:, :1]), 1.0 - alphas[:, :-1]], -1), -1)
    return transmittance * alphas


def composite(
    weights: torch.Tensor,  # [R, S]
    rgbs: torch.Tensor,  # [R, S, 3]
    mids: torch.Tensor,  # [R, S] interval midpoints
    background: torch.Tensor | None = None,  # [3] or [R, 3]
) -> dict[str, torch.Tensor]:
    """Colour [R, 3] (over `background`), opacity [R, 1] and expected depth [R, 1].

    Depth is the weight-normalised mean t, so a lone surface reads at its true depth whatever
    its opacity; rays that hit nothing get depth 0.
    """
    assert rgbs.shape == weights.shape + (3,), f"rgbs {tuple(rgbs.shape)} vs weights {tuple(weights.shape)}"
    opacity = weights.sum(-1, keepdim=True)
    rgb = (weights[..., None] * rgbs).sum(-2)
    if background is not None:
        rgb = rgb + (1.0 - opacity) * background
    depth = (weights * mids).sum(-1, keepdim=True) / opacity.clamp_min(1e-10)
    return {"rgb": rgb, "opacity": opacity, "depth": depth}


@torch.no_grad()
def visible_samples(
    t_starts: torch.Tensor,  # [R, S]
    t_ends: torch.Tensor,  # [R, S]
    sigmas: torch.Tensor,  # [R, S]
    min_transmittance: float = 1e-4,
) -> torch.Tensor:
    """[R, S] bool: samples whose transmittance is still above `min_transmittance` (early ray
    termination: samples behind an opaque surface cannot change the colour)."""
    _, transmittance, _ = nerfacc.render_weight_from_density(t_starts, t_ends, sigmas)
    return transmittance > min_transmittance


def render_weights_from_alpha(alphas: torch.Tensor) -> torch.Tensor:
    """[R, S] compositing weights w_i = α_i Π_{j<i} (1 − α_j) from opacities α [R, S] in [0, 1]."""
    assert alphas.dim() == 2, f"alphas must be [R, S], got {tuple(alphas.shape)}"
    weights, _ = nerfacc.render_weight_from_alpha(alphas)
    return weights
