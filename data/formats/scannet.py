"""ScanNet v2 scenes: raw scans (`scans/sceneXXXX_YY/` with the `.sens` stream and the annotated
mesh), ScanNet's SensReader export (`color/`, `depth/`, `pose/`, `intrinsic/`) and mmdet3d's
`posed_images/<scene>/`, all into one `Scene`.

- Frames: poses that are not finite (ScanNet marks lost tracking with −inf) are dropped with one
  warning; then `max_frames` evenly spaced frames (or drawn with `frame_seed`), or every
  `frame_step`-th. Colour is resized by `downscale` or to `width`; depth (its own camera, 640×480
  in real scans) is resampled into the colour camera (nearest, through both intrinsics).
- World frame: the scene is put in ScanNet's axis-aligned frame, c2w' = A·c2w with A the
  `axisAlignment` of `<scene>.txt` (identity when absent, as in test scans); `Scene.world_transform`
  keeps A. ScanNet poses are already camera-to-world in OpenCV axes.
- Ground truth as mmdet3d builds it: instance → segments → vertices of the full-resolution mesh,
  raw label → nyu40 id through `scannetv2-labels.combined.tsv` (in the scene folder, up to two
  levels above it, or `labels=`), the 18 detection classes, one axis-aligned box per instance from
  its aligned vertices → `Scene.objects`; the mesh's coloured vertices → `Scene.points`.
- 2D instance masks → `Scene.instance_ids` (value i = objects[i-1]): from ScanNet's
  `<scene>_2d-instance-filt.zip` or `instance-filt/` folder when they hold the frame, else ray cast
  from the annotated mesh at the kept camera (open3d's RaycastingScene).
Nothing is written into the dataset folder.
"""
from __future__ import annotations

import csv
import io
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from data.formats.common import check_downscale, drop_nonfinite_poses, read_json, require_file, resize_nearest
from data.formats.sens import SensFile, decode_image
from data.ply import read_vertices
from data.scene import BoxAnnotation, DataError, Scene

CLASSES = ("cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture", "counter", "desk",
           "curtain", "refrigerator", "showercurtrain", "toilet", "sink", "bathtub", "garbagebin")  # mmdet3d's names
NYU40_IDS = (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)  # the same classes, as nyu40 ids
CLASS_OF_NYU40 = dict(zip(NYU40_IDS, CLASSES))
LABEL_TABLE = "scannetv2-labels.combined.tsv"
SCENE_ID = re.compile(r"scene\d{4}_\d{2}")
DEFAULT_MAX_FRAMES = 300


# ---- annotations: mesh, segments, aggregation, label table ------------------------------------
@dataclass
class ScanAnnotation:
    """A scan's annotated mesh in the aligned frame and its detection boxes."""

    scene_id: str
    axis_alignment: np.ndarray  # [4, 4] raw → aligned
    vertices: np.ndarray  # [V, 3] float64, aligned
    colors: np.ndarray  # [V, 3] float32 in [0, 1]
    objects: list[BoxAnnotation]  # the 18 classes; instance_id = ScanNet's objectId
    vertex_object: np.ndarray  # [V] int32: 0 = no kept object, i = objects[i-1]
    mesh_path: Path


