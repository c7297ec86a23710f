"""The `Scene`: everything a method needs to know about one captured or generated scene.

One camera convention inside the toolkit: **OpenCV** (x right, y down, z forward); `c2w` maps
camera to world. Loaders convert from their format's convention at the edge and nowhere else.
Images are kept in memory as float32 in [0, 1], already composited onto `background`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch


class DataError(ValueError):
    """A dataset is missing, malformed or inconsistent; the message names the file."""


@dataclass
class BoxAnnotation:
    """An object in the scene: its class and axis-aligned 3D box in world coordinates."""

    class_name: str
    box_min: tuple[float, float, float]
    box_max: tuple[float, float, float]
    instance_id: int = 0


@dataclass
class Scene:
    name: str
    root: Path
    images: torch.Tensor  # [N, H, W, 3] float32 in [0, 1]
    K: torch.Tensor  # [N, 3, 3] pixel intrinsics (pixel centres at +0.5)
    c2w: torch.Tensor  # [N, 4, 4] camera-to-world, OpenCV axes
    splits: dict[str, torch.Tensor]  # name -> [n] long indices into the views ("train", "val", "test")
    near: float  # ray start, as z-depth along the optical axis (0 in NDC)
    far: float  # ray end, as z-depth (1 in NDC)
    bounds: torch.Tensor  # [2, 3] world-space box that holds the content (min, max)
    ndc: bool = False  # forward-facing scene: methods march rays in normalised device coordinates
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)  # what transparent pixels were composited on
    image_paths: list[Path] = field(default_factory=list)
    masks: torch.Tensor | None = None  # [N, H, W] float32 alpha in [0, 1]
    depths: torch.Tensor | None = None  # [N, H, W] float32 z-depth, 0 where nothing was hit
    instance_ids: torch.Tensor | None = None  # [N, H, W] int32, 0 = background, i = objects[i-1]
    points: torch.Tensor | None = None  # [P, 3] float32 surface samples (initialisation)
    point_colors: torch.Tensor | None = None  # [P, 3] float32 in [0, 1]
    objects: list[BoxAnnotation] = field(default_factory=list)
    render_poses: torch.Tensor | None = None  # [M, 4, 4] c2w of the format's own render path
    world_transform: torch.Tensor | None = None  # [4, 4] the format's raw world frame → this Scene's (ScanNet: axisAlignment)

    def __post_init__(self) -> None:
        n, h, w, c = self.images.shape
        assert c == 3, f"images must be [N, H, W, 3], got {tuple(self.images.shape)}"
        assert self.K.shape == (n, 3, 3), f"K must be [{n}, 3, 3], got {tuple(self.K.shape)}"
        assert self.c2w.shape == (n, 4, 4), f"c2w must be [{n}, 4, 4], got {tuple(self.c2w.shape)}"
        assert self.bounds.shape == (2, 3), f"bounds must be [2, 3], got {tuple(self.bounds.shape)}"

    @property
    def num_views(self) -> int:
        return self.images.shape[0]

    @property
    def height(self) -> int:
        return self.images.shape[1]

    @property
    def width(self) -> int:
        return self.images.shape[2]

    def split(self, name: str) -> torch.Tensor:
        """[n] long view indices of a split; a clear error for an unknown one."""
        if name not in self.splits:
            raise DataError(f"{self.root}: scene has no split {name!r} (has {sorted(self.splits)})")
        return self.splits[name]
