"""FCAF3D's head pieces for axis-aligned boxes (Rukhovich et al. 2022; mmdet3d's FCAF3DHead): target
assignment, the three losses, box decoding and per-class NMS.

Boxes are (x_min, y_min, z_min, x_max, y_max, z_max). A location regresses its six distances to
the faces of its box (d_x−, d_x+, d_y−, d_y+, d_z−, d_z+). Assignment per scene, for locations of
all levels: (1) the location lies inside the box; (2) the box's level is the last one, counted from
the finest, that still holds at least `assign_threshold` (27) of its locations — the coarsest level
when every level does, the finest when none does; (3) the `center_threshold` (18) locations of
highest centerness on that level; (4) among boxes left, the smallest. The rest are background.

One deliberate difference, `min_size`: a box thinner than the finest locations' spacing (a picture
2 cm deep on a wall, with locations every 8 cm) often holds no location at all, so FCAF3D's rule
leaves it unassigned and undetectable at any score. For steps (1)–(3) and the centerness targets
each box is grown symmetrically to at least `min_size` per axis; the regression target stays the
true box. With min_size 0 the rule is FCAF3D's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from detect.metrics import box_iou


def face_distances(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """[N, B, 6] distances of points [N, 3] to the faces of boxes [B, 6] (positive inside)."""
    low, high = boxes[None, :, :3], boxes[None, :, 3:]
    p = points[:, None, :]
    return torch.stack([p[..., 0] - low[..., 0], high[..., 0] - p[..., 0], p[..., 1] - low[..., 1], high[..., 1] - p[..., 1],
                        p[..., 2] - low[..., 2], high[..., 2] - p[..., 2]], dim=-1)


def centerness(distances: torch.Tensor) -> torch.Tensor:
    """√(Π over axes of min/max of the two face distances) [...], from distances [..., 6]."""
    pairs = distances.view(*distances.shape[:-1], 3, 2)
    ratio = pairs.min(-1).values / pairs.max(-1).values.clamp_min(1e-12)
    return ratio.clamp_min(0).prod(-1).sqrt()


@torch.no_grad()
def assign_targets(points: list[torch.Tensor], boxes: torch.Tensor, labels: torch.Tensor, assign_threshold: int = 27,
                   center_threshold: int = 18, min_size: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FCAF3D targets of one scene for the locations of every level (points [N_l, 3] per level):
    centerness [N], box [N, 6] and class [N] (−1: background) of the assigned box."""
    levels = torch.cat([torch.full((len(p),), i, dtype=torch.long, device=p.device) for i, p in enumerate(points)])
    locations = torch.cat(points)  # [N, 3]
    n, b = len(locations), len(boxes)
    if b == 0:
        return locations.new_zeros(n), locations.new_zeros(n, 6), torch.full((n,), -1, dtype=torch.long, device=locations.device)
    centres, sizes = (boxes[:, :3] + boxes[:, 3:]) / 2, (boxes[:, 3:] - boxes[:, :3]).clamp_min(min_size)
    distances = face_distances(locations, torch.cat([centres - sizes / 2, centres + sizes / 2], 1))  # [N, B, 6] to the grown boxes
    inside = distances.min(-1).values > 0  # [N, B]
    per_level = torch.stack([inside[levels == i].sum(0) for i in range(len(points))])  # [L, B]
    too_few = per_level < assign_threshold
    best = (too_few.int().argmax(0) - 1).clamp_min(0)  # the level before the first with too few
    best = torch.where(too_few.any(0), best, torch.full_like(best, len(points) - 1))  # [B]
    on_level = levels[:, None] == best[None, :]  # [N, B]
    score = torch.where(inside & on_level, centerness(distances), torch.full((n, b), -1.0, device=locations.device))
    kth = score.topk(min(center_threshold + 1, n), dim=0).values[-1]  # [B] the (threshold+1)-th best
    chosen = score > kth[None, :]
    volumes = (boxes[:, 3:] - boxes[:, :3]).prod(-1)
    volume = torch.where(chosen, volumes[None, :].expand(n, b), torch.full((n, b), float("inf"), device=locations.device))
    smallest, index = volume.min(1)
    rows = torch.arange(n, device=locations.device)
    targets_class = torch.where(torch.isinf(smallest), torch.full_like(labels[index], -1), labels[index])
    return score[rows, index].clamp_min(0), boxes[index], targets_class


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss summed over locations [N] and classes [N, C] (target −1: background)."""
    one_hot = F.one_hot(targets.clamp_min(0), logits.shape[1]).to(logits.dtype) * (targets >= 0)[:, None]
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none")
    p_t = p * one_hot + (1 - p) * (1 - one_hot)
    alpha_t = alpha * one_hot + (1 - alpha) * (1 - one_hot)
    return (alpha_t * (1 - p_t) ** gamma * ce).sum()


def iou_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − IoU [P] of matched axis-aligned boxes [P, 6] (differentiable)."""
    low, high = torch.maximum(predicted[:, :3], target[:, :3]), torch.minimum(predicted[:, 3:], target[:, 3:])
    intersection = (high - low).clamp_min(0).prod(-1)
    union = (predicted[:, 3:] - predicted[:, :3]).prod(-1) + (target[:, 3:] - target[:, :3]).prod(-1) - intersection
    return 1 - intersection / union.clamp_min(1e-12)


def boxes_from_distances(points: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """Boxes [N, 6] from locations [N, 3] and their face distances [N, 6]."""
    return torch.cat([points - distances[:, 0::2], points + distances[:, 1::2]], dim=-1)


def multiclass_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float = 0.5, score_threshold: float = 0.01,
                   nms_pre: int = 1000) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class greedy axis-aligned NMS of boxes [N, 6] with class scores [N, C]: the nms_pre
    locations of highest maximum score, then for each class those above score_threshold.
    Returns boxes [K, 6], scores [K], labels [K]."""
    if nms_pre and len(scores) > nms_pre:
        top = scores.max(1).values.topk(nms_pre).indices
        boxes, scores = boxes[top], scores[top]
    kept_boxes, kept_scores, kept_labels = [], [], []
    for c in range(scores.shape[1]):
        candidates = torch.nonzero(scores[:, c] > score_threshold).squeeze(1)
        order = candidates[scores[candidates, c].argsort(descending=True)]
        ious = torch.from_numpy(box_iou(*[boxes[order].double().cpu().numpy()] * 2)).to(boxes.device) if len(order) else boxes.new_zeros(0, 0)
        suppressed = torch.zeros(len(order), dtype=torch.bool, device=boxes.device)
        for i in range(len(order)):
            if suppressed[i]:
                continue
            kept_boxes.append(boxes[order[i]])
            kept_scores.append(scores[order[i], c])
            kept_labels.append(c)
            suppressed |= ious[i] > iou_threshold
    if not kept_boxes:
        return boxes.new_zeros(0, 6), scores.new_zeros(0), torch.zeros(0, dtype=torch.long, device=boxes.device)
    return torch.stack(kept_boxes), torch.stack(kept_scores), torch.tensor(kept_labels, device=boxes.device)
