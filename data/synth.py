"""Procedural synthetic scenes with exact ground truth, written as Blender or LLFF datasets.

`generate(out_dir, format=..., seed=..., views=..., res=...)` builds 4-6 textured open3d
primitives on a floor (Blender: a disk, seen from a 360° hemisphere) or in front of a floor and
backdrop (LLFF: fills every forward-facing view), shades them with a directional light, ambient
light, shadows and a view-dependent Blinn-Phong highlight, and ray casts every view with 2×2
supersampling. The output is a function of the arguments only (byte-identical for a seed).

Ground truth in `recon_gt/` (keyed like the loaders: Blender file_path without extension,
e.g. "train/r_0"; LLFF image stem, e.g. "000"):
    depth/<key>.npy      [H, W] float32 z-depth of the pixel-centre ray, 0 where nothing was hit
    instance/<key>.png   [H, W] uint16, 0 = background/floor, i = the i-th object of objects.json
    objects.json         [{class_name, instance_id, box_min, box_max}] axis-aligned world boxes
    points.ply           ~20k coloured surface samples, same world frame as the written poses
"""
from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import open3d as o3d

from data.formats.common import GT_DIR, gt_paths, intrinsics, look_at, normalize, opengl_to_opencv
from data.scene import DataError

FORMATS = ("blender", "llff")
DEFAULT_FORMAT = "blender"
DEFAULT_SEED = 0
DEFAULT_VIEWS = 100
DEFAULT_RES = 128
VIEWS_RANGE = (2, 2000)
RES_RANGE = (8, 2048)  # 2×2 supersampled ray casting of a 2048² view takes ~2 GB

SUPERSAMPLE = 2  # rays per pixel side
NUM_POINTS = 20_000  # ground-truth surface samples (70 % on objects)
CLASSES = ("box", "sphere", "cylinder", "cone", "torus")
FLOOR_Z = -0.5  # objects stand on the plane z = FLOOR_Z; world z is up
LIGHT = normalize(np.array([0.4, -0.5, 0.75]))  # [3] direction towards the light
AMBIENT = 0.3
SHININESS = 40.0

BLENDER_RADIUS = 4.0  # camera distance from the origin (near 2 / far 6 hold the content)
BLENDER_FOV_X = 0.8  # radians (nerf_synthetic: 0.69)
LLFF_FOV_X = math.radians(50.0)
LLFF_CENTRE = np.array([0.0, -2.8, 0.6])  # centre of the camera grid, looking at LLFF_TARGET
LLFF_TARGET = np.array([0.0, 0.0, -0.15])
LLFF_GRID = np.array([1.0, 0.6])  # grid extent along x and z


@dataclass
class Part:
    """A mesh and its material: two colours mixed by a world-space stripe or checker pattern."""

    mesh: o3d.geometry.TriangleMesh
    class_name: str  # "floor" / "backdrop" for background parts (instance 0)
    instance_id: int
    colors: np.ndarray  # [2, 3]
    pattern: str  # "stripes" | "checker"
    frequency: float  # cycles per world unit
    axis: np.ndarray  # [3] stripe direction
    specular: float

    def albedo(self, x: np.ndarray) -> np.ndarray:
        """[M, 3] colour at world points x [M, 3]."""
        if self.pattern == "stripes":
            wave = np.sin(2 * np.pi * self.frequency * (x @ self.axis))
        else:
            wave = np.prod(np.sin(np.pi * self.frequency * x + 0.5), axis=1)
        mix = 0.5 + 0.5 * np.tanh(4.0 * wave)  # soft-edged pattern, [M]
        return self.colors[0] * mix[:, None] + self.colors[1] * (1.0 - mix[:, None])


def generate(
    out_dir: str | Path,
    *,
    format: str = DEFAULT_FORMAT,
    seed: int = DEFAULT_SEED,
    views: int = DEFAULT_VIEWS,
    res: int = DEFAULT_RES,
) -> Path:
    """Write a synthetic scene to `out_dir` (new or empty; written beside it and renamed when
    complete) and return its path.

    Blender: `views` train views on a random hemisphere, max(2, views // 10) val and
    max(4, views // 5) test views on two fixed orbits, res×res RGBA. LLFF: `views` forward-facing
    views on a jittered grid, res × (3/4·res) RGB.
    """
    if format not in FORMATS:
        raise DataError(f"format: expected one of {FORMATS}, got {format!r}")
    check_counts({"views": (views, *VIEWS_RANGE), "res": (res, *RES_RANGE)})
    return write_dataset(out_dir, lambda partial: _write_scene(partial, format, seed, views, res))


