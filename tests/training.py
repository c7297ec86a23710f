"""Helpers shared by the methods' resume tests: run the Trainer, optionally interrupted at a step."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from recon.methods.base import Method
from recon.trainer import Trainer


def run_training(method: Method, run_dir: Path, *, resume: bool = False, crash_at: int | None = None) -> Method:
    """Train `method` in run_dir; with crash_at, raise KeyboardInterrupt at that step (a simulated crash)."""
    if crash_at is not None:
        train_step = method.train_step

        def crashing_step(step):
            if step == crash_at:
                raise KeyboardInterrupt
            return train_step(step)

        method.train_step = crashing_step
    info = {"method": method.name, "preset": "fast", "data": str(method.scene.root), "data_options": {}}
    if resume:
        torch.manual_seed(2**31 - 1)  # as in a new process: the checkpoint must restore the global RNG
    Trainer(method, run_dir, info).run(resume=resume, quiet=True)
    return method


def logged_values(run_dir: Path) -> list[dict]:
    """metrics.jsonl without the timing fields, which differ between runs."""
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("train_time", "rays_per_s", "steps_per_s")} for line in lines]
