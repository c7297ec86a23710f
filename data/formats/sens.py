"""ScanNet's RGB-D stream format `.sens` (version 4), read by streaming and written for tests and
the generator.

Layout, little-endian: version u32 (4) · sensor name (u64 length + bytes) · colour intrinsic,
colour extrinsic, depth intrinsic, depth extrinsic (4×4 f32 each) · colour and depth compression
i32 · colour width, height, depth width, height u32 · depth_shift f32 (depth units per metre) ·
frame count u64; then per frame: camera-to-world 4×4 f32 · colour and depth timestamps u64 ·
colour and depth byte counts u64 · the compressed colour, then depth (IMU data may follow the
frames and is ignored). A real file is 1–5 GB: `SensFile` reads the header and each frame's pose
and byte counts, seeking over the image data, and decodes only the frames asked for.
"""
from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from data.scene import DataError

VERSION = 4
COLOR_COMPRESSION = {0: "raw", 1: "png", 2: "jpeg"}  # -1 is "unknown"
DEPTH_COMPRESSION = {0: "raw_ushort", 1: "zlib_ushort"}  # 2 (occi_ushort) has no open decoder
FRAME_HEADER = struct.Struct("<16f4Q")  # camera_to_world, colour/depth timestamps, colour/depth sizes


@dataclass
class SensHeader:
    intrinsic_color: np.ndarray  # [4, 4]
    intrinsic_depth: np.ndarray  # [4, 4]
    color_size: tuple[int, int]  # (width, height)
    depth_size: tuple[int, int]
    depth_shift: float = 1000.0  # stored depth values per metre
    color_compression: int = 2
    depth_compression: int = 1
    sensor_name: str = "recon"
    extrinsic_color: np.ndarray = field(default_factory=lambda: np.eye(4, dtype=np.float32))
    extrinsic_depth: np.ndarray = field(default_factory=lambda: np.eye(4, dtype=np.float32))


class SensFile:
    """A `.sens` file's header and frame table (poses, offsets); `frame(i)` decodes frame i."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: .sens file not found")
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            self.header, count = self._read_header(f)
            self.poses = np.empty((count, 4, 4), dtype=np.float32)  # [F, 4, 4] camera-to-world, raw frame
            self._offsets = np.empty((count, 3), dtype=np.int64)  # data offset, colour bytes, depth bytes
            for i in range(count):
                raw = f.read(FRAME_HEADER.size)
                if len(raw) < FRAME_HEADER.size:
                    raise DataError(f"{self.path}: truncated at frame {i} of {count} (its header is cut off)")
                values = FRAME_HEADER.unpack(raw)
                color_bytes, depth_bytes = values[18], values[19]
                start = f.tell()
                if start + color_bytes + depth_bytes > size:
                    raise DataError(f"{self.path}: truncated at frame {i} of {count} (its images need {color_bytes + depth_bytes} bytes, {size - start} left)")
                self.poses[i] = np.asarray(values[:16], dtype=np.float32).reshape(4, 4)
                self._offsets[i] = (start, color_bytes, depth_bytes)
                f.seek(color_bytes + depth_bytes, io.SEEK_CUR)

    def __len__(self) -> int:
        return len(self.poses)

    @property
    def intrinsic_color(self) -> np.ndarray:
        return self.header.intrinsic_color

    @property
    def intrinsic_depth(self) -> np.ndarray:
        return self.header.intrinsic_depth

    @property
    def frame_ids(self) -> range:
        """The frames' numbers in the stream (what ScanNet's exports name files by)."""
        return range(len(self.poses))

    def _read_header(self, f) -> tuple[SensHeader, int]:
        def read(fmt: str):
            size = struct.calcsize(fmt)
            raw = f.read(size)
            if len(raw) < size:
                raise DataError(f"{self.path}: truncated header")
            return struct.unpack(fmt, raw)

        (version,) = read("<I")
        if version != VERSION:
            raise DataError(f"{self.path}: .sens version {version}, expected {VERSION}")
        (name_length,) = read("<Q")
        if name_length > 4096:
            raise DataError(f"{self.path}: corrupt header (sensor name of {name_length} bytes)")
        name = f.read(name_length).decode("utf-8", errors="replace")
        matrices = [np.asarray(read("<16f"), dtype=np.float32).reshape(4, 4) for _ in range(4)]
        color_compression, depth_compression = read("<2i")
        if color_compression not in COLOR_COMPRESSION:
            raise DataError(f"{self.path}: unknown colour compression type {color_compression} (supported: {COLOR_COMPRESSION})")
        if depth_compression not in DEPTH_COMPRESSION:
            raise DataError(f"{self.path}: unknown depth compression type {depth_compression} (supported: {DEPTH_COMPRESSION})")
        color_w, color_h, depth_w, depth_h = read("<4I")
        (depth_shift,) = read("<f")
        (count,) = read("<Q")
        if not depth_shift > 0:
            raise DataError(f"{self.path}: depth_shift {depth_shift} must be positive")
        header = SensHeader(
            intrinsic_color=matrices[0], extrinsic_color=matrices[1], intrinsic_depth=matrices[2], extrinsic_depth=matrices[3],
            color_size=(color_w, color_h), depth_size=(depth_w, depth_h), depth_shift=depth_shift,
            color_compression=color_compression, depth_compression=depth_compression, sensor_name=name,
        )
        return header, count

    def frame(self, index: int, draft: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Colour [H, W, 3] uint8 and depth [h, w] float32 metres (0 = no measurement) of a frame.
        With `draft` (height, width), JPEG colour is decoded at the smallest of 1/1, 1/2, 1/4, 1/8 of
        its size that is still at least that large (libjpeg's DCT scaling: faster, less memory)."""
        start, color_bytes, depth_bytes = (int(v) for v in self._offsets[index])
        with open(self.path, "rb") as f:
            f.seek(start)
            color_data, depth_data = f.read(color_bytes), f.read(depth_bytes)
        h = self.header
        try:
            if h.color_compression == 0:
                color = np.frombuffer(color_data, np.uint8).reshape(h.color_size[1], h.color_size[0], 3)
            else:
                color = decode_image(color_data, draft)
            depth_raw = zlib.decompress(depth_data) if h.depth_compression == 1 else depth_data
            depth = np.frombuffer(depth_raw, np.uint16).reshape(h.depth_size[1], h.depth_size[0])
        except (ValueError, OSError, zlib.error) as error:
            raise DataError(f"{self.path}: frame {index} is corrupt ({type(error).__name__}: {str(error).splitlines()[0]})") from None
        if draft is None and color.shape[:2] != (h.color_size[1], h.color_size[0]):
            raise DataError(f"{self.path}: frame {index}: colour image of {color.shape[1]}×{color.shape[0]}, the header says {h.color_size[0]}×{h.color_size[1]}")
        return np.ascontiguousarray(color[..., :3]), depth.astype(np.float32) / h.depth_shift


