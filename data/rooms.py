"""Synthetic indoor rooms written in ScanNet's raw layout, so the ScanNet loader reads generated and
real scans alike and recomputes every box from mesh + segments + aggregation.

`generate_rooms(root, rooms=N, val=M, seed=S, frames=F, res=W)` writes
    ROOT/scans/sceneXXXX_00/  <scene>.sens, <scene>_vh_clean_2.ply, <scene>_vh_clean_2.0.010000.segs.json,
                              <scene>.aggregation.json, <scene>.txt
    ROOT/scannetv2-labels.combined.tsv, ROOT/scannetv2_train.txt, ROOT/scannetv2_val.txt
    ROOT/recon_gt/<scene>.json   the generator's own boxes (aligned frame), for tests only
Each room (bedroom, living room, kitchen, bathroom or office) has a floor, four walls and a
ceiling, doors and windows on the walls, furniture of the 18 ScanNet detection classes built from
open3d primitives (a chair is seat + back + legs, a bed frame + mattress + headboard + pillow, a
bookshelf has shelves, …) with varied sizes and colours, placed without interpenetration (several
instances of a class per room), and unannotated clutter. The room is built axis-aligned and
written in a raw frame turned and moved at random: `axisAlignment` in `<scene>.txt` undoes it, as
in real scans. A handheld-like camera loops around the room at human height, looking at the
walls and furniture; colour at res × 3·res/4, depth at half that (as in `.sens`), a few frames
with −inf poses. Deterministic for a seed.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import open3d as o3d

from data.formats.common import intrinsics, look_at, normalize
from data.formats.sens import SensHeader, write_sens
from data.synth import Part, cast_rays, check_counts, pixel_rays, write_dataset

# raw category → nyu40 id (our label table, a subset of ScanNet's with its ids)
RAW_LABELS = {
    "cabinet": 3, "bed": 4, "chair": 5, "sofa": 6, "table": 7, "door": 8, "window": 9, "bookshelf": 10, "picture": 11,
    "counter": 12, "desk": 14, "curtain": 16, "refrigerator": 24, "shower curtain": 28, "toilet": 33, "sink": 34,
    "bathtub": 36, "trash can": 39, "wall": 1, "floor": 2, "ceiling": 22, "box": 29, "lamp": 35, "object": 40, "book": 23,
}
NYU40_NAMES = {1: "wall", 2: "floor", 3: "cabinet", 4: "bed", 5: "chair", 6: "sofa", 7: "table", 8: "door", 9: "window", 10: "bookshelf",
               11: "picture", 12: "counter", 14: "desk", 16: "curtain", 22: "ceiling", 23: "books", 24: "refridgerator", 28: "shower curtain",
               29: "box", 33: "toilet", 34: "sink", 35: "lamp", 36: "bathtub", 39: "otherfurniture", 40: "otherprop"}
ROOM_TYPES = {  # class (raw label) → (min, max) instances
    "bedroom": {"bed": (1, 2), "cabinet": (1, 2), "desk": (0, 1), "chair": (1, 2), "picture": (1, 2), "window": (1, 2), "door": (1, 1), "trash can": (0, 1), "bookshelf": (0, 1)},
    "living": {"sofa": (1, 2), "table": (1, 2), "chair": (2, 4), "bookshelf": (1, 1), "picture": (1, 3), "window": (1, 2), "door": (1, 1), "cabinet": (0, 1)},
    "kitchen": {"counter": (1, 2), "cabinet": (2, 3), "refrigerator": (1, 1), "sink": (1, 1), "table": (1, 1), "chair": (2, 4), "trash can": (1, 1), "window": (0, 1), "door": (1, 1)},
    "bathroom": {"toilet": (1, 1), "sink": (1, 2), "bathtub": (1, 1), "shower curtain": (1, 1), "cabinet": (0, 1), "trash can": (1, 1), "door": (1, 1), "picture": (0, 1)},
    "office": {"desk": (2, 3), "chair": (2, 4), "bookshelf": (1, 2), "cabinet": (1, 2), "trash can": (1, 2), "table": (0, 1), "window": (1, 1), "door": (1, 1), "picture": (0, 1)},
}
ON_WALL = {"door", "window", "picture"}  # hung on a wall (curtains follow windows)
AGAINST_WALL = {"bed", "cabinet", "bookshelf", "counter", "refrigerator", "desk", "toilet", "sink", "bathtub", "sofa"}
WALL_HEIGHT = (2.5, 2.9)
FOV_X = math.radians(60.0)  # ScanNet's colour camera: ~58°
MAX_EDGE = 0.3  # meshes are subdivided to at most this edge length (dense vertices, as real scans)
LIGHT_AMBIENT = 0.35
DEFAULT_FRAMES, DEFAULT_RES, DEFAULT_ROOMS = 100, 320, 10


@dataclass
class _Object:
    """An annotated instance: its parts (one segment each) and raw label."""

    label: str
    parts: list[Part] = field(default_factory=list)


# ---- building blocks --------------------------------------------------------------------------
def _box(size, corner, color, rng, pattern="checker") -> Part:
    """A box of `size` with its minimum corner at `corner`, one or two colours."""
    mesh = o3d.geometry.TriangleMesh.create_box(*size).translate(corner)
    mesh.compute_triangle_normals()
    color = np.asarray(color, dtype=np.float64)
    return Part(mesh, "", 0, np.stack([color, color * rng.uniform(0.7, 0.9)]), pattern, rng.uniform(3.0, 8.0), normalize(rng.normal(size=3)), 0.0)


def _cylinder(radius, height, base, color, rng) -> Part:
    mesh = o3d.geometry.TriangleMesh.create_cylinder(radius, height, resolution=24).translate((base[0], base[1], base[2] + height / 2))
    mesh.compute_triangle_normals()
    color = np.asarray(color, dtype=np.float64)
    return Part(mesh, "", 0, np.stack([color, color * 0.8]), "stripes", rng.uniform(4.0, 10.0), np.array([0.0, 0.0, 1.0]), 0.0)


def _colour(rng, saturation=(0.2, 0.6), value=(0.35, 0.9)) -> np.ndarray:
    import colorsys

    return np.array(colorsys.hsv_to_rgb(rng.random(), rng.uniform(*saturation), rng.uniform(*value)))


def _furniture(label: str, rng: np.random.Generator) -> tuple[list[Part], np.ndarray]:
    """Parts of one piece in its own frame (footprint [0, w] × [0, d], floor at z = 0, back at y = d)
    and its size (w, d, h)."""
    c, u = _colour(rng), rng.uniform
    if label == "chair":
        w, seat = u(0.4, 0.55), u(0.42, 0.48)  # square seat
        legs = [_cylinder(0.02, seat, (x, y, 0), c * 0.6, rng) for x in (0.04, w - 0.04) for y in (0.04, w - 0.04)]
        parts = [_box((w, w, 0.05), (0, 0, seat), c, rng), _box((w, 0.05, u(0.35, 0.5)), (0, w - 0.05, seat + 0.05), c, rng), *legs]
    elif label == "table" or label == "desk":
        w, d, h = (u(0.8, 1.6), u(0.6, 1.0), u(0.72, 0.78)) if label == "table" else (u(1.0, 1.6), u(0.55, 0.8), u(0.72, 0.76))
        parts = [_box((w, d, 0.04), (0, 0, h - 0.04), c, rng)]
        if label == "desk":  # a drawer block under one side, two legs under the other
            parts += [_box((0.4, d - 0.05, h - 0.04), (0.02, 0.02, 0), c * 0.8, rng)] + [_cylinder(0.025, h - 0.04, (w - 0.05, y, 0), c * 0.5, rng) for y in (0.05, d - 0.05)]
        else:
            parts += [_cylinder(0.03, h - 0.04, (x, y, 0), c * 0.5, rng) for x in (0.05, w - 0.05) for y in (0.05, d - 0.05)]
    elif label == "bed":
        w, d = u(1.0, 1.8), u(1.9, 2.1)
        parts = [_box((w, d, 0.3), (0, 0, 0), c, rng), _box((w - 0.06, d - 0.1, 0.22), (0.03, 0.0, 0.3), _colour(rng, (0.0, 0.2), (0.8, 0.95)), rng),
                 _box((w, 0.08, u(0.8, 1.1)), (0, d, 0), c * 0.8, rng), _box((w * 0.6, 0.35, 0.12), (w * 0.2, d - 0.45, 0.52), _colour(rng, (0.0, 0.3), (0.85, 1.0)), rng)]
    elif label == "sofa":
        w, d = u(1.6, 2.4), u(0.8, 0.95)
        parts = [_box((w, d, 0.42), (0, 0, 0), c, rng), _box((w, 0.2, 0.4), (0, d - 0.2, 0.42), c * 0.9, rng),
                 _box((0.2, d - 0.2, 0.25), (0, 0, 0.42), c * 0.9, rng), _box((0.2, d - 0.2, 0.25), (w - 0.2, 0, 0.42), c * 0.9, rng)]
    elif label == "cabinet" or label == "refrigerator":
        w, d, h = (u(0.6, 1.2), u(0.4, 0.6), u(0.8, 1.3)) if label == "cabinet" else (u(0.6, 0.8), u(0.65, 0.75), u(1.7, 1.9))
        c = c if label == "cabinet" else _colour(rng, (0.0, 0.1), (0.75, 0.95))
        parts = [_box((w, d, h), (0, 0, 0), c, rng), _box((0.03, 0.03, h * 0.3), (w * 0.85, -0.03, h * 0.5), c * 0.4, rng)]
    elif label == "bookshelf":
        w, d, h = u(0.8, 1.2), 0.32, u(1.6, 2.0)
        shelves = int(rng.integers(4, 7))
        parts = [_box((0.03, d, h), (0, 0, 0), c, rng), _box((0.03, d, h), (w - 0.03, 0, 0), c, rng), _box((w, 0.02, h), (0, d - 0.02, 0), c * 0.8, rng)]
        parts += [_box((w - 0.06, d - 0.02, 0.025), (0.03, 0, k * (h - 0.03) / (shelves - 1)), c, rng) for k in range(shelves)]
    elif label == "counter":
        w, d = u(1.2, 2.4), u(0.6, 0.65)
        parts = [_box((w, d - 0.03, 0.86), (0, 0.03, 0), c, rng), _box((w, d, 0.04), (0, 0, 0.86), _colour(rng, (0.0, 0.2), (0.5, 0.9)), rng)]
    elif label == "toilet":
        w, d = 0.4, 0.68
        white = _colour(rng, (0.0, 0.05), (0.85, 0.97))
        parts = [_cylinder(0.19, 0.4, (w / 2, 0.25, 0), white, rng), _box((w, 0.2, 0.38), (0, d - 0.2, 0.4), white, rng), _box((0.38, 0.42, 0.03), (0.01, 0.05, 0.4), white * 0.95, rng)]
    elif label == "sink":
        w, d = u(0.5, 0.7), 0.45
        parts = [_box((w, d, 0.8), (0, 0, 0), c, rng), _box((w - 0.1, d - 0.15, 0.06), (0.05, 0.05, 0.8), _colour(rng, (0.0, 0.05), (0.85, 0.97)), rng),
                 _cylinder(0.015, 0.2, (w / 2, d - 0.05, 0.86), np.array([0.7, 0.7, 0.72]), rng)]
    elif label == "bathtub":
        w, d, h = u(0.7, 0.8), u(1.5, 1.7), u(0.5, 0.6)
        white = _colour(rng, (0.0, 0.05), (0.85, 0.97))
        parts = [_box((w, d, 0.06), (0, 0, 0), white, rng), _box((0.06, d, h), (0, 0, 0), white, rng), _box((0.06, d, h), (w - 0.06, 0, 0), white, rng),
                 _box((w, 0.06, h), (0, 0, 0), white, rng), _box((w, 0.06, h), (0, d - 0.06, 0), white, rng)]
    elif label == "trash can":
        r = u(0.13, 0.2)
        parts = [_cylinder(r, u(0.35, 0.6), (r, r, 0), c, rng)]
    elif label == "shower curtain":
        w = u(0.8, 1.4)
        parts = [_box((w, 0.02, 1.75), (0, 0, 0.15), _colour(rng, (0.1, 0.5), (0.6, 0.95)), rng, "stripes"), _box((w, 0.03, 0.03), (0, 0, 1.95), np.array([0.7, 0.7, 0.72]), rng)]
    else:
        raise ValueError(f"no builder for {label!r}")
    return _normalized(parts)


def _normalized(parts: list[Part]) -> tuple[list[Part], np.ndarray]:
    """Parts moved on the floor plane so their footprint starts at (0, 0), and their size (w, d, top)."""
    footprint = _footprint(parts)
    _moved(parts, 0.0, -footprint[:2])
    top = max(float(np.asarray(p.mesh.get_max_bound())[2]) for p in parts)
    return parts, np.array([footprint[2] - footprint[0], footprint[3] - footprint[1], top])


def _wall_item(label: str, rng: np.random.Generator, room_height: float) -> tuple[list[Part], list[Part], np.ndarray]:
    """(parts, curtain parts, size of both) of a door, window or picture in the frame of
    `_furniture` (the back, y = d, goes on the wall); a window may come with curtains beside it."""
    c, u = _colour(rng), rng.uniform
    curtains: list[Part] = []
    if label == "door":
        w, h = u(0.8, 0.95), min(u(2.0, 2.1), room_height - 0.2)
        parts = [_box((w, 0.05, h), (0, 0, 0), c, rng), _box((0.04, 0.04, 0.04), (w * 0.85, -0.04, h * 0.47), np.array([0.75, 0.7, 0.5]), rng)]
    elif label == "picture":
        w, h = u(0.35, 0.9), u(0.3, 0.7)
        parts = [_box((w, 0.02, h), (0, 0, u(1.3, min(1.7, room_height - h - 0.2))), c, rng, "stripes")]
    else:  # a window: frame and an inset pane
        w, sill = u(0.8, 1.4), u(0.8, 1.0)
        h = min(u(0.9, 1.3), room_height - sill - 0.25)
        parts = [_box((w, 0.06, h), (0, 0, sill), _colour(rng, (0.0, 0.1), (0.8, 0.95)), rng),
                 _box((w - 0.12, 0.02, h - 0.12), (0.06, -0.005, sill + 0.06), np.array([0.55, 0.7, 0.85]), rng)]
        if rng.random() < 0.7:
            cc, top = _colour(rng, (0.3, 0.7), (0.4, 0.8)), min(sill + h + 0.25, room_height - 0.05)
            for x0 in (-0.3, w + 0.02):  # a panel of folds on each side
                curtains += [_box((0.07, 0.08, top - 0.1), (x0 + 0.07 * k, -0.08 - 0.03 * (k % 2), 0.1), cc * (0.85 + 0.1 * (k % 2)), rng, "stripes") for k in range(4)]
    _, size = _normalized(parts + curtains)
    return parts, curtains, size


def _moved(parts: list[Part], yaw: float, offset: np.ndarray) -> list[Part]:
    """Turn parts by `yaw` about the z axis through the origin, then move them by `offset` [2] on the floor."""
    R = o3d.geometry.get_rotation_matrix_from_xyz((0.0, 0.0, yaw))
    for p in parts:
        p.mesh.rotate(R, center=(0, 0, 0)).translate((offset[0], offset[1], 0.0))
        p.mesh.compute_triangle_normals()
    return parts


def _footprint(parts: list[Part]) -> np.ndarray:
    """[x0, y0, x1, y1] of the parts on the floor."""
    low = np.min([np.asarray(p.mesh.get_min_bound()) for p in parts], axis=0)
    high = np.max([np.asarray(p.mesh.get_max_bound()) for p in parts], axis=0)
    return np.array([low[0], low[1], high[0], high[1]])


def _overlap(a: np.ndarray, b: np.ndarray, gap: float) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


# ---- a room -----------------------------------------------------------------------------------
@dataclass
class Room:
    kind: str
    size: np.ndarray  # (width x, depth y, height z) of the room frame
    objects: list[_Object]  # the structure (floor, ceiling, walls), furniture, wall items, clutter
    light: np.ndarray  # [3] a point light under the ceiling


def _wall_transform(k: int, W: float, D: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Wall k (0: y = 0, 1: x = W, 2: y = D, 3: x = 0) as (start point p0, direction a along it, its
    length): a piece whose local back (y = d) is on the wall sits at p0 + a·(s + x) + b·(y − d),
    with b = −(inward normal), a rotation of the local frame."""
    inward = [np.array([0.0, 1.0]), np.array([-1.0, 0.0]), np.array([0.0, -1.0]), np.array([1.0, 0.0])][k]
    b = -inward
    a = np.array([b[1], -b[0]])
    p0 = {0: np.array([W, 0.0]), 1: np.array([W, D]), 2: np.array([0.0, D]), 3: np.array([0.0, 0.0])}[k]
    return p0, a, W if k in (0, 2) else D


