"""`recon batch train` on the real Ray runtime (a local one of 2 CPUs) and on the process pool that
replaces it without Ray: one job per scene, a broken scene failing alone, a rerun skipping the
finished scenes, an interrupted run resuming from its checkpoint, and the summary tables."""
from __future__ import annotations

import json
import sys

import pytest

from data.synth import generate
from recon.batch import RAY_HINT
from recon.cli import main
from training import one_thread

STEPS = ["--preset", "fast", "--max-steps", "30", "--set", "eval_views=1"]
ENGINE = ["--workers", "2", "--cpus-per-job", "1"]  # 2 CPUs, one torch thread per job


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """ROOT/{a,b,c}: tiny Blender scenes, c's transforms_train.json corrupted."""
    root = tmp_path_factory.mktemp("batch")
    for seed, name in enumerate("abc"):
        generate(root / name, seed=seed, views=8, res=32)
    (root / "c" / "transforms_train.json").write_text('{"camera_angle_x": ')
    (root / "notes").mkdir()  # not a dataset: not a scene
    return root


def summary(out) -> dict[str, dict]:
    return {row["scene"]: row for row in json.loads((out / "summary.json").read_text())["rows"]}


def test_ray_batch_fails_one_scene_alone_resumes_and_skips(scenes, tmp_path, capsys):
    out = tmp_path / "runs"
    with one_thread():  # an interrupted run of b: a checkpoint at step 10 of 30
        assert main(["train", "splat", "--data", str(scenes / "b"), *STEPS, "--max-steps", "10", "--quiet", "--out", str(out / "b")]) == 0
    capsys.readouterr()
    argv = ["batch", "train", "splat", "--scenes", str(scenes / "*"), *STEPS, "--out", str(out), *ENGINE]

    assert main(argv) == 2
    rows, captured = summary(out), capsys.readouterr()
    assert json.loads((out / "summary.json").read_text())["engine"] == "ray"
    assert {scene: row["status"] for scene, row in rows.items()} == {"a": "trained", "b": "resumed", "c": "failed"}
    assert "JSON" in rows["c"]["error"] and "transforms_train.json" in rows["c"]["error"]
    assert captured.err.strip().splitlines() == [f"recon: error: 1 of 3 scenes failed (first: c: {rows['c']['error']}); see {out / 'summary.md'}"]
    for scene in "ab":
        results = json.loads((out / scene / "eval" / "results.json").read_text())["mean"]
        assert rows[scene]["psnr"] == results["psnr"] > 15 and rows[scene]["ssim"] == results["ssim"] and rows[scene]["fps"] > 0
        assert rows[scene]["train_time"] > 0 and (out / scene / "checkpoints" / "step_0000030.pt").is_file()
    steps = [json.loads(line)["step"] for line in (out / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] == 10 and steps[-1] == 30  # continued from the checkpoint, not restarted
    table = (out / "summary.md").read_text()
    assert f"| a | trained | {rows['a']['psnr']:.2f} |" in table and "| c | failed |" in table

    assert main(argv) == 2  # the rerun: finished scenes skipped, the broken one tried and reported again
    again = summary(out)
    assert {scene: row["status"] for scene, row in again.items()} == {"a": "skipped", "b": "skipped", "c": "failed"}
    assert again["a"]["psnr"] == rows["a"]["psnr"] and "2 skipped, 1 failed" in capsys.readouterr().out


def test_process_pool_without_ray_gives_the_same_statuses(scenes, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not importable
    out = tmp_path / "runs"
    assert main(["batch", "train", "splat", "--scenes", str(scenes / "[ac]"), *STEPS, "--out", str(out), "--workers", "1", "--cpus-per-job", "1"]) == 2
    rows, err = summary(out), capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["engine"] == "processes"
    assert {scene: row["status"] for scene, row in rows.items()} == {"a": "trained", "c": "failed"} and rows["a"]["psnr"] > 15
    assert err.count(RAY_HINT) == 1 and "pip install -e '.[cluster]'" in err

    other = ["batch", "train", "splat", "--scenes", str(scenes / "a"), *STEPS, "--set", "ssim_lambda=0.5", "--out", str(out), "--no-ray"]
    assert main(other) == 2  # a rerun with other settings never reports (or resumes) the old run
    assert "holds a run made with other settings (ssim_lambda)" in summary(out)["a"]["error"]


def test_gpf_scaffolds_prepared_as_batch_jobs_are_what_training_reads(tmp_path, capsys):
    """`recon batch prepare gpf` fuses each scene's scaffold on Ray into a cache; a rerun skips them;
    a GPF run given the cache reads the same points it would have fused."""
    import torch

    import data
    from data.synth import generate_scenes
    from recon.methods.gpf import GPF, PointScene, scaffold_path
    from recon.runs import apply_overrides

    root = generate_scenes(tmp_path / "root", scenes=3, unseen=1, views=8, res=32)
    cache = tmp_path / "cache"
    argv = ["batch", "prepare", "gpf", "--scenes", str(root / "scene_*"), "--preset", "fast", "--out", str(cache), *ENGINE]
    assert main(argv) == 0
    rows = summary(cache)
    assert {row["status"] for row in rows.values()} == {"prepared"} and len(rows) == 3
    config = apply_overrides(GPF.presets["fast"], {"scaffolds": str(cache)})
    for name, row in rows.items():
        scene = data.load(root / name)
        fused = PointScene.prepare(scene, apply_overrides(GPF.presets["fast"], {}))  # no cache: fused here
        path = scaffold_path(cache, scene, config)
        cached = PointScene.prepare(scene, config)
        assert path.is_file() and row["points"] == len(cached.points)
        assert torch.equal(cached.points, fused.points) and torch.equal(cached.labels, fused.labels)
    assert main(argv) == 0 and {row["status"] for row in summary(cache).values()} == {"skipped"}
    assert "3 skipped" in capsys.readouterr().out
    files = sorted(cache.rglob("*.pt"))
    with one_thread():
        assert main(["train", "gpf", "--data", str(root), "--preset", "fast", "--max-steps", "2", "--set", f"scaffolds={cache}", "--quiet", "--out", str(tmp_path / "run")]) == 0
    assert sorted(cache.rglob("*.pt")) == files  # read, none fused anew


def test_a_killed_pool_worker_loses_no_other_scene(scenes, tmp_path):
    """A process-pool worker killed mid-run breaks Python's pool; the jobs it took down run again, one
    per fresh process, so every good scene still finishes (the killed one resumes or restarts)."""
    import os
    import signal
    import subprocess
    import time

    out = tmp_path / "runs"
    command = [sys.executable, "-m", "recon.cli", "batch", "train", "splat", "--scenes", str(scenes / "[ab]"), "--preset", "fast",
               "--max-steps", "400", "--set", "eval_views=1", "--out", str(out), "--no-ray", "--workers", "2", "--cpus-per-job", "1"]
    batch = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    deadline = time.monotonic() + 120
    while len(list(out.glob("*/metrics.jsonl"))) < 2:  # both jobs are training
        assert time.monotonic() < deadline and batch.poll() is None, "no job started training"
        time.sleep(0.2)
    workers = [pid for pid in os.listdir("/proc") if pid.isdigit() and _parent(pid) == batch.pid and "spawn_main" in _command(pid)]
    os.kill(int(workers[0]), signal.SIGKILL)
    _, stderr = batch.communicate(timeout=300)
    assert batch.returncode == 0, stderr
    assert {row["status"] for row in summary(out).values()} <= {"trained", "resumed"} and len(summary(out)) == 2
    assert [p for p in out.iterdir() if ".old-" in p.name]  # the killed job's partial run, moved aside when it ran again


def _parent(pid: str) -> int:
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def _command(pid: str) -> str:
    try:
        return open(f"/proc/{pid}/cmdline").read()
    except OSError:
        return ""
