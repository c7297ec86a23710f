"""Text-to-3D (`recon dream`) on this machine: seconds per step per stage, peak memory, and the
oracle's reconstruction PSNR over steps under each timestep schedule (does annealing help?).

    python bench/dream.py [--threads 1] [--device cpu|cuda] [--steps 600] [--seeds 2] [--if DIR --sd DIR]

Without --if/--sd the priors are tiny random diffusers models built as the tests build them
(tests/tiny_diffusion.py), so step times measure the pipeline (rasterizer, SDS, resizing, VAE and
UNet calls), not a real UNet. Each timing runs in its own process so that its peak memory is its
own. The oracle's target is the tests' snowman (tests/dream_targets.py); its PSNR is the mean over
the fixed evaluation orbit.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402

from dream_targets import snowman  # noqa: E402
from recon.methods.dreamer import PRESETS, Dreamer, orbit_scene  # noqa: E402
from recon.metrics import psnr  # noqa: E402

SCHEDULES = {  # name → stage-1 settings (fractions of T)
    "uniform [0.02, 0.98]": dict(stage1_schedule="uniform", stage1_t_max=0.98),
    "uniform [0.02, 0.5]": dict(stage1_schedule="uniform", stage1_t_max=0.5),
    "linear_max 0.98 → 0.5": dict(stage1_schedule="linear_max"),
    "step 0.98 → 0.5 at half": dict(stage1_schedule="step"),
    "deterministic_linear": dict(stage1_schedule="deterministic_linear"),
    "sqrt (HiFA)": dict(stage1_schedule="sqrt"),
}


def orbit_psnr(method: Dreamer) -> float:
    scene = method.scene
    return statistics.mean(float(psnr(method.render_view(scene.K[i], scene.c2w[i], scene.width, scene.height)["rgb"].cpu(), scene.images[i])) for i in range(scene.num_views))


def time_stage(args, stage: str, workdir: Path) -> dict:
    """Median seconds per step of one stage (fast preset), and this process's peak memory."""
    prior = {"oracle": str(snowman(workdir / "snowman.ply"))} if args.oracle else {"if_model": args.if_model, "sd_model": args.sd_model}
    config = replace(PRESETS["fast"], prompt="a snowman", stage=stage, max_steps=args.time_steps + 3, refine_start=10**6, **prior)
    method = Dreamer(config, orbit_scene(config), device=args.device)
    times = []
    for step in range(config.max_steps):
        tic = time.perf_counter()
        stats = method.train_step(step)
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - tic)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
    return {"s_per_step": statistics.median(times[3:]), "resolution": stats["resolution"], "peak_rss_mb": peak_rss, "cuda_peak_mb": stats.get("cuda_peak_mb")}


def reconstruct(args, settings: dict, seed: int, target: Path) -> list[float]:
    """Orbit PSNR every steps/6 of an oracle run (stage 1 at 64², the fast preset otherwise)."""
    config = replace(PRESETS["fast"], prompt="a snowman", oracle=str(target), stage="1", max_steps=args.steps, seed=seed,
                     init_num_random=1000, refine_start=args.steps // 6, refine_stop=args.steps // 2, eval_resolution=64, eval_cameras=8, **settings)
    torch.manual_seed(seed)
    method = Dreamer(config, orbit_scene(config), device=args.device)
    curve = []
    for step in range(config.max_steps):
        method.train()
        method.train_step(step)
        if (step + 1) % (args.steps // 6) == 0:
            method.eval()
            curve.append(orbit_psnr(method))
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=600, help="steps of each oracle reconstruction")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--time-steps", type=int, default=20, help="timed steps per stage")
    parser.add_argument("--if", dest="if_model", default=None)
    parser.add_argument("--sd", dest="sd_model", default=None)
    parser.add_argument("--part", default=None, help=argparse.SUPPRESS)  # a child process: time one stage
    parser.add_argument("--oracle", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.part is not None:
        with tempfile.TemporaryDirectory() as folder:
            print(json.dumps(time_stage(args, args.part, Path(folder))))
        return

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        if args.if_model is None or args.sd_model is None:
            from tiny_diffusion import tiny_deepfloyd_if, tiny_stable_diffusion

            args.if_model, args.sd_model = str(tiny_deepfloyd_if(folder / "if")), str(tiny_stable_diffusion(folder / "sd"))
            print("priors: tiny random diffusers models (IF-I 32² pixels, SD 64² images / 32² latents)")
        env = {**os.environ, "RECON_CACHE": str(folder / "cache")}
        print(f"\n## Seconds per step ({args.device}, {args.threads} thread(s), fast preset: batch 2, median of {args.time_steps} steps, own process each)\n")
        print("| stage | prior | render side | s/step | peak RSS MiB | CUDA peak MiB |\n|---|---|---|---|---|---|")
        for stage, name, extra in (("1", "DeepFloyd IF", []), ("2", "Stable Diffusion", []), ("1", "oracle", ["--oracle"]), ("2", "oracle", ["--oracle"])):
            command = [sys.executable, __file__, "--part", stage, "--threads", str(args.threads), "--device", args.device, "--time-steps", str(args.time_steps),
                       "--if", args.if_model, "--sd", args.sd_model, *extra]
            result = json.loads(subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            cuda = "n/a" if result["cuda_peak_mb"] is None else f"{result['cuda_peak_mb']:.0f}"
            print(f"| {stage} | {name} | {result['resolution']} | {result['s_per_step']:.4f} | {result['peak_rss_mb']:.0f} | {cuda} |", flush=True)

        target = snowman(folder / "snowman.ply")
        checkpoints = [args.steps // 6 * (k + 1) for k in range(6)]
        for scale in (20.0, 1.0):
            print(f"\n## Oracle reconstruction, stage 1 at 64², guidance scale {scale:g}: orbit PSNR (dB) at step, median of {args.seeds} seeds\n")
            print("| t schedule | " + " | ".join(map(str, checkpoints)) + " |\n|---|" + "---|" * len(checkpoints))
            for name, settings in SCHEDULES.items():
                curves = [reconstruct(args, {**settings, "stage1_guidance_scale": scale}, seed, target) for seed in range(args.seeds)]
                medians = [statistics.median(values) for values in zip(*curves)]
                print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in medians) + " |", flush=True)


if __name__ == "__main__":
    main()
