"""StableDreamer: text-to-3D on anisotropic 3D Gaussians by score distillation (Guo et al. 2023).

Gaussians (SH degree 0) start in a ball or from a .ply and are rendered from random cameras on a
sphere around the origin (z up, azimuth 0 = front on +x), a batch of views per step, on random,
learned or constant backgrounds. Each render batch is scored by a 2D diffusion prior through SDS
written as λ(t)·½‖x − sg(x̂₀)‖² (`recon.guidance`), with t drawn from an annealed range:
- stage 1 (geometry): DeepFloyd IF stage I in pixel space at 64², t_max annealed high → low;
- stage 2 (colour): Stable Diffusion in latent space at up to 512², from stage 1's Gaussians, the
  render side ramping up.
Either stage alone is selectable (`stage`). gsplat's DefaultStrategy densifies and prunes as in
`splat`, at the thresholds SDS gradients need. Every `debug_every` steps the run writes
StableDreamer's debugging view: per view, render | noisy input | x̂₀ at the sampled t.

Apple released no code; the card (../shared/notes/stabledreamer.md) lists what is unknown. Choices
made here, from the open neighbours (threestudio, DreamGaussian, LucidDreamer, gsgen):
- Defaults per stage are threestudio's (IF scale 20, SD scale 100, DreamFusion's w(t) = 1 − ā) and
  the card's suggested start (t_max 0.98 → 0.5 in stage 1, t ∈ [0.02, 0.5] in stage 2).
- The latent stage's loss is exact SDS by default (`stage2_loss_space="latent"`); "image" is the
  image-space target that InstructNeRF2NeRF-style pipelines use.
- The learned background is a small MLP of the view direction (threestudio's neural environment
  map); evaluation, turntables and the viewer render on the scene's white background.
- The splat settings `ssim_lambda`, `random_background`, `sh_degree_interval` and `guidance` do not apply here.

`oracle=PATH.ply` swaps both priors for the exact noise predictor of that object
(`recon.guidance.oracle`): the run must rebuild it, and `recon eval` scores it on the orbit.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from data import Scene
from recon.export import read_ply
from recon.fields import MLP, PositionalEncoding
from recon.guidance.distillation import LOSS_SPACES, GuidanceSettings, score_distillation
from recon.guidance.priors import DiffusionPrior, ViewBatch
from recon.guidance.prompts import VIEWS, view_names, view_prompt
from recon.guidance.schedules import MODES, TimestepSchedule
from recon.guidance.sds import WEIGHTINGS
from recon.methods.base import COUNT, FRACTION, NON_NEGATIVE, POSITIVE, Between
from recon.methods.splat import Splat, SplatConfig
from renderers.cameras import look_at, pixel_rays
from renderers.shards import rand_rows

ANGLE = Between(-90, 90)
FIELD_OF_VIEW = Between(1, 179)
SIDE = Between(8, 4096)  # render and prior sides in pixels


@dataclass
class DreamConfig(SplatConfig):
    limits: ClassVar = {
        "init": ("ball", "ply"), "stage": ("1", "2", "both"), "stage1_steps": COUNT,
        "stage1_resolution": SIDE, "stage2_resolution": SIDE, "stage2_resolution_start": SIDE, "stage2_prior_resolution": Between(0, 4096),
        "stage1_guidance_scale": NON_NEGATIVE, "stage2_guidance_scale": NON_NEGATIVE, "guidance_form": ("standard", "threestudio"),
        "stage1_weighting": WEIGHTINGS, "stage2_weighting": WEIGHTINGS, "stage1_schedule": MODES, "stage2_schedule": MODES,
        "stage1_t_min": FRACTION, "stage1_t_max": FRACTION, "stage1_t_max_final": FRACTION,
        "stage2_t_min": FRACTION, "stage2_t_max": FRACTION, "stage2_t_max_final": FRACTION, "stage2_loss_space": LOSS_SPACES,
        "grad_clip_start": NON_NEGATIVE, "grad_clip_end": NON_NEGATIVE, "resolution_ramp": FRACTION, "batch_size": COUNT,
        "camera_radius_min": POSITIVE, "camera_radius_max": POSITIVE, "elevation_min": ANGLE, "elevation_max": ANGLE,
        "fovy_min": FIELD_OF_VIEW, "fovy_max": FIELD_OF_VIEW, "background": ("random", "learned", "white", "black"),
        "init_radius": POSITIVE, "max_gaussians": COUNT, "lambda_opacity": NON_NEGATIVE, "lambda_scale": NON_NEGATIVE, "debug_every": COUNT,
        "eval_cameras": COUNT, "eval_elevation": ANGLE, "eval_resolution": SIDE,
    }
    # the splat settings, at text-to-3D values (DreamGaussian's learning rates and densification threshold)
    max_steps: int = 3000
    init: str = "ball"  # "ball" (init_num_random Gaussians in a ball of init_radius) or "ply" (init_ply)
    init_num_random: int = 5000
    sh_degree: int = 0
    lr_means: float = 1e-3  # × 2·init_radius; decays to lr_means_final
    lr_means_final: float = 2e-5
    lr_quats: float = 5e-3
    lr_sh0: float = 1e-2
    refine_start: int = 100
    refine_stop: int = 2000
    reset_opacity_every: int = 10**9  # no opacity reset
    grow_grad2d: float = 0.01
    eval_every: int = 500
    checkpoint_every: int = 500
    log_every: int = 1  # every step: the sampled t range is part of the record
    # text to 3D
    prompt: str = ""  # what to make; "" is the unconditional prompt
    negative_prompt: str = ""  # the unconditional side of classifier-free guidance
    view_prompts: bool = True  # append ", front|side|back|overhead view" from each camera's azimuth/elevation
    stage: str = "both"  # "1" (image-space IF only), "2" (latent SD only) or "both"
    stage1_steps: int = 1500  # with stage=both: steps of stage 1; stage 2 runs to max_steps
    if_model: str = ""  # DeepFloyd IF stage I: a local diffusers directory or a repo id in the local HF cache
    sd_model: str = ""  # Stable Diffusion: likewise
    oracle: str = ""  # a 3DGS .ply: the exact noise predictor of that object replaces both priors
    attention_slicing: bool = False  # UNet attention in slices (less memory, slower)
    cpu_offload: bool = False  # CUDA: keep the diffusion models on the CPU between uses
    stage1_resolution: int = 64  # render side in stage 1 (the IF input is 64²)
    stage1_guidance_scale: float = 20.0
    stage1_weighting: str = "dreamfusion"  # w(t): dreamfusion | uniform | fantasia3d | l2
    stage1_schedule: str = "linear_max"  # t range over the stage: uniform | linear_max | step | deterministic_linear | sqrt
    stage1_t_min: float = 0.02  # fractions of the T timesteps
    stage1_t_max: float = 0.98
    stage1_t_max_final: float = 0.5
    stage2_resolution: int = 512  # render side at the end of stage 2's resolution ramp
    stage2_resolution_start: int = 128  # render side at the start of stage 2
    stage2_prior_resolution: int = 0  # side the renders are resized to for the VAE (0: the model's own, 512 for SD 2.1-base)
    stage2_guidance_scale: float = 100.0
    stage2_weighting: str = "dreamfusion"
    stage2_schedule: str = "uniform"
    stage2_t_min: float = 0.02
    stage2_t_max: float = 0.5
    stage2_t_max_final: float = 0.5
    stage2_loss_space: str = "latent"  # "latent": exact SDS; "image": L2 to the decoded x̂₀
    guidance_form: str = "standard"  # CFG ε_u + s(ε_c − ε_u); "threestudio": ε_c + s(ε_c − ε_u) (= standard at s + 1)
    grad_clip_start: float = 0.0  # SDS gradient clamp, linear from start to end over the run (0: no clamp)
    grad_clip_end: float = 0.0
    resolution_ramp: float = 0.3  # fraction of stage 2 over which the render side rises to stage2_resolution
    batch_size: int = 4  # views per step
    camera_radius_min: float = 2.5  # camera distance from the origin, drawn uniformly
    camera_radius_max: float = 2.5
    elevation_min: float = -10.0  # degrees
    elevation_max: float = 80.0
    fovy_min: float = 40.0  # vertical field of view in degrees, drawn uniformly per view
    fovy_max: float = 70.0
    background: str = "random"  # random colour per view | learned (MLP of the view direction) | white | black
    init_radius: float = 0.5  # Gaussians start uniformly in a ball of this radius (init=ball)
    init_ply: str = ""  # init=ply: a 3DGS .ply to start from (its SH degree is dropped to 0)
    max_gaussians: int = 500_000  # densification stops growing once this many exist (pruning goes on)
    lambda_opacity: float = 0.0  # weight of the mean opacity (sparsity)
    lambda_scale: float = 0.0  # weight of the mean scale
    debug_every: int = 100  # steps between x̂₀ debug grids (debug/step_*.png)
    eval_cameras: int = 12  # fixed orbit for validation (oracle) and the viewer
    eval_elevation: float = 15.0  # degrees
    eval_resolution: int = 256


    def validate(self) -> None:
        """The per-field checks, then those between fields."""
        super().validate()
        for low, high in (("camera_radius_min", "camera_radius_max"), ("elevation_min", "elevation_max"), ("fovy_min", "fovy_max"),
                          ("stage2_resolution_start", "stage2_resolution")):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"settings {low}={getattr(self, low)} and {high}={getattr(self, high)}: expected {low} ≤ {high}")
        if self.stage == "both" and self.stage1_steps >= self.max_steps:
            raise ValueError(f"settings stage1_steps={self.stage1_steps} and max_steps={self.max_steps}: stage=both needs stage1_steps < max_steps")
        if self.init == "ply" and not self.init_ply:
            raise ValueError("setting init=ply: init_ply must name a 3DGS .ply")
        for stage in (1, 2):
            try:
                TimestepSchedule(*(getattr(self, f"stage{stage}_{name}") for name in SCHEDULE_FIELDS))
            except ValueError as error:
                raise ValueError(f"settings stage{stage}_t_*: {error}") from None


SCHEDULE_FIELDS = ("schedule", "t_min", "t_max", "t_max_final")  # TimestepSchedule's arguments, per stage

PRESETS = {"default": DreamConfig()}
PRESETS["fast"] = replace(  # a CPU-sized run: small renders, tiny batches
    PRESETS["default"], max_steps=600, stage1_steps=400, init_num_random=2000, max_gaussians=20_000, batch_size=2, stage2_resolution=128,
    stage2_resolution_start=64, refine_start=100, refine_stop=500, eval_every=100, checkpoint_every=100, debug_every=50,
    eval_resolution=128,
)


class Dreamer(Splat):
    name = "dream"
    Config = DreamConfig
    presets = PRESETS

    def __init__(self, config: DreamConfig, scene: Scene, device: torch.device | str | None = None) -> None:
        super().__init__(config, scene, device=device)
        self.background_field = None
        if config.background == "learned":
            with torch.random.fork_rng(devices=[]):  # its initial weights follow the seed alone
                torch.manual_seed(config.seed)
                self.background_field = torch.nn.Sequential(PositionalEncoding(3, 4), MLP(27, 32, 2, 3, out_activation=torch.nn.Sigmoid)).to(self.device)
            self.background_optimizer = torch.optim.Adam(self.background_field.parameters(), lr=1e-3)
        self._priors: dict[int, DiffusionPrior] = {}  # built on first use, not part of the checkpoint
        self._embeddings: dict[int, dict[str, torch.Tensor]] = {}
        self._debug: dict | None = None  # the record of the latest debug grid until write_artifacts writes it

    # ---- the scene: a fixed orbit of cameras, with the oracle's renders when there is one -----
    @classmethod
    def load_scene(cls, config: DreamConfig, info: dict) -> Scene:
        return orbit_scene(config)

    def _scene_scale(self) -> float:
        return 2.0 * self.config.init_radius  # the object's extent, not the cameras'

    def _initial_gaussians(self) -> dict[str, torch.nn.Parameter]:
        c = self.config
        if c.init == "ply":
            gaussians = read_ply(c.init_ply)
            gaussians["shN"] = torch.zeros(gaussians["means"].shape[0], (c.sh_degree + 1) ** 2 - 1, 3)  # base colours only
            return {name: torch.nn.Parameter(value.float().to(self.device).contiguous()) for name, value in gaussians.items()}
        direction = F.normalize(torch.randn(c.init_num_random, 3, generator=self.generator, device=self.device), dim=-1)
        radius = c.init_radius * torch.rand(c.init_num_random, 1, generator=self.generator, device=self.device) ** (1 / 3)  # uniform in the ball
        colors = torch.rand(c.init_num_random, 3, generator=self.generator, device=self.device)
        return self._gaussians_at(direction * radius, colors)

    # ---- stages, schedules, cameras ----------------------------------------------------------
    def stage_at(self, step: int) -> int:
        c = self.config
        return int(c.stage) if c.stage != "both" else 1 if step < c.stage1_steps else 2

    def stage_progress(self, step: int) -> tuple[int, int]:
        """(step within its stage, steps of that stage)."""
        c = self.config
        if c.stage != "both":
            return step, c.max_steps
        return (step, c.stage1_steps) if step < c.stage1_steps else (step - c.stage1_steps, c.max_steps - c.stage1_steps)

    def schedule(self, stage: int) -> TimestepSchedule:
        c = self.config
        return TimestepSchedule(*(getattr(c, f"stage{stage}_{name}") for name in SCHEDULE_FIELDS))

    def resolution_at(self, step: int) -> int:
        c = self.config
        if self.stage_at(step) == 1:
            return c.stage1_resolution
        done, total = self.stage_progress(step)
        ramp = min(done / max(c.resolution_ramp * total, 1e-9), 1.0)
        side = c.stage2_resolution_start + ramp * (c.stage2_resolution - c.stage2_resolution_start)
        return max(8, int(round(side / 8)) * 8)

    def grad_clip_at(self, step: int) -> float:
        c = self.config
        return c.grad_clip_start + (c.grad_clip_end - c.grad_clip_start) * min(step / max(c.max_steps, 1), 1.0)

    def sample_cameras(self, count: int, side: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """K [B, 3, 3], c2w [B, 4, 4], azimuth and elevation [B] (degrees) of random views of the origin."""
        c, g, dev = self.config, self.generator, self.device

        def uniform(low: float, high: float) -> torch.Tensor:
            return low + (high - low) * rand_rows((count,), g, dev)  # per view: a rank's share (renderers.shards)

        azimuth, elevation = uniform(-180.0, 180.0), uniform(c.elevation_min, c.elevation_max)
        radius, fovy = uniform(c.camera_radius_min, c.camera_radius_max), uniform(c.fovy_min, c.fovy_max)
        return sphere_cameras(azimuth, elevation, radius, fovy, side) + (azimuth, elevation)

    def background_images(self, K: torch.Tensor, c2w: torch.Tensor, side: int) -> torch.Tensor:
        """[B, side, side, 3] backgrounds per view."""
        c, count = self.config, K.shape[0]
        if c.background == "learned":
            v, u = torch.meshgrid(torch.arange(side, device=self.device), torch.arange(side, device=self.device), indexing="ij")
            u, v = u.reshape(-1).repeat(count), v.reshape(-1).repeat(count)
            view = torch.arange(count, device=self.device).repeat_interleave(side * side)
            _, directions = pixel_rays(K[view], c2w[view], u, v)
            return self.background_field(F.normalize(directions, dim=-1)).view(count, side, side, 3)
        colour = {"white": torch.ones(count, 3, device=self.device), "black": torch.zeros(count, 3, device=self.device)}.get(c.background)
        if colour is None:
            colour = rand_rows((count, 3), self.generator, self.device)
        return colour[:, None, None, :].expand(count, side, side, 3)

    # ---- priors and prompts ------------------------------------------------------------------
    def prior(self, stage: int) -> DiffusionPrior:
        if stage not in self._priors:
            self._priors[stage] = build_prior(self.config, stage, self.device, self.generator)
        return self._priors[stage]

    def embeddings(self, stage: int) -> dict[str, torch.Tensor]:
        """{"uncond": [1, L, D], view or "": [1, L, D]} for the stage's prior."""
        if stage not in self._embeddings:
            c = self.config
            views = VIEWS if c.view_prompts and c.prompt.strip() else ("",)
            prompts = [c.negative_prompt] + [view_prompt(c.prompt, v) if v else c.prompt for v in views]
            encoded = self.prior(stage).text_embeddings(prompts)  # [1 + V, L, D]
            self._embeddings[stage] = {"uncond": encoded[:1], **{v: encoded[1 + i : 2 + i] for i, v in enumerate(views)}}
        return self._embeddings[stage]

    # ---- one step ----------------------------------------------------------------------------
    def train_step(self, step: int) -> dict[str, float]:
        c = self.config
        stage, side = self.stage_at(step), self.resolution_at(step)
        prior, embeddings = self.prior(stage), self.embeddings(stage)
        K, c2w, azimuth, elevation = self.sample_cameras(c.batch_size, side)
        background = self.background_images(K, c2w, side)  # [B, S, S, 3]
        rgb, _, alpha, info = self.rasterize(K, c2w, side, side, c.sh_degree, torch.zeros(3, device=self.device))
        renders = rgb + (1 - alpha) * background  # [B, S, S, 3]
        self.strategy.step_pre_backward(self.params, self.optimizers, self.strategy_state, step, info)

        names = view_names(azimuth, elevation) if "front" in embeddings else [""] * c.batch_size
        cond = torch.cat([embeddings[n] for n in names])  # [B, L, D]
        uncond = embeddings["uncond"].expand_as(cond)
        t_range = self.schedule(stage)(*self.stage_progress(step), prior.num_timesteps)
        settings = GuidanceSettings(
            scale=getattr(c, f"stage{stage}_guidance_scale"), form=c.guidance_form, weighting=getattr(c, f"stage{stage}_weighting"),
            loss_space=c.stage2_loss_space if stage == 2 else "latent", grad_clip=self.grad_clip_at(step),
        )
        debug = (step + 1) % c.debug_every == 0
        views = ViewBatch(K, c2w, side, side, background.detach())
        result = score_distillation(prior, renders, cond, uncond, t_range, views, settings, self.generator, debug=debug)
        opacity, scale = torch.sigmoid(self.params["opacities"]).mean(), torch.exp(self.params["scales"]).mean()
        loss = result.loss + c.lambda_opacity * opacity + c.lambda_scale * scale

        optimizers = list(self.optimizers.values()) + ([self.background_optimizer] if self.background_field is not None else [])
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        for optimizer in optimizers:
            optimizer.step()
        self.means_scheduler.step()
        self.strategy.grow_grad2d = c.grow_grad2d if self.num_gaussians < c.max_gaussians else math.inf  # SDS gradients pass any threshold often
        self.strategy.step_post_backward(self.params, self.optimizers, self.strategy_state, step, info, packed=False)
        if debug:
            self.debug_image = debug_grid(result)
            self._debug = {"step": step + 1, "t": result.t.tolist(), "views": names}
        memory = {"cuda_peak_mb": torch.cuda.max_memory_allocated(self.device) / 2**20} if self.device.type == "cuda" else {}
        return {
            "loss": loss.item(), "sds": result.loss.item(), "stage": stage, "t_min": t_range[0], "t_max": t_range[1],
            "t": float(result.t.float().mean()), "resolution": side, "opacity": opacity.item(), "gaussians": self.num_gaussians, **memory,
        }

    def progress_text(self, stats: dict[str, float]) -> str:
        return f"stage {stats['stage']}  loss {stats['loss']:.4f}  t [{stats['t_min']}, {stats['t_max']}]  {stats['resolution']}²  {stats['gaussians']:,} Gaussians"

    def write_artifacts(self, run_dir: Path) -> None:
        """The latest x̂₀ debug grid as debug/step_XXXXXXX.png, its t and views in debug/steps.jsonl."""
        from recon.evaluate import write_png

        if self._debug is None:
            return
        debug, self._debug = self._debug, None
        write_png(run_dir / "debug" / f"step_{debug['step']:07d}.png", self.debug_image)
        with open(run_dir / "debug" / "steps.jsonl", "a") as f:
            f.write(json.dumps(debug) + "\n")

    # ---- checkpoints -------------------------------------------------------------------------
    def training_state(self) -> dict:
        state = super().training_state()
        if self.background_field is not None:
            state["background_optimizer"] = self.background_optimizer.state_dict()
        return state

    def load_training_state(self, state: dict) -> None:
        super().load_training_state(state)
        if self.background_field is not None:
            self.background_optimizer.load_state_dict(state["background_optimizer"])


