"""Compiled CPU rasterizer vs a naive float64 torch reference (gsplat 1.5.3 classic semantics):
forward colours/alphas, gradients of means2d, conics, colors, opacities, backgrounds, absgrad."""
import math

import pytest
import torch

from renderers.splatting import _cpu

pytestmark = pytest.mark.skipif(not _cpu.available(), reason=str(_cpu.build_error()))


def tile_rects(means2d, radii, tile_size, tiles_x, tiles_y):
    """[C, N, 4] int (x0, x1, y0, y1), end-exclusive tiles of the square [mean ± radius], in
    float32 exactly as gsplat's isect_tiles; empty where a radius is <= 0."""
    means2d, radii = means2d.float(), radii.float()
    lo = torch.floor(means2d / tile_size - radii / tile_size)
    hi = torch.ceil(means2d / tile_size + radii / tile_size)
    limit = torch.tensor([tiles_x, tiles_y], dtype=torch.float32)
    lo, hi = torch.minimum(lo.clamp(min=0), limit), torch.minimum(hi.clamp(min=0), limit)
    hi = torch.where((radii > 0).all(-1, keepdim=True), hi, lo)
    return torch.stack([lo[..., 0], hi[..., 0], lo[..., 1], hi[..., 1]], -1).long()


def reference(means2d, conics, colors, opacities, depths, radii, backgrounds, width, height, tile_size=16):
    """Every pixel at once, Gaussians one at a time in depth order, autograd for gradients.
    means2d [C, N, 2], or [C, H*W, N, 2] for a separate copy per pixel (per-pixel gradients)."""
    C, N = opacities.shape
    per_pixel = means2d.dim() == 4
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    xs, ys = xs.reshape(-1), ys.reshape(-1)
    px, py = xs.double() + 0.5, ys.double() + 0.5
    tx, ty = xs // tile_size, ys // tile_size
    radii = radii if radii.dim() == 3 else radii[..., None].expand(C, N, 2)
    m_tiles = means2d[:, 0] if per_pixel else means2d
    rects = tile_rects(m_tiles.detach(), radii, tile_size, math.ceil(width / tile_size), math.ceil(height / tile_size))
    images, alphas = [], []
    for c in range(C):
        T = torch.ones(height * width, dtype=torch.float64)
        out = torch.zeros(height * width, colors.shape[-1], dtype=torch.float64)
        done = torch.zeros(height * width, dtype=torch.bool)
        for g in torch.argsort(depths[c], stable=True).tolist():
            x0, x1, y0, y1 = rects[c, g].tolist()
            if x0 >= x1 or y0 >= y1:
                continue
            m = means2d[c, :, g] if per_pixel else means2d[c, g]  # [P, 2] or [2]
            dx, dy = m[..., 0] - px, m[..., 1] - py
            a, b, cc = conics[c, g]
            sigma = 0.5 * (a * dx * dx + cc * dy * dy) + b * dx * dy
            raw = opacities[c, g] * torch.exp(-sigma.clamp(min=0))
            alpha = torch.where(raw <= 0.999, raw, torch.full_like(raw, 0.999))  # no grad when clamped
            hit = ~done & (tx >= x0) & (tx < x1) & (ty >= y0) & (ty < y1) & (sigma >= 0) & (alpha >= 1 / 255)
            next_T = T * (1 - alpha)
            stop = hit & (next_T <= 1e-4)  # exclusive: the stopping Gaussian is not added
            add = hit & ~stop
            done = done | stop
            out = out + torch.where(add, alpha * T, 0)[:, None] * colors[c, g]
            T = torch.where(add, next_T, T)
        if backgrounds is not None:
            out = out + T[:, None] * backgrounds[c]
        images.append(out.reshape(height, width, -1))
        alphas.append((1 - T).reshape(height, width, 1))
    return torch.stack(images), torch.stack(alphas)


