"""data/: loaders (Blender, LLFF), the synthetic generator, ground truth and error messages."""
from __future__ import annotations

import filecmp
import json
import math
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from data import DataError, load, scene_folders
from data.formats import drop_nonfinite_poses, load_blender, load_llff
from data.synth import generate
from corrupt import BLENDER_BREAKS, BLENDER_RES, BLENDER_VIEWS, LLFF_BREAKS, LLFF_RES, LLFF_VIEWS



@pytest.fixture(scope="module")
def blender_dir(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("gen") / "blender", format="blender", views=BLENDER_VIEWS, res=BLENDER_RES)


@pytest.fixture(scope="module")
def llff_dir(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("gen") / "llff", format="llff", views=LLFF_VIEWS, res=LLFF_RES)


@pytest.fixture(scope="module")
def blender(blender_dir):
    return load(blender_dir)


@pytest.fixture(scope="module")
def llff(llff_dir):
    return load(llff_dir)


# ---------------------------------------------------------------------------------------------
# loaders
def test_blender_scene(blender):
    n, r = BLENDER_VIEWS + 2 + 4, BLENDER_RES
    assert blender.images.shape == (n, r, r, 3) and blender.images.dtype == torch.float32
    assert blender.images.min() >= 0 and blender.images.max() <= 1
    assert {k: v.tolist() for k, v in blender.splits.items()} == {
        "train": list(range(8)), "val": [8, 9], "test": [10, 11, 12, 13]
    }
    focal = 0.5 * r / math.tan(0.5 * json.loads((blender.root / "transforms_train.json").read_text())["camera_angle_x"])
    torch.testing.assert_close(blender.K[0], torch.tensor([[focal, 0, r / 2], [0, focal, r / 2], [0, 0, 1.0]]))
    assert (blender.near, blender.far, blender.ndc) == (2.0, 6.0, False)
    assert blender.bounds.tolist() == [[-1.5] * 3, [1.5] * 3]
    # background is white where the mask is empty, and some pixels are fully covered
    empty = blender.masks == 0
    assert empty.any() and (blender.masks == 1).any()
    assert torch.all(blender.images[empty] == 1.0)
    assert blender.depths.shape == blender.instance_ids.shape == (n, r, r)
    assert torch.all(blender.depths[blender.instance_ids > 0] > 0) and torch.all(blender.depths[empty] == 0)
    assert torch.all(blender.depths[blender.depths > 0] > blender.near) and blender.depths.max() < blender.far
    assert 4 <= len(blender.objects) <= 6
    assert [o.instance_id for o in blender.objects] == list(range(1, len(blender.objects) + 1))
    assert set(blender.instance_ids.unique().tolist()) <= set(range(len(blender.objects) + 1))
    assert blender.points.shape[1] == 3 and len(blender.points) > 10_000
    assert torch.all(blender.points >= blender.bounds[0]) and torch.all(blender.points <= blender.bounds[1])
    assert blender.render_poses.shape == (40, 4, 4)
    _assert_rotations(blender.c2w)


