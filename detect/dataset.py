"""The detector's inputs per scene: a reconstruction's Gaussians as centres and 11 features, the
scan's ground-truth boxes (aligned frame, as the reconstruction), and the per-Gaussian object
probability its sampling method needs — frusta of the views' 2D boxes ("box", from the same frames
the reconstruction used, read from its config.json), the ground-truth boxes ("gt"), or none
("random", "fps")."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from data.formats.scannet import CLASSES, read_annotation
from detect.reconstruct import EXPORT
from detect.sampling import (
    METHODS, box_probability, boxes_from_masks, farthest_point_sample, frustum_probability, gaussian_features, sample_by_probability, uniform_sample,
)


@dataclass
class DetectionScene:
    name: str
    means: torch.Tensor  # [N, 3] Gaussian centres
    features: torch.Tensor  # [N, 11]
    boxes: torch.Tensor  # [B, 6] (min, max), aligned frame
    labels: torch.Tensor  # [B] indices into CLASSES
    p_object: torch.Tensor | None  # [N] for "box" and "gt" sampling


def load_detection_scene(run_dir: Path, scene_dir: Path, sampling: str, z_range: tuple[float, float] = (0.2, 8.0)) -> DetectionScene:
    """One scene's inputs from its reconstruction run directory and its ScanNet scan folder."""
    import data
    from recon.export import read_ply

    if sampling not in METHODS:
        raise ValueError(f"sampling must be one of {', '.join(METHODS)}, got {sampling!r}")
    ply = Path(run_dir) / EXPORT
    if not ply.is_file():
        raise data.DataError(f"{ply}: no reconstruction (run recon detect reconstruct first)")
    means, features = gaussian_features({k: v.float() for k, v in read_ply(ply).items()})
    objects = read_annotation(Path(scene_dir), Path(scene_dir).name).objects
    boxes = torch.tensor([[*o.box_min, *o.box_max] for o in objects], dtype=torch.float32).reshape(-1, 6)
    labels = torch.tensor([CLASSES.index(o.class_name) for o in objects], dtype=torch.long)
    p_object = None
    if sampling == "box":
        options = json.loads((Path(run_dir) / "config.json").read_text())["data_options"]
        scene = data.load(scene_dir, **options)
        if scene.instance_ids is None:
            raise data.DataError(f"{scene_dir}: box-focused sampling needs 2D instance masks")
        p_object = frustum_probability(means, scene.K, scene.c2w, boxes_from_masks(scene.instance_ids), z_range)
    elif sampling == "gt":
        p_object = box_probability(means, boxes)
    return DetectionScene(Path(scene_dir).name, means, features, boxes, labels, p_object)


def sample(scene: DetectionScene, sampling: str, count: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of the Gaussians the detector sees (at most `count`)."""
    if sampling in ("box", "gt"):
        return sample_by_probability(scene.p_object, count, generator)
    if sampling == "fps":
        return farthest_point_sample(scene.means, count)
    return uniform_sample(count, len(scene.means), generator)
