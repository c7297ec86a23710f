"""FCAF3D's training augmentation applied to whole Gaussians and their boxes: flips of x and y
(probability 0.5 each), a rotation about z in ±0.087 rad, a uniform scale in [0.9, 1.1] and a
translation with standard deviation 0.1 per axis — acting on centres, orientations and sizes alike,
so the augmented Gaussians are the rotated scene, not just moved points.

A Gaussian's covariance is R·S²·Rᵀ (R from the unit quaternion w x y z). Under a rotation Q the
quaternion becomes q_Q ⊗ q; under a mirror F = diag(−1, 1, 1) the covariance F·Σ·F is that of the
rotation F·R·F, whose quaternion is (w, x, −y, −z) (x flip) or (w, −x, y, −z) (y flip); a uniform
scale s adds log s to the log-scales. Axis-aligned boxes are mapped to the axis-aligned box of their
moved corners (mmdet3d's rule for boxes without yaw).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Augmentation:
    flip_x: bool
    flip_y: bool
    angle: float  # radians about z
    scale: float
    shift: tuple[float, float, float]

    @classmethod
    def draw(cls, generator: torch.Generator, max_angle: float = 0.087, scale_range: tuple[float, float] = (0.9, 1.1), shift_std: float = 0.1) -> "Augmentation":
        u = torch.rand(4, generator=generator).tolist()
        shift = (torch.randn(3, generator=generator) * shift_std).tolist()
        return cls(u[0] < 0.5, u[1] < 0.5, (2 * u[2] - 1) * max_angle, scale_range[0] + (scale_range[1] - scale_range[0]) * u[3], tuple(shift))

    def matrix(self) -> torch.Tensor:
        """[4, 4] x ↦ s·Rz·F·x + t (flips first, then rotation, scale and translation)."""
        F = torch.diag(torch.tensor([-1.0 if self.flip_x else 1.0, -1.0 if self.flip_y else 1.0, 1.0]))
        c, s = math.cos(self.angle), math.sin(self.angle)
        R = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        M = torch.eye(4)
        M[:3, :3], M[:3, 3] = self.scale * R @ F, torch.tensor(self.shift)
        return M

    def gaussians(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Raw 3DGS parameters (means, quats, scales as logs, the rest unchanged) of the moved scene."""
        M = self.matrix()
        q = torch.nn.functional.normalize(params["quats"], dim=-1)
        if self.flip_x:
            q = q * torch.tensor([1.0, 1.0, -1.0, -1.0])
        if self.flip_y:
            q = q * torch.tensor([1.0, -1.0, 1.0, -1.0])
        half = self.angle / 2
        q = quaternion_multiply(torch.tensor([math.cos(half), 0.0, 0.0, math.sin(half)]).expand_as(q), q)
        return {**params, "means": params["means"] @ M[:3, :3].T + M[:3, 3], "quats": q, "scales": params["scales"] + math.log(self.scale)}

    def boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """Axis-aligned boxes [B, 6] (min, max) → the axis-aligned boxes of their moved corners."""
        M = self.matrix()
        corners = torch.stack([torch.stack([boxes[:, 3 * i], boxes[:, 3 * j + 1], boxes[:, 3 * k + 2]], -1)
                               for i in (0, 1) for j in (0, 1) for k in (0, 1)], 1)  # [B, 8, 3]
        moved = corners @ M[:3, :3].T + M[:3, 3]
        return torch.cat([moved.min(1).values, moved.max(1).values], -1)


def quaternion_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product a ⊗ b of quaternions [..., 4] (w x y z)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([aw * bw - ax * bx - ay * by - az * bz, aw * bx + ax * bw + ay * bz - az * by,
                        aw * by - ax * bz + ay * bw + az * bx, aw * bz + ax * by - ay * bx + az * bw], -1)
