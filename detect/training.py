"""`recon detect train`: the sparse detector trained on reconstructed scenes, driven by the shared
trainer (checkpoints, exact resume, progress, metrics.jsonl, curves).

A step takes `batch_size` training scenes (each epoch a fresh permutation drawn from seed + epoch,
so the order needs no saved state), samples `num_points` Gaussians of each with the run's sampling
method, augments them as FCAF3D does (when `augment`), voxelizes, and takes one AdamW step on
FCAF3D's losses with the gradient norm clipped; the learning rate drops by `lr_decay` at the
`lr_milestones` fractions of max_steps (FCAF3D: epochs 8 and 11 of 12). Validation predicts every
val scene (fixed sampling seed, no augmentation) and logs val_mAP@0.25 and val_mAP@0.5.

A resumed run equals an uninterrupted one bit for bit on one CPU thread; with more, spconv's CPU
kernels add in a varying order, so any two runs (resumed or not) differ by rounding.

Deliberate differences from mmdet3d's FCAF3D: the inputs are Gaussians (centres, 11 features) in
place of RGB points, so the colour normalisation is dropped (the stem's batch norm standardises
the features) and the rotation augmentation turns the quaternions as well; boxes are axis-aligned.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from data.formats.scannet import CLASSES
from detect.augment import Augmentation
from detect.dataset import DetectionScene, load_detection_scene, sample
from detect.losses import detection_losses, predict
from detect.metrics import indoor_ap
from detect.model import Detector, DetectorShape
from detect.sampling import METHODS
from detect.sparse import voxelize
from recon import distributed
from recon.methods.base import COUNT, FRACTION, NON_NEGATIVE, POSITIVE, Between, TrainConfig, Trainable

GRID_MULTIPLE = 32  # grid sides rounded up so every stride-2 level halves evenly


@dataclass
class DetectConfig(TrainConfig):
    limits: ClassVar = {
        "sampling": METHODS, "num_points": COUNT, "voxel_size": POSITIVE, "width": COUNT, "max_width": COUNT, "head_width": COUNT,
        "prune_top": COUNT, "batch_size": COUNT, "lr": POSITIVE, "weight_decay": NON_NEGATIVE, "grad_clip": POSITIVE, "lr_decay": FRACTION,
        "max_angle": NON_NEGATIVE, "scale_min": POSITIVE, "scale_max": POSITIVE, "shift_std": NON_NEGATIVE, "z_min": NON_NEGATIVE,
        "z_max": POSITIVE, "nms_pre": COUNT, "nms_iou": Between(0, 1, open="low"), "score_threshold": FRACTION,
    }

    max_steps: int = 1200
    eval_every: int = 200
    checkpoint_every: int = 200
    log_every: int = 10
    sampling: str = "box"  # which Gaussians the detector sees: box (3DGS-DET's BS), random, fps, gt (upper bound)
    num_points: int = 100_000  # Gaussians sampled per scene (FCAF3D's PointSample)
    voxel_size: float = 0.01  # metres
    width: int = 64  # backbone channels of level 0, doubled per level up to max_width (FCAF3D: 64…512)
    max_width: int = 512
    head_width: int = 128
    prune_top: int = 100_000  # voxels kept per scene at each generative up-sampling
    batch_size: int = 8  # scenes per step
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 10.0
    lr_milestones: str = "0.667,0.917"  # fractions of max_steps where the lr is multiplied by lr_decay
    lr_decay: float = 0.1
    augment: bool = True
    max_angle: float = 0.087  # rotation about z, radians
    scale_min: float = 0.9
    scale_max: float = 1.1
    shift_std: float = 0.1  # metres
    z_min: float = 0.2  # depth range of box-focused sampling's frusta (metres)
    z_max: float = 8.0
    nms_pre: int = 1000
    nms_iou: float = 0.5
    score_threshold: float = 0.01

    def validate(self) -> None:
        super().validate()
        if self.scale_min > self.scale_max:
            raise ValueError(f"settings scale_min={self.scale_min} > scale_max={self.scale_max}")
        if self.z_min >= self.z_max:
            raise ValueError(f"settings z_min={self.z_min} ≥ z_max={self.z_max}")
        self.milestones()

    def milestones(self) -> list[int]:
        """The steps at which the learning rate drops."""
        try:
            fractions = [float(part) for part in self.lr_milestones.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"setting lr_milestones={self.lr_milestones!r}: expected fractions of max_steps separated by commas") from None
        if any(not 0 < f <= 1 for f in fractions):
            raise ValueError(f"setting lr_milestones={self.lr_milestones!r}: each fraction must be in (0, 1]")
        return sorted(round(f * self.max_steps) for f in fractions)

    def shape(self) -> DetectorShape:
        widths = tuple(min(self.width * 2**level, self.max_width) for level in range(4))
        return DetectorShape(widths=widths, head_width=self.head_width, num_classes=len(CLASSES), prune_top=self.prune_top)


PRESETS = {
    "default": DetectConfig(),  # FCAF3D's sizes: 1 cm voxels, MinkResNet widths, 8 scenes per step
    # two CPU cores: 4 cm voxels, narrow layers, 2 scenes per step
    "cpu": DetectConfig(max_steps=600, eval_every=100, checkpoint_every=100, voxel_size=0.04, width=16, max_width=64, head_width=32,
                        prune_top=20_000, batch_size=2, lr=3e-3),
}


@dataclass
class DetectionData:
    """The scenes of a detection run: training and validation inputs (detect.dataset)."""

    train: list[DetectionScene]
    val: list[DetectionScene]


def load_detection_data(recon_root: Path, data_root: Path, config: DetectConfig, splits: tuple[str, ...] = ("train", "val")) -> DetectionData:
    """The scenes of a ScanNet root's splits, each with its reconstruction in recon_root/<scene>/."""
    from data.formats.scannet import scannet_scenes

    loaded = {split: [load_detection_scene(Path(recon_root) / s.name, s, config.sampling, (config.z_min, config.z_max))
                      for s in scannet_scenes(data_root, split)] if split in splits else [] for split in ("train", "val")}
    if "train" in splits and not loaded["train"]:
        raise ValueError(f"--data {data_root}: no training scenes")
    return DetectionData(**loaded)


