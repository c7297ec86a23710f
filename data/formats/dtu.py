"""DTU in the MVSNet layout (as GPF, MVSNeRF and PatchmatchNet read it), one scan per Scene:

    ROOT/Cameras/{view:08d}_cam.txt            (or Cameras/train/) world-to-camera extrinsic, intrinsic, depth range
    ROOT/Cameras/pair.txt                      per view, its source views by score (read by `dtu_pairs`)
    ROOT/Rectified/scanN_train/rect_{view+1:03d}_{light}_r5000.png    (or scanN/) 49 views × 7 lights
    ROOT/Depths/scanN_train/depth_map_{view:04d}.pfm                  optional ground-truth depth (mm)
    ROOT/Depths/scanN_train/depth_visual_{view:04d}.png               optional object mask
    ROOT/lists/{train,val,test}.txt            optional scan lists (default test: the 22 MVSNet test scans)

`load_dtu(ROOT/Rectified/scanN_train)` (or `data.load` on that folder); `dtu_scans(ROOT, split)` lists
a split's scan folders. A cam file's intrinsics may be
for a smaller image than the PNGs (MVSNet's training cams are for ¼ of 640×512): they are scaled by
the power of two s with W ≈ s·2·cx. Depth maps (MVSNet's are ¼ size) are resized to the images by
nearest neighbour. The world frame is DTU's (millimetres); near/far are the cam files' depth range.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from data.formats.common import check_downscale, intrinsics, load_images, read_image, resize_nearest
from data.scene import DataError, Scene

VIEWS = 49
LIGHTS = 7
DEPTH_PLANES = 192  # MVSNet's plane count: far = depth_min + 192 · interval when a cam file gives no depth_max
TEST_SCANS = (1, 4, 9, 10, 11, 12, 13, 15, 23, 24, 29, 32, 33, 34, 48, 49, 62, 75, 77, 110, 114, 118)
SCAN_DIR = re.compile(r"scan(\d+)(_train)?")


def is_dtu(root: Path) -> bool:
    """A scan folder under Rectified/ whose dataset root has Cameras/."""
    return bool(SCAN_DIR.fullmatch(root.name)) and root.parent.name == "Rectified" and (root.parent.parent / "Cameras").is_dir()


def read_cam(path: Path) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(world-to-camera [4, 4], intrinsics [3, 3], near, far) of an MVSNet cam file."""
    try:
        words = path.read_text().split()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read camera file ({error})") from None
    try:
        e, i = words.index("extrinsic"), words.index("intrinsic")
        w2c = np.array(words[e + 1 : e + 17], dtype=np.float64).reshape(4, 4)
        K = np.array(words[i + 1 : i + 10], dtype=np.float64).reshape(3, 3)
        depth = [float(x) for x in words[i + 10 :]]
    except (ValueError, IndexError):
        raise DataError(f"{path}: expected 'extrinsic' 4×4, 'intrinsic' 3×3 and a depth range (MVSNet cam format)") from None
    if len(depth) < 2 or not np.all(np.isfinite(w2c)) or not np.all(np.isfinite(K)) or not all(map(math.isfinite, depth)):
        raise DataError(f"{path}: needs finite extrinsic, intrinsic and 'depth_min depth_interval' values")
    near = depth[0]
    far = depth[3] if len(depth) >= 4 else depth[0] + DEPTH_PLANES * depth[1]
    if not 0 < near < far:
        raise DataError(f"{path}: depth range [{near}, {far}] is not 0 < min < max")
    if abs(np.linalg.det(w2c[:3, :3]) - 1) > 1e-3 or not np.allclose(w2c[3], [0, 0, 0, 1]):
        raise DataError(f"{path}: extrinsic is not a rigid world-to-camera transform")
    return w2c, K, near, far


def read_pfm(path: Path) -> np.ndarray:
    """[H, W] (or [H, W, 3]) float32 of a PFM file (rows stored bottom to top)."""
    try:
        with open(path, "rb") as f:
            kind = f.readline().strip()
            width, height = (int(v) for v in f.readline().split())
            scale = float(f.readline())
            channels = {b"Pf": 1, b"PF": 3}[kind]
            data = np.frombuffer(f.read(), dtype="<f4" if scale < 0 else ">f4", count=width * height * channels)
    except (OSError, ValueError, KeyError) as error:
        raise DataError(f"{path}: not a PFM image ({type(error).__name__}: {error})".splitlines()[0]) from None
    shape = (height, width) if channels == 1 else (height, width, 3)
    return np.flipud(data.reshape(shape)).astype(np.float32)


def write_pfm(path: Path, image: np.ndarray) -> None:
    """Write [H, W] float32 as a little-endian PFM."""
    image = np.asarray(image, dtype="<f4")
    with open(path, "wb") as f:
        f.write(b"Pf\n%d %d\n-1.0\n" % (image.shape[1], image.shape[0]))
        f.write(np.flipud(image).tobytes())


def dtu_pairs(root: Path) -> dict[int, list[int]]:
    """pair.txt: for each view, its source views ordered by score."""
    path = Path(root) / "Cameras" / "pair.txt"
    try:
        words = path.read_text().split()
        pairs, at = {}, 1
        for _ in range(int(words[0])):
            view, count = int(words[at]), int(words[at + 1])
            pairs[view] = [int(words[at + 2 + 2 * k]) for k in range(count)]
            at += 2 + 2 * count
    except (OSError, ValueError, IndexError) as error:
        raise DataError(f"{path}: not an MVSNet pair file ({type(error).__name__})") from None
    return pairs


