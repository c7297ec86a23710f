"""Data-parallel training (recon.distributed): real gloo processes on the CPU, started by torchrun or
by the test, against one process with the same global batch."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from recon.io import load_checkpoint
from recon.runs import open_run
from recon.trainer import latest_checkpoint
from renderers.shards import rand_rows, randint_rows, sharded_generator
from training import torchrun

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}  # two processes, one core each


def recon(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recon.cli", "--threads", "1", *args], env=ENV, capture_output=True, text=True, timeout=timeout)


def final_parameters(run_dir) -> dict[str, torch.Tensor]:
    return load_checkpoint(latest_checkpoint(run_dir))["model"]


def logged(run_dir, key: str) -> list:
    return [r[key] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if key in r]


def test_sharded_draws_split_the_global_draw():
    """W ranks' rows, concatenated, are what one process draws for the whole batch; the generators stay equal."""
    whole = rand_rows((6, 4), sharded_generator(5))
    ranks = [sharded_generator(5, rank=r, world_size=3) for r in range(3)]
    assert torch.equal(torch.cat([rand_rows((2, 4), g) for g in ranks]), whole)
    integers = torch.cat([randint_rows(9, (2,), sharded_generator(6, rank=r, world_size=3)) for r in range(3)])
    assert torch.equal(integers, randint_rows(9, (6,), sharded_generator(6)))
    assert all(torch.equal(g.get_state(), ranks[0].get_state()) for g in ranks)


def test_nerf_on_two_processes_equals_one_process_with_the_global_batch(tiny_blender, tmp_path):
    """2 ranks × 128 rays = 1 process × 256 rays (hash grid, occupancy grid, jittered samples), to float
    rounding: every parameter within 1e-4 after 20 steps (a hundredth of one Adam step at lr 1e-2:
    hash-table entries that few rays touch get gradients near rounding noise, which Adam normalises),
    the same occupied cells, the same validation PSNR. The run then resumes in one process."""
    options = ["--data", str(tiny_blender), "--preset", "fast", "--max-steps", "20", "--quiet", "--set", "checkpoint_every=10"]
    one = recon("train", "nerf", *options, "--set", "rays_per_batch=256", "--out", str(tmp_path / "one"))
    two = torchrun("train", "nerf", *options, "--set", "rays_per_batch=128", "--out", str(tmp_path / "two"))
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert "(2 processes)" in two.stdout and two.stdout.count("run directory") == 1  # rank 0 alone talks
    a, b = final_parameters(tmp_path / "one"), final_parameters(tmp_path / "two")
    for name in a:
        if a[name].is_floating_point():
            assert (a[name] - b[name]).abs().max() <= 1e-4, name
        else:
            assert torch.equal(a[name], b[name]), name
    assert logged(tmp_path / "two", "rays")[-1] == 256  # the global batch
    assert logged(tmp_path / "one", "val_psnr") == logged(tmp_path / "two", "val_psnr")

    resumed = recon("train", "nerf", "--resume", "--out", str(tmp_path / "two"), "--max-steps", "25", "--quiet")  # another world size
    assert resumed.returncode == 0, resumed.stderr
    assert "trained on 2 processes, resumed on 1" in resumed.stderr  # the global batch halves: said
    assert load_checkpoint(latest_checkpoint(tmp_path / "two"))["step"] == 25


def test_splat_on_two_processes_densifies_as_one_process_with_the_global_batch(tiny_blender, tmp_path):
    """2 ranks × 1 view = 1 process × 2 views per step, across three densification steps: the same
    number of Gaussians after every step, positions within 1e-3 and the same test renders (to 1e-3).
    (Quaternions of the isotropic initial Gaussians get gradients of pure rounding noise, ~1e-11,
    which Adam scales to full steps; so they are compared through the renders, not one by one.)"""
    options = ["--data", str(tiny_blender), "--preset", "fast", "--max-steps", "20", "--quiet", "--set", "log_every=1",
               "--set", "refine_start=4", "--set", "refine_every=4", "--set", "refine_stop=16", "--set", "grow_grad2d=2e-5"]
    one = recon("train", "splat", *options, "--set", "batch_size=2", "--out", str(tmp_path / "one"))
    two = torchrun("train", "splat", *options, "--out", str(tmp_path / "two"))
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    counts = logged(tmp_path / "one", "gaussians")
    assert counts == logged(tmp_path / "two", "gaussians") and counts[-1] > counts[0]  # densified alike
    a, b = final_parameters(tmp_path / "one"), final_parameters(tmp_path / "two")
    assert (a["params.means"] - b["params.means"]).abs().max() <= 1e-3
    (one_model, _), (two_model, _) = open_run(tmp_path / "one", "cpu"), open_run(tmp_path / "two", "cpu")
    scene = one_model.scene
    for view in scene.split("test").tolist():
        renders = [m.render_view(scene.K[view], scene.c2w[view], scene.width, scene.height)["rgb"] for m in (one_model, two_model)]
        assert (renders[0] - renders[1]).abs().max() <= 1e-3


