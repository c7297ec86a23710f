"""What every method provides to the trainer, the CLI, the evaluator and the viewer."""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn

from data import Scene


@dataclass
class TrainConfig:
    """Settings every method shares (methods extend this dataclass)."""

    max_steps: int = 30_000  # training steps
    eval_every: int = 1000  # steps between validation renders (PSNR on `eval_views` val views)
    eval_views: int = 2  # validation views rendered at each periodic evaluation
    checkpoint_every: int = 1000  # steps between checkpoints (one is always written at the end)
    log_every: int = 50  # steps between lines in metrics.jsonl
    seed: int = 0  # seeds every random choice of the run


def config_from_dict(cls: type, values: dict) -> TrainConfig:
    """Rebuild a config dataclass from saved values, ignoring unknown keys (older runs)."""
    known = {f.name for f in fields(cls)}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
    return cls(**kwargs)


def default_device() -> torch.device:
    """CUDA when present (gsplat, nerfacc and tiny-cuda-nn paths), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Method(nn.Module):
    """A trainable scene representation. Subclasses set `name`, `Config` and `presets`.

    Everything trainable lives on `self.device`; subclasses build their modules, call
    `self.to(self.device)` and then make their optimisers. The Scene itself stays on the CPU.
    """

    name: str
    Config: type[TrainConfig]
    presets: dict[str, TrainConfig]

    def __init__(self, config: TrainConfig, scene: Scene, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.config = config
        self.scene = scene
        self.device = torch.device(device) if device is not None else default_device()
        train = scene.split("train")
        self.train_images = scene.images[train].to(self.device)  # [T, H, W, 3]
        self.train_K, self.train_c2w = scene.K[train].to(self.device), scene.c2w[train].to(self.device)  # [T, 3, 3], [T, 4, 4]

    def train_step(self, step: int) -> dict[str, float]:
        """One optimisation step; returns at least "loss", "psnr" and "rays" (or "gaussians")."""
        raise NotImplementedError

    @torch.no_grad()
    def render_view(self, K: torch.Tensor, c2w: torch.Tensor, width: int, height: int) -> dict[str, torch.Tensor]:
        """Render one camera (K, c2w on any device): "rgb" [H, W, 3], "depth" [H, W], "opacity" [H, W], on self.device."""
        raise NotImplementedError

    def training_state(self) -> dict:
        """Optimiser/scheduler/RNG state needed to resume exactly (tensors and plain values only)."""
        raise NotImplementedError

    def load_training_state(self, state: dict) -> None:
        raise NotImplementedError