def read_scan_info(path: Path) -> dict[str, str]:
    """The `key = value` lines of `<scene>.txt`."""
    info = {}
    for line in require_file(path, "scan info").read_text(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            info[key.strip()] = value.strip()
    return info


def axis_alignment(scene_dir: Path, scene_id: str) -> np.ndarray:
    """[4, 4] `axisAlignment` of `<scene>.txt`; identity when the file or the key is absent."""
    path = scene_dir / f"{scene_id}.txt"
    if not path.is_file() or "axisAlignment" not in (info := read_scan_info(path)):
        return np.eye(4)
    try:
        matrix = np.array([float(v) for v in info["axisAlignment"].split()]).reshape(4, 4)
    except ValueError:
        raise DataError(f"{path}: axisAlignment must be 16 numbers, got {info['axisAlignment']!r}") from None
    if not np.isfinite(matrix).all() or abs(np.linalg.det(matrix[:3, :3])) < 1e-6:
        raise DataError(f"{path}: axisAlignment is not a finite rigid transform")
    return matrix


def find_label_table(scene_dir: Path, labels: str | Path | None = None) -> Path:
    """`labels` if given, else scannetv2-labels.combined.tsv in the scene folder or up to two above."""
    if labels is not None:
        return require_file(labels, "label table")
    for folder in (scene_dir, scene_dir.parent, scene_dir.parent.parent):
        if (folder / LABEL_TABLE).is_file():
            return folder / LABEL_TABLE
    raise DataError(f"{scene_dir}: no {LABEL_TABLE} in the scene folder or the two above it (give labels=PATH)")


def read_label_table(path: Path) -> dict[str, int]:
    """raw_category → nyu40id of ScanNet's label table."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        table = {row["raw_category"]: int(row["nyu40id"]) for row in rows if row.get("nyu40id", "").strip()}
    except (KeyError, ValueError, csv.Error) as error:
        raise DataError(f"{path}: not a ScanNet label table (needs raw_category and nyu40id columns; {type(error).__name__}: {error})") from None
    return table


def read_annotation(scene_dir: Path, scene_id: str, labels: str | Path | None = None) -> ScanAnnotation:
    """Boxes of the 18 classes from `<scene>_vh_clean_2.ply`, `.0.010000.segs.json` and `.aggregation.json`."""
    mesh_path = scene_dir / f"{scene_id}_vh_clean_2.ply"
    segs_path = scene_dir / f"{scene_id}_vh_clean_2.0.010000.segs.json"
    aggregation_path = scene_dir / f"{scene_id}.aggregation.json"
    table = read_label_table(find_label_table(scene_dir, labels))
    vertex = read_vertices(mesh_path)
    if not {"x", "y", "z", "red", "green", "blue"} <= set(vertex.dtype.names):
        raise DataError(f"{mesh_path}: expected vertex properties x y z red green blue")
    A = axis_alignment(scene_dir, scene_id)
    raw = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float64)  # [V, 3]
    aligned = raw @ A[:3, :3].T + A[:3, 3]
    colors = np.stack([vertex["red"], vertex["green"], vertex["blue"]], axis=1).astype(np.float32) / 255.0
    seg_indices = np.asarray(read_json(segs_path).get("segIndices", []))
    if seg_indices.shape != (len(raw),):
        raise DataError(f"{segs_path}: segIndices has {seg_indices.size} entries for the {len(raw)} vertices of {mesh_path.name}")
    known_segments = set(np.unique(seg_indices).tolist())
    objects, vertex_object, unknown = [], np.zeros(len(raw), dtype=np.int32), set()
    for group in read_json(aggregation_path).get("segGroups", []):
        label, segments, object_id = group.get("label"), group.get("segments", []), group.get("objectId", group.get("id"))
        if missing := [s for s in segments if s not in known_segments]:
            raise DataError(f"{aggregation_path}: object {object_id} ({label!r}) lists segment {missing[0]} absent from {segs_path.name}")
        if label not in table:
            unknown.add(label)
            continue
        name = CLASS_OF_NYU40.get(table[label])
        members = np.isin(seg_indices, segments)
        if name is None or not members.any():
            continue
        points = aligned[members]
        objects.append(BoxAnnotation(name, tuple(points.min(0).tolist()), tuple(points.max(0).tolist()), int(object_id)))
        vertex_object[members] = len(objects)
    if unknown:
        warnings.warn(f"{aggregation_path}: {len(unknown)} raw labels not in the label table were skipped: {sorted(map(str, unknown))[:5]}", stacklevel=2)
    return ScanAnnotation(scene_id, A, aligned, colors, objects, vertex_object, mesh_path)


# ---- frame sources: the .sens stream and the two exported layouts ---------------------------
class ExportedFrames:
    """Frames exported to files, with the `SensFile` interface (poses, header intrinsics, frame(i))."""

    def __init__(self, root: Path) -> None:
        self.root = root
        if (root / "intrinsic.txt").is_file():  # mmdet3d posed_images: NNNNN.jpg, NNNNN.txt, intrinsic.txt
            self.intrinsic_color = self.intrinsic_depth = _read_matrix(root / "intrinsic.txt")
            self.colors = sorted(p for p in root.glob("*.jpg") if p.stem.isdigit())
            self.pose_files = [p.with_suffix(".txt") for p in self.colors]
            self.depths: list[Path | None] = [None] * len(self.colors)
        else:  # ScanNet SensReader: color/N.jpg, depth/N.png (mm), pose/N.txt, intrinsic/intrinsic_{color,depth}.txt
            self.intrinsic_color = _read_matrix(root / "intrinsic" / "intrinsic_color.txt")
            depth_intrinsic = root / "intrinsic" / "intrinsic_depth.txt"
            self.intrinsic_depth = _read_matrix(depth_intrinsic) if depth_intrinsic.is_file() else self.intrinsic_color
            self.colors = sorted((p for p in (root / "color").glob("*.jpg") if p.stem.isdigit()), key=lambda p: int(p.stem))
            self.pose_files = [root / "pose" / f"{p.stem}.txt" for p in self.colors]
            self.depths = [d if (d := root / "depth" / f"{p.stem}.png").is_file() else None for p in self.colors]
        if not self.colors:
            raise DataError(f"{root}: no frames (NNNNN.jpg) in this exported ScanNet scene")
        self.poses = np.stack([_read_matrix(p) for p in self.pose_files]).astype(np.float32)
        self.frame_ids = [int(p.stem) for p in self.colors]

    def __len__(self) -> int:
        return len(self.colors)

    def frame(self, index: int, draft: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        try:
            color = decode_image(self.colors[index], draft)
            depth = None if self.depths[index] is None else iio.imread(self.depths[index]).astype(np.float32) / 1000.0
        except (OSError, ValueError) as error:
            raise DataError(f"{self.colors[index]}: unreadable frame ({error})") from None
        return color, depth


def _read_matrix(path: Path) -> np.ndarray:
    try:
        matrix = np.loadtxt(require_file(path, "matrix file"), dtype=np.float64).reshape(4, 4)
    except ValueError:
        raise DataError(f"{path}: expected a 4×4 matrix of numbers") from None
    return matrix


# ---- the loader -----------------------------------------------------------------------------
def is_scannet(root: Path) -> bool:
    """A raw scan (<name>.sens), a SensReader export or an mmdet3d posed_images folder."""
    return (root / f"{root.name}.sens").is_file() or (root / "intrinsic.txt").is_file() or all((root / d).is_dir() for d in ("color", "pose", "intrinsic"))


def load_scannet(
    root: str | Path,
    *,
    max_frames: int = DEFAULT_MAX_FRAMES,
    frame_step: int = 0,
    frame_seed: int | None = None,
    downscale: int = 1,
    width: int = 0,
    labels: str | Path | None = None,
    holdout: int = 8,
) -> Scene:
    """A ScanNet scene (raw scan or exported frames); every `holdout`-th kept frame is a test view
    (0: all train)."""
    root = Path(root)
    downscale = check_downscale(downscale)
    for name, value in (("max_frames", max_frames), ("frame_step", frame_step), ("width", width), ("holdout", holdout)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < (1 if name == "max_frames" else 0):
            raise DataError(f"{name}: expected a {'positive' if name == 'max_frames' else 'non-negative'} integer, got {value!r}")
    sens_path = root / f"{root.name}.sens"
    source: SensFile | ExportedFrames = SensFile(sens_path) if sens_path.is_file() else ExportedFrames(root)
    scene_id, annotation_dir = _scene_and_annotations(root)
    annotation = read_annotation(annotation_dir, scene_id, labels) if annotation_dir is not None else None
    A = annotation.axis_alignment if annotation is not None else np.eye(4)

    label = sens_path if sens_path.is_file() else root
    if not np.isfinite(source.poses.reshape(len(source), -1)).all(1).any():
        raise DataError(f"{label}: no frame has a finite pose")
    keep = np.flatnonzero(drop_nonfinite_poses(source.poses, str(label)))
    chosen = _select_frames(keep, max_frames, frame_step, frame_seed)
    intrinsic_color, intrinsic_depth = source.intrinsic_color, source.intrinsic_depth

    n = len(chosen)
    size = K = images = depths = None
    has_depth = True
    for k, index in enumerate(chosen):
        color, depth = source.frame(int(index), draft=size)  # the first frame at full size: it sets the scale
        if size is None:
            size = _image_size(color.shape[:2], downscale, width, label)
            K = np.diag([size[1] / color.shape[1], size[0] / color.shape[0], 1.0]) @ intrinsic_color[:3, :3]
            images, depths = np.empty((n, *size, 3), np.float32), np.zeros((n, *size), np.float32)  # [N, H, W, 3], [N, H, W]
        images[k] = shrink_colour(color, size)
        if depth is None:
            has_depth = False
        else:
            depths[k] = depth_in_color_camera(depth, intrinsic_depth[:3, :3], K, size)
    c2w = A @ source.poses[chosen].astype(np.float64)  # [N, 4, 4] aligned, OpenCV
    names = [int(source.frame_ids[i]) for i in chosen]

    instance_ids = None
    if annotation is not None:
        instance_ids = _instance_masks(annotation, annotation_dir, names, np.repeat(K[None], len(c2w), 0), c2w, size)
    measured = depths[:, ::4, ::4][depths[:, ::4, ::4] > 0] if has_depth else np.zeros(0)  # every 16th pixel
    near, far = (max(0.05, 0.9 * float(np.percentile(measured, 0.5))), 1.1 * float(np.percentile(measured, 99.5))) if measured.size else (0.1, 10.0)
    if annotation is not None:
        bounds = np.stack([annotation.vertices.min(0), annotation.vertices.max(0)])
    else:
        centres = c2w[:, :3, 3]
        bounds = np.stack([centres.min(0) - far, centres.max(0) + far])
    test = np.arange(0, n, holdout) if holdout else np.zeros(0, dtype=np.int64)
    train = np.setdiff1d(np.arange(n), test)
    return Scene(
        name=scene_id, root=root, images=torch.from_numpy(images), K=torch.from_numpy(np.repeat(K[None], n, 0)).float(),
        c2w=torch.from_numpy(c2w).float(), splits={"train": torch.from_numpy(train), "test": torch.from_numpy(test)},
        near=near, far=far, bounds=torch.from_numpy(bounds).float(), background=(1.0, 1.0, 1.0),
        image_paths=[Path(f"frame-{i:06d}") for i in names],
        depths=torch.from_numpy(depths) if has_depth else None,
        instance_ids=None if instance_ids is None else torch.from_numpy(instance_ids),
        points=None if annotation is None else torch.from_numpy(annotation.vertices).float(),
        point_colors=None if annotation is None else torch.from_numpy(annotation.colors),
        objects=[] if annotation is None else annotation.objects,
        world_transform=torch.from_numpy(A).float(),
    )


def _scene_and_annotations(root: Path) -> tuple[str, Path | None]:
    """The scene id (the folder's name, or its parent's for an export inside a scan folder) and the
    folder holding its annotation files (mesh, segs, aggregation), if any."""
    scene_id = next((p.name for p in (root, root.parent) if SCENE_ID.fullmatch(p.name)), root.name)
    candidates = [root, root.parent, root.parent.parent / "scans" / scene_id, root.parent.parent.parent / "scans" / scene_id]
    found = next((d for d in candidates if (d / f"{scene_id}.aggregation.json").is_file()), None)
    return scene_id, found


def _select_frames(keep: np.ndarray, max_frames: int, frame_step: int, frame_seed: int | None) -> np.ndarray:
    """Every frame_step-th finite frame, or at most max_frames of them (evenly spaced, or drawn with a seed)."""
    if frame_step:
        return keep[::frame_step]
    if len(keep) <= max_frames:
        return keep
    if frame_seed is None:
        return keep[np.round(np.linspace(0, len(keep) - 1, max_frames)).astype(np.int64)]
    return np.sort(np.random.default_rng(frame_seed).choice(keep, max_frames, replace=False))


def _image_size(shape: tuple[int, int], downscale: int, width: int, label: Path) -> tuple[int, int]:
    """(height, width) of the loaded images: width= keeps the aspect ratio, else 1/downscale."""
    h, w = shape
    if width:
        return max(1, round(h * width / w)), width
    if h // downscale < 1 or w // downscale < 1:
        raise DataError(f"{label}: downscale {downscale} is larger than the {w}x{h} images")
    return h // downscale, w // downscale


def shrink_colour(color: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 [H, W, 3] → float32 [h, w, 3] in [0, 1] by area averaging (PIL's box filter on the 8-bit
    image: no full-size float copy per frame, which fragments the heap of a 300-frame load)."""
    from PIL import Image

    if color.shape[:2] != size:
        color = np.asarray(Image.fromarray(color).resize((size[1], size[0]), Image.Resampling.BOX))
    return color.astype(np.float32) / 255.0


def depth_in_color_camera(depth: np.ndarray, K_depth: np.ndarray, K_color: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Depth [h, w] of the depth camera → [H, W] in the colour camera (same centre and axes, as
    ScanNet's registered streams): each colour pixel centre takes the depth pixel it falls in."""
    H, W = size
    u = ((np.arange(W) + 0.5 - K_color[0, 2]) / K_color[0, 0]) * K_depth[0, 0] + K_depth[0, 2]  # [W] depth-image x
    v = ((np.arange(H) + 0.5 - K_color[1, 2]) / K_color[1, 1]) * K_depth[1, 1] + K_depth[1, 2]
    cols, rows = np.floor(u).astype(np.int64), np.floor(v).astype(np.int64)
    inside = (cols >= 0) & (cols < depth.shape[1]), (rows >= 0) & (rows < depth.shape[0])
    out = depth[np.clip(rows, 0, depth.shape[0] - 1)][:, np.clip(cols, 0, depth.shape[1] - 1)]
    return (out * inside[1][:, None] * inside[0][None, :]).astype(np.float32)


def _instance_masks(annotation: ScanAnnotation, scene_dir: Path, frames: list[int], K: np.ndarray, c2w: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[N, H, W] int32 object indices per kept frame: ScanNet's 2D export where it has the frame
    (its values are objectId + 1), else ray cast from the annotated mesh."""
    index_of_object = {obj.instance_id: i + 1 for i, obj in enumerate(annotation.objects)}
    exported = _exported_masks(scene_dir, annotation.scene_id)
    masks = np.zeros((len(frames), *size), dtype=np.int32)
    missing = []
    for k, frame in enumerate(frames):
        raw = exported(frame)
        if raw is None:
            missing.append(k)
            continue
        lookup = np.zeros(int(raw.max()) + 1, dtype=np.int32)
        for value in range(1, len(lookup)):
            lookup[value] = index_of_object.get(value - 1, 0)
        masks[k] = resize_nearest(lookup[raw], size)
    if missing:
        masks[missing] = render_instance_masks(annotation, K[missing], c2w[missing], size)
    return masks


def _exported_masks(scene_dir: Path, scene_id: str):
    """frame → its instance-filt PNG as an int array, or None; from the zip or the folder."""
    archive_path, folder = scene_dir / f"{scene_id}_2d-instance-filt.zip", scene_dir / "instance-filt"
    archive = zipfile.ZipFile(archive_path) if archive_path.is_file() else None
    names = set(archive.namelist()) if archive is not None else set()

    def read(frame: int) -> np.ndarray | None:
        name = f"instance-filt/{frame}.png"
        try:
            if name in names:
                return iio.imread(io.BytesIO(archive.read(name))).astype(np.int64)
            if (folder / f"{frame}.png").is_file():
                return iio.imread(folder / f"{frame}.png").astype(np.int64)
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise DataError(f"{archive_path if name in names else folder}: unreadable instance mask of frame {frame} ({error})") from None
        return None

    return read


def render_instance_masks(annotation: ScanAnnotation, K: np.ndarray, c2w: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[N, H, W] object indices seen through each pixel centre, ray cast on the annotated mesh."""
    import open3d as o3d

    mesh = o3d.io.read_triangle_mesh(str(annotation.mesh_path))
    triangles = np.asarray(mesh.triangles)
    if len(np.asarray(mesh.vertices)) != len(annotation.vertices) or not len(triangles):
        raise DataError(f"{annotation.mesh_path}: cannot read its faces for the instance masks")
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(annotation.vertices.astype(np.float32)), o3d.core.Tensor(triangles.astype(np.uint32)))
    triangle_object = np.append(annotation.vertex_object[triangles[:, 0]], 0)  # misses → 0
    H, W = size
    v, u = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    masks = np.zeros((len(K), H, W), dtype=np.int32)
    for k in range(len(K)):
        cam = np.stack([(u - K[k, 0, 2]) / K[k, 0, 0], (v - K[k, 1, 2]) / K[k, 1, 1], np.ones_like(u)], -1).reshape(-1, 3)
        dirs = cam @ c2w[k, :3, :3].T
        rays = np.concatenate([np.broadcast_to(c2w[k, :3, 3], dirs.shape), dirs], 1).astype(np.float32)
        ids = scene.cast_rays(o3d.core.Tensor(rays))["primitive_ids"].numpy().astype(np.int64)
        masks[k] = triangle_object[np.minimum(ids, len(triangles))].reshape(H, W)
    return masks


# ---- dataset level ---------------------------------------------------------------------------
def scannet_scenes(root: str | Path, split: str = "train") -> list[Path]:
    """Scene folders of a ScanNet root (`scans/sceneXXXX_YY/`) in `split`, from scannetv2_<split>.txt
    (in the root, meta_data/ or Tasks/Benchmark/) when present, else every scene folder."""
    root = Path(root)
    scans = root / "scans" if (root / "scans").is_dir() else root
    if split not in ("train", "val", "test"):
        raise DataError(f"split: expected train, val or test, got {split!r}")
    for folder in (root, root / "meta_data", root / "Tasks" / "Benchmark"):
        listing = folder / f"scannetv2_{split}.txt"
        if listing.is_file():
            names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
            missing = [n for n in names if not (scans / n).is_dir()]
            if missing:
                raise DataError(f"{listing}: {len(missing)} listed scenes are not in {scans} (first: {missing[0]})")
            return [scans / n for n in names]
    scenes = sorted(p for p in scans.iterdir() if p.is_dir() and SCENE_ID.fullmatch(p.name)) if scans.is_dir() else []
    if not scenes:
        raise DataError(f"{root}: no ScanNet scenes (scans/sceneXXXX_YY/)")
    return scenes
