"""`recon detect reconstruct`: one 3DGS reconstruction per ScanNet scene (with or without boundary
guidance), the detector's input. Idempotent: a scene whose `export/point_cloud.ply` exists is
skipped, one with a checkpoint resumes from it; scenes run in parallel processes.

    RECON_ROOT/<scene>/            a `splat` run directory (config.json, checkpoints/, metrics.jsonl, ...)
    RECON_ROOT/<scene>/export/point_cloud.ply   the Gaussians (standard 3DGS .ply)
    RECON_ROOT/reconstruct.json    per scene: status, Gaussians, test PSNR, seconds
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch

EXPORT = Path("export") / "point_cloud.ply"


def reconstruct_scene(job: dict) -> dict:
    """Train (or resume, or skip) one scene's 3DGS; returns its summary row."""
    from recon.methods.splat import Splat
    from recon.runs import apply_overrides, preset_config
    from recon.trainer import Trainer, holds_run, latest_checkpoint

    scene_dir, run_dir = Path(job["scene"]), Path(job["run_dir"])
    row = {"scene": scene_dir.name}
    if (run_dir / EXPORT).is_file():
        return {**row, "status": "skipped"}
    torch.set_num_threads(job["threads"])
    config = apply_overrides(preset_config(Splat, job["preset"]), {**job["overrides"], "guidance": job["guidance"]})
    info = {"method": Splat.name, "preset": job["preset"], "data": str(scene_dir.resolve()), "data_options": job["data_options"]}
    resume = holds_run(run_dir) and latest_checkpoint(run_dir) is not None
    tic = time.perf_counter()
    try:
        torch.manual_seed(config.seed)
        method = Splat(config, Splat.load_scene(config, info), device="cpu")
        result = Trainer(method, run_dir, info).run(resume=resume, quiet=True)
        method.export_ply(run_dir / EXPORT)
    except Exception as error:  # noqa: BLE001 — one failing scene is reported, the others go on
        return {**row, "status": "failed", "error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}
    return {**row, "status": "resumed" if resume else "trained", "gaussians": method.num_gaussians,
            "test_psnr": result.get("test_psnr"), "seconds": round(time.perf_counter() - tic, 1)}


def reconstruct(scenes: list[Path], out_root: Path, *, guidance: str, preset: str = "fast", overrides: dict[str, str] | None = None,
                data_options: dict | None = None, workers: int = 1, progress=None) -> list[dict]:
    """Reconstruct every scene into out_root/<scene>/ with `workers` processes (threads shared among them)."""
    threads = max(1, (os.cpu_count() or 1) // max(workers, 1))
    jobs = [{"scene": str(s), "run_dir": str(Path(out_root) / s.name), "guidance": guidance, "preset": preset, "overrides": dict(overrides or {}),
             "data_options": dict(data_options or {}), "threads": threads} for s in scenes]
    rows = []
    if workers > 1:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(workers) as pool:
            for future in as_completed([pool.submit(reconstruct_scene, job) for job in jobs]):
                rows.append(future.result())
                if progress is not None:
                    progress(rows[-1])
    else:
        for job in jobs:
            rows.append(reconstruct_scene(job))
            if progress is not None:
                progress(rows[-1])
    return sorted(rows, key=lambda r: r["scene"])
