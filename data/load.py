"""`load(path)`: detect a dataset's format from its files and call that format's loader."""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable

from data.formats.blender import load_blender
from data.formats.colmap import is_colmap, load_colmap
from data.formats.dtu import dtu_scans, is_dtu, load_dtu
from data.formats.llff import load_llff
from data.formats.scannet import is_scannet, load_scannet, scannet_scenes
from data.scene import DataError, Scene

# what a format's folder holds -> its loader, in detection order
FORMATS: dict[str, tuple[Callable[[Path], bool], Callable[..., Scene]]] = {
    "transforms_train.json": (lambda root: (root / "transforms_train.json").is_file(), load_blender),
    "poses_bounds.npy": (lambda root: (root / "poses_bounds.npy").is_file(), load_llff),
    "a COLMAP scene (images/ and sparse/0/cameras.bin|txt)": (is_colmap, load_colmap),
    "a ScanNet scene (NAME/NAME.sens, color/ + pose/ + intrinsic/, or intrinsic.txt)": (is_scannet, load_scannet),
    "a DTU scan (ROOT/Rectified/scanN[_train]/ beside ROOT/Cameras/)": (is_dtu, load_dtu),
}


def load(path: str | Path, **kwargs: Any) -> Scene:
    """Load the dataset at `path`; keyword options that the detected format does not take are ignored
    (e.g. `spherify` for a Blender scene), options that no format takes are a `TypeError`."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: dataset directory not found")
    known = loader_options()
    if unknown := sorted(set(kwargs) - known):
        raise TypeError(f"load: unknown option(s) {unknown}; known: {sorted(known)}")
    for detect, loader in FORMATS.values():
        if detect(root):
            options = _options(loader)
            return loader(root, **{k: v for k, v in kwargs.items() if k in options})
    raise DataError(f"{root}: unknown dataset format (expected {' or '.join(FORMATS)})")


def is_dataset(path: str | Path) -> bool:
    """Whether `path` is a folder in a format `load` recognises (its files may still be broken)."""
    root = Path(path)
    return root.is_dir() and any(detect(root) for detect, _ in FORMATS.values())


def loader_options() -> set[str]:
    """Every keyword option some format's loader takes."""
    return {name for _, loader in FORMATS.values() for name in _options(loader)}


def _options(loader: Callable[..., Scene]) -> set[str]:
    params = inspect.signature(loader).parameters.values()
    return {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def scene_folders(root: str | Path, split: str) -> list[Path]:
    """The scenes of a multi-scene root's split, each loadable by `load`: generated scenes
    (scenes_<split>.txt, `recon data synth --scenes N`), DTU (Rectified/ + Cameras/) or ScanNet."""
    root = Path(root)
    listing = root / f"scenes_{split}.txt"
    if listing.is_file():
        names = listing.read_text().split()
        if missing := [n for n in names if not (root / n).is_dir()]:
            raise DataError(f"{listing}: {len(missing)} listed scenes are not in {root} (first: {missing[0]})")
        return [root / n for n in names]
    if (root / "Rectified").is_dir() and (root / "Cameras").is_dir():
        return dtu_scans(root, split)
    if (root / "scans").is_dir():
        return scannet_scenes(root, split)
    if not root.is_dir():
        raise DataError(f"{root}: dataset directory not found")
    raise DataError(f"{root}: not a multi-scene root (expected scenes_{split}.txt, DTU's Rectified/ and Cameras/, or ScanNet's scans/)")
