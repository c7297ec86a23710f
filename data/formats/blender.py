"""Blender / nerf_synthetic datasets: `transforms_{train,val,test}.json` with OpenGL camera-to-world.

Also reads the instant-ngp / nerfstudio intrinsics keys (fl_x, fl_y, cx, cy, w, h, top level or
per frame) and optional `near`, `far` and `bounds` ([[min xyz], [max xyz]]) keys of the train file.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.formats.common import (
    check_background,
    check_downscale,
    get_key,
    intrinsics,
    load_ground_truth,
    load_images,
    look_at,
    opengl_to_opencv,
    read_json,
    require_dir,
    resolve_inside,
    to_float,
)
from data.scene import DataError, Scene

SPLITS = ("train", "val", "test")
NEAR, FAR = 2.0, 6.0
BOUNDS = ((-1.5, -1.5, -1.5), (1.5, 1.5, 1.5))
RENDER_VIEWS, RENDER_ELEVATION_DEG = 40, 30.0  # nerf_synthetic render path: 40 views, 30° above


def load_blender(
    root: str | Path, *, downscale: int = 1, background: tuple[float, float, float] = (1.0, 1.0, 1.0)
) -> Scene:
    """Load a Blender-format scene; views are ordered train, val, test.

    A missing val file reuses the test views for validation; a missing train file is an error.
    """
    root = require_dir(root)
    factor = check_downscale(downscale)
    bg = check_background(background)
    metas: dict[str, tuple[Path, dict[str, Any]]] = {}  # split -> (file, contents)
    for split in SPLITS:
        path = root / f"transforms_{split}.json"
        if split == "train" or path.is_file():
            metas[split] = (path, read_json(path))

    views: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # (source, frame, meta)
    splits: dict[str, torch.Tensor] = {}
    for split, (path, meta) in metas.items():
        frames = get_key(meta, "frames", str(path))
        if not isinstance(frames, list) or (split == "train" and not frames):
            raise DataError(f"{path}: expected a non-empty list of frames")
        splits[split] = torch.arange(len(views), len(views) + len(frames))
        views += [(f"{path}: frame {i}", frame, meta) for i, frame in enumerate(frames)]
    splits.setdefault("test", torch.zeros(0, dtype=torch.long))
    splits.setdefault("val", splits["test"].clone())

    paths = [_image_path(root, source, frame) for source, frame, _ in views]
    c2w_gl = np.stack([_pose(source, frame) for source, frame, _ in views])  # [N, 4, 4]
    images, masks, (height, width) = load_images(paths, factor, bg)
    h, w = images.shape[1:3]
    K = np.stack([_intrinsics(source, frame, meta, height, width) for source, frame, meta in views])  # [N, 3, 3]
    K[:, 0] *= w / width
    K[:, 1] *= h / height

    source, train = str(metas["train"][0]), metas["train"][1]
    near = to_float(train.get("near", NEAR), source, "near")
    far = to_float(train.get("far", FAR), source, "far")
    bounds = np.asarray(train.get("bounds", BOUNDS), dtype=object)
    if bounds.shape != (2, 3):
        raise DataError(f"{source}: expected 'bounds' as [[min x, y, z], [max x, y, z]]")
    bounds = np.array([[to_float(v, source, "bounds") for v in row] for row in bounds])

    keys = [str(p.relative_to(root.resolve()).with_suffix("")) for p in paths]
    radius = float(np.median(np.linalg.norm(c2w_gl[splits["train"].numpy(), :3, 3], axis=1)))
    return Scene(
        name=root.name,
        root=root,
        images=torch.from_numpy(images),
        K=torch.from_numpy(K).float(),
        c2w=torch.from_numpy(opengl_to_opencv(c2w_gl)).float(),
        splits=splits,
        near=near,
        far=far,
        bounds=torch.from_numpy(bounds).float(),
        background=bg,
        image_paths=paths,
        masks=torch.from_numpy(masks),
        render_poses=torch.from_numpy(opengl_to_opencv(_orbit(radius))).float(),
        **load_ground_truth(root, keys, (h, w)),
    )


def _image_path(root: Path, source: str, frame: Any) -> Path:
    """The image of a frame: `file_path` as given, else with ".png" appended."""
    if not isinstance(frame, dict):
        raise DataError(f"{source}: expected a JSON object")
    file_path = get_key(frame, "file_path", source)
    if not isinstance(file_path, str) or not file_path:
        raise DataError(f"{source}: expected 'file_path' to be a non-empty string, got {file_path!r}")
    path = resolve_inside(root, file_path, source)
    if path.is_file():
        return path
    png = resolve_inside(root, file_path + ".png", source)
    if not png.is_file():
        raise DataError(f"{source}: image {file_path!r} not found (tried {path} and {png})")
    return png


def _pose(source: str, frame: dict[str, Any]) -> np.ndarray:
    """[4, 4] OpenGL camera-to-world of a frame."""
    try:
        c2w = np.asarray(get_key(frame, "transform_matrix", source), dtype=np.float64)
    except (TypeError, ValueError):
        c2w = np.zeros(0)
    if c2w.shape != (4, 4):
        raise DataError(f"{source}: expected 'transform_matrix' as a 4x4 list of numbers")
    if not np.isfinite(c2w).all():
        raise DataError(f"{source} ({frame['file_path']}): 'transform_matrix' has non-finite values")
    rotation = c2w[:3, :3]
    if not (np.allclose(rotation.T @ rotation, np.eye(3), atol=1e-2) and np.linalg.det(rotation) > 0 and np.allclose(c2w[3], [0, 0, 0, 1])):
        raise DataError(f"{source} ({frame['file_path']}): 'transform_matrix' is not a camera pose (rotation and translation over a 0 0 0 1 row)")
    return c2w


def _intrinsics(source: str, frame: dict[str, Any], meta: dict[str, Any], height: int, width: int) -> np.ndarray:
    """[3, 3] K at the original image size from per-frame or top-level keys."""

    def pick(key: str) -> float | None:
        value = frame.get(key, meta.get(key))
        return None if value is None else to_float(value, source, key)

    for key, actual in (("w", width), ("h", height)):
        given = pick(key)
        if given is not None and given != actual:
            raise DataError(f"{source}: image {key}={actual} differs from the {key!r} key ({given:g})")
    def focal(key: str, angle_key: str, size: int) -> float | None:
        """fl_x / fl_y, or the focal length of camera_angle_x / _y (a field of view in radians)."""
        value, angle = pick(key), pick(angle_key)
        if value is None and angle is not None:
            if not 0 < angle < math.pi:
                raise DataError(f"{source}: {angle_key!r} must be a field of view in radians between 0 and π, got {angle:g}")
            value = 0.5 * size / math.tan(0.5 * angle)
        if value is not None and value <= 0:
            raise DataError(f"{source}: {key!r} must be a positive focal length in pixels, got {value:g}")
        return value

    fx = focal("fl_x", "camera_angle_x", width)
    if fx is None:
        raise DataError(f"{source}: missing key 'camera_angle_x' (or 'fl_x')")
    fy = focal("fl_y", "camera_angle_y", height) or fx
    cx, cy = pick("cx"), pick("cy")
    return intrinsics(fx, fy, width / 2 if cx is None else cx, height / 2 if cy is None else cy)


def _orbit(radius: float) -> np.ndarray:
    """[40, 4, 4] OpenGL c2w on a circle 30° above the z = 0 plane, looking at the origin."""
    elev = math.radians(RENDER_ELEVATION_DEG)
    angles = np.linspace(-math.pi, math.pi, RENDER_VIEWS + 1)[:-1]
    eyes = radius * np.stack(
        [np.cos(angles) * math.cos(elev), np.sin(angles) * math.cos(elev), np.full_like(angles, math.sin(elev))], 1
    )  # [40, 3]
    return np.stack([look_at(eye, np.zeros(3), np.array([0.0, 0.0, 1.0])) for eye in eyes])
