"""Indoor 3D detection AP with the semantics of mmdet3d's `indoor_eval` (≡ VoteNet's `eval_det`):
axis-aligned 3D IoU, per class the VOC all-point area under the precision–recall curve of the
detections of every scene ranked by score, mAP and mAR over the classes present in the ground truth.

Per class c and threshold τ: detections of c from all scenes, sorted by score descending (a stable
sort: ties keep their input order, where the reference's unstable sort may reorder them); each is
matched to the ground-truth box of c in its own scene with the highest IoU (the first on ties); it
is a true positive when that IoU is > τ (strict) and the box is not yet matched, else a false
positive — even if another unmatched box overlaps above τ. Recall = TP/npos, precision =
TP/(TP + FP); AP is the all-point area; the class's recall is the last recall value.

A class with ground truth but no detections has AP = recall = 0. Classes predicted but absent from
every scene's ground truth have no defined recall (npos = 0): they are left out of the means
(mmdet3d's mean would be NaN) and reported on their own under "unmatched_classes".
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

THRESHOLDS = (0.25, 0.5)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Axis-aligned 3D IoU of boxes a [A, 6] and b [B, 6] (x_min, y_min, z_min, x_max, y_max, z_max) → [A, B]."""
    low = np.maximum(a[:, None, :3], b[None, :, :3])
    high = np.minimum(a[:, None, 3:], b[None, :, 3:])
    intersection = np.clip(high - low, 0, None).prod(-1)
    volume_a, volume_b = (a[:, 3:] - a[:, :3]).prod(-1), (b[:, 3:] - b[:, :3]).prod(-1)
    return intersection / np.maximum(volume_a[:, None] + volume_b[None, :] - intersection, 1e-8)


