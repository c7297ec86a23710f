"""LLFF forward-facing captures (`poses_bounds.npy` + `images[_N]/`) with bmild's processing.

Steps (as bmild `load_llff.py`): read images (from `images_{downscale}` when present, else
`images/` shrunk in memory; focal / downscale); reorder the [down, right, back] columns to OpenGL
[right, up, back]; scale translations and bounds by s = 1 / (0.75·min(bounds)); recenter on the
average pose; optionally spherify; build the render path (spiral, or circle when spherified);
hold out every `llffhold`-th view; convert to OpenCV. The world-space steps together form one
similarity transform, which is also applied to the `recon_gt/` ground truth and to the points of
a COLMAP model in `sparse/0/` (used when there are no ground-truth points).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from data.formats.common import (
    IMAGE_SUFFIXES,
    check_background,
    check_downscale,
    check_finite_poses,
    intrinsics,
    load_ground_truth,
    load_images,
    normalize,
    opengl_to_opencv,
    require_dir,
    require_file,
    similarity_apply_to_points,
    similarity_apply_to_poses,
    similarity_scale,
    to_homogeneous,
)
from data.formats.colmap import find_points3d, read_points3d
from data.scene import DataError, Scene

BD_FACTOR = 0.75
RENDER_VIEWS, SPIRAL_ROTATIONS = 120, 2


def load_llff(
    root: str | Path,
    *,
    downscale: int = 1,
    spherify: bool = False,
    llffhold: int = 8,
    ndc: bool | None = None,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
) -> Scene:
    """Load an LLFF scene (module docstring: the steps).

    `ndc` defaults to `not spherify` (forward-facing); `llffhold=0` keeps every view for training.
    """
    root = require_dir(root)
    factor = check_downscale(downscale)
    bg = check_background(background)
    if isinstance(llffhold, bool) or not isinstance(llffhold, (int, np.integer)) or llffhold < 0:
        raise DataError(f"llffhold: expected a non-negative integer, got {llffhold!r}")
    ndc = not spherify if ndc is None else bool(ndc)

    poses_file = require_file(root / "poses_bounds.npy")
    raw = _read_poses_bounds(poses_file)  # [N, 17]
    n = len(raw)
    poses = raw[:, :15].reshape(n, 3, 5)  # [N, 3, 5] = [down, right, back, t, hwf]
    bds = raw[:, 15:17].copy()  # [N, 2] near, far

    image_dir = root / f"images_{factor}"
    shrink = 1
    if factor == 1 or not image_dir.is_dir():
        image_dir, shrink = root / "images", factor
    paths = sorted(p for p in require_dir(image_dir).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(paths) != n:
        raise DataError(f"{image_dir}: expected {n} images to match {poses_file.name}, found {len(paths)}")
    check_finite_poses(poses, str(poses_file), [p.name for p in paths])
    if not (bds > 0).all():
        raise DataError(f"{poses_file}: expected positive depth bounds, got min {bds.min():g}")
    images, masks, _ = load_images(paths, shrink, bg)
    h, w = images.shape[1:3]
    focal = poses[:, 2, 4] / factor  # [N]

    c2w = np.stack([poses[:, :, 1], -poses[:, :, 0], poses[:, :, 2], poses[:, :, 3]], axis=2)  # [N, 3, 4] OpenGL
    scale = 1.0 / (bds.min() * BD_FACTOR)  # bd_factor: nearest content at ~1.33
    transform = np.diag([scale, scale, scale, 1.0])  # [4, 4] raw world -> processed world
    c2w = similarity_apply_to_poses(transform, c2w)
    recenter = np.linalg.inv(to_homogeneous(poses_avg(c2w)))
    transform, c2w = recenter @ transform, similarity_apply_to_poses(recenter, c2w)
    if spherify:
        sph, render_poses = spherify_transform(c2w)
        transform, c2w = sph @ transform, similarity_apply_to_poses(sph, c2w)
    bds *= similarity_scale(transform)
    if not spherify:
        render_poses = spiral_path(c2w, bds)

    test = np.arange(0, n, llffhold) if llffhold > 0 else np.zeros(0, np.int64)
    c2w_cv = opengl_to_opencv(c2w)  # [N, 4, 4]
    ground_truth = load_ground_truth(root, [p.stem for p in paths], (h, w), transform)
    if "points" not in ground_truth and (colmap := find_points3d(root)) is not None:
        points, colors = read_points3d(colmap)
        ground_truth["points"] = torch.from_numpy(similarity_apply_to_points(transform, points)).float()  # [P, 3]
        ground_truth["point_colors"] = torch.from_numpy(colors).float()  # [P, 3]
    return Scene(
        name=root.name,
        root=root,
        images=torch.from_numpy(images),
        K=torch.from_numpy(np.stack([intrinsics(f, f, w / 2, h / 2) for f in focal])).float(),
        c2w=torch.from_numpy(c2w_cv).float(),
        splits={
            "train": torch.from_numpy(np.setdiff1d(np.arange(n), test)).long(),
            "val": torch.from_numpy(test).long(),
            "test": torch.from_numpy(test).long(),
        },
        near=0.0 if ndc else float(bds.min() * 0.9),
        far=1.0 if ndc else float(bds.max()),
        bounds=torch.from_numpy(_frustum_box(c2w_cv, focal, h, w, bds)).float(),
        ndc=ndc,
        background=bg,
        image_paths=paths,
        masks=torch.from_numpy(masks),
        render_poses=torch.from_numpy(opengl_to_opencv(render_poses)).float(),
        **ground_truth,
    )


def _read_poses_bounds(path: Path) -> np.ndarray:
    try:
        raw = np.load(path)
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    if raw.ndim != 2 or raw.shape[1] != 17 or raw.shape[0] < 1 or not np.issubdtype(raw.dtype, np.number):
        raise DataError(f"{path}: expected a numeric array of shape [N, 17], got {raw.dtype} {raw.shape}")
    return raw.astype(np.float64)


def viewmatrix(z: np.ndarray, up: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """[3, 4] OpenGL c2w with back axis `z`, approximate `up`, centre `pos` (bmild)."""
    z = normalize(z)
    x = normalize(np.cross(up, z))
    return np.stack([x, np.cross(z, x), z, pos], axis=1)


def poses_avg(c2w: np.ndarray) -> np.ndarray:
    """[3, 4] average of [N, 3|4, 4] poses: mean centre, summed z (back) and y (up) axes."""
    return viewmatrix(c2w[:, :3, 2].sum(0), c2w[:, :3, 1].sum(0), c2w[:, :3, 3].mean(0))


def spiral_path(c2w: np.ndarray, bds: np.ndarray) -> np.ndarray:
    """[120, 4, 4] bmild spiral: 2 rotations around the average pose, focused at a depth from the bounds."""
    avg = poses_avg(c2w)
    up = normalize(c2w[:, :3, 1].sum(0))
    close_depth, inf_depth = bds.min() * 0.9, bds.max() * 5.0
    dt = 0.75
    focal = 1.0 / ((1.0 - dt) / close_depth + dt / inf_depth)
    rads = np.append(np.percentile(np.abs(c2w[:, :3, 3]), 90, axis=0), 1.0)  # [4]
    path = []
    for theta in np.linspace(0.0, 2.0 * np.pi * SPIRAL_ROTATIONS, RENDER_VIEWS + 1)[:-1]:
        centre = avg @ (np.array([np.cos(theta), -np.sin(theta), -np.sin(theta * 0.5), 1.0]) * rads)
        z = normalize(centre - avg @ np.array([0.0, 0.0, -focal, 1.0]))
        path.append(viewmatrix(z, up, centre))
    return to_homogeneous(np.stack(path))


def spherify_transform(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """bmild spherify as a world similarity [4, 4] (new frame at the point nearest all optical axes,
    mean camera distance 1) and the [120, 4, 4] circle render path in the new frame."""
    d, o = c2w[:, :3, 2:3], c2w[:, :3, 3:4]  # [N, 3, 1]
    a = np.eye(3) - d @ d.transpose(0, 2, 1)  # [N, 3, 3]
    centre = -np.linalg.inv((a.transpose(0, 2, 1) @ a).mean(0)) @ (-a @ o).mean(0)  # [3, 1]
    centre = centre[:, 0]
    vec0 = normalize((c2w[:, :3, 3] - centre).mean(0))
    vec1 = normalize(np.cross([0.1, 0.2, 0.3], vec0))
    frame = to_homogeneous(np.stack([vec1, np.cross(vec0, vec1), vec0, centre], axis=1))
    inv = np.linalg.inv(frame)
    rad = np.sqrt(np.mean(np.sum((c2w[:, :3, 3] @ inv[:3, :3].T + inv[:3, 3]) ** 2, -1)))
    transform = np.diag([1.0 / rad] * 3 + [1.0]) @ inv

    zh = (similarity_apply_to_poses(transform, c2w)[:, :3, 3]).mean(0)[2]
    radcircle = np.sqrt(1.0 - zh**2)
    path = []
    for th in np.linspace(0.0, 2.0 * np.pi, RENDER_VIEWS):
        origin = np.array([radcircle * np.cos(th), radcircle * np.sin(th), zh])
        back = normalize(origin)
        right = normalize(np.cross(back, [0.0, 0.0, -1.0]))
        path.append(np.stack([right, np.cross(back, right), back, origin], axis=1))
    return transform, to_homogeneous(np.stack(path))


def _frustum_box(c2w: np.ndarray, focal: np.ndarray, h: int, w: int, bds: np.ndarray) -> np.ndarray:
    """[2, 3] world box of every view's frustum between its near and far bound (OpenCV c2w [N, 4, 4])."""
    corners = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [-w / 2, h / 2], [w / 2, h / 2]])  # [4, 2] pixels
    rays = np.concatenate([corners[None] / focal[:, None, None], np.ones((len(focal), 4, 1))], -1)  # [N, 4, 3]
    pts = rays[:, None] * bds[:, :, None, None]  # [N, 2, 4, 3] camera space at near / far
    world = pts.reshape(len(c2w), -1, 3) @ c2w[:, :3, :3].transpose(0, 2, 1) + c2w[:, None, :3, 3]
    return np.stack([world.min((0, 1)), world.max((0, 1))])
