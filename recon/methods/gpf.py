"""GPF: a generalizable neural point field (method card ../shared/notes/gpf.md).

One model for every scene: a point scaffold fused from each scene's depth maps, per-view image
features fetched onto the points from their most visible source views, log sampling around a depth
prior, and a learnable kernel over the K nearest points of every sample (recon/fields/point_field.py).
Trained across the train scenes of a multi-scene root, it renders a scene it never saw with no
per-scene optimisation: `recon train gpf --data ROOT`, then `recon eval RUN --data UNSEEN_SCENE`.

Deliberate differences from the official code (Mercerai/GPF):
- The depth prior of a target view is the scaffold splatted into it (a z-buffer with a 3×3 min
  filter), never the target's own depth map, so novel and test views see no ground-truth depth;
  sources use their depth maps (they are inputs). Samples use t as z-depth, so they straddle the
  surface at every pixel (the official code is short by d(1 − cos θ) off axis).
- Samples sit at the midpoints of the N log edges (N − 1 samples), so intervals are the spacing of
  the edges (the official code uses the edges with a last interval of 100).
- Neighbours come from open3d's KNN on the CPU (FRNN with a radius in the official code; its −1
  indices for missing neighbours cannot occur here); visibility scores are clamped at 0.
- Every length (offsets, jitter, voxel size, outlier radius, the relative encoding's scale) is in
  multiples of `unit` (DTU: 1 mm; the `synthetic` preset: 0.02 for the generated scenes). The
  outlier radius is at least 2.5 × the fused points' median spacing, so clouds fused from small
  images are not emptied by a radius made for DTU's 640×512 views.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from data import Scene
from recon import distributed
from recon.fields.point_field import FeatureNet, KernelDecoder, PointFeatures, relative_encoding
from recon.io import load_tensors, save_checkpoint
from recon.methods.base import COUNT, FRACTION, NON_NEGATIVE, POSITIVE, Between, Method, TrainConfig
from renderers.cameras import Rays, image_rays, make_rays, pixel_rays
from renderers.points import clean_points, fuse_depths, knn, splat_depth
from renderers.samplers import LogSampler, StratifiedSampler
from renderers.shards import randint_rows
from renderers.volume import composite, render_weights


@dataclass
class GPFConfig(TrainConfig):
    limits: ClassVar = {
        "num_sources": COUNT, "top_k": COUNT, "min_visibility": FRACTION, "neighbours": COUNT, "num_samples": Between(2), "log_base": Between(1, open="low"),
        "unit": POSITIVE, "depth_jitter": NON_NEGATIVE, "base_std": NON_NEGATIVE, "batch_rays": COUNT, "lr": POSITIVE, "mask_weight": NON_NEGATIVE,
        "hidden": COUNT, "fuse_neighbours": COUNT, "fuse_consistent": COUNT, "voxel_size": NON_NEGATIVE, "outlier_radius": NON_NEGATIVE,
        "outlier_neighbours": NON_NEGATIVE, "chunk": COUNT, "finetune_lr": POSITIVE, "sampling": ("log", "surface", "uniform"),
    }

    max_steps: int = 20_000
    eval_every: int = 1000
    checkpoint_every: int = 1000
    num_sources: int = 10  # source views per target: the nearest training views by camera centre
    top_k: int = 3  # most visible sources per point
    min_visibility: float = 1e-3  # points whose best score is not above this are dropped
    neighbours: int = 8  # K points per sample
    num_samples: int = 33  # log-sampling edges per ray
    log_base: float = 1.2
    unit: float = 1.0  # scene units per offset unit (DTU: mm)
    depth_jitter: float = 5.0  # training: prior += U(−j, j) units per ray
    base_std: float = 0.0075  # training: log base += N(0, std²) per batch
    batch_rays: int = 512
    lr: float = 5e-4
    mask_weight: float = 0.1  # BCE of the accumulated opacity against the scene's masks (when it has them)
    hidden: int = 32
    fuse_neighbours: int = 4  # views each view's depth is checked against
    fuse_consistent: int = 2  # ... and must agree with
    voxel_size: float = 0.68  # scaffold downsampling, units
    outlier_radius: float = 1.5  # units
    outlier_neighbours: int = 4
    chunk: int = 4096  # rays per chunk when rendering views
    sampling: str = "log"  # log (GPF), surface (even over prior ± 25 units) or uniform (even over near…far): the ablation
    finetune_from: str = ""  # a generalizable gpf run: per-scene finetuning of its model on this run's scene
    scaffolds: str = ""  # a folder of cached point scaffolds (`recon batch prepare gpf` fills it): read when there, written when not
    finetune_lr: float = 0.01  # per-point features when finetuning (positions: finetune_lr × unit × 0.1)


PRESETS = {
    "default": GPFConfig(),  # the card's DTU settings
    "synthetic": GPFConfig(unit=0.02, num_sources=6, top_k=2),
    "fast": GPFConfig(unit=0.02, num_sources=4, top_k=2, max_steps=2000, eval_every=500, checkpoint_every=500, batch_rays=256, lr=1e-3),
}


@dataclass
class PointScene:
    """A scene as GPF sees it: views, the scaffold [P, 3] and the views that may serve as sources [T]."""

    scene: Scene
    points: torch.Tensor
    sources: torch.Tensor
    labels: torch.Tensor | None  # [P] instance ids of the points (0: none) when the scene has instance maps

    @classmethod
    def prepare(cls, scene: Scene, config: GPFConfig) -> "PointScene":
        """Fuse the training views' depth maps into the scaffold, downsample it and drop outliers. With
        `config.scaffolds` the result is read from its cache file when there, and written there when not."""
        cache = scaffold_path(config.scaffolds, scene, config) if config.scaffolds else None
        if cache is not None and cache.is_file():
            saved = load_tensors(cache, ("points", "sources", "labels"), "GPF scaffold")
            return cls(scene, saved["points"], saved["sources"], saved["labels"])
        if scene.depths is None:
            raise ValueError(f"{scene.root}: GPF needs per-view depth maps to build its point scaffold (DTU and generated scenes have them)")
        train = scene.split("train")
        ids = scene.instance_ids[train].float()[..., None].expand(-1, -1, -1, 3) if scene.instance_ids is not None else scene.images[train]
        fused, fused_ids = fuse_depths(scene.depths[train], ids, scene.K[train], scene.c2w[train],
                                       neighbours=min(config.fuse_neighbours, len(train) - 1), min_consistent=config.fuse_consistent)
        spacing = float(knn(fused, fused, 2)[1][:, 1].median()) if len(fused) > 1 else 0.0  # the fused points' typical spacing
        radius = max(config.outlier_radius * config.unit, 2.5 * spacing)  # sparse clouds (small images) keep their points
        points, _ = clean_points(fused, torch.zeros_like(fused), config.voxel_size * config.unit, radius, config.outlier_neighbours)
        if len(points) < config.neighbours:
            raise ValueError(f"{scene.root}: only {len(points)} scaffold points survive fusion (need ≥ {config.neighbours}); are the depth maps consistent?")
        labels = None
        if scene.instance_ids is not None:  # each downsampled point takes the instance of its nearest fused point
            labels = fused_ids[knn(points, fused, 1)[0][:, 0], 0].round().long()
        if cache is not None:
            save_checkpoint(cache, {"points": points, "sources": train, "labels": labels})
        return cls(scene, points, train, labels)

    def nearest_sources(self, c2w: torch.Tensor, count: int, exclude: int | None = None) -> torch.Tensor:
        """View indices [≤ count] of the source views nearest to a camera (never `exclude`)."""
        candidates = self.sources[self.sources != exclude] if exclude is not None else self.sources
        distance = (self.scene.c2w[candidates, :3, 3] - c2w[:3, 3]).norm(dim=-1)
        return candidates[distance.argsort()[:count]]


FUSION_SETTINGS = ("unit", "fuse_neighbours", "fuse_consistent", "voxel_size", "outlier_radius", "outlier_neighbours", "neighbours")


def scaffold_path(folder: str | Path, scene: Scene, config: GPFConfig) -> Path:
    """A scene's cached scaffold: FOLDER/<scene>/scaffold-<hash>.pt, the hash of the scene's folder,
    image size, training views and the fusion settings (so changing any of them makes a new file)."""
    key = {"root": str(Path(scene.root).resolve()), "size": [scene.width, scene.height], "train": scene.split("train").tolist(),
           **{name: getattr(config, name) for name in FUSION_SETTINGS}}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(folder) / scene.name / f"scaffold-{digest}.pt"


class GPF(Method):
    name = "gpf"
    Config = GPFConfig
    presets = PRESETS
    generalizes = True

    def __init__(self, config: GPFConfig, scene: Scene, device: torch.device | str | None = None, training_scenes: list[Scene] | None = None) -> None:
        super().__init__(config, scene, device)
        self.render_scene = PointScene.prepare(scene, config)
        self.training_scenes = [PointScene.prepare(s, config) for s in training_scenes] if training_scenes else [self.render_scene]
        self.features = FeatureNet()
        self.points = PointFeatures(config.hidden, config.top_k, config.min_visibility)
        self.decoder = KernelDecoder(config.hidden)
        self.to(self.device)
        self.sampler = LogSampler(config.num_samples, config.log_base, config.unit, config.depth_jitter, config.base_std,
                                  spacing="log" if config.sampling == "log" else "linear")
        self.uniform = StratifiedSampler(config.num_samples - 1)
        self.deployed = False
        if config.finetune_from:
            self.deploy()
        self.optimizer = torch.optim.Adam(self._parameter_groups(), lr=config.lr)
        self.generator = distributed.generator(config.seed)

    def _parameter_groups(self) -> list[dict]:
        if not self.deployed:
            return [{"params": list(self.parameters())}]
        per_point = {"point_low", "point_high"}
        c = self.config
        return [{"params": [p for n, p in self.named_parameters() if n not in per_point | {"point_positions"}]},
                {"params": [self.point_low, self.point_high], "lr": c.finetune_lr},
                {"params": [self.point_positions], "lr": c.finetune_lr * c.unit * 0.1}]

    @torch.no_grad()
    def deploy(self) -> None:
        """The card's `deploy`: the render scene's per-point features (from all its training views),
        their validity and the point positions become this model's own parameters, so finetuning
        optimises them for the scene and edits can move, delete and copy points with their features."""
        ps = self.render_scene
        views = ps.sources
        low, high = zip(*(self.features(ps.scene.images[v : v + 1].permute(0, 3, 1, 2).to(self.device)) for v in views.tolist()))
        points = ps.points.to(self.device)
        f_low, f_high, valid = self.points(points, torch.cat(low), torch.cat(high), ps.scene.depths[views].to(self.device),
                                           ps.scene.K[views].to(self.device), ps.scene.c2w[views].to(self.device))
        self.point_positions = torch.nn.Parameter(points.clone())
        self.point_low, self.point_high = torch.nn.Parameter(f_low), torch.nn.Parameter(f_high)
        self.register_buffer("point_valid", valid)
        self.register_buffer("point_labels", ps.labels.to(self.device) if ps.labels is not None else torch.zeros(len(points), dtype=torch.long, device=self.device))
        self.deployed = True

    @classmethod
    def create(cls, config: GPFConfig, info: dict, device=None, *, training: bool = False) -> "GPF":
        """Train on the train scenes of info["data"] (a multi-scene root, or one scene); render
        info["eval_data"] when given, else the root's first test scene (or the one scene)."""
        import data

        root = info["data"]
        try:
            train_folders, test_folders = data.scene_folders(root, "train"), data.scene_folders(root, "test")
        except data.DataError:
            train_folders = test_folders = None  # a single scene
        options = info["data_options"]
        load = lambda path: data.load(path, **options)  # noqa: E731
        render = info.get("eval_data") or (test_folders[0] if test_folders else (train_folders[0] if train_folders else root))
        if config.finetune_from and training:
            return cls.finetuned(config, load(render), device)
        training_scenes = [load(p) for p in train_folders] if (training and train_folders) else None
        return cls(config, load(render), device=device, training_scenes=training_scenes)

    @classmethod
    def finetuned(cls, config: GPFConfig, scene: Scene, device=None) -> "GPF":
        """A new finetuning run: the generalizable run's latest weights, deployed on `scene`."""
        from dataclasses import replace

        from recon.io import CheckpointError, load_checkpoint
        from recon.runs import read_run_info
        from recon.trainer import latest_checkpoint

        base = read_run_info(config.finetune_from, cls)
        checkpoint = latest_checkpoint(config.finetune_from)
        if checkpoint is None or base["config"].get("finetune_from"):
            raise CheckpointError(f"--finetune {config.finetune_from}: needs a generalizable gpf run with a checkpoint")
        method = cls(replace(config, finetune_from=""), scene, device=device)
        method.load_state_dict(load_checkpoint(checkpoint)["model"])
        method.config = config
        method.deploy()
        method.optimizer = torch.optim.Adam(method._parameter_groups(), lr=config.lr)
        return method

    def select(self, target: str) -> torch.Tensor:
        """[P] mask of the deployed points an edit names: an instance id ("3"), or the points inside
        a box ("box:x0,y0,z0,x1,y1,z1", world units)."""
        assert self.deployed, "edits need deployed points (GPF.deploy)"
        if target.startswith("box:"):
            try:
                corners = torch.tensor([float(v) for v in target[4:].split(",")], device=self.device)
                assert len(corners) == 6
            except (ValueError, AssertionError):
                raise ValueError(f"{target}: expected box:x0,y0,z0,x1,y1,z1") from None
            return ((self.point_positions >= corners[:3]) & (self.point_positions <= corners[3:])).all(-1)
        try:
            instance = int(target)
        except ValueError:
            raise ValueError(f"{target}: expected an instance id or box:x0,y0,z0,x1,y1,z1") from None
        chosen = self.point_labels == instance
        if instance <= 0 or not chosen.any():
            present = sorted(set(self.point_labels.unique().tolist()) - {0})
            raise ValueError(f"{target}: no object with this instance id in the scene (ids: {', '.join(map(str, present)) or 'none, use a box'})")
        return chosen

    @torch.no_grad()
    def edit(self, deletes: list[str], moves: list[tuple[str, tuple[float, float, float]]], duplicates: list[tuple[str, tuple[float, float, float]]]) -> dict[str, int]:
        """Delete, move (by an offset) and duplicate (at an offset) selected points with their
        features, in that order; returns how many points each kind of edit touched."""
        if not self.deployed:
            self.deploy()
        counts = {"deleted": 0, "moved": 0, "duplicated": 0}
        keep = torch.ones(len(self.point_positions), dtype=torch.bool, device=self.device)
        for target in deletes:
            chosen = self.select(target)
            keep &= ~chosen
            counts["deleted"] += int(chosen.sum())
        self._set_points(keep, None)
        for target, offset in moves:
            chosen = self.select(target)
            self.point_positions[chosen] += torch.tensor(offset, device=self.device)
            counts["moved"] += int(chosen.sum())
        for target, offset in duplicates:
            chosen = self.select(target)
            self._set_points(torch.ones_like(chosen), chosen, torch.tensor(offset, device=self.device))
            counts["duplicated"] += int(chosen.sum())
        return counts

    def _set_points(self, keep: torch.Tensor, copy: torch.Tensor | None, offset: torch.Tensor | None = None) -> None:
        """Keep the points in `keep`, then append copies of those in `copy` moved by `offset`."""
        def updated(values: torch.Tensor, moved: bool = False) -> torch.Tensor:
            extra = values[copy] + offset if (copy is not None and moved) else values[copy] if copy is not None else values[:0]
            return torch.cat([values[keep], extra])
        self.point_positions = torch.nn.Parameter(updated(self.point_positions.data, moved=True))
        self.point_low, self.point_high = torch.nn.Parameter(updated(self.point_low.data)), torch.nn.Parameter(updated(self.point_high.data))
        self.point_valid, self.point_labels = updated(self.point_valid), updated(self.point_labels)

    # ---- rendering ---------------------------------------------------------------------------
    def _context(self, ps: PointScene, c2w: torch.Tensor, exclude: int | None) -> dict:
        """Source features and cameras for rendering `ps` from a camera at c2w [4, 4] (deployed: the
        model's own points)."""
        if self.deployed:
            return {"points": self.point_positions}
        views = ps.nearest_sources(c2w.cpu(), self.config.num_sources, exclude)
        images = ps.scene.images[views].permute(0, 3, 1, 2).to(self.device)  # [S, 3, H, W]
        low, high = self.features(images)
        return {"low": low, "high": high, "depths": ps.scene.depths[views].to(self.device), "K": ps.scene.K[views].to(self.device),
                "c2w": ps.scene.c2w[views].to(self.device), "points": ps.points.to(self.device)}

    def _render_rays(self, context: dict, rays: Rays, prior: torch.Tensor, c2w: torch.Tensor, perturb: bool) -> dict[str, torch.Tensor]:
        """rgb [R, 3], opacity [R, 1], depth [R, 1] of rays [R] with depth priors [R]."""
        generator = self.generator if perturb else None
        if self.config.sampling == "uniform":
            samples = self.uniform(rays, perturb=perturb, generator=generator)
        else:
            samples = self.sampler(rays, perturb=perturb, depth=prior, generator=generator)
        positions = samples.positions(rays)  # [R, S, 3]
        r, s, _ = positions.shape
        flat = positions.reshape(-1, 3)
        index, _ = knn(flat, context["points"], self.config.neighbours)  # [Q, K]
        used, inverse = torch.unique(index, return_inverse=True)
        if self.deployed:
            f_low, f_high, valid = self.point_low[used], self.point_high[used], self.point_valid[used]
        else:
            f_low, f_high, valid = self.points(context["points"][used], context["low"], context["high"], context["depths"], context["K"], context["c2w"])
        relative = relative_encoding(flat, context["points"][index], c2w, 100 * self.config.unit)
        view_dirs = rays.viewdirs[:, None].expand(r, s, 3).reshape(-1, 3)
        sigma, colour = self.decoder(relative, f_low[inverse], f_high[inverse], valid[inverse], view_dirs)
        weights = render_weights(samples.starts, samples.ends, sigma.view(r, s))
        background = torch.tensor(self.scene.background, device=self.device)
        return composite(weights, colour.view(r, s, 3), samples.mids, background)

    @torch.no_grad()
    def render_view(self, K: torch.Tensor, c2w: torch.Tensor, width: int, height: int) -> dict[str, torch.Tensor]:
        K, c2w = K.to(self.device), c2w.to(self.device)
        ps = self.render_scene
        context = self._context(ps, c2w, exclude=None)
        prior = splat_depth(context["points"].detach(), K, c2w, width, height).reshape(-1)  # [H·W]
        rays = image_rays(K, c2w, width, height, ps.scene.near, ps.scene.far)
        chunks = [self._render_rays(context, rays[i : i + self.config.chunk], prior[i : i + self.config.chunk], c2w, perturb=False)
                  for i in range(0, len(rays), self.config.chunk)]
        return self.assemble_image(chunks, height, width)

    # ---- training ----------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        g = self.generator  # in a data-parallel job each rank draws its own scene, view and rays
        ps = self.training_scenes[int(randint_rows(len(self.training_scenes), (1,), g))]
        target = int(ps.sources[randint_rows(len(ps.sources), (1,), g)])
        scene = ps.scene
        K, c2w = scene.K[target].to(self.device), scene.c2w[target].to(self.device)
        context = self._context(ps, c2w, exclude=target)
        u = randint_rows(scene.width, (self.config.batch_rays,), g)
        v = randint_rows(scene.height, (self.config.batch_rays,), g)
        prior = splat_depth(context["points"].detach(), K, c2w, scene.width, scene.height)[v.to(self.device), u.to(self.device)]
        origins, directions = pixel_rays(K, c2w, u.to(self.device).float(), v.to(self.device).float())
        rays = make_rays(origins, directions, scene.near, scene.far)
        out = self._render_rays(context, rays, prior, c2w, perturb=True)
        target_rgb = scene.images[target, v, u].to(self.device)
        loss = (out["rgb"] - target_rgb).abs().sum(-1).mean()
        if scene.masks is not None and self.config.mask_weight > 0:
            mask = scene.masks[target, v, u].to(self.device)
            loss = loss + self.config.mask_weight * F.binary_cross_entropy(out["opacity"][:, 0].clamp(1e-5, 1 - 1e-5), mask)
        self.optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.optimizer.step()
        mse = F.mse_loss(out["rgb"].detach(), target_rgb)
        return {"loss": float(loss.detach()), "psnr": float(-10 * torch.log10(mse.clamp_min(1e-10))), "rays": self.config.batch_rays}

    def training_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state()}

    def load_training_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
