"""COLMAP models and scenes (the Mip-NeRF 360 / graphdeco layout that 3DGS trainers read):

    ROOT/images/            the photos (images_2/, images_4/, images_8/: downscaled copies, used when present)
    ROOT/sparse/0/          cameras, images, points3D as .bin or .txt (or ROOT/sparse/)

`load_colmap(ROOT)`: COLMAP's world-to-camera (qvec, tvec) becomes c2w once, here (COLMAP's camera
axes are OpenCV's). Camera models SIMPLE_PINHOLE and PINHOLE load as they are; SIMPLE_RADIAL,
RADIAL and OPENCV are undistorted on load to a pinhole with the same focal length and principal
point (OpenCV's remap, bilinear); any other model is an error that says to run COLMAP's
image_undistorter (or `recon data colmap`, which does). Several cameras in one model are fine. The
scene is normalised as nerfstudio does: centred on the mean camera centre and scaled so the
farthest camera is at distance 1; near/far are the 0.1th and 99.9th percentiles of the points'
depths over all views (×0.9, ×1.2). Images are sorted by name and every `holdout`-th (default 8,
the Mip-NeRF 360 protocol) is a test view. `points3D` colours initialise 3DGS.

Real LLFF captures come with the COLMAP model their poses were computed from (`sparse/0/`);
its points, in the same world frame as `poses_bounds.npy`, initialise Gaussian splatting.
`write_model` writes a model (binary or text), for tests and tools.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.scene import DataError, Scene

SPARSE_DIRS = ("sparse/0", "sparse")  # where COLMAP and LLFF's imgs2poses leave the model


def find_points3d(root: Path) -> Path | None:
    """The first points3D.bin or points3D.txt under root's sparse model folders, if any."""
    for folder in SPARSE_DIRS:
        for name in ("points3D.bin", "points3D.txt"):
            if (root / folder / name).is_file():
                return root / folder / name
    return None


