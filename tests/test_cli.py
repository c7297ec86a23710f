"""The command line end to end (synth → train → eval → render) and its one-line errors."""
import json
import shutil
import subprocess
import sys

import imageio.v3 as iio
import pytest

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
    _, run = trained_run
    assert run_cli("eval", run) == 0
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["num_views"] == 4 and len(results["views"]) == 4
    assert results["mean"]["psnr"] > 15.0 and 0 < results["mean"]["ssim"] <= 1
    assert results["mean"]["lpips"] is None  # no local LPIPS weights
    table = (run / "eval" / "results.md").read_text()
    assert "| **mean** |" in table and "n/a" in table
    image = iio.imread(run / "eval" / f"{results['views'][0]['view']}.png")
    assert image.shape == (24, 24, 3)
    assert "PSNR" in capsys.readouterr().out


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


def error_of(capsys, *args) -> str:
    assert run_cli(*args) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_bad_input_gives_one_clear_line(trained_run, tmp_path, capsys):
    scene, run = trained_run
    assert str(tmp_path / "nowhere") in error_of(capsys, "train", "nerf", "--data", tmp_path / "nowhere", "--quiet")
    assert "no_such_field" in error_of(capsys, "train", "nerf", "--data", scene, "--set", "no_such_field=1")
    assert "expected a int" in error_of(capsys, "train", "nerf", "--data", scene, "--set", "max_steps=ten")
    assert "turbo" in error_of(capsys, "train", "nerf", "--data", scene, "--preset", "turbo")
    assert "unknown method" in error_of(capsys, "train", "nosuch", "--data", scene)
    assert "config.json" in error_of(capsys, "eval", tmp_path)
    assert "--device warp9" in error_of(capsys, "--device", "warp9", "eval", run)
    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "checkpoints" / "step_0000120.pt").write_bytes(b"not a checkpoint")
    assert "step_0000120.pt" in error_of(capsys, "eval", broken)


def test_console_script_is_installed():
    recon = shutil.which("recon", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert recon is not None
    out = subprocess.run([recon, "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("data", "train", "eval", "render"):
        assert command in out
