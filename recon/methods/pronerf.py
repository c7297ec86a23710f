"""ProNeRF: projection-aware sampling (PAS) in front of a NeRF-sized MLP, trained with alternating
exploration/exploitation steps (Bello, Bui, Kim, IEEE Access 2024). Method card: ../shared/notes/pronerf.md.

Per ray:
1. coarse sampler (MLP on the ray's Plücker coordinates) → N sorted depths t in [near, far], a
   density offset a and multiplier m per sample, an auxiliary ray colour c_mm;
2. the depths are lifted to world points and projected into V source views (while training,
   random ones among the other training views — in near/far scenes only among the 20 nearest,
   as the official Blender scripts draw them; the nearest training cameras when rendering); bilinear
   colours, invalid projections replaced by the mean of the valid ones; no gradient;
3. fine sampler (Plücker, the coarse depths, the projected colours) → refined depth t' inside
   each sample's own cell, a small 3D offset, a second auxiliary colour c_f;
4. the shading MLP at the N points x = o + t'·d + s·tanh(Δ), composited with
   α = clamp((1 − exp(−relu(σ + a)·δ))·relu(m), 0, 1).

Training: stage 1 alternates exploitation steps (even; every network learns; image loss plus the
two auxiliary colour losses) and exploration steps (odd; samplers frozen, their samples densified
and jittered, density noise, plain α, only the shading MLP learns); stage 2 trains all networks
jointly with jittered samples and density noise, image loss only.

Deliberate differences from the official code:
- α is clamped to [0, 1]; the last interval ends at `far` (t = 1 is infinity in NDC), not 1e10.
- The fine sampler also gets the coarse depths: its per-point Plücker inputs are identical along
  a ray, so it would otherwise know where the samples are only through their colours.
- The samplers start with depths spread evenly over [near, far] and m ≈ 1; their raw outputs are
  clamped to ±raw_clamp in every stage (the official code clamps in stage 1).
- Stage 2 continues with the stage-1 joint Adam (moments kept) instead of a fresh one, whose
  first uniform-size steps collapsed the samplers on short CPU schedules.
- A non-finite loss or gradient skips the update instead of stopping at a breakpoint.
- Blender scenes use the Plücker input too (the official scripts feed 49 raw points) and no
  density noise by default, as nerf-pytorch's Blender configs: with 8–12 samples ~0.4 units
  apart, N(0, 1) noise on σ swamped the signal and stalled learning.
- `field = "hashgrid"` (an option, not the paper's) shades with the Instant-NGP-style field NeRF's
  `fast` preset uses. On 2 CPU cores it is the shading MLP, not the sampler, that holds ProNeRF
  back in 360° scenes: a trained `fast` model scores 21.1 dB with its 8 proposed samples but
  18.9 dB with 128 uniform ones through the same MLP; the hash grid reaches 22.2 dB in the same
  steps. Its σ is already non-negative (exp); a and m act on it unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from data import Scene
from recon import distributed
from recon.fields.encodings import PositionalEncoding
from recon.fields.mlp import MLP
from recon.fields.radiance import HashGridField
from recon.methods.base import COUNT, NON_NEGATIVE, POSITIVE, Between, Method, TrainConfig
from renderers.cameras import Rays, field_bounds, image_rays
from renderers.projection import fetch_colors, ndc_to_world, plucker, project_to_views
from renderers.samplers import densify_samples, jitter_samples, sample_cells
from renderers.shards import rand_rows, randn_rows
from renderers.volume import composite, render_weights_from_alpha


@dataclass
class ProNeRFConfig(TrainConfig):
    limits: ClassVar = {
        "stage1_steps": NON_NEGATIVE, "num_samples": Between(2), "num_source_views": COUNT, "source_pool_ndc": NON_NEGATIVE,
        "source_pool_world": NON_NEGATIVE, "plucker_freqs": NON_NEGATIVE,
        "sampler_width": COUNT, "sampler_layers": COUNT, "pos_freqs": NON_NEGATIVE, "dir_freqs": NON_NEGATIVE,
        "hidden_dim": COUNT, "num_layers": COUNT, "field": ("mlp", "hashgrid"), "hash_levels": COUNT,
        "hash_log2_size": Between(1, 30), "hash_base_resolution": COUNT, "hash_max_resolution": COUNT, "hash_hidden_dim": COUNT,
        "offset_ndc": NON_NEGATIVE, "offset_world": NON_NEGATIVE,
        "explore_max_samples": COUNT, "jitter_scale": NON_NEGATIVE, "density_noise_ndc": NON_NEGATIVE,
        "density_noise_world": NON_NEGATIVE, "raw_clamp": POSITIVE, "rays_per_batch": COUNT, "lr_stage1": POSITIVE,
        "lr_stage1_decay_steps": COUNT, "lr_stage2": POSITIVE, "lr_stage2_decay_steps": COUNT, "render_chunk": COUNT,
    }
    max_steps: int = 1_000_000  # stage 1 and stage 2 together
    stage1_steps: int = 500_000  # alternating exploitation/exploration steps; the rest is stage 2 (joint)
    num_samples: int = 12  # N: shaded samples per ray (the paper's ProNeRF-8 / ProNeRF-12)
    num_source_views: int = 4  # V: training views the coarse samples are projected into
    source_pool_ndc: int = 0  # training draws the V views from this many nearest training cameras, NDC scenes (0: all)
    source_pool_world: int = 20  # the same for near/far scenes (the official Blender scripts: 4 of the 20 nearest)
    plucker_freqs: int = 0  # sampler input: positional-encoding frequencies of the 6-D Plücker ray (0: raw)
    sampler_width: int = 256  # width of both sampler MLPs
    sampler_layers: int = 6  # hidden ELU layers of each sampler MLP
    pos_freqs: int = 10  # shading MLP: position encoding frequencies
    dir_freqs: int = 4  # shading MLP: view-direction encoding frequencies
    field: str = "mlp"  # shading field: "mlp" (the paper's NeRF MLP) or "hashgrid" (Instant-NGP-style, CPU presets)
    hidden_dim: int = 256  # mlp field: width
    num_layers: int = 8  # mlp field: depth (ReLU, no skip; colour from one layer on trunk + view)
    hash_levels: int = 8  # hashgrid field: resolution levels
    hash_log2_size: int = 17  # hashgrid field: log2 of the table size per level
    hash_base_resolution: int = 16  # hashgrid field: coarsest grid resolution
    hash_max_resolution: int = 512  # hashgrid field: finest grid resolution
    hash_hidden_dim: int = 64  # hashgrid field: width of its two small MLPs
    offset_ndc: float = 0.01  # s: bound of the per-axis 3D sample offset in NDC scenes (LLFF)
    offset_world: float = 0.04  # s: the same in world units for near/far scenes (Blender)
    explore_max_samples: int = 64  # exploration: samples are replicated n ~ U{1..this/N} times
    jitter_scale: float = 0.2  # jitter: a sample moves min(|N(0,1)|·this, 0.99) of the gap to the next
    density_noise_ndc: float = 1.0  # std of the noise on raw σ in exploration and stage-2 steps, NDC scenes
    density_noise_world: float = 0.0  # the same for near/far scenes (nerf-pytorch: 1 for LLFF, 0 for Blender)
    raw_clamp: float = 10.0  # sampler raw outputs are clamped to ±this
    rays_per_batch: int = 4096  # rays per training step
    lr_stage1: float = 5e-4  # stage-1 initial Adam learning rate
    lr_stage1_decay_steps: int = 500_000  # stage-1 learning rate ×0.1 every this many steps
    lr_stage2: float = 3e-4  # stage-2 initial learning rate
    lr_stage2_decay_steps: int = 250_000  # stage-2 learning rate ×0.1 every this many stage-2 steps
    render_chunk: int = 4096  # rays per chunk when rendering whole images


PRESETS = {
    "default": ProNeRFConfig(),
    "fast": ProNeRFConfig(
        max_steps=3000,
        stage1_steps=2000,
        num_samples=8,
        sampler_width=128,
        sampler_layers=4,
        hidden_dim=128,
        num_layers=4,
        rays_per_batch=1024,
        lr_stage1=1e-3,
        lr_stage1_decay_steps=4000,
        lr_stage2=6e-4,
        lr_stage2_decay_steps=2000,
        eval_every=500,
        checkpoint_every=500,
    ),
}


class ShadingField(nn.Module):
    """The NeRF evaluated at the refined samples: PE(x) → ReLU trunk → raw σ; trunk + PE(d) → RGB
    through one linear layer (DoNeRF-style, as the card infers for the paper's numbers)."""

    def __init__(self, pos_freqs: int, dir_freqs: int, width: int, layers: int) -> None:
        super().__init__()
        self.pos_encoding = PositionalEncoding(3, pos_freqs)
        self.dir_encoding = PositionalEncoding(3, dir_freqs)
        self.trunk = MLP(self.pos_encoding.out_dim, width, layers - 1, width, out_activation=nn.ReLU)
        self.density_head = nn.Linear(width, 1)
        self.color_head = nn.Linear(width + self.dir_encoding.out_dim, 3)

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [P, 3], unit d [P, 3] → raw σ [P] (any sign) and rgb [P, 3] in [0, 1]."""
        h = self.trunk(self.pos_encoding(x))  # [P, W]
        rgb = torch.sigmoid(self.color_head(torch.cat([h, self.dir_encoding(d)], -1)))
        return self.density_head(h)[:, 0], rgb


@dataclass
class Proposal:
    """What the PAS networks propose for R rays with N samples each."""

    coarse: torch.Tensor  # [R, N] sorted coarse depths t
    depths: torch.Tensor  # [R, N] refined depths t', each inside its coarse sample's cell
    offsets: torch.Tensor  # [R, N, 3] bounded 3D offsets s·tanh(Δ)
    density_offset: torch.Tensor  # [R, N] a
    multiplier: torch.Tensor  # [R, N] m
    rgb_coarse: torch.Tensor  # [R, 3] c_mm
    rgb_fine: torch.Tensor  # [R, 3] c_f


class PASSampler(nn.Module):
    """Projection-aware sampler: the coarse and fine sampling networks (projection lives in the method)."""

    def __init__(self, num_samples: int, num_views: int, plucker_freqs: int, width: int, layers: int, raw_clamp: float) -> None:
        super().__init__()
        n = self.num_samples = num_samples
        self.raw_clamp = raw_clamp
        self.encoding = PositionalEncoding(6, plucker_freqs)
        code = self.encoding.out_dim
        self.coarse_net = MLP(code, width, layers, 3 * n + 3, activation=nn.ELU)
        self.fine_net = MLP(code + n + 3 * num_views * n, width, layers, 4 * n + 3, activation=nn.ELU)
        with torch.no_grad():  # start with depths spread evenly, a ≈ 0, m ≈ 1, t' at the cell centre
            for net in (self.coarse_net, self.fine_net):
                net.out.weight.mul_(0.1)
                net.out.bias.zero_()
            self.coarse_net.out.bias[:n] = torch.logit((torch.arange(n) + 0.5) / n)
            self.coarse_net.out.bias[2 * n : 3 * n] = 1.0

    def encode(self, rays: Rays) -> torch.Tensor:
        """[R, code] encoded Plücker coordinates of the rays."""
        return self.encoding(plucker(rays.origins, rays.directions))

    def coarse(self, code: torch.Tensor, near: torch.Tensor, far: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Sorted depths t [R, N] in [near, far], a [R, N], m [R, N] (sorted alike), c_mm [R, 3]."""
        n = self.num_samples
        u = self.coarse_net(code).clamp(-self.raw_clamp, self.raw_clamp)  # [R, 3N + 3]
        t, order = torch.sort(near[:, None] + (far - near)[:, None] * torch.sigmoid(u[:, :n]), dim=-1)
        a, m = u[:, n : 2 * n].gather(1, order), u[:, 2 * n : 3 * n].gather(1, order)
        return t, a, m, torch.sigmoid(u[:, 3 * n :])

    def fine(
        self,
        code: torch.Tensor,  # [R, code]
        t: torch.Tensor,  # [R, N] coarse depths
        colors: torch.Tensor,  # [R, N, V, 3] projected colours
        near: torch.Tensor,  # [R]
        far: torch.Tensor,  # [R]
        offset_scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Refined depths t' [R, N] inside their cells, offsets [R, N, 3], c_f [R, 3]."""
        n = self.num_samples
        position = ((t - near[:, None]) / (far - near)[:, None]).detach()  # [R, N] in [0, 1]
        f = self.fine_net(torch.cat([code, position, colors.flatten(1)], -1)).clamp(-self.raw_clamp, self.raw_clamp)
        lower, upper = sample_cells(t, near, far)
        refined = lower + torch.sigmoid(f[:, :n]) * (upper - lower)
        offsets = offset_scale * torch.tanh(f[:, n : 4 * n].view(-1, n, 3))
        return refined, offsets, torch.sigmoid(f[:, 4 * n :])


class Pronerf(Method):
    name = "pronerf"
    Config = ProNeRFConfig
    presets = PRESETS

    def __init__(self, config: ProNeRFConfig, scene: Scene, device: torch.device | str | None = None) -> None:
        super().__init__(config, scene, device)
        num_train = self.train_images.shape[0]
        if not 1 <= config.num_source_views < num_train:
            raise ValueError(f"num_source_views: expected 1..{num_train - 1} (other training views), got {config.num_source_views}")
        if not 0 <= config.stage1_steps <= config.max_steps:
            raise ValueError(f"stage1_steps: expected 0..max_steps ({config.max_steps}), got {config.stage1_steps}")
        self.sampler = PASSampler(config.num_samples, config.num_source_views, config.plucker_freqs, config.sampler_width, config.sampler_layers, config.raw_clamp)
        if config.field == "hashgrid":
            self.field = HashGridField.from_config(field_bounds(scene), config)
        else:
            self.field = ShadingField(config.pos_freqs, config.dir_freqs, config.hidden_dim, config.num_layers)
        self.offset_scale = config.offset_ndc if scene.ndc else config.offset_world
        self.density_noise = config.density_noise_ndc if scene.ndc else config.density_noise_world
        self.source_pool = config.source_pool_ndc if scene.ndc else config.source_pool_world
        if 0 < self.source_pool < config.num_source_views:
            raise ValueError(f"source_pool_{'ndc' if scene.ndc else 'world'}: expected 0 or at least num_source_views ({config.num_source_views}), got {self.source_pool}")
        self.register_buffer("background", torch.tensor(scene.background, dtype=torch.float32))
        self.to(self.device)
        self.generator = distributed.generator(config.seed, self.device)
        eps = 1e-15 if config.field == "hashgrid" else 1e-8  # hash tables: Instant-NGP's ε
        self.explore_optimizer = torch.optim.Adam(self.field.parameters(), lr=config.lr_stage1, eps=eps)  # stage 1, odd steps
        self.joint_optimizer = torch.optim.Adam(self.parameters(), lr=config.lr_stage1, eps=eps)  # stage 1 even steps, stage 2

    # ---- sampling ----------------------------------------------------------------------------
    def propose(self, rays: Rays, ray_K: torch.Tensor, views: torch.Tensor, width: int, height: int) -> Proposal:
        """Run PAS on rays built with intrinsics ray_K [R, 3, 3] (image width × height), projecting
        the coarse samples into the training views `views` [R, V]."""
        code = self.sampler.encode(rays)
        t, a, m, rgb_coarse = self.sampler.coarse(code, rays.near, rays.far)
        with torch.no_grad():
            points = rays.origins[:, None] + rays.directions[:, None] * t[..., None]  # [R, N, 3]
            if self.scene.ndc:
                points = ndc_to_world(points, ray_K, width, height)
            uv, z = project_to_views(points, self.train_K[views], self.train_c2w[views])  # [R, V, N, 2], [R, V, N]
            colors, _ = fetch_colors(self.train_images, views, uv, z)  # [R, V, N, 3]
        depths, offsets, rgb_fine = self.sampler.fine(code, t, colors.transpose(1, 2), rays.near, rays.far, self.offset_scale)
        return Proposal(t, depths, offsets, a, m, rgb_coarse, rgb_fine)

    def random_source_views(self, cameras: torch.Tensor) -> torch.Tensor:
        """[R, V] distinct random other training views per ray's camera [R], drawn from its
        `source_pool` nearest cameras (all when 0), nearest first."""
        centres = self.train_c2w[:, :3, 3]  # [T, 3]
        rows = torch.arange(len(cameras), device=centres.device)
        distance = (centres[None] - centres[cameras][:, None]).norm(dim=-1)  # [R, T]
        distance[rows, cameras] = math.inf  # never the ray's own view
        scores = rand_rows((len(cameras), len(centres)), self.generator, centres.device)
        if 0 < self.source_pool < len(centres) - 1:
            outside = distance.topk(len(centres) - self.source_pool, dim=-1).indices  # [R, T − pool] the farthest
            scores.scatter_(1, outside, math.inf)
        scores[rows, cameras] = math.inf
        views = scores.topk(self.config.num_source_views, dim=-1, largest=False).indices  # [R, V]
        return views.gather(1, distance.gather(1, views).argsort(dim=-1))

    def nearest_source_views(self, c2w: torch.Tensor) -> torch.Tensor:
        """[V] the training views whose centres are nearest to camera c2w [4, 4], nearest first."""
        distance = (self.train_c2w[:, :3, 3] - c2w[:3, 3]).norm(dim=-1)  # [T]
        return distance.topk(self.config.num_source_views, largest=False).indices

    # ---- rendering -----------------------------------------------------------------------------
    def render_rays(self, rays: Rays, ray_K: torch.Tensor, views: torch.Tensor, width: int, height: int, mode: str = "test") -> dict[str, torch.Tensor]:
        """Colour [R, 3], depth [R, 1], opacity [R, 1], the auxiliary colours and samples_per_ray.

        mode: "test" (N refined samples, offsets, a/m), "exploit" (the same, for stage 1),
        "explore" (samplers frozen; densified, jittered samples; plain α; density noise) or
        "joint" (stage 2: jittered refined samples with offsets, a/m and density noise).
        """
        assert mode in ("test", "exploit", "explore", "joint"), mode
        assert ray_K.shape == (len(rays), 3, 3) and views.shape == (len(rays), self.config.num_source_views), f"ray_K {tuple(ray_K.shape)}, views {tuple(views.shape)} for {len(rays)} rays"
        if mode == "explore":
            with torch.no_grad():
                proposal = self.propose(rays, ray_K, views, width, height)
                most = max(1, self.config.explore_max_samples // self.config.num_samples)
                copies = int(torch.randint(1, most + 1, (1,), generator=self.generator, device=rays.origins.device))  # n ~ U{1..64/N}
                t = densify_samples(proposal.depths, rays.near, rays.far, copies, self.generator)
                t = jitter_samples(t, rays.far, self.generator, self.config.jitter_scale)
            points = rays.origins[:, None] + rays.directions[:, None] * t[..., None]  # [R, S, 3]
            out = self._shade(rays, t, points, noise=self.density_noise)
        else:
            proposal = self.propose(rays, ray_K, views, width, height)
            t = proposal.depths
            if mode == "joint":
                t = jitter_samples(t, rays.far, self.generator, self.config.jitter_scale)
            points = rays.origins[:, None] + rays.directions[:, None] * t[..., None] + proposal.offsets
            noise = self.density_noise if mode == "joint" else 0.0
            out = self._shade(rays, t, points, noise, proposal.density_offset, proposal.multiplier)
        out.update(rgb_coarse=proposal.rgb_coarse, rgb_fine=proposal.rgb_fine, depths=t)
        return out

    def _shade(
        self,
        rays: Rays,
        t: torch.Tensor,  # [R, S] sorted depths
        points: torch.Tensor,  # [R, S, 3] where the shading MLP is queried
        noise: float = 0.0,
        density_offset: torch.Tensor | None = None,  # [R, S]
        multiplier: torch.Tensor | None = None,  # [R, S]
    ) -> dict[str, torch.Tensor]:
        num_rays, num_samples = t.shape
        viewdirs = rays.viewdirs[:, None].expand(-1, num_samples, -1)
        raw, rgb = self.field(points.reshape(-1, 3), viewdirs.reshape(-1, 3))
        sigma = raw.view(num_rays, num_samples)
        if noise > 0:
            sigma = sigma + noise * randn_rows(sigma.shape, self.generator, sigma.device)
        if density_offset is not None:
            sigma = sigma + density_offset
        delta = (torch.cat([t[:, 1:], rays.far[:, None]], -1) - t) * rays.directions.norm(dim=-1, keepdim=True)  # [R, S]
        alpha = 1.0 - torch.exp(-F.relu(sigma) * delta)
        if multiplier is not None:
            alpha = (alpha * F.relu(multiplier)).clamp(0.0, 1.0)
        weights = render_weights_from_alpha(alpha)
        out = composite(weights, rgb.view(num_rays, num_samples, 3), t, self.background)
        out.update(alpha=alpha, samples_per_ray=torch.full((num_rays,), float(num_samples), device=t.device))
        return out

    @torch.no_grad()
    def render_view(self, K: torch.Tensor, c2w: torch.Tensor, width: int, height: int) -> dict[str, torch.Tensor]:
        K, c2w = K.to(self.device), c2w.to(self.device)
        rays = image_rays(K, c2w, width, height, self.scene.near, self.scene.far, ndc=self.scene.ndc)
        views = self.nearest_source_views(c2w)
        chunks = []
        for i in range(0, len(rays), self.config.render_chunk):
            chunk = rays[i : i + self.config.render_chunk]
            n = len(chunk)
            chunks.append(self.render_rays(chunk, K.expand(n, 3, 3), views.expand(n, -1), width, height))
        return self.assemble_image(chunks, height, width)

    # ---- training ------------------------------------------------------------------------------
    def stage(self, step: int) -> str:
        """"exploit" / "explore" (stage 1, by parity) or "joint" (stage 2)."""
        if step >= self.config.stage1_steps:
            return "joint"
        return "explore" if step % 2 else "exploit"

    def learning_rate(self, step: int) -> float:
        c = self.config
        if step < c.stage1_steps:
            return c.lr_stage1 * 0.1 ** (step / c.lr_stage1_decay_steps)
        return c.lr_stage2 * 0.1 ** ((step - c.stage1_steps) / c.lr_stage2_decay_steps)

    def train_step(self, step: int) -> dict[str, float]:
        mode = self.stage(step)
        optimizer = self.explore_optimizer if mode == "explore" else self.joint_optimizer
        for group in optimizer.param_groups:
            group["lr"] = self.learning_rate(step)
        rays, target, cam = self.sample_training_rays(self.config.rays_per_batch, self.generator)
        _, h, w, _ = self.train_images.shape
        out = self.render_rays(rays, self.train_K[cam], self.random_source_views(cam), w, h, mode)
        mse = F.mse_loss(out["rgb"], target)
        loss = mse
        if mode == "exploit":
            loss = loss + F.mse_loss(out["rgb_fine"], target) + F.mse_loss(out["rgb_coarse"], target)
        optimizer.zero_grad(set_to_none=True)
        stats = {"loss": loss.item(), "psnr": -10.0 * math.log10(max(mse.item(), 1e-10)), "rays": len(rays), "samples_per_ray": out["samples_per_ray"].mean().item()}
        self.backward(loss)  # a non-finite loss gives non-finite gradients on every rank
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if grads and math.isfinite(float(torch.stack([g.norm() for g in grads]).norm())):
            optimizer.step()
            return stats
        optimizer.zero_grad(set_to_none=True)  # a non-finite loss or gradient: skip this update
        return {**stats, "skipped": 1.0}

    def training_state(self) -> dict:
        return {
            "explore_optimizer": self.explore_optimizer.state_dict(),
            "joint_optimizer": self.joint_optimizer.state_dict(),
            "generator": self.generator.get_state(),
        }

    def load_training_state(self, state: dict) -> None:
        self.explore_optimizer.load_state_dict(state["explore_optimizer"])
        self.joint_optimizer.load_state_dict(state["joint_optimizer"])
        self.generator.set_state(state["generator"])
