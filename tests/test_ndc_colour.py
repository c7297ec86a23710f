"""Every method keeps the ground truth's colours on a forward-facing (NDC) scene.

A PSNR threshold alone is blind to a grey render: on the tiny LLFF scene a render that is the
right luminance but has no colour at all still scores ~18.5 dB. Here each method trains briefly
on a tiny generated LLFF scene and its test renders must match the ground truth's per-channel
means and its chroma (how far pixels are from grey), pixel by pixel in direction too.
"""
from dataclasses import replace

import pytest
import torch

import data
from recon.methods.nerf import PRESETS as NERF_PRESETS, Nerf
from recon.methods.pronerf import PRESETS as PRONERF_PRESETS, Pronerf
from recon.methods.splat import PRESETS as SPLAT_PRESETS, Splat
from renderers.cameras import image_rays, ndc_bounds

QUIET = {"eval_every": 10**9, "checkpoint_every": 10**9, "log_every": 10**9}

# Each `fast` preset, shortened to a few CPU seconds; enough steps for the colours to settle.
METHODS = {
    "nerf": (Nerf, lambda: replace(NERF_PRESETS["fast"], **QUIET, max_steps=100, rays_per_batch=256), 100),
    "pronerf": (Pronerf, lambda: replace(PRONERF_PRESETS["fast"], **QUIET, max_steps=150, stage1_steps=100, rays_per_batch=256), 150),
    "splat": (Splat, lambda: replace(SPLAT_PRESETS["fast"], **QUIET, max_steps=150, refine_start=50, refine_every=50, refine_stop=100, sh_degree_interval=100), 150),
}

MEAN_TOLERANCE = 0.04  # |mean of a channel over the image − the ground truth's|, colours in [0, 1]
CHROMA_RATIO = (0.4, 1.6)  # render's mean chroma / the ground truth's (a grey render: 0)
CHROMA_CORRELATION = 0.4  # cosine between the render's and the ground truth's chroma images


def chroma(rgb: torch.Tensor) -> torch.Tensor:
    """[..., 3] → [..., 3] each pixel's offset from its own grey level (zero for a grey pixel)."""
    return rgb - rgb.mean(-1, keepdim=True)


@pytest.mark.parametrize("name", list(METHODS))
def test_render_keeps_the_ground_truth_colours_in_ndc(name, tiny_llff):
    scene = data.load(tiny_llff)
    assert scene.ndc
    cls, config, steps = METHODS[name]
    method = cls(config(), scene)
    method.train()
    for step in range(steps):
        method.train_step(step)
    method.eval()
    for i in scene.split("test").tolist():
        with torch.no_grad():
            render = method.render_view(scene.K[i], scene.c2w[i], scene.width, scene.height)["rgb"].cpu()  # [H, W, 3]
        truth = scene.images[i]
        means, true_means = render.mean((0, 1)), truth.mean((0, 1))
        assert (means - true_means).abs().max() < MEAN_TOLERANCE, f"{name} view {i}: channel means {means.tolist()} vs {true_means.tolist()}"
        c, true_c = chroma(render), chroma(truth)
        ratio = float(c.abs().mean() / true_c.abs().mean())
        assert CHROMA_RATIO[0] < ratio < CHROMA_RATIO[1], f"{name} view {i}: chroma {ratio:.2f}× the ground truth's (grey renders: 0)"
        cosine = float(torch.nn.functional.cosine_similarity(c.flatten(), true_c.flatten(), dim=0))
        assert cosine > CHROMA_CORRELATION, f"{name} view {i}: chroma points the wrong way (cosine {cosine:.2f})"


def test_ndc_bounds_hold_every_ray_of_every_view(tiny_llff):
    """The NeRF field's NDC box holds every pixel ray of every camera from the near plane to infinity,
    and for views off the mean pose that reaches beyond [-1, 1] in x and y."""
    scene = data.load(tiny_llff)
    box = ndc_bounds(scene.K, scene.c2w, scene.width, scene.height)
    assert torch.equal(box[:, 2], torch.tensor([-1.0, 1.0]))
    assert (box[0, :2] < -1).all() and (box[1, :2] > 1).all()
    t = torch.linspace(0, 1, 33)
    for i in range(len(scene.images)):
        rays = image_rays(scene.K[i], scene.c2w[i], scene.width, scene.height, 0.0, 1.0, ndc=True)
        points = rays.origins[:, None] + t[:, None] * rays.directions[:, None]  # [R, 33, 3]
        assert (points >= box[0] - 1e-5).all() and (points <= box[1] + 1e-5).all(), f"view {i}"
