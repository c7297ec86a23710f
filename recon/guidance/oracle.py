"""The exact noise predictor for a known target: a prior whose score distillation must rebuild a
given object, so the whole text-to-3D loop is tested (and its settings compared) without weights.

The target is a 3DGS .ply, rendered from the very cameras of the batch (`ViewBatch`) onto the
batch's backgrounds. For a delta distribution at the target x*, the Bayes-optimal predictor is
ε̂ = (x_t − a_t·x*)/s_t, so x̂₀ = x* and the SDS gradient is λ(t)(x − x*) (method card, "Oracle").

Prompts: a non-empty prompt is conditional (the delta at x*); the empty prompt is unconditional,
the posterior mean of an equal mixture of x* and the background alone (an empty scene). Under
CFG the target is x̂₀_u + s(x* − x̂₀_u): distillation moves toward the object; swapping the prompts
moves away from it.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from recon.export import read_ply
from recon.guidance.priors import DiffusionPrior, ViewBatch
from renderers.splatting import rasterization


def scaled_linear_alphas_cumprod(num_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """[T] ā_t of Stable Diffusion's "scaled_linear" β schedule."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


class OraclePrior(DiffusionPrior):
    space = "pixel"

    def __init__(self, target: str | Path, device: torch.device | str, resolution: int, backend: str = "auto") -> None:
        self.device = torch.device(device)
        self.resolution = resolution
        self.backend = backend
        self.key = f"oracle:{Path(target).resolve()}"
        self.target = {name: value.float().to(self.device) for name, value in read_ply(target).items()}
        self.sh_degree = int(round(math.sqrt(self.target["shN"].shape[1] + 1))) - 1
        self.alphas_cumprod = scaled_linear_alphas_cumprod().to(self.device)

    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """[P, 1, 1]: 1 for a (conditional) non-empty prompt, 0 for the empty one."""
        return torch.tensor([float(bool(p.strip())) for p in prompts], device=self.device).view(-1, 1, 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images * 2 - 1

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return ((x + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def render_target(self, views: ViewBatch) -> torch.Tensor:
        """[B, H, W, 3] the target object from the batch's cameras, on the batch's backgrounds."""
        g = self.target
        rgb, alpha, _ = rasterization(
            g["means"], g["quats"], torch.exp(g["scales"]), torch.sigmoid(g["opacities"]), (g["sh0"], g["shN"]),
            torch.linalg.inv(views.c2w.to(self.device)), views.K.to(self.device), views.width, views.height,
            sh_degree=self.sh_degree, backend=self.backend,
        )
        return rgb + (1 - alpha) * views.background.to(self.device)

    @torch.no_grad()
    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor, views: ViewBatch) -> torch.Tensor:
        batch = views.K.shape[0]
        assert x_t.shape[0] % batch == 0 and embeddings.shape[0] == x_t.shape[0], f"x_t {tuple(x_t.shape)}, embeddings {tuple(embeddings.shape)}, {batch} views"
        repeats = x_t.shape[0] // batch  # 2 under classifier-free guidance
        target = self.encode(self.prepare(self.render_target(views))).repeat(repeats, 1, 1, 1)  # [B', 3, R, R]
        empty = self.encode(self.prepare(views.background.to(self.device))).repeat(repeats, 1, 1, 1)
        ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        a, s = ab.sqrt(), (1 - ab).sqrt()
        # posterior weight of the target in the {target, empty} mixture, from the two Gaussian likelihoods
        log_odds = (((x_t - a * empty) ** 2).flatten(1).sum(1) - ((x_t - a * target) ** 2).flatten(1).sum(1)) / (2 * s.flatten() ** 2)
        mixture = empty + torch.sigmoid(log_odds).view(-1, 1, 1, 1) * (target - empty)
        conditional = embeddings.flatten(1)[:, :1].view(-1, 1, 1, 1)  # 1 or 0
        x0 = conditional * target + (1 - conditional) * mixture
        return (x_t - a * x0) / s
