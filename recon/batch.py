"""Many independent per-scene jobs (`recon batch train|prepare`, `recon eval-suite`, `recon detect reconstruct`).

A job trains one scene into its own run directory, then writes its products: `eval/` on the test
split (as `recon eval`) and/or `export/point_cloud.ply`; or (task "scaffold") fuses GPF's point
scaffold of one scene into a cache folder that GPF runs read (`scaffolds=FOLDER`). Jobs are
idempotent: a run whose checkpoint is at max_steps and whose products exist is skipped, a run with
an earlier checkpoint resumes from it (a cached scaffold is skipped), and a failing job is a row
with status "failed" and its error that never stops the others. An `Engine` runs the jobs as Ray tasks (a local Ray runtime, or the cluster at
`address`), in a local pool of spawned processes, or one after another in this process.

    RUNS_ROOT/<scene>/                   a run directory (config.json, checkpoints/, metrics.jsonl, eval/, export/)
    RUNS_ROOT/summary.json, summary.md   per scene: status, PSNR, SSIM, LPIPS, train time, render FPS, seconds, error
"""
from __future__ import annotations

import glob
import importlib.util
import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from recon.io import write_json, write_text

EXPORT = Path("export") / "point_cloud.ply"
RESULTS = Path("eval") / "results.json"
RAY_HINT = "recon: Ray is not installed; the jobs run in a local process pool (pip install -e '.[cluster]' for Ray)"


@dataclass(frozen=True)
class Job:
    """One scene's work; picklable (it travels to Ray workers and spawned processes)."""

    scene: str  # dataset folder (data.load)
    run_dir: str
    method: str
    preset: str = "default"
    overrides: dict = field(default_factory=dict)  # --set KEY=VALUE, values as text
    data_options: dict = field(default_factory=dict)
    threads: int = 1  # torch CPU threads
    gpus: float = 0  # > 0: train on CUDA when the worker has it
    evaluate: bool = True  # eval/ on the test split
    export: bool = False  # export/point_cloud.ply (Gaussian methods)
    task: str = "train"  # "train", or "scaffold": GPF's point scaffold into the folder above run_dir


@dataclass(frozen=True)
class Engine:
    """Where jobs run: "ray" (a local Ray runtime of workers × cpus_per_job CPUs, or the cluster at
    `address`), "processes" (`workers` spawned processes) or "inline" (in this process)."""

    kind: str = "inline"
    workers: int = 1
    cpus_per_job: int = 1
    gpus_per_job: float = 0
    address: str | None = None


def choose_engine(workers: int, cpus_per_job: int | None = None, gpus_per_job: float = 0, address: str | None = None, no_ray: bool = False) -> Engine:
    """Ray when importable (and not `no_ray`), else a process pool; ValueError naming a bad option.
    cpus_per_job defaults to this machine's cores shared among the workers."""
    if workers < 1:
        raise ValueError(f"--workers {workers}: expected a positive number")
    cpus = cpus_per_job if cpus_per_job is not None else max(1, (os.cpu_count() or 1) // workers)
    if cpus < 1:
        raise ValueError(f"--cpus-per-job {cpus}: expected a positive number")
    if not gpus_per_job >= 0:
        raise ValueError(f"--gpus-per-job {gpus_per_job}: expected a number ≥ 0")
    if address is None and gpus_per_job > torch.cuda.device_count():  # a local Ray task asking for more would never start
        raise ValueError(f"--gpus-per-job {gpus_per_job}: this machine has {torch.cuda.device_count()} CUDA GPUs")
    has_ray = importlib.util.find_spec("ray") is not None
    if address is not None and (no_ray or not has_ray):
        raise ValueError(f"--address {address}: joining a Ray cluster needs Ray " + ("(drop --no-ray)" if no_ray else "(pip install -e '.[cluster]')"))
    if gpus_per_job > 0 and (no_ray or not has_ray):
        raise ValueError(f"--gpus-per-job {gpus_per_job}: placing jobs on GPUs needs Ray " + ("(drop --no-ray)" if no_ray else "(pip install -e '.[cluster]')"))
    return Engine("ray" if has_ray and not no_ray else "processes", workers, cpus, gpus_per_job, address)


def find_scenes(pattern: str) -> list[Path]:
    """The dataset folders (`data.is_dataset`) a glob matches, sorted; ValueError naming --scenes
    when there are none or when two share a name (their run directories would collide)."""
    from data.load import is_dataset

    matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(pattern)))
    scenes = [p for p in matches if is_dataset(p)]
    if not scenes:
        found = f"{len(matches)} paths, none a dataset folder recon reads" if matches else "nothing"
        raise ValueError(f"--scenes {pattern}: matches no scene ({found}); quote the glob, e.g. --scenes 'ROOT/*'")
    names = [p.name for p in scenes]
    if clash := next((n for n in names if names.count(n) > 1), None):
        raise ValueError(f"--scenes {pattern}: two scenes are named {clash} (each gets RUNS_ROOT/<name>/)")
    return scenes