def read_points3d(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """([P, 3] float64 positions, [P, 3] float64 colours in [0, 1]) of a COLMAP points3D file."""
    path = Path(path)
    try:
        xyz, rgb = _read_binary(path.read_bytes()) if path.suffix == ".bin" else _read_text(path.read_text())
    except (struct.error, ValueError, IndexError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a valid COLMAP points3D file ({error})") from None
    if len(xyz) == 0:
        raise DataError(f"{path}: COLMAP model has no 3D points")
    return xyz, rgb / 255.0


def _read_binary(raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    (count,) = struct.unpack_from("<Q", raw, 0)
    offset, xyz, rgb = 8, np.empty((count, 3)), np.empty((count, 3))
    for i in range(count):  # id u64, xyz 3×f64, rgb 3×u8, error f64, track length u64, track 2×i32 each
        xyz[i] = struct.unpack_from("<3d", raw, offset + 8)
        rgb[i] = struct.unpack_from("<3B", raw, offset + 32)
        (track_length,) = struct.unpack_from("<Q", raw, offset + 43)
        offset += 51 + 8 * track_length
    if offset != len(raw):
        raise ValueError(f"{len(raw) - offset} bytes left after {count} points")
    return xyz, rgb


def _read_text(text: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if short := [row for row in rows if len(row) < 8]:
        raise ValueError(f"a point line has {len(short[0])} fields, expected ID X Y Z R G B ERROR [TRACK]")
    table = np.array([[float(v) for v in row[1:7]] for row in rows]).reshape(-1, 6)  # X Y Z R G B
    return table[:, :3], table[:, 3:]


# ---------------------------------------------------------------------------------------------
# cameras and images
MODELS = {0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5), 4: ("OPENCV", 8)}
OTHER_MODELS = {5: "OPENCV_FISHEYE", 6: "FULL_OPENCV", 7: "FOV", 8: "SIMPLE_RADIAL_FISHEYE", 9: "RADIAL_FISHEYE", 10: "THIN_PRISM_FISHEYE"}
MODEL_IDS = {name: (model_id, count) for model_id, (name, count) in MODELS.items()}


@dataclass
class Camera:
    model: str
    width: int
    height: int
    params: np.ndarray  # COLMAP's parameter order for the model

    def intrinsics(self) -> tuple[np.ndarray, np.ndarray]:
        """([3, 3] pinhole K with pixel centres at +0.5, as COLMAP's, [4] OpenCV distortion k1 k2 p1 p2)."""
        p = self.params
        if self.model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
            fx = fy = p[0]
            cx, cy = p[1], p[2]
        else:
            fx, fy, cx, cy = p[:4]
        distortion = {"SIMPLE_RADIAL": lambda: [p[3], 0, 0, 0], "RADIAL": lambda: [p[3], p[4], 0, 0], "OPENCV": lambda: list(p[4:8])}.get(self.model, lambda: [0, 0, 0, 0])()
        return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]), np.array(distortion, dtype=np.float64)


@dataclass
class Image:
    qvec: np.ndarray  # [4] w x y z, world-to-camera rotation
    tvec: np.ndarray  # [3]
    camera_id: int
    name: str

    def c2w(self) -> np.ndarray:
        w, x, y, z = self.qvec / np.linalg.norm(self.qvec)
        R = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                      [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                      [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
        c2w = np.eye(4)
        c2w[:3, :3], c2w[:3, 3] = R.T, -R.T @ self.tvec
        return c2w


def find_model(root: Path) -> Path | None:
    """The sparse model folder (holding cameras.bin or cameras.txt) of a COLMAP scene, if any."""
    for folder in SPARSE_DIRS:
        if any((root / folder / f"cameras.{ext}").is_file() for ext in ("bin", "txt")):
            return root / folder
    return None


def is_colmap(root: Path) -> bool:
    return (root / "images").is_dir() and find_model(root) is not None


def read_model(folder: Path) -> tuple[dict[int, Camera], dict[int, Image]]:
    """Cameras and images of a model folder (binary when cameras.bin exists, else text)."""
    binary = (folder / "cameras.bin").is_file()
    parts = []
    for name, reader in (("cameras", _cameras_bin if binary else _cameras_txt), ("images", _images_bin if binary else _images_txt)):
        path = folder / f"{name}.{'bin' if binary else 'txt'}"
        if not path.is_file():
            raise DataError(f"{path}: missing from the COLMAP model")
        try:
            parts.append(reader(path.read_bytes() if binary else path.read_text()))
        except (struct.error, ValueError, IndexError, UnicodeDecodeError) as error:
            raise DataError(f"{path}: not a valid COLMAP {name} file ({type(error).__name__}: {error})".splitlines()[0]) from None
    cameras, images = parts
    if not images:
        raise DataError(f"{folder}: the COLMAP model registers no images")
    if missing := sorted({im.camera_id for im in images.values()} - set(cameras)):
        raise DataError(f"{folder / ('images.bin' if binary else 'images.txt')}: images refer to camera {missing[0]}, not in the model")
    return cameras, images


def _camera(model_id: int, width: int, height: int, params: list[float]) -> Camera:
    if model_id not in MODELS:
        name = OTHER_MODELS.get(model_id, f"model id {model_id}")
        raise ValueError(f"camera model {name} is not supported: undistort the images first (colmap image_undistorter, or recon data colmap)")
    name, count = MODELS[model_id]
    if len(params) != count:
        raise ValueError(f"{name} takes {count} parameters, got {len(params)}")
    return Camera(name, width, height, np.array(params, dtype=np.float64))


def _cameras_bin(raw: bytes) -> dict[int, Camera]:
    (count,) = struct.unpack_from("<Q", raw, 0)
    offset, cameras = 8, {}
    for _ in range(count):  # id i32, model i32, width u64, height u64, params f64 × n
        camera_id, model_id, width, height = struct.unpack_from("<iiQQ", raw, offset)
        if model_id not in MODELS:
            _camera(model_id, width, height, [])  # the error naming the model
        n = MODELS[model_id][1]
        cameras[camera_id] = _camera(model_id, width, height, list(struct.unpack_from(f"<{n}d", raw, offset + 24)))
        offset += 24 + 8 * n
    if offset != len(raw):
        raise ValueError(f"{len(raw) - offset} bytes left after {count} cameras")
    return cameras


def _cameras_txt(text: str) -> dict[int, Camera]:
    cameras = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            fields = line.split()
            name = fields[1]
            model_id = MODEL_IDS[name][0] if name in MODEL_IDS else next((k for k, v in OTHER_MODELS.items() if v == name), -1)
            cameras[int(fields[0])] = _camera(model_id, int(fields[2]), int(fields[3]), [float(v) for v in fields[4:]])
    return cameras


def _images_bin(raw: bytes) -> dict[int, Image]:
    (count,) = struct.unpack_from("<Q", raw, 0)
    offset, images = 8, {}
    for _ in range(count):  # id i32, qvec 4×f64, tvec 3×f64, camera i32, name\0, points2D: n u64, (x f64, y f64, id i64) × n
        image_id, *pose, camera_id = struct.unpack_from("<i7di", raw, offset)
        end = raw.index(b"\0", offset + 64)
        name = raw[offset + 64 : end].decode()
        (points,) = struct.unpack_from("<Q", raw, end + 1)
        offset = end + 9 + 24 * points
        images[image_id] = Image(np.array(pose[:4]), np.array(pose[4:]), camera_id, name)
    if offset != len(raw):
        raise ValueError(f"{len(raw) - offset} bytes left after {count} images")
    return images


def _images_txt(text: str) -> dict[int, Image]:
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    images = {}
    for header in lines[0::2]:  # every image line is followed by its points2D line
        if header.strip():
            fields = header.split()
            images[int(fields[0])] = Image(np.array(fields[1:5], dtype=np.float64), np.array(fields[5:8], dtype=np.float64), int(fields[8]), " ".join(fields[9:]))
    return images


def write_model(folder: Path, cameras: dict[int, Camera], images: dict[int, Image], points: np.ndarray, colours: np.ndarray, binary: bool = True) -> None:
    """Write cameras, images (without 2D points) and points3D (colours in [0, 1], no tracks)."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = np.clip(np.round(colours * 255), 0, 255).astype(np.uint8)
    if binary:
        data = struct.pack("<Q", len(cameras)) + b"".join(
            struct.pack("<iiQQ", i, MODEL_IDS[c.model][0], c.width, c.height) + struct.pack(f"<{len(c.params)}d", *c.params) for i, c in cameras.items())
        (folder / "cameras.bin").write_bytes(data)
        data = struct.pack("<Q", len(images)) + b"".join(
            struct.pack("<i7di", i, *im.qvec, *im.tvec, im.camera_id) + im.name.encode() + b"\0" + struct.pack("<Q", 0) for i, im in images.items())
        (folder / "images.bin").write_bytes(data)
        data = struct.pack("<Q", len(points)) + b"".join(
            struct.pack("<Q3d3BdQ", k + 1, *xyz, *c, 0.5, 0) for k, (xyz, c) in enumerate(zip(points, rgb)))
        (folder / "points3D.bin").write_bytes(data)
        return
    (folder / "cameras.txt").write_text("".join(f"{i} {c.model} {c.width} {c.height} {' '.join(repr(float(v)) for v in c.params)}\n" for i, c in cameras.items()))
    (folder / "images.txt").write_text("".join(
        f"{i} {' '.join(repr(float(v)) for v in [*im.qvec, *im.tvec])} {im.camera_id} {im.name}\n\n" for i, im in images.items()))
    (folder / "points3D.txt").write_text("".join(f"{k + 1} {' '.join(repr(float(v)) for v in xyz)} {c[0]} {c[1]} {c[2]} 0.5\n" for k, (xyz, c) in enumerate(zip(points, rgb))))


def qvec_from_rotation(R: np.ndarray) -> np.ndarray:
    """[4] unit quaternion (w x y z, w ≥ 0) of a rotation matrix [3, 3]."""
    w = np.sqrt(max(0.0, 1 + R[0, 0] + R[1, 1] + R[2, 2])) / 2
    x = np.copysign(np.sqrt(max(0.0, 1 + R[0, 0] - R[1, 1] - R[2, 2])) / 2, R[2, 1] - R[1, 2])
    y = np.copysign(np.sqrt(max(0.0, 1 - R[0, 0] + R[1, 1] - R[2, 2])) / 2, R[0, 2] - R[2, 0])
    z = np.copysign(np.sqrt(max(0.0, 1 - R[0, 0] - R[1, 1] + R[2, 2])) / 2, R[1, 0] - R[0, 1])
    return np.array([w, x, y, z])


# ---------------------------------------------------------------------------------------------
# the scene
def load_colmap(root: str | Path, *, downscale: int = 1, holdout: int = 8) -> Scene:
    """A COLMAP scene (see the module docstring)."""
    import cv2

    from data.formats.common import check_downscale, downscaled_size, intrinsics, read_image, resize_area

    root = Path(root)
    folder = find_model(root)
    if folder is None or not (root / "images").is_dir():
        raise DataError(f"{root}: not a COLMAP scene (images/ and sparse/0/cameras.bin|txt)")
    factor = check_downscale(downscale)
    if not (isinstance(holdout, int) and holdout >= 0):
        raise DataError(f"holdout: expected a non-negative integer, got {holdout!r}")
    cameras, images = read_model(folder)
    ordered = sorted(images.values(), key=lambda im: im.name)
    image_dir = root / f"images_{factor}" if factor > 1 and (root / f"images_{factor}").is_dir() else root / "images"
    rgbs, Ks, c2ws = [], [], []
    size = None
    for im in ordered:
        path = image_dir / im.name
        if not path.is_file():
            raise DataError(f"{path}: image {im.name!r} of the COLMAP model is not on disk")
        camera = cameras[im.camera_id]
        K, distortion = camera.intrinsics()
        rgb = read_image(path)[..., :3]
        h, w = rgb.shape[:2]
        K = np.diag([w / camera.width, h / camera.height, 1.0]) @ K  # the model's size → the file's (images_N)
        if distortion.any():
            shifted = K.copy()
            shifted[:2, 2] -= 0.5  # OpenCV's pixel centres are at integers
            maps = cv2.initUndistortRectifyMap(shifted, distortion, None, shifted, (w, h), cv2.CV_32FC1)
            rgb = cv2.remap(rgb, *maps, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        out = downscaled_size(h, w, factor if image_dir.name == "images" else 1, path)
        K = np.diag([out[1] / w, out[0] / h, 1.0]) @ K
        rgb = resize_area(rgb, out)
        if size is not None and rgb.shape[:2] != size:
            raise DataError(f"{path}: {rgb.shape[1]}×{rgb.shape[0]} pixels, but the first image has {size[1]}×{size[0]} (cameras of one scene share a size)")
        size = rgb.shape[:2]
        rgbs.append(rgb)
        Ks.append(intrinsics(K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
        c2ws.append(im.c2w())
    c2w = np.stack(c2ws)
    centre = c2w[:, :3, 3].mean(0)
    scale = 1.0 / max(float(np.linalg.norm(c2w[:, :3, 3] - centre, axis=1).max()), 1e-9)
    c2w[:, :3, 3] = (c2w[:, :3, 3] - centre) * scale
    points = colours = None
    near, far = 0.01, 100.0
    if (path := find_points3d(root)) is not None:
        xyz, colours = read_points3d(path)
        points = (xyz - centre) * scale
        depths = np.concatenate([(points - pose[:3, 3]) @ pose[:3, 2] for pose in c2w])
        depths = depths[depths > 0]
        if len(depths):
            near, far = max(float(np.percentile(depths, 0.1)) * 0.9, 1e-3), float(np.percentile(depths, 99.9)) * 1.2
    n = len(ordered)
    test = [i for i in range(n) if holdout and i % holdout == 0]
    train = [i for i in range(n) if i not in test]
    extent = np.concatenate([c2w[:, :3, 3], points if points is not None else np.zeros((0, 3))])
    return Scene(
        name=root.name, root=root, images=torch.from_numpy(np.stack(rgbs)).float(), K=torch.from_numpy(np.stack(Ks)).float(),
        c2w=torch.from_numpy(c2w).float(), splits={"train": torch.tensor(train, dtype=torch.long), "test": torch.tensor(test, dtype=torch.long)},
        near=near, far=far, bounds=torch.from_numpy(np.stack([np.percentile(extent, 1, axis=0), np.percentile(extent, 99, axis=0)])).float(),
        image_paths=[image_dir / im.name for im in ordered],
        points=None if points is None else torch.from_numpy(points).float(), point_colors=None if colours is None else torch.from_numpy(colours).float(),
    )
