"""GPF on generated scenes, through the CLI: generalization to unseen scenes, finetuning, per-scene
baselines given the same wall-clock time, render speed, the sampling ablation and an edit.

    python bench/gpf.py [--scenes 25 --unseen 5 --views 30 --res 48 --steps 1500 --finetune-steps 1000
                         --ablation-steps 400 --threads 2 --out DIR]

1. `recon data synth --format blender --scenes N --unseen M`; `recon train gpf --preset fast`
   across the training scenes (the CPU-sized `fast` preset); `recon eval RUN --data UNSEEN` on every unseen scene (test views;
   no per-scene optimisation): PSNR, SSIM, FPS.
2. On the first unseen scene: `recon train gpf --finetune RUN` for --finetune-steps, then 3DGS
   `fast` and NeRF `fast` trained from scratch on that scene for the same wall-clock time (the
   last validation within it; their runs are sized from a short probe of their s/step).
3. The sampling ablation: the generalizable model trained --ablation-steps with log, surface and
   uniform sampling at equal samples per ray, scored on the unseen scenes.
4. `recon gpf edit` lifts and duplicates an object of the finetuned scene; before/after images.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]


def recon(*args, threads: int) -> float:
    tic = time.perf_counter()
    subprocess.run([sys.executable, "-m", "recon.cli", "--threads", str(threads), *map(str, args)], check=True, cwd=ROOT)
    return time.perf_counter() - tic


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def evaluate(run: Path, scene: Path | None, threads: int) -> dict:
    recon("eval", run, *(["--data", scene] if scene else []), "--max-views", 4, threads=threads)
    return json.loads((run / "eval" / (scene.name if scene else "") / "results.json").read_text())["mean"]


def within(run: Path, seconds: float) -> dict:
    """The last validation record of a run within `seconds` of training."""
    val = [r for r in records(run) if any(k.endswith("_psnr") for k in r if k != "psnr") and r["train_time"] <= seconds]
    return val[-1] if val else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=25)
    parser.add_argument("--unseen", type=int, default=5)
    parser.add_argument("--views", type=int, default=30)
    parser.add_argument("--res", type=int, default=48)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--finetune-steps", type=int, default=1000)
    parser.add_argument("--ablation-steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("/tmp/recon_gpf_bench"))
    args = parser.parse_args()
    t = args.threads
    root, runs, started = args.out / "scenes", args.out / "runs", time.perf_counter()
    if not root.exists():
        seconds = recon("data", "synth", "--format", "blender", "--scenes", args.scenes, "--unseen", args.unseen, "--views", args.views,
                        "--res", args.res, "--out", root, threads=t)
        print(f"generated {args.scenes} scenes ({args.views} views, {args.res} px) in {seconds:.0f} s", flush=True)
    unseen = [root / name for name in (root / "scenes_test.txt").read_text().split()]

    def train_gpf(name: str, steps: int, *extra) -> Path:
        run = runs / name
        if not (run / "checkpoints").is_dir():
            recon("train", "gpf", "--data", root, "--preset", "fast", "--max-steps", steps, "--set", f"eval_every={steps}",
                  "--set", f"checkpoint_every={steps}", "--set", "eval_views=2", "--out", run, "--quiet", *extra, threads=t)
        return run

    general = train_gpf("general", args.steps)
    seconds_per_step = records(general)[-1]["train_time"] / args.steps
    scores = {scene.name: evaluate(general, scene, t) for scene in unseen}
    print(f"generalization ({args.steps} steps, {seconds_per_step:.2f} s/step): "
          + ", ".join(f"{n} {s['psnr']:.2f} dB" for n, s in scores.items()), flush=True)

    target = unseen[0]
    finetuned = runs / "finetuned"
    if not (finetuned / "checkpoints").is_dir():
        recon("train", "gpf", "--finetune", general, "--data", target, "--max-steps", args.finetune_steps, "--set", f"eval_every={args.finetune_steps}",
              "--set", "eval_views=2", "--out", finetuned, "--quiet", threads=t)
    budget = records(finetuned)[-1]["train_time"]
    finetune_score = evaluate(finetuned, None, t)
    baselines = {}
    for method in ("splat", "nerf"):
        run, probe = runs / method, runs / f"{method}-probe"
        if not (run / "checkpoints").is_dir():
            recon("train", method, "--data", target, "--preset", "fast", "--max-steps", 30, "--out", probe, "--quiet", "--restart", threads=t)
            steps = int(budget / (records(probe)[-1]["train_time"] / 30) * 1.1) + 1
            recon("train", method, "--data", target, "--preset", "fast", "--max-steps", steps, "--set", f"eval_every={max(steps // 10, 1)}",
                  "--set", "eval_views=2", "--out", run, "--quiet", threads=t)
        baselines[method] = within(run, budget)
        print(f"{method} fast within {budget:.0f} s: {baselines[method]}", flush=True)

    ablation = {}
    for sampling in ("log", "surface", "uniform"):
        run = train_gpf(f"sampling-{sampling}", args.ablation_steps, "--set", f"sampling={sampling}")
        ablation[sampling] = statistics.mean(evaluate(run, scene, t)["psnr"] for scene in unseen)
        print(f"sampling {sampling}: {ablation[sampling]:.2f} dB on the unseen scenes", flush=True)

    objects = json.loads((target / "recon_gt" / "objects.json").read_text())
    moved = objects[0]["instance_id"]
    recon("gpf", "edit", finetuned, "--move", moved, 0, 0, 0.6, "--duplicate", moved, 0.8, 0, 0, "--frames", 30, "--out", args.out / "edit", threads=t)

    mean = {k: statistics.mean(s[k] for s in scores.values()) for k in ("psnr", "ssim", "fps")}
    print(f"\n{args.scenes - args.unseen} training and {args.unseen} unseen generated scenes ({args.views} views, {args.res} px), {t} threads\n")
    print("| | PSNR | SSIM | render FPS | training |")
    print("|---|---|---|---|---|")
    print(f"| GPF generalization, {args.unseen} unseen scenes (mean) | {mean['psnr']:.2f} | {mean['ssim']:.3f} | {mean['fps']:.2f} | {args.steps} steps across scenes |")
    print(f"| GPF finetuned, {target.name} | {finetune_score['psnr']:.2f} | {finetune_score['ssim']:.3f} | {finetune_score['fps']:.2f} | {args.finetune_steps} steps, {budget:.0f} s |")
    print(f"| GPF generalization, {target.name} | {scores[target.name]['psnr']:.2f} | {scores[target.name]['ssim']:.3f} | {scores[target.name]['fps']:.2f} | none on this scene |")
    for method, record in baselines.items():
        psnr = next((v for k, v in record.items() if k.endswith("_psnr")), float("nan"))
        print(f"| {method} fast, {target.name}, same {budget:.0f} s | {psnr:.2f} (val) | – | – | {record.get('step', 0)} steps |")
    print("\n| sampling (equal samples per ray) | PSNR on unseen scenes |\n|---|---|")
    for sampling, psnr in ablation.items():
        print(f"| {sampling} | {psnr:.2f} |")
    (args.out / "gpf.json").write_text(json.dumps({"generalization": scores, "finetuned": finetune_score, "budget_s": budget, "baselines": baselines,
                                                   "ablation": ablation, "seconds_per_step": seconds_per_step}, indent=1))
    print(f"\nedit: {args.out / 'edit'}; total {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