def all_point_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-point area: precision made non-increasing from the right, summed over recall steps."""
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(((r[steps + 1] - r[steps]) * p[steps + 1]).sum())


def _as_scene(entry: dict, scores: bool, name: str) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    boxes = np.asarray(entry.get("boxes", np.zeros((0, 6))), dtype=np.float64).reshape(-1, 6)
    labels = [str(label) for label in entry.get("labels", [])]
    if len(labels) != len(boxes):
        raise ValueError(f"{name}: {len(boxes)} boxes but {len(labels)} labels")
    if np.any(boxes[:, 3:] < boxes[:, :3]) or not np.all(np.isfinite(boxes)):
        raise ValueError(f"{name}: boxes must be finite (x_min, y_min, z_min, x_max, y_max, z_max) with max ≥ min")
    if not scores:
        return boxes, labels, None
    values = np.asarray(entry.get("scores", []), dtype=np.float64).reshape(-1)
    if len(values) != len(boxes):
        raise ValueError(f"{name}: {len(boxes)} predicted boxes but {len(values)} scores")
    return boxes, labels, values


def indoor_ap(ground_truth: list[dict], predictions: list[dict], iou_thresholds: tuple[float, ...] = THRESHOLDS, scene_names: list[str] | None = None) -> dict:
    """AP per class and threshold over scenes (one dict per scene, in the same order):
    ground truth {"boxes": [K, 6], "labels": [K] class names}, predictions the same with "scores": [K].

    Returns {"mAP@τ", "mAR@τ", "AP@τ": {class: AP}, "recall@τ": {class: recall}} for every τ,
    "classes" (those in the ground truth, sorted) and "unmatched_classes" (predicted, never in it).
    Errors name the scene by `scene_names` (default "scene <index>").
    """
    if len(ground_truth) != len(predictions):
        raise ValueError(f"{len(ground_truth)} ground-truth scenes but {len(predictions)} prediction scenes")
    names = scene_names or [f"scene {i}" for i in range(len(ground_truth))]
    gt = [_as_scene(entry, False, name) for entry, name in zip(ground_truth, names)]
    pred = [_as_scene(entry, True, name) for entry, name in zip(predictions, names)]
    classes = sorted({label for _, labels, _ in gt for label in labels})
    result: dict = {"classes": classes, "unmatched_classes": sorted({label for _, labels, _ in pred for label in labels} - set(classes))}
    for threshold in iou_thresholds:
        ap, recall = {}, {}
        for name in classes:
            ap[name], recall[name] = _class_ap(gt, pred, name, threshold)
        result[f"AP@{threshold:g}"], result[f"recall@{threshold:g}"] = ap, recall
        result[f"mAP@{threshold:g}"] = float(np.mean(list(ap.values()))) if ap else 0.0
        result[f"mAR@{threshold:g}"] = float(np.mean(list(recall.values()))) if recall else 0.0
    return result


def _class_ap(gt: list, pred: list, name: str, threshold: float) -> tuple[float, float]:
    """(AP, recall) of one class at one IoU threshold."""
    gt_boxes = [boxes[[label == name for label in labels]] for boxes, labels, _ in gt]  # per scene [G, 6]
    npos = sum(len(b) for b in gt_boxes)
    detections = [(scene, box, score) for scene, (boxes, labels, scores) in enumerate(pred)
                  for box, label, score in zip(boxes, labels, scores) if label == name]
    if not detections:
        return 0.0, 0.0
    order = np.argsort(-np.array([score for _, _, score in detections]), kind="stable")
    taken = [np.zeros(len(b), dtype=bool) for b in gt_boxes]
    hits = np.zeros(len(detections), dtype=bool)
    for k, index in enumerate(order):
        scene, box, _ = detections[index]
        if not len(gt_boxes[scene]):
            continue
        ious = box_iou(box[None], gt_boxes[scene])[0]
        best = int(np.argmax(ious))
        if ious[best] > threshold and not taken[scene][best]:
            taken[scene][best] = hits[k] = True
    tp, fp = np.cumsum(hits), np.cumsum(~hits)
    recall, precision = tp / npos, tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return all_point_ap(recall, precision), float(recall[-1])


def markdown_table(result: dict) -> str:
    """The per-class AP table, one row per threshold (as the paper's tables), then mAP and mAR."""
    classes = result["classes"]
    thresholds = [key.removeprefix("mAP@") for key in result if key.startswith("mAP@")]
    lines = ["| | " + " | ".join(classes) + " | mAP | mAR |", "|---|" + "---|" * (len(classes) + 2)]
    for t in thresholds:
        values = [f"{100 * result[f'AP@{t}'][c]:.1f}" for c in classes]
        lines.append(f"| AP@{t} | " + " | ".join(values) + f" | {100 * result[f'mAP@{t}']:.1f} | {100 * result[f'mAR@{t}']:.1f} |")
    return "\n".join(lines) + "\n"


def read_predictions(path: Path) -> dict[str, dict]:
    """PRED.json: {scene_id: {"boxes": [[x_min, y_min, z_min, x_max, y_max, z_max], ...], "labels": [...],
    "scores": [...]}} in the aligned frame; ValueError naming the file and the scene when malformed."""
    try:
        predictions = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a predictions file ({type(error).__name__}: {error})".splitlines()[0]) from None
    if not isinstance(predictions, dict):
        raise ValueError(f"{path}: expected {{scene_id: {{boxes, labels, scores}}}} at the top level")
    for scene, entry in predictions.items():
        if not isinstance(entry, dict) or not {"boxes", "labels", "scores"} <= set(entry):
            raise ValueError(f"{path}: scene {scene!r} needs boxes, labels and scores")
    return predictions


def evaluate_scannet(predictions: dict[str, dict], root: Path, split: str = "val", thresholds: tuple[float, ...] = THRESHOLDS) -> dict:
    """Indoor AP of predictions against the boxes of every scene of a ScanNet root's split (recomputed
    from each scan's mesh, segments and aggregation); scenes without predictions count as empty."""
    from data.formats.scannet import read_annotation, scannet_scenes

    scenes = scannet_scenes(root, split)
    unknown = sorted(set(predictions) - {s.name for s in scenes})
    if unknown:
        raise ValueError(f"predictions for {len(unknown)} scenes not in the {split} split of {root} (first: {unknown[0]})")
    ground_truth, ordered = [], []
    for scene in scenes:
        objects = read_annotation(scene, scene.name).objects
        ground_truth.append({"boxes": np.array([[*o.box_min, *o.box_max] for o in objects]).reshape(-1, 6), "labels": [o.class_name for o in objects]})
        ordered.append(predictions.get(scene.name, {"boxes": [], "labels": [], "scores": []}))
    return {"split": split, "scenes": len(scenes), **indoor_ap(ground_truth, ordered, thresholds, [s.name for s in scenes])}
