"""3DGS training on the default synthetic Blender-format scene: time to 30 dB, s/iteration,
final PSNR/SSIM and peak memory.

Usage: python bench/splat_train.py [--threads 2] [--res 200] [--steps 3000] [--backend auto]
The reference the issue gives: OpenSplat (C++ CPU 3DGS) takes ~0.25 s per iteration at 200².
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import data  # noqa: E402
from data.synth import generate  # noqa: E402
from recon.methods.splat import PRESETS, Splat  # noqa: E402
from recon.metrics import psnr, ssim  # noqa: E402

OPENSPLAT_SECONDS_PER_ITERATION = 0.25


def test_metrics(method: Splat) -> tuple[float, float]:
    scene = method.scene
    method.eval()
    scores = []
    for i in scene.split("test").tolist():
        rgb = method.render_view(scene.K[i], scene.c2w[i], scene.width, scene.height)["rgb"]
        rgb = (rgb * 255).round() / 255  # 8-bit, as `recon eval`
        scores.append((float(psnr(rgb, scene.images[i])), float(ssim(rgb, scene.images[i]))))
    method.train()
    return statistics.mean(s[0] for s in scores), statistics.mean(s[1] for s in scores)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--res", type=int, default=200)
    parser.add_argument("--steps", type=int, default=None, help="default: the fast preset's max_steps")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--target", type=float, default=30.0)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        scene = data.load(generate(Path(tmp) / "scene", format="blender", seed=0, views=100, res=args.res))
    config = replace(PRESETS["fast"], backend=args.backend)
    if args.steps:
        config = replace(config, max_steps=args.steps)
    method = Splat(config, scene)
    method.train_step(0)  # builds/loads the C++ kernels outside the timed run (step 0 is repeated below)
    method = Splat(config, scene)
    print(f"3DGS fast preset, {args.threads} threads, {scene.width}x{scene.height}, {len(scene.split('train'))} train / {len(scene.split('test'))} test views, backend {args.backend}")
    step_seconds, train_time, reached = [], 0.0, None
    for step in range(config.max_steps):
        tic = time.perf_counter()
        stats = method.train_step(step)
        step_seconds.append(time.perf_counter() - tic)
        train_time += step_seconds[-1]
        if (step + 1) % args.eval_every == 0 or step + 1 == config.max_steps:
            test_psnr, test_ssim = test_metrics(method)
            print(f"step {step + 1:>5}  train {train_time:7.1f} s  test PSNR {test_psnr:6.2f}  SSIM {test_ssim:.4f}  Gaussians {stats['gaussians']}")
            if reached is None and test_psnr >= args.target:
                reached = (step + 1, train_time)
    per_iteration = statistics.median(step_seconds)
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"final test PSNR {test_psnr:.2f} dB, SSIM {test_ssim:.4f}, {stats['gaussians']} Gaussians")
    print(f"time to {args.target:.0f} dB: " + (f"{reached[1]:.1f} s (step {reached[0]})" if reached else "not reached"))
    print(f"median s/iteration {per_iteration:.4f} (OpenSplat reference {OPENSPLAT_SECONDS_PER_ITERATION} s: {OPENSPLAT_SECONDS_PER_ITERATION / per_iteration:.1f}x faster)")
    print(f"peak memory (max RSS) {peak_gib:.2f} GiB")


if __name__ == "__main__":
    main()
