"""ScanNet: the .sens stream, the loader on generated rooms in ScanNet's raw layout (poses, dropped
−inf frames, boxes recomputed from mesh + segments + aggregation equal to the generator's, depth and
masks consistent with the mesh and the boxes), the exported-frames layouts, ScanNet's 2D instance
export, split lists, `recon detect eval`, and 3DGS training on a room through the CLI."""
from __future__ import annotations

import io
import json
import shutil
import warnings
import zipfile

import imageio.v3 as iio
import numpy as np
import open3d as o3d
import pytest
import torch

import data
from data.formats.scannet import CLASSES, read_annotation, render_instance_masks
from data.formats.sens import SensFile, SensHeader, write_sens
from data.rooms import generate_rooms
from recon.cli import main

FRAMES, RES = 24, 64


@pytest.fixture(scope="module")
def rooms(tmp_path_factory):
    """Two training rooms and one validation room, 24 frames each at 64×48."""
    return generate_rooms(tmp_path_factory.mktemp("scannet") / "root", rooms=2, val=1, seed=5, frames=FRAMES, res=RES)


def scan(rooms, k: int = 0):
    return rooms / "scans" / f"scene{k:04d}_00"


def load_quietly(path, **options):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scene = data.load(path, **options)
    return scene, [str(w.message) for w in caught]


def test_sens_round_trip_and_the_frame_table(tmp_path):
    rng = np.random.default_rng(0)
    K = np.eye(4, dtype=np.float32)
    K[0, 0] = K[1, 1] = 50.0
    K[0, 2], K[1, 2] = 16.0, 12.0
    header = SensHeader(K, K * 0.5, (32, 24), (16, 12), color_compression=1)  # PNG colour: exact
    poses = rng.normal(size=(5, 4, 4)).astype(np.float32)
    colors = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(5)]
    depths = [rng.uniform(0.2, 6.0, (12, 16)).astype(np.float32) for _ in range(5)]
    write_sens(tmp_path / "a.sens", header, poses, colors, depths)
    sens = SensFile(tmp_path / "a.sens")
    assert len(sens) == 5 and sens.header.color_size == (32, 24) and sens.header.depth_shift == 1000.0
    np.testing.assert_array_equal(sens.poses, poses)
    for i in (4, 0, 2):  # any order: each frame is found from the table
        color, depth = sens.frame(i)
        np.testing.assert_array_equal(color, colors[i])
        np.testing.assert_allclose(depth, depths[i], atol=0.5 / 1000)


def test_loader_on_a_generated_room(rooms):
    scene, messages = load_quietly(scan(rooms), max_frames=10)
    sens = SensFile(scan(rooms) / "scene0000_00.sens")
    finite = np.isfinite(sens.poses.reshape(len(sens), -1)).all(1)
    assert (~finite).sum() >= 1 and len(messages) == 1 and f"dropped {(~finite).sum()} frames with non-finite poses" in messages[0]
    kept = np.flatnonzero(finite)[np.round(np.linspace(0, finite.sum() - 1, 10)).astype(int)]  # evenly spaced
    assert [p.name for p in scene.image_paths] == [f"frame-{i:06d}" for i in kept]
    A = scene.world_transform.double().numpy()
    np.testing.assert_allclose(scene.c2w.numpy(), (A @ sens.poses[kept].astype(np.float64)), atol=1e-5)
    assert scene.images.shape == (10, 48, 64, 3) and scene.depths.shape == (10, 48, 64) and scene.instance_ids.shape == (10, 48, 64)
    assert scene.split("test").tolist() == [0, 8] and len(scene.split("train")) == 8

    truth = json.loads((rooms / "recon_gt" / "scene0000_00.json").read_text())  # the generator's boxes, aligned frame
    assert [(o.class_name, o.instance_id) for o in scene.objects] == [(b["class_name"], b["instance_id"]) for b in truth]
    for obj, box in zip(scene.objects, truth):
        np.testing.assert_allclose([*obj.box_min, *obj.box_max], [*box["box_min"], *box["box_max"]], atol=1e-4)
    assert scene.points.shape[0] > 5000 and scene.bounds[0, 2] == pytest.approx(-0.1, abs=1e-4)  # the floor slab's underside


