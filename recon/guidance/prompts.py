"""Prompts for score distillation: view-dependent suffixes (DreamFusion, threestudio) and text
embeddings computed once per (model, prompt) and cached on disk, so a run builds no text encoder
when every prompt it needs was encoded before."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch

from recon.io import atomic_write

VIEWS = ("front", "side", "back", "overhead")
FRONT_HALF_ANGLE = 45.0  # |azimuth| below this is the front, above 180 − this the back (degrees)
OVERHEAD_ELEVATION = 60.0  # elevation above this is overhead (degrees)


def view_names(azimuth: torch.Tensor, elevation: torch.Tensor) -> list[str]:
    """One of VIEWS per camera, from azimuth (0 = front, any range) and elevation, in degrees [B]."""
    azimuth = (azimuth + 180.0) % 360.0 - 180.0  # to [−180, 180)
    names = []
    for az, el in zip(azimuth.abs().tolist(), elevation.tolist()):
        names.append("overhead" if el > OVERHEAD_ELEVATION else "front" if az < FRONT_HALF_ANGLE else "back" if az > 180.0 - FRONT_HALF_ANGLE else "side")
    return names


def view_prompt(prompt: str, view: str) -> str:
    """"a corgi" + "side" → "a corgi, side view"."""
    assert view in VIEWS, view
    return f"{prompt}, {view} view"


def cache_dir() -> Path:
    """$RECON_CACHE/text_embeddings, default ~/.cache/recon/text_embeddings."""
    return Path(os.environ.get("RECON_CACHE", Path.home() / ".cache" / "recon")) / "text_embeddings"


class EmbeddingCache:
    """Text embeddings [L, D] keyed by a hash of (model key, prompt), one file each, written atomically.

    `get(prompts, encode)` calls `encode(missing prompts) -> [M, L, D]` only for prompts not on disk;
    a prior builds its text encoder inside `encode` and frees it afterwards.
    """

    def __init__(self, model_key: str, root: Path | None = None) -> None:
        self.model_key = model_key
        self.root = Path(root) if root is not None else cache_dir()

    def path(self, prompt: str) -> Path:
        digest = hashlib.sha256(f"{self.model_key}\0{prompt}".encode()).hexdigest()[:32]
        return self.root / f"{digest}.pt"

    def get(self, prompts: list[str], encode: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
        """[P, L, D] float32 embeddings of `prompts`, in order."""
        found = {p: torch.load(self.path(p), weights_only=True) for p in set(prompts) if self.path(p).is_file()}
        missing = sorted(set(prompts) - set(found))
        if missing:
            encoded = encode(missing).float().cpu()  # [M, L, D]
            assert encoded.shape[0] == len(missing), f"encoder returned {encoded.shape[0]} embeddings for {len(missing)} prompts"
            for prompt, embedding in zip(missing, encoded):
                atomic_write(self.path(prompt), lambda tmp, e=embedding.clone(): torch.save(e, tmp))
                found[prompt] = embedding
        return torch.stack([found[p] for p in prompts])
