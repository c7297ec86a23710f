"""The per-scene training loop shared by every method.

A run directory holds `config.json` (method, preset, data path and options, the resolved config),
`checkpoints/step_XXXXXXX.pt` (the latest only, written atomically), `metrics.jsonl` (training
and validation lines), and `curves.png`. `resume=True` continues from the latest checkpoint with
the same model, optimiser and random state, so the result equals an uninterrupted run.

In a data-parallel job (recon.distributed) every rank runs this loop; rank 0 alone writes the run
directory, validates and shows the progress bar, and the ranks compare their parameters at every
checkpoint.
"""
from __future__ import annotations

import json
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from recon import distributed
from recon.io import CheckpointError, atomic_write, load_checkpoint, save_checkpoint, write_json, write_text
from recon.methods.base import Trainable


RUN_FILES = ("config.json", "metrics.jsonl", "checkpoints")  # what makes a directory hold a run


def holds_run(run_dir: Path) -> bool:
    return any((Path(run_dir) / name).exists() for name in RUN_FILES)


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = sorted((Path(run_dir) / "checkpoints").glob("step_*.pt"))
    return checkpoints[-1] if checkpoints else None


def restore(method: Trainable, path: Path, *, training: bool) -> dict:
    """Load a checkpoint into `method` (and its optimiser state when `training`); returns it."""
    state = load_checkpoint(path)
    if state["method"] != method.name:
        raise CheckpointError(f"{path}: checkpoint is for method {state['method']!r}, not {method.name!r}")
    required = {"model": dict, **({"training": dict, "torch_rng": torch.Tensor, "train_time": (int, float)} if training else {})}
    for key, kind in required.items():
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f"{path}: checkpoint has no valid {key!r} entry")
    try:
        method.load_state_dict(state["model"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: checkpoint does not fit this model ({str(error).splitlines()[0]})") from None
    if bad := {name: count for name, p in method.named_parameters() if (count := int((~p.isfinite()).sum()))}:
        listed = ", ".join(f"{name} {count}" for name, count in bad.items())
        raise CheckpointError(f"{path}: {sum(bad.values())} non-finite parameter values ({listed}); the run diverged before this checkpoint")
    if training:
        try:
            method.load_training_state(state["training"])
        except (KeyError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"{path}: training state does not fit this model ({type(error).__name__}: {error})".splitlines()[0]) from None
    return state


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl; a torn last line (a kill mid-write) is dropped with a warning."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise ValueError("no step")
        except ValueError:
            if number < len(lines):
                raise CheckpointError(f"{path}: line {number} is not a metrics record") from None
            warnings.warn(f"{path}: dropped a torn last line (the run was interrupted while logging)", stacklevel=2)
            break
        records.append(record)
    return records


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete the temporaries of writes that a kill interrupted (`atomic_write` names them .NAME.*.tmp*)."""
    for folder in (run_dir, run_dir / "checkpoints"):
        for tmp in folder.glob(".*.tmp*"):
            tmp.unlink()


class Trainer:
    def __init__(self, method: Trainable, run_dir: Path, run_info: dict) -> None:
        self.method = method
        self.run_dir = Path(run_dir)
        self.run_info = run_info  # method, preset, data, data_options: written to config.json
        self.metrics_path = self.run_dir / "metrics.jsonl"

    def run(self, *, resume: bool = False, quiet: bool = False, viewer=None) -> dict[str, float]:
        """Train to config.max_steps; returns the last validation metrics. With a `viewer`
        (viewer.Viewer) each step runs inside `viewer.training_step()` and reports `viewer.update(step, stats)`."""
        config = self.method.config
        main = distributed.world().main  # writes the run directory
        start_step, train_time = 0, 0.0
        if resume:
            checkpoint = latest_checkpoint(self.run_dir)
            if checkpoint is None:
                raise CheckpointError(f"{self.run_dir}: --resume given but no checkpoint in {self.run_dir / 'checkpoints'}")
            state = restore(self.method, checkpoint, training=True)
            start_step, train_time = state["step"], state["train_time"]
            if start_step > config.max_steps:
                raise CheckpointError(f"{checkpoint}: the run is at step {start_step}, past max_steps={config.max_steps} (--max-steps extends a run)")
            torch.set_rng_state(state["torch_rng"])
            if main and state.get("world_size", 1) != distributed.world().size:
                warnings.warn(f"{checkpoint}: trained on {state.get('world_size', 1)} processes, resumed on {distributed.world().size}: "
                              "per-process batch settings (rays_per_batch, batch_size, ...) now give another global batch", stacklevel=2)
            if main:
                remove_stale_temporaries(self.run_dir)
                self._truncate_metrics(start_step)
        else:
            if main and holds_run(self.run_dir):
                raise CheckpointError(f"{self.run_dir}: already holds a run (resume it, or train into another directory)")
            torch.manual_seed(config.seed)
            if main:
                self.run_dir.mkdir(parents=True, exist_ok=True)
        distributed.broadcast_module(self.method)
        if main:
            write_json(self.run_dir / "config.json", {**self.run_info, "config": asdict(config)})

        last_eval: dict[str, float] = {}
        step_context = viewer.training_step if viewer is not None else nullcontext
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TextColumn("{task.fields[stats]}"), TimeRemainingColumn()]
        with Progress(*columns, disable=quiet or not main) as progress:
            task = progress.add_task(self.method.name, total=config.max_steps, completed=start_step, stats="")
            for step in range(start_step, config.max_steps):
                self.method.train()
                with step_context():  # a viewer's pause and model lock (only train_step changes the model)
                    tic = time.perf_counter()
                    stats = distributed.reduce_stats(self.method.train_step(step))
                    elapsed = time.perf_counter() - tic
                train_time += elapsed
                done = step + 1
                speed = {"rays_per_s": stats["rays"] / max(elapsed, 1e-9)} if "rays" in stats else {"steps_per_s": 1 / max(elapsed, 1e-9)}
                progress.update(task, completed=done, stats=self.method.progress_text({**stats, **speed}))
                validating = done % config.eval_every == 0 or done == config.max_steps
                saving = done % config.checkpoint_every == 0 or done == config.max_steps
                if saving:
                    distributed.check_identical(self.method, done)
                if main:
                    self.method.write_artifacts(self.run_dir)
                    if done % config.log_every == 0 or done == config.max_steps:
                        self._log({"step": done, "train_time": round(train_time, 3), **{k: round(v, 5) for k, v in {**stats, **speed}.items()}})
                    if validating:
                        last_eval = self.validate(done, train_time)
                    if saving:
                        self.save(done, train_time)
                    if viewer is not None:
                        viewer.update(done, {**stats, **speed})
                if validating or saving:
                    distributed.wait_for_main()
        if main:
            self.plot_curves()
        return last_eval

    def validate(self, step: int, train_time: float) -> dict[str, float]:
        """The method's validation metrics (e.g. val_psnr, val_mAP@0.25), logged with the step."""
        values = self.method.validation_metrics()
        if not values:
            return {}
        result = {"step": step, "train_time": round(train_time, 3), **values}
        self._log(result)
        return result

    def save(self, step: int, train_time: float) -> None:
        previous = latest_checkpoint(self.run_dir)
        path = self.run_dir / "checkpoints" / f"step_{step:07d}.pt"
        save_checkpoint(path, {
            "method": self.method.name,
            "step": step,
            "train_time": train_time,
            "world_size": distributed.world().size,  # the global batch is the per-process batch × this
            "model": self.method.state_dict(),
            "training": self.method.training_state(),
            "torch_rng": torch.get_rng_state(),
        })
        if previous is not None and previous != path:
            previous.unlink()

    def _log(self, record: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _truncate_metrics(self, step: int) -> None:
        """Drop lines logged after the checkpoint we resume from (they will be logged again)."""
        if self.metrics_path.exists():
            kept = [record for record in read_metrics(self.metrics_path) if record["step"] <= step]
            write_text(self.metrics_path, "".join(json.dumps(record) + "\n" for record in kept))

    def plot_curves(self) -> None:
        """curves.png: the training loss (and PSNR when logged), and each validation metric, against the step."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        records = read_metrics(self.metrics_path)
        train = [r for r in records if "loss" in r]
        val = [r for r in records if "loss" not in r]
        fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 4))
        ax_loss.semilogy([r["step"] for r in train], [r["loss"] for r in train])
        ax_loss.set(xlabel="step", ylabel="loss", title="training loss")
        if train and "psnr" in train[0]:
            ax_val.plot([r["step"] for r in train], [r["psnr"] for r in train], label="train psnr (batch)")
        for key in dict.fromkeys(k for r in val for k in r if k not in ("step", "train_time")):
            shown = [r for r in val if key in r]
            ax_val.plot([r["step"] for r in shown], [r[key] for r in shown], "o-", label=key)
        ax_val.set(xlabel="step", title="validation")
        if ax_val.lines:
            ax_val.legend()
        fig.tight_layout()
        atomic_write(self.run_dir / "curves.png", lambda tmp: fig.savefig(tmp, dpi=80))
        plt.close(fig)
