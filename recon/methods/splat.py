"""3D Gaussian splatting per scene (Kerbl et al. 2023), trained with gsplat's DefaultStrategy.

Gaussians start from the Scene's points (synthetic ground-truth samples, COLMAP/LLFF points) or
at random in the scene bounds; SH degree rises every `sh_degree_interval` steps; loss
(1 − λ)·L1 + λ·(1 − SSIM); the position learning rate decays exponentially. Rendering goes through
`renderers.splatting.rasterization`, so the same code trains on CUDA (gsplat), on a CPU (the
compiled kernel) or anywhere else (the torch reference). With `guidance` set, the training images
carry 3DGS-DET's 2D prior (class-coloured boundaries, centres or masks; `detect.boundary`).
Each step renders `batch_size` training views (per rank in a data-parallel job, recon.distributed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from data import Scene
from recon import distributed
from recon.export import read_ply, write_ply
from recon.methods.base import COUNT, FRACTION, NON_NEGATIVE, POSITIVE, Between, Method, TrainConfig
from recon.metrics import ssim
from renderers.shards import randint_rows
from renderers.splatting import rasterization

SH_C0 = 0.28209479177387814  # Y_0^0: colour = SH_C0 · sh0 + 0.5


@dataclass
class SplatConfig(TrainConfig):
    limits: ClassVar = {
        "init": ("points", "random"), "backend": ("auto", "gsplat", "cpu", "torch"),
        "init_num_random": COUNT, "init_opacity": Between(0, 1, open="both"), "init_scale": POSITIVE,
        "sh_degree": Between(0, 3), "sh_degree_interval": COUNT, "ssim_lambda": FRACTION,
        "lr_means": POSITIVE, "lr_means_final": POSITIVE, "lr_scales": NON_NEGATIVE, "lr_quats": NON_NEGATIVE,
        "lr_opacities": NON_NEGATIVE, "lr_sh0": NON_NEGATIVE, "lr_shN": NON_NEGATIVE, "refine_start": NON_NEGATIVE,
        "refine_stop": NON_NEGATIVE, "refine_every": COUNT, "reset_opacity_every": COUNT, "grow_grad2d": POSITIVE,
        "guidance": ("none", "boundary", "center", "mask"), "guidance_thickness": COUNT, "batch_size": COUNT,
    }
    max_steps: int = 30_000
    batch_size: int = 1  # training views rendered per step (per rank in a data-parallel job)
    init: str = "points"  # "points" (the scene's point cloud; random if it has none) or "random"
    init_num_random: int = 100_000  # Gaussians for random initialisation
    init_opacity: float = 0.1
    init_scale: float = 1.0  # multiplies the mean distance to the 3 nearest neighbours
    sh_degree: int = 3  # final spherical-harmonics degree
    sh_degree_interval: int = 1000  # steps between SH degree increases
    ssim_lambda: float = 0.2
    lr_means: float = 1.6e-4  # × scene scale; decays to lr_means_final
    lr_means_final: float = 1.6e-6
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    refine_start: int = 500  # densification: first step
    refine_stop: int = 15_000  # densification: last step
    refine_every: int = 100
    reset_opacity_every: int = 3000
    grow_grad2d: float = 2e-4  # image-plane gradient above which Gaussians are split/duplicated
    absgrad: bool = False  # AbsGS-style densification (raise grow_grad2d to ~8e-4)
    random_background: bool = False  # train on random backgrounds (scenes with alpha masks)
    backend: str = "auto"  # rasterizer: auto | gsplat | cpu | torch
    guidance: str = "none"  # 3DGS-DET's 2D prior painted into the training images: none | boundary | center | mask
    guidance_thickness: int = 2  # boundary line width (centre disc radius) in pixels


PRESETS = {
    "default": SplatConfig(),
    "fast": SplatConfig(
        max_steps=3000,
        sh_degree_interval=500,
        refine_start=200,
        refine_stop=2500,
        reset_opacity_every=10**9,
        eval_every=500,
        checkpoint_every=500,
        lr_means_final=1.6e-5,
    ),
}


class Splat(Method):
    name = "splat"
    Config = SplatConfig
    presets = PRESETS

    def __init__(self, config: SplatConfig, scene: Scene, gaussians: dict[str, torch.Tensor] | None = None, device: torch.device | str | None = None) -> None:
        """`gaussians`: raw parameters to start from (as `read_ply` returns) instead of `config.init`."""
        super().__init__(config, scene, device)
        self.generator = distributed.generator(config.seed, self.device)
        self.scene_scale = self._scene_scale()
        self.register_buffer("background", torch.tensor(scene.background, dtype=torch.float32))
        initial = self._initial_gaussians() if gaussians is None else {k: torch.nn.Parameter(v.float().contiguous()) for k, v in gaussians.items()}
        self.params = torch.nn.ParameterDict(initial)
        self.to(self.device)
        self.strategy = distributed.SharedDensification(  # gsplat's DefaultStrategy (its statistics summed over the ranks of a job)
            refine_start_iter=config.refine_start,
            refine_stop_iter=config.refine_stop,
            refine_every=config.refine_every,
            reset_every=config.reset_opacity_every,
            grow_grad2d=config.grow_grad2d,
            absgrad=config.absgrad,
        )
        self._make_optimizers()
        self.strategy_state = self.strategy.initialize_state(scene_scale=self.scene_scale)

    @classmethod
    def load_scene(cls, config: SplatConfig, info: dict) -> Scene:
        """The dataset, with 3DGS-DET's 2D prior painted into its images when `guidance` asks for one
        (in memory: the dataset on disk is never written)."""
        scene = super().load_scene(config, info)
        if config.guidance == "none":
            return scene
        from detect.boundary import paint_scene  # the 2D priors belong to 3DGS-DET

        return paint_scene(scene, config.guidance, config.guidance_thickness)

    def _scene_scale(self) -> float:
        """The scene's extent (scales the position learning rate and densification thresholds):
        1.1 × the largest distance of a training camera from their centroid."""
        centres = self.train_c2w[:, :3, 3]
        return float((centres - centres.mean(0)).norm(dim=-1).max()) * 1.1

    def _initial_gaussians(self) -> dict[str, torch.nn.Parameter]:
        c, scene = self.config, self.scene
        if c.init == "points" and scene.points is not None:
            means, colors = scene.points.float().to(self.device, copy=True), scene.point_colors.float().to(self.device)  # never train the Scene in place
        elif c.init in ("points", "random"):
            low, high = scene.bounds.float().to(self.device)
            means = low + (high - low) * torch.rand(c.init_num_random, 3, generator=self.generator, device=self.device)
            colors = torch.rand(c.init_num_random, 3, generator=self.generator, device=self.device)
        else:
            raise ValueError(f"init must be 'points' or 'random', got {c.init!r}")
        return self._gaussians_at(means, colors)

    def _gaussians_at(self, means: torch.Tensor, colors: torch.Tensor) -> dict[str, torch.nn.Parameter]:
        """Isotropic Gaussians at means [N, 3] with base colours [N, 3]: scale init_scale × the mean
        distance to the 3 nearest neighbours, random rotation, opacity init_opacity, higher SH 0."""
        c, n = self.config, means.shape[0]
        scales = torch.log(_mean_neighbour_distance(means).clamp_min(1e-7) * c.init_scale)[:, None].repeat(1, 3)
        quats = F.normalize(torch.randn(n, 4, generator=self.generator, device=self.device), dim=-1)
        opacities = torch.logit(torch.full((n,), c.init_opacity, device=self.device))
        sh0 = ((colors - 0.5) / SH_C0)[:, None, :]  # [N, 1, 3]
        shN = torch.zeros(n, (c.sh_degree + 1) ** 2 - 1, 3, device=self.device)  # [N, K - 1, 3]
        tensors = {"means": means, "scales": scales, "quats": quats, "opacities": opacities, "sh0": sh0, "shN": shN}
        return {name: torch.nn.Parameter(t.contiguous()) for name, t in tensors.items()}

    def _make_optimizers(self) -> None:
        c = self.config
        lrs = {"means": c.lr_means * self.scene_scale, "scales": c.lr_scales, "quats": c.lr_quats, "opacities": c.lr_opacities, "sh0": c.lr_sh0, "shN": c.lr_shN}
        self.optimizers = {name: torch.optim.Adam([{"params": self.params[name], "lr": lr, "name": name}], eps=1e-15, fused=True) for name, lr in lrs.items()}
        gamma = (c.lr_means_final / c.lr_means) ** (1.0 / max(c.max_steps, 1))
        self.means_scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizers["means"], gamma)
        self.strategy.check_sanity(self.params, self.optimizers)

    @property
    def num_gaussians(self) -> int:
        return self.params["means"].shape[0]

    def sh_degree_at(self, step: int) -> int:
        return min(step // self.config.sh_degree_interval, self.config.sh_degree)

    def rasterize(self, K: torch.Tensor, c2w: torch.Tensor, width: int, height: int, sh_degree: int, background: torch.Tensor):
        """K [C, 3, 3], c2w [C, 4, 4] → colours [C, H, W, 3], depths [C, H, W, 1], alphas [C, H, W, 1], info."""
        p = self.params
        render, alphas, info = rasterization(
            p["means"], p["quats"], torch.exp(p["scales"]), torch.sigmoid(p["opacities"]),
            (p["sh0"], p["shN"]), torch.linalg.inv(c2w), K, width, height,
            sh_degree=sh_degree, backgrounds=background.expand(K.shape[0], 3), render_mode="RGB+ED",
            absgrad=self.config.absgrad, backend=self.config.backend,
        )
        return render[..., :3], render[..., 3:], alphas, info

    @torch.no_grad()
    def render_view(self, K: torch.Tensor, c2w: torch.Tensor, width: int, height: int) -> dict[str, torch.Tensor]:
        K, c2w = K.to(self.device), c2w.to(self.device)
        rgb, depth, alpha, _ = self.rasterize(K[None], c2w[None], width, height, self.config.sh_degree, self.background)
        return {"rgb": rgb[0].clamp(0, 1), "depth": depth[0, ..., 0], "opacity": alpha[0, ..., 0]}

    def train_step(self, step: int) -> dict[str, float]:
        views = randint_rows(self.train_images.shape[0], (self.config.batch_size,), self.generator, self.device)  # [B]
        target = self.train_images[views]  # [B, H, W, 3]
        height, width = target.shape[1:3]
        background = torch.rand(3, generator=self.generator, device=self.device) if self.config.random_background else self.background
        rgb, _, alpha, info = self.rasterize(self.train_K[views], self.train_c2w[views], width, height, self.sh_degree_at(step), background)
        if self.config.random_background and self.scene.masks is not None:  # re-composite the target
            mask = self.scene.masks[self.scene.split("train")[views.cpu()]][..., None].to(self.device)  # [B, H, W, 1]
            target = (target - (1 - mask) * self.background) + (1 - mask) * background
        self.strategy.step_pre_backward(self.params, self.optimizers, self.strategy_state, step, info)
        l1 = (rgb - target).abs().mean()
        loss = (1 - self.config.ssim_lambda) * l1 + self.config.ssim_lambda * (1 - ssim(rgb, target).mean())
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        for optimizer in self.optimizers.values():
            optimizer.step()
        self.means_scheduler.step()
        self.strategy.step_post_backward(self.params, self.optimizers, self.strategy_state, step, info, packed=False)
        mse = F.mse_loss(rgb.detach(), target).item()
        return {"loss": loss.item(), "psnr": -10.0 * math.log10(max(mse, 1e-10)), "gaussians": self.num_gaussians}

    @classmethod
    def from_ply(cls, path, scene: Scene, device: torch.device | str | None = None) -> "Splat":
        """A model holding the Gaussians of a 3DGS .ply (ours or another trainer's), for rendering."""
        gaussians = read_ply(path)
        sh_degree = int(round(math.sqrt(gaussians["shN"].shape[1] + 1))) - 1
        return cls(SplatConfig(sh_degree=sh_degree), scene, gaussians, device).eval()

    def export_ply(self, path) -> None:
        write_ply(path, dict(self.params))

    # ---- checkpoints: the number of Gaussians changes during training -------------------------
    def load_state_dict(self, state_dict, strict: bool = True):
        """Resizes the Gaussians to the checkpoint's count; other dimensions must match this model."""
        counts = {state_dict[f"params.{name}"].shape[0] for name in self.params if f"params.{name}" in state_dict}
        for name in list(self.params.keys()):
            key = f"params.{name}"
            if key not in state_dict:
                continue
            if len(counts) > 1 or state_dict[key].shape[1:] != self.params[name].shape[1:]:
                raise RuntimeError(f"{key} has shape {tuple(state_dict[key].shape)}, expected [{', '.join(['N', *map(str, self.params[name].shape[1:])])}] with one N for all parameters")
            if state_dict[key].shape != self.params[name].shape:
                self.params[name] = torch.nn.Parameter(torch.empty_like(state_dict[key], device=self.device))
        self._make_optimizers()
        return super().load_state_dict(state_dict, strict)

    def training_state(self) -> dict:
        return {
            "optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
            "means_scheduler": self.means_scheduler.state_dict(),
            "strategy_state": dict(self.strategy_state),
            "generator": self.generator.get_state(),
        }

    def load_training_state(self, state: dict) -> None:
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        self.means_scheduler.load_state_dict(state["means_scheduler"])
        self.strategy_state = dict(state["strategy_state"])
        self.generator.set_state(state["generator"])


def _mean_neighbour_distance(points: torch.Tensor, k: int = 3, chunk: int = 2048) -> torch.Tensor:
    """[N] mean distance of each point to its k nearest other points (3DGS's initial scale)."""
    distances = []
    for block in points.split(chunk):
        d = torch.cdist(block, points)  # [B, N]
        distances.append(d.topk(k + 1, largest=False).values[:, 1:].mean(-1))
    return torch.cat(distances)
