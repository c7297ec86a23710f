"""GPF's point field (recon/fields/point_field.py): the visibility formula on synthetic cameras,
dropped points, kernel weights summing to 1, and a CPU forward/backward at tiny resolution."""
import torch

from recon.fields.point_field import FeatureNet, KernelDecoder, PointFeatures, relative_encoding, visibility_scores

K = torch.tensor([[16.0, 0, 8], [0, 16.0, 8], [0, 0, 1]])


def camera_at(x: float) -> torch.Tensor:
    c2w = torch.eye(4)
    c2w[0, 3] = x
    return c2w


def test_visibility_score_formula_and_off_image_points():
    depth = torch.full((1, 16, 16), 4.0)  # a wall at z = 4 in front of the camera
    points = torch.tensor([[0.0, 0.0, 4.0], [0.0, 0.0, 3.0], [0.0, 0.0, 6.0], [0.0, 0.0, 1.0], [50.0, 0.0, 4.0], [0.0, 0.0, -2.0]])
    score, uv, z = visibility_scores(points, depth, K[None], camera_at(0.0)[None])
    expected = torch.tensor([1.0, 1 - 1 / 3, 1 - 2 / 6, 0.0, 0.0, 0.0])  # on it; in front; behind; P_z < D/2 clamps at 0; off image; behind the camera
    torch.testing.assert_close(score[:, 0], expected)
    torch.testing.assert_close(uv[0, 0], torch.tensor([8.0, 8.0]))
    torch.testing.assert_close(z[:, 0], points[:, 2])


def test_points_no_source_sees_are_dropped_and_features_have_their_shapes():
    torch.manual_seed(0)
    sources = torch.stack([camera_at(-0.5), camera_at(0.5)])
    depths = torch.full((2, 16, 16), 4.0)
    net, features = FeatureNet(), PointFeatures(hidden=32, top_k=2)
    low, high = net(torch.rand(2, 3, 16, 16))
    assert low.shape == (2, 11, 16, 16) and high.shape == (2, 35, 4, 4)
    points = torch.tensor([[0.0, 0.0, 4.0], [0.0, 0.0, 1.9], [80.0, 0.0, 4.0]])  # seen; scores ≤ 0 in both views; seen by none
    f_low, f_high, valid = features(points, low, high, depths, K.expand(2, 3, 3), sources)
    assert f_low.shape == f_high.shape == (3, 32) and valid.tolist() == [True, False, False]


def test_kernel_weights_sum_to_one_over_valid_neighbours_and_a_forward_backward():
    torch.manual_seed(0)
    decoder = KernelDecoder(hidden=32)
    q, k = 5, 8
    valid = torch.ones(q, k, dtype=torch.bool)
    valid[1, 3:] = False
    valid[2] = False
    f, u = torch.randn(q, k, 32), torch.randn(q, k, 32)
    w = decoder.kernel_weights(f, u, valid, decoder.density_kernel)
    torch.testing.assert_close(w.sum(1), torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0]))
    assert (w[~valid] == 0).all()
    samples, neighbours = torch.rand(q, 3), torch.rand(q, k, 3)
    relative = relative_encoding(samples, neighbours, camera_at(0.0), 1.0)
    torch.testing.assert_close(relative[..., 0], (neighbours - samples[:, None]).norm(dim=-1))
    sigma, colour = decoder(relative, f, f, valid, torch.nn.functional.normalize(torch.randn(q, 3), dim=-1))
    assert sigma[2] == 0 and (sigma >= 0).all() and ((colour > 0) & (colour < 1)).all()
    (sigma.sum() + colour.sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in decoder.parameters())


# ---- the method: trained across generated scenes, rendering an unseen one ------------------------
import json  # noqa: E402
from dataclasses import replace  # noqa: E402

import pytest  # noqa: E402

from data.synth import generate_scenes  # noqa: E402
from recon.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def many_scenes(tmp_path_factory):
    """Three generated training scenes and one unseen, 24 views of 32×32 each."""
    return generate_scenes(tmp_path_factory.mktemp("gpf") / "root", scenes=4, unseen=1, views=24, res=32)


@pytest.fixture(scope="module")
def trained_run(many_scenes, tmp_path_factory):
    """150 steps across the three training scenes."""
    run = tmp_path_factory.mktemp("gpf_run") / "run"
    assert main(["--threads", "1", "train", "gpf", "--data", str(many_scenes), "--preset", "fast", "--set", "eval_views=2", "--set", "eval_every=150",
                 "--set", "checkpoint_every=75", "--max-steps", "150", "--out", str(run), "--quiet"]) == 0
    return run


