"""ProNeRF: PAS invariants, projection into source views, learning in NDC and near/far scenes,
checkpoints, resume, NaN safety and the command line."""
import json
import math
from dataclasses import replace

import pytest
import torch
from training import logged_values, run_training

import data
from recon.cli import main
from recon.methods.pronerf import PRESETS, Pronerf
from recon.metrics import psnr
from recon.trainer import latest_checkpoint, restore
from renderers.cameras import pixel_rays, to_ndc
from renderers.projection import fetch_colors, ndc_to_world, plucker, project_to_views
from renderers.samplers import densify_samples, jitter_samples, sample_cells

QUIET = {"eval_every": 10**9, "checkpoint_every": 10**9, "log_every": 10**9}


def tiny_config(**changes):
    small = {"sampler_width": 32, "sampler_layers": 2, "hidden_dim": 32, "num_layers": 3, "pos_freqs": 4, "rays_per_batch": 64, "max_steps": 10, "stage1_steps": 6}
    return replace(PRESETS["fast"], **{**QUIET, **small, **changes})


def mean_test_psnr(method: Pronerf) -> float:
    scene = method.scene
    method.eval()
    values = [float(psnr(method.render_view(scene.K[i], scene.c2w[i], scene.width, scene.height)["rgb"].cpu(), scene.images[i])) for i in scene.split("test")]
    return sum(values) / len(values)


def surface_pixels(scene, view: int, count: int = 50):
    """Pixels (u, v) [P] of `view` that hit the scene, their world points [P, 3] (from the
    ground-truth depth) and their colours [P, 3]."""
    g = torch.Generator().manual_seed(view)
    hit = (scene.depths[view] > 0).nonzero()
    v, u = hit[torch.randperm(len(hit), generator=g)[:count]].unbind(-1)
    origins, directions = pixel_rays(scene.K[view], scene.c2w[view], u, v)
    points = origins + scene.depths[view, v, u][:, None] * directions  # t is the z-depth
    return u, v, points, scene.images[view, v, u]


# ---- generic pieces ---------------------------------------------------------------------------
def test_plucker_is_the_same_anywhere_on_a_ray_and_for_any_direction_length():
    g = torch.Generator().manual_seed(0)
    o, d = torch.randn(20, 3, generator=g, dtype=torch.float64), torch.randn(20, 3, generator=g, dtype=torch.float64)
    s = torch.randn(20, 1, generator=g, dtype=torch.float64)
    torch.testing.assert_close(plucker(o + s * d, 3.0 * d), plucker(o, d))
    code = plucker(o, d)
    torch.testing.assert_close(code[:, :3].norm(dim=-1), torch.ones(20, dtype=torch.float64))
    torch.testing.assert_close((code[:, :3] * code[:, 3:]).sum(-1), torch.zeros(20, dtype=torch.float64))  # d̂ ⟂ moment


