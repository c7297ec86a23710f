"""Ray samplers with one interface: each returns `RaySamples`, sorted t-interval edges per ray.

Dense layout `[R, S + 1]` edges → S intervals. Stratified, importance (pdf), learned (ProNeRF's
PAS) and GPF's log sampler all produce this type, so a method can swap them. Per-ray random draws
go through `renderers.shards`, so the ranks of a data-parallel job draw what one process would.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from renderers.cameras import Rays
from renderers.shards import rand_rows, randn_rows


@dataclass
class RaySamples:
    edges: torch.Tensor  # [R, S + 1] sorted t values bounding S intervals

    @property
    def starts(self) -> torch.Tensor:  # [R, S]
        return self.edges[:, :-1]

    @property
    def ends(self) -> torch.Tensor:  # [R, S]
        return self.edges[:, 1:]

    @property
    def mids(self) -> torch.Tensor:  # [R, S]
        return 0.5 * (self.edges[:, :-1] + self.edges[:, 1:])

    @property
    def num_samples(self) -> int:
        return self.edges.shape[1] - 1

    def positions(self, rays: Rays) -> torch.Tensor:
        """[R, S, 3] world (or NDC) points at the interval midpoints."""
        return rays.origins[:, None, :] + rays.directions[:, None, :] * self.mids[..., None]


class Sampler(Protocol):
    """Anything that places samples on rays; learned samplers may take extra inputs."""

    def __call__(self, rays: Rays, *, perturb: bool) -> RaySamples: ...


@dataclass
class StratifiedSampler:
    """S intervals between near and far, evenly spaced in depth ("linear") or in 1/depth ("disparity").

    With `perturb`, each edge is drawn uniformly inside its cell (edges stay sorted).
    """

    num_samples: int
    spacing: str = "linear"

    def __post_init__(self) -> None:
        if self.spacing not in ("linear", "disparity"):
            raise ValueError(f"spacing must be 'linear' or 'disparity', got {self.spacing!r}")

    def __call__(self, rays: Rays, *, perturb: bool, generator: torch.Generator | None = None) -> RaySamples:
        s = torch.linspace(0.0, 1.0, self.num_samples + 1, device=rays.origins.device)
        s = s.expand(len(rays), -1)
        if perturb:
            s = _jitter_edges(s, generator)
        near, far = rays.near[:, None], rays.far[:, None]
        if self.spacing == "linear":
            t = near + (far - near) * s
        else:
            t = 1.0 / (1.0 / near.clamp_min(1e-6) * (1 - s) + 1.0 / far * s)
        return RaySamples(t)


@dataclass
class PDFSampler:
    """Importance sampling: `num_samples + 1` new edges drawn from the piecewise-constant pdf
    that `weights` define over `samples`; merged with the old edges when `include_input`."""

    num_samples: int
    include_input: bool = True
    histogram_padding: float = 0.01

    def __call__(
        self,
        rays: Rays,
        *,
        perturb: bool,
        samples: RaySamples,
        weights: torch.Tensor,  # [R, S]
        generator: torch.Generator | None = None,
    ) -> RaySamples:
        assert weights.shape == samples.starts.shape, f"weights {tuple(weights.shape)} vs samples {tuple(samples.starts.shape)}"
        edges = samples.edges.detach()
        weights = weights.detach() + self.histogram_padding / weights.shape[1]
        cdf = torch.cumsum(weights / weights.sum(-1, keepdim=True), dim=-1)
        cdf = torch.cat([torch.zeros_like(cdf[:, :1]), cdf.clamp_max(1.0)], dim=-1)  # [R, S + 1]
        u = torch.linspace(0.0, 1.0, self.num_samples + 1, device=edges.device).expand(len(rays), -1)
        if perturb:
            u = _jitter_edges(u, generator)
        u = u.contiguous()
        index = torch.searchsorted(cdf, u, right=True).clamp(1, edges.shape[1] - 1)
        cdf_lo, cdf_hi = cdf.gather(1, index - 1), cdf.gather(1, index)
        t_lo, t_hi = edges.gather(1, index - 1), edges.gather(1, index)
        frac = ((u - cdf_lo) / (cdf_hi - cdf_lo).clamp_min(1e-8)).clamp(0.0, 1.0)
        new_edges = t_lo + frac * (t_hi - t_lo)  # [R, num_samples + 1], sorted since u is
        if self.include_input:
            new_edges, _ = torch.sort(torch.cat([edges, new_edges], dim=-1), dim=-1)
        return RaySamples(new_edges)


def log_offsets(num_samples: int, base: float | torch.Tensor) -> torch.Tensor:
    """GPF's sample offsets around a depth prior, sorted: ±base^k for k = 0 … ⌊N/2⌋ − 1, and 0 when N
    is odd (N = 33, base 1.2: 0, ±1, ±1.2, …, ±15.41)."""
    half = num_samples // 2
    powers = torch.as_tensor(base, dtype=torch.float32) ** torch.arange(half, dtype=torch.float32)  # [h]
    centre = torch.zeros(num_samples % 2)
    return torch.cat([-powers.flip(0), centre, powers])


@dataclass
class LogSampler:
    """GPF's nonuniform log sampling (Eq. 6): samples dense next to a per-ray depth prior d and sparser
    away from it, at t = d + log_offsets(N, base)·scale, as N edges (N − 1 intervals). With
    `spacing="linear"` the N edges are even over the same span instead (the official code's
    `surface_sampling`, ±25 units: set `half_width`), for ablations at equal samples per ray.

    t is z-depth here (rays have camera-frame z = 1), so a z-depth prior lands on the surface at
    every pixel; the official code uses it as a distance along unit rays, short by d(1 − cos θ) off
    axis. With `perturb` (training): d += U(−depth_jitter, depth_jitter)·scale per ray and base +=
    N(0, base_std²) once per call. d is clamped to [near, far] first; edges are not clamped.
    """

    num_samples: int = 33
    base: float = 1.2
    scale: float = 1.0  # scene units per offset unit (DTU: 1 mm)
    depth_jitter: float = 5.0
    base_std: float = 0.0075
    spacing: str = "log"
    half_width: float = 25.0  # linear spacing: edges over d ± half_width units

    def __post_init__(self) -> None:
        if self.num_samples < 2 or self.base <= 1.0 or self.spacing not in ("log", "linear"):
            raise ValueError(f"LogSampler needs num_samples ≥ 2, base > 1 and spacing log|linear, got {self.num_samples}, {self.base}, {self.spacing!r}")

    def __call__(self, rays: Rays, *, perturb: bool, depth: torch.Tensor, generator: torch.Generator | None = None) -> RaySamples:
        assert depth.shape == (len(rays),), f"depth must be [R], got {tuple(depth.shape)}"
        device = rays.origins.device
        d = torch.maximum(torch.minimum(depth, rays.far), rays.near)  # [R]
        base = self.base
        if perturb:
            d = d + (rand_rows(d.shape, generator, device) * 2 - 1) * self.depth_jitter * self.scale
            base = max(base + torch.randn(1, device=device, generator=generator).item() * self.base_std, 1.0 + 1e-3)
        if self.spacing == "log":
            offsets = log_offsets(self.num_samples, base)
        else:
            offsets = torch.linspace(-self.half_width, self.half_width, self.num_samples)
        return RaySamples(d[:, None] + offsets.to(device)[None, :] * self.scale)


def _jitter_edges(s: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Move each of the sorted edges s [R, E] uniformly within the cell around it."""
    centres = 0.5 * (s[:, 1:] + s[:, :-1])
    upper = torch.cat([centres, s[:, -1:]], dim=-1)
    lower = torch.cat([s[:, :1], centres], dim=-1)
    r = rand_rows(s.shape, generator, s.device)
    return lower + (upper - lower) * r


