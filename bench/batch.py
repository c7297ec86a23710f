"""Many scenes at once: the wall time of `recon batch train` over generated scenes, one scene at a time
on every core against one scene per core, on the local Ray runtime (and its overhead against a
process pool).

Usage: python bench/batch.py [--scenes 4] [--cores 2] [--method splat] [--steps 300] [--res 64] [--repeats 2]

Runs alternate, --repeats rounds, each into a fresh RUNS_ROOT (nothing skipped):
  ray, 1 worker × C cores      scenes one after another, each with all C torch threads
  ray, C workers × 1 core      C scenes at once, one thread each
  processes, C workers × 1 core  the same without Ray (a spawned process pool)
The median wall seconds (training, evaluation and start-up) of each, and the speed-ups, are printed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from data.synth import generate


def batch(root: Path, out: Path, method: str, steps: int, workers: int, cores: int, ray: bool) -> float:
    """Wall seconds of one `recon batch train` over ROOT/*."""
    command = [sys.executable, "-m", "recon.cli", "batch", "train", method, "--scenes", str(root / "*"), "--preset", "fast",
               "--max-steps", str(steps), "--out", str(out), "--workers", str(workers), "--cpus-per-job", str(cores), *([] if ray else ["--no-ray"])]
    tic = time.perf_counter()
    subprocess.run(command, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}, check=True, capture_output=True, text=True)
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--method", default="splat")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--res", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    c = args.cores
    configs = {f"ray, 1 worker × {c} cores": (1, c, True), f"ray, {c} workers × 1 core": (c, 1, True), f"processes, {c} workers × 1 core": (c, 1, False)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "scenes"
        for k in range(args.scenes):
            generate(root / f"scene_{k:03d}", format="blender", seed=k, views=30, res=args.res)
        seconds = {name: [] for name in configs}
        for round_ in range(args.repeats):
            for name, (workers, cores, ray) in configs.items():
                seconds[name].append(batch(root, Path(tmp) / f"runs-{round_}-{len(seconds[name])}-{workers}-{ray}", args.method, args.steps, workers, cores, ray))
                print(f"round {round_ + 1}: {name}: {seconds[name][-1]:.1f} s", flush=True)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    first = next(iter(medians.values()))
    print(f"\n{args.scenes} scenes, {args.method} fast, {args.steps} steps at {args.res}² (median wall seconds of {args.repeats} rounds)")
    for name, value in medians.items():
        print(f"| {name} | {value:.1f} s | {first / value:.2f}× |")


if __name__ == "__main__":
    main()