def open_detection_run(run_dir: Path, device: torch.device | str | None = None, splits: tuple[str, ...] = ("val",)) -> tuple["DetectionTraining", dict]:
    """The trained detector of a run directory (latest checkpoint) with its `splits` loaded."""
    from recon.io import CheckpointError
    from recon.methods.base import config_from_dict
    from recon.runs import read_run_info
    from recon.trainer import latest_checkpoint, restore

    info = read_run_info(run_dir, DetectionTraining)
    if not isinstance(info.get("recon"), str):
        raise CheckpointError(f"{Path(run_dir) / 'config.json'}: malformed run config (no recon root)")
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise CheckpointError(f"{Path(run_dir) / 'checkpoints'}: no checkpoint in this run")
    config = config_from_dict(DetectConfig, info["config"])
    method = DetectionTraining(config, load_detection_data(info["recon"], info["data"], config, splits), device=device)
    state = restore(method, checkpoint, training=False)
    method.eval()
    return method, {**info, "step": state["step"], "checkpoint": str(checkpoint)}


class DetectionTraining(Trainable):
    """The detector and its optimiser over a DetectionData."""

    name = "detect"
    Config = DetectConfig
    presets = PRESETS

    def __init__(self, config: DetectConfig, data: DetectionData, device: torch.device | str | None = None) -> None:
        super().__init__(config, device)
        self.data = data
        self.model = Detector(config.shape()).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, config.milestones(), gamma=config.lr_decay)
        self.generator = distributed.fork(torch.Generator().manual_seed(config.seed))  # sampling and augmentation: each rank its own stream
        self._fps: dict[str, torch.Tensor] = {}  # farthest-point samples are deterministic: one per scene

    def batch_scenes(self, step: int, world: distributed.World | None = None) -> list[int]:
        """Indices of this rank's training scenes of `step`. The global batch (batch_size × world size)
        is a consecutive slice of per-epoch permutations, and each rank takes its own part of it, as
        a DistributedSampler shards an epoch. `world`: this process's (default)."""
        world = world or distributed.world()
        count, size = len(self.data.train), self.config.batch_size * world.size
        first, last = step * size, (step + 1) * size
        order = torch.cat([torch.randperm(count, generator=torch.Generator().manual_seed(self.config.seed * 100_003 + epoch))
                           for epoch in range(first // count, (last - 1) // count + 1)])
        start = first - (first // count) * count
        return order[start : start + size].tolist()[world.rank * self.config.batch_size : (world.rank + 1) * self.config.batch_size]

    def inputs(self, scene: DetectionScene, generator: torch.Generator, augment: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One scene's sampled centres [M, 3], features [M, 11] and boxes [B, 6], augmented when asked."""
        if self.config.sampling == "fps":
            if scene.name not in self._fps:
                self._fps[scene.name] = sample(scene, "fps", self.config.num_points, generator)
            keep = self._fps[scene.name]
        else:
            keep = sample(scene, self.config.sampling, self.config.num_points, generator)
        means, features, boxes = scene.means[keep], scene.features[keep], scene.boxes
        if augment:
            c = self.config
            move = Augmentation.draw(generator, c.max_angle, (c.scale_min, c.scale_max), c.shift_std)
            moved = move.gaussians({"means": means, "quats": features[:, 3:7], "scales": features[:, :3].log()})
            means, boxes = moved["means"], move.boxes(boxes)
            features = torch.cat([moved["scales"].exp(), moved["quats"], features[:, 7:]], 1)
        return means, features, boxes

    def train_step(self, step: int) -> dict[str, float]:
        scenes = [self.data.train[i] for i in self.batch_scenes(step)]
        batch = [[t.to(self.device) for t in self.inputs(s, self.generator, self.config.augment)] for s in scenes]
        x, origin = voxelize([b[0] for b in batch], [b[1] for b in batch], self.config.voxel_size, GRID_MULTIPLE)
        outputs = self.model(x)
        losses = detection_losses(outputs, origin, self.config.voxel_size, [b[2] for b in batch], [s.labels.to(self.device) for s in scenes])
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(losses["loss"])
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return {**{k: float(v.detach()) for k, v in losses.items()}, "grad_norm": float(grad_norm), "voxels": len(x.indices),
                "lr": self.scheduler.get_last_lr()[0]}

    def progress_text(self, stats: dict[str, float]) -> str:
        return f"loss {stats['loss']:.4f}  cls {stats['classification']:.3f}  box {stats['box']:.3f}  {stats['voxels']:,} voxels"

    @torch.no_grad()
    def predict(self, scenes: list[DetectionScene]) -> dict[str, dict]:
        """{scene: {"boxes" [K, 6], "labels" [K] class names, "scores" [K]}} (numpy-free lists), one scene at a time."""
        self.model.eval()
        c = self.config
        results = {}
        for scene in scenes:
            means, features, _ = self.inputs(scene, torch.Generator().manual_seed(c.seed), augment=False)
            x, origin = voxelize([means.to(self.device)], [features.to(self.device)], c.voxel_size, GRID_MULTIPLE)
            found = predict(self.model(x), origin, c.voxel_size, 1, c.nms_pre, c.nms_iou, c.score_threshold)[0]
            results[scene.name] = {"boxes": found["boxes"].cpu().tolist(), "labels": [CLASSES[i] for i in found["labels"].tolist()],
                                   "scores": found["scores"].cpu().tolist()}
        return results

    def validation_metrics(self) -> dict[str, float]:
        if not self.data.val:
            return {}
        result = average_precision(self.data.val, self.predict(self.data.val))
        return {"val_mAP@0.25": round(result["mAP@0.25"], 4), "val_mAP@0.5": round(result["mAP@0.5"], 4)}

    def training_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "generator": self.generator.get_state()}

    def load_training_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        distributed.fork(self.generator.set_state(state["generator"]))  # the checkpoint holds rank 0's stream


def average_precision(scenes: list[DetectionScene], predictions: dict[str, dict]) -> dict:
    """indoor_ap of predictions ({scene: boxes, labels, scores}) against the scenes' boxes."""
    ground_truth = [{"boxes": s.boxes.double().numpy(), "labels": [CLASSES[i] for i in s.labels.tolist()]} for s in scenes]
    return indoor_ap(ground_truth, [predictions[s.name] for s in scenes], scene_names=[s.name for s in scenes])


def steps_per_epoch(config: DetectConfig, train_scenes: int, world_size: int = 1) -> int:
    return math.ceil(train_scenes / (config.batch_size * world_size))
