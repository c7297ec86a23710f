"""Helpers shared by the format loaders and the synthetic generator.

Checked file access (every failure is one `DataError` naming the file), image reading and
resizing, camera-convention conversion, and reading the `recon_gt/` ground truth that
`data.synth` writes next to a scene.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F

from data.ply import read_vertices
from data.scene import BoxAnnotation, DataError

GT_DIR = "recon_gt"  # ground truth folder inside a scene: depth/, instance/, objects.json, points.ply
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


# ---------------------------------------------------------------------------------------------
# checked file access
def require_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: directory not found")
    return path


def require_file(path: str | Path, what: str = "file") -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    return path


def read_json(path: Path, expect: type = dict) -> Any:
    """The JSON value in `path` (an object unless `expect` says otherwise); else a `DataError`."""
    try:
        value = json.loads(require_file(path).read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: malformed JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable ({e})") from None
    if not isinstance(value, expect):
        raise DataError(f"{path}: expected a JSON {expect.__name__} at the top level, got {type(value).__name__}")
    return value


def get_key(obj: dict[str, Any], key: str, source: str) -> Any:
    """`obj[key]`, or a `DataError` naming `source` (e.g. "transforms_train.json: frame 3")."""
    if key not in obj:
        raise DataError(f"{source}: missing key {key!r}")
    return obj[key]


def to_float(value: Any, source: str, key: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{source}: expected a number for {key!r}, got {value!r}") from None
    if not math.isfinite(out):
        raise DataError(f"{source}: expected a finite number for {key!r}, got {value!r}")
    return out


def resolve_inside(root: Path, relative: str, source: str) -> Path:
    """`root / relative`, resolved; a path that escapes `root` is a `DataError`."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        raise DataError(f"{source}: file path {relative!r} escapes the dataset root {root}")
    return path


def check_downscale(downscale: Any) -> int:
    if isinstance(downscale, bool) or not isinstance(downscale, (int, np.integer)) or downscale < 1:
        raise DataError(f"downscale: expected a positive integer, got {downscale!r}")
    return int(downscale)


def check_background(background: Any) -> tuple[float, float, float]:
    try:
        bg = tuple(float(c) for c in background)
    except (TypeError, ValueError):
        bg = ()
    if len(bg) != 3 or not all(0.0 <= c <= 1.0 for c in bg):
        raise DataError(f"background: expected three numbers in [0, 1], got {background!r}")
    return bg  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# images
def read_image(path: Path) -> np.ndarray:
    """[H, W, 3 or 4] float32 in [0, 1] from an 8- or 16-bit image file."""
    require_file(path, "image")
    try:
        img = iio.imread(path, plugin="pillow")
    except Exception as e:  # imageio raises many types for corrupt files
        raise DataError(f"{path}: unreadable image ({e})") from None
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4):
        raise DataError(f"{path}: expected a grey, RGB or RGBA image, got shape {img.shape}")
    scale = float(np.iinfo(img.dtype).max) if np.issubdtype(img.dtype, np.integer) else 1.0
    img = img.astype(np.float32) / scale
    if img.shape[2] <= 2:  # grey (+ alpha) -> RGB (+ alpha)
        img = np.concatenate([np.repeat(img[..., :1], 3, axis=2), img[..., 1:]], axis=2)
    return img