class OccupancyGrid(torch.nn.Module):
    """A binary grid over an axis-aligned box marking where density may be; samples in empty
    cells are skipped (Instant-NGP / nerfacc's occupancy grid, in plain torch for any device).

    Each cell keeps a running maximum of σ·step_size, decayed on every update; a cell is
    occupied while that value exceeds `threshold` (or the grid mean, if lower). Starts all occupied.
    """

    def __init__(self, aabb: torch.Tensor, resolution: int = 64, step_size: float = 0.01, threshold: float = 0.01, decay: float = 0.95) -> None:
        super().__init__()
        assert aabb.shape == (2, 3), f"aabb must be [2, 3], got {tuple(aabb.shape)}"
        self.resolution, self.step_size, self.threshold, self.decay = resolution, step_size, threshold, decay
        self.register_buffer("aabb", aabb.float().clone())
        self.register_buffer("values", torch.full((resolution**3,), float("inf")))  # [G³] decayed max σ·step
        self.register_buffer("occupied", torch.ones(resolution**3, dtype=torch.bool))  # [G³]

    def cell_index(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat cell index [...] of positions [..., 3] and whether they lie inside the box [...]."""
        unit = (positions - self.aabb[0]) / (self.aabb[1] - self.aabb[0])
        inside = ((unit >= 0) & (unit < 1)).all(-1)
        cell = (unit.clamp(0, 1 - 1e-6) * self.resolution).long()
        return (cell[..., 0] * self.resolution + cell[..., 1]) * self.resolution + cell[..., 2], inside

    def query(self, positions: torch.Tensor) -> torch.Tensor:
        """[...] bool: the position lies in an occupied cell."""
        index, inside = self.cell_index(positions)
        return self.occupied[index] & inside

    @torch.no_grad()
    def update(self, density_fn, *, all_cells: bool, generator: torch.Generator | None = None, chunk: int = 65536) -> None:
        """Re-evaluate σ at one jittered point in each cell (all cells, or a random quarter plus
        the occupied ones) and refresh the occupancy."""
        n = self.resolution**3
        device = self.values.device
        if all_cells:
            cells = torch.arange(n, device=device)
        else:
            random = torch.randint(0, n, (n // 4,), generator=generator, device=device)
            cells = torch.cat([random, self.occupied.nonzero()[:, 0]])
        ijk = torch.stack([cells // self.resolution**2, (cells // self.resolution) % self.resolution, cells % self.resolution], -1)
        unit = (ijk + torch.rand(ijk.shape, generator=generator, device=device)) / self.resolution
        points = self.aabb[0] + unit * (self.aabb[1] - self.aabb[0])
        values = torch.cat([density_fn(p) for p in points.split(chunk)]) * self.step_size
        decayed = torch.where(torch.isinf(self.values), torch.zeros_like(self.values), self.values * self.decay)
        decayed[cells] = torch.maximum(decayed[cells], values)
        self.values.copy_(decayed)
        self.occupied.copy_(self.values > min(self.threshold, float(self.values.mean())))


# ---- learned samplers (ProNeRF's PAS): a network proposes sorted depths t [R, N] per ray ----
def sample_cells(
    t: torch.Tensor,  # [R, N] sorted sample depths
    near: torch.Tensor,  # [R]
    far: torch.Tensor,  # [R]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sample's own cell, lower [R, N] and upper [R, N]: halfway to its neighbours (near/far at the ends)."""
    padded = torch.cat([near[:, None], t, far[:, None]], dim=-1)  # [R, N + 2]
    halfway = 0.5 * (padded[:, 1:] + padded[:, :-1])  # [R, N + 1]
    return halfway[:, :-1], halfway[:, 1:]


def densify_samples(
    t: torch.Tensor,  # [R, N] sorted
    near: torch.Tensor,  # [R]
    far: torch.Tensor,  # [R]
    copies: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """[R, N·copies] sorted: each sample replicated at fractions k/copies (k < copies) of the gap to
    its next or previous neighbour (near/far at the ends), the direction a fair coin per sample."""
    padded = torch.cat([near[:, None], t, far[:, None]], dim=-1)  # [R, N + 2]
    forward = rand_rows(t.shape, generator, t.device) < 0.5
    gap = torch.where(forward, padded[:, 2:] - t, padded[:, :-2] - t)  # [R, N] signed
    fractions = torch.arange(copies, device=t.device, dtype=t.dtype) / copies  # [copies]
    dense = t[..., None] + gap[..., None] * fractions  # [R, N, copies]
    return torch.sort(dense.flatten(1), dim=-1).values


def jitter_samples(
    t: torch.Tensor,  # [R, S] sorted
    far: torch.Tensor,  # [R]
    generator: torch.Generator | None = None,
    scale: float = 0.2,
    max_fraction: float = 0.99,
) -> torch.Tensor:
    """[R, S] each sample moved towards the next one (far for the last) by min(|N(0, 1)|·scale,
    max_fraction) of the gap; the order is kept."""
    gap = torch.cat([t[:, 1:], far[:, None]], dim=-1) - t  # [R, S]
    fraction = (randn_rows(t.shape, generator, t.device).abs() * scale).clamp(max=max_fraction)
    return t + fraction * gap
