"""`recon detect reconstruct`: one 3DGS reconstruction per ScanNet scene (with or without boundary
guidance), the detector's input: `recon.batch`'s jobs (a splat run exported, not evaluated), so
finished scenes are skipped, interrupted ones resume from their checkpoint, a failing scene is
reported without stopping the others, and `workers` > 1 runs scenes in parallel (on Ray when
installed, else in a process pool).

    RECON_ROOT/<scene>/            a `splat` run directory (config.json, checkpoints/, metrics.jsonl, ...)
    RECON_ROOT/<scene>/export/point_cloud.ply   the Gaussians (standard 3DGS .ply)
    RECON_ROOT/reconstruct.json    per scene: status, Gaussians, the last validation PSNR, train time, seconds
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from recon.batch import EXPORT, choose_engine, make_jobs, run_jobs

__all__ = ["EXPORT", "reconstruct"]


def reconstruct(scenes: list[Path], out_root: Path, *, guidance: str, preset: str = "fast", overrides: dict[str, str] | None = None,
                data_options: dict | None = None, workers: int = 1, progress=None) -> list[dict]:
    """Reconstruct every scene into out_root/<scene>/ (in this process, or `workers` at once sharing
    the cores); rows sorted by scene, each as `progress(row)` when it ends."""
    engine = choose_engine(workers)  # the cores shared among the workers
    if engine.workers == 1:
        engine = replace(engine, kind="inline")
    jobs = make_jobs(scenes, out_root, "splat", engine, preset=preset, overrides={**(overrides or {}), "guidance": guidance},
                     data_options=dict(data_options or {}), evaluate=False, export=True)
    return run_jobs(jobs, engine, progress)