def dtu_scans(root: str | Path, split: str) -> list[Path]:
    """Scan folders (Rectified/scanN_train or scanN) of a split: lists/<split>.txt when present, else
    the 22 MVSNet test scans for "test" and every other scan for "train"."""
    root = Path(root)
    rectified = root / "Rectified"
    if not rectified.is_dir():
        raise DataError(f"{root}: not a DTU root (no Rectified/)")
    present = {int(m.group(1)): p for p in sorted(rectified.iterdir()) if (m := SCAN_DIR.fullmatch(p.name)) and p.is_dir()}
    listing = root / "lists" / f"{split}.txt"
    if listing.is_file():
        wanted = [int(w.removeprefix("scan")) for w in listing.read_text().split()]
    elif split == "test":
        wanted = [s for s in TEST_SCANS if s in present]
    elif split == "train":
        wanted = [s for s in present if s not in TEST_SCANS]
    else:
        wanted = []
    missing = [s for s in wanted if s not in present]
    if missing:
        raise DataError(f"{listing if listing.is_file() else rectified}: scan{missing[0]} is listed but not in {rectified}")
    return [present[s] for s in wanted]


def load_dtu(root: str | Path, *, light: int = 3, downscale: int = 1, holdout: int = 8) -> Scene:
    """One DTU scan: its 49 views under `light` (0–6), every `holdout`-th view held out as test
    (0: none), with depth and masks when the dataset has them."""
    root = Path(root)
    if not is_dtu(root):
        raise DataError(f"{root}: not a DTU scan folder (ROOT/Rectified/scanN[_train] beside ROOT/Cameras)")
    if not (isinstance(light, int) and 0 <= light < LIGHTS):
        raise DataError(f"light: expected 0–{LIGHTS - 1}, got {light!r}")
    if not (isinstance(holdout, int) and holdout >= 0):
        raise DataError(f"holdout: expected a non-negative integer, got {holdout!r}")
    factor = check_downscale(downscale)
    dataset = root.parent.parent
    cams = dataset / "Cameras" / "train" if (dataset / "Cameras" / "train").is_dir() else dataset / "Cameras"
    depth_dir = dataset / "Depths" / root.name
    views = [v for v in range(VIEWS) if (root / f"rect_{v + 1:03d}_{light}_r5000.png").is_file()]
    if not views:
        raise DataError(f"{root}: no images rect_XXX_{light}_r5000.png for light {light}")
    paths = [root / f"rect_{v + 1:03d}_{light}_r5000.png" for v in views]
    images, _, (height, width) = load_images(paths, factor, (0.0, 0.0, 0.0))
    h, w = images.shape[1:3]

    K, c2w, near, far = [], [], [], []
    for v in views:
        cam = cams / f"{v:08d}_cam.txt"
        if not cam.is_file():
            raise DataError(f"{cam}: camera file missing for view {v}")
        w2c, k, lo, hi = read_cam(cam)
        ratio = width / (2 * k[0, 2])
        scale = 2.0 ** round(math.log2(ratio)) if ratio > 0 else 0.0
        if not scale or abs(ratio / scale - 1) > 0.15:
            raise DataError(f"{cam}: principal point cx={k[0, 2]:g} fits no power-of-two scaling of the {width}-pixel-wide images")
        k = np.diag([scale * w / width, scale * h / height, 1.0]) @ k
        K.append(intrinsics(k[0, 0], k[1, 1], k[0, 2], k[1, 2]))
        c2w.append(np.linalg.inv(w2c))
        near.append(lo)
        far.append(hi)

    depths = masks = None
    if depth_dir.is_dir():
        depths = np.stack([resize_nearest(_depth(depth_dir / f"depth_map_{v:04d}.pfm"), (h, w)) for v in views])
        mask_paths = [depth_dir / f"depth_visual_{v:04d}.png" for v in views]
        if all(p.is_file() for p in mask_paths):
            masks = np.stack([resize_nearest(read_image(p)[..., 0], (h, w)) > 0.5 for p in mask_paths]).astype(np.float32)

    c2w = np.stack(c2w)
    test = [i for i in range(len(views)) if holdout and i % holdout == 0]
    train = [i for i in range(len(views)) if i not in test]
    centres = c2w[:, :3, 3]
    look = centres + c2w[:, :3, 2] * np.mean(near + far) / 2  # points the cameras look at, mid-range
    bounds = np.stack([np.minimum(centres.min(0), look.min(0)), np.maximum(centres.max(0), look.max(0))])
    return Scene(
        name=f"dtu_{root.name}", root=root, images=torch.from_numpy(images), K=torch.from_numpy(np.stack(K)).float(),
        c2w=torch.from_numpy(c2w).float(), splits={"train": torch.tensor(train, dtype=torch.long), "test": torch.tensor(test, dtype=torch.long)},
        near=float(min(near)), far=float(max(far)), bounds=torch.from_numpy(bounds).float(), background=(0.0, 0.0, 0.0), image_paths=paths,
        masks=None if masks is None else torch.from_numpy(masks), depths=None if depths is None else torch.from_numpy(depths),
    )


def _depth(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: depth map missing (the scan has a Depths folder, so every view needs one)")
    depth = read_pfm(path)
    if depth.ndim != 2:
        raise DataError(f"{path}: expected a one-channel depth map")
    return np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)
