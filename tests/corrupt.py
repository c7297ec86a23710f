"""Corrupted datasets: breakers that damage a copy of a generated scene, and the error each must give.

Shared by the loaders' tests (tests/test_data.py) and the CLI's corpus of bad inputs (tests/test_bad_inputs.py).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np

BLENDER_VIEWS, BLENDER_RES = 8, 32  # the scenes the messages below expect: 8 train, 2 val, 4 test views
LLFF_VIEWS, LLFF_RES = 17, 48  # 48 x 36 images, test views 0, 8, 16
_DELETE = object()


def _set_json(name: str, keys: list, value=_DELETE):
    """Breaker: set (or delete) a nested key of a JSON file."""

    def apply(root: Path) -> None:
        meta = json.loads((root / name).read_text())
        obj = meta
        for key in keys[:-1]:
            obj = obj[key]
        if value is _DELETE:
            del obj[keys[-1]]
        else:
            obj[keys[-1]] = value
        (root / name).write_text(json.dumps(meta))

    return apply


def _write(name: str, content):
    """Breaker: overwrite a file with text, bytes or an image array."""

    def apply(root: Path) -> None:
        if isinstance(content, np.ndarray):
            iio.imwrite(root / name, content)
        elif isinstance(content, bytes):
            (root / name).write_bytes(content)
        else:
            (root / name).write_text(content)

    return apply


def _remove(name: str):
    return lambda root: shutil.rmtree(root / name) if (root / name).is_dir() else (root / name).unlink()


def _edit_poses(edit):
    def apply(root: Path) -> None:
        raw = np.load(root / "poses_bounds.npy")
        np.save(root / "poses_bounds.npy", edit(raw))

    return apply


def _nan_at(raw: np.ndarray, row: int, col: int) -> np.ndarray:
    raw = raw.copy()
    raw[row, col] = np.nan
    return raw


TRAIN, VAL, TEST = "transforms_train.json", "transforms_val.json", "transforms_test.json"
BLENDER_BREAKS = {  # case -> (breaker, regex the DataError message must match)
    "malformed json": (_write(TRAIN, "{ not json"), "transforms_train.json: malformed JSON"),
    "json not an object": (_write(VAL, "[1, 2]"), "transforms_val.json: expected a JSON dict"),
    "no frames": (_set_json(TRAIN, ["frames"]), "transforms_train.json: missing key 'frames'"),
    "no fov": (_set_json(TEST, ["camera_angle_x"]), "transforms_test.json: frame 0: missing key 'camera_angle_x'"),
    "no file_path": (_set_json(TRAIN, ["frames", 1, "file_path"]), "transforms_train.json: frame 1: missing key"),
    "escapes root": (_set_json(TRAIN, ["frames", 0, "file_path"], "../../outside"), "transforms_train.json.*escapes"),
    "bad matrix": (_set_json(TRAIN, ["frames", 2, "transform_matrix"], [[1, 0]]), "frame 2: expected 'transform_"),
    "nan pose": (
        _set_json(VAL, ["frames", 1, "transform_matrix", 0, 3], float("nan")),
        "transforms_val.json: frame 1 .*r_1.*non-finite",
    ),
    "missing image": (_remove("train/r_3.png"), "transforms_train.json: frame 3: image './train/r_3' not found"),
    "corrupt image": (_write("train/r_0.png", b"not a png"), "r_0.png: unreadable image"),
    "size differs": (_write("test/r_2.png", np.zeros((8, 8, 4), np.uint8)), "r_2.png: expected a 32x32 image"),
    "w key differs": (_set_json(TRAIN, ["w"], 64), "transforms_train.json: frame 0: image w=32 differs"),
    "missing depth": (_remove("recon_gt/depth/val/r_0.npy"), "recon_gt/depth/val/r_0.npy: ground-truth depth"),
    "no train file": (_remove(TRAIN), "transforms_train.json: file not found"),
    "negative fov": (_set_json(TRAIN, ["camera_angle_x"], -1), "transforms_train.json.*'camera_angle_x' must be a field of view"),
    "zero fov": (_set_json(VAL, ["camera_angle_x"], 0), "transforms_val.json.*'camera_angle_x' must be a field of view"),
    "negative focal": (_set_json(TRAIN, ["fl_x"], -100), "transforms_train.json.*'fl_x' must be a positive focal length"),
    "zero matrix": (_set_json(TEST, ["frames", 1, "transform_matrix"], [[0] * 4] * 4), "transforms_test.json: frame 1 .*not a camera pose"),
}
LLFF_BREAKS = {
    "wrong shape": (_edit_poses(lambda raw: raw[:, :15]), "poses_bounds.npy: expected .* \\[N, 17\\]"),
    "nan pose": (_edit_poses(lambda raw: _nan_at(raw, 5, 3)), "poses_bounds.npy: frame 5 \\(005.png\\)"),
    "bad bounds": (_edit_poses(lambda raw: raw * np.r_[np.ones(15), -1, -1]), "poses_bounds.npy: expected positive"),
    "image count": (_remove("images/003.png"), "images: expected 17 images"),
    "size differs": (_write("images/004.png", np.zeros((8, 8, 3), np.uint8)), "004.png: expected a 48x36 image"),
    "no images": (_remove("images"), "images: directory not found"),
    "bad objects": (_write("recon_gt/objects.json", "[{}]"), "objects.json: object 0: missing key"),
    "bad points": (_write("recon_gt/points.ply", "ply"), "points.ply: not a PLY file"),
}

# ScanNet: breakers of a copy of a generated ScanNet root (ROOM_SCENE is the scene they damage)
ROOM_FRAMES, ROOM_RES = 8, 32  # fewer than 10 frames: no lost (−inf) frames, so no warning precedes the error
ROOM_SCENE = "scans/scene0000_00"
_SENS = f"{ROOM_SCENE}/scene0000_00.sens"


def _patch_sens(edit):
    """Breaker: edit(raw bytes, frame table [F, 3] of (data offset, colour bytes, depth bytes), header
    end offset) → new bytes of the scene's .sens."""

    def apply(root: Path) -> None:
        from data.formats.sens import FRAME_HEADER, SensFile

        table = SensFile(root / _SENS)._offsets
        raw = (root / _SENS).read_bytes()
        (root / _SENS).write_bytes(edit(bytearray(raw), table, int(table[0, 0]) - FRAME_HEADER.size))

    return apply