def composite(img: np.ndarray, background: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """[H, W, 3|4] -> (rgb [H, W, 3] over `background`, alpha [H, W])."""
    if img.shape[2] == 3:
        return img, np.ones(img.shape[:2], np.float32)
    alpha = img[..., 3]
    rgb = img[..., :3] * alpha[..., None] + np.asarray(background, np.float32) * (1.0 - alpha[..., None])
    return rgb, alpha


def check_same_size(path: Path, img: np.ndarray, first: Path, size: tuple[int, int]) -> None:
    if tuple(img.shape[:2]) != tuple(size):
        raise DataError(
            f"{path}: expected a {size[1]}x{size[0]} image like {first.name}, got {img.shape[1]}x{img.shape[0]}"
        )


def downscaled_size(height: int, width: int, factor: int, source: Path) -> tuple[int, int]:
    if height // factor < 1 or width // factor < 1:
        raise DataError(f"{source}: downscale {factor} is larger than the {width}x{height} images")
    return height // factor, width // factor


def resize_area(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[H, W, C] -> [h, w, C] by area averaging (exact block means when H, W divide evenly)."""
    if img.shape[:2] == size:
        return img
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None]  # [1, C, H, W]
    return F.interpolate(x, size=size, mode="area")[0].permute(1, 2, 0).numpy()


def load_images(
    paths: list[Path], factor: int, background: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """Read same-sized images, composite them on `background`, shrink them `factor` times by area.

    Returns (rgb [N, h, w, 3] float32, alpha [N, h, w] float32, the original (H, W)).
    """
    images, masks = [], []
    size = out_size = (0, 0)
    for path in paths:
        img = read_image(path)
        if not images:
            size = img.shape[:2]
            out_size = downscaled_size(*size, factor, path)
        check_same_size(path, img, paths[0], size)
        rgb, alpha = composite(img, background)
        small = resize_area(np.concatenate([rgb, alpha[..., None]], axis=2), out_size)  # [h, w, 4]
        images.append(small[..., :3])
        masks.append(small[..., 3])
    return np.stack(images), np.stack(masks), size


def resize_nearest(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[H, W, ...] -> [h, w, ...], sampling the source pixel under each target pixel centre."""
    h, w = img.shape[:2]
    rows = ((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64)  # [h]
    cols = ((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64)  # [w]
    return img[rows][:, cols]


# ---------------------------------------------------------------------------------------------
# cameras
def intrinsics(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """[3, 3] pixel intrinsics (pixel centres at +0.5, so cx = W/2 is a centred principal point)."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def opengl_to_opencv(c2w: np.ndarray) -> np.ndarray:
    """[..., 4, 4] or [..., 3, 4] camera-to-world: negate the y and z axes (columns)."""
    out = np.array(c2w, dtype=np.float64, copy=True)
    out[..., :3, 1:3] *= -1.0
    return out


def to_homogeneous(c2w: np.ndarray) -> np.ndarray:
    """[..., 3, 4] -> [..., 4, 4]."""
    bottom = np.broadcast_to(np.array([0.0, 0.0, 0.0, 1.0]), c2w.shape[:-2] + (1, 4))
    return np.concatenate([c2w[..., :3, :4], bottom], axis=-2)


def normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """[4, 4] OpenGL camera-to-world (x right, y up, looking down -z) at `eye` facing `target`."""
    forward = normalize(np.asarray(target, np.float64) - eye)
    right = normalize(np.cross(forward, up))
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, np.cross(right, forward), -forward, eye
    return c2w


def check_finite_poses(c2w: np.ndarray, source: str, names: list[str]) -> None:
    """`DataError` naming the first view whose pose has a NaN or infinity."""
    bad = np.flatnonzero(~np.isfinite(c2w.reshape(len(c2w), -1)).all(axis=1))
    if len(bad):
        raise DataError(f"{source}: frame {bad[0]} ({names[bad[0]]}) has a non-finite pose ({len(bad)} in all)")


def drop_nonfinite_poses(c2w: np.ndarray, source: str) -> np.ndarray:
    """[N] bool mask of the views to keep; warns naming `source` when some poses are not finite.

    For formats whose trackers mark lost frames with NaN/inf poses (e.g. ScanNet), where dropping
    those frames is the expected handling rather than an error.
    """
    keep = np.isfinite(np.asarray(c2w).reshape(len(c2w), -1)).all(axis=1)  # [N]
    if not keep.all():
        dropped = np.flatnonzero(~keep)
        message = f"{source}: dropped {len(dropped)} frames with non-finite poses: {dropped[:10].tolist()}"
        warnings.warn(message, stacklevel=2)
    return keep


def similarity_apply_to_points(transform: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Move [..., 3] points by a world similarity [4, 4]."""
    return points @ transform[:3, :3].T + transform[:3, 3]


def similarity_apply_to_poses(transform: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """Move [N, 3|4, 4] poses by a world similarity [4, 4] = [s·Q | b]: R -> Q R, t -> s Q t + b."""
    scale = similarity_scale(transform)
    out = to_homogeneous(c2w)
    out[:, :3, :3] = transform[:3, :3] / scale @ out[:, :3, :3]
    out[:, :3, 3] = similarity_apply_to_points(transform, out[:, :3, 3])
    return out


def similarity_scale(transform: np.ndarray) -> float:
    return float(np.cbrt(np.linalg.det(transform[:3, :3])))


# ---------------------------------------------------------------------------------------------
# ground truth written by data.synth
def gt_paths(root: Path, key: str) -> tuple[Path, Path]:
    """(depth .npy, instance .png) of the view `key` (Blender: file_path without extension,
    e.g. "train/r_0"; LLFF: the image stem, e.g. "000")."""
    gt = root / GT_DIR
    return gt / "depth" / f"{key}.npy", gt / "instance" / f"{key}.png"


def load_ground_truth(
    root: Path, keys: list[str], size: tuple[int, int], transform: np.ndarray | None = None
) -> dict[str, Any]:
    """Scene fields from `root/recon_gt` ({} when absent): depths, instance_ids, points, point_colors, objects.

    Depth and instance maps are resized to `size` (H, W) by nearest neighbour. `transform`, a [4, 4]
    world similarity applied by the loader to the poses (LLFF: bd_factor scale, recentering,
    spherify), moves the points, scales the depths and maps each box to the axis-aligned box of
    its 8 transformed corners (which contains the object, but is looser under rotation).
    """
    gt = root / GT_DIR
    if not gt.is_dir():
        return {}
    transform = np.eye(4) if transform is None else transform
    scale = similarity_scale(transform)
    depths, instances = [], []
    for key in keys:
        depth_path, inst_path = gt_paths(root, key)
        try:
            depth = np.load(require_file(depth_path, "ground-truth depth"))
        except (ValueError, OSError) as e:
            raise DataError(f"{depth_path}: unreadable depth ({e})") from None
        inst = read_instance(inst_path)
        for path, arr in ((depth_path, depth), (inst_path, inst)):
            if arr.ndim != 2:
                raise DataError(f"{path}: expected an [H, W] map, got shape {arr.shape}")
        depths.append(resize_nearest(depth.astype(np.float32), size) * scale)
        instances.append(resize_nearest(inst, size))
    points, colors = read_points(gt / "points.ply")
    points = similarity_apply_to_points(transform, points)
    return {
        "depths": torch.from_numpy(np.stack(depths)).float(),  # [N, H, W]
        "instance_ids": torch.from_numpy(np.stack(instances).astype(np.int32)),  # [N, H, W]
        "points": torch.from_numpy(points).float(),  # [P, 3]
        "point_colors": torch.from_numpy(colors).float(),  # [P, 3]
        "objects": read_objects(gt / "objects.json", transform),
    }


def read_instance(path: Path) -> np.ndarray:
    require_file(path, "ground-truth instance map")
    try:
        return np.asarray(iio.imread(path, plugin="pillow"))
    except Exception as e:
        raise DataError(f"{path}: unreadable instance map ({e})") from None


def read_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """([P, 3] float64 points, [P, 3] float64 colours in [0, 1]) from a coloured PLY point cloud."""
    table = read_vertices(require_file(path, "ground-truth point cloud"))
    names = set(table.dtype.names or ())
    if len(table) == 0 or not {"x", "y", "z", "red", "green", "blue"} <= names:
        raise DataError(f"{path}: expected a non-empty point cloud with x y z red green blue properties")
    points = np.stack([table[a] for a in "xyz"], -1).astype(np.float64)
    colors = np.stack([table[c] for c in ("red", "green", "blue")], -1).astype(np.float64)
    finite = np.isfinite(points).all(-1) & np.isfinite(colors).all(-1)  # [P]
    if not finite.any():
        raise DataError(f"{path}: every point has a NaN or infinite value")
    if not finite.all():
        warnings.warn(f"{path}: dropped {int((~finite).sum())} of {len(finite)} points with NaN or infinite values", stacklevel=2)
    return points[finite], (colors / 255.0 if table["red"].dtype == np.uint8 else colors)[finite]


def _vec3(value: Any, source: str, key: str) -> np.ndarray:
    if not isinstance(value, list) or len(value) != 3:
        raise DataError(f"{source}: expected {key!r} as a list of 3 numbers, got {value!r}")
    return np.array([to_float(v, source, key) for v in value])


def read_objects(path: Path, transform: np.ndarray) -> list[BoxAnnotation]:
    """Boxes of `objects.json`, each mapped to the axis-aligned box of its 8 transformed corners."""
    items = read_json(path, expect=list)
    corners_sel = np.array([[i >> 2 & 1, i >> 1 & 1, i & 1] for i in range(8)], bool)  # [8, 3]
    boxes = []
    for i, item in enumerate(items):
        source = f"{path}: object {i}"
        if not isinstance(item, dict):
            raise DataError(f"{source}: expected a JSON object")
        lo, hi = (_vec3(get_key(item, key, source), source, key) for key in ("box_min", "box_max"))
        corners = np.where(corners_sel, hi, lo) @ transform[:3, :3].T + transform[:3, 3]  # [8, 3]
        boxes.append(
            BoxAnnotation(
                class_name=str(get_key(item, "class_name", source)),
                box_min=tuple(corners.min(0).tolist()),
                box_max=tuple(corners.max(0).tolist()),
                instance_id=int(get_key(item, "instance_id", source)),
            )
        )
    return boxes
