"""Point clouds for point-based radiance fields (GPF): a scaffold fused from per-view depth, nearest
neighbours, and depth maps splatted from points.

- `fuse_depths`: PatchmatchNet's geometric-consistency fusion — a pixel survives when its depth,
  projected into a neighbouring view and back through that view's depth, returns within
  `pixel_threshold` pixels and `depth_threshold` relative depth in at least `min_consistent` views;
  survivors are back-projected (with their colour).
- `clean_points`: voxel downsampling and radius outlier removal (open3d).
- `knn`: the k nearest points of each query — open3d's C++ search (`knn`) and a plain chunked
  torch reference (`knn_reference`), equal up to ties.
- `splat_depth`: a z-buffer of the points seen from a camera, holes closed by a 3×3 min filter
  of the valid neighbours (a depth prior where no depth map exists).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from renderers.projection import project_to_views


def fuse_depths(
    depths: torch.Tensor,  # [V, H, W] z-depth, 0 = none
    images: torch.Tensor,  # [V, H, W, 3]
    K: torch.Tensor,  # [V, 3, 3]
    c2w: torch.Tensor,  # [V, 4, 4]
    *,
    neighbours: int = 4,
    min_consistent: int = 2,
    pixel_threshold: float = 1.0,
    depth_threshold: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Consistent points [P, 3] and their colours [P, 3] from every view's depth, each view checked
    against its `neighbours` nearest views (by camera centre)."""
    v, h, w = depths.shape
    assert images.shape == (v, h, w, 3) and K.shape == (v, 3, 3) and c2w.shape == (v, 4, 4)
    centres = c2w[:, :3, 3]
    order = torch.cdist(centres, centres).argsort(dim=1)[:, 1 : neighbours + 1]  # [V, n] nearest other views
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    pixels = torch.stack([cols + 0.5, rows + 0.5], -1).reshape(-1, 2)  # [H·W, 2]
    points, colours = [], []
    for ref in range(v):
        depth = depths[ref].reshape(-1)  # [H·W]
        world = _unproject(pixels, depth, K[ref], c2w[ref])  # [H·W, 3]
        consistent = torch.zeros(h * w, dtype=torch.long)
        for src in order[ref].tolist():
            uv, z = project_to_views(world[None], K[src][None, None], c2w[src][None, None])  # [1, 1, HW, 2], [1, 1, HW]
            src_depth = _bilinear(depths[src], uv[0, 0])  # [H·W] the neighbour's depth where the point lands
            back = _unproject(uv[0, 0], src_depth, K[src], c2w[src])  # its surface point, back in the reference view
            uv_back, z_back = project_to_views(back[None], K[ref][None, None], c2w[ref][None, None])
            error = (uv_back[0, 0] - pixels).norm(dim=-1)
            relative = (z_back[0, 0] - depth).abs() / depth.clamp_min(1e-9)
            consistent += ((z[0, 0] > 0) & (src_depth > 0) & (error < pixel_threshold) & (relative < depth_threshold)).long()
        keep = (depth > 0) & (consistent >= min_consistent)
        points.append(world[keep])
        colours.append(images[ref].reshape(-1, 3)[keep])
    return torch.cat(points), torch.cat(colours)


def clean_points(points: torch.Tensor, colours: torch.Tensor, voxel_size: float, radius: float, min_neighbours: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxel-downsampled points (mean per voxel) without those having fewer than `min_neighbours`
    others within `radius` (open3d)."""
    import open3d as o3d

    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.double().numpy()))
    cloud.colors = o3d.utility.Vector3dVector(colours.double().clamp(0, 1).numpy())
    if voxel_size > 0:
        cloud = cloud.voxel_down_sample(voxel_size)
    if radius > 0:
        cloud, _ = cloud.remove_radius_outlier(nb_points=min_neighbours, radius=radius)
    return torch.from_numpy(np.asarray(cloud.points)).float(), torch.from_numpy(np.asarray(cloud.colors)).float()


def knn(queries: torch.Tensor, points: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices [Q, k] into points [P, 3] of each query's [Q, 3] k nearest, nearest first, and their
    distances [Q, k] (differentiable in both inputs). The search runs in pytorch3d's `knn_points`
    for CUDA tensors when it is importable, else in open3d's C++ on the CPU."""
    assert queries.shape[-1] == points.shape[-1] == 3 and len(points) >= k
    if points.is_cuda:
        try:
            from pytorch3d.ops import knn_points
        except ImportError:
            pass
        else:
            index = knn_points(queries.detach()[None].float(), points.detach()[None].float(), K=k).idx[0]
            return index, (points[index] - queries[:, None]).norm(dim=-1)
    import open3d as o3d

    search = o3d.core.nns.NearestNeighborSearch(o3d.core.Tensor.from_numpy(points.detach().cpu().float().numpy()))
    search.knn_index()
    index, _ = search.knn_search(o3d.core.Tensor.from_numpy(queries.detach().cpu().float().contiguous().numpy()), k)
    index = torch.from_numpy(index.numpy().astype(np.int64)).to(points.device)  # [Q, k]
    return index, (points[index] - queries[:, None]).norm(dim=-1)


def knn_reference(queries: torch.Tensor, points: torch.Tensor, k: int, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """`knn` by brute force, in chunks of queries."""
    index = torch.cat([torch.cdist(q, points).topk(k, dim=1, largest=False).indices for q in queries.split(chunk)])
    return index, (points[index] - queries[:, None]).norm(dim=-1)


def splat_depth(points: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[H, W] nearest z of the points [P, 3] projected into the camera (0 where none lands), with
    one pass of a 3×3 min filter over valid neighbours filling pinholes."""
    uv, z = project_to_views(points[None], K[None, None], c2w[None, None])
    uv, z = uv[0, 0], z[0, 0]
    cols, rows = uv[:, 0].floor().long(), uv[:, 1].floor().long()
    inside = (z > 0) & (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    flat = torch.full((height * width,), float("inf"), device=points.device)
    flat = flat.scatter_reduce(0, rows[inside] * width + cols[inside], z[inside], reduce="amin")
    depth = flat.view(1, 1, height, width)
    filled = -F.max_pool2d(-depth, 3, stride=1, padding=1)  # min over the 3×3 neighbourhood
    depth = torch.where(torch.isinf(depth), filled, depth)[0, 0]
    return torch.where(torch.isinf(depth), torch.zeros_like(depth), depth)


def _unproject(pixels: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
    """World points [N, 3] at z-depths [N] through continuous pixel coordinates [N, 2]."""
    xy = (pixels - K[:2, 2]) / torch.stack([K[0, 0], K[1, 1]])
    cam = torch.cat([xy * depth[:, None], depth[:, None]], -1)
    return cam @ c2w[:3, :3].T + c2w[:3, 3]


def _bilinear(image: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Bilinear samples [N] of image [H, W] at continuous pixel coordinates uv [N, 2] (0 outside)."""
    h, w = image.shape
    grid = torch.stack([uv[:, 0] / w * 2 - 1, uv[:, 1] / h * 2 - 1], -1).view(1, 1, -1, 2)
    return F.grid_sample(image[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False).view(-1)