def make_jobs(scenes: list[Path], out_root: Path, method: str, engine: Engine, **settings) -> list[Job]:
    """One job per scene into out_root/<scene>/, with the engine's threads and GPUs; `settings`:
    the other Job fields (preset, overrides, data_options, evaluate, export)."""
    return [Job(str(s), str(Path(out_root) / s.name), method, threads=engine.cpus_per_job, gpus=engine.gpus_per_job, **settings) for s in scenes]


def run_job(job: Job) -> dict:
    """Train (or resume, or skip) one scene and write its products; its summary row. Never raises:
    an error is the row's status "failed" and a one-line "error"."""
    tic = time.perf_counter()
    row = {"scene": Path(job.scene).name}
    try:
        if job.task == "scaffold":
            row |= _prepare_scaffold(job)
        else:
            row |= {"status": _train_and_write(job), **run_summary(Path(job.run_dir))}
    except Exception as error:  # noqa: BLE001 — one failing scene is reported, the others go on
        row |= failed(error)
    return {**row, "seconds": round(time.perf_counter() - tic, 1)}


def failed(error: BaseException) -> dict:
    text = str(error).splitlines()[0] if str(error) else ""
    return {"status": "failed", "error": f"{type(error).__name__}: {text}"}


def checkpoint_step(path: Path) -> int:
    """The step of a checkpoint from its name (checkpoints/step_0000030.pt → 30)."""
    return int(path.stem.removeprefix("step_"))


def _train_and_write(job: Job) -> str:
    from recon.evaluate import evaluate
    from recon.methods import find_method
    from recon.runs import apply_overrides, open_run, preset_config, prepare_run_dir
    from recon.trainer import Trainer, latest_checkpoint

    method_cls = find_method(job.method)
    config = apply_overrides(preset_config(method_cls, job.preset), job.overrides)
    run_dir = Path(job.run_dir)
    products = [p for p, wanted in ((RESULTS, job.evaluate), (EXPORT, job.export)) if wanted]
    if (run_dir / "config.json").is_file():
        _check_same_run(run_dir, job, method_cls, config)
    checkpoint = latest_checkpoint(run_dir)
    trained = checkpoint is not None and checkpoint_step(checkpoint) >= config.max_steps
    if trained and all((run_dir / p).is_file() for p in products):
        return "skipped"
    torch.set_num_threads(job.threads)
    device = "cuda" if job.gpus > 0 and torch.cuda.is_available() else "cpu"
    if trained:  # only products are missing (killed while writing them)
        method, _ = open_run(run_dir, device)
    else:
        info = {"method": method_cls.name, "preset": job.preset, "data": str(Path(job.scene).resolve()), "data_options": job.data_options}
        if checkpoint is None:
            prepare_run_dir(run_dir, restart=True)  # a run killed before its first checkpoint is moved aside, not lost
        torch.manual_seed(config.seed)
        method = method_cls.create(config, info, device=device, training=True)
        Trainer(method, run_dir, info).run(resume=checkpoint is not None, quiet=True)
        method.eval()
    if job.export:
        method.export_ply(run_dir / EXPORT)
    if job.evaluate:
        evaluate(method, run_dir / "eval")
    return "resumed" if checkpoint is not None else "trained"


def _check_same_run(run_dir: Path, job: Job, method_cls, config) -> None:
    """ValueError unless run_dir holds this job's run: its method, scene, loader options and settings
    (max_steps may differ: a larger one extends the run), so a rerun never reports another run."""
    from dataclasses import fields

    from recon.methods.base import config_from_dict
    from recon.runs import read_run_info

    info = read_run_info(run_dir)
    if info["method"] != method_cls.name or Path(info["data"]) != Path(job.scene).resolve() or info["data_options"] != job.data_options:
        raise ValueError(f"{run_dir}: holds a {info['method']} run on {info['data']} {info['data_options']}, not this job's; give another --out")
    theirs = replace(config_from_dict(method_cls.Config, info["config"]), max_steps=config.max_steps)
    if changed := [f.name for f in fields(config) if getattr(theirs, f.name) != getattr(config, f.name)]:
        raise ValueError(f"{run_dir}: holds a run made with other settings ({', '.join(changed)}); give another --out, or the same settings")


def _prepare_scaffold(job: Job) -> dict:
    """GPF's point scaffold of job.scene, cached in the folder that holds job.run_dir (skipped when
    there); its status and point count."""
    import data
    from recon.methods.gpf import GPF, PointScene, scaffold_path
    from recon.runs import apply_overrides, preset_config

    config = replace(apply_overrides(preset_config(GPF, job.preset), job.overrides), scaffolds=str(Path(job.run_dir).parent))
    scene = data.load(job.scene, **job.data_options)
    status = "skipped" if scaffold_path(config.scaffolds, scene, config).is_file() else "prepared"
    torch.set_num_threads(job.threads)
    return {"status": status, "points": len(PointScene.prepare(scene, config).points)}


