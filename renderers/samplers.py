"""Ray samplers with one interface: each returns `RaySamples`, sorted t-interval edges per ray.

Dense layout `[R, S + 1]` edges → S intervals. Stratified, importance (pdf) and, later, learned
samplers (ProNeRF's PAS) and GPF's log sampler all produce this type, so a method can swap them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from renderers.cameras import Rays


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


def _jitter_edges(s: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Move each of the sorted edges s [R, E] uniformly within the cell around it."""
    centres = 0.5 * (s[:, 1:] + s[:, :-1])
    upper = torch.cat([centres, s[:, -1:]], dim=-1)
    lower = torch.cat([s[:, :1], centres], dim=-1)
    r = torch.rand(s.shape, device=s.device, generator=generator)
    return lower + (upper - lower) * r