def make_scene(C, N, D, width, height, seed, scale=(0.3, 8.0), opacity=(0.05, 0.95), spread=0.2):
    """Random anisotropic Gaussians; means spread `spread` beyond the image on each side."""
    g = torch.Generator().manual_seed(seed)
    size = torch.tensor([width, height], dtype=torch.float32)
    means2d = (torch.rand(C, N, 2, generator=g) * (1 + 2 * spread) - spread) * size
    log_lo, log_hi = math.log(scale[0]), math.log(scale[1])
    s = torch.exp(torch.rand(C, N, 2, generator=g) * (log_hi - log_lo) + log_lo)  # std devs [px]
    theta = torch.rand(C, N, generator=g) * math.pi
    cos, sin = torch.cos(theta), torch.sin(theta)
    R = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # [C, N, 2, 2]
    cov = R @ torch.diag_embed(s**2) @ R.transpose(-1, -2)
    inv = torch.linalg.inv(cov.double()).float()
    return dict(
        means2d=means2d,
        conics=torch.stack([inv[..., 0, 0], inv[..., 0, 1], inv[..., 1, 1]], -1),
        colors=torch.rand(C, N, D, generator=g),
        opacities=torch.rand(C, N, generator=g) * (opacity[1] - opacity[0]) + opacity[0],
        depths=torch.rand(C, N, generator=g) * 9 + 1,
        radii=torch.ceil(3 * s.amax(-1)).int(),
    )


def edge_scene(width, height, D):
    """Hand-made corner cases on top of a random background scene, one camera."""
    base = make_scene(1, 40, D, width, height, seed=7)
    rows = [  # x, y, std x, std y (or a conic (a, b, c)), opacity, depth, radius
        (-30.0, 10.0, 2.0, 2.0, 0.9, 1.0, 6),  # fully outside, tiles clamp to nothing
        (-3.0, 5.0, 4.0, 3.0, 0.8, 1.5, 12),  # over the left border
        (width + 2.0, height - 1.0, 3.0, 5.0, 0.8, 1.5, 15),  # over the bottom-right corner
        (10.0, 10.0, 3.0, 3.0, 0.9, 0.5, 0),  # radius 0: culled although in view
        (12.3, 7.7, 0.05, 0.08, 0.9, 2.0, 1),  # far smaller than a pixel
        (width / 2, height / 2, 80.0, 60.0, 0.3, 9.0, 240),  # covers everything
        (20.0, 15.0, 4.0, 4.0, 0.0, 0.2, 12),  # zero opacity
        (8.5, 20.5, 5.0, 5.0, 1.0, 0.3, 15),  # opacity 1 on a pixel centre: alpha clamped to 0.999 there
        (25.5, 8.5, 4.0, 6.0, 0.9995, 0.4, 18),  # clamped just above 0.999
        (16.0, 16.0, 3.0, 3.0, 0.7, 3.0, 9),  # same depth as the next: index order decides
        (17.0, 15.0, 3.0, 3.0, 0.7, 3.0, 9),
        (14.0, 12.0, (0.05, 0.2, 0.05), 0.6, 0.6, 10),  # indefinite conic: sigma < 0 in places
        (30.0, 20.0, (0.3, -0.25, 0.3), 0.8, 0.7, 8),  # thin, rotated
    ]
    rows = [r if isinstance(r[2], tuple) else (r[0], r[1], (r[2] ** -2, 0.0, r[3] ** -2), *r[4:]) for r in rows]
    x, y, conic, o, d, r = zip(*rows)
    extra = dict(
        means2d=torch.tensor([x, y]).T[None].float(),
        conics=torch.tensor(conic)[None].float(),
        colors=torch.rand(1, len(rows), D),
        opacities=torch.tensor(o)[None].float(),
        depths=torch.tensor(d)[None].float(),
        radii=torch.tensor(r)[None].int(),
    )
    return {k: torch.cat([base[k], extra[k]], 1) for k in base}


