"""What every method provides to the trainer, the CLI, the evaluator and the viewer."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
from torch import nn

from data import Scene
from recon.distributed import average_gradients
from recon.metrics import psnr
from renderers.cameras import Rays, make_rays, pixel_rays
from renderers.shards import randint_rows


@dataclass(frozen=True)
class Between:
    """Allowed values of a numeric setting: low ≤ value ≤ high (< where `open` says; None: unbounded)."""

    low: float | None = None
    high: float | None = None
    open: str = ""  # "low", "high" or "both": which bounds are excluded

    def admits(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self._low_excluded else value >= self.low)
        below = self.high is None or (value < self.high if self._high_excluded else value <= self.high)
        return above and below

    def describe(self, name: str) -> str:
        """e.g. "0 < lr" or "0 ≤ sh_degree ≤ 3"."""
        low = "" if self.low is None else f"{self.low:g} {'<' if self._low_excluded else '≤'} "
        high = "" if self.high is None else f" {'<' if self._high_excluded else '≤'} {self.high:g}"
        return low + name + high

    @property
    def _low_excluded(self) -> bool:
        return self.open in ("low", "both")

    @property
    def _high_excluded(self) -> bool:
        return self.open in ("high", "both")


def type_name(kind: type) -> str:
    """"an int", "a float", ...: how error messages name a setting's type."""
    return f"{'an' if kind is int else 'a'} {kind.__name__}"


COUNT = Between(1)  # a positive integer
NON_NEGATIVE = Between(0)
POSITIVE = Between(0, open="low")
FRACTION = Between(0, 1)


@dataclass
class TrainConfig:
    """Settings every method shares (methods extend this dataclass).

    `limits` (merged along the subclasses) gives each constrained field a `Between` or a tuple of
    allowed strings; `validate()` checks them and that every number is finite.
    """

    limits: ClassVar[dict[str, Between | tuple[str, ...]]] = {
        "max_steps": COUNT, "eval_every": COUNT, "eval_views": NON_NEGATIVE, "checkpoint_every": COUNT, "log_every": COUNT,
    }

    max_steps: int = 30_000  # training steps
    eval_every: int = 1000  # steps between validation renders (PSNR on `eval_views` val views)
    eval_views: int = 2  # validation views rendered at each periodic evaluation
    checkpoint_every: int = 1000  # steps between checkpoints (one is always written at the end)
    log_every: int = 50  # steps between lines in metrics.jsonl
    seed: int = 0  # seeds every random choice of the run

    def validate(self) -> None:
        """ValueError naming the first setting of the wrong type, not finite, out of its range or
        not one of its choices."""
        limits = {name: rule for cls in reversed(type(self).__mro__) for name, rule in vars(cls).get("limits", {}).items()}
        for f in fields(self):
            value, rule, kind = getattr(self, f.name), limits.get(f.name), type(f.default)
            if not (type(value) is kind or (kind is float and type(value) is int)):
                raise ValueError(f"setting {f.name}={value!r}: expected {type_name(kind)}")
            if kind is float and not math.isfinite(value):
                raise ValueError(f"setting {f.name}={value}: expected a finite number")
            if isinstance(rule, Between) and not rule.admits(value):
                raise ValueError(f"setting {f.name}={value}: out of range (expected {rule.describe(f.name)})")
            if isinstance(rule, tuple) and value not in rule:
                raise ValueError(f"setting {f.name}={value!r}: expected one of {', '.join(rule)}")


def config_from_dict(cls: type, values: dict) -> TrainConfig:
    """Rebuild a config dataclass from saved values, ignoring unknown keys (older runs)."""
    known = {f.name for f in fields(cls)}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known}
    return cls(**kwargs)


