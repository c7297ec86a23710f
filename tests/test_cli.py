"""The command line end to end (synth → train → eval → render); its errors are in test_bad_inputs.py."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import pytest

import recon.cli as recon_cli
from recon.cli import main


def run_cli(*args: str) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    scene, run = root / "scene", root / "run"
    assert run_cli("data", "synth", "--format", "blender", "--out", scene, "--views", 12, "--res", 24, "--seed", 1) == 0
    assert run_cli("train", "nerf", "--data", scene, "--preset", "fast", "--max-steps", 120, "--set", "rays_per_batch=512", "--set", "eval_every=60", "--out", run, "--quiet") == 0
    return scene, run


def test_train_writes_a_complete_run_directory(trained_run):
    _, run = trained_run
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == "nerf" and config["preset"] == "fast"
    assert config["config"]["max_steps"] == 120 and config["config"]["rays_per_batch"] == 512
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r["val_psnr"] for r in records if "val_psnr" in r]
    assert len(val) == 2 and val[-1] > 15.0
    assert (run / "checkpoints" / "step_0000120.pt").is_file()
    assert iio.imread(run / "curves.png").ndim == 3


def test_eval_writes_per_view_and_mean_metrics(trained_run, capsys):
    scene, run = trained_run
    assert run_cli("eval", run) == 0
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["num_views"] == 4 and len(results["views"]) == 4
    assert results["mean"]["psnr"] > 15.0 and 0 < results["mean"]["ssim"] <= 1
    assert results["mean"]["lpips"] is None  # no local LPIPS weights
    table = (run / "eval" / "results.md").read_text()
    assert "| **mean** |" in table and "n/a" in table
    name = results["views"][0]["view"]
    image = iio.imread(run / "eval" / f"{name}.png")
    assert image.shape == (24, 24, 3)
    assert "PSNR" in capsys.readouterr().out
    # ground truth | render | error map, side by side
    compare = iio.imread(run / "eval" / "compare" / f"{name}.png").astype(int)
    assert compare.shape == (24, 72, 3)
    rgba = iio.imread(scene / "test" / f"{name}.png") / 255.0
    composited = rgba[..., :3] * rgba[..., 3:] + (1 - rgba[..., 3:])  # on white
    assert abs(compare[:, :24] - composited * 255).max() <= 1
    assert (compare[:, 24:48] == image).all()
    error = abs(compare[:, :24] - compare[:, 24:48]).mean(-1)
    dark = compare[:, 48:].sum(-1)  # inferno: black at zero error, brighter with more
    assert dark[error < 1].mean() < dark[error > 10].mean()


def test_render_writes_frames_and_video(trained_run):
    _, run = trained_run
    assert run_cli("render", run, "--path", "orbit", "--frames", 6) == 0
    frames = sorted((run / "render" / "orbit").glob("frame_*.png"))
    assert len(frames) == 6
    assert not (iio.imread(frames[0]) == iio.imread(frames[3])).all()  # the camera moved
    video = iio.imread(run / "render" / "orbit.mp4")
    assert video.shape[0] == 6 and video.shape[1:3] == (24, 24)


def test_resume_extends_a_run(trained_run, tmp_path):
    _, run = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert run_cli("train", "nerf", "--resume", "--out", copy, "--max-steps", 130, "--quiet") == 0
    assert [p.name for p in (copy / "checkpoints").iterdir()] == ["step_0000130.pt"]
    assert json.loads((copy / "config.json").read_text())["config"]["rays_per_batch"] == 512


def test_console_script_runs_the_code_under_test(tmp_path):
    """The installed `recon` script imports this checkout (an editable install), not some other copy."""
    recon = shutil.which("recon", path=str(Path(sys.executable).parent))
    assert recon is not None
    interpreter = Path(recon).read_text().splitlines()[0].removeprefix("#!")
    imported = subprocess.run([interpreter, "-c", "import recon.cli; print(recon.cli.__file__)"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert Path(imported.strip()) == Path(recon_cli.__file__)
    out = subprocess.run([recon, "data", "synth", "--views", "2", "--res", "8", "--out", "s"], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert "wrote blender scene" in out and (tmp_path / "s" / "transforms_train.json").is_file()