def make_room(rng: np.random.Generator) -> Room:
    """A furnished room in its own frame: floor [0, W] × [0, D] at z = 0, ceiling at z = H."""
    kind = str(rng.choice(list(ROOM_TYPES)))
    W, D = (rng.uniform(2.4, 3.2), rng.uniform(2.4, 3.2)) if kind == "bathroom" else (rng.uniform(3.8, 6.5), rng.uniform(3.8, 6.0))
    H = rng.uniform(*WALL_HEIGHT)
    wall_c, floor_c = _colour(rng, (0.0, 0.25), (0.6, 0.9)), _colour(rng, (0.1, 0.5), (0.3, 0.6))
    t = 0.1
    objects = [
        _Object("floor", [_box((W, D, t), (0, 0, -t), floor_c, rng)]),
        _Object("ceiling", [_box((W, D, t), (0, 0, H), wall_c * 0.95, rng)]),
        *[_Object("wall", [_box(size, corner, wall_c, rng, "stripes")]) for size, corner in
          (((W, t, H), (0, -t, 0)), ((W, t, H), (0, D, 0)), ((t, D, H), (-t, 0, 0)), ((t, D, H), (W, 0, 0)))],
    ]
    occupied: list[np.ndarray] = []  # footprints on the floor
    spans: dict[int, list[tuple[float, float]]] = {k: [] for k in range(4)}  # used stretches of each wall

    def on_a_wall(parts: list[Part], size: np.ndarray, standing: bool) -> bool:
        """Put a piece with its back on a wall with a free stretch (and free floor if `standing`)."""
        for k in (int(v) for v in rng.permutation(4)):
            p0, a, length = _wall_transform(k, W, D)
            if length < size[0] + 0.4:
                continue
            start = rng.uniform(0.2, length - size[0] - 0.2)
            if any(start < e + 0.05 and s < start + size[0] + 0.05 for s, e in spans[k]):
                continue
            b = np.array([-a[1], a[0]])
            footprint = None
            if standing:
                corners = np.array([p0 + a * (start + x) + b * (y - size[1]) for x in (0, size[0]) for y in (0, size[1])])
                footprint = np.concatenate([corners.min(0), corners.max(0)])
                if any(_overlap(footprint, other, 0.05) for other in occupied):
                    continue
                occupied.append(footprint)
            spans[k].append((start, start + size[0]))
            _moved(parts, math.atan2(a[1], a[0]), p0 + a * start - b * size[1])
            return True
        return False

    for label, (low, high) in ROOM_TYPES[kind].items():
        for _ in range(int(rng.integers(low, high + 1))):
            if label in ON_WALL:
                parts, curtains, size = _wall_item(label, rng, H)
                if on_a_wall(parts + curtains, size, standing=label == "door"):
                    objects.append(_Object(label, parts))
                    if curtains:
                        objects.append(_Object("curtain", curtains))
                continue
            parts, size = _furniture(label, rng)
            if label in AGAINST_WALL and rng.random() < 0.85:
                if on_a_wall(parts, size, standing=True):
                    objects.append(_Object(label, parts))
                continue
            _moved(parts, float(rng.integers(4)) * math.pi / 2, np.zeros(2))
            footprint = _footprint(parts)
            extent = footprint[2:] - footprint[:2]
            for _ in range(50):
                corner = rng.uniform([0.1, 0.1], [W - extent[0] - 0.1, D - extent[1] - 0.1]) if (extent < [W - 0.2, D - 0.2]).all() else None
                if corner is None:
                    break
                candidate = np.concatenate([corner, corner + extent])
                if not any(_overlap(candidate, other, 0.08) for other in occupied):
                    _moved(parts, 0.0, corner - footprint[:2])
                    occupied.append(candidate)
                    objects.append(_Object(label, parts))
                    break
    objects += _clutter(rng, W, D, occupied)
    return Room(kind, np.array([W, D, H]), objects, np.array([W / 2, D / 2, H - 0.3]))