def generate_scenes(out_dir: str | Path, *, scenes: int, unseen: int, format: str = DEFAULT_FORMAT, seed: int = DEFAULT_SEED,
                    views: int = DEFAULT_VIEWS, res: int = DEFAULT_RES) -> Path:
    """Write `scenes` synthetic scenes as ROOT/scene_XXX/ (scene k drawn from (seed, k): distinct
    objects and layouts) and the split lists ROOT/scenes_train.txt and ROOT/scenes_test.txt, the
    last `unseen` scenes being the test scenes, for methods that generalize across scenes."""
    if format not in FORMATS:
        raise DataError(f"format: expected one of {FORMATS}, got {format!r}")
    check_counts({"scenes": (scenes, 1, 10_000), "unseen": (unseen, 0, scenes - 1), "views": (views, *VIEWS_RANGE), "res": (res, *RES_RANGE)})
    names = [f"scene_{k:03d}" for k in range(scenes)]

    def write(partial: Path) -> None:
        for k, name in enumerate(names):
            scene_seed = int(np.random.SeedSequence([seed, k]).generate_state(1)[0])
            (partial / name).mkdir()
            _write_scene(partial / name, format, scene_seed, views, res)
        (partial / "scenes_train.txt").write_text("".join(f"{n}\n" for n in names[: scenes - unseen]))
        (partial / "scenes_test.txt").write_text("".join(f"{n}\n" for n in names[scenes - unseen :]))

    return write_dataset(out_dir, write)


def check_counts(counts: dict[str, tuple[int, int, int]]) -> None:
    """DataError naming the first of {name: (value, low, high)} that is not an integer in [low, high]."""
    for name, (value, low, high) in counts.items():
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise DataError(f"{name}: expected an integer in [{low}, {high}], got {value!r}")