def test_depth_and_masks_agree_with_the_mesh_and_the_boxes(rooms):
    scene, _ = load_quietly(scan(rooms, 1), max_frames=6)
    annotation = read_annotation(scan(rooms, 1), "scene0001_00")
    mesh = o3d.t.geometry.TriangleMesh(o3d.core.Tensor(annotation.vertices.astype(np.float32)),
                                       o3d.core.Tensor(np.asarray(o3d.io.read_triangle_mesh(str(annotation.mesh_path)).triangles).astype(np.int32)))
    caster = o3d.t.geometry.RaycastingScene()
    caster.add_triangles(mesh)
    h, w = scene.height, scene.width
    v, u = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
    visible_objects = 0
    for k in range(scene.num_views):
        K, c2w = scene.K[k].double().numpy(), scene.c2w[k].double().numpy()
        cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
        rays = np.concatenate([np.broadcast_to(c2w[:3, 3], cam.shape), cam @ c2w[:3, :3].T], 1).astype(np.float32)
        t = caster.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy().reshape(h, w)  # z-depth (camera z = 1)
        depth = scene.depths[k].numpy()
        agree = np.abs(depth - t) < 0.02 + 0.02 * t  # depth was rendered at half resolution: edges differ
        assert agree.mean() > 0.9, agree.mean()
        ids = scene.instance_ids[k].numpy()
        for i in np.unique(ids[ids > 0]):  # every object's pixels fall inside the projection of its 3D box
            obj = scene.objects[i - 1]
            corners = np.array([[x, y, z, 1.0] for x in (obj.box_min[0], obj.box_max[0]) for y in (obj.box_min[1], obj.box_max[1]) for z in (obj.box_min[2], obj.box_max[2])])
            cam_pts = (np.linalg.inv(c2w) @ corners.T).T[:, :3]
            if (cam_pts[:, 2] <= 0.05).any():
                continue  # the box reaches behind the camera: its projection is unbounded
            px = cam_pts[:, :2] / cam_pts[:, 2:] * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]
            rows, cols = np.nonzero(ids == i)
            assert (cols + 0.5 >= px[:, 0].min() - 1).all() and (cols + 0.5 <= px[:, 0].max() + 1).all()
            assert (rows + 0.5 >= px[:, 1].min() - 1).all() and (rows + 0.5 <= px[:, 1].max() + 1).all()
            visible_objects += 1
    assert visible_objects >= 3


