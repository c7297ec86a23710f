"""Ray encodings and image-based lookups for learned samplers (ProNeRF's PAS, IBR-style methods).

- `plucker`: the 6-D Plücker coordinates (d̂, o × d̂) of a ray, the same for every point on it.
- `ndc_to_world`: inverse of the forward-facing NDC warp (`renderers.cameras.to_ndc`).
- `project_to_views`: points per ray into several cameras per ray (OpenCV, pixel centres at +0.5).
- `fetch_colors`: bilinear colour lookup of those projections, invalid ones masked and filled.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def plucker(
    origins: torch.Tensor,  # [R, 3]
    directions: torch.Tensor,  # [R, 3] any length
) -> torch.Tensor:
    """[R, 6] Plücker coordinates (d̂, o × d̂): invariant to where the origin sits on the ray."""
    assert origins.shape == directions.shape and origins.shape[-1] == 3, f"origins {tuple(origins.shape)}, directions {tuple(directions.shape)}"
    d = F.normalize(directions, dim=-1)
    return torch.cat([d, torch.linalg.cross(origins, d)], dim=-1)


def ndc_to_world(
    points: torch.Tensor,  # [R, S, 3] NDC points
    K: torch.Tensor,  # [R, 3, 3] intrinsics the NDC warp used
    width: int,
    height: int,
    near_plane: float = 1.0,
    max_ndc_z: float = 1.0 - 1e-6,
) -> torch.Tensor:
    """[R, S, 3] world points of NDC points (NDC z is clamped below 1, the point at infinity)."""
    assert points.dim() == 3 and points.shape[-1] == 3 and K.shape == (points.shape[0], 3, 3), f"points {tuple(points.shape)}, K {tuple(K.shape)}"
    fx, fy = K[:, 0, 0, None], K[:, 1, 1, None]  # [R, 1]
    z = 2 * near_plane / (points[..., 2].clamp(max=max_ndc_z) - 1)  # [R, S], negative: the world looks down −z
    x = -points[..., 0] * z * width / (2 * fx)
    y = -points[..., 1] * z * height / (2 * fy)
    return torch.stack([x, y, z], dim=-1)


def project_to_views(
    points: torch.Tensor,  # [R, S, 3] world
    K: torch.Tensor,  # [R, V, 3, 3]
    c2w: torch.Tensor,  # [R, V, 4, 4]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Continuous pixel coordinates [R, V, S, 2] (pixel (u, v) spans [u, u+1)) and z-depths [R, V, S]."""
    r, s, _ = points.shape
    assert K.shape[0] == r and K.shape[2:] == (3, 3) and c2w.shape == K.shape[:2] + (4, 4), f"K {tuple(K.shape)}, c2w {tuple(c2w.shape)} for {r} rays"
    rotation, centre = c2w[..., :3, :3], c2w[..., :3, 3]  # [R, V, 3, 3], [R, V, 3]
    cam = torch.einsum("rvji,rvsj->rvsi", rotation, points[:, None] - centre[:, :, None])  # [R, V, S, 3] = Rᵀ(X − c)
    z = cam[..., 2]
    uv = torch.einsum("rvij,rvsj->rvsi", K[..., :2, :2], cam[..., :2] / z[..., None]) + K[:, :, None, :2, 2]
    return uv, z


def fetch_colors(
    images: torch.Tensor,  # [T, H, W, C]
    view_ids: torch.Tensor,  # [R, V] long indices into images
    uv: torch.Tensor,  # [R, V, S, 2] continuous pixel coordinates in those views
    z: torch.Tensor,  # [R, V, S] z-depths in those views
    min_depth: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear colours [R, V, S, C] between pixel centres and validity [R, V, S].

    A projection is valid when it lies in front of the camera and inside the image; invalid
    colours are replaced by the mean of the same point's valid views (0 when it has none).
    """
    t, h, w, c = images.shape
    assert view_ids.shape == uv.shape[:2] and uv.shape[-1] == 2 and z.shape == uv.shape[:-1], f"view_ids {tuple(view_ids.shape)}, uv {tuple(uv.shape)}, z {tuple(z.shape)}"
    u, v = uv.unbind(-1)
    valid = (z > min_depth) & (u >= 0) & (u <= w) & (v >= 0) & (v <= h) & torch.isfinite(uv).all(-1)
    x = torch.where(valid, u - 0.5, torch.zeros_like(u)).clamp(0, w - 1)  # pixel-centre coordinates
    y = torch.where(valid, v - 0.5, torch.zeros_like(v)).clamp(0, h - 1)
    x0, y0 = x.floor().clamp(max=w - 2).long(), y.floor().clamp(max=h - 2).long()  # needs W, H ≥ 2
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]  # [R, V, S, 1]
    flat = images.reshape(-1, c)  # [T·H·W, C]
    base = (view_ids[:, :, None] * h + y0) * w + x0  # [R, V, S]

    def pixel(dy: int, dx: int) -> torch.Tensor:
        return flat[base + dy * w + dx]  # [R, V, S, C]

    colors = (pixel(0, 0) * (1 - fx) + pixel(0, 1) * fx) * (1 - fy) + (pixel(1, 0) * (1 - fx) + pixel(1, 1) * fx) * fy
    weight = valid[..., None].to(colors.dtype)  # [R, V, S, 1]
    mean = (colors * weight).sum(1, keepdim=True) / weight.sum(1, keepdim=True).clamp_min(1)  # [R, 1, S, C]
    return torch.where(valid[..., None], colors, mean), valid