def run_kernel(scene, backgrounds, width, height, v_colors, v_alphas, tile_size=16, absgrad=False):
    leaves = {k: scene[k].clone().requires_grad_() for k in ("means2d", "conics", "colors", "opacities")}
    bg = None if backgrounds is None else backgrounds.clone().requires_grad_()
    colors, alphas = _cpu.rasterize_to_pixels(
        leaves["means2d"], leaves["conics"], leaves["colors"], leaves["opacities"], scene["depths"], scene["radii"],
        bg, width, height, tile_size=tile_size, absgrad=absgrad,
    )
    ((colors * v_colors).sum() + (alphas * v_alphas).sum()).backward()
    grads = {k: x.grad for k, x in leaves.items()}
    if bg is not None:
        grads["backgrounds"] = bg.grad
    return colors.detach(), alphas.detach(), grads, leaves["means2d"]


def run_reference(scene, backgrounds, width, height, v_colors, v_alphas, tile_size=16):
    leaves = {k: scene[k].double().requires_grad_() for k in ("means2d", "conics", "colors", "opacities")}
    bg = None if backgrounds is None else backgrounds.double().requires_grad_()
    colors, alphas = reference(
        leaves["means2d"], leaves["conics"], leaves["colors"], leaves["opacities"], scene["depths"], scene["radii"],
        bg, width, height, tile_size,
    )
    ((colors * v_colors).sum() + (alphas * v_alphas).sum()).backward()
    grads = {k: x.grad for k, x in leaves.items()}
    if bg is not None:
        grads["backgrounds"] = bg.grad
    return colors.detach(), alphas.detach(), grads


def assert_close(actual, expected, name, rtol=1e-4, atol=2e-5):
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual.double(), expected, rtol=rtol, atol=atol * max(scale, 1.0), msg=lambda m: f"{name}: {m}")


def compare(scene, width, height, backgrounds=None, tile_size=16, seed=0):
    C, D = scene["colors"].shape[0], scene["colors"].shape[-1]
    g = torch.Generator().manual_seed(seed)
    v_colors, v_alphas = torch.randn(C, height, width, D, generator=g), torch.randn(C, height, width, 1, generator=g)
    colors, alphas, grads, _ = run_kernel(scene, backgrounds, width, height, v_colors, v_alphas, tile_size)
    ref_colors, ref_alphas, ref_grads = run_reference(scene, backgrounds, width, height, v_colors.double(), v_alphas.double(), tile_size)
    assert colors.shape == (C, height, width, D) and alphas.shape == (C, height, width, 1)
    assert_close(colors, ref_colors, "colors", atol=1e-5)
    assert_close(alphas, ref_alphas, "alphas", atol=1e-5)
    for name, ref in ref_grads.items():
        assert_close(grads[name], ref, f"grad {name}", rtol=1e-3, atol=1e-4)
    return ref_alphas