def test_ndc_points_map_back_to_the_world_point_of_the_same_depth(tiny_llff):
    """A surface point's NDC coordinate along its NDC ray lifts back to the same world point."""
    scene = data.load(tiny_llff)
    view = int(scene.split("train")[0])
    u, v, points, _ = surface_pixels(scene, view)
    origins, directions = pixel_rays(scene.K[view], scene.c2w[view], u, v)
    K = scene.K[view].expand(len(u), 3, 3)
    o_ndc, d_ndc = to_ndc(origins, directions, K, scene.width, scene.height)
    t = (1 + 2 / points[:, 2] - o_ndc[:, 2]) / d_ndc[:, 2]  # NDC z of a world point is 1 + 2·near/z
    assert ((t > 0) & (t < 1)).all()
    lifted = ndc_to_world((o_ndc + t[:, None] * d_ndc)[:, None], K, scene.width, scene.height)[:, 0]
    torch.testing.assert_close(lifted, points, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fixture", ["tiny_blender", "tiny_llff"])
def test_projection_fetches_the_pixel_colour_of_a_surface_point(fixture, request):
    """Back-project pixels with their ground-truth depth; projecting into the same view and fetching
    bilinearly returns exactly the pixel's colour."""
    scene = data.load(request.getfixturevalue(fixture))
    for view in scene.split("train")[:3].tolist():
        u, v, points, colors = surface_pixels(scene, view)
        views = torch.full((len(u), 1), view)
        uv, z = project_to_views(points[:, None], scene.K[views], scene.c2w[views])  # [P, 1, 1, 2]
        torch.testing.assert_close(uv[:, 0, 0], torch.stack([u, v], -1) + 0.5, atol=2e-3, rtol=0)
        fetched, valid = fetch_colors(scene.images, views, uv, z)
        assert valid.all()
        torch.testing.assert_close(fetched[:, 0, 0], colors, atol=2e-3, rtol=0)


def test_bilinear_fetch_interpolates_and_fills_invalid_views_with_the_valid_mean():
    images = torch.arange(2 * 3 * 4 * 3, dtype=torch.float64).view(2, 3, 4, 3)  # [T=2, H=3, W=4, 3]
    views = torch.tensor([[0, 1, 1]])  # [R=1, V=3]
    uv = torch.tensor([[[[1.5, 0.5], [2.0, 2.5]], [[2.5, 1.5], [9.0, 0.5]], [[0.5, 0.5], [1.0, 1.0]]]], dtype=torch.float64)  # [1, 3, S=2, 2]
    z = torch.tensor([[[1.0, 1.0], [1.0, 1.0], [-1.0, 1.0]]], dtype=torch.float64)
    colors, valid = fetch_colors(images, views, uv, z)
    assert valid.tolist() == [[[True, True], [True, False], [False, True]]]
    torch.testing.assert_close(colors[0, 0, 0], images[0, 0, 1])  # a pixel centre: that pixel exactly
    torch.testing.assert_close(colors[0, 0, 1], 0.5 * (images[0, 2, 1] + images[0, 2, 2]))  # halfway between two
    torch.testing.assert_close(colors[0, 1, 0], images[1, 1, 2])
    torch.testing.assert_close(colors[0, 2, 1], 0.25 * (images[1, 0, 0] + images[1, 0, 1] + images[1, 1, 0] + images[1, 1, 1]))
    torch.testing.assert_close(colors[0, 2, 0], 0.5 * (colors[0, 0, 0] + colors[0, 1, 0]))  # behind: mean of the valid views
    torch.testing.assert_close(colors[0, 1, 1], 0.5 * (colors[0, 0, 1] + colors[0, 2, 1]))  # outside: likewise
    _, none_valid = fetch_colors(images, views, uv, -z.abs())
    assert not none_valid.any() and fetch_colors(images, views, uv, -z.abs())[0].abs().max() == 0


def test_cells_densify_and_jitter_keep_samples_ordered_and_in_range():
    g = torch.Generator().manual_seed(0)
    near, far = torch.full((50,), 2.0), torch.full((50,), 6.0)
    t = torch.sort(2 + 4 * torch.rand(50, 8, generator=g), dim=-1).values
    lower, upper = sample_cells(t, near, far)
    assert (lower <= t).all() and (t <= upper).all() and torch.equal(lower[:, 1:], upper[:, :-1])
    assert torch.equal(lower[:, 0], 0.5 * (near + t[:, 0])) and torch.equal(upper[:, -1], 0.5 * (t[:, -1] + far))
    dense = densify_samples(t, near, far, copies=4, generator=g)
    assert dense.shape == (50, 32) and (dense.diff(dim=-1) >= 0).all()
    assert (dense >= 2).all() and (dense <= 6).all()
    assert all(torch.isin(t[r], dense[r]).all() for r in range(50))  # every proposed sample is kept
    jittered = jitter_samples(dense, far, g)
    assert (jittered >= dense).all() and (jittered.diff(dim=-1) >= 0).all() and (jittered <= 6).all()
    assert (jittered[:, :-1] <= dense[:, 1:]).all()  # never past the next sample


# ---- the method -------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["tiny_blender", "tiny_llff"])
def test_pas_proposals_obey_their_invariants(fixture, request):
    scene = data.load(request.getfixturevalue(fixture))
    method = Pronerf(tiny_config(num_samples=8), scene)
    with torch.no_grad():  # large random outputs, so sorting, cells and clamping all matter
        for net in (method.sampler.coarse_net, method.sampler.fine_net):
            net.out.weight.normal_(0, 3.0)
        method.sampler.coarse_net.out.bias[16:24] = 4.0  # relu(m) ≈ 4: unclamped α would exceed 1
    rays, _, cam = method.sample_training_rays(method.config.rays_per_batch, method.generator)
    views = method.random_source_views(cam)
    _, h, w, _ = scene.images.shape
    p = method.propose(rays, method.train_K[cam], views, w, h)
    near, far = rays.near[:, None], rays.far[:, None]
    assert p.coarse.shape == p.depths.shape == (64, 8) and p.offsets.shape == (64, 8, 3)
    assert (p.coarse.diff(dim=-1) >= 0).all() and (p.coarse >= near).all() and (p.coarse <= far).all()
    assert p.coarse.std(dim=0).mean() > 0.01 * (far - near).mean()  # depths do depend on the ray
    lower, upper = sample_cells(p.coarse, rays.near, rays.far)
    assert (p.depths >= lower).all() and (p.depths <= upper).all() and (p.depths.diff(dim=-1) >= 0).all()
    assert p.offsets.abs().max() <= method.offset_scale and p.offsets.abs().max() > 0
    assert method.offset_scale == (0.01 if scene.ndc else 0.04)
    for mode in ("test", "explore", "joint"):
        out = method.render_rays(rays, method.train_K[cam], views, w, h, mode)
        assert out["rgb"].shape == (64, 3) and out["depth"].shape == out["opacity"].shape == (64, 1)
        assert (out["alpha"] >= 0).all() and (out["alpha"] <= 1).all() and (out["opacity"] <= 1 + 1e-6).all()
        assert torch.isfinite(out["rgb"]).all()
    assert (out["alpha"] == 1).any()  # the clamp was needed
    assert out["samples_per_ray"].eq(8).all()


def test_source_views_exclude_the_target_and_are_ordered_by_distance(tiny_blender):
    scene = data.load(tiny_blender)
    method = Pronerf(tiny_config(source_pool_world=0), scene)
    cameras = torch.arange(len(method.train_c2w), device=method.device).repeat(20)
    views = method.random_source_views(cameras)
    centres = method.train_c2w[:, :3, 3]
    assert views.shape == (len(cameras), 4)
    assert not (views == cameras[:, None]).any()
    assert all(len(set(row)) == 4 for row in views.tolist())
    distance = (centres[views] - centres[cameras][:, None]).norm(dim=-1)
    assert (distance.diff(dim=-1) >= 0).all()
    assert len({tuple(row) for row in views[cameras == 0].tolist()}) > 1  # random draws
    pooled = Pronerf(tiny_config(source_pool_world=6), scene)
    views = pooled.random_source_views(cameras)
    others = (centres[None] - centres[cameras][:, None]).norm(dim=-1).argsort(dim=-1)[:, 1:7]  # [R, 6] nearest others
    assert all(set(row) <= set(pool) for row, pool in zip(views.tolist(), others.tolist()))
    assert len(set(views.flatten().tolist())) > 6  # each camera has its own pool
    nearest = method.nearest_source_views(method.train_c2w[3])
    assert nearest[0] == 3 and nearest.tolist() == (centres - centres[3]).norm(dim=-1).argsort()[:4].tolist()


def test_learns_a_forward_facing_scene_in_ndc(tiny_llff):
    scene = data.load(tiny_llff)
    assert scene.ndc
    config = replace(PRESETS["fast"], **QUIET, max_steps=300, stage1_steps=200, rays_per_batch=256)
    method = Pronerf(config, scene)
    before = mean_test_psnr(method)
    method.train()
    stats = [method.train_step(step) for step in range(300)]
    after = mean_test_psnr(method)
    assert after > 19.0 and after > before + 5, f"test PSNR {before:.2f} -> {after:.2f} dB"
    assert {s["samples_per_ray"] for s in stats[200:]} == {8.0}  # stage 2 shades N samples
    assert max(s["samples_per_ray"] for s in stats[:200:2]) == 8.0 and max(s["samples_per_ray"] for s in stats[1:200:2]) > 8.0


@pytest.mark.parametrize("field", ["mlp", "hashgrid"])
def test_learns_a_360_scene_with_near_far_rays(tiny_blender, field):
    scene = data.load(tiny_blender)
    assert not scene.ndc
    config = replace(PRESETS["fast"], **QUIET, max_steps=240, stage1_steps=160, rays_per_batch=256, field=field)
    method = Pronerf(config, scene)
    before = mean_test_psnr(method)
    method.train()
    for step in range(240):
        method.train_step(step)
    after = mean_test_psnr(method)
    floor = {"mlp": 18.5, "hashgrid": 16.0}[field]  # the hash grid starts as a uniform fog (8 dB) on this tiny scene
    assert after > floor and after > before + 6, f"test PSNR {before:.2f} -> {after:.2f} dB"


def test_learning_rate_schedule_follows_the_card(tiny_blender):
    small = {"sampler_width": 16, "sampler_layers": 1, "hidden_dim": 16, "num_layers": 2}
    method = Pronerf(replace(PRESETS["default"], **small), data.load(tiny_blender))
    assert method.learning_rate(0) == pytest.approx(5e-4)
    assert method.learning_rate(250_000) == pytest.approx(5e-4 * 0.1**0.5)  # 5e-4·0.1^((step/2)/250k)
    assert method.learning_rate(500_000) == pytest.approx(3e-4)
    assert method.learning_rate(750_000) == pytest.approx(3e-5)
    assert [method.stage(s) for s in (0, 1, 2, 499_999, 500_000)] == ["exploit", "explore", "exploit", "explore", "joint"]


def test_a_non_finite_loss_skips_the_update(tiny_blender):
    method = Pronerf(tiny_config(), data.load(tiny_blender))
    with torch.no_grad():
        method.field.density_head.bias.fill_(math.nan)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    stats = method.train_step(0)
    assert stats["skipped"] == 1.0 and not math.isfinite(stats["loss"])
    for name, value in method.state_dict().items():
        assert torch.equal(value, before[name]) or torch.isnan(value).all(), name


def test_configuration_errors_name_the_setting(tiny_blender):
    scene = data.load(tiny_blender)
    with pytest.raises(ValueError, match="num_source_views"):
        Pronerf(tiny_config(num_source_views=len(scene.split("train"))), scene)
    with pytest.raises(ValueError, match="num_samples"):
        Pronerf(tiny_config(num_samples=1), scene)
    with pytest.raises(ValueError, match="stage1_steps"):
        Pronerf(tiny_config(stage1_steps=11), scene)


# ---- checkpoints, resume, CLI -----------------------------------------------------------------
def run_trainer(scene, run_dir, max_steps, resume=False, crash_at=None):
    method = Pronerf(tiny_config(max_steps=max_steps, stage1_steps=4, checkpoint_every=3, eval_every=3, eval_views=1, log_every=1), scene)
    return run_training(method, run_dir, resume=resume, crash_at=crash_at)


@pytest.mark.parametrize("fixture", ["tiny_blender", "tiny_llff"])
def test_resume_across_the_stages_continues_exactly(fixture, request, tmp_path):
    scene = data.load(request.getfixturevalue(fixture))
    straight = run_trainer(scene, tmp_path / "straight", 8)
    with pytest.raises(KeyboardInterrupt):
        run_trainer(scene, tmp_path / "split", 8, crash_at=5)  # after the checkpoint at step 3 (stage 1)
    resumed = run_trainer(scene, tmp_path / "split", 8, resume=True)  # replays 3..8, through stage 2
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert logged_values(tmp_path / "split") == logged_values(tmp_path / "straight")


def test_checkpoint_round_trip_gives_identical_renders(tiny_llff, tmp_path):
    scene = data.load(tiny_llff)
    trained = run_trainer(scene, tmp_path / "run", 6)
    fresh = Pronerf(tiny_config(max_steps=6, stage1_steps=4), scene)
    view = int(scene.split("test")[0])
    args = (scene.K[view], scene.c2w[view], scene.width, scene.height)
    trained.eval()
    assert not torch.equal(fresh.render_view(*args)["rgb"], trained.render_view(*args)["rgb"])
    restore(fresh, latest_checkpoint(tmp_path / "run"), training=True)
    fresh.eval()
    for key, value in trained.render_view(*args).items():
        assert torch.equal(fresh.render_view(*args)[key], value), key
    assert fresh.generator.get_state().equal(trained.generator.get_state())


def test_cli_trains_with_samples_and_eval_reports_fps(tiny_llff, tmp_path, capsys):
    run = tmp_path / "run"
    settings = ["--set", "rays_per_batch=64", "--set", "stage1_steps=2", "--set", "hidden_dim=32", "--set", "sampler_width=32"]
    assert main(["train", "pronerf", "--data", str(tiny_llff), "--preset", "fast", "--samples", "12", "--max-steps", "4", "--out", str(run), "--quiet", *settings]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == "pronerf" and config["config"]["num_samples"] == 12
    assert main(["eval", str(run)]) == 0
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["mean"]["fps"] == pytest.approx(1 / results["mean"]["render_seconds"])
    assert "FPS" in capsys.readouterr().out
    assert main(["train", "nerf", "--data", str(tiny_llff), "--samples", "8", "--out", str(tmp_path / "nerf")]) == 2
    assert "--samples" in capsys.readouterr().err