def _clutter(rng: np.random.Generator, W: float, D: float, occupied: list[np.ndarray]) -> list[_Object]:
    """Small unannotated things (boxes, lamps, objects) on free floor."""
    items = []
    for _ in range(int(rng.integers(2, 6))):
        label = str(rng.choice(["box", "lamp", "object"]))
        size = rng.uniform(0.08, 0.3, 3)
        corner = rng.uniform([0.1, 0.1], [W - 0.4, D - 0.4])
        footprint = np.array([*corner, *(corner + size[:2])])
        if any(_overlap(footprint, other, 0.03) for other in occupied):
            continue
        occupied.append(footprint)
        part = _cylinder(size[0] / 2, size[2] * 2, (corner[0] + size[0] / 2, corner[1] + size[0] / 2, 0), _colour(rng, (0.5, 0.9)), rng) if label == "lamp" else _box(size, (*corner, 0), _colour(rng, (0.4, 0.9)), rng)
        items.append(_Object(label, [part]))
    return items


# ---- meshes, cameras, images --------------------------------------------------------------
def _subdivided(part: Part) -> Part:
    """The part with its triangles split until no edge is longer than MAX_EDGE."""
    mesh = part.mesh
    triangles, vertices = np.asarray(mesh.triangles), np.asarray(mesh.vertices)
    longest = max(np.linalg.norm(vertices[triangles[:, i]] - vertices[triangles[:, (i + 1) % 3]], axis=1).max() for i in range(3))
    iterations = int(np.clip(math.ceil(math.log2(max(longest / MAX_EDGE, 1.0))), 0, 6))
    if iterations:
        mesh = mesh.subdivide_midpoint(number_of_iterations=iterations)
        mesh.compute_triangle_normals()
    return Part(mesh, part.class_name, part.instance_id, part.colors, part.pattern, part.frequency, part.axis, part.specular)


