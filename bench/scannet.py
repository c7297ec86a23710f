"""ScanNet data on this machine: loading 300 frames of a long `.sens` stream (the header scan must be
the only part that grows with the file), peak memory, and the time to generate the synthetic
indoor benchmark.

    python bench/scannet.py [--frames 3000] [--keep 300] [--benchmark-rooms 100 --benchmark-val 30 --workers 2]

The streams are written here with ScanNet's sizes (colour 1296×968 JPEG, depth 640×480 zlib) and
smooth synthetic content; each load runs in its own process (its peak RSS is its own) and keeps
`--keep` evenly spaced frames resized to 320 px wide, with depth brought into the colour camera.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from data.formats.sens import SensFile, SensHeader, write_sens  # noqa: E402

COLOR, DEPTH = (1296, 968), (640, 480)


def write_stream(path: Path, frames: int) -> None:
    """A .sens of `frames` frames with ScanNet's image sizes and slowly moving smooth content
    (frames are made one at a time as the writer asks for them)."""
    K, K_depth = np.eye(4, dtype=np.float32), np.eye(4, dtype=np.float32)
    K[0, 0], K[1, 1], K[0, 2], K[1, 2] = 1170.0, 1170.0, 648.0, 484.0
    K_depth[0, 0], K_depth[1, 1], K_depth[0, 2], K_depth[1, 2] = 577.0, 577.0, 320.0, 240.0
    y, x = np.mgrid[0:COLOR[1], 0:COLOR[0]].astype(np.float32)
    dy, dx = np.mgrid[0:DEPTH[1], 0:DEPTH[0]].astype(np.float32)
    poses = np.repeat(np.eye(4, dtype=np.float32)[None], frames, 0)
    poses[:, 0, 3] = np.linspace(0, 3, frames)
    colors = (np.stack([(128 + 100 * np.sin((x + 7 * i) / 60 + c) * np.cos(y / 80)).astype(np.uint8) for c in range(3)], -1) for i in range(frames))
    depths = ((2.0 + np.sin((dx + i) / 90) * np.cos(dy / 70)).astype(np.float32) for i in range(frames))
    write_sens(path, SensHeader(K, K_depth, COLOR, DEPTH), poses, colors, depths)


def load_part(folder: Path, keep: int) -> dict:
    """Header scan time, load time of `keep` frames and this process's peak RSS."""
    from data.formats.scannet import load_scannet

    tic = time.perf_counter()
    frames = len(SensFile(folder / f"{folder.name}.sens"))
    scan = time.perf_counter() - tic
    tic = time.perf_counter()
    scene = load_scannet(folder, max_frames=keep, width=320)
    seconds = time.perf_counter() - tic
    return {"frames": frames, "header_scan_s": scan, "load_s": seconds, "views": scene.num_views, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=3000, help="frames of the long stream")
    parser.add_argument("--keep", type=int, default=300, help="frames loaded")
    parser.add_argument("--benchmark-rooms", type=int, default=0, help="also time `recon data synth --format scannet` with this many training rooms")
    parser.add_argument("--benchmark-val", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--part", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        print(json.dumps(load_part(Path(args.part), args.keep)))
        return

    with tempfile.TemporaryDirectory() as folder:
        rows = []
        for frames in (args.keep, args.frames):
            scene = Path(folder) / f"scene{frames:04d}_00"
            scene.mkdir()
            tic = time.perf_counter()
            write_stream(scene / f"{scene.name}.sens", frames)
            written = time.perf_counter() - tic
            result = json.loads(subprocess.run([sys.executable, __file__, "--part", str(scene), "--keep", str(args.keep)], capture_output=True, text=True, check=True).stdout.splitlines()[-1])
            rows.append({**result, "file_mb": (scene / f"{scene.name}.sens").stat().st_size / 2**20, "write_s": written})
            (scene / f"{scene.name}.sens").unlink()
        print(f"\n## Loading {args.keep} frames (colour 1296×968 JPEG → 320×240, depth 640×480 → colour camera), own process each\n")
        print("| stream frames | file MiB | header scan s | load s (scan included) | peak RSS MiB |\n|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['frames']} | {r['file_mb']:.0f} | {r['header_scan_s']:.3f} | {r['load_s']:.2f} | {r['peak_rss_mb']:.0f} |")
        print(f"\nload time ratio long/short stream: {rows[1]['load_s'] / rows[0]['load_s']:.2f} (header scan: {rows[1]['header_scan_s'] - rows[0]['header_scan_s']:.3f} s more)")

    if args.benchmark_rooms:
        with tempfile.TemporaryDirectory() as folder:
            tic = time.perf_counter()
            subprocess.run([sys.executable, "-m", "recon.cli", "data", "synth", "--format", "scannet", "--out", str(Path(folder) / "rooms"), "--rooms", str(args.benchmark_rooms),
                            "--val", str(args.benchmark_val), "--workers", str(args.workers)], check=True, cwd=Path(__file__).resolve().parents[1])
            seconds = time.perf_counter() - tic
            size = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file()) / 2**30
            rooms = args.benchmark_rooms + args.benchmark_val
            print(f"\n## Synthetic benchmark\n\n{rooms} rooms ({args.benchmark_rooms} train / {args.benchmark_val} val, 100 frames at 320×240, {args.workers} workers): "
                  f"{seconds / 60:.1f} min ({seconds / rooms:.1f} s per room), {size:.2f} GiB")


if __name__ == "__main__":
    main()
