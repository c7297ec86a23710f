"""Training speed with the viewer open but idle vs without it (the target: within 10%).

Each method (3DGS and NeRF, fast presets, on a generated scene) trains the same steps from the
same seed in each mode, the modes alternating run by run; the script prints the median wall time
of `Trainer.run` per mode and its ratio to "off":
- off: no viewer;
- server: the viewer running, nobody connected;
- browser: headless Chromium connected with a still camera, so the viewer re-renders the view as
  the model changes (at most `render_share` of the time). Its WebGL runs in software on the same
  cores, so this mode also pays for the browser itself (~0.1 core here).

Usage: python bench/viewer_overhead.py [--threads 2] [--reps 3] [--res 128] [--splat-steps 300]
       [--nerf-steps 150] [--no-browser] [--methods splat,nerf]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import data  # noqa: E402
from data.synth import generate  # noqa: E402
from recon.methods.nerf import Nerf  # noqa: E402
from recon.methods.splat import Splat  # noqa: E402
from recon.trainer import Trainer  # noqa: E402
from viewer import Viewer  # noqa: E402


def timed_run(method_cls, config, scene, mode: str, browser) -> float:
    """Wall seconds of one training run in `mode` (off | server | browser)."""
    torch.manual_seed(config.seed)
    method = method_cls(config, scene)
    viewer = page = None
    if mode != "off":
        with contextlib.redirect_stdout(io.StringIO()):  # viser's banner
            viewer = Viewer(method, training=True)
    if mode == "browser":
        page = browser.new_page(viewport={"width": 800, "height": 600})
        page.goto(viewer.url)
        while not viewer.server.get_clients():
            time.sleep(0.1)
        time.sleep(2.0)  # the page has loaded and shows its first frame
    with tempfile.TemporaryDirectory() as run_dir:
        tic = time.perf_counter()
        Trainer(method, Path(run_dir), {}).run(quiet=True, viewer=viewer)
        seconds = time.perf_counter() - tic
    if page is not None:
        page.close()
    if viewer is not None:
        with contextlib.redirect_stdout(io.StringIO()):
            viewer.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--res", type=int, default=128)
    parser.add_argument("--splat-steps", type=int, default=300)
    parser.add_argument("--nerf-steps", type=int, default=150)
    parser.add_argument("--no-browser", action="store_true", help="skip the browser mode")
    parser.add_argument("--methods", default="splat,nerf", help="comma-separated subset of splat,nerf")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        scene = data.load(generate(Path(tmp) / "scene", format="blender", seed=0, views=50, res=args.res))
    runs = {
        "splat": (Splat, replace(Splat.presets["fast"], max_steps=args.splat_steps, eval_every=args.splat_steps, checkpoint_every=args.splat_steps)),
        "nerf": (Nerf, replace(Nerf.presets["fast"], max_steps=args.nerf_steps, eval_every=args.nerf_steps, checkpoint_every=args.nerf_steps)),
    }
    modes = ["off", "server"] + ([] if args.no_browser else ["browser"])
    print(f"viewer overhead: {args.threads} threads, scene {scene.width}x{scene.height}, {args.reps} runs per mode (alternating), median wall seconds")
    with contextlib.ExitStack() as stack:
        browser = None
        if "browser" in modes:
            from playwright.sync_api import sync_playwright

            chromium = shutil.which("chromium") or "/usr/bin/chromium"
            browser = stack.enter_context(sync_playwright()).chromium.launch(
                executable_path=chromium, args=["--headless=new", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader"])
        for name in args.methods.split(","):
            method_cls, config = runs[name]
            timed_run(method_cls, replace(config, max_steps=5, eval_every=5, checkpoint_every=5), scene, "off", browser)  # warm-up
            seconds = {mode: [] for mode in modes}
            for _ in range(args.reps):
                for mode in modes:
                    seconds[mode].append(timed_run(method_cls, config, scene, mode, browser))
            base = statistics.median(seconds["off"])
            cells = [f"{mode} {statistics.median(s):.2f} s ({statistics.median(s) / base - 1:+.1%})" for mode, s in seconds.items()]
            print(f"{name:5s} {config.max_steps} steps: " + ", ".join(cells))
            print(f"      all runs: " + "; ".join(f"{mode} " + " ".join(f"{t:.2f}" for t in s) for mode, s in seconds.items()))


if __name__ == "__main__":
    main()