def check_priors(config: DreamConfig) -> None:
    """ValueError naming the missing setting or model directory, before a run starts."""
    from recon.guidance.priors import model_directory

    if config.oracle:
        if not Path(config.oracle).is_file():
            raise ValueError(f"--oracle {config.oracle}: no such file")
        return
    for stage, kind, source, flag in ((1, "if", config.if_model, "--if"), (2, "sd", config.sd_model, "--sd")):
        if config.stage in (str(stage), "both"):
            if not source:
                other = "2" if stage == 1 else "1"
                raise ValueError(f"stage {stage} needs {'DeepFloyd IF' if kind == 'if' else 'Stable Diffusion'} weights: {flag} DIR (or --stage {other}, or --oracle FILE.ply)")
            model_directory(source, kind)


def build_prior(config: DreamConfig, stage: int, device: torch.device, generator: torch.Generator) -> DiffusionPrior:
    """The stage's prior: the oracle when set, else IF (stage 1) or SD (stage 2)."""
    from recon.guidance.oracle import OraclePrior
    from recon.guidance.priors import DeepFloydIFGuidance, StableDiffusionGuidance

    options = {"attention_slicing": config.attention_slicing, "cpu_offload": config.cpu_offload}
    if config.oracle:
        side = config.stage1_resolution if stage == 1 else (config.stage2_prior_resolution or config.stage2_resolution)
        return OraclePrior(config.oracle, device, side, backend=config.backend)
    if stage == 1:
        return DeepFloydIFGuidance(config.if_model, device, **options)
    return StableDiffusionGuidance(config.sd_model, device, resolution=config.stage2_prior_resolution or None, generator=generator, **options)


