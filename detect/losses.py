"""From the detector's sparse outputs to world-space locations, FCAF3D's losses and predicted boxes.

Level l's voxel j (stride s = 2^(l+1) fine voxels) is centred at origin + (j + ½)·s·voxel_size;
its six distances are in fine voxels. Losses per batch, FCAF3D's normalisation: focal loss over all
locations / positives, centerness BCE averaged over positives, and (1 − IoU) of the decoded boxes
weighted by the centerness targets / their sum. Boxes thinner than the finest level's spacing are
assigned as if grown to it (detect.head's `min_size`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from detect.head import assign_targets, boxes_from_distances, focal_loss, iou_loss, multiclass_nms


def locations(outputs: list[dict[str, torch.Tensor]], origin: torch.Tensor, voxel_size: float) -> list[torch.Tensor]:
    """World centres [M_l, 3] of every level's voxels."""
    return [origin + (o["voxels"][:, 1:].float() + 0.5) * o["stride"] * voxel_size for o in outputs]


def detection_losses(outputs: list[dict[str, torch.Tensor]], origin: torch.Tensor, voxel_size: float, boxes: list[torch.Tensor],
                     labels: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """{"classification", "centerness", "box", "loss"} for a batch with ground truth per scene
    (boxes [B_s, 6] world, labels [B_s])."""
    where = locations(outputs, origin, voxel_size)
    logits, centers, box_preds, cls_targets, center_targets, box_targets = [], [], [], [], [], []
    for scene in range(len(boxes)):
        rows = [o["voxels"][:, 0] == scene for o in outputs]
        points = [w[r] for w, r in zip(where, rows)]
        c_t, b_t, l_t = assign_targets(points, boxes[scene], labels[scene], min_size=2 * voxel_size)  # the finest level's spacing
        logits.append(torch.cat([o["classes"][r] for o, r in zip(outputs, rows)]))
        centers.append(torch.cat([o["centerness"][r] for o, r in zip(outputs, rows)]))
        distances = torch.cat([o["distances"][r] for o, r in zip(outputs, rows)]) * voxel_size
        box_preds.append(boxes_from_distances(torch.cat(points), distances))
        cls_targets.append(l_t)
        center_targets.append(c_t)
        box_targets.append(b_t)
    logits, centers, box_preds = torch.cat(logits), torch.cat(centers), torch.cat(box_preds)
    cls_targets, center_targets, box_targets = torch.cat(cls_targets), torch.cat(center_targets), torch.cat(box_targets)
    positive = cls_targets >= 0
    num_positive = max(int(positive.sum()), 1)
    classification = focal_loss(logits, cls_targets) / num_positive
    if positive.any():
        centerness = F.binary_cross_entropy_with_logits(centers[positive], center_targets[positive])
        weights = center_targets[positive]
        box = (iou_loss(box_preds[positive], box_targets[positive]) * weights).sum() / weights.sum().clamp_min(1e-6)
    else:
        centerness = box = logits.sum() * 0
    return {"classification": classification, "centerness": centerness, "box": box, "loss": classification + centerness + box, "positives": positive.sum()}


@torch.no_grad()
def predict(outputs: list[dict[str, torch.Tensor]], origin: torch.Tensor, voxel_size: float, batch_size: int, nms_pre: int = 1000,
            iou_threshold: float = 0.5, score_threshold: float = 0.01) -> list[dict[str, torch.Tensor]]:
    """Per scene {"boxes" [K, 6], "scores" [K], "labels" [K]}: scores sigmoid(class)·sigmoid(centerness), then per-class NMS."""
    where = locations(outputs, origin, voxel_size)
    results = []
    for scene in range(batch_size):
        rows = [o["voxels"][:, 0] == scene for o in outputs]
        points = torch.cat([w[r] for w, r in zip(where, rows)])
        scores = torch.sigmoid(torch.cat([o["classes"][r] for o, r in zip(outputs, rows)])) * torch.sigmoid(torch.cat([o["centerness"][r] for o, r in zip(outputs, rows)]))[:, None]
        boxes = boxes_from_distances(points, torch.cat([o["distances"][r] for o, r in zip(outputs, rows)]) * voxel_size)
        kept, kept_scores, labels = multiclass_nms(boxes, scores, iou_threshold, score_threshold, nms_pre)
        results.append({"boxes": kept, "scores": kept_scores, "labels": labels})
    return results
