"""Forward+backward time of `renderers.splatting.rasterization` per backend, and the cpu/torch ratio.

Random but realistic scenes: Gaussians spread over the view frustum of one camera at depths 2–10,
projected radii roughly 1–20 px, random rotations, opacities 0.05–0.95, RGB colours. Backends are
timed alternately within each round; medians are printed. The torch reference is slow at the large
sizes, so it runs `--torch-rounds` times there.
Usage: python bench/splat_raster.py [--threads 2] [--rounds 5] [--sizes 128:5000 256:50000 800:200000]
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from renderers.splatting import _cpu, rasterization  # noqa: E402


def make_scene(n: int, size: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    focal = size * 1.2
    depth = 2 + 8 * torch.rand(n, generator=g)
    pixels = torch.rand(n, 2, generator=g) * size
    xy = (pixels - size / 2) / focal * depth[:, None]
    radius_px = torch.exp(torch.rand(n, generator=g) * math.log(20.0))  # 1–20 px, log-uniform
    sigma = radius_px / 3 * depth / focal  # world std dev giving that radius
    return dict(
        means=torch.cat([xy, depth[:, None]], -1),
        quats=torch.randn(n, 4, generator=g),
        scales=sigma[:, None] * (0.3 + 0.7 * torch.rand(n, 3, generator=g)),
        opacities=0.05 + 0.9 * torch.rand(n, generator=g),
        colors=torch.rand(n, 3, generator=g),
        viewmats=torch.eye(4)[None],
        Ks=torch.tensor([[[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1]]]),
    )


def fwd_bwd_ms(backend: str, scene: dict, size: int) -> float:
    leaves = {k: v.clone().requires_grad_() if k not in ("viewmats", "Ks") else v for k, v in scene.items()}
    tic = time.perf_counter()
    colors, alphas, _ = rasterization(**leaves, width=size, height=size, backend=backend)
    (colors.sum() + alphas.sum()).backward()
    return (time.perf_counter() - tic) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--torch-rounds", type=int, default=1, help="rounds of the torch backend at sizes above 256")
    parser.add_argument("--sizes", nargs="+", default=["128:5000", "256:50000", "800:200000"], help="side:gaussians")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not _cpu.available():
        sys.exit(f"the cpu backend is unavailable: {_cpu.build_error()}")

    print(f"rasterization() forward+backward, {args.threads} threads, median ms")
    print(f"{'image':>9} {'Gaussians':>10} {'cpu':>10} {'torch':>11} {'torch/cpu':>10}")
    for spec in args.sizes:
        size, n = (int(v) for v in spec.split(":"))
        scene = make_scene(n, size)
        times = {"cpu": [], "torch": []}
        fwd_bwd_ms("cpu", scene, size)  # warm-up
        for round_ in range(args.rounds):
            for backend in times:  # alternate within each round
                if backend == "torch" and size > 256 and round_ >= args.torch_rounds:
                    continue
                times[backend].append(fwd_bwd_ms(backend, scene, size))
        cpu, ref = statistics.median(times["cpu"]), statistics.median(times["torch"])
        print(f"{size:>4}x{size:<4} {n:>10} {cpu:>10.1f} {ref:>11.1f} {ref / cpu:>9.0f}x")


if __name__ == "__main__":
    main()