def test_blender_composites_partial_alpha_once(tmp_path):
    """Pixels against an independent composite of an RGBA PNG with known partial alpha."""
    root = shutil.copytree(generate(tmp_path / "g", format="blender", views=2, res=8), tmp_path / "scene")
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 200, 40, 120
    rgba[..., 3] = np.arange(64).reshape(8, 8) * 4  # alpha from 0 to 252
    iio.imwrite(root / "train" / "r_0.png", rgba)
    background = (0.1, 0.5, 0.9)
    scene = load(root, background=background)
    alpha = rgba[..., 3:] / 255.0
    expected = rgba[..., :3] / 255.0 * alpha + np.array(background) * (1 - alpha)
    np.testing.assert_allclose(scene.images[0].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(scene.masks[0].numpy(), alpha[..., 0], atol=1e-6)


def test_blender_downscale_and_background(blender, blender_dir):
    small = load(blender_dir, downscale=2, background=(0.0, 0.0, 0.0), spherify=True)  # spherify: LLFF-only, ignored
    assert small.images.shape[1:3] == (BLENDER_RES // 2, BLENDER_RES // 2)
    torch.testing.assert_close(small.K[:, :2], blender.K[:, :2] / 2)
    premultiplied = blender.images - (1 - blender.masks[..., None])  # white -> black background
    pooled = torch.nn.functional.avg_pool2d(premultiplied.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    torch.testing.assert_close(small.images, pooled, atol=1e-5, rtol=0)
    torch.testing.assert_close(small.depths, blender.depths[:, 1::2, 1::2])


def test_blender_optional_keys(blender_dir, tmp_path):
    """No val file (val = test), file_path with extension, per-frame fl_x/cx, near/far/bounds keys."""
    root = shutil.copytree(blender_dir, tmp_path / "scene")
    (root / "transforms_val.json").unlink()
    meta = json.loads((root / "transforms_train.json").read_text())
    meta["frames"][0].update(file_path="./train/r_0.png", fl_x=40.0, cx=15.0)
    meta.update(near=1.0, far=7.5, bounds=[[-1, -2, -3], [1, 2, 3]])
    (root / "transforms_train.json").write_text(json.dumps(meta))
    scene = load(root)
    assert scene.splits["val"].tolist() == scene.splits["test"].tolist() == list(range(8, 12))
    torch.testing.assert_close(scene.K[0], torch.tensor([[40.0, 0, 15], [0, 40, 16], [0, 0, 1]]))  # fl_y = fl_x
    assert (scene.near, scene.far) == (1.0, 7.5) and scene.bounds.tolist() == [[-1, -2, -3], [1, 2, 3]]
    assert scene.depths.shape[0] == scene.num_views == 12


def test_llff_scene(llff):
    n, w, h = LLFF_VIEWS, LLFF_RES, LLFF_RES * 3 // 4
    assert llff.images.shape == (n, h, w, 3)
    assert llff.splits["test"].tolist() == [0, 8, 16] and llff.splits["val"].tolist() == [0, 8, 16]
    assert llff.splits["train"].tolist() == [i for i in range(n) if i % 8]
    assert (llff.ndc, llff.near, llff.far) == (True, 0.0, 1.0)
    assert torch.all(llff.masks == 1) and torch.all(llff.depths > 0)  # every pixel hits the backdrop
    assert torch.all(llff.K[:, 0, 2] == w / 2) and torch.all(llff.K[:, 1, 2] == h / 2)
    assert llff.render_poses.shape == (120, 4, 4)
    assert [p.name for p in llff.image_paths] == sorted(p.name for p in llff.image_paths)
    # recentered: the average camera is the identity in OpenGL, so cameras look down world -z (NDC)
    assert torch.all(llff.c2w[:, 2, 2] < -0.9)
    _assert_rotations(llff.c2w)
    assert load(llff.root, llffhold=0).splits["test"].numel() == 0


def _bmild_reference(poses_bounds: np.ndarray):
    """Straight transcription of bmild load_llff: reorder, bd_factor 0.75, recenter.

    Returns ([N, 4, 4] OpenGL c2w, [N, 2] bounds)."""
    poses = poses_bounds[:, :15].reshape(-1, 3, 5)
    bds = poses_bounds[:, 15:].copy()
    poses = np.concatenate([poses[:, :, 1:2], -poses[:, :, 0:1], poses[:, :, 2:]], 2)
    sc = 1.0 / (bds.min() * 0.75)
    poses[:, :3, 3] *= sc
    bds *= sc
    center = poses[:, :3, 3].mean(0)
    z = poses[:, :3, 2].sum(0)
    z /= np.linalg.norm(z)
    up = poses[:, :3, 1].sum(0)
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    avg = np.eye(4)
    avg[:3] = np.stack([x, np.cross(z, x), z, center], 1)
    p44 = np.tile(np.eye(4), (len(poses), 1, 1))
    p44[:, :3, :4] = poses[:, :, :4]
    return np.linalg.inv(avg) @ p44, bds


def test_llff_processing_matches_bmild(llff_dir):
    raw = np.load(llff_dir / "poses_bounds.npy")
    ref_c2w, ref_bds = _bmild_reference(raw)
    ref_c2w[:, :3, 1:3] *= -1  # OpenGL -> OpenCV
    scene = load(llff_dir, ndc=False, downscale=2)
    torch.testing.assert_close(scene.c2w, torch.from_numpy(ref_c2w).float(), atol=1e-5, rtol=1e-5)
    assert scene.near == pytest.approx(0.9 * ref_bds.min()) and scene.far == pytest.approx(ref_bds.max())
    torch.testing.assert_close(scene.K[:, 0, 0], torch.from_numpy(raw[:, 14] / 2).float())
    assert scene.images.shape[1:3] == (LLFF_RES * 3 // 8, LLFF_RES // 2) and not scene.ndc


def test_llff_reads_prescaled_folder(llff_dir, tmp_path):
    root = shutil.copytree(llff_dir, tmp_path / "scene")
    (root / "images_2").mkdir()
    for path in sorted((root / "images").iterdir()):
        iio.imwrite(root / "images_2" / path.name, np.zeros((5, 7, 3), np.uint8))
    scene = load(root, downscale=2)
    assert scene.images.shape[1:3] == (5, 7) and scene.image_paths[0].parent.name == "images_2"
    assert scene.depths.shape[1:] == (5, 7)


def _write_colmap_points(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """points3D.bin or .txt as COLMAP writes them, with tracks of varying length."""
    rgb = np.round(rgb * 255).astype(np.uint8)
    if path.suffix == ".txt":
        lines = ["# 3D point list with one line of data per point:", "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)"]
        lines += [f"{i + 1} {x} {y} {z} {r} {g} {b} 0.5 1 {i} 2 {i}" for i, ((x, y, z), (r, g, b)) in enumerate(zip(xyz.tolist(), rgb.tolist()))]
        path.write_text("\n".join(lines) + "\n")
        return
    chunks = [np.array([len(xyz)], "<u8").tobytes()]
    for i in range(len(xyz)):
        track = np.arange(2 * (i % 3), dtype="<i4")  # i % 3 observations
        chunks += [np.array([i + 1], "<u8").tobytes(), xyz[i].astype("<f8").tobytes(), rgb[i].tobytes(), np.array([0.5], "<f8").tobytes(), np.array([i % 3], "<u8").tobytes(), track.tobytes()]
    path.write_bytes(b"".join(chunks))


@pytest.mark.parametrize("name", ["points3D.bin", "points3D.txt"])
def test_llff_points_from_colmap_model(llff_dir, tmp_path, name):
    """Without ground truth, an LLFF scene takes its points from sparse/0 and moves them like its poses."""
    from data.formats.common import read_points

    root = shutil.copytree(llff_dir, tmp_path / "scene")
    xyz, rgb = read_points(root / "recon_gt" / "points.ply")  # raw world frame, as COLMAP's would be
    shutil.rmtree(root / "recon_gt")
    (root / "sparse" / "0").mkdir(parents=True)
    _write_colmap_points(root / "sparse" / "0" / name, xyz[:500], rgb[:500])
    scene, reference = load(root), load(llff_dir)
    torch.testing.assert_close(scene.points, reference.points[:500], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scene.point_colors, reference.point_colors[:500], atol=1e-6, rtol=0)
    (root / "sparse" / "0" / name).write_bytes(b"\x05\x00")
    with pytest.raises(DataError, match=f"{name}: not a valid COLMAP points3D file"):
        load(root)


def test_llff_spherify(llff_dir):
    scene = load(llff_dir, spherify=True)
    assert not scene.ndc and scene.render_poses.shape == (120, 4, 4)
    radius = scene.c2w[:, :3, 3].norm(dim=1)
    assert torch.sqrt((radius**2).mean()).item() == pytest.approx(1.0, abs=1e-5)
    _assert_consistent_geometry(scene)


# ---------------------------------------------------------------------------------------------
# geometry: the camera convention, depths, points and boxes agree
def _backproject(scene, view: int, mask: torch.Tensor) -> torch.Tensor:
    """[M, 3] world points of the pixels in mask [H, W] from the GT z-depth."""
    v, u = torch.nonzero(mask, as_tuple=True)
    z = scene.depths[view, v, u].double()
    K, c2w = scene.K[view].double(), scene.c2w[view].double()
    cam = torch.stack([(u + 0.5 - K[0, 2]) / K[0, 0] * z, (v + 0.5 - K[1, 2]) / K[1, 1] * z, z], 1)
    return cam @ c2w[:3, :3].T + c2w[:3, 3]


def _assert_consistent_geometry(scene) -> None:
    a = 0
    similarity = (scene.c2w[:, :3, 2] * scene.c2w[a, :3, 2]).sum(1)  # [N] cosine between viewing directions
    similarity[a] = -2
    b = int(similarity.argmax())
    world = _backproject(scene, a, scene.depths[a] > 0)  # [M, 3]
    # re-project into the most similar other view: its depth agrees wherever the point is visible
    w2c = torch.linalg.inv(scene.c2w[b].double())
    cam = world @ w2c[:3, :3].T + w2c[:3, 3]
    K = scene.K[b].double()
    u = (K[0, 0] * cam[:, 0] / cam[:, 2] + K[0, 2]).floor().long()
    v = (K[1, 1] * cam[:, 1] / cam[:, 2] + K[1, 2]).floor().long()
    inside = (u >= 0) & (u < scene.width) & (v >= 0) & (v < scene.height) & (cam[:, 2] > 0)
    assert inside.float().mean() > 0.5
    depth_b = scene.depths[b, v[inside], u[inside]].double()
    rel = (depth_b - cam[inside, 2]).abs() / cam[inside, 2]
    assert (rel < 0.02).float().mean() > 0.7, f"only {(rel < 0.02).float().mean():.2f} of re-projected depths agree"
    # object pixels lie on the GT point cloud, and inside their object's box
    objects = scene.instance_ids[a] > 0
    pts = world[objects[scene.depths[a] > 0]]
    nearest = torch.cdist(pts, scene.points.double()).min(1).values
    spacing = torch.cdist(scene.points[:2000].double(), scene.points.double()).topk(2, largest=False).values[:, 1]
    assert nearest.median() < 3 * spacing.median()
    for box in scene.objects:
        sel = scene.instance_ids[a][scene.depths[a] > 0] == box.instance_id
        lo, hi = torch.tensor(box.box_min).double(), torch.tensor(box.box_max).double()
        pad = 1e-3 * (hi - lo).norm()
        assert torch.all((world[sel] >= lo - pad) & (world[sel] <= hi + pad)), box.class_name


def test_geometry_blender(blender):
    _assert_consistent_geometry(blender)


def test_geometry_llff(llff):
    _assert_consistent_geometry(llff)


def _assert_rotations(c2w: torch.Tensor) -> None:
    R = c2w[:, :3, :3].double()
    torch.testing.assert_close(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand_as(R), atol=1e-5, rtol=0)
    assert torch.allclose(torch.linalg.det(R), torch.ones(len(R), dtype=torch.float64), atol=1e-5)
    assert torch.all(c2w[:, 3] == torch.tensor([0.0, 0.0, 0.0, 1.0]))


# ---------------------------------------------------------------------------------------------
# generator
@pytest.mark.parametrize("fmt", ["blender", "llff"])
def test_generate_is_deterministic(tmp_path, fmt):
    dirs = [generate(tmp_path / str(i), format=fmt, seed=seed, views=4, res=16) for i, seed in enumerate((0, 0, 1))]
    files = sorted(str(p.relative_to(dirs[0])) for p in dirs[0].rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(dirs[1])) for p in dirs[1].rglob("*") if p.is_file())
    match, mismatch, errors = filecmp.cmpfiles(dirs[0], dirs[1], files, shallow=False)
    assert not mismatch and not errors
    _, different, _ = filecmp.cmpfiles(dirs[0], dirs[2], files, shallow=False)
    assert "recon_gt/objects.json" in different and "recon_gt/points.ply" in different


def test_generate_rejects_bad_arguments(tmp_path, blender_dir):
    for kwargs, needle in (({"format": "colmap"}, "format"), ({"views": 1}, "views"), ({"res": 4}, "res")):
        with pytest.raises(DataError, match=needle):
            generate(tmp_path / "x", **kwargs)
    with pytest.raises(DataError, match="empty directory"):
        generate(blender_dir)


# ---------------------------------------------------------------------------------------------
# errors: one DataError naming the file (the cases live in corrupt.py, shared with the CLI's corpus)
@pytest.mark.parametrize("case", sorted(BLENDER_BREAKS))
def test_blender_errors(case, blender_dir, tmp_path):
    breaks, message = BLENDER_BREAKS[case]
    root = shutil.copytree(blender_dir, tmp_path / "scene")
    breaks(root)
    with pytest.raises(DataError, match=message):
        load_blender(root)


@pytest.mark.parametrize("case", sorted(LLFF_BREAKS))
def test_llff_errors(case, llff_dir, tmp_path):
    breaks, message = LLFF_BREAKS[case]
    root = shutil.copytree(llff_dir, tmp_path / "scene")
    breaks(root)
    with pytest.raises(DataError, match=message):
        load(root)


def test_argument_and_detection_errors(tmp_path, blender_dir, llff_dir):
    with pytest.raises(DataError, match="nope: dataset directory not found"):
        load(tmp_path / "nope")
    expected = "unknown dataset format \\(expected transforms_train.json or poses_bounds.npy or a COLMAP scene .* or a ScanNet scene .* or a DTU scan"
    with pytest.raises(DataError, match=expected):
        load(tmp_path)
    for bad in (0, 1.5, True, "2"):
        with pytest.raises(DataError, match="downscale"):
            load(blender_dir, downscale=bad)
    with pytest.raises(DataError, match="downscale 64 is larger than the 32x32"):
        load(blender_dir, downscale=64)
    with pytest.raises(DataError, match="llffhold"):
        load_llff(llff_dir, llffhold=-1)
    with pytest.raises(DataError, match="background"):
        load(llff_dir, background=(2, 0, 0))
    with pytest.raises(TypeError, match="bogus"):
        load(blender_dir, bogus=1)


def test_drop_nonfinite_poses_warns_and_drops():
    c2w = np.tile(np.eye(4), (4, 1, 1))
    c2w[2, 0, 3] = np.inf
    with pytest.warns(UserWarning, match="scannet/scene0000: dropped 1 frames"):
        keep = drop_nonfinite_poses(c2w, "scannet/scene0000")
    assert keep.tolist() == [True, True, False, True]


def test_multi_scene_generation_distinct_scenes_and_split_lists(tmp_path):
    from data.synth import generate_scenes

    root = generate_scenes(tmp_path / "many", scenes=3, unseen=1, views=4, res=16)
    train, test = scene_folders(root, "train"), scene_folders(root, "test")
    assert [p.name for p in train] == ["scene_000", "scene_001"] and [p.name for p in test] == ["scene_002"]
    objects = [json.loads((p / "recon_gt" / "objects.json").read_text()) for p in train + test]
    assert objects[0] != objects[1] != objects[2]  # each scene its own objects and layout
    again = generate_scenes(tmp_path / "again", scenes=2, unseen=1, views=4, res=16)
    assert json.loads((again / "scene_001" / "recon_gt" / "objects.json").read_text()) == objects[1]  # scene k depends on (seed, k) only
    with pytest.raises(DataError, match="unseen: expected an integer in \\[0, 2\\], got 3"):
        generate_scenes(tmp_path / "bad", scenes=3, unseen=3)
    with pytest.raises(DataError, match="not a multi-scene root"):
        scene_folders(train[0], "train")
