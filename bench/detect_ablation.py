"""3DGS-DET's ablation (the card's Tables 3/5/6) on the generated indoor benchmark, through the CLI:

    BP            Gaussians reconstructed without guidance, random sampling
    BP+BG         boundary-guided reconstruction, random sampling
    BP+BG+FPS     boundary-guided, farthest-point sampling
    BP+BG+BS      boundary-guided, box-focused sampling (3DGS-DET)
    GT bound      boundary-guided, sampling by the ground-truth boxes (BS's upper bound)

    python bench/detect_ablation.py [--rooms 8 --val 4 --frames 40 --res 160 --splat-steps 600
                                     --steps 300 --points 20000 --workers 2 --out DIR]

Rooms are generated (`recon data synth --format scannet`), reconstructed twice (`recon detect
reconstruct --guidance none|boundary`, preset fast), then each row trains a detector (`recon detect
train --preset cpu`) and is scored on the val rooms (`recon detect eval RUN`). Printed: mAP@0.25 and
mAP@0.5 with per-class AP@0.25 per row; then the detector's time per epoch, Gaussians per scene
before and after sampling, and inference ms per scene (the trained detector on each val scene,
sampling included, median). Everything runs on this machine's CPU with `--threads` torch threads.
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROWS = {  # name: (reconstruction, sampling)
    "BP": ("none", "random"),
    "BP+BG": ("boundary", "random"),
    "BP+BG+FPS": ("boundary", "fps"),
    "BP+BG+BS": ("boundary", "box"),
    "GT bound": ("boundary", "gt"),
}


def recon(*args, threads: int) -> float:
    """Run `recon --threads T ARGS` in its own process; returns its wall time (raises on failure)."""
    tic = time.perf_counter()
    subprocess.run([sys.executable, "-m", "recon.cli", "--threads", str(threads), *map(str, args)], check=True, cwd=Path(__file__).resolve().parents[1])
    return time.perf_counter() - tic


def inference(run: Path, threads: int) -> tuple[list[float], list[int], int]:
    """(ms per val scene, Gaussians per val scene, points the detector sees) of a trained run."""
    import torch

    from detect.training import open_detection_run

    torch.set_num_threads(threads)
    method, _ = open_detection_run(run, "cpu")
    times = []
    for scene in method.data.val:
        tic = time.perf_counter()
        method.predict([scene])
        times.append(1000 * (time.perf_counter() - tic))
    return times, [len(s.means) for s in method.data.val], method.config.num_points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rooms", type=int, default=8)
    parser.add_argument("--val", type=int, default=4)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--res", type=int, default=160)
    parser.add_argument("--splat-steps", type=int, default=600)
    parser.add_argument("--steps", type=int, default=300, help="detector steps per row")
    parser.add_argument("--points", type=int, default=20_000, help="Gaussians sampled per scene (below the scenes' counts, so sampling matters)")
    parser.add_argument("--workers", type=int, default=2, help="rooms generated and reconstructed in parallel processes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--out", type=Path, default=Path("/tmp/recon_detect_ablation"))
    args = parser.parse_args()

    rooms, started = args.out / "rooms", time.perf_counter()
    if not rooms.exists():
        seconds = recon("data", "synth", "--format", "scannet", "--out", rooms, "--rooms", args.rooms, "--val", args.val, "--frames", args.frames,
                        "--res", args.res, "--seed", args.seed, "--workers", args.workers, threads=args.threads)
        print(f"generated {args.rooms}+{args.val} rooms ({args.frames} frames, {args.res} px) in {seconds:.0f} s", flush=True)
    for guidance in sorted({ROWS[row][0] for row in args.rows}):
        seconds = recon("detect", "reconstruct", "--data", rooms, "--out", args.out / f"recon-{guidance}", "--guidance", guidance, "--preset", "fast",
                        "--set", f"max_steps={args.splat_steps}", "--set", "eval_views=1", "--workers", args.workers, threads=args.threads)
        print(f"reconstructed ({guidance} guidance) in {seconds:.0f} s", flush=True)

    results = {}
    for row in args.rows:
        guidance, sampling = ROWS[row]
        run = args.out / "runs" / row.replace("+", "_").replace(" ", "_")
        if not (run / "eval" / "results.json").is_file():
            if run.exists():
                subprocess.run(["rm", "-rf", str(run)], check=True)
            recon("detect", "train", "--recon", args.out / f"recon-{guidance}", "--data", rooms, "--sampling", sampling, "--preset", "cpu",
                  "--max-steps", args.steps, "--set", f"num_points={args.points}", "--set", f"eval_every={args.steps}", "--seed", args.seed,
                  "--out", run, "--quiet", threads=args.threads)
            recon("detect", "eval", run, threads=args.threads)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        train = [r for r in records if "loss" in r]
        seconds_per_step = train[-1]["train_time"] / train[-1]["step"]
        config = json.loads((run / "config.json").read_text())["config"]
        times, gaussians, points = inference(run, args.threads)
        results[row] = {
            **json.loads((run / "eval" / "results.json").read_text()), "seconds_per_step": seconds_per_step,
            "epoch_s": seconds_per_step * -(-args.rooms // config["batch_size"]), "inference_ms": statistics.median(times),
            "gaussians": statistics.median(gaussians), "sampled": statistics.median(min(g, points) for g in gaussians),
        }
        print(f"{row}: mAP@0.25 {100 * results[row]['mAP@0.25']:.1f}, mAP@0.5 {100 * results[row]['mAP@0.5']:.1f}", flush=True)

    classes = sorted({c for r in results.values() for c in r["classes"]})
    print(f"\n{args.rooms} training and {args.val} val rooms, {args.frames} frames at {args.res} px; 3DGS fast preset, {args.splat_steps} steps; "
          f"detector cpu preset, {args.steps} steps, {args.points:,} Gaussians sampled per scene; AP in %\n")
    print("| row | mAP@0.25 | mAP@0.5 | " + " | ".join(classes) + " |")
    print("|---|---|---|" + "---|" * len(classes))
    for row, r in results.items():
        per_class = " | ".join(f"{100 * r['AP@0.25'][c]:.1f}" if c in r["AP@0.25"] else "–" for c in classes)
        print(f"| {row} | {100 * r['mAP@0.25']:.1f} | {100 * r['mAP@0.5']:.1f} | {per_class} |")
    print("\n| row | s/step | s/epoch | Gaussians per scene (median) | after sampling | inference ms/scene (median) |")
    print("|---|---|---|---|---|---|")
    for row, r in results.items():
        print(f"| {row} | {r['seconds_per_step']:.2f} | {r['epoch_s']:.1f} | {r['gaussians']:,.0f} | {r['sampled']:,.0f} | {r['inference_ms']:.0f} |")
    (args.out / "ablation.json").write_text(json.dumps(results, indent=1))
    print(f"\ntotal {(time.perf_counter() - started) / 60:.1f} min -> {args.out / 'ablation.json'}")


if __name__ == "__main__":
    main()
