"""The viewer's pure parts: a browser camera → intrinsics and pose, render outputs → an image.

viser reports each client's camera in OpenCV axes (x right, y down, looking along +z), like the
toolkit: `wxyz`/`position` are the rotation and translation of camera-to-world, and `fov` is the
vertical field of view.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import viser.transforms as vtf

MODES = ("RGB", "Depth", "Opacity")


@dataclass(frozen=True)
class Camera:
    """A browser camera: rotation `wxyz` [4] and `position` [3] of camera-to-world (OpenCV),
    vertical field of view `fov` (radians) and the canvas `aspect` (width / height)."""

    wxyz: tuple[float, float, float, float]
    position: tuple[float, float, float]
    fov: float
    aspect: float

    @classmethod
    def of(cls, camera) -> "Camera":
        """Snapshot of a viser CameraHandle."""
        return cls(tuple(map(float, camera.wxyz)), tuple(map(float, camera.position)), float(camera.fov), float(camera.aspect))


def image_size(aspect: float, long_side: int) -> tuple[int, int]:
    """(width, height) with the given aspect whose longer side is `long_side` pixels."""
    if aspect >= 1:
        return long_side, max(1, round(long_side / aspect))
    return max(1, round(long_side * aspect)), long_side


def camera_matrices(camera: Camera, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K [3, 3] (square pixels, centred principal point) and c2w [4, 4] for a `width`×`height` render."""
    focal = 0.5 * height / np.tan(0.5 * camera.fov)
    K = torch.tensor([[focal, 0.0, 0.5 * width], [0.0, focal, 0.5 * height], [0.0, 0.0, 1.0]], dtype=torch.float32)
    c2w = torch.eye(4)
    c2w[:3, :3] = torch.from_numpy(vtf.SO3(np.asarray(camera.wxyz)).as_matrix()).float()
    c2w[:3, 3] = torch.tensor(camera.position, dtype=torch.float32)
    return K, c2w


def to_image(outputs: dict[str, torch.Tensor], mode: str) -> np.ndarray:
    """render_view outputs (on the CPU) → uint8 [H, W, 3] for the render `mode` (one of MODES)."""
    if mode == "RGB":
        image = outputs["rgb"].numpy()  # [H, W, 3]
    elif mode == "Depth":
        image = colorize_depth(outputs["depth"].numpy(), outputs["opacity"].numpy())
    elif mode == "Opacity":
        image = np.repeat(outputs["opacity"].numpy()[..., None], 3, axis=-1)
    else:
        raise ValueError(f"render mode must be one of {MODES}, got {mode!r}")
    return (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def colorize_depth(depth: np.ndarray, opacity: np.ndarray) -> np.ndarray:
    """Depth [H, W] → turbo colours [H, W, 3] in [0, 1], near red to far blue, stretched over the
    2–98% range of the mostly opaque pixels and faded to black where nothing was hit."""
    solid = depth[opacity > 0.5]
    if solid.size == 0:
        return np.zeros((*depth.shape, 3), dtype=np.float32)
    low, high = np.quantile(solid, [0.02, 0.98])
    t = np.clip((high - depth) / max(high - low, 1e-8), 0.0, 1.0)
    return _turbo()[np.round(t * 255).astype(np.int64)] * np.clip(opacity, 0.0, 1.0)[..., None]


@lru_cache(maxsize=1)
def _turbo() -> np.ndarray:
    """The turbo colour map as a [256, 3] table."""
    from matplotlib import colormaps

    return colormaps["turbo"](np.linspace(0.0, 1.0, 256))[:, :3].astype(np.float32)