def _trajectory(room: Room, frames: int, rng: np.random.Generator) -> np.ndarray:
    """[F, 4, 4] OpenCV camera-to-world (room frame): one smooth loop around the room at human
    height, looking out at the walls and furniture, a little down, with hand-held wobble."""
    W, D, _ = room.size
    centre = np.array([W / 2, D / 2])
    radius = np.maximum([0.25 * W, 0.25 * D], 0.3)
    start, turns = rng.uniform(0, 2 * math.pi), rng.uniform(0.9, 1.1)
    phase = rng.uniform(0, 2 * math.pi, 3)
    poses = []
    for k in range(frames):
        theta = start + 2 * math.pi * turns * k / max(frames - 1, 1)
        eye = np.array([*(centre + radius * [math.cos(theta), math.sin(theta)]), 1.45 + 0.08 * math.sin(3 * theta + phase[0])])
        look = theta + math.radians(40) * math.sin(2 * theta + phase[1])
        target = np.array([*(centre + 0.45 * np.array([W, D]) * [math.cos(look), math.sin(look)]), 0.85 + 0.3 * math.sin(theta + phase[2])])
        eye = eye + rng.normal(0, 0.01, 3)
        c2w_gl = look_at(eye, target + rng.normal(0, 0.02, 3), np.array([0.0, 0.0, 1.0]))
        poses.append(c2w_gl @ np.diag([1.0, -1.0, -1.0, 1.0]))  # OpenGL → OpenCV axes
    return np.stack(poses)