def val_psnr(run) -> float:
    return [json.loads(line)["val_psnr"] for line in (run / "metrics.jsonl").read_text().splitlines() if "val_psnr" in line][-1]


def test_an_unseen_scene_rendered_with_no_per_scene_steps_and_resume(many_scenes, trained_run, capsys):
    assert main(["--threads", "1", "eval", str(trained_run), "--data", str(many_scenes / "scene_003"), "--max-views", "2"]) == 0
    results = json.loads((trained_run / "eval" / "scene_003" / "results.json").read_text())
    assert results["mean"]["psnr"] > 14 and abs(results["mean"]["psnr"] - val_psnr(trained_run)) < 3  # untrained: about 9 dB
    assert main(["eval", str(trained_run), "--data", str(many_scenes / "scene_003"), "--split", "nope"]) == 2
    capsys.readouterr()
    assert main(["--threads", "1", "train", "gpf", "--resume", "--out", str(trained_run), "--max-steps", "152", "--quiet"]) == 0


def test_finetuning_on_the_unseen_scene_improves_it(many_scenes, trained_run, tmp_path):
    run = tmp_path / "finetuned"
    assert main(["--threads", "1", "train", "gpf", "--finetune", str(trained_run), "--data", str(many_scenes / "scene_003"), "--max-steps", "100",
                 "--set", "eval_views=2", "--set", "eval_every=100", "--out", str(run), "--quiet"]) == 0
    assert json.loads((run / "config.json").read_text())["config"]["finetune_from"] == str(trained_run.resolve())
    assert val_psnr(run) > val_psnr(trained_run) + 1.0


def test_an_edit_moves_the_objects_pixels(many_scenes, trained_run, tmp_path):
    """Object 1 lifted by 1 unit: the render changes where it lands, not far from both places."""
    import imageio.v3 as iio

    import data
    from renderers.cameras import project

    out = tmp_path / "edit"
    assert main(["--threads", "1", "gpf", "edit", str(trained_run), "--data", str(many_scenes / "scene_003"), "--move", "1", "0", "0", "1.0",
                 "--frames", "2", "--out", str(out)]) == 0
    before, after = (iio.imread(out / name).astype(float) / 255 for name in ("before.png", "after.png"))
    scene = data.load(many_scenes / "scene_003")
    view = json.loads((out / "edit.json").read_text())["view"]
    box = next(o for o in scene.objects if o.instance_id == 1)
    lo, hi = torch.tensor(box.box_min), torch.tensor(box.box_max)
    corners = torch.stack([torch.stack([hi[i] if bits[i] else lo[i] for i in range(3)]) for bits in [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]])
    def footprint(points):
        uv, _ = project(points, scene.K[view], scene.c2w[view])
        region = torch.zeros(scene.height, scene.width, dtype=torch.bool)
        x0, y0 = uv.min(0).values.floor().long().clamp_min(0)
        x1, y1 = uv.max(0).values.ceil().long()
        region[y0:y1, x0:x1] = True
        return region
    new = footprint(corners + torch.tensor([0.0, 0.0, 1.0]))
    old = footprint(corners)
    change = torch.from_numpy(abs(after - before).mean(-1))
    assert change[new & ~old].mean() > 0.1  # the object appears where it was moved
    assert change[~(new | old)].mean() < 0.02  # elsewhere the scene stays


def test_resume_equals_an_uninterrupted_run(many_scenes, tmp_path):
    from recon.methods.gpf import GPF, PRESETS
    from training import one_thread, run_training

    config = replace(PRESETS["fast"], max_steps=4, checkpoint_every=2, eval_every=4, eval_views=1, batch_rays=64)
    info = {"method": "gpf", "preset": "fast", "data": str(many_scenes), "data_options": {}}

    def method() -> GPF:
        torch.manual_seed(0)
        return GPF.create(config, info, device="cpu", training=True)

    with one_thread():
        whole = run_training(method(), tmp_path / "a", info=info).state_dict()
        with pytest.raises(KeyboardInterrupt):
            run_training(method(), tmp_path / "b", crash_at=2, info=info)  # killed after step 2's checkpoint
        resumed = run_training(method(), tmp_path / "b", resume=True, info=info).state_dict()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