def run_summary(run_dir: Path) -> dict:
    """What a run's files say: train time, Gaussians and the last validation metrics (metrics.jsonl);
    the test split's mean PSNR, SSIM, LPIPS and render FPS (eval/results.json) when evaluated."""
    from recon.trainer import read_metrics

    metrics = run_dir / "metrics.jsonl"
    records = read_metrics(metrics) if metrics.is_file() else []
    train, validation = [r for r in records if "loss" in r], [r for r in records if "loss" not in r]
    summary = {"train_time": records[-1]["train_time"] if records else None}
    if train and "gaussians" in train[-1]:
        summary["gaussians"] = int(train[-1]["gaussians"])
    if validation:
        summary |= {k: v for k, v in validation[-1].items() if k not in ("step", "train_time")}
    if (run_dir / RESULTS).is_file():
        mean = json.loads((run_dir / RESULTS).read_text())["mean"]
        summary |= {k: mean[k] for k in ("psnr", "ssim", "lpips", "fps")}
    return summary


def run_jobs(jobs: list[Job], engine: Engine, progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Run every job on `engine`; their rows sorted by scene. `progress(row)` is called as each ends."""
    rows = []

    def report(row: dict) -> None:
        rows.append(row)
        if progress is not None:
            progress(row)

    if jobs:
        {"ray": _on_ray, "processes": _in_processes, "inline": _inline}[engine.kind](jobs, engine, report)
    return sorted(rows, key=lambda r: r["scene"])


def _on_ray(jobs: list[Job], engine: Engine, report: Callable[[dict], None]) -> None:
    """One Ray task per job (engine.cpus_per_job CPUs, engine.gpus_per_job GPUs), collected as they end."""
    import ray

    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}  # workers' output stays in Ray's logs; errors come back as rows
    if engine.address is not None:
        ray.init(address=engine.address, **quiet)
    else:
        ray.init(address="local", num_cpus=engine.workers * engine.cpus_per_job, include_dashboard=False, **quiet)  # never a running cluster's
    try:
        task = ray.remote(num_cpus=engine.cpus_per_job, num_gpus=engine.gpus_per_job)(run_job)
        pending = {task.remote(job): job for job in jobs}
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ref)
            try:
                report(ray.get(ref))
            except Exception as error:  # noqa: BLE001 — the worker died (killed, out of memory)
                report({"scene": Path(job.scene).name, **failed(error)})
    finally:
        ray.shutdown()


def _in_processes(jobs: list[Job], engine: Engine, report: Callable[[dict], None]) -> None:
    """Jobs in a pool of spawned processes. A worker that dies (killed, out of memory) breaks the whole
    pool, so the jobs it took down run again one per fresh process: only the one that kills its
    process fails (the others resume from their checkpoints)."""
    for job in _pool_round(jobs, engine.workers, report):
        for lost in _pool_round([job], 1, report):
            report({"scene": Path(lost.scene).name, "status": "failed", "error": "its process died (killed, or out of memory)"})


def _pool_round(jobs: list[Job], workers: int, report: Callable[[dict], None]) -> list[Job]:
    """Run `jobs` on `workers` spawned processes, reporting each row; the jobs lost to a broken pool."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    lost = []
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_job, job): job for job in jobs}
        for future in as_completed(futures):
            try:
                report(future.result())
            except BrokenProcessPool:
                lost.append(futures[future])
            except Exception as error:  # noqa: BLE001 — e.g. a job that cannot be sent to its process
                report({"scene": Path(futures[future].scene).name, **failed(error)})
    return lost


def _inline(jobs: list[Job], engine: Engine, report: Callable[[dict], None]) -> None:
    threads = torch.get_num_threads()
    try:
        for job in jobs:
            report(run_job(job))
    finally:
        torch.set_num_threads(threads)  # jobs set their own


# ---- tables -----------------------------------------------------------------------------------------
METRICS = (("PSNR", "psnr", 2), ("SSIM", "ssim", 4), ("LPIPS", "lpips", 4), ("train s", "train_time", 1), ("FPS", "fps", 1))  # (header, key, digits)
SCENE = ("scene", "scene", None)  # digits None: text


def cell(value, digits: int | None, sign: str = "") -> str:
    """A table cell: text as it is (| escaped), a number with `digits` decimals, None as n/a."""
    if digits is None:
        return str(value if value is not None else "").replace("|", "/")
    return "n/a" if value is None else f"{value:{sign}.{digits}f}"


def markdown_table(rows: list[dict], columns: tuple = (SCENE, *METRICS), sign: str = "") -> str:
    """A Markdown table of `rows`, one (header, key, digits) per column; `sign` "+" shows differences."""
    lines = ["| " + " | ".join(header for header, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(key), digits, sign) for _, key, digits in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_summary(out_root: Path, rows: list[dict], metrics: tuple = METRICS, **header) -> None:
    """out_root/summary.json ({**header, "rows": rows}) and summary.md, with the `metrics` columns."""
    write_json(Path(out_root) / "summary.json", {**header, "rows": rows})
    columns = (SCENE, ("status", "status", None), *metrics, ("seconds", "seconds", 1), ("error", "error", None))
    title = ", ".join(f"{k} {v}" for k, v in header.items())
    write_text(Path(out_root) / "summary.md", f"# {title}\n\n" + markdown_table(rows, columns))