def write_dataset(out_dir: str | Path, write: Callable[[Path], None]) -> Path:
    """Call write(folder) on a folder beside `out_dir` (which must be new or empty), then rename it
    to `out_dir`: a failed or interrupted run leaves no half-written dataset behind."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: expected a new or empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)  # left by an earlier process of the same id
    try:
        partial.mkdir()
        write(partial)
        partial.replace(out)
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    return out


def _write_scene(out: Path, format: str, seed: int, views: int, res: int) -> None:
    rng = np.random.default_rng(seed)
    objects = _make_objects(rng)
    background = _blender_floor() if format == "blender" else _llff_backdrop()
    parts = background + objects
    raycaster = o3d.t.geometry.RaycastingScene()
    for part in parts:  # geometry id == index in parts
        raycaster.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(part.mesh))

    (out / GT_DIR).mkdir(parents=True, exist_ok=True)
    if format == "blender":
        _write_blender(out, raycaster, parts, rng, views, res)
    else:
        _write_llff(out, raycaster, parts, rng, views, res)
    objects_json = [
        {
            "class_name": p.class_name,
            "instance_id": p.instance_id,
            "box_min": np.asarray(p.mesh.get_min_bound()).tolist(),
            "box_max": np.asarray(p.mesh.get_max_bound()).tolist(),
        }
        for p in objects
    ]
    (out / GT_DIR / "objects.json").write_text(json.dumps(objects_json, indent=1))
    _write_points(out / GT_DIR / "points.ply", parts, rng)


# ---------------------------------------------------------------------------------------------
# scene content
def _make_objects(rng: np.random.Generator) -> list[Part]:
    """4-6 primitives standing on the floor inside about [-1, 1]^3, non-overlapping footprints."""
    count = int(rng.integers(4, 7))
    classes = [*rng.permutation(CLASSES), *rng.choice(CLASSES, max(0, count - len(CLASSES)))]
    hue0 = rng.random()
    placed: list[tuple[np.ndarray, float]] = []  # (centre xy, footprint radius)
    parts = []
    for i in range(count):
        cls = str(classes[i])
        size = rng.uniform(0.22, 0.36)
        mesh, radius = _primitive(cls, size, rng)
        candidates = rng.uniform(-0.95 + radius, 0.95 - radius, (200, 2))  # [200, 2]
        clearance = np.full(len(candidates), np.inf)
        for c, r in placed:
            clearance = np.minimum(clearance, np.linalg.norm(candidates - c, axis=1) - r - radius)
        free = np.flatnonzero(clearance > 0.05)
        xy = candidates[free[0] if len(free) else np.argmax(clearance)]
        placed.append((xy, radius))
        mesh.rotate(o3d.geometry.get_rotation_matrix_from_xyz((0.0, 0.0, rng.uniform(0, np.pi))), center=(0, 0, 0))
        mesh.translate((xy[0], xy[1], FLOOR_Z - mesh.get_min_bound()[2]))
        base = np.array(colorsys.hsv_to_rgb((hue0 + i / count) % 1.0, rng.uniform(0.55, 0.8), 0.9))
        parts.append(
            Part(
                mesh=mesh,
                class_name=cls,
                instance_id=i + 1,
                colors=np.stack([base, base * rng.uniform(0.35, 0.6)]),
                pattern=("stripes", "checker")[int(rng.integers(2))],
                frequency=rng.uniform(2.0, 4.0),
                axis=normalize(rng.normal(size=3)),
                specular=rng.uniform(0.25, 0.5),
            )
        )
    return parts


def _primitive(cls: str, size: float, rng: np.random.Generator) -> tuple[o3d.geometry.TriangleMesh, float]:
    """A mesh centred on the z axis and its footprint radius in the xy plane."""
    TM = o3d.geometry.TriangleMesh
    if cls == "box":
        dims = size * rng.uniform(0.9, 1.5, 3)
        mesh = TM.create_box(*dims).translate(-dims / 2)
        radius = float(np.linalg.norm(dims[:2]) / 2)
    elif cls == "sphere":
        mesh, radius = TM.create_sphere(size, resolution=24), size
    elif cls == "cylinder":
        mesh, radius = TM.create_cylinder(size * 0.8, size * 2.2, resolution=40), size * 0.8
    elif cls == "cone":
        mesh, radius = TM.create_cone(size, size * 2.5, resolution=40), size
    else:  # torus lying flat
        mesh = TM.create_torus(size, size * 0.35, radial_resolution=40, tubular_resolution=20)
        radius = size * 1.35
    mesh.compute_triangle_normals()
    return mesh, radius


def _background(mesh: o3d.geometry.TriangleMesh, name: str, colors: list[list[float]]) -> Part:
    mesh.compute_triangle_normals()
    return Part(mesh, name, 0, np.array(colors), "checker", 1.5, np.array([1.0, 0.0, 0.0]), 0.1)


def _blender_floor() -> list[Part]:
    """A thin checkered disk of radius 1.25 whose top is at z = FLOOR_Z."""
    disk = o3d.geometry.TriangleMesh.create_cylinder(1.25, 0.04, resolution=96).translate((0, 0, FLOOR_Z - 0.02))
    return [_background(disk, "floor", [[0.75, 0.75, 0.72], [0.45, 0.45, 0.43]])]


def _llff_backdrop() -> list[Part]:
    """A floor and a wall behind the objects, large enough to fill every LLFF view."""
    floor = o3d.geometry.TriangleMesh.create_box(12.0, 10.0, 0.04).translate((-6.0, -7.5, FLOOR_Z - 0.04))
    wall = o3d.geometry.TriangleMesh.create_box(12.0, 0.04, 8.0).translate((-6.0, 2.5, FLOOR_Z))
    return [
        _background(floor, "floor", [[0.75, 0.75, 0.72], [0.45, 0.45, 0.43]]),
        _background(wall, "backdrop", [[0.55, 0.65, 0.8], [0.4, 0.45, 0.6]]),
    ]


# ---------------------------------------------------------------------------------------------
# rendering
def cast_rays(raycaster: o3d.t.geometry.RaycastingScene, origins: np.ndarray, dirs: np.ndarray) -> dict[str, np.ndarray]:
    """Ray cast [M, 3] origins and directions; t_hit is in units of the direction's length."""
    rays = np.concatenate([origins, dirs], axis=1).astype(np.float32)
    hits = raycaster.cast_rays(o3d.core.Tensor(rays))
    return {k: hits[k].numpy() for k in ("t_hit", "geometry_ids", "primitive_normals")}


def pixel_rays(K: np.ndarray, c2w_cv: np.ndarray, h: int, w: int, sub: int) -> tuple[np.ndarray, np.ndarray]:
    """Origins and directions [h·sub·w·sub, 3] through `sub`×`sub` sub-pixel centres; directions have
    camera z = 1, so the hit distance is the z-depth."""
    u = (np.arange(w * sub) + 0.5) / sub  # [w·sub] pixel coordinates, pixel centres at +0.5
    v = (np.arange(h * sub) + 0.5) / sub
    uu, vv = np.meshgrid(u, v)  # [h·sub, w·sub]
    cam = np.stack([(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1], np.ones_like(uu)], -1).reshape(-1, 3)
    dirs = cam @ c2w_cv[:3, :3].T
    return np.broadcast_to(c2w_cv[:3, 3], dirs.shape), dirs