@pytest.mark.parametrize("method", ["pronerf", "gpf", "dream"])
def test_the_other_training_commands_run_on_two_processes(method, tiny_blender, tmp_path, monkeypatch):
    """ProNeRF, GPF (each rank its own scene) and text-to-3D under torchrun: the job ends, its
    checkpoint is written by rank 0 alone, and the trainer's checksums found the ranks' parameters
    equal at that checkpoint (a difference stops the run)."""
    from data.synth import generate_scenes
    from tiny_diffusion import tiny_deepfloyd_if, tiny_stable_diffusion

    monkeypatch.setenv("RECON_CACHE", str(tmp_path / "cache"))  # dream's text-embedding cache
    out = ["--out", str(tmp_path / "run"), "--quiet", "--max-steps", "4"]
    if method == "pronerf":
        args = ["train", "pronerf", "--data", str(tiny_blender), "--preset", "fast", "--set", "stage1_steps=2", "--set", "rays_per_batch=64"]
    elif method == "gpf":
        root = generate_scenes(tmp_path / "root", scenes=3, unseen=1, views=8, res=32)
        args = ["train", "gpf", "--data", str(root), "--preset", "fast", "--set", "batch_rays=64"]
    else:
        models = tmp_path / "models"
        args = ["dream", "a red ball", "--if", str(tiny_deepfloyd_if(models / "if")), "--sd", str(tiny_stable_diffusion(models / "sd")),
                "--preset", "fast", "--set", "stage1_steps=2", "--frames", "2"]
    result = torchrun(*args, *out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("run directory") == 1 and "(2 processes)" in result.stdout
    assert load_checkpoint(latest_checkpoint(tmp_path / "run"))["step"] == 4
    if method != "dream":
        assert logged(tmp_path / "run", "rays")[-1] == 128  # 2 ranks × 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_started_as_the_readme_says(tiny_blender, tmp_path):
    """`torchrun --nnodes 2 --node-rank R --master-addr ... ` once per "machine" (two agents on this one)."""
    port, agents = _free_port(), []
    for node in (0, 1):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1",
                   "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "recon.cli", "train", "nerf", "--data", str(tiny_blender),
                   "--preset", "fast", "--max-steps", "6", "--set", "rays_per_batch=64", "--quiet", "--out", str(tmp_path / "run")]
        agents.append(subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [agent.communicate(timeout=120) for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], outputs
    assert "(2 processes)" in outputs[0][0] and "run directory" not in outputs[1][0]  # node 1's rank is quiet
    assert logged(tmp_path / "run", "rays")[-1] == 128


@pytest.mark.parametrize("failure", ["killed", "hung"])
def test_a_lost_rank_fails_the_job_with_a_clear_message(tiny_blender, tmp_path, failure):
    """Two processes started by the test; rank 1 is killed (or stopped): rank 0 stops within seconds
    (the hung case after RECON_DIST_TIMEOUT) with one line saying so, instead of waiting forever."""
    port = _free_port()
    ranks = []
    for rank in (0, 1):
        env = {**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RECON_DIST_TIMEOUT": "5"}
        command = [sys.executable, "-m", "recon.cli", "train", "nerf", "--data", str(tiny_blender), "--preset", "fast", "--max-steps", "100000",
                   "--set", "rays_per_batch=128", "--set", "log_every=5", "--quiet", "--out", str(tmp_path / "run")]
        ranks.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "run" / "metrics.jsonl").exists():  # training is under way (5 steps logged)
            assert time.monotonic() < deadline and ranks[0].poll() is None, ranks[0].stderr.read() if ranks[0].poll() is not None else "no step logged in 60 s"
            time.sleep(0.2)
        ranks[1].send_signal(signal.SIGKILL if failure == "killed" else signal.SIGSTOP)
        _, stderr = ranks[0].communicate(timeout=30)
    finally:
        for process in ranks:
            process.kill()
            process.wait()
    assert ranks[0].returncode == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(r"recon: error: rank 0: [^(]+ failed, another rank stopped or timed out \(.+\)", lines[0]), stderr  # whichever collective it was in
    assert ("by peer" if failure == "killed" else "Timed out") in lines[0]  # gloo: connection closed or reset by peer


def test_only_training_runs_under_torchrun(tiny_blender, tmp_path):
    result = subprocess.run([sys.executable, "-m", "recon.cli", "eval", str(tmp_path)], env={**ENV, "WORLD_SIZE": "2"}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "only training" in result.stderr and len(result.stderr.strip().splitlines()) == 1