CASES = {  # name: (C, N, D, width, height, background, tile_size, scene overrides)
    "rgb": (1, 150, 3, 37, 29, False, 16, {}),
    "cameras_rgbd_background": (3, 80, 4, 29, 37, True, 16, {}),
    "depth_only_background": (2, 100, 1, 37, 29, True, 16, {}),
    "features_32": (1, 60, 32, 37, 29, False, 16, {}),
    "tile_8_background": (2, 100, 3, 37, 29, True, 8, {}),
    "tile_12": (1, 120, 3, 37, 29, False, 12, {}),  # rows of 16 lanes, 12 of them pixels
    "large_opaque_layers": (1, 250, 3, 37, 29, True, 16, dict(scale=(3.0, 15.0), opacity=(0.5, 1.0))),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_reference(name):
    C, N, D, width, height, background, tile_size, overrides = CASES[name]
    scene = make_scene(C, N, D, width, height, seed=len(name), **overrides)
    backgrounds = torch.rand(C, D) if background else None
    ref_alphas = compare(scene, width, height, backgrounds, tile_size)
    if name == "large_opaque_layers":  # early termination is exercised
        assert (1 - ref_alphas).min() < 1e-3


@pytest.mark.parametrize("D", [3, 4])
def test_edge_cases(D):
    width, height = 37, 29
    compare(edge_scene(width, height, D), width, height, torch.rand(1, D) if D == 4 else None)


def test_per_axis_radii_and_empty():
    width, height = 29, 21
    scene = make_scene(2, 60, 3, width, height, seed=3)
    scene["radii"] = torch.stack([scene["radii"], (scene["radii"] // 2)], -1)  # [C, N, 2], y radius shorter
    compare(scene, width, height)
    empty = make_scene(2, 0, 3, width, height, seed=3)
    colors, alphas, grads, _ = run_kernel(empty, torch.ones(2, 3), width, height, torch.ones(2, height, width, 3), torch.ones(2, height, width, 1))
    assert (colors == 1).all() and (alphas == 0).all() and grads["means2d"].shape == (2, 0, 2)


def test_absgrad_sums_per_pixel_contributions():
    C, N, D, width, height = 2, 40, 3, 23, 19
    scene = make_scene(C, N, D, width, height, seed=11)
    backgrounds = torch.rand(C, D)
    v_colors, v_alphas = torch.randn(C, height, width, D), torch.randn(C, height, width, 1)
    *_, means2d = run_kernel(scene, backgrounds, width, height, v_colors, v_alphas, absgrad=True)
    per_pixel = scene["means2d"].double()[:, None].expand(C, height * width, N, 2).clone().requires_grad_()
    colors, alphas = reference(
        per_pixel, scene["conics"].double(), scene["colors"].double(), scene["opacities"].double(),
        scene["depths"], scene["radii"], backgrounds.double(), width, height,
    )
    ((colors * v_colors.double()).sum() + (alphas * v_alphas.double()).sum()).backward()
    expected = per_pixel.grad.abs().sum(1)  # [C, N, 2]
    assert expected.abs().sum() > 0
    assert_close(means2d.absgrad, expected, "absgrad", rtol=1e-3, atol=1e-4)
    assert_close(means2d.grad, per_pixel.grad.sum(1), "grad means2d", rtol=1e-3, atol=1e-4)

    # A second backward into the same tensor accumulates, like .grad.
    first = means2d.absgrad.clone()
    out, _ = _cpu.rasterize_to_pixels(
        means2d, scene["conics"], scene["colors"], scene["opacities"], scene["depths"], scene["radii"],
        backgrounds, width, height, absgrad=True,
    )
    (out * v_colors).sum().backward()
    assert (means2d.absgrad >= first).all() and (means2d.absgrad > first).any()


def test_thread_count_does_not_change_results():
    width, height = 70, 45
    scene = make_scene(2, 400, 3, width, height, seed=5)
    v_colors, v_alphas = torch.randn(2, height, width, 3), torch.randn(2, height, width, 1)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            colors, alphas, grads, _ = run_kernel(scene, None, width, height, v_colors, v_alphas)
            results.append([colors, alphas, *grads.values()])
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_strided_image_gradients():
    """Autograd may hand the backward expanded or permuted image gradients: they give the same
    gradients as contiguous copies."""
    width, height = 40, 30
    scene = make_scene(2, 200, 3, width, height, seed=11)
    v_colors = torch.randn(2, 1, width, 3).expand(2, height, width, 3)  # stride 0 along H
    v_alphas = torch.randn(2, width, height, 1).transpose(1, 2)  # permuted
    results = []
    for v_c, v_a in ((v_colors, v_alphas), (v_colors.contiguous(), v_alphas.contiguous())):
        leaves = [scene[k].clone().requires_grad_() for k in ("means2d", "conics", "colors", "opacities")]
        colors, alphas = _cpu.rasterize_to_pixels(*leaves, scene["depths"], scene["radii"], None, width, height)
        torch.autograd.backward([colors, alphas], [v_c, v_a])
        results.append([leaf.grad for leaf in leaves])
    for strided, contiguous in zip(*results):
        assert torch.equal(strided, contiguous)