def _shade(raycaster, parts: list[Part], origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(colour [M, 3], hit [M] bool) of rays: albedo·(ambient + diffuse) + Blinn-Phong, with shadows."""
    hits = cast_rays(raycaster, origins, dirs)
    hit = np.isfinite(hits["t_hit"])
    color = np.zeros((len(hit), 3))
    d = normalize(dirs[hit])  # [m, 3]
    x = origins[hit] + dirs[hit] * hits["t_hit"][hit, None]
    n = hits["primitive_normals"][hit].astype(np.float64)
    n *= np.where((n * d).sum(1) > 0, -1.0, 1.0)[:, None]  # face the viewer
    lit = ~np.isfinite(cast_rays(raycaster, x + 1e-3 * n, np.broadcast_to(LIGHT, x.shape))["t_hit"])
    diffuse = np.clip(n @ LIGHT, 0.0, None) * lit  # [m]
    half = normalize(LIGHT - d)
    highlight = np.clip((n * half).sum(1), 0.0, None) ** SHININESS * (diffuse > 0)
    ids = hits["geometry_ids"][hit]
    shaded = np.zeros_like(x)
    for gid, part in enumerate(parts):
        sel = ids == gid
        albedo = part.albedo(x[sel])
        shaded[sel] = albedo * (AMBIENT + (1 - AMBIENT) * diffuse[sel, None]) + part.specular * highlight[sel, None]
    color[hit] = np.clip(shaded, 0.0, 1.0)
    return color, hit


def _render(raycaster, parts: list[Part], K: np.ndarray, c2w_gl: np.ndarray, h: int, w: int) -> dict[str, np.ndarray]:
    """rgba [h, w, 4] uint8 (alpha = coverage of 2×2 sub-pixel rays), depth [h, w] float32 z-depth and
    instance [h, w] uint16 of the pixel-centre ray."""
    c2w_cv = opengl_to_opencv(c2w_gl)
    s = SUPERSAMPLE
    color, hit = _shade(raycaster, parts, *pixel_rays(K, c2w_cv, h, w, s))
    color = (color * hit[:, None]).reshape(h, s, w, s, 3).sum((1, 3))  # [h, w, 3]
    coverage = hit.reshape(h, s, w, s).sum((1, 3))  # [h, w]
    rgb = color / np.maximum(coverage, 1)[..., None]  # straight (not premultiplied) colour
    rgba = np.concatenate([rgb, coverage[..., None] / s**2], -1)

    centre = cast_rays(raycaster, *pixel_rays(K, c2w_cv, h, w, 1))
    t = centre["t_hit"].reshape(h, w)
    ids = centre["geometry_ids"].reshape(h, w).astype(np.int64)
    instance_of = np.array([p.instance_id for p in parts] + [0])  # misses (INVALID_ID) -> 0
    return {
        "rgba": np.round(rgba * 255).astype(np.uint8),
        "depth": np.where(np.isfinite(t), t, 0.0).astype(np.float32),
        "instance": instance_of[np.minimum(ids, len(parts))].astype(np.uint16),
    }


def _write_view(root: Path, key: str, image_path: Path, view: dict[str, np.ndarray], rgba: bool) -> None:
    image_path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(image_path, view["rgba"] if rgba else view["rgba"][..., :3])
    depth_path, inst_path = gt_paths(root, key)
    for path in (depth_path, inst_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    np.save(depth_path, view["depth"])
    iio.imwrite(inst_path, view["instance"])


# ---------------------------------------------------------------------------------------------
# formats
def _write_blender(root: Path, raycaster, parts: list[Part], rng: np.random.Generator, views: int, res: int) -> None:
    """transforms_{train,val,test}.json and RGBA PNGs; train on a random hemisphere, val/test on orbits."""
    up = np.array([0.0, 0.0, 1.0])
    elev = np.arcsin(rng.uniform(np.sin(np.radians(10)), np.sin(np.radians(75)), views))
    azim = rng.uniform(0, 2 * np.pi, views)
    cameras = {
        "train": (elev, azim),
        "val": _orbit(max(2, views // 10), 45.0),
        "test": _orbit(max(4, views // 5), 25.0),
    }
    focal = 0.5 * res / math.tan(0.5 * BLENDER_FOV_X)
    K = intrinsics(focal, focal, res / 2, res / 2)
    for split, (elev, azim) in cameras.items():
        eyes = BLENDER_RADIUS * np.stack([np.cos(azim) * np.cos(elev), np.sin(azim) * np.cos(elev), np.sin(elev)], 1)
        frames = []
        for i, eye in enumerate(eyes):
            c2w = look_at(eye, np.zeros(3), up)
            key = f"{split}/r_{i}"
            _write_view(root, key, root / f"{key}.png", _render(raycaster, parts, K, c2w, res, res), rgba=True)
            frames.append({"file_path": f"./{key}", "rotation": 0.0, "transform_matrix": c2w.tolist()})
        meta = {"camera_angle_x": BLENDER_FOV_X, "frames": frames}
        (root / f"transforms_{split}.json").write_text(json.dumps(meta, indent=2))


def _orbit(count: int, elevation_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """(elevation [count], azimuth [count]) evenly spaced on a circle."""
    return np.full(count, np.radians(elevation_deg)), np.linspace(0, 2 * np.pi, count, endpoint=False) + 0.3


def _write_llff(root: Path, raycaster, parts: list[Part], rng: np.random.Generator, views: int, res: int) -> None:
    """images/*.png and poses_bounds.npy: [down, right, back, t, (H, W, f)] per view + near/far bounds
    from the view's 0.1 / 99.9 depth percentiles, padded by 10 %."""
    w, h = res, res * 3 // 4
    focal = 0.5 * w / math.tan(0.5 * LLFF_FOV_X)
    K = intrinsics(focal, focal, w / 2, h / 2)
    cols = math.ceil(math.sqrt(views))
    rows = math.ceil(views / cols)
    grid = np.stack(np.meshgrid(np.linspace(-0.5, 0.5, cols), np.linspace(-0.5, 0.5, rows)), -1).reshape(-1, 2)[:views]
    grid = (grid + rng.uniform(-0.15, 0.15, grid.shape) / max(cols, rows)) * LLFF_GRID  # [views, 2] jittered x, z
    width = len(str(views - 1))
    rows_out = []
    for i, (dx, dz) in enumerate(grid):
        c2w = look_at(LLFF_CENTRE + [dx, 0.0, dz], LLFF_TARGET + rng.uniform(-0.05, 0.05, 3), np.array([0.0, 0.0, 1.0]))
        key = f"{i:0{max(3, width)}d}"
        view = _render(raycaster, parts, K, c2w, h, w)
        _write_view(root, key, root / "images" / f"{key}.png", view, rgba=False)
        depth = view["depth"][view["depth"] > 0]
        bounds = [np.percentile(depth, 0.1) * 0.9, np.percentile(depth, 99.9) * 1.1]
        pose = np.concatenate([-c2w[:3, 1:2], c2w[:3, 0:1], c2w[:3, 2:4], [[h], [w], [focal]]], axis=1)  # [3, 5]
        rows_out.append(np.concatenate([pose.ravel(), bounds]))
    np.save(root / "poses_bounds.npy", np.stack(rows_out))  # [views, 17]


# ---------------------------------------------------------------------------------------------
# point cloud
def _write_points(path: Path, parts: list[Part], rng: np.random.Generator) -> None:
    """Area-uniform surface samples coloured by albedo and (unshadowed) diffuse light."""
    on_objects = int(NUM_POINTS * 0.7)
    groups = [[p for p in parts if p.instance_id], [p for p in parts if not p.instance_id]]
    points, colors = [], []
    for group, count in zip(groups, (on_objects, NUM_POINTS - on_objects)):
        tris = [np.asarray(p.mesh.vertices)[np.asarray(p.mesh.triangles)] for p in group]  # [T, 3, 3] each
        owner = np.concatenate([np.full(len(t), k) for k, t in enumerate(tris)])  # [T_all] part index
        normals = np.concatenate([np.asarray(p.mesh.triangle_normals) for p in group])  # [T_all, 3]
        all_tris = np.concatenate(tris)  # [T_all, 3, 3]
        edges = all_tris[:, 1:] - all_tris[:, :1]  # [T_all, 2, 3]
        areas = np.linalg.norm(np.cross(edges[:, 0], edges[:, 1]), axis=1) / 2
        pick = rng.choice(len(all_tris), size=count, p=areas / areas.sum())
        r1, r2 = np.sqrt(rng.random(count)), rng.random(count)
        bary = np.stack([1 - r1, r1 * (1 - r2), r1 * r2], 1)  # [count, 3] uniform on a triangle
        x = (all_tris[pick] * bary[:, :, None]).sum(1)
        light = AMBIENT + (1 - AMBIENT) * np.clip(normals[pick] @ LIGHT, 0.0, None)
        for k, part in enumerate(group):
            sel = owner[pick] == k
            points.append(x[sel])
            colors.append(np.clip(part.albedo(x[sel]) * light[sel, None], 0.0, 1.0))
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.concatenate(points)))
    pcd.colors = o3d.utility.Vector3dVector(np.concatenate(colors))
    o3d.io.write_point_cloud(str(path), pcd)
