"""Binary little-endian PLY vertex tables, read with numpy (no open3d import needed)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data.scene import DataError

_TYPES = {"float": "<f4", "float32": "<f4", "double": "<f8", "float64": "<f8", "uchar": "u1", "uint8": "u1", "int": "<i4", "int32": "<i4", "uint": "<u4", "uint32": "<u4", "short": "<i2", "int16": "<i2", "ushort": "<u2", "uint16": "<u2", "char": "i1", "int8": "i1"}


def read_vertices(path: Path) -> np.ndarray:
    """The `vertex` element of a binary_little_endian PLY file as a structured array [N] (one
    field per property); one DataError naming the file if it is not such a file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such .ply file")
    raw = path.read_bytes()
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply\n") or end < 0:
        raise DataError(f"{path}: not a PLY file (no 'ply' ... 'end_header' header)")
    lines = raw[:end].decode("ascii", errors="replace").splitlines()
    if "format binary_little_endian 1.0" not in lines:
        raise DataError(f"{path}: only binary_little_endian PLY files are supported")
    count, fields, in_vertex = 0, [], False
    for number, line in enumerate(lines, 1):
        words = line.split()
        if words[:1] == ["element"]:
            if in_vertex:
                break  # later elements follow the vertex data, which is all we read
            if len(words) != 3 or words[1] != "vertex":
                raise DataError(f"{path}: header line {number} {line!r}: expected 'element vertex COUNT' first")
            if not (words[2].isascii() and words[2].isdigit()):
                raise DataError(f"{path}: header line {number} {line!r}: the vertex count must be a non-negative integer")
            in_vertex, count = True, int(words[2])
        elif words[:1] == ["property"] and in_vertex:
            if len(words) != 3 or words[1] not in _TYPES:
                raise DataError(f"{path}: header line {number} {line!r}: expected 'property TYPE NAME' with a scalar type")
            if words[2] in dict(fields):
                raise DataError(f"{path}: header line {number}: vertex property {words[2]!r} appears twice")
            fields.append((words[2], _TYPES[words[1]]))
    if not in_vertex or not fields:
        raise DataError(f"{path}: no vertex element with properties in the header")
    dtype = np.dtype(fields)
    body = raw[end + len(b"end_header\n"):]
    if len(body) < count * dtype.itemsize:
        raise DataError(f"{path}: truncated ({len(body)} bytes of vertex data, expected {count * dtype.itemsize})")
    return np.frombuffer(body, dtype=dtype, count=count)
