"""Cameras and rays, in the toolkit's one convention: OpenCV axes (x right, y down, z forward).

Ray directions are **not** unit length: a ray through pixel (u, v) has direction
R · K⁻¹ · (u + 0.5, v + 0.5, 1), so the parameter t along it is the z-depth in that camera
(near/far and rendered depth are z-depths, as in the NeRF and LLFF conventions).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Rays:
    origins: torch.Tensor  # [R, 3]
    directions: torch.Tensor  # [R, 3], camera-frame z component 1 (t is z-depth)
    near: torch.Tensor  # [R]
    far: torch.Tensor  # [R]
    viewdirs: torch.Tensor  # [R, 3] unit world-space viewing directions (shading input)

    def __len__(self) -> int:
        return self.origins.shape[0]

    def __getitem__(self, index) -> "Rays":
        return Rays(*(getattr(self, name)[index] for name in Rays.__dataclass_fields__))

    def to(self, device: torch.device | str) -> "Rays":
        return Rays(*(getattr(self, name).to(device) for name in Rays.__dataclass_fields__))


def pixel_rays(
    K: torch.Tensor,  # [R, 3, 3] or [3, 3]
    c2w: torch.Tensor,  # [R, 4, 4] or [4, 4]
    u: torch.Tensor,  # [R] pixel column (integer or continuous; the centre is u + 0.5)
    v: torch.Tensor,  # [R] pixel row
) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space origins [R, 3] and directions [R, 3] of rays through pixel centres."""
    assert u.shape == v.shape and u.dim() == 1, f"u, v must be [R], got {tuple(u.shape)}, {tuple(v.shape)}"
    K = K.expand(u.shape[0], 3, 3) if K.dim() == 2 else K
    c2w = c2w.expand(u.shape[0], 4, 4) if c2w.dim() == 2 else c2w
    x = (u.to(K.dtype) + 0.5 - K[:, 0, 2]) / K[:, 0, 0]
    y = (v.to(K.dtype) + 0.5 - K[:, 1, 2]) / K[:, 1, 1]
    dirs_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # [R, 3]
    directions = torch.einsum("rij,rj->ri", c2w[:, :3, :3], dirs_cam)
    return c2w[:, :3, 3].clone(), directions


def image_rays(
    K: torch.Tensor,  # [3, 3]
    c2w: torch.Tensor,  # [4, 4]
    width: int,
    height: int,
    near: float,
    far: float,
    ndc: bool = False,
) -> Rays:
    """All H·W rays of one camera, row-major (pixel (u, v) is ray v·W + u)."""
    v, u = torch.meshgrid(
        torch.arange(height, device=K.device), torch.arange(width, device=K.device), indexing="ij"
    )
    origins, directions = pixel_rays(K, c2w, u.reshape(-1), v.reshape(-1))
    return make_rays(origins, directions, near, far, K if ndc else None, width, height)


def make_rays(
    origins: torch.Tensor,  # [R, 3]
    directions: torch.Tensor,  # [R, 3]
    near: float,
    far: float,
    ndc_K: torch.Tensor | None = None,  # [3, 3] or [R, 3, 3]: convert to NDC with these intrinsics
    width: int = 0,
    height: int = 0,
) -> Rays:
    """Bundle rays; viewing directions are taken before any NDC warp."""
    viewdirs = F.normalize(directions, dim=-1)
    if ndc_K is not None:
        origins, directions = to_ndc(origins, directions, ndc_K, width, height)
    ones = torch.ones_like(origins[:, 0])
    return Rays(origins, directions, ones * near, ones * far, viewdirs)


