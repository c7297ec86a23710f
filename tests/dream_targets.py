"""A known object as 3DGS Gaussians, the target of the exact-noise oracle in the text-to-3D tests."""
from __future__ import annotations

from pathlib import Path

import torch

from recon.export import write_ply
from recon.methods.splat import SH_C0


def snowman(path: Path, per_sphere: int = 400, seed: int = 0) -> Path:
    """Write a .ply of three stacked spheres of small opaque Gaussians (red body, white head, an
    orange nose on +x, the front): a shape whose views differ with azimuth and elevation."""
    g = torch.Generator().manual_seed(seed)
    parts = [  # centre, radius, colour
        ((0.0, 0.0, -0.15), 0.3, (0.85, 0.15, 0.1)),
        ((0.0, 0.0, 0.27), 0.18, (0.95, 0.95, 0.9)),
        ((0.2, 0.0, 0.3), 0.06, (1.0, 0.55, 0.0)),
    ]
    means, colours = [], []
    for centre, radius, colour in parts:
        count = max(per_sphere * int(radius / 0.06) // 5, 30)
        direction = torch.nn.functional.normalize(torch.randn(count, 3, generator=g), dim=-1)
        means.append(torch.tensor(centre) + radius * direction)
        colours.append(torch.tensor(colour).expand(count, 3))
    means, colours = torch.cat(means), torch.cat(colours)
    n = means.shape[0]
    write_ply(path, {
        "means": means, "scales": torch.full((n, 3), 0.045).log(), "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1),
        "opacities": torch.full((n,), 0.95).logit(), "sh0": ((colours - 0.5) / SH_C0)[:, None, :], "shN": torch.zeros(n, 0, 3),
    })
    return Path(path)
