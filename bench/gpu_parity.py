"""gsplat CUDA vs our backends on the same inputs: values, gradients, timings.

Run on a machine with CUDA and gsplat's kernels: python bench/gpu_parity.py [--sizes 128:5000 256:50000]
For each size and case (RGB colours, RGB+ED with absgrad, SH degree 3, antialiased) it prints the
max abs difference of images/alphas and the relative difference of every input's gradient of our
`cpu` and `torch` backends (on the CPU) and of the `torch` backend on CUDA against gsplat; then
forward+backward ms per backend (medians).
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
CASES = {  # name: (render_mode, absgrad, sh_degree, rasterize_mode)
    "RGB": ("RGB", False, None, "classic"),
    "RGB+ED absgrad": ("RGB+ED", True, None, "classic"),
    "SH3": ("RGB", False, 3, "classic"),
    "antialiased": ("RGB", False, None, "antialiased"),
}


def case_scene(scene: dict, sh_degree: int | None) -> dict:
    if sh_degree is None:
        return scene
    g = torch.Generator().manual_seed(1)
    coeffs = 0.3 * torch.randn(scene["means"].shape[0], (sh_degree + 1) ** 2, 3, generator=g)
    return {**scene, "colors": coeffs}


def run(backend: str, scene: dict, size: int, device: str, case: str):
    render_mode, absgrad, sh_degree, rasterize_mode = CASES[case]
    scene = case_scene(scene, sh_degree)
    leaves = {k: v.to(device).clone().requires_grad_(k in INPUTS) for k, v in scene.items()}
    backgrounds = torch.full((1, 3), 0.3, device=device)
    colors, alphas, info = rasterization(**leaves, width=size, height=size, backend=backend, render_mode=render_mode,
                                         absgrad=absgrad, sh_degree=sh_degree, rasterize_mode=rasterize_mode,
                                         packed=False, backgrounds=backgrounds)
    info["means2d"].retain_grad()
    cotangent = torch.sin(torch.arange(colors.numel(), device=device, dtype=colors.dtype)).view_as(colors)
    ((colors * cotangent).sum() + alphas.sum()).backward()
    grads = {k: leaves[k].grad.detach().cpu() for k in INPUTS}
    grads["means2d"] = info["means2d"].grad.detach().cpu()
    if absgrad:
        grads["means2d_absgrad"] = info["means2d"].absgrad.detach().cpu()
    return colors.detach().cpu(), alphas.detach().cpu(), grads


def timed_ms(backend: str, scene: dict, size: int, device: str, rounds: int) -> float:
    times = []
    for _ in range(rounds + 1):  # the first call warms up (kernel build, allocator)
        if device == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        run(backend, scene, size, device, "RGB")
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - tic) * 1e3)
    return statistics.median(times[1:])


def compare(label: str, out, ref) -> None:
    image = (out[0] - ref[0]).abs().max().item()
    alpha = (out[1] - ref[1]).abs().max().item()
    rel = {k: ((out[2][k] - g).norm() / g.norm().clamp_min(1e-12)).item() for k, g in ref[2].items()}
    finite = all(torch.isfinite(t).all() for t in (out[0], out[1], *out[2].values()))
    grads = "  ".join(f"{k} {v:.1e}" for k, v in rel.items())
    print(f"{label} max|Δimage| {image:.2e}  max|Δalpha| {alpha:.2e}  finite {finite}  rel grad: {grads}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", nargs="+", default=["128:5000", "256:50000", "800:200000"])
    parser.add_argument("--parity-max", type=int, default=256, help="largest image side for the parity checks of the torch backend")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu_parity.py needs a CUDA device (gsplat's kernels)")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, {torch.get_num_threads()} CPU threads", flush=True)
    for spec in args.sizes:
        size, n = (int(v) for v in spec.split(":"))
        scene = make_scene(n, size)
        for case in CASES:
            ref = run("gsplat", scene, size, "cuda", case)
            compare(f"{size}²/{n} {case:<15} cpu         ", run("cpu", scene, size, "cpu", case), ref)
            if size <= args.parity_max:
                compare(f"{size}²/{n} {case:<15} torch (cpu) ", run("torch", scene, size, "cpu", case), ref)
                compare(f"{size}²/{n} {case:<15} torch (cuda)", run("torch", scene, size, "cuda", case), ref)
        timings = {"gsplat (cuda)": timed_ms("gsplat", scene, size, "cuda", 10), "cpu": timed_ms("cpu", scene, size, "cpu", 3)}
        if size <= args.parity_max:
            timings["torch (cuda)"] = timed_ms("torch", scene, size, "cuda", 3)
            timings["torch (cpu)"] = timed_ms("torch", scene, size, "cpu", 1)
        print(f"{size}²/{n} forward+backward ms: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()), flush=True)


if __name__ == "__main__":
    main()