def test_exported_layouts_load_into_the_same_scene(rooms, tmp_path):
    raw, _ = load_quietly(scan(rooms), frame_step=3, holdout=0)
    sens = SensFile(scan(rooms) / "scene0000_00.sens")
    frames = [int(p.name.split("-")[1]) for p in raw.image_paths]
    # ScanNet's SensReader export inside the scan folder, and mmdet3d's posed_images beside scans/
    export = tmp_path / "scans" / "scene0000_00" / "exported"
    posed = tmp_path / "posed_images" / "scene0000_00"
    shutil.copytree(scan(rooms), tmp_path / "scans" / "scene0000_00", ignore=shutil.ignore_patterns("*.sens"))
    shutil.copy(rooms / "scannetv2-labels.combined.tsv", tmp_path)
    for folder in ("color", "depth", "pose", "intrinsic"):
        (export / folder).mkdir(parents=True)
    posed.mkdir(parents=True)
    np.savetxt(export / "intrinsic" / "intrinsic_color.txt", sens.intrinsic_color)
    np.savetxt(export / "intrinsic" / "intrinsic_depth.txt", sens.intrinsic_depth)
    np.savetxt(posed / "intrinsic.txt", sens.intrinsic_color)
    for i in range(len(sens)):
        color, depth = sens.frame(i)
        iio.imwrite(export / "color" / f"{i}.jpg", color, quality=95)
        iio.imwrite(export / "depth" / f"{i}.png", np.round(depth * 1000).astype(np.uint16))
        np.savetxt(export / "pose" / f"{i}.txt", sens.poses[i])
        iio.imwrite(posed / f"{i:05d}.jpg", color, quality=95)
        np.savetxt(posed / f"{i:05d}.txt", sens.poses[i])
    for root in (export, posed):
        scene, messages = load_quietly(root, frame_step=3, holdout=0)
        assert scene.name == "scene0000_00" and "non-finite poses" in messages[0]
        assert [int(p.name.split("-")[1]) for p in scene.image_paths] == frames
        torch.testing.assert_close(scene.c2w, raw.c2w)
        torch.testing.assert_close(scene.K, raw.K)
        assert (scene.images - raw.images).abs().mean() < 0.02  # JPEG again
        assert [o.class_name for o in scene.objects] == [o.class_name for o in raw.objects]
        torch.testing.assert_close(scene.instance_ids, raw.instance_ids)
    assert load_quietly(export, frame_step=3)[0].depths is not None and load_quietly(posed, frame_step=3)[0].depths is None


def test_scannets_2d_instance_export_is_used_when_present(rooms, tmp_path):
    folder = shutil.copytree(scan(rooms), tmp_path / "scene0000_00")
    shutil.copy(rooms / "scannetv2-labels.combined.tsv", tmp_path)
    rendered, _ = load_quietly(folder, max_frames=5)
    annotation = read_annotation(folder, "scene0000_00")
    frames = [int(p.name.split("-")[1]) for p in rendered.image_paths]
    # the export holds every other kept frame, at another resolution, with ScanNet's values objectId + 1
    big = render_instance_masks(annotation, rendered.K[::2].double().numpy() * np.array([2.0, 2.0, 1.0])[:, None], rendered.c2w[::2].double().numpy(), (96, 128))
    ids = np.array([0] + [o.instance_id + 1 for o in annotation.objects])
    with zipfile.ZipFile(folder / "scene0000_00_2d-instance-filt.zip", "w") as archive:
        for frame, mask in zip(frames[::2], big):
            buffer = io.BytesIO()
            iio.imwrite(buffer, ids[mask].astype(np.uint16), extension=".png")
            archive.writestr(f"instance-filt/{frame}.png", buffer.getvalue())
    exported, _ = load_quietly(folder, max_frames=5)
    agree = (exported.instance_ids == rendered.instance_ids).float().mean()
    assert agree > 0.97  # nearest down-sampling of a 2× render differs only on edges
    torch.testing.assert_close(exported.instance_ids[1::2], rendered.instance_ids[1::2])  # not in the export: ray cast


