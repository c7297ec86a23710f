"""COLMAP sparse reconstructions: the coloured 3D points of `points3D.bin` / `points3D.txt`.

Real LLFF captures come with the COLMAP model their poses were computed from (`sparse/0/`);
its points, in the same world frame as `poses_bounds.npy`, initialise Gaussian splatting.
"""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from data.scene import DataError

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