def sphere_cameras(azimuth: torch.Tensor, elevation: torch.Tensor, radius: torch.Tensor, fovy: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K [B, 3, 3] and c2w [B, 4, 4] (OpenCV) of square cameras at (azimuth, elevation, radius)
    around the origin, z up, azimuth 0 on +x; angles in degrees [B]."""
    az, el = torch.deg2rad(azimuth), torch.deg2rad(elevation.clamp(-89.0, 89.0))
    eyes = radius[:, None] * torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], dim=-1)  # [B, 3]
    up, origin = torch.tensor([0.0, 0.0, 1.0], device=eyes.device), torch.zeros(3, device=eyes.device)
    c2w = torch.stack([look_at(eye, origin, up) for eye in eyes]).to(eyes.device)
    focal = 0.5 * side / torch.tan(0.5 * torch.deg2rad(fovy))  # [B]
    K = torch.zeros(len(focal), 3, 3, device=eyes.device)
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = focal, focal, 0.5 * side, 0.5 * side, 1.0
    return K, c2w


def orbit_scene(config: DreamConfig) -> Scene:
    """A Scene of `eval_cameras` views on a ring (eval_elevation, mean radius and field of view).
    With an oracle its images are the target's renders on white and form the test split; without,
    the images are blank and the test split is empty."""
    count, side = config.eval_cameras, config.eval_resolution
    azimuth = torch.arange(count) * (360.0 / count)
    fovy = torch.full((count,), 0.5 * (config.fovy_min + config.fovy_max))
    radius = torch.full((count,), 0.5 * (config.camera_radius_min + config.camera_radius_max))
    K, c2w = sphere_cameras(azimuth, torch.full((count,), config.eval_elevation), radius, fovy, side)
    if config.oracle:
        from recon.guidance.oracle import OraclePrior

        white = torch.ones(count, side, side, 3)
        images = OraclePrior(config.oracle, "cpu", side, config.backend).render_target(ViewBatch(K, c2w, side, side, white)).clamp(0, 1)
        test = torch.arange(count)
    else:
        images, test = torch.zeros(1, side, side, 3).expand(count, side, side, 3), torch.zeros(0, dtype=torch.long)
    slug = "-".join("".join(ch if ch.isalnum() else " " for ch in config.prompt.lower()).split())[:60] or "unconditional"
    radius_max = max(config.camera_radius_min, config.camera_radius_max)
    return Scene(
        name=slug, root=Path(config.oracle or "."), images=images, K=K, c2w=c2w, splits={"train": torch.arange(count), "test": test},
        near=0.01, far=2.0 * radius_max, bounds=torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]) * config.init_radius * 2,
    )


def debug_grid(result) -> torch.Tensor:
    """[B·R, 3·R, 3]: one row per view, render | noisy input | x̂₀ (StableDreamer's debug view)."""
    columns = [result.renders, result.noisy, result.x0]  # [B, 3, R, R] each
    side = result.renders.shape[-1]
    columns = [F.interpolate(x, (side, side), mode="bilinear", align_corners=False) if x.shape[-1] != side else x for x in columns]
    return torch.cat(columns, dim=-1).permute(0, 2, 3, 1).reshape(-1, 3 * side, 3).clamp(0, 1).cpu()
