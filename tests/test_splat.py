"""3DGS per scene: learns a held-out view, densifies, resumes exactly, exports/loads the standard .ply."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from training import run_training

import data
from data.ply import read_vertices
from recon.export import read_ply, write_ply
from recon.methods.splat import PRESETS, Splat
from recon.metrics import psnr


def small_config(**changes):
    quiet = {"eval_every": 10**9, "checkpoint_every": 10**9, "log_every": 10**9, "refine_start": 50, "refine_every": 50, "sh_degree_interval": 100}
    return replace(PRESETS["fast"], **{**quiet, **changes})


def test_fast_preset_learns_and_densifies(tiny_blender):
    scene = data.load(tiny_blender)
    method = Splat(small_config(max_steps=300, refine_stop=250), scene)
    start = method.num_gaussians
    test = scene.split("test")
    before = float(psnr(method.render_view(scene.K[test[0]], scene.c2w[test[0]], scene.width, scene.height)["rgb"], scene.images[test[0]]))
    for step in range(300):
        stats = method.train_step(step)
    assert np.isfinite(stats["loss"])
    assert method.num_gaussians != start  # DefaultStrategy grew/pruned through our rasterizer's info
    values = [float(psnr(method.render_view(scene.K[i], scene.c2w[i], scene.width, scene.height)["rgb"], scene.images[i])) for i in test]
    assert np.mean(values) > max(before + 5, 20.0), (before, values)


def test_ply_writes_higher_sh_bands_channel_major(tmp_path):
    params = {"means": torch.zeros(2, 3), "scales": torch.zeros(2, 3), "quats": torch.ones(2, 4), "opacities": torch.zeros(2),
              "sh0": torch.zeros(2, 1, 3), "shN": torch.arange(2 * 15 * 3, dtype=torch.float32).view(2, 15, 3)}  # [N, K−1, 3]
    write_ply(tmp_path / "sh.ply", params)
    table = read_vertices(tmp_path / "sh.ply")
    for k in range(15):  # graphdeco: f_rest_i = shN[:, i % 15, i // 15], red's 15 coefficients first
        for channel in range(3):
            np.testing.assert_array_equal(table[f"f_rest_{channel * 15 + k}"], params["shN"][:, k, channel].numpy())


def test_ply_round_trip_and_render_equality(tiny_blender, tmp_path):
    scene = data.load(tiny_blender)
    method = Splat(small_config(max_steps=20), scene)
    for step in range(20):
        method.train_step(step)
    path = tmp_path / "point_cloud.ply"
    method.export_ply(path)
    header = path.read_bytes()[:2000].split(b"end_header")[0].decode()
    for prop in ("x", "nx", "f_dc_0", "f_rest_44", "opacity", "scale_2", "rot_3"):
        assert f"property float {prop}\n" in header
    loaded = read_ply(path)
    for name, value in method.params.items():
        torch.testing.assert_close(loaded[name], value.detach(), rtol=0, atol=0)
    other = Splat.from_ply(path, scene)
    i = scene.split("test")[0]
    torch.testing.assert_close(other.render_view(scene.K[i], scene.c2w[i], 32, 32)["rgb"], method.render_view(scene.K[i], scene.c2w[i], 32, 32)["rgb"])


def test_ply_from_another_trainer_with_lower_sh_degree(tmp_path, tiny_blender):
    # An ASCII-free, degree-1 file with an extra property, as other trainers write.
    n = 5
    fields = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(9)] + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3", "extra"]
    table = np.arange(n * len(fields), dtype="<f4").reshape(n, len(fields))
    header = "ply\nformat binary_little_endian 1.0\nelement vertex 5\n" + "".join(f"property float {f}\n" for f in fields) + "end_header\n"
    path = tmp_path / "other.ply"
    path.write_bytes(header.encode() + table.tobytes())
    params = read_ply(path)
    assert params["shN"].shape == (5, 3, 3)
    # f_rest is channel-major: red's 3 coefficients first.
    torch.testing.assert_close(params["shN"][0, :, 0], torch.tensor(table[0, 6:9]))
    method = Splat.from_ply(path, data.load(tiny_blender))
    assert method.config.sh_degree == 1 and method.num_gaussians == 5


@pytest.mark.parametrize("content, message", [
    (b"hello", "not a PLY"),
    (b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n1\n", "binary_little_endian"),
    (b"ply\nformat binary_little_endian 1.0\nelement vertex 1\nproperty float x\nend_header\n\0\0\0\0", "missing properties"),
])
def test_bad_ply_files_get_one_clear_error(tmp_path, content, message):
    path = tmp_path / "bad.ply"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_ply(path)


def test_truncated_ply(tmp_path):
    params = {"means": torch.zeros(4, 3), "scales": torch.zeros(4, 3), "quats": torch.ones(4, 4), "opacities": torch.zeros(4), "sh0": torch.zeros(4, 1, 3), "shN": torch.zeros(4, 0, 3)}
    path = tmp_path / "t.ply"
    write_ply(path, params)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="truncated"):
        read_ply(path)


def test_resume_is_exact_across_densification(tiny_blender, tmp_path):
    scene = data.load(tiny_blender)

    def run(run_dir, crash_at=None, resume=False):
        method = Splat(small_config(max_steps=120, checkpoint_every=60, eval_every=60, eval_views=1), scene)
        return run_training(method, run_dir, resume=resume, crash_at=crash_at)

    straight = run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", crash_at=70)  # densified at 50, checkpoint at 60
    resumed = run(tmp_path / "b", resume=True)
    assert resumed.num_gaussians == straight.num_gaussians
    for name in straight.params:
        torch.testing.assert_close(resumed.params[name], straight.params[name], rtol=0, atol=0)
    assert json.loads((tmp_path / "b" / "config.json").read_text())["method"] == "splat"