def _render(raycaster, parts: list[Part], light: np.ndarray, K: np.ndarray, c2w: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(colour [H, W, 3] uint8, z-depth [H, W] float32) through pixel centres: albedo × (ambient +
    diffuse from the point light, shadowed)."""
    H, W = size
    origins, dirs = pixel_rays(K, c2w, H, W, 1)
    hits = cast_rays(raycaster, origins, dirs)
    t = hits["t_hit"]
    hit = np.isfinite(t)
    x = origins[hit] + dirs[hit] * t[hit, None]
    n = hits["primitive_normals"][hit].astype(np.float64)
    n *= np.where((n * dirs[hit]).sum(1) > 0, -1.0, 1.0)[:, None]  # facing the camera
    to_light = light - x
    shadow = cast_rays(raycaster, x + 1e-3 * n, to_light)["t_hit"]
    lit = ~(shadow < 1.0)
    diffuse = np.clip((n * normalize(to_light)).sum(1), 0, None) * lit / (1.0 + 0.04 * (to_light**2).sum(1))
    ids = hits["geometry_ids"][hit]
    albedo = np.zeros_like(x)
    order = np.argsort(ids, kind="stable")
    for rays_of_part in np.split(order, np.flatnonzero(np.diff(ids[order])) + 1):  # one part per run of equal ids
        if len(rays_of_part):
            albedo[rays_of_part] = parts[ids[rays_of_part[0]]].albedo(x[rays_of_part])
    colour = np.zeros((H * W, 3))
    colour[hit] = np.clip(albedo * (LIGHT_AMBIENT + (1 - LIGHT_AMBIENT) * 1.6 * diffuse[:, None]), 0, 1)
    return (colour.reshape(H, W, 3) * 255 + 0.5).astype(np.uint8), np.where(hit, t, 0.0).reshape(H, W).astype(np.float32)


# ---- files ----------------------------------------------------------------------------------
def _write_mesh(path: Path, vertices: np.ndarray, colors: np.ndarray, triangles: np.ndarray) -> None:
    """A binary PLY like ScanNet's _vh_clean_2.ply: x y z, red green blue alpha, face vertex_indices."""
    vertex = np.empty(len(vertices), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1"), ("alpha", "u1")])
    for i, axis in enumerate("xyz"):
        vertex[axis] = vertices[:, i]
    for i, channel in enumerate(("red", "green", "blue")):
        vertex[channel] = np.round(np.clip(colors[:, i], 0, 1) * 255)
    vertex["alpha"] = 255
    face = np.empty(len(triangles), dtype=[("count", "u1"), ("indices", "<i4", (3,))])
    face["count"], face["indices"] = 3, triangles
    header = (f"ply\nformat binary_little_endian 1.0\ncomment recon synthetic room\nelement vertex {len(vertex)}\n"
              "property float x\nproperty float y\nproperty float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\n"
              f"element face {len(face)}\nproperty list uchar int vertex_indices\nend_header\n")
    path.write_bytes(header.encode() + vertex.tobytes() + face.tobytes())


def _write_label_table(path: Path) -> None:
    """scannetv2-labels.combined.tsv with ScanNet's columns (those readers use filled in)."""
    rows = ["id\traw_category\tcategory\tcount\tnyu40id\teigen13id\tnyuClass\tnyu40class\teigen13class\tModelNet40\tModelNet10\tShapeNetCore55\tsynsetoffset\twnsynsetid\twnsynsetkey\tmpcat40\tmpcat40index"]
    for i, (raw, nyu40) in enumerate(RAW_LABELS.items(), 1):
        rows.append(f"{i}\t{raw}\t{raw}\t1\t{nyu40}\t\t{NYU40_NAMES[nyu40]}\t{NYU40_NAMES[nyu40]}\t\t\t\t\t\t\t\t{NYU40_NAMES[nyu40]}\t{nyu40}")
    path.write_text("\n".join(rows) + "\n")


def write_room(scene_dir: Path, scene_id: str, rng: np.random.Generator, frames: int, res: int) -> list[dict]:
    """Build one room and write its five raw files; returns its annotated boxes (aligned frame)."""
    from data.formats.scannet import CLASS_OF_NYU40

    room = make_room(rng)
    objects = [_Object(o.label, [_subdivided(p) for p in o.parts]) for o in room.objects]
    parts = [p for o in objects for p in o.parts]
    raycaster = o3d.t.geometry.RaycastingScene()
    for part in parts:  # geometry id == index in parts
        raycaster.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(part.mesh))

    yaw = rng.uniform(0, 2 * math.pi)  # raw frame = M · room frame; axisAlignment = M⁻¹
    M = np.eye(4)
    M[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    M[:2, 3] = rng.uniform(-3, 3, 2)
    vertices, colours, triangles, segments, groups, boxes = [], [], [], [], [], []
    offset = 0
    for object_id, obj in enumerate(objects):
        object_segments = []
        for part in obj.parts:
            v = np.asarray(part.mesh.vertices)
            vertices.append(v)
            colours.append(part.albedo(v) * 0.8)
            triangles.append(np.asarray(part.mesh.triangles) + offset)
            segments.append(np.full(len(v), len(object_segments) + sum(len(g["segments"]) for g in groups)))
            object_segments.append(int(segments[-1][0]))
            offset += len(v)
        groups.append({"id": object_id, "objectId": object_id, "segments": object_segments, "label": obj.label})
        name = CLASS_OF_NYU40.get(RAW_LABELS[obj.label])
        if name is not None:
            points = np.concatenate([np.asarray(p.mesh.vertices) for p in obj.parts])
            boxes.append({"class_name": name, "instance_id": object_id, "box_min": points.min(0).tolist(), "box_max": points.max(0).tolist()})
    vertices = np.concatenate(vertices)
    raw_vertices = vertices @ M[:3, :3].T + M[:3, 3]
    _write_mesh(scene_dir / f"{scene_id}_vh_clean_2.ply", raw_vertices, np.concatenate(colours), np.concatenate(triangles))
    segs = {"params": {"kThresh": "0.0001", "segMinVerts": "20", "minPoints": "750", "maxPoints": "5000", "thinThresh": "0.05", "flatThresh": "0.001",
                       "minLength": "0.02", "maxLength": "1"}, "sceneId": scene_id, "segIndices": np.concatenate(segments).tolist()}
    (scene_dir / f"{scene_id}_vh_clean_2.0.010000.segs.json").write_text(json.dumps(segs))
    aggregation = {"sceneId": f"scannet.{scene_id}", "appId": "recon.rooms.v1", "segGroups": groups, "segmentsFile": f"scannet.{scene_id}_vh_clean_2.0.010000.segs.json"}
    (scene_dir / f"{scene_id}.aggregation.json").write_text(json.dumps(aggregation))

    size, depth_size = (res * 3 // 4, res), (res * 3 // 8, res // 2)  # (H, W)
    focal = 0.5 * res / math.tan(0.5 * FOV_X)
    K, K_depth = intrinsics(focal, focal, res / 2, size[0] / 2), intrinsics(focal / 2, focal / 2, res / 4, depth_size[0] / 2)
    poses = _trajectory(room, frames, rng)
    colour_images, depth_images = [], []
    for c2w in poses:
        colour_images.append(_render(raycaster, parts, room.light, K, c2w, size)[0])
        depth_images.append(_render_depth(raycaster, K_depth, c2w, depth_size))
    raw_poses = M @ poses
    lost = rng.choice(frames, max(1, frames // 30), replace=False) if frames >= 10 else []
    raw_poses[lost] = -np.inf  # tracking lost, as ScanNet marks it
    header = SensHeader(_padded(K), _padded(K_depth), (res, size[0]), (res // 2, depth_size[0]))
    write_sens(scene_dir / f"{scene_id}.sens", header, raw_poses.astype(np.float32), colour_images, depth_images)
    A = np.linalg.inv(M)
    info = {
        "axisAlignment": " ".join(f"{v:.9g}" for v in A.reshape(-1)), "colorHeight": size[0], "colorToDepthExtrinsics": " ".join(map(str, np.eye(4).reshape(-1))),
        "colorWidth": res, "depthHeight": depth_size[0], "depthWidth": res // 2, "fx_color": focal, "fx_depth": focal / 2, "fy_color": focal, "fy_depth": focal / 2,
        "mx_color": res / 2, "mx_depth": res / 4, "my_color": size[0] / 2, "my_depth": depth_size[0] / 2, "numColorFrames": frames, "numDepthFrames": frames,
        "numIMUmeasurements": 0, "sceneType": room.kind,
    }
    (scene_dir / f"{scene_id}.txt").write_text("".join(f"{k} = {v}\n" for k, v in info.items()))
    return boxes


def _render_depth(raycaster, K: np.ndarray, c2w: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = cast_rays(raycaster, *pixel_rays(K, c2w, *size, 1))["t_hit"]
    return np.where(np.isfinite(t), t, 0.0).reshape(size).astype(np.float32)


def _padded(K: np.ndarray) -> np.ndarray:
    out = np.eye(4, dtype=np.float32)
    out[:3, :3] = K
    return out


def generate_rooms(out_dir: str | Path, *, rooms: int = DEFAULT_ROOMS, val: int = 0, seed: int = 0, frames: int = DEFAULT_FRAMES, res: int = DEFAULT_RES, workers: int = 1) -> Path:
    """Write `rooms` training and `val` validation rooms in ScanNet's raw layout to `out_dir` (new
    or empty; written beside it and renamed when complete); room k is drawn from (seed, k), so a
    room does not depend on how many others are made. `workers` processes build rooms in parallel."""
    check_counts({"rooms": (rooms, 1, 10_000), "val": (val, 0, 10_000), "frames": (frames, 2, 10_000), "res": (res, 16, 2048)})
    names = [f"scene{k:04d}_00" for k in range(rooms + val)]

    def write(root: Path) -> None:
        (root / "recon_gt").mkdir()
        jobs = [(root, name, seed, k, frames, res) for k, name in enumerate(names)]
        if workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(workers) as pool:
                list(pool.map(_room_job, jobs))
        else:
            for job in jobs:
                _room_job(job)
        _write_label_table(root / "scannetv2-labels.combined.tsv")
        (root / "scannetv2_train.txt").write_text("".join(f"{n}\n" for n in names[:rooms]))
        (root / "scannetv2_val.txt").write_text("".join(f"{n}\n" for n in names[rooms:]))

    return write_dataset(out_dir, write)


def _room_job(job: tuple) -> None:
    root, name, seed, index, frames, res = job
    scene_dir = root / "scans" / name
    scene_dir.mkdir(parents=True)
    boxes = write_room(scene_dir, name, np.random.default_rng([seed, index]), frames, res)
    (root / "recon_gt" / f"{name}.json").write_text(json.dumps(boxes, indent=1))