def test_split_lists_and_detect_eval(rooms, tmp_path, capsys):
    assert [p.name for p in data.scannet_scenes(rooms, "train")] == ["scene0000_00", "scene0001_00"]
    assert [p.name for p in data.scannet_scenes(rooms, "val")] == ["scene0002_00"]
    truth = json.loads((rooms / "recon_gt" / "scene0002_00.json").read_text())
    perfect = {"scene0002_00": {"boxes": [b["box_min"] + b["box_max"] for b in truth], "labels": [b["class_name"] for b in truth], "scores": [1.0] * len(truth)}}
    (tmp_path / "pred.json").write_text(json.dumps(perfect))
    assert main(["detect", "eval", "--pred", str(tmp_path / "pred.json"), "--data", str(rooms)]) == 0
    result = json.loads((tmp_path / "pred.ap.json").read_text())
    assert result["mAP@0.25"] == result["mAP@0.5"] == 1.0 and set(result["classes"]) <= set(CLASSES)
    assert "| AP@0.5 |" in capsys.readouterr().out
    empty = {"scene0002_00": {"boxes": [], "labels": [], "scores": []}}
    (tmp_path / "empty.json").write_text(json.dumps(empty))
    assert main(["detect", "eval", "--pred", str(tmp_path / "empty.json"), "--data", str(rooms), "--out", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["mAP@0.25"] == 0.0


def test_generation_is_deterministic_and_rooms_do_not_depend_on_the_count(rooms, tmp_path):
    again = generate_rooms(tmp_path / "again", rooms=1, seed=5, frames=FRAMES, res=RES)
    for name in ("scene0000_00.sens", "scene0000_00_vh_clean_2.ply", "scene0000_00.aggregation.json", "scene0000_00.txt"):
        assert (scan(again) / name).read_bytes() == (scan(rooms) / name).read_bytes(), name


def test_3dgs_trains_on_a_generated_room_through_the_cli(rooms, tmp_path):
    assert main(["train", "splat", "--data", str(scan(rooms)), "--preset", "fast", "--max-steps", "30", "--quiet",
                 "--set", "eval_views=1", "--out", str(tmp_path / "run")]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["test_psnr"] > 10


def test_detect_reconstruct_trains_each_scene_once_and_resumes(rooms, tmp_path, capsys):
    out = tmp_path / "recon"
    args = ["detect", "reconstruct", "--data", str(rooms), "--out", str(out), "--split", "val", "--preset", "fast", "--guidance", "boundary",
            "--set", "max_steps=6", "--set", "eval_views=1", "--data-option", "max_frames=6"]
    assert main(args) == 0
    rows = json.loads((out / "reconstruct.json").read_text())
    assert [(r["scene"], r["status"]) for r in rows] == [("scene0002_00", "trained")]
    ply = out / "scene0002_00" / "export" / "point_cloud.ply"
    assert json.loads((out / "scene0002_00" / "config.json").read_text())["config"]["guidance"] == "boundary" and ply.is_file()
    assert main(args) == 0 and "1 skipped" in capsys.readouterr().out
    ply.unlink()  # as if killed after training: the checkpoint is there, the export is not
    assert main(args) == 0 and json.loads((out / "reconstruct.json").read_text())[0]["status"] == "resumed" and ply.is_file()


def test_detection_inputs_per_sampling_method(rooms, tmp_path):
    from detect.dataset import load_detection_scene, sample
    from detect.sampling import box_probability

    out = tmp_path / "recon"
    assert main(["detect", "reconstruct", "--data", str(rooms), "--out", str(out), "--split", "val", "--preset", "fast", "--guidance", "none",
                 "--set", "max_steps=4", "--set", "eval_views=1", "--data-option", "max_frames=8"]) == 0
    g = torch.Generator().manual_seed(0)
    inputs = {method: load_detection_scene(out / "scene0002_00", scan(rooms, 2), method) for method in ("box", "gt", "random", "fps")}
    box = inputs["box"]
    n = len(box.means)
    assert box.features.shape == (n, 11) and len(box.boxes) == len(box.labels) > 0
    inside = box_probability(box.means, box.boxes) > 0
    # the 8 frames see part of the room; frusta also hold what lies behind an object (there is no occlusion test),
    # so object Gaussians are likelier to be in one than the rest, not certain to
    assert set(box.p_object.unique().tolist()) <= {0.0, 1.0} and box.p_object[inside].mean() > 1.2 * box.p_object[~inside].mean()
    assert torch.equal(inputs["gt"].p_object, inside.float()) and inputs["random"].p_object is None
    for method, scene in inputs.items():
        chosen = sample(scene, method, n // 4, g)
        assert len(chosen) == n // 4 and len(torch.unique(chosen)) == n // 4, method
    boxed = sample(box, "box", n // 4, g)
    assert inside[boxed].float().mean() > inside.float().mean()  # box-focused sampling keeps more object Gaussians than there are
