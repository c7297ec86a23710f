"""Gaussian scenes as the standard 3DGS .ply (graphdeco-inria layout), read and written.

Vertex properties, little-endian float32: x y z, nx ny nz (zeros), f_dc_0..2, f_rest_0..M−1
(channel-major: all of red's higher SH coefficients, then green's, then blue's), opacity (logit),
scale_0..2 (log), rot_0..3 (w x y z quaternion). Files from other 3DGS trainers load too
(extra properties are ignored; the SH degree follows from the f_rest count).
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch

from data import DataError
from data.ply import read_vertices
from recon.io import atomic_write

MAX_SH_DEGREE = 3  # what the rasterizers evaluate


def write_ply(path: Path, params: dict[str, torch.Tensor]) -> None:
    """Write Gaussians given as raw parameters: means [N,3], scales [N,3] (log), quats [N,4],
    opacities [N] (logit), sh0 [N,1,3], shN [N,K−1,3]."""
    means = params["means"].detach().cpu().float()
    n = means.shape[0]
    rest = params["shN"].detach().cpu().float().transpose(1, 2).reshape(n, -1)  # [N, 3·(K−1)] channel-major
    columns = {
        **{a: means[:, i] for i, a in enumerate("xyz")},
        **{a: torch.zeros(n) for a in ("nx", "ny", "nz")},
        **{f"f_dc_{i}": params["sh0"].detach().cpu().float()[:, 0, i] for i in range(3)},
        **{f"f_rest_{i}": rest[:, i] for i in range(rest.shape[1])},
        "opacity": params["opacities"].detach().cpu().float(),
        **{f"scale_{i}": params["scales"].detach().cpu().float()[:, i] for i in range(3)},
        **{f"rot_{i}": params["quats"].detach().cpu().float()[:, i] for i in range(4)},
    }
    table = np.empty(n, dtype=[(name, "<f4") for name in columns])
    for name, values in columns.items():
        table[name] = values.numpy()
    header = "ply\nformat binary_little_endian 1.0\n" f"element vertex {n}\n" + "".join(f"property float {name}\n" for name in columns) + "end_header\n"
    atomic_write(Path(path), lambda tmp: tmp.write_bytes(header.encode("ascii") + table.tobytes()))


def read_ply(path: Path) -> dict[str, torch.Tensor]:
    """Read a 3DGS .ply into raw parameters (the inverse of write_ply); one clear error if it is not one."""
    table = read_vertices(path)
    count, names = len(table), set(table.dtype.names or ())
    required = {"x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"}
    if missing := sorted(required - names):
        raise DataError(f"{path}: not a 3D Gaussian splatting .ply (missing properties {', '.join(missing)})")

    def stack(columns: list[str]) -> torch.Tensor:
        return torch.from_numpy(np.stack([table[c].astype(np.float32) for c in columns], -1))

    if count == 0:
        raise DataError(f"{path}: holds no Gaussians (0 vertices)")
    rest_names = [f"f_rest_{i}" for i in range(sum(n.startswith("f_rest_") for n in names))]
    degree = int(round(math.sqrt(len(rest_names) // 3 + 1))) - 1
    if len(rest_names) % 3 or (degree + 1) ** 2 != len(rest_names) // 3 + 1 or not set(rest_names) <= names:
        raise DataError(f"{path}: {len(rest_names)} f_rest properties are not f_rest_0 .. f_rest_M-1 with M = 3·((degree+1)²−1)")
    if degree > MAX_SH_DEGREE:
        raise DataError(f"{path}: SH degree {degree} ({len(rest_names)} f_rest properties); degrees 0 to {MAX_SH_DEGREE} are supported")
    rest = stack(rest_names) if rest_names else torch.zeros(count, 0)
    gaussians = {
        "means": stack(["x", "y", "z"]),
        "scales": stack(["scale_0", "scale_1", "scale_2"]),
        "quats": stack(["rot_0", "rot_1", "rot_2", "rot_3"]),
        "opacities": stack(["opacity"])[:, 0],
        "sh0": stack(["f_dc_0", "f_dc_1", "f_dc_2"])[:, None, :],
        "shN": rest.view(count, 3, -1).transpose(1, 2).contiguous(),  # [N, K−1, 3]
    }
    finite = torch.stack([t.reshape(count, -1).isfinite().all(-1) for t in gaussians.values()]).all(0)  # [N]
    if not finite.all():
        dropped = int((~finite).sum())
        if dropped == count:
            raise DataError(f"{path}: every one of its {count} Gaussians has a NaN or infinite value")
        warnings.warn(f"{path}: dropped {dropped} of {count} Gaussians with NaN or infinite values", stacklevel=2)
        gaussians = {name: t[finite].contiguous() for name, t in gaussians.items()}
    return gaussians
