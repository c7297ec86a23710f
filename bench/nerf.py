"""Train and render throughput (rays/s) of the NeRF presets on a generated scene.

Runs the presets alternately for several rounds at a fixed thread count and prints medians.
The fast preset is first trained for --fast-warmup steps: its cost per step falls ~5x once the
occupancy grid has emptied. Usage: python bench/nerf.py [--threads 2] [--res 128] [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import data  # noqa: E402
from data.synth import generate  # noqa: E402
from recon.methods.nerf import PRESETS, Nerf  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--res", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per round")
    parser.add_argument("--fast-warmup", type=int, default=300, help="untimed steps of the fast preset first, so its occupancy grid has emptied (steady state)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        scene = data.load(generate(Path(tmp) / "scene", format="blender", seed=0, views=20, res=args.res))
    methods = {name: Nerf(replace(config, seed=0), scene) for name, config in PRESETS.items()}
    for step in range(args.fast_warmup):
        methods["fast"].train_step(step)
    train_rate = {name: [] for name in methods}
    render_rate = {name: [] for name in methods}
    view = int(scene.split("test")[0])
    for _ in range(args.rounds):
        for name, method in methods.items():  # alternate presets within each round
            method.train()
            method.train_step(0)  # warm-up
            tic = time.perf_counter()
            for step in range(args.steps):
                method.train_step(step)
            train_rate[name].append(args.steps * method.config.rays_per_batch / (time.perf_counter() - tic))
            method.eval()
            tic = time.perf_counter()
            method.render_view(scene.K[view], scene.c2w[view], scene.width, scene.height)
            render_rate[name].append(scene.width * scene.height / (time.perf_counter() - tic))

    print(f"NeRF throughput, {args.threads} threads, {scene.width}x{scene.height} images, median of {args.rounds} rounds")
    print(f"{'preset':<10}{'samples/ray':>14}{'train rays/s':>16}{'render rays/s':>16}{'s/step':>10}")
    for name, method in methods.items():
        c = method.config
        samples = f"{c.num_coarse}+{c.num_fine}"
        train = statistics.median(train_rate[name])
        print(f"{name:<10}{samples:>14}{train:>16,.0f}{statistics.median(render_rate[name]):>16,.0f}{c.rays_per_batch / train:>10.3f}")
    ratio = statistics.median(train_rate["fast"]) / statistics.median(train_rate["default"])
    print(f"fast/default train throughput ratio: {ratio:.1f}x")


if __name__ == "__main__":
    main()
