"""Training the detector (detect/training.py) through the shared trainer: a tiny detector overfits
two rooms, a resumed run equals an uninterrupted one, each scene comes once per epoch; and the CLI
end to end on three tiny rooms: reconstruct → train → eval, and the viewer's boxes."""
import argparse
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

pytest.importorskip("spconv")
from data.formats.scannet import CLASSES, read_annotation  # noqa: E402
from data.rooms import generate_rooms  # noqa: E402
from detect.dataset import DetectionScene  # noqa: E402
from detect.training import PRESETS, DetectionData, DetectionTraining, average_precision  # noqa: E402
from recon.cli import detection_viewer, main  # noqa: E402
from recon.distributed import World  # noqa: E402
from training import one_thread, run_training, torchrun  # noqa: E402
from test_viewer import free_port  # noqa: E402


def mesh_scene(root, name: str) -> DetectionScene:
    """A generated room's mesh vertices standing in for Gaussians (small, round, opaque, the vertex colour)."""
    annotation = read_annotation(root / "scans" / name, name)
    points = torch.from_numpy(annotation.vertices).float()
    n = len(points)
    features = torch.cat([torch.full((n, 3), 0.02), torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4), torch.from_numpy(annotation.colors).float(), torch.ones(n, 1)], 1)
    boxes = torch.tensor([[*o.box_min, *o.box_max] for o in annotation.objects]).float()
    return DetectionScene(name, points, features, boxes, torch.tensor([CLASSES.index(o.class_name) for o in annotation.objects]), None)


@pytest.fixture(scope="module")
def two_rooms(tmp_path_factory):
    root = generate_rooms(tmp_path_factory.mktemp("rooms") / "root", rooms=2, seed=0, frames=2, res=16)
    return [mesh_scene(root, f"scene{k:04d}_00") for k in range(2)]


def test_a_tiny_detector_overfits_two_rooms(two_rooms):
    """Every class, thin pictures and windows included (detect.head's min_size), at IoU 0.25."""
    config = replace(PRESETS["cpu"], sampling="random", augment=False, max_steps=100)
    method = DetectionTraining(config, DetectionData(two_rooms, two_rooms), device="cpu")
    with one_thread():  # spconv's threaded sums vary from run to run; one thread makes the result repeatable
        for step in range(config.max_steps):
            method.train()
            method.train_step(step)
        result = average_precision(two_rooms, method.predict(two_rooms))
    assert result["mAP@0.25"] >= 0.9, result["AP@0.25"]
    assert {"picture", "window", "door"} <= set(result["classes"])


def test_resume_equals_an_uninterrupted_run_and_epochs_cover_every_scene(two_rooms, tmp_path):
    scenes = two_rooms + [replace(two_rooms[0], name="copy")]
    config = replace(PRESETS["cpu"], sampling="random", num_points=20_000, voxel_size=0.08, max_steps=4, checkpoint_every=2, eval_every=2, log_every=1)
    method = DetectionTraining(config, DetectionData(scenes, []), device="cpu")
    batches = [method.batch_scenes(step) for step in range(6)]
    for epoch in range(4):  # 3 scenes, 2 per step: every scene exactly once per epoch
        assert sorted(sum(batches, [])[3 * epoch : 3 * epoch + 3]) == [0, 1, 2]
    for step in range(3):  # 2 ranks of 2 scenes share out the 4 scenes of one process with batch 4
        shares = [method.batch_scenes(step, World(rank, 2)) for rank in (0, 1)]
        assert shares[0] + shares[1] == batches[2 * step] + batches[2 * step + 1]

    def method() -> DetectionTraining:
        torch.manual_seed(0)
        return DetectionTraining(config, DetectionData(scenes, []), device="cpu")

    info = {"method": "detect", "preset": "cpu", "data": "", "data_options": {}}
    with one_thread():  # spconv's multi-threaded CPU kernels sum in varying order (detect/training.py)
        whole = run_training(method(), tmp_path / "a", info=info).state_dict()
        with pytest.raises(KeyboardInterrupt):
            run_training(method(), tmp_path / "b", crash_at=2, info=info)  # killed after step 2's checkpoint
        resumed = run_training(method(), tmp_path / "b", resume=True, info=info).state_dict()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_cli_reconstruct_train_eval_and_view(tmp_path, capsys):
    root = generate_rooms(tmp_path / "rooms", rooms=2, val=1, seed=5, frames=12, res=48)
    recon_root, run = tmp_path / "recon", tmp_path / "run"
    assert main(["--threads", "2", "detect", "reconstruct", "--data", str(root), "--out", str(recon_root), "--preset", "fast",
                 "--set", "max_steps=20", "--set", "eval_views=1", "--data-option", "max_frames=8"]) == 0
    train = ["--threads", "2", "detect", "train", "--recon", str(recon_root), "--data", str(root), "--sampling", "box", "--preset", "cpu",
             "--set", "voxel_size=0.08", "--set", "eval_every=2", "--max-steps", "4", "--out", str(run), "--quiet"]
    assert main(train) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_mAP@0.25" in r] == [2, 4] and (run / "curves.png").is_file()
    resumed = torchrun("detect", "train", "--resume", "--out", str(run), "--max-steps", "6", "--quiet")  # on 2 processes
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((run / "config.json").read_text())["config"]["max_steps"] == 6
    capsys.readouterr()

    assert main(["detect", "eval", str(run)]) == 0
    assert "| AP@0.25 |" in capsys.readouterr().out
    predictions = json.loads((run / "eval" / "predictions.json").read_text())
    results = json.loads((run / "eval" / "results.json").read_text())
    assert list(predictions) == ["scene0002_00"] and results["scenes"] == 1 and 0 <= results["mAP@0.25"] <= 1
    assert main(["eval", str(run)]) == 2 and "recon detect eval RUN" in capsys.readouterr().err

    args = argparse.Namespace(run_dir=run, scene=None, device="cpu", host="127.0.0.1", port=free_port())
    viewer, shown = detection_viewer(args)
    try:
        truth = read_annotation(root / "scans" / "scene0002_00", "scene0002_00").objects
        boxes, labels, _, _, toggle, handles = viewer._box_sets["Ground truth"]
        assert len(boxes) == len(truth) and len(handles) == 1 + len(truth) and shown.startswith("scene0002_00")
        toggle.value = False
        viewer._draw_boxes()
        assert not handles
        scores = viewer._box_sets["Predicted"][3]
        threshold = float(np.sort(scores)[-5]) if len(scores) >= 5 else 0.0  # the five best (drawing hundreds of labels is slow)
        viewer.min_score.value = threshold
        viewer._draw_boxes()
        assert len(viewer._box_sets["Predicted"][5]) == (1 + int((scores >= threshold).sum()) if len(scores) else 0)
        shown = viewer._box_sets["Predicted"][0]
        assert shown.shape[1] == 6 and np.isfinite(shown).all()  # (the count may differ from eval's by a few: spconv's threads sum in varying order)
    finally:
        viewer.close()
