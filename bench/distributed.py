"""Data-parallel scaling: one process against `torchrun --nproc-per-node N` (gloo on CPUs, NCCL on
GPUs), with the per-rank batch fixed (weak scaling), on a generated Blender-format scene.

Usage: python bench/distributed.py [--nproc 2] [--repeats 3] [--steps 100] [--warmup 20] [--res 64]
                                   [--methods nerf splat] [--out DIR]

For each method the runs alternate, --repeats rounds:
  1 process × 1 thread, batch B                     the baseline
  N processes × 1 thread each, batch B per rank     global batch N·B (recon.distributed)
  1 process × N threads, batch N·B                  what the same cores do without torch.distributed
B: nerf `fast` 1024 rays per step, splat `fast` 1 view per step. Speed is items of the global batch
(rays or views) per second of training-step time (metrics.jsonl's train_time, rank 0's, from the
step after --warmup to the last), and steps/s = speed / global batch; medians over the rounds. Scaling efficiency =
speed(N processes) / (N × speed(1 process)). On a machine with N GPUs each rank gets one and the
thread counts do not matter.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from data.synth import generate

BATCH = {"nerf": ("rays_per_batch", 1024), "splat": ("batch_size", 1)}  # the per-rank batch setting and B


def train(method: str, scene: Path, out: Path, *, processes: int, threads: int, batch: int, steps: int, log_every: int) -> list[dict]:
    """Train `method` for `steps` steps; its training lines of metrics.jsonl."""
    setting, _ = BATCH[method]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)] if processes > 1 else [sys.executable]
    command = [*launcher, "-m", "recon.cli", "--threads", str(threads), "train", method, "--data", str(scene), "--preset", "fast",
               "--max-steps", str(steps), "--set", f"{setting}={batch}", "--set", f"log_every={log_every}", "--quiet", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def speed(records: list[dict], warmup: int, items_per_step: int) -> float:
    """Global-batch items per second of step time between the first logged step after `warmup` and the last."""
    first = next(r for r in records if r["step"] > warmup)
    last = records[-1]
    return items_per_step * (last["step"] - first["step"]) / (last["train_time"] - first["train_time"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--res", type=int, default=64)
    parser.add_argument("--methods", nargs="+", default=list(BATCH), choices=list(BATCH))
    parser.add_argument("--out", type=Path, default=None, help="where to keep distributed.json (default: print only)")
    args = parser.parse_args()
    n = args.nproc
    with tempfile.TemporaryDirectory() as tmp:
        scene = generate(Path(tmp) / "scene", format="blender", seed=0, views=100, res=args.res)
        configs = {"1 process × 1 thread": (1, 1, 1), f"{n} processes × 1 thread": (n, 1, 1), f"1 process × {n} threads": (1, n, n)}  # (processes, threads, batch × B)
        results = {}
        for method in args.methods:
            unit = "rays/s" if method == "nerf" else "views/s"
            _, per_rank = BATCH[method]
            speeds = {name: [] for name in configs}
            for round_ in range(args.repeats):
                for name, (processes, threads, multiple) in configs.items():
                    run = Path(tmp) / f"{method}-{round_}-{processes}-{threads}"
                    records = train(method, scene, run, processes=processes, threads=threads, batch=per_rank * multiple, steps=args.steps, log_every=10)
                    speeds[name].append(speed(records, args.warmup, per_rank * multiple * processes))
                    print(f"{method} round {round_ + 1}: {name}: {speeds[name][-1]:,.1f} {unit}", flush=True)
            medians = {name: statistics.median(values) for name, values in speeds.items()}
            base = medians["1 process × 1 thread"]
            steps = {name: medians[name] / (per_rank * multiple * processes) for name, (processes, _, multiple) in configs.items()}
            results[method] = {"unit": unit, "per_rank_batch": per_rank, "runs": speeds, "median": medians, "steps_per_s": steps,
                               "efficiency_processes": medians[f"{n} processes × 1 thread"] / (n * base),
                               "efficiency_threads": medians[f"1 process × {n} threads"] / (n * base)}
    print(f"\n| method | {' | '.join(configs)} | efficiency, {n} processes | efficiency, {n} threads |")
    print("|---" * (len(configs) + 3) + "|")
    for method, r in results.items():
        cells = " | ".join(f"{r['median'][name]:,.1f} {r['unit']}, {r['steps_per_s'][name]:.2f} steps/s" for name in configs)
        print(f"| {method} | {cells} | {r['efficiency_processes']:.2f} | {r['efficiency_threads']:.2f} |")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "distributed.json").write_text(json.dumps({"nproc": n, "steps": args.steps, "res": args.res, "results": results}, indent=1))


if __name__ == "__main__":
    main()
