"""Run directories: creating them for training and reopening them for eval, render and the viewer."""
from __future__ import annotations

import json
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

import data
from recon.io import CheckpointError
from recon.methods import find_method
from recon.methods.base import Method, TrainConfig, config_from_dict
from recon.trainer import latest_checkpoint, restore


def default_run_dir(method: str, scene_name: str, root: Path = Path("runs")) -> Path:
    return root / method / scene_name / time.strftime("%Y%m%d-%H%M%S")


def preset_config(method_cls: type[Method], preset: str) -> TrainConfig:
    if preset not in method_cls.presets:
        raise ValueError(f"--preset: {method_cls.name} has no preset {preset!r} (available: {', '.join(method_cls.presets)})")
    return method_cls.presets[preset]


def apply_overrides(config: TrainConfig, overrides: dict[str, str]) -> TrainConfig:
    """`config` with `field=value` overrides, each value parsed as its field's type."""
    types = {f.name: type(getattr(config, f.name)) for f in fields(config)}
    parsed = {}
    for key, text in overrides.items():
        if key not in types:
            raise ValueError(f"--set {key}: no such setting (settings: {', '.join(types)})")
        kind = types[key]
        try:
            parsed[key] = (text.lower() in ("1", "true", "yes")) if kind is bool else kind(text)
        except ValueError:
            raise ValueError(f"--set {key}={text}: expected a {kind.__name__}") from None
    return replace(config, **parsed)


def open_run(run_dir: Path, device: torch.device | str | None = None) -> tuple[Method, dict]:
    """Rebuild the method of a finished (or running) run from its config and latest checkpoint
    (on `device`; default CUDA when present)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: not a run directory (no config.json)")
    try:
        info = json.loads(config_path.read_text())
        method_cls = find_method(info["method"])
    except (json.JSONDecodeError, KeyError, ValueError) as error:
        raise CheckpointError(f"{config_path}: malformed run config ({error})") from None
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise CheckpointError(f"{run_dir / 'checkpoints'}: no checkpoint in this run")
    scene = data.load(info["data"], **info.get("data_options", {}))
    method = method_cls(config_from_dict(method_cls.Config, info["config"]), scene, device=device)
    state = restore(method, checkpoint, training=False)
    method.eval()
    return method, {**info, "step": state["step"], "checkpoint": str(checkpoint)}
