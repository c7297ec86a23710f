"""3DGS training on the default synthetic Blender-format scene: time to 30 dB, s/iteration,
final PSNR/SSIM and peak memory; with --opensplat, s/iteration side by side with OpenSplat.

Usage: python bench/splat_train.py [--threads 2] [--res 200] [--steps 3000] [--backend auto]
       python bench/splat_train.py --opensplat PATH/TO/opensplat [--threads 2] [--repeats 3]

--opensplat writes the train views as OpenSplat reads them (nerfstudio transforms.json in OpenGL
camera axes; 8-bit PNGs composited on OpenSplat's fixed background colour, as recon's are on
white; `ply_file_path` → the scene's initial points), then trains recon's fast preset and
OpenSplat in turn, --repeats rounds, at the same --threads (OMP_NUM_THREADS, passive OpenMP
waits). OpenSplat's flags follow the preset: full resolution from the first step, the same SH
schedule, loss and gradient threshold, densification after refine_start every refine_every
steps, no opacity reset, no screen-size splits. It densifies until half its -n, so it gets
-n 2·refine_stop and is stopped after --steps. It trains on every frame it is given, so the
val/test views are left out of transforms.json.
s/iteration is the mean over the training steps: recon times each train_step; OpenSplat prints a
line per step on a CPU, so its time runs from its first to its last step line (loading and
saving left out). Left different: OpenSplat culls below opacity 0.1 (recon 0.005) and decays its
position learning rate over its -n steps.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import resource
import statistics
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import imageio.v3 as iio  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import data  # noqa: E402
from data.synth import generate  # noqa: E402
from recon.methods.splat import PRESETS, Splat, SplatConfig  # noqa: E402
from recon.metrics import psnr, ssim  # noqa: E402

OPENSPLAT_BACKGROUND = torch.tensor([0.6130, 0.0101, 0.3984])  # nerfstudio's default, fixed in OpenSplat
OPENSPLAT_COUNT = re.compile(r"(?:new count|remaining) (\d+)$")  # its densification log lines


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


def time_to_target(scene: data.Scene, config: SplatConfig, args: argparse.Namespace) -> None:
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
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"final test PSNR {test_psnr:.2f} dB, SSIM {test_ssim:.4f}, {stats['gaussians']} Gaussians")
    print(f"time to {args.target:.0f} dB: " + (f"{reached[1]:.1f} s (step {reached[0]})" if reached else "not reached"))
    print(f"median s/iteration {statistics.median(step_seconds):.4f}")
    print(f"peak memory (max RSS) {peak_gib:.2f} GiB")


def write_nerfstudio(scene: data.Scene, root: Path) -> None:
    """The train views in OpenSplat's nerfstudio layout: transforms.json (OpenGL camera-to-world,
    pixel intrinsics), PNGs on OpenSplat's background, and points.ply (float xyz, uchar rgb) with
    the initial points."""
    (root / "images").mkdir(parents=True)
    frames = []
    for i in scene.split("train").tolist():
        name = f"images/{i:03d}.png"
        image = scene.images[i] + (1 - scene.masks[i, ..., None]) * (OPENSPLAT_BACKGROUND - torch.tensor(scene.background))
        iio.imwrite(root / name, (image * 255).round().to(torch.uint8).numpy())
        K, c2w = scene.K[i], scene.c2w[i].clone()
        c2w[:3, 1:3] *= -1  # OpenCV → OpenGL axes
        frames.append({"file_path": name, "transform_matrix": c2w.tolist(), "w": scene.width, "h": scene.height,
                       "fl_x": float(K[0, 0]), "fl_y": float(K[1, 1]), "cx": float(K[0, 2]), "cy": float(K[1, 2])})
    xyz = scene.points.numpy().astype("<f4")
    rgb = (scene.point_colors * 255).round().numpy().astype(np.uint8)  # the .ply's own uchar colours
    header = f"ply\nformat binary_little_endian 1.0\nelement vertex {len(xyz)}\n" + "".join(f"property float {a}\n" for a in "xyz") + "".join(f"property uchar {c}\n" for c in ("red", "green", "blue")) + "end_header\n"
    (root / "points.ply").write_bytes(header.encode() + np.concatenate([xyz.view(np.uint8), rgb], axis=1).tobytes())
    (root / "transforms.json").write_text(json.dumps({"camera_model": "OPENCV", "ply_file_path": "points.ply", "frames": frames}))


def run_recon(scene: data.Scene, config: SplatConfig) -> tuple[list[float], int]:
    """(seconds of each training step, final Gaussians)."""
    method = Splat(config, scene)
    seconds = []
    for step in range(config.max_steps):
        tic = time.perf_counter()
        stats = method.train_step(step)
        seconds.append(time.perf_counter() - tic)
    return seconds, stats["gaussians"]


def run_opensplat(binary: str, root: Path, config: SplatConfig, threads: int, gaussians: int) -> tuple[list[float], int]:
    """(seconds between consecutive step lines, final Gaussians) of OpenSplat stopped after
    config.max_steps; `gaussians`: the initial count."""
    flags = {
        "-n": max(2 * config.refine_stop, config.max_steps), "-d": 1, "--num-downscales": 0,
        "--sh-degree": config.sh_degree, "--sh-degree-interval": config.sh_degree_interval, "--ssim-weight": config.ssim_lambda,
        "--warmup-length": config.refine_start, "--refine-every": config.refine_every, "--densify-grad-thresh": config.grow_grad2d,
        "--reset-alpha-every": config.reset_opacity_every // config.refine_every,  # counted in refinements
        "--stop-screen-size-at": 0, "-o": root / "splat.ply",
    }
    command = [binary, root / "scene", "--cpu", *(str(word) for item in flags.items() for word in item)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    stamps, last_lines = [], collections.deque(maxlen=5)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as process:
        for line in process.stdout:
            last_lines.append(line)
            if line.startswith("Step "):
                stamps.append(time.perf_counter())
                if len(stamps) == config.max_steps:
                    break
            elif count := OPENSPLAT_COUNT.search(line.strip()):
                gaussians = int(count[1])
        process.terminate()
    if len(stamps) < config.max_steps:
        raise RuntimeError(f"OpenSplat stopped after {len(stamps)} steps:\n{''.join(last_lines)}")
    return np.diff(stamps).tolist(), gaussians


def side_by_side(scene: data.Scene, config: SplatConfig, args: argparse.Namespace) -> None:
    version = subprocess.run([args.opensplat, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    print(f"3DGS fast preset (backend {args.backend}) vs OpenSplat {version}, {args.threads} threads, {scene.width}x{scene.height}, "
          f"{len(scene.split('train'))} train views, {config.max_steps} steps, {args.repeats} alternating rounds")
    per_iteration = {"recon": [], "OpenSplat": []}
    with tempfile.TemporaryDirectory() as tmp:
        write_nerfstudio(scene, Path(tmp) / "scene")
        runs = {"recon": lambda: run_recon(scene, config),
                "OpenSplat": lambda: run_opensplat(args.opensplat, Path(tmp), config, args.threads, len(scene.points))}
        for round_ in range(1, args.repeats + 1):
            for name, run in runs.items():
                seconds, gaussians = run()
                per_iteration[name].append(statistics.mean(seconds))
                print(f"round {round_}  {name:<9} {per_iteration[name][-1]:.4f} s/iteration (median step {statistics.median(seconds):.4f} s), {gaussians} Gaussians at the end")
    recon, opensplat = (statistics.median(per_iteration[name]) for name in ("recon", "OpenSplat"))
    print(f"median of {args.repeats} rounds: recon {recon:.4f} s/iteration, OpenSplat {opensplat:.4f} s/iteration: "
          f"recon {opensplat / recon:.1f}x faster at {args.threads} threads")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--res", type=int, default=200)
    parser.add_argument("--steps", type=int, default=None, help="default: the fast preset's max_steps")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--target", type=float, default=30.0)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--opensplat", help="path to an OpenSplat binary: time it against recon instead")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds with --opensplat")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        scene = data.load(generate(Path(tmp) / "scene", format="blender", seed=0, views=100, res=args.res))
    config = replace(PRESETS["fast"], backend=args.backend)
    if args.steps:
        config = replace(config, max_steps=args.steps)
    Splat(config, scene).train_step(0)  # builds/loads the C++ kernels outside the timed runs
    if args.opensplat:
        side_by_side(scene, config, args)
    else:
        time_to_target(scene, config, args)


if __name__ == "__main__":
    main()