def decode_image(data: bytes | Path, draft: tuple[int, int] | None = None) -> np.ndarray:
    """A JPEG or PNG (bytes or file) as uint8 [H, W, 3]; JPEGs drafted towards `draft` (height, width)."""
    from PIL import Image

    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        if draft is not None and image.format == "JPEG":
            image.draft("RGB", (draft[1], draft[0]))
        return np.asarray(image.convert("RGB"))


def write_sens(path: str | Path, header: SensHeader, poses: np.ndarray, colors: Iterable[np.ndarray], depths: Iterable[np.ndarray]) -> None:
    """Write a `.sens` file: poses [F, 4, 4] camera-to-world, colours [H, W, 3] uint8 (JPEG or PNG
    as the header says), depths [h, w] metres (stored × depth_shift as zlib-compressed uint16);
    colours and depths may be generators, consumed one frame at a time."""
    assert header.color_compression in (1, 2) and header.depth_compression == 1, "write_sens writes png/jpeg colour and zlib depth"
    with open(path, "wb") as f:
        name = header.sensor_name.encode()
        f.write(struct.pack("<IQ", VERSION, len(name)) + name)
        for matrix in (header.intrinsic_color, header.extrinsic_color, header.intrinsic_depth, header.extrinsic_depth):
            f.write(np.asarray(matrix, dtype="<f4").tobytes())
        f.write(struct.pack("<2i4IfQ", header.color_compression, header.depth_compression, *header.color_size, *header.depth_size, header.depth_shift, len(poses)))
        for i, (pose, color, depth) in enumerate(zip(poses, colors, depths)):
            color_data = iio.imwrite("<bytes>", color, extension=".jpg" if header.color_compression == 2 else ".png", **({"quality": 92} if header.color_compression == 2 else {}))
            stored = np.clip(np.round(np.nan_to_num(depth, nan=0.0, posinf=0.0) * header.depth_shift), 0, 65535).astype("<u2")
            depth_data = zlib.compress(stored.tobytes(), 6)
            f.write(FRAME_HEADER.pack(*np.asarray(pose, dtype=np.float32).reshape(-1), i, i, len(color_data), len(depth_data)))
            f.write(color_data)
            f.write(depth_data)
        f.write(struct.pack("<Q", 0))  # no IMU frames