def default_device() -> torch.device:
    """CUDA when present (gsplat, nerfacc and tiny-cuda-nn paths), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Trainable(nn.Module):
    """What the trainer drives: a validated `config` (max_steps, log/eval/checkpoint cadence, seed),
    `train_step`, a validation, the progress text and exact-resume state. Subclasses set `name`,
    `Config` and `presets`, build their modules on `self.device`, then make their optimisers."""

    name: str
    Config: type[TrainConfig]
    presets: dict[str, TrainConfig]

    def __init__(self, config: TrainConfig, device: torch.device | str | None = None) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.device = torch.device(device) if device is not None else default_device()

    def train_step(self, step: int) -> dict[str, float]:
        """One optimisation step; returns at least "loss"."""
        raise NotImplementedError

    def backward(self, loss: torch.Tensor) -> None:
        """loss.backward(), then (in a data-parallel job, recon.distributed) every gradient averaged
        over the ranks: what each train_step calls instead of loss.backward()."""
        loss.backward()
        average_gradients(self.parameters())

    def validation_metrics(self) -> dict[str, float]:
        """Metrics of the current model on held-out data (logged at every eval_every); none by default."""
        return {}

    def progress_text(self, stats: dict[str, float]) -> str:
        """The progress bar's statistics for one step's `stats`."""
        return f"loss {stats['loss']:.4f}"

    def write_artifacts(self, run_dir) -> None:
        """Write whatever the last step produced for the run directory (debug images); none by default."""

    def training_state(self) -> dict:
        """Optimiser/scheduler/RNG state needed to resume exactly (tensors and plain values only)."""
        raise NotImplementedError

    def load_training_state(self, state: dict) -> None:
        raise NotImplementedError


class Method(Trainable):
    """A trainable scene representation, fitted to a Scene's training views.

    Everything trainable lives on `self.device`; the Scene itself stays on the CPU.
    """

    debug_image: torch.Tensor | None = None  # [H, W, 3] in [0, 1]: the latest debugging view, shown by the viewer

    def __init__(self, config: TrainConfig, scene: Scene, device: torch.device | str | None = None) -> None:
        super().__init__(config, device)
        self.scene = scene
        train = scene.split("train")
        self.train_images = scene.images[train].to(self.device)  # [T, H, W, 3]
        self.train_K, self.train_c2w = scene.K[train].to(self.device), scene.c2w[train].to(self.device)  # [T, 3, 3], [T, 4, 4]

    generalizes: ClassVar[bool] = False  # renders scenes it was not trained on (`recon eval RUN --data SCENE`)

    @classmethod
    def create(cls, config: TrainConfig, info: dict, device: torch.device | str | None = None, *, training: bool = False) -> "Method":
        """The method of a run from its config.json `info`, to train (`training`) or to render."""
        return cls(config, cls.load_scene(config, info), device=device)

    @classmethod
    def load_scene(cls, config: TrainConfig, info: dict) -> Scene:
        """The scene of a run, from its config.json `info` (a dataset path for most methods)."""
        import data

        return data.load(info["data"], **info["data_options"])

    def sample_training_rays(self, num_rays: int, generator: torch.Generator) -> tuple[Rays, torch.Tensor, torch.Tensor]:
        """Rays through random pixels of random training views (NDC for forward-facing scenes),
        their target colours [R, 3] and training-view indices [R]: this rank's share of a
        data-parallel batch (renderers.shards)."""
        t, h, w, _ = self.train_images.shape
        cam = randint_rows(t, (num_rays,), generator, self.device)
        u = randint_rows(w, (num_rays,), generator, self.device)
        v = randint_rows(h, (num_rays,), generator, self.device)
        origins, directions = pixel_rays(self.train_K[cam], self.train_c2w[cam], u, v)
        ndc_K = self.train_K[cam] if self.scene.ndc else None
        rays = make_rays(origins, directions, self.scene.near, self.scene.far, ndc_K, w, h)
        return rays, self.train_images[cam, v, u], cam

    def progress_text(self, stats: dict[str, float]) -> str:
        speed = f"{stats['rays_per_s']:,.0f} rays/s" if "rays_per_s" in stats else f"{stats.get('gaussians', 0):,} Gaussians"
        return f"loss {stats['loss']:.4f}  psnr {stats['psnr']:.2f}  {speed}"

    @torch.no_grad()
    def validation_metrics(self) -> dict[str, float]:
        """PSNR on the first `eval_views` validation views (test views when there is no val split)."""
        split = "val" if len(self.scene.splits.get("val", [])) else "test"
        views = self.scene.split(split)[: self.config.eval_views].tolist()
        if not views:
            return {}
        self.eval()
        scene = self.scene
        values = [float(psnr(self.render_view(scene.K[i], scene.c2w[i], scene.width, scene.height)["rgb"].cpu(), scene.images[i])) for i in views]
        return {f"{split}_psnr": round(sum(values) / len(values), 4)}

    @torch.no_grad()
    def render_view(self, K: torch.Tensor, c2w: torch.Tensor, width: int, height: int) -> dict[str, torch.Tensor]:
        """Render one camera (K, c2w on any device): "rgb" [H, W, 3], "depth" [H, W], "opacity" [H, W], on self.device."""
        raise NotImplementedError

    @staticmethod
    def assemble_image(chunks: list[dict[str, torch.Tensor]], height: int, width: int) -> dict[str, torch.Tensor]:
        """render_view's result from per-ray chunks holding "rgb" [R, 3], "depth" and "opacity" [R, 1]."""
        rgb = torch.cat([c["rgb"] for c in chunks]).view(height, width, 3)
        depth = torch.cat([c["depth"] for c in chunks]).view(height, width)
        opacity = torch.cat([c["opacity"] for c in chunks]).view(height, width)
        return {"rgb": rgb.clamp(0, 1), "depth": depth, "opacity": opacity}
