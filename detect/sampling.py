"""Which Gaussians the detector sees: Box-Focused Sampling (3DGS-DET) and its baselines, and the
per-Gaussian input features.

Box-Focused Sampling lifts every view's 2D boxes to frusta (the box's pixels between depths z_min
and z_max, i.e. the corners K⁻¹[x, y, 1]·z): a Gaussian whose centre lies inside a frustum gets that
box's score, p_obj = max over views and boxes (0 outside every frustum); p = p_obj where positive,
else p_bg = 0.01, so background survives with a small probability rather than being pruned. Then M
Gaussians (default 100k, at most N) are drawn without replacement with probability ∝ p
("weighted"), or each kept with probability p and the kept ones subsampled to M ("bernoulli").
Baselines: uniform random and farthest-point sampling; upper bound: p from the ground-truth 3D
boxes (1 inside, p_bg outside). No occlusion test is made (the card describes none).
"""
from __future__ import annotations

import numpy as np
import torch

SH_C0 = 0.28209479177387814  # Gaussian base colour = 0.5 + SH_C0 · f_dc
P_BACKGROUND = 0.01
FEATURES = 11  # exp(scale) 3 + unit quaternion 4 + RGB 3 + opacity 1
METHODS = ("box", "random", "fps", "gt")


def gaussian_features(params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw 3DGS parameters (read_ply's) → centres [N, 3] and features [N, 11]: exp(scales) 3, unit
    quaternion (w x y z) 4, RGB from the SH DC term 3, sigmoid(opacity) 1."""
    quats = torch.nn.functional.normalize(params["quats"], dim=-1)
    rgb = 0.5 + SH_C0 * params["sh0"][:, 0, :]
    features = torch.cat([params["scales"].exp(), quats, rgb, torch.sigmoid(params["opacities"])[:, None]], dim=-1)
    assert features.shape == (params["means"].shape[0], FEATURES)
    return params["means"], features


def boxes_from_masks(instance_ids: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per view, the 2D boxes [B, 4] (x1, y1, x2, y2 in pixels, edges inclusive of the mask's pixels)
    of the instances in instance_ids [V, H, W] and their scores [B] (1: ground-truth masks)."""
    out = []
    for ids in instance_ids:
        boxes = []
        for instance in torch.unique(ids[ids > 0]).tolist():
            rows, cols = torch.nonzero(ids == instance, as_tuple=True)
            boxes.append([cols.min().item(), rows.min().item(), cols.max().item() + 1, rows.max().item() + 1])
        out.append((torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), torch.ones(len(boxes))))
    return out


def frustum_probability(
    means: torch.Tensor,  # [N, 3] Gaussian centres (world)
    K: torch.Tensor,  # [V, 3, 3]
    c2w: torch.Tensor,  # [V, 4, 4] OpenCV
    boxes: list[tuple[torch.Tensor, torch.Tensor]],  # per view: boxes [B, 4] (x1, y1, x2, y2), scores [B]
    z_range: tuple[float, float] = (0.2, 8.0),
) -> torch.Tensor:
    """p_obj [N]: the highest score of a box whose frustum holds the centre, 0 when none does."""
    assert means.dim() == 2 and means.shape[1] == 3 and K.shape[0] == c2w.shape[0] == len(boxes)
    p = torch.zeros(means.shape[0])
    for k, (view_boxes, scores) in enumerate(boxes):
        if not len(view_boxes):
            continue
        w2c = torch.linalg.inv(c2w[k].double())
        cam = means.double() @ w2c[:3, :3].T + w2c[:3, 3]  # [N, 3]
        z = cam[:, 2]
        in_depth = (z >= z_range[0]) & (z <= z_range[1])
        uv = (cam[:, :2] / z.clamp_min(1e-9)[:, None]) * K[k, [0, 1], [0, 1]].double() + K[k, :2, 2].double()  # [N, 2] pixel coordinates
        inside = (uv[:, None, 0] >= view_boxes[:, 0]) & (uv[:, None, 0] <= view_boxes[:, 2]) & (uv[:, None, 1] >= view_boxes[:, 1]) & (uv[:, None, 1] <= view_boxes[:, 3])
        inside &= in_depth[:, None]  # [N, B]
        best = torch.where(inside, scores[None, :].double(), 0.0).max(dim=1).values.float()
        p = torch.maximum(p, best)
    return p


def box_probability(means: torch.Tensor, boxes_3d: torch.Tensor) -> torch.Tensor:
    """p [N]: 1 for centres inside any of the axis-aligned boxes [B, 6] (min, max), else 0 (the upper bound)."""
    inside = ((means[:, None, :] >= boxes_3d[None, :, :3]) & (means[:, None, :] <= boxes_3d[None, :, 3:])).all(-1)
    return inside.any(-1).float()


def sample_by_probability(p_obj: torch.Tensor, count: int, generator: torch.Generator, mode: str = "weighted", p_background: float = P_BACKGROUND) -> torch.Tensor:
    """Indices [min(count, N)] (or fewer, "bernoulli") drawn with p = p_obj where positive, else p_background."""
    p = torch.where(p_obj > 0, p_obj, torch.full_like(p_obj, p_background))
    count = min(count, len(p))
    if mode == "weighted":
        return torch.multinomial(p, count, replacement=False, generator=generator).sort().values
    if mode == "bernoulli":
        kept = torch.nonzero(torch.rand(len(p), generator=generator) < p).squeeze(1)
        return kept if len(kept) <= count else kept[torch.randperm(len(kept), generator=generator)[:count]].sort().values
    raise ValueError(f"sampling mode must be 'weighted' or 'bernoulli', got {mode!r}")


def uniform_sample(count: int, total: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randperm(total, generator=generator)[: min(count, total)].sort().values


def farthest_point_sample(points: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of `count` points by farthest-point sampling (open3d's C++), starting at point 0.
    open3d returns the chosen points, not their indices: the indices ride along in the colour
    channels (base 256, exact in float64 for fewer than 2²⁴ points)."""
    import open3d as o3d

    assert len(points) < 2**24, "farthest_point_sample: at most 2^24 points"
    if count >= len(points):
        return torch.arange(len(points))
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.double().numpy()))
    cloud.colors = o3d.utility.Vector3dVector(np.stack([np.arange(len(points)) % 256, np.arange(len(points)) // 256 % 256, np.arange(len(points)) // 65536], 1) / 255.0)
    chosen = np.asarray(cloud.farthest_point_down_sample(count).colors) * 255.0
    index = np.round(chosen[:, 0] + 256 * chosen[:, 1] + 65536 * chosen[:, 2]).astype(np.int64)
    return torch.from_numpy(np.sort(index))
