"""Atomic file writes and checkpoint loading with clear errors."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


_UMASK = os.umask(0)
os.umask(_UMASK)


class CheckpointError(RuntimeError):
    """A checkpoint or run directory is missing, corrupt or from another method."""


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temporary file beside `path`, then rename it over `path`.

    The file is flushed to disk before the rename and the directory after it, so a crash or power
    loss at any point leaves either the previous file or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")  # writers pick the format from the suffix
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        _fsync(tmp, os.O_RDONLY)
        os.replace(tmp, path)
        if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename itself durable
            _fsync(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync(path: str | Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_tensors(path: Path, keys: tuple[str, ...], kind: str = "recon checkpoint") -> dict:
    """Load a dict of tensors and plain values saved by save_checkpoint (weights_only=True) that must
    hold `keys`; one clear error naming the file if it is missing, corrupt or another kind of file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {kind} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated/garbled files
        raise CheckpointError(f"{path}: not a readable {kind} ({type(error).__name__}: {error})".split("\n")[0]) from None
    if not isinstance(state, dict) or any(key not in state for key in keys):
        raise CheckpointError(f"{path}: not a {kind} (no {'/'.join(repr(k) for k in keys)} entries)")
    return state


def load_checkpoint(path: Path) -> dict:
    """Load a run's checkpoint (it names its method and step)."""
    return load_tensors(path, ("method", "step"))
