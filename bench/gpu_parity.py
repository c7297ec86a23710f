"""gsplat CUDA vs our cpu and torch backends on the same inputs: values, gradients, timings.

Run on a machine with CUDA and gsplat's kernels: python bench/gpu_parity.py [--sizes 128:5000 256:50000]
Prints, per size and render mode, the max abs difference of images/alphas and the relative
difference of every input's gradient against gsplat, then forward+backward ms per backend.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from splat_raster import make_scene  # bench/ is on sys.path when run as a script
from renderers.splatting import rasterization

INPUTS = ("means", "quats", "scales", "opacities", "colors")


def run(backend: str, scene: dict, size: int, device: str, render_mode: str, absgrad: bool):
    leaves = {k: v.to(device).clone().requires_grad_(k in INPUTS) for k, v in scene.items()}
    backgrounds = torch.full((1, 3), 0.3, device=device)
    colors, alphas, info = rasterization(**leaves, width=size, height=size, backend=backend, render_mode=render_mode,
                                         absgrad=absgrad, packed=False, backgrounds=backgrounds)
    info["means2d"].retain_grad()
    cotangent = torch.sin(torch.arange(colors.numel(), device=device, dtype=colors.dtype)).view_as(colors)
    ((colors * cotangent).sum() + alphas.sum()).backward()
    grads = {k: leaves[k].grad.detach().cpu() for k in INPUTS}
    grads["means2d"] = info["means2d"].grad.detach().cpu()
    if absgrad:
        grads["means2d_absgrad"] = info["means2d"].absgrad.detach().cpu()
    return colors.detach().cpu(), alphas.detach().cpu(), grads


def timed_ms(backend: str, scene: dict, size: int, device: str, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        run(backend, scene, size, device, "RGB", False)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - tic) * 1e3)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=["128:5000", "256:50000"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu_parity.py needs a CUDA device (gsplat's kernels)")
    for spec in args.sizes:
        size, n = (int(v) for v in spec.split(":"))
        scene = make_scene(n, size)
        for render_mode, absgrad in (("RGB", False), ("RGB+ED", True)):
            ref = run("gsplat", scene, size, "cuda", render_mode, absgrad)
            for backend in ("cpu", "torch"):
                out = run(backend, scene, size, "cpu", render_mode, absgrad)
                image = (out[0] - ref[0]).abs().max().item()
                alpha = (out[1] - ref[1]).abs().max().item()
                rel = {k: ((out[2][k] - g).norm() / g.norm().clamp_min(1e-12)).item() for k, g in ref[2].items()}
                grads = "  ".join(f"{k} {v:.1e}" for k, v in rel.items())
                print(f"{size}²/{n} {render_mode:<7} {backend:<5} max|Δimage| {image:.2e}  max|Δalpha| {alpha:.2e}  rel grad: {grads}")
        timings = {"gsplat (cuda)": timed_ms("gsplat", scene, size, "cuda"), "cpu": timed_ms("cpu", scene, size, "cpu", 3)}
        if size <= 256:
            timings["torch (cpu)"] = timed_ms("torch", scene, size, "cpu", 1)
        print(f"{size}²/{n} forward+backward ms: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))


if __name__ == "__main__":
    main()
