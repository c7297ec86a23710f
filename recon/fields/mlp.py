"""Plain fully connected network with NeRF-style input skip connections."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["MLP"]


class MLP(nn.Module):
    """`num_layers` hidden Linear+activation layers of width `hidden_dim`, then a Linear to `out_dim`.

    For each i in `skip_layers` (0 < i < num_layers) the network input is concatenated to the input
    of hidden layer i, as NeRF does at layer 4 (`skip_layers=(4,)`).
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        num_layers: int,
        out_dim: int,
        skip_layers: Sequence[int] = (),
        activation: type[nn.Module] = nn.ReLU,
        out_activation: type[nn.Module] | None = None,
    ):
        super().__init__()
        assert num_layers >= 1 and all(0 < i < num_layers for i in skip_layers), (num_layers, skip_layers)
        self.in_dim, self.out_dim = in_dim, out_dim
        self.skip_layers = frozenset(skip_layers)
        self.layers = nn.ModuleList(
            nn.Linear((in_dim if i == 0 else hidden_dim) + (in_dim if i in self.skip_layers else 0), hidden_dim)
            for i in range(num_layers)
        )
        self.out = nn.Linear(hidden_dim, out_dim)
        self.act = activation()
        self.out_act = out_activation() if out_activation is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] == self.in_dim, f"expected [..., {self.in_dim}], got {tuple(x.shape)}"
        h = x  # [..., in_dim]
        for i, layer in enumerate(self.layers):
            if i in self.skip_layers:
                h = torch.cat([h, x], dim=-1)  # [..., hidden_dim + in_dim]
            h = self.act(layer(h))  # [..., hidden_dim]
        return self.out_act(self.out(h))  # [..., out_dim]
