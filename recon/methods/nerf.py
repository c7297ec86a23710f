"""NeRF: the classic coarse-to-fine model (the reference for ProNeRF) and a CPU-friendly `fast` preset.

default: positional encoding + 8×256 MLP, 64 stratified coarse + 128 importance fine samples,
         separate coarse and fine networks, loss on both (Mildenhall et al. 2020).
fast:    hash-grid field; one network marches 64 density-only samples without gradient, then
         shades 32 importance samples with gradient (proposal-style resampling from itself).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from data import Scene
from recon.fields.radiance import HashGridField, MLPField
from recon.methods.base import Method, TrainConfig
from renderers.cameras import Rays, image_rays, make_rays, pixel_rays
from renderers.samplers import PDFSampler, RaySamples, StratifiedSampler
from renderers.volume import composite, render_weights


@dataclass
class NerfConfig(TrainConfig):
    max_steps: int = 200_000
    field: str = "mlp"  # "mlp" (positional encoding + MLP) or "hashgrid"
    pos_freqs: int = 10  # mlp field: position encoding frequencies
    dir_freqs: int = 4  # view-direction encoding frequencies
    hidden_dim: int = 256  # mlp field width
    num_layers: int = 8  # mlp field depth
    hash_levels: int = 16  # hashgrid field: resolution levels
    hash_log2_size: int = 19  # hashgrid field: log2 of the table size per level
    hash_base_resolution: int = 16
    hash_max_resolution: int = 1024
    hash_hidden_dim: int = 64  # hashgrid field: width of its small MLPs
    shared_coarse: bool = False  # one field for both passes; the coarse pass is density-only, no gradient
    num_coarse: int = 64  # stratified samples per ray
    num_fine: int = 128  # importance samples per ray (0: coarse only)
    spacing: str = "linear"  # coarse spacing: "linear" or "disparity"
    rays_per_batch: int = 1024  # rays per training step
    lr: float = 5e-4  # initial Adam learning rate
    lr_final: float = 5e-5  # learning rate at max_steps (exponential decay)
    render_chunk: int = 4096  # rays per chunk when rendering whole images


PRESETS = {
    "default": NerfConfig(),
    "fast": NerfConfig(
        max_steps=3000,
        field="hashgrid",
        shared_coarse=True,
        num_coarse=64,
        num_fine=32,
        rays_per_batch=2048,
        lr=1e-2,
        lr_final=5e-4,
        eval_every=500,
        checkpoint_every=500,
    ),
}


class Nerf(Method):
    name = "nerf"
    Config = NerfConfig
    presets = PRESETS

    def __init__(self, config: NerfConfig, scene: Scene) -> None:
        super().__init__(config, scene)
        self.fine = self._make_field()
        self.coarse = None if config.shared_coarse or config.num_fine == 0 else self._make_field()
        self.coarse_sampler = StratifiedSampler(config.num_coarse, config.spacing)
        # Classic NeRF shades the union of coarse and fine samples; with a shared field the
        # density-only coarse pass is a proposal, so only the importance samples are shaded.
        self.fine_sampler = PDFSampler(config.num_fine, include_input=self.coarse is not None)
        self.register_buffer("background", torch.tensor(scene.background, dtype=torch.float32))
        self.generator = torch.Generator().manual_seed(config.seed)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=config.lr, eps=1e-15 if config.field == "hashgrid" else 1e-8)
        gamma = (config.lr_final / config.lr) ** (1.0 / max(config.max_steps, 1))
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma)
        train = scene.split("train")
        self.train_images = scene.images[train]  # [T, H, W, 3]
        self.train_K, self.train_c2w = scene.K[train], scene.c2w[train]

    def _make_field(self) -> torch.nn.Module:
        c = self.config
        if c.field == "mlp":
            return MLPField(c.pos_freqs, c.dir_freqs, c.hidden_dim, c.num_layers)
        if c.field == "hashgrid":
            aabb = torch.tensor([[-1.0] * 3, [1.0] * 3]) if self.scene.ndc else self.scene.bounds
            return HashGridField(aabb, c.hash_levels, c.hash_log2_size, c.hash_base_resolution, c.hash_max_resolution, c.hash_hidden_dim, dir_freqs=c.dir_freqs)
        raise ValueError(f"field must be 'mlp' or 'hashgrid', got {c.field!r}")

    # ---- rendering -------------------------------------------------------------------------
    def render_rays(self, rays: Rays, perturb: bool) -> dict[str, torch.Tensor]:
        """Colour [R, 3], depth [R, 1], opacity [R, 1] (and "rgb_coarse" with a coarse network)."""
        generator = self.generator if perturb else None
        samples = self.coarse_sampler(rays, perturb=perturb, generator=generator)
        outputs: dict[str, torch.Tensor] = {}
        if self.config.num_fine == 0:
            return self._shade(self.fine, rays, samples)
        if self.coarse is None:
            with torch.no_grad():
                sigmas = self.fine.density(samples.positions(rays).reshape(-1, 3)).view(len(rays), -1)
                weights = render_weights(samples.starts, samples.ends, sigmas)
        else:
            coarse = self._shade(self.coarse, rays, samples)
            weights = coarse.pop("weights")
            outputs["rgb_coarse"] = coarse["rgb"]
        fine_samples = self.fine_sampler(rays, perturb=perturb, samples=samples, weights=weights, generator=generator)
        outputs.update(self._shade(self.fine, rays, fine_samples))
        return outputs

    def _shade(self, field: torch.nn.Module, rays: Rays, samples: RaySamples) -> dict[str, torch.Tensor]:
        num_rays, num_samples = samples.starts.shape
        positions = samples.positions(rays).reshape(-1, 3)
        viewdirs = rays.viewdirs[:, None, :].expand(-1, num_samples, -1).reshape(-1, 3)
        sigmas, rgbs = field(positions, viewdirs)
        weights = render_weights(samples.starts, samples.ends, sigmas.view(num_rays, num_samples))
        result = composite(weights, rgbs.view(num_rays, num_samples, 3), samples.mids, self.background)
        result["weights"] = weights
        return result

    @torch.no_grad()
    def render_view(self, K: torch.Tensor, c2w: torch.Tensor, width: int, height: int) -> dict[str, torch.Tensor]:
        rays = image_rays(K, c2w, width, height, self.scene.near, self.scene.far, ndc=self.scene.ndc)
        chunks = [self.render_rays(rays[i : i + self.config.render_chunk], perturb=False) for i in range(0, len(rays), self.config.render_chunk)]
        rgb = torch.cat([c["rgb"] for c in chunks]).view(height, width, 3)
        depth = torch.cat([c["depth"] for c in chunks]).view(height, width)
        opacity = torch.cat([c["opacity"] for c in chunks]).view(height, width)
        return {"rgb": rgb.clamp(0, 1), "depth": depth, "opacity": opacity}

    # ---- training --------------------------------------------------------------------------
    def sample_training_rays(self) -> tuple[Rays, torch.Tensor]:
        """A random batch of training rays and their target colours [R, 3]."""
        t, h, w, _ = self.train_images.shape
        n = self.config.rays_per_batch
        cam = torch.randint(0, t, (n,), generator=self.generator)
        u = torch.randint(0, w, (n,), generator=self.generator)
        v = torch.randint(0, h, (n,), generator=self.generator)
        origins, directions = pixel_rays(self.train_K[cam], self.train_c2w[cam], u, v)
        ndc_K = self.train_K[cam] if self.scene.ndc else None
        rays = make_rays(origins, directions, self.scene.near, self.scene.far, ndc_K, w, h)
        return rays, self.train_images[cam, v, u]

    def train_step(self, step: int) -> dict[str, float]:
        rays, target = self.sample_training_rays()
        out = self.render_rays(rays, perturb=True)
        mse = F.mse_loss(out["rgb"], target)
        loss = mse + F.mse_loss(out["rgb_coarse"], target) if "rgb_coarse" in out else mse
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return {"loss": float(loss), "psnr": -10.0 * math.log10(max(float(mse), 1e-10)), "rays": len(rays)}

    def training_state(self) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_training_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])

