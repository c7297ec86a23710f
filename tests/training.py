"""Helpers shared by the methods' resume tests: run the Trainer, optionally interrupted at a step."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from recon.methods.base import Trainable
from recon.trainer import Trainer


def run_training(method: Trainable, run_dir: Path, *, resume: bool = False, crash_at: int | None = None, info: dict | None = None) -> Trainable:
    """Train `method` in run_dir; with crash_at, raise KeyboardInterrupt at that step (a simulated crash).
    `info` is the run's config.json entries (default: the method's scene, for a Method)."""
    if crash_at is not None:
        train_step = method.train_step

        def crashing_step(step):
            if step == crash_at:
                raise KeyboardInterrupt
            return train_step(step)

        method.train_step = crashing_step
    info = info or {"method": method.name, "preset": "fast", "data": str(method.scene.root), "data_options": {}}
    if resume:
        torch.manual_seed(2**31 - 1)  # as in a new process: the checkpoint must restore the global RNG
    Trainer(method, run_dir, info).run(resume=resume, quiet=True)
    return method


def torchrun(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """`torchrun --nproc-per-node 2 -m recon.cli ARGS` (gloo on the CPU, one thread per process)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "recon.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def logged_values(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the timing fields, which differ between runs."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("train_time", "rays_per_s", "steps_per_s")} for line in lines]


@contextmanager
def one_thread():
    """torch on one CPU thread (spconv's and other multi-threaded CPU sums vary in order between runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