def _set_i32(raw: bytearray, offset: int, value: int) -> bytearray:
    raw[offset : offset + 4] = np.int32(value).tobytes()
    return raw


def _compression_offset(raw: bytearray) -> int:
    """Offset of the colour compression field: version, name length, name, four 4×4 matrices."""
    return 4 + 8 + int(np.frombuffer(bytes(raw[4:12]), "<u8")[0]) + 4 * 64


def _all_poses(value: float):
    def edit(raw: bytearray, table: np.ndarray, _) -> bytearray:
        from data.formats.sens import FRAME_HEADER

        for start in table[:, 0]:
            raw[start - FRAME_HEADER.size : start - FRAME_HEADER.size + 64] = np.full(16, value, "<f4").tobytes()
        return raw

    return edit


SCANNET_BREAKS = {
    "sens truncated": (_patch_sens(lambda raw, table, _: raw[: table[5, 0] + 10]), "scene0000_00.sens: truncated at frame 5 of 8"),
    "sens version": (_patch_sens(lambda raw, table, _: _set_i32(raw, 0, 3)), "scene0000_00.sens: .sens version 3, expected 4"),
    "sens colour compression": (_patch_sens(lambda raw, table, _: _set_i32(raw, _compression_offset(raw), 7)), "unknown colour compression type 7"),
    "sens depth compression": (_patch_sens(lambda raw, table, _: _set_i32(raw, _compression_offset(raw) + 4, 2)), "unknown depth compression type 2"),
    "sens corrupt frame": (_patch_sens(lambda raw, table, _: raw[: table[3, 0]] + b"\0" * int(table[3, 1]) + raw[table[3, 0] + table[3, 1]:]), "scene0000_00.sens: frame 3 is corrupt"),
    "sens no finite pose": (_patch_sens(_all_poses(-np.inf)), "scene0000_00.sens: no frame has a finite pose"),
    "no label table": (_remove("scannetv2-labels.combined.tsv"), "scene0000_00: no scannetv2-labels.combined.tsv in the scene folder or the two above it"),
    "aggregation segment": (_set_json(f"{ROOM_SCENE}/scene0000_00.aggregation.json", ["segGroups", 6, "segments"], [999999]),
                            "aggregation.json: object 6 .* lists segment 999999 absent from scene0000_00_vh_clean_2.0.010000.segs.json"),
    "segments count": (_set_json(f"{ROOM_SCENE}/scene0000_00_vh_clean_2.0.010000.segs.json", ["segIndices"], [0, 1]), "segs.json: segIndices has 2 entries for the \\d+ vertices"),
    "axis alignment": (_write(f"{ROOM_SCENE}/scene0000_00.txt", "axisAlignment = 1 2 3\n"), "scene0000_00.txt: axisAlignment must be 16 numbers"),
}
