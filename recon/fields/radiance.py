"""Radiance fields: position (+ view direction) → density σ and colour.

`MLPField` is the classic NeRF network (positional encoding, 8×256 ReLU MLP with a skip at layer 4,
density head, 128-wide view branch). `HashGridField` is an Instant-NGP-style field (hash-grid
encoding, two small MLPs) that trains in minutes on a CPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recon.fields.encodings import HashGridEncoding, PositionalEncoding
from recon.fields.mlp import MLP


class MLPField(nn.Module):
    def __init__(self, pos_freqs: int = 10, dir_freqs: int = 4, hidden_dim: int = 256, num_layers: int = 8) -> None:
        super().__init__()
        self.pos_encoding = PositionalEncoding(3, pos_freqs)
        self.dir_encoding = PositionalEncoding(3, dir_freqs)
        self.trunk = MLP(self.pos_encoding.out_dim, hidden_dim, num_layers, hidden_dim, skip_layers=(num_layers // 2,), out_activation=nn.ReLU)
        self.density_head = nn.Linear(hidden_dim, 1)
        self.feature = nn.Linear(hidden_dim, hidden_dim)
        self.color_head = MLP(hidden_dim + self.dir_encoding.out_dim, hidden_dim // 2, 1, 3)

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """[P, 3] → σ [P]."""
        return F.relu(self.density_head(self.trunk(self.pos_encoding(x)))[:, 0])

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [P, 3], unit d [P, 3] → σ [P] (non-negative) and rgb [P, 3] in [0, 1]."""
        h = self.trunk(self.pos_encoding(x))
        sigma = F.relu(self.density_head(h)[:, 0])
        rgb = torch.sigmoid(self.color_head(torch.cat([self.feature(h), self.dir_encoding(d)], -1)))
        return sigma, rgb


class HashGridField(nn.Module):
    def __init__(
        self,
        aabb: torch.Tensor,  # [2, 3] region the grid covers; σ = 0 outside
        num_levels: int = 16,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        max_resolution: int = 1024,
        hidden_dim: int = 64,
        geo_feat_dim: int = 15,
        dir_freqs: int = 4,
    ) -> None:
        super().__init__()
        assert aabb.shape == (2, 3), f"aabb must be [2, 3], got {tuple(aabb.shape)}"
        self.register_buffer("aabb", aabb.float().clone())
        per_level_scale = (max_resolution / base_resolution) ** (1.0 / max(num_levels - 1, 1))
        self.encoding = HashGridEncoding(3, num_levels, 2, log2_hashmap_size, base_resolution, per_level_scale)
        self.geo_feat_dim = geo_feat_dim
        self.density_mlp = MLP(num_levels * 2, hidden_dim, 1, 1 + geo_feat_dim)
        self.dir_encoding = PositionalEncoding(3, dir_freqs)
        self.color_mlp = MLP(geo_feat_dim + self.dir_encoding.out_dim, hidden_dim, 2, 3)

    @classmethod
    def from_config(cls, aabb: torch.Tensor, config) -> "HashGridField":
        """The field a method's config describes through its hash_* and dir_freqs settings."""
        c = config
        return cls(aabb, c.hash_levels, c.hash_log2_size, c.hash_base_resolution, c.hash_max_resolution, c.hash_hidden_dim, dir_freqs=c.dir_freqs)

    def _geometry(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        unit = (x - self.aabb[0]) / (self.aabb[1] - self.aabb[0])
        inside = ((unit >= 0) & (unit <= 1)).all(-1)
        h = self.density_mlp(self.encoding(unit.clamp(0, 1)))
        # exp activation (Instant-NGP), clamped for safety; zero outside the grid.
        sigma = torch.exp(h[:, 0].clamp(max=15.0)) * inside
        return sigma, h[:, 1:]

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return self._geometry(x)[0]

    def forward(self, x: torch.Tensor, d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [P, 3], unit d [P, 3] → σ [P] (non-negative) and rgb [P, 3] in [0, 1]."""
        sigma, geo = self._geometry(x)
        rgb = torch.sigmoid(self.color_mlp(torch.cat([geo, self.dir_encoding(d)], -1)))
        return sigma, rgb
