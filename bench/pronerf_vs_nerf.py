"""ProNeRF-8 and ProNeRF-12 against NeRF (64 coarse + 128 fine samples) on generated scenes.

For each of an LLFF-format (forward-facing, NDC) and a Blender-format (360°, near/far) scene, every
model trains for the same number of steps with the same rays per step at the same resolution,
from its `default` preset (paper-sized networks; schedules compressed to --steps: NeRF's lr decays
5e-4 → 5e-5, ProNeRF's stage 1 is the first half, with the card's decays rescaled). Then the test
split is evaluated (8-bit PSNR/SSIM as `recon eval`) and rendering is timed per image.

Prints a Markdown table: test PSNR/SSIM, median render seconds per image and the speed-up over
NeRF, shaded samples per ray, parameters, median training seconds per step.
Usage: python bench/pronerf_vs_nerf.py [--threads 2] [--res 64] [--steps 300] [--rays 128]
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
from recon.evaluate import evaluate  # noqa: E402
from recon.methods.base import Method  # noqa: E402
from recon.methods.nerf import PRESETS as NERF_PRESETS  # noqa: E402
from recon.methods.nerf import Nerf  # noqa: E402
from recon.methods.pronerf import PRESETS as PRONERF_PRESETS  # noqa: E402
from recon.methods.pronerf import Pronerf  # noqa: E402

QUIET = {"eval_every": 10**9, "checkpoint_every": 10**9, "log_every": 10**9, "seed": 0}


def build(name: str, scene: data.Scene, steps: int, rays: int, device: str) -> Method:
    if name == "NeRF":
        return Nerf(replace(NERF_PRESETS["default"], **QUIET, max_steps=steps, rays_per_batch=rays), scene, device)
    stage1 = steps // 2
    config = replace(
        PRONERF_PRESETS["default"],
        **QUIET,
        num_samples=int(name.split("-")[1]),
        max_steps=steps,
        stage1_steps=stage1,
        lr_stage1_decay_steps=max(stage1, 1),  # card: ×0.1 over stage 1
        lr_stage2_decay_steps=max((steps - stage1) // 2, 1),  # card: ×0.1 every half of stage 2
        rays_per_batch=rays,
    )
    return Pronerf(config, scene, device)


def samples_per_ray(method: Method) -> str:
    c = method.config
    if isinstance(method, Nerf):
        return f"{c.num_coarse}+{c.num_fine} ({c.num_coarse * 2 + c.num_fine} MLP evals)"
    return f"{c.num_samples} (+2 sampler evals)"


def run(name: str, scene: data.Scene, args: argparse.Namespace, out_dir: Path) -> dict:
    torch.manual_seed(0)
    method = build(name, scene, args.steps, args.rays, args.device)
    method.train()
    step_seconds = []
    for step in range(args.steps):
        tic = time.perf_counter()
        method.train_step(step)  # returns Python floats: the step has finished, also on CUDA
        step_seconds.append(time.perf_counter() - tic)
    method.eval()
    results = evaluate(method, out_dir / name, "test", args.test_views)
    times = [view["render_seconds"] for view in results["views"]]
    for _ in range(args.render_repeats - 1):  # more timings of the first test view
        view = int(scene.split("test")[0])
        tic = time.perf_counter()
        method.render_view(scene.K[view], scene.c2w[view], scene.width, scene.height)["rgb"].cpu()
        times.append(time.perf_counter() - tic)
    return {
        "psnr": results["mean"]["psnr"],
        "ssim": results["mean"]["ssim"],
        "render_s": statistics.median(times),
        "step_s": statistics.median(step_seconds),
        "samples": samples_per_ray(method),
        "params": sum(p.numel() for p in method.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--res", type=int, default=64, help="image width in pixels (LLFF height is 3/4 of it)")
    parser.add_argument("--steps", type=int, default=300, help="training steps for every model")
    parser.add_argument("--rays", type=int, default=128, help="rays per training step for every model")
    parser.add_argument("--formats", default="llff,blender", help="comma-separated scene formats")
    parser.add_argument("--test-views", type=int, default=2, help="test views evaluated per scene")
    parser.add_argument("--render-repeats", type=int, default=2, help="timed renders of the first test view (each other test view once)")
    parser.add_argument("--models", default="NeRF,ProNeRF-8,ProNeRF-12")
    parser.add_argument("--scenes", nargs="*", type=Path, default=None, help="existing scene directories to use instead of generating them (--formats, --res ignored)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.scenes:
            scenes = [data.load(path) for path in args.scenes]
        else:
            from data.synth import generate  # open3d: only when generating

            scenes = [data.load(generate(Path(tmp) / fmt, format=fmt, seed=0, views=20 if fmt == "llff" else 30, res=args.res))
                      for fmt in args.formats.split(",")]
        for scene in scenes:
            fmt = "llff" if scene.ndc else "blender"
            for name in args.models.split(","):
                tic = time.perf_counter()
                row = {"scene": fmt, "model": name, **run(name, scene, args, Path(tmp) / "eval" / fmt)}
                rows.append(row)
                print(f"  {fmt} {name}: {row['psnr']:.2f} dB, SSIM {row['ssim']:.3f}, render {row['render_s']:.4f} s/image, "
                      f"{row['step_s']:.4f} s/step ({time.perf_counter() - tic:.0f} s)", flush=True)

    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{args.threads} CPU threads"
    print(f"\n{args.steps} steps x {args.rays} rays, {scenes[-1].width}px wide, {where}, "
          f"median render time over {args.test_views} test views + {args.render_repeats - 1} repeats\n")
    print("| scene | model | samples/ray | params | test PSNR | SSIM | render s/image | speed-up vs NeRF | train s/step |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        nerf = next((r for r in rows if r["scene"] == row["scene"] and r["model"] == "NeRF"), None)
        speedup = f"{nerf['render_s'] / row['render_s']:.1f}x" if nerf else "n/a"
        print(f"| {row['scene']} | {row['model']} | {row['samples']} | {row['params'] / 1e6:.2f} M | {row['psnr']:.2f} | "
              f"{row['ssim']:.3f} | {row['render_s']:.3f} | {speedup} | {row['step_s']:.3f} |")


if __name__ == "__main__":
    main()
