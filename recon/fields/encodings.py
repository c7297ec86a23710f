"""Input encodings: NeRF positional encoding and the Instant-NGP multiresolution hash grid."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PositionalEncoding", "HashGridEncoding", "tcnn_available"]

# tiny-cuda-nn's `fast_hash` primes (include/tiny-cuda-nn/encodings/grid.h); the first is 1 for coherence.
_PRIMES = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)


def _corner_combine(per_dim: list[torch.Tensor], op) -> torch.Tensor:
    """Combine per-dim [..., 2] (lower, upper) terms over the 2^d cell corners with `op`.

    Corner c takes the upper term of dim i iff bit i of c is set (tcnn's corner order).
    """
    out = per_dim[0]  # [..., 2]
    for term in per_dim[1:]:
        out = op(term[..., :, None], out[..., None, :]).flatten(-2)  # [..., 2 * k]
    return out  # [..., 2^d]


class _GatherInterp(torch.autograd.Function):
    """out[m] = sum_c weights[m, c] * table[idx[m, c]]; scatter-add backward (faster on CPU than embedding_bag's)."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, idx: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        # table [T, F], idx [M, C] int64, weights [M, C] -> [M, F]
        ctx.save_for_backward(table, idx, weights)
        return F.embedding_bag(idx, table, per_sample_weights=weights, mode="sum")

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        table, idx, weights = ctx.saved_tensors
        n_feat = table.shape[1]
        grad_table = grad_weights = None
        if ctx.needs_input_grad[0]:
            contrib = (weights[..., None] * grad_out[:, None, :]).view(-1, n_feat)  # [M*C, F]
            grad_table = torch.zeros_like(table).scatter_add_(0, idx.view(-1, 1).expand(-1, n_feat), contrib)
        if ctx.needs_input_grad[2]:
            grad_weights = torch.bmm(F.embedding(idx, table), grad_out[:, :, None]).squeeze(-1)  # [M, C]
        return grad_table, None, grad_weights


class PositionalEncoding(nn.Module):
    """NeRF frequency encoding: x -> [x, sin(2^0 x), cos(2^0 x), ..., sin(2^(L-1) x), cos(2^(L-1) x)].

    No factor of pi (as in the NeRF reference code). Output layout per frequency k:
    sin of all `in_dim` coordinates, then cos of all coordinates.
    """

    def __init__(self, in_dim: int, num_freqs: int, include_input: bool = True):
        super().__init__()
        self.in_dim = in_dim
        self.num_freqs = num_freqs
        self.include_input = include_input
        self.out_dim = in_dim * (2 * num_freqs + int(include_input))
        self.register_buffer("freqs", 2.0 ** torch.arange(num_freqs, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] == self.in_dim, f"expected [..., {self.in_dim}], got {tuple(x.shape)}"
        xf = x[..., None, :] * self.freqs.to(x.dtype)[:, None]  # [..., L, D]
        enc = torch.cat([xf.sin(), xf.cos()], dim=-1).flatten(-2)  # [..., L*2*D]
        return torch.cat([x, enc], dim=-1) if self.include_input else enc  # [..., out_dim]


@functools.cache
def tcnn_available() -> bool:
    """True when `tinycudann` imports (it needs a CUDA build of torch and a GPU)."""
    try:
        import tinycudann  # noqa: F401
    except (ImportError, OSError):  # tcnn raises EnvironmentError (= OSError) without CUDA
        return False
    return True


class HashGridEncoding(nn.Module):
    """Instant-NGP multiresolution hash encoding, bit-compatible with tiny-cuda-nn's "HashGrid".

    Input x in [0, 1]^in_dim, shape [N, in_dim] -> [N, num_levels * features_per_level], levels
    concatenated (level-major, like tcnn). Conventions follow tcnn's grid.h exactly:

    * level l: scale = 2^(l * log2(per_level_scale)) * base_resolution - 1 (float32),
      position = x * scale + 0.5, vertices per axis = ceil(scale) + 1;
    * table entries per level = min(next_multiple(res^d, 8), 2^log2_hashmap_size); a level uses
      dense (x-fastest) indexing when res^d fits, otherwise the xor-of-primes hash in uint32
      arithmetic; both taken modulo the level's table size (so dense levels may wrap at the
      +0.5-shifted upper border, as in tcnn);
    * d-linear interpolation, no smoothstep; parameters in one flat `params` tensor laid out like
      tcnn's (levels concatenated, [entry, feature] row-major), init uniform(-1e-4, 1e-4).

    `implementation`: "torch" (pure PyTorch, any device), "tcnn" (tinycudann, CUDA only, fp32) or
    "auto" (tcnn when importable and the input is on CUDA, else torch). Both share `params`, so
    weights copy between them. Gradients: always w.r.t. `params`; the torch path also gives
    d(out)/dx (piecewise-constant derivative of the d-linear interpolant) when x requires grad,
    at no cost otherwise. Inputs outside [0, 1] are unsupported (tcnn wraps them through uint32).
    """

    def __init__(
        self,
        in_dim: int = 3,
        num_levels: int = 16,
        features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        per_level_scale: float = 1.447,
        implementation: str = "auto",
    ):
        super().__init__()
        assert 1 <= in_dim <= len(_PRIMES), f"in_dim must be in [1, {len(_PRIMES)}]"
        assert implementation in ("auto", "torch", "tcnn"), implementation
        if implementation == "tcnn" and not tcnn_available():
            raise ImportError(
                'HashGridEncoding(implementation="tcnn") needs tiny-cuda-nn\'s PyTorch bindings and a CUDA GPU: '
                "pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch "
                '(or use implementation="torch")'
            )
        self.in_dim = in_dim
        self.num_levels = num_levels
        self.features_per_level = features_per_level
        self.log2_hashmap_size = log2_hashmap_size
        self.base_resolution = base_resolution
        self.per_level_scale = per_level_scale
        self.implementation = implementation
        self.out_dim = num_levels * features_per_level

        # Level geometry in float32, mirroring tcnn (std::log2 of a float, exp2f, ceilf).
        log2_pls = np.float32(math.log2(np.float32(per_level_scale)))
        levels = np.arange(num_levels, dtype=np.float32)
        scales = np.exp2(levels * log2_pls, dtype=np.float32) * np.float32(base_resolution) - np.float32(1.0)
        res = np.ceil(scales).astype(np.int64) + 1  # vertices per axis
        dense_entries = res.astype(np.float64) ** in_dim
        sizes = np.minimum(np.ceil(dense_entries / 8) * 8, 2.0**log2_hashmap_size).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        hashed = dense_entries > sizes
        self.num_dense = int((~hashed).sum())
        assert not hashed[: self.num_dense].any(), "dense levels must precede hashed ones"
        self.resolutions = res.tolist()
        self.table_sizes = sizes.tolist()

        self.register_buffer("scales", torch.from_numpy(scales), persistent=False)  # [L]
        self.register_buffer("sizes", torch.from_numpy(sizes), persistent=False)  # [L]
        self.register_buffer("offsets", torch.from_numpy(offsets), persistent=False)  # [L]
        strides = torch.from_numpy(res)[:, None] ** torch.arange(in_dim)  # [L, d], res^i
        self.register_buffer("strides", strides, persistent=False)
        n_entries = int(sizes.sum())
        self.params = nn.Parameter(torch.empty(n_entries * features_per_level).uniform_(-1e-4, 1e-4))
        self._tcnn = None  # lazily built tinycudann.Encoding; kept out of the module tree

    @property
    def table(self) -> torch.Tensor:
        """View of `params` as [total_entries, features_per_level]."""
        return self.params.view(-1, self.features_per_level)

    def level_slice(self, level: int) -> slice:
        """Rows of `table` that belong to `level`."""
        start = int(self.offsets[level])
        return slice(start, start + self.table_sizes[level])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dim() == 2 and x.shape[1] == self.in_dim, f"expected [N, {self.in_dim}], got {tuple(x.shape)}"
        use_tcnn = self.implementation == "tcnn" or (self.implementation == "auto" and x.is_cuda and tcnn_available())
        return self._forward_tcnn(x) if use_tcnn else self._forward_torch(x)  # [N, L*F]

    def _forward_tcnn(self, x: torch.Tensor) -> torch.Tensor:
        import tinycudann as tcnn

        assert x.is_cuda, "the tcnn implementation needs CUDA inputs"
        if self._tcnn is None:
            config = {
                "otype": "HashGrid",
                "n_levels": self.num_levels,
                "n_features_per_level": self.features_per_level,
                "log2_hashmap_size": self.log2_hashmap_size,
                "base_resolution": self.base_resolution,
                "per_level_scale": self.per_level_scale,
                "interpolation": "Linear",
            }
            enc = tcnn.Encoding(self.in_dim, config, dtype=torch.float32).to(x.device)
            assert enc.params.numel() == self.params.numel(), "tcnn parameter count differs from ours"
            object.__setattr__(self, "_tcnn", enc)  # plain attribute: no duplicate params in state_dict
        self._tcnn.params = self.params  # share our parameter; autograd flows into it
        return self._tcnn(x.float().contiguous()).float()

    def _forward_torch(self, x: torch.Tensor) -> torch.Tensor:
        n, d = x.shape
        nd = self.num_dense
        pos = self.scales[:, None, None] * x.float() + 0.5  # [L, N, d], level-major keeps level slices contiguous
        pos_grid = pos.detach().floor()  # [L, N, d]
        frac = pos - pos_grid  # [L, N, d], carries d/dx when x requires grad
        grid = pos_grid.long()  # [L, N, d]
        idx = torch.cat([self._dense_index(grid[:nd]), self._hash_index(grid[nd:])])  # [L, N, 2^d]
        idx += self.offsets[:, None, None]  # rows of `table`
        per_dim = [torch.stack([1 - frac[..., i], frac[..., i]], -1) for i in range(d)]  # d x [L, N, 2]
        weights = _corner_combine(per_dim, torch.mul)  # [L, N, 2^d]
        weights = weights.to(self.params.dtype).view(-1, 2**d)  # [L*N, 2^d]
        feats = _GatherInterp.apply(self.table, idx.view(-1, 2**d), weights)  # [L*N, F]
        return feats.view(self.num_levels, n, self.features_per_level).transpose(0, 1).reshape(n, self.out_dim)

    def _dense_index(self, grid: torch.Tensor) -> torch.Tensor:
        """grid [Ld, N, d] -> [Ld, N, 2^d]: x-fastest linear index modulo table size (tcnn's `index % hashmap_size`)."""
        strides, sizes = self.strides[: grid.shape[0], :, None, None], self.sizes[: grid.shape[0], None, None]
        terms = [torch.stack([grid[..., i], grid[..., i] + 1], -1) * strides[:, i] for i in range(self.in_dim)]
        return _corner_combine(terms, torch.add) % sizes

    def _hash_index(self, grid: torch.Tensor) -> torch.Tensor:
        """grid [Lh, N, d] -> [Lh, N, 2^d]: xor of coordinate * prime in uint32, modulo the 2^k table size.

        Hashed tables always hold exactly 2^log2_hashmap_size entries, so `% size` is a bit mask, and
        masking each term before the xor equals masking after (it also emulates uint32 wraparound;
        int64 products stay below 2^44 for x in [0, 1]).
        """
        mask = (1 << self.log2_hashmap_size) - 1
        terms = [(torch.stack([grid[..., i], grid[..., i] + 1], -1) * _PRIMES[i]) & mask for i in range(self.in_dim)]
        return _corner_combine(terms, torch.bitwise_xor)

    def extra_repr(self) -> str:
        return (
            f"in_dim={self.in_dim}, levels={self.num_levels}x{self.features_per_level}, "
            f"log2_T={self.log2_hashmap_size}, base={self.base_resolution}, scale={self.per_level_scale}, "
            f"dense_levels={self.num_dense}, implementation={self.implementation}"
        )