def to_ndc(
    origins: torch.Tensor,  # [R, 3]
    directions: torch.Tensor,  # [R, 3]
    K: torch.Tensor,  # [3, 3] or [R, 3, 3]
    width: int,
    height: int,
    near_plane: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward-facing rays to normalised device coordinates (NeRF's LLFF warp).

    The world looks down −z (LLFF after recentering). Each origin is first moved along its ray to
    z = −near_plane; t ∈ [0, 1] in NDC then spans that plane → infinity.
    """
    fx = K[..., 0, 0]
    fy = K[..., 1, 1]
    t = -(near_plane + origins[:, 2]) / directions[:, 2]
    o = origins + t[:, None] * directions
    ox, oy, oz = o.unbind(-1)
    dx, dy, dz = directions.unbind(-1)
    # The LLFF world's cameras look down −z, so OpenCV's +y (down) is world −y: the NDC formula
    # below is the OpenGL one, written for world coordinates as they are.
    o_ndc = torch.stack([-2 * fx / width * ox / oz, -2 * fy / height * oy / oz, 1 + 2 * near_plane / oz], -1)
    d_ndc = torch.stack(
        [
            -2 * fx / width * (dx / dz - ox / oz),
            -2 * fy / height * (dy / dz - oy / oz),
            -2 * near_plane / oz,
        ],
        -1,
    )
    return o_ndc, d_ndc


def ndc_bounds(
    K: torch.Tensor,  # [N, 3, 3]
    c2w: torch.Tensor,  # [N, 4, 4] forward-facing cameras (the world looks down −z)
    width: int,
    height: int,
    near_plane: float = 1.0,
) -> torch.Tensor:
    """[2, 3] NDC box holding every ray of these cameras for t ∈ [0, 1] (near plane → infinity).

    NDC rays are straight lines, and both of their ends (on the near plane, and at infinity) are
    projective images of the pixel coordinate, so the extremes over an image lie at its corners:
    the rays through the four corner pixels' outer edges bound the box in x and y. z is [−1, 1].
    Views away from the mean pose reach beyond [−1, 1] in x and y (their near-plane points are
    shifted by the camera's offset), so a field boxed to [−1, 1]³ would cut off the image borders.
    """
    u = torch.tensor([0.0, width, 0.0, width], dtype=K.dtype, device=K.device) - 0.5  # pixel_rays adds 0.5
    v = torch.tensor([0.0, 0.0, height, height], dtype=K.dtype, device=K.device) - 0.5
    n = K.shape[0]
    K4, c2w4 = K.repeat_interleave(4, 0), c2w.repeat_interleave(4, 0)  # [4N, 3, 3], [4N, 4, 4]
    origins, directions = pixel_rays(K4, c2w4, u.repeat(n), v.repeat(n))
    o, d = to_ndc(origins, directions, K4, width, height, near_plane)
    ends = torch.cat([o, o + d])[:, :2]  # [8N, 2] x, y at t = 0 and t = 1
    low = torch.cat([ends.amin(0), ends.new_tensor([-1.0])])
    high = torch.cat([ends.amax(0), ends.new_tensor([1.0])])
    return torch.stack([low, high])


def field_bounds(scene) -> torch.Tensor:
    """[2, 3] box a field over `scene` (a data.Scene) must cover: its bounds, or in NDC scenes the
    box of every camera's NDC rays (`ndc_bounds`)."""
    return ndc_bounds(scene.K, scene.c2w, scene.width, scene.height) if scene.ndc else scene.bounds.float()


def project(
    points: torch.Tensor,  # [P, 3] world
    K: torch.Tensor,  # [3, 3]
    c2w: torch.Tensor,  # [4, 4]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Continuous pixel coordinates [P, 2] (pixel (u, v) spans [u, u+1)) and z-depths [P]."""
    w2c = torch.linalg.inv(c2w)
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = cam[:, 2]
    uv = (cam[:, :2] / z[:, None]) @ K[:2, :2].T + K[:2, 2]
    return uv, z


def look_at(eye: torch.Tensor, target: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """[4, 4] OpenCV camera-to-world at `eye` looking at `target`, `up` pointing up in the image."""
    forward = F.normalize(target - eye, dim=0)
    right = F.normalize(torch.linalg.cross(forward, up), dim=0)
    down = torch.linalg.cross(forward, right)
    c2w = torch.eye(4, dtype=eye.dtype)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, down, forward, eye
    return c2w


def orbit_path(
    c2w: torch.Tensor,  # [N, 4, 4] cameras the path should resemble
    num_frames: int = 120,
) -> torch.Tensor:
    """[num_frames, 4, 4] cameras circling the cameras' look-at centre at their mean radius/height."""
    centres = c2w[:, :3, 3]
    forward = c2w[:, :3, 2]
    target = _closest_point_to_lines(centres, forward)
    up = -F.normalize(c2w[:, :3, 1].mean(0), dim=0)  # OpenCV y points down
    offsets = centres - target
    height = (offsets @ up).mean()
    radius = (offsets - (offsets @ up)[:, None] * up).norm(dim=-1).mean()
    a = F.normalize(torch.linalg.cross(up, torch.tensor([1.0, 0.0, 0.0]).to(up)), dim=0)
    if a.norm() < 1e-6:
        a = F.normalize(torch.linalg.cross(up, torch.tensor([0.0, 1.0, 0.0]).to(up)), dim=0)
    b = torch.linalg.cross(up, a)
    poses = []
    for k in range(num_frames):
        angle = 2 * math.pi * k / num_frames
        eye = target + radius * (math.cos(angle) * a + math.sin(angle) * b) + height * up
        poses.append(look_at(eye, target, up))
    return torch.stack(poses)


def spiral_path(
    c2w: torch.Tensor,  # [N, 4, 4] forward-facing cameras
    focus_depth: float,
    num_frames: int = 120,
    rotations: int = 2,
) -> torch.Tensor:
    """[num_frames, 4, 4] spiral around the mean camera, looking at a point focus_depth ahead."""
    centres = c2w[:, :3, 3]
    mean = c2w.mean(0)
    right, down, forward = (F.normalize(mean[:3, i], dim=0) for i in range(3))
    target = centres.mean(0) + focus_depth * forward
    spread = (centres - centres.mean(0)).abs().amax(0)  # [3]
    rx, ry = float(spread @ right.abs()), float(spread @ down.abs())
    poses = []
    for k in range(num_frames):
        angle = 2 * math.pi * rotations * k / num_frames
        eye = centres.mean(0) + rx * math.cos(angle) * right + ry * math.sin(angle) * down
        poses.append(look_at(eye, target, -down))
    return torch.stack(poses)


def _closest_point_to_lines(points: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Least-squares point [3] nearest to the lines through points [N, 3] along directions [N, 3]."""
    d = F.normalize(directions, dim=-1)
    projector = torch.eye(3, dtype=d.dtype) - d[:, :, None] * d[:, None, :]  # [N, 3, 3]
    A = projector.sum(0)
    b = (projector @ points[:, :, None]).sum(0)[:, 0]
    return torch.linalg.lstsq(A, b[:, None]).solution[:, 0]
