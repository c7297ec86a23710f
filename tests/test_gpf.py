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

import pytest  # noqa: E402

from data.synth import generate_scenes  # noqa: E402
from recon.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def many_scenes(tmp_path_factory):
    """Three generated training scenes and one unseen, 24 views of 32×32 each."""
    return generate_scenes(tmp_path_factory.mktemp("gpf") / "root", scenes=4, unseen=1, views=24, res=32)


def test_train_across_scenes_resume_and_render_an_unseen_scene(many_scenes, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["--threads", "1", "train", "gpf", "--data", str(many_scenes), "--preset", "fast", "--set", "eval_views=2", "--set", "eval_every=150",
            "--set", "checkpoint_every=75", "--max-steps", "150", "--out", str(run), "--quiet"]
    assert main(args) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [r["val_psnr"] for r in records if "val_psnr" in r][-1]
    assert main(["--threads", "1", "eval", str(run), "--data", str(many_scenes / "scene_003"), "--max-views", "2"]) == 0
    results = json.loads((run / "eval" / "scene_003" / "results.json").read_text())
    assert results["mean"]["psnr"] > 14 and abs(results["mean"]["psnr"] - trained) < 3  # the unseen scene, no per-scene steps
    assert main(["eval", str(run), "--data", str(many_scenes / "scene_003"), "--max-views", "1", "--split", "nope"]) == 2
    capsys.readouterr()
    assert main(["--threads", "1", "train", "gpf", "--resume", "--out", str(run), "--max-steps", "152", "--quiet"]) == 0
