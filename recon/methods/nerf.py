"""NeRF: the classic coarse-to-fine model (the reference for ProNeRF) and a CPU-friendly `fast` preset.

default: positional encoding + 8×256 MLP, 64 stratified coarse + 128 importance fine samples,
         separate coarse and fine networks, loss on both (Mildenhall et al. 2020).
fast:    Instant-NGP-style: hash-grid field, 128 samples per ray of which only those in occupied
         cells of an occupancy grid and in front of opaque surfaces are shaded.

Forward-facing (NDC) scenes, where `fast` once trained a grey fog (colour head saturated, ~45
shaded samples per ray):
- density is per unit of length in the space the field lives in, as in NeRF's reference code: an
  interval [t0, t1] of a ray with direction d is (t1 − t0)·|d| long. In world space |d| ≈ 1 (t is
  z-depth); NDC rays cross ≥ 2 units while t goes 0 → 1, and measured in t a fresh field
  (σ = e⁰ = 1) let most of the white background through, which drove the colour logits into the
  sigmoid's flat tail within ~10 steps, never to return;
- the field's box is the box of every camera's NDC rays (`ndc_bounds`), not [-1, 1]³, which cut
  off the borders of off-centre views;
- a cell is empty while σ·Δ < 0.01 for Instant-NGP's fine step Δ = box diagonal / 1024, not the
  8× longer spacing of our 128 samples, which let the untrained fog in front of the surfaces
  (σ ≈ 1 per NDC unit) count as occupied for good.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from data import Scene
from recon import distributed
from recon.fields.radiance import HashGridField, MLPField
from recon.methods.base import COUNT, FRACTION, NON_NEGATIVE, POSITIVE, Between, Method, TrainConfig
from renderers.cameras import Rays, field_bounds, image_rays
from renderers.samplers import OccupancyGrid, PDFSampler, RaySamples, StratifiedSampler
from renderers.volume import composite, render_weights, visible_samples


@dataclass
class NerfConfig(TrainConfig):
    limits: ClassVar = {
        "field": ("mlp", "hashgrid"), "spacing": ("linear", "disparity"),
        "pos_freqs": NON_NEGATIVE, "dir_freqs": NON_NEGATIVE, "hidden_dim": COUNT, "num_layers": Between(2),
        "hash_levels": COUNT, "hash_log2_size": Between(1, 30), "hash_base_resolution": COUNT, "hash_max_resolution": COUNT,
        "hash_hidden_dim": COUNT, "num_coarse": COUNT, "num_fine": NON_NEGATIVE, "grid_resolution": COUNT,
        "grid_update_every": COUNT, "grid_decay": FRACTION, "grid_march_steps": COUNT, "rays_per_batch": COUNT, "lr": POSITIVE, "lr_final": POSITIVE,
        "render_chunk": COUNT,
    }
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
    num_coarse: int = 64  # stratified samples per ray
    num_fine: int = 128  # importance samples per ray (0: coarse only)
    spacing: str = "linear"  # coarse spacing: "linear" or "disparity"
    occupancy_grid: bool = False  # skip samples in empty cells and behind opaque ones (with num_fine = 0)
    grid_resolution: int = 64  # occupancy grid cells per axis
    grid_update_every: int = 8  # steps between occupancy updates (every cell during the first 256 steps)
    grid_decay: float = 0.8  # per-update decay of a cell's remembered density (lower forgets faster)
    grid_march_steps: int = 1024  # a cell is empty while σ·(box diagonal / this) < 0.01 (Instant-NGP: √3/1024 in its unit cube)
    rays_per_batch: int = 1024  # rays per training step
    lr: float = 5e-4  # initial Adam learning rate
    lr_final: float = 5e-5  # learning rate at max_steps (exponential decay)
    render_chunk: int = 4096  # rays per chunk when rendering whole images


PRESETS = {
    "default": NerfConfig(),
    "fast": NerfConfig(
        max_steps=2000,
        field="hashgrid",
        hash_levels=8,
        hash_log2_size=17,
        hash_max_resolution=512,
        occupancy_grid=True,
        num_coarse=128,
        num_fine=0,
        rays_per_batch=2048,
        lr=1e-2,
        lr_final=5e-4,
        eval_every=250,
        checkpoint_every=250,
    ),
}


class Nerf(Method):
    name = "nerf"
    Config = NerfConfig
    presets = PRESETS

    def __init__(self, config: NerfConfig, scene: Scene, device: torch.device | str | None = None) -> None:
        super().__init__(config, scene, device)
        self.fine = self._make_field()
        self.coarse = self._make_field() if config.num_fine > 0 else None
        self.coarse_sampler = StratifiedSampler(config.num_coarse, config.spacing)
        self.fine_sampler = PDFSampler(config.num_fine)  # shades the union of coarse and fine samples
        self.grid = None
        if config.occupancy_grid:
            if config.num_fine:
                raise ValueError("occupancy_grid needs num_fine=0 (it replaces importance sampling)")
            aabb = field_bounds(self.scene)
            step = float((aabb[1] - aabb[0]).norm()) / config.grid_march_steps  # Instant-NGP's fine marching step
            self.grid = OccupancyGrid(aabb, config.grid_resolution, step_size=step, decay=config.grid_decay)
        self.register_buffer("background", torch.tensor(scene.background, dtype=torch.float32))
        self.generator = distributed.generator(config.seed, self.device)
        self.to(self.device)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=config.lr, eps=1e-15 if config.field == "hashgrid" else 1e-8)
        gamma = (config.lr_final / config.lr) ** (1.0 / max(config.max_steps, 1))
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma)

    def _make_field(self) -> torch.nn.Module:
        c = self.config
        if c.field == "mlp":
            return MLPField(c.pos_freqs, c.dir_freqs, c.hidden_dim, c.num_layers)
        if c.field == "hashgrid":
            return HashGridField.from_config(field_bounds(self.scene), c)
        raise ValueError(f"field must be 'mlp' or 'hashgrid', got {c.field!r}")

    @staticmethod
    def _lengths(rays: Rays, samples: RaySamples) -> tuple[torch.Tensor, torch.Tensor]:
        """Interval starts and ends [R, S] measured in length along the ray (t·|d|), what σ integrates over."""
        scale = rays.directions.norm(dim=-1, keepdim=True)
        return samples.starts * scale, samples.ends * scale

    # ---- rendering -------------------------------------------------------------------------
    def render_rays(self, rays: Rays, perturb: bool) -> dict[str, torch.Tensor]:
        """Colour [R, 3], depth [R, 1], opacity [R, 1] (and "rgb_coarse" with a coarse network)."""
        generator = self.generator if perturb else None
        samples = self.coarse_sampler(rays, perturb=perturb, generator=generator)
        if self.grid is not None:
            return self._march(rays, samples)
        if self.coarse is None:
            return self._shade(self.fine, rays, samples)
        coarse = self._shade(self.coarse, rays, samples)
        fine_samples = self.fine_sampler(rays, perturb=perturb, samples=samples, weights=coarse["weights"], generator=generator)
        return {**self._shade(self.fine, rays, fine_samples), "rgb_coarse": coarse["rgb"]}

    def _shade(self, field: torch.nn.Module, rays: Rays, samples: RaySamples) -> dict[str, torch.Tensor]:
        num_rays, num_samples = samples.starts.shape
        positions = samples.positions(rays).reshape(-1, 3)
        viewdirs = rays.viewdirs[:, None, :].expand(-1, num_samples, -1).reshape(-1, 3)
        sigmas, rgbs = field(positions, viewdirs)
        weights = render_weights(*self._lengths(rays, samples), sigmas.view(num_rays, num_samples))
        result = composite(weights, rgbs.view(num_rays, num_samples, 3), samples.mids, self.background)
        result["weights"] = weights
        return result

    def _march(self, rays: Rays, samples: RaySamples) -> dict[str, torch.Tensor]:
        """Shade only samples in occupied cells that are not hidden behind opaque ones."""
        num_rays, num_samples = samples.starts.shape
        positions = samples.positions(rays)  # [R, S, 3]
        keep = self.grid.query(positions)  # [R, S]
        starts, ends = self._lengths(rays, samples)
        with torch.no_grad():
            sigmas = positions.new_zeros(num_rays, num_samples).masked_scatter(keep, self.fine.density(positions[keep]))
            keep &= visible_samples(starts, ends, sigmas)
        viewdirs = rays.viewdirs[:, None, :].expand(-1, num_samples, -1)
        sigma, rgb = self.fine(positions[keep], viewdirs[keep])  # [K], [K, 3]
        sigmas = positions.new_zeros(num_rays, num_samples).masked_scatter(keep, sigma)
        rgbs = positions.new_zeros(num_rays, num_samples, 3).masked_scatter(keep[..., None].expand(-1, -1, 3), rgb)
        weights = render_weights(starts, ends, sigmas)
        result = composite(weights, rgbs, samples.mids, self.background)
        result["samples_per_ray"] = keep.sum(-1).float()
        return result

    @torch.no_grad()
    def render_view(self, K: torch.Tensor, c2w: torch.Tensor, width: int, height: int) -> dict[str, torch.Tensor]:
        K, c2w = K.to(self.device), c2w.to(self.device)
        rays = image_rays(K, c2w, width, height, self.scene.near, self.scene.far, ndc=self.scene.ndc)
        chunks = [self.render_rays(rays[i : i + self.config.render_chunk], perturb=False) for i in range(0, len(rays), self.config.render_chunk)]
        return self.assemble_image(chunks, height, width)

    # ---- training --------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        if self.grid is not None and step % self.config.grid_update_every == 0:
            self.grid.update(self.fine.density, all_cells=step < 256, generator=self.generator)
        rays, target, _ = self.sample_training_rays(self.config.rays_per_batch, self.generator)
        out = self.render_rays(rays, perturb=True)
        mse = F.mse_loss(out["rgb"], target)
        loss = mse + F.mse_loss(out["rgb_coarse"], target) if "rgb_coarse" in out else mse
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.optimizer.step()
        self.scheduler.step()
        stats = {"loss": loss.item(), "psnr": -10.0 * math.log10(max(mse.item(), 1e-10)), "rays": len(rays)}
        if "samples_per_ray" in out:
            stats["samples_per_ray"] = out["samples_per_ray"].mean().item()
        return stats

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

