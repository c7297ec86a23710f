"""Run directories: creating them for training and reopening them for eval, render and the viewer."""
from __future__ import annotations

import json
import time
from dataclasses import fields, replace
from pathlib import Path

import torch

from recon.io import CheckpointError
from recon.methods import find_method
from recon.methods.base import Method, Trainable, TrainConfig, config_from_dict, type_name
from recon.trainer import holds_run, latest_checkpoint, restore


def default_run_dir(method: str, scene_name: str, root: Path = Path("runs")) -> Path:
    return root / method / scene_name / time.strftime("%Y%m%d-%H%M%S")


def preset_config(method_cls: type[Trainable], preset: str) -> TrainConfig:
    if preset not in method_cls.presets:
        raise ValueError(f"--preset: {method_cls.name} has no preset {preset!r} (available: {', '.join(method_cls.presets)})")
    return method_cls.presets[preset]


BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def apply_overrides(config: TrainConfig, overrides: dict[str, str]) -> TrainConfig:
    """`config` with `field=value` overrides, each value parsed as its field's type; validated."""
    types = {f.name: type(getattr(config, f.name)) for f in fields(config)}
    parsed = {}
    for key, text in overrides.items():
        if key not in types:
            raise ValueError(f"--set {key}: no such setting (settings: {', '.join(types)})")
        kind = types[key]
        try:
            parsed[key] = BOOLEANS[text.lower()] if kind is bool else kind(text)
        except (KeyError, ValueError):
            raise ValueError(f"--set {key}={text}: expected {'true or false' if kind is bool else type_name(kind)}") from None
    config = replace(config, **parsed)
    config.validate()
    return config


def prepare_run_dir(run_dir: Path, *, restart: bool) -> None:
    """Refuse to start a new run over an old one; with `restart`, move the old one aside first
    (to RUN_DIR.old-<time>, never deleted)."""
    if not holds_run(run_dir):
        return
    if not restart:
        raise ValueError(f"--out {run_dir}: already holds a run (--resume continues it; --restart moves it aside and starts over)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = next(p for n in range(1, 1000) if not (p := run_dir.with_name(f"{run_dir.name}.old-{stamp}" + (f"-{n}" if n > 1 else ""))).exists())
    run_dir.rename(aside)
    print(f"moved the previous run to {aside}")


def read_run_info(run_dir: Path, method_cls: type[Trainable] | None = None) -> dict:
    """config.json of a run: method, preset, data, data_options, config (checked against `method_cls`,
    default the registered method it names); CheckpointError naming the file."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: not a run directory (no config.json)")
    try:
        info = json.loads(path.read_text())
        if not (isinstance(info["data"], str) and isinstance(info["preset"], str) and isinstance(info["data_options"], dict) and isinstance(info["config"], dict)):
            raise ValueError("data, preset, data_options or config of the wrong type")
        if method_cls is not None and info["method"] != method_cls.name:
            raise ValueError(f"a {info['method']!r} run, not a {method_cls.name!r} run")
        config_from_dict((method_cls or find_method(info["method"])).Config, info["config"]).validate()
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: malformed run config ({type(error).__name__}: {error})") from None
    return info


def run_method_name(run_dir: Path) -> str | None:
    """The method a run directory's config.json names (None when it names none): lets the CLI send
    runs of unregistered trainables (detection) to their own commands."""
    try:
        method = json.loads((Path(run_dir) / "config.json").read_text()).get("method")
    except (OSError, ValueError, AttributeError):
        return None
    return method if isinstance(method, str) else None


def open_run(run_dir: Path, device: torch.device | str | None = None, data: Path | None = None) -> tuple[Method, dict]:
    """Rebuild the method of a finished (or running) run from its config and latest checkpoint
    (on `device`; default CUDA when present); a generalizing method renders `data` when given."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    method_cls = find_method(info["method"])
    if data is not None and not method_cls.generalizes:
        raise ValueError(f"--data {data}: a {info['method']} run renders the scene it was trained on (gpf renders unseen scenes)")
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise CheckpointError(f"{run_dir / 'checkpoints'}: no checkpoint in this run")
    config = config_from_dict(method_cls.Config, info["config"])
    method = method_cls.create(config, {**info, **({"eval_data": str(Path(data).resolve())} if data is not None else {})}, device=device)
    state = restore(method, checkpoint, training=False)
    method.eval()
    return method, {**info, "step": state["step"], "checkpoint": str(checkpoint)}
