"""NeRF method: both presets learn, resume is exact, checkpoints are checked."""
from dataclasses import replace

import pytest
import torch
from training import logged_values, run_training

import data
from recon.io import CheckpointError, load_checkpoint
from recon.methods.nerf import PRESETS, Nerf
from recon.metrics import psnr
from recon.trainer import latest_checkpoint, restore


def mean_test_psnr(method: Nerf) -> float:
    scene = method.scene
    method.eval()
    values = [float(psnr(method.render_view(scene.K[i], scene.c2w[i], scene.width, scene.height)["rgb"], scene.images[i])) for i in scene.split("test")]
    return sum(values) / len(values)


def fast_config(**changes):
    quiet = {"rays_per_batch": 512, "eval_every": 10**9, "checkpoint_every": 10**9, "log_every": 10**9}
    return replace(PRESETS["fast"], **{**quiet, **changes})


def train(method: Nerf, steps: int) -> None:
    method.train()
    for step in range(steps):
        method.train_step(step)


def test_fast_preset_reaches_psnr_on_held_out_views(tiny_blender):
    scene = data.load(tiny_blender)
    method = Nerf(fast_config(max_steps=300), scene)
    before = mean_test_psnr(method)
    train(method, 300)
    after = mean_test_psnr(method)
    assert after > 20.0, f"test PSNR {after:.2f} dB (from {before:.2f})"
    # The occupancy grid emptied most of the box: few samples are shaded per ray.
    assert method.grid.occupied.float().mean() < 0.3


def test_fast_preset_learns_forward_facing_scene_in_ndc(tiny_llff):
    scene = data.load(tiny_llff)
    assert scene.ndc
    method = Nerf(fast_config(max_steps=200), scene)
    before = mean_test_psnr(method)
    train(method, 200)
    after = mean_test_psnr(method)
    assert after > before + 6 and after > 18.0, f"test PSNR {before:.2f} -> {after:.2f} dB"


def test_classic_nerf_coarse_and_fine_networks_learn(tiny_blender):
    scene = data.load(tiny_blender)
    config = replace(PRESETS["default"], hidden_dim=32, num_layers=2, num_coarse=16, num_fine=16, rays_per_batch=256, lr=5e-3)
    method = Nerf(config, scene)
    assert method.coarse is not None
    rays, target, _ = method.sample_training_rays(method.config.rays_per_batch, method.generator)
    first = method.render_rays(rays, perturb=False)
    assert first["rgb"].shape == (256, 3) and first["rgb_coarse"].shape == (256, 3)
    losses = [method.train_step(step)["loss"] for step in range(60)]
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10


def run_trainer(scene, run_dir, max_steps, resume=False, crash_at=None):
    method = Nerf(fast_config(max_steps=max_steps, checkpoint_every=3, eval_every=3, eval_views=1), scene)
    return run_training(method, run_dir, resume=resume, crash_at=crash_at)


def test_resume_continues_exactly(tiny_blender, tmp_path):
    scene = data.load(tiny_blender)
    straight = run_trainer(scene, tmp_path / "straight", 6)
    with pytest.raises(KeyboardInterrupt):
        run_trainer(scene, tmp_path / "split", 6, crash_at=4)  # after the checkpoint at step 3
    resumed = run_trainer(scene, tmp_path / "split", 6, resume=True)
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    assert logged_values(tmp_path / "split") == logged_values(tmp_path / "straight")
    assert (tmp_path / "split" / "curves.png").stat().st_size > 0
    assert [p.name for p in (tmp_path / "split" / "checkpoints").iterdir()] == ["step_0000006.pt"]


def test_checkpoint_errors(tiny_blender, tmp_path):
    scene = data.load(tiny_blender)
    run_trainer(scene, tmp_path / "run", 3)
    path = latest_checkpoint(tmp_path / "run")
    assert load_checkpoint(path)["step"] == 3
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt.pt"):
        load_checkpoint(corrupt)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    other = Nerf(replace(PRESETS["default"], hidden_dim=32, num_layers=2), scene)
    with pytest.raises(CheckpointError, match="does not fit"):
        restore(other, path, training=False)
