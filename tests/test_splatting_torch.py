"""`renderers.splatting.rasterization` on the torch backend, against plain formulas and gsplat's conventions."""
import math
import sys
import types

import numpy as np
import pytest
import torch

import renderers.splatting as splatting
from renderers.splatting import _torch_impl, rasterization, rendering
from renderers.splatting._torch_impl import isect_offset_encode, isect_tiles, project_gaussians, spherical_harmonics


def pinhole(f: float, cx: float, cy: float, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor([[f, 0.0, cx], [0.0, f, cy], [0.0, 0.0, 1.0]], dtype=dtype)


def random_viewmat(g: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """World → camera of a camera ~4 units from the origin, looking roughly at it."""
    axis_angle = torch.randn(3, generator=g, dtype=dtype) * 0.3
    R = torch.linalg.matrix_exp(torch.cross(torch.eye(3, dtype=dtype), axis_angle.expand(3, 3), dim=-1).T)
    viewmat = torch.eye(4, dtype=dtype)
    viewmat[:3, :3] = R
    viewmat[:3, 3] = torch.tensor([0.1, -0.2, 4.0], dtype=dtype) + 0.2 * torch.randn(3, generator=g, dtype=dtype)
    return viewmat


def random_scene(n: int, seed: int = 0, dtype=torch.float64, spread: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype) * spread
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.rand(n, 3, generator=g, dtype=dtype) * 0.25 + 0.02
    opacities = torch.rand(n, generator=g, dtype=dtype) * 0.8 + 0.1
    colors = torch.rand(n, 3, generator=g, dtype=dtype)
    return means, quats, scales, opacities, colors


def single(mean, scale, opacity, color, dtype=torch.float64):
    """One isotropic Gaussian as rasterization() arguments [1, ...]."""
    t = lambda x: torch.tensor(x, dtype=dtype)  # noqa: E731
    return t([mean]), t([[1.0, 0.0, 0.0, 0.0]]), t([[scale] * 3]), t([opacity]), t([color])


IDENTITY = torch.eye(4, dtype=torch.float64)[None]


# ---------------------------------------------------------------- projection and colours


def quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """v rotated by unit quaternion q (wxyz) as q v q*, via Hamilton products."""

    def mul(a, b):
        w1, x1, y1, z1 = a
        w2, x2, y2, z2 = b
        return np.array(
            [
                w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
                w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
                w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
            ]
        )

    return mul(mul(q, np.r_[0.0, v]), q * np.array([1, -1, -1, -1]))[1:]


def project_one(mean, quat, scale, opacity, viewmat, K, width, height, eps2d=0.3, near=0.01, far=1e10):
    """gsplat's EWA projection of one Gaussian, written out: (radii, mean2d, depth, conic) or None if culled."""
    q = quat / np.linalg.norm(quat)
    rot = np.stack([quat_rotate(q, e) for e in np.eye(3)], 1)  # columns = rotated axes
    cov = rot @ np.diag(scale**2) @ rot.T
    W, t = viewmat[:3, :3], viewmat[:3, 3]
    x, y, z = W @ mean + t
    if not near <= z <= far:
        return None
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    u = min(max(x / z, -(cx / fx + 0.3 * tan_x)), (width - cx) / fx + 0.3 * tan_x)
    v = min(max(y / z, -(cy / fy + 0.3 * tan_y)), (height - cy) / fy + 0.3 * tan_y)
    J = np.array([[fx / z, 0, -fx * u / z], [0, fy / z, -fy * v / z]])
    cov2d = J @ W @ cov @ W.T @ J.T + eps2d * np.eye(2)
    if np.linalg.det(cov2d) <= 0 or opacity < 1 / 255:
        return None
    extend = min(3.33, math.sqrt(2 * math.log(opacity * 255)))
    radii = np.ceil(extend * np.sqrt(np.diag(cov2d)))
    mean2d = np.array([fx * x / z + cx, fy * y / z + cy])
    if np.any(mean2d + radii <= 0) or mean2d[0] - radii[0] >= width or mean2d[1] - radii[1] >= height:
        return None
    inv = np.linalg.inv(cov2d)
    return radii, mean2d, z, np.array([inv[0, 0], inv[0, 1], inv[1, 1]])


def test_projection_matches_per_gaussian_ewa():
    g = torch.Generator().manual_seed(1)
    means, quats, scales, opacities, _ = random_scene(300, seed=1, spread=2.5)  # many off-screen, some behind
    opacities[:20] = 0.002  # below 1/255
    viewmats = torch.stack([random_viewmat(g), random_viewmat(g)])
    Ks = torch.stack([pinhole(60.0, 41.0, 29.5), pinhole(45.0, 30.0, 35.0)])
    width, height = 80, 64
    radii, means2d, depths, conics, comp = project_gaussians(
        means, quats, scales, viewmats, Ks, width, height, opacities=opacities
    )
    assert radii.shape == (2, 300, 2) and radii.dtype == torch.int32 and comp is None
    n_visible = 0
    for c in range(2):
        for n in range(300):
            args = [x.numpy() for x in (means[n], quats[n], scales[n])]
            ref = project_one(*args, opacities[n].item(), viewmats[c].numpy(), Ks[c].numpy(), width, height)
            if ref is None:
                assert radii[c, n].tolist() == [0, 0], (c, n)
                continue
            n_visible += 1
            assert radii[c, n].tolist() == ref[0].tolist(), (c, n)
            np.testing.assert_allclose(means2d[c, n].numpy(), ref[1], rtol=1e-10)
            np.testing.assert_allclose(depths[c, n].item(), ref[2], rtol=1e-12)
            np.testing.assert_allclose(conics[c, n].numpy(), ref[3], rtol=1e-8, atol=1e-12)
    assert 50 < n_visible < 550  # both culled and visible Gaussians were exercised


def sh_reference(degree: int, d: torch.Tensor, sh: torch.Tensor) -> torch.Tensor:
    """Real SH colour with the constants of the 3DGS paper's code, term by term."""
    x, y, z = (d / d.norm(dim=-1, keepdim=True)).unbind(-1)
    C0, C1 = 0.28209479177387814, 0.4886025119029199
    C2 = [1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396]
    C3 = [-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
          -0.4570457994644658, 1.445305721320277, -0.5900435899266435]  # fmt: skip
    terms = [C0 * torch.ones_like(x), -C1 * y, C1 * z, -C1 * x]
    terms += [C2[0] * x * y, C2[1] * y * z, C2[2] * (2 * z * z - x * x - y * y), C2[3] * x * z, C2[4] * (x * x - y * y)]
    terms += [
        C3[0] * y * (3 * x * x - y * y),
        C3[1] * x * y * z,
        C3[2] * y * (4 * z * z - x * x - y * y),
        C3[3] * z * (2 * z * z - 3 * x * x - 3 * y * y),
        C3[4] * x * (4 * z * z - x * x - y * y),
        C3[5] * z * (x * x - y * y),
        C3[6] * x * (x * x - 3 * y * y),
    ]
    return sum(t[:, None] * sh[:, k] for k, t in enumerate(terms[: (degree + 1) ** 2]))


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_real_basis(degree):
    dirs = torch.randn(64, 3, dtype=torch.float64) * 3
    sh = torch.randn(64, 16, 3, dtype=torch.float64)
    torch.testing.assert_close(spherical_harmonics(degree, dirs, sh), sh_reference(degree, dirs, sh))


def test_sh_colour_uses_direction_from_camera_centre():
    # Camera centre at (0.4, -0.3, -2) (viewmat = translation by its negative); degree 1 makes the colour
    # depend on the direction; gsplat adds 0.5 and clamps at 0.
    viewmat = torch.eye(4, dtype=torch.float64)
    campos = torch.tensor([0.4, -0.3, -2.0], dtype=torch.float64)
    viewmat[:3, 3] = -campos
    means, quats, scales, opacities, _ = single([0.9, 0.6, 2.0], 0.05, 0.5, [0, 0, 0])
    sh = torch.randn(1, 4, 3, dtype=torch.float64)
    sh[0, 0] = torch.tensor([1.0, 0.0, -3.0])  # the last channel clamps to 0
    K = pinhole(50.0, 32.0, 32.0)[None]
    _, _, info = rasterization(means, quats, scales, opacities, sh, viewmat[None], K, 64, 64, sh_degree=1, backend="torch")
    mean2d = info["means2d"][0, 0]
    cx, cy = mean2d.floor().long().tolist()
    # Shift the principal point so that the mean lands on a pixel centre, where alpha = opacity.
    K2 = K.clone()
    K2[0, :2, 2] += torch.tensor([cx + 0.5, cy + 0.5], dtype=torch.float64) - mean2d
    img, _, _ = rasterization(means, quats, scales, opacities, sh, viewmat[None], K2, 64, 64, sh_degree=1, backend="torch")
    colour = (sh_reference(1, means - campos, sh) + 0.5).clamp(min=0)
    torch.testing.assert_close(img[0, cy, cx], 0.5 * colour[0])
    assert img[0, cy, cx, 2] == 0


# ---------------------------------------------------------------- compositing


def test_isotropic_gaussian_profile():
    f, z, s, opacity = 100.0, 5.0, 0.1, 0.8  # 1 sigma = f s / z = 2 px
    bg = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64)
    colour = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64)
    K = pinhole(f, 32.5, 32.5)[None]  # the mean is the centre of pixel (32, 32)
    img, alpha, info = rasterization(
        *single([0.0, 0.0, z], s, opacity, colour.tolist()), IDENTITY, K, 64, 64, eps2d=0.0, backgrounds=bg,
        backend="torch",
    )  # fmt: skip
    row, a = img[0, 32], alpha[0, 32, :, 0]
    torch.testing.assert_close(row[32], opacity * colour + (1 - opacity) * bg[0])
    sigma_px = f * s / z
    for k in range(1, 7):  # alpha = o exp(-k²/2σ²) ≥ 1/255 up to k = 6
        expected = opacity * math.exp(-0.5 * (k / sigma_px) ** 2)
        assert a[32 + k].item() == pytest.approx(expected, rel=1e-9)
        torch.testing.assert_close(row[32 + k], row[32 - k])
        torch.testing.assert_close(img[0, 32 + k, 32], row[32 + k])  # isotropic
    assert a[32 + 2].item() == pytest.approx(math.exp(-0.5) * opacity)  # e^{-1/2} of the peak at 1 sigma
    assert a[32 + 7].item() == 0 and a[32 - 7].item() == 0  # below 1/255: skipped
    torch.testing.assert_close(img[0, 0, 0], bg[0])


def two_gaussians(order):
    front = ([0.0, 0.0, 3.0], 0.1, 0.7, [1.0, 0.0, 0.0])
    back = ([0.0, 0.0, 6.0], 0.3, 0.9, [0.0, 1.0, 0.0])
    parts = [single(*x) for x in ([front, back] if order == 0 else [back, front])]
    return [torch.cat(p) for p in zip(*parts)]


def test_two_gaussians_composite_front_to_back():
    K = pinhole(60.0, 16.5, 16.5)[None]
    a = rasterization(*two_gaussians(0), IDENTITY, K, 32, 32, backend="torch")
    b = rasterization(*two_gaussians(1), IDENTITY, K, 32, 32, backend="torch")
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    centre = a[0][0, 16, 16]
    torch.testing.assert_close(centre, torch.tensor([0.7, 0.3 * 0.9, 0.0], dtype=torch.float64))
    torch.testing.assert_close(a[1][0, 16, 16, 0], torch.tensor(1 - 0.3 * 0.1, dtype=torch.float64))


@pytest.mark.parametrize("pairs_per_chunk", [_torch_impl.PAIRS_PER_CHUNK, 1])
def test_compositing_stops_before_transmittance_drops_below_1e_4(monkeypatch, pairs_per_chunk):
    # Ten stacked Gaussians of alpha 0.9 at the centre pixel: T after k of them is 0.1^k; the
    # fourth would bring it to 1e-4 (≤ 1e-4), so compositing stops there (gsplat's exclusive rule):
    # the faint ones behind it (alpha 0.05) are not added, also when each Gaussian is its own step.
    monkeypatch.setattr(_torch_impl, "PAIRS_PER_CHUNK", pairs_per_chunk)
    n = 10
    means = torch.tensor([[0.0, 0.0, 2.0 + i] for i in range(n)], dtype=torch.float64)
    quats = torch.tensor([[1.0, 0, 0, 0]] * n, dtype=torch.float64)
    scales = torch.full((n, 3), 0.05, dtype=torch.float64) * means[:, 2:]
    colours = torch.eye(n, dtype=torch.float64)
    K = pinhole(50.0, 8.5, 8.5)[None]
    opacities = torch.tensor([0.9] * 4 + [0.05] * (n - 4), dtype=torch.float64)
    img, alpha, _ = rasterization(means, quats, scales, opacities, colours, IDENTITY, K, 17, 17, backend="torch")
    expected = torch.zeros(n, dtype=torch.float64)
    expected[:3] = 0.9 * 0.1 ** torch.arange(3.0, dtype=torch.float64)
    torch.testing.assert_close(img[0, 8, 8], expected)
    torch.testing.assert_close(alpha[0, 8, 8, 0], torch.tensor(1 - 0.1**3, dtype=torch.float64))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_early_termination_in_values_and_gradients(backend):
    """The stacked scene above in float32 on both backends, with a background and α = 0.95 (T after
    three is 1.25e-4, the fourth would leave 6e-6: no float32 knife edge at 1e-4): only the first
    three Gaussians get weight and gradient; the stop also ends the backward pass."""
    n = 10
    means = torch.tensor([[0.0, 0.0, 2.0 + i] for i in range(n)])
    quats = torch.tensor([[1.0, 0, 0, 0]] * n)
    scales = torch.full((n, 3), 0.05) * means[:, 2:]
    colours = torch.eye(n).requires_grad_()
    opacities = torch.tensor([0.95] * 4 + [0.05] * (n - 4)).requires_grad_()
    K, background = pinhole(50.0, 8.5, 8.5, torch.float32)[None], torch.full((1, n), 0.5)
    img, alpha, _ = rasterization(means, quats, scales, opacities, colours, IDENTITY.float(), K, 17, 17, backgrounds=background, backend=backend)
    weights = 0.95 * 0.05 ** torch.arange(3.0)  # w_i = α_i Π_{j<i}(1 − α_j) for the first three
    transmittance = 0.05**3
    torch.testing.assert_close(img[0, 8, 8], torch.cat([weights, torch.zeros(n - 3)]) + 0.5 * transmittance)
    torch.testing.assert_close(alpha[0, 8, 8, 0], torch.tensor(1 - transmittance))
    pixel = torch.zeros_like(img)
    pixel[0, 8, 8] = 1.0  # d(sum of the centre pixel's channels)
    colour_grad, opacity_grad = torch.autograd.grad((img * pixel).sum(), [colours, opacities])
    torch.testing.assert_close(colour_grad.diagonal()[:3], weights)
    assert (colour_grad[3:] == 0).all() and (opacity_grad[3:] == 0).all() and (opacity_grad[:3] != 0).all()


def test_chunked_compositing_matches_one_pass(monkeypatch):
    # Dense, partly opaque scene: transmittance, the early-stop flag and gradients cross chunk borders.
    means, quats, scales, opacities, colors = random_scene(120, seed=3, spread=0.5)
    opacities = opacities * 0.2 + 0.8
    K = pinhole(30.0, 12.0, 10.0)[None]
    viewmat = random_viewmat(torch.Generator().manual_seed(3))[None]
    bg = torch.tensor([[0.3, 0.2, 0.1]], dtype=torch.float64)

    def render_and_grads():
        params = [x.clone().requires_grad_() for x in (means, quats, scales, opacities, colors)]
        img, alpha, _ = rasterization(*params, viewmat, K, 24, 20, backgrounds=bg, tile_size=8, backend="torch")
        (img * torch.linspace(0, 1, 3, dtype=torch.float64)).sum().backward()
        return [img, alpha] + [p.grad for p in params]

    one_pass = render_and_grads()
    assert one_pass[1].amax() > 0.999  # some pixels are opaque
    monkeypatch.setattr(_torch_impl, "PAIRS_PER_CHUNK", 1)  # one Gaussian per tile per step
    for a, b in zip(one_pass, render_and_grads()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("with_background", [False, True])
def test_depth_modes(with_background):
    z = 4.0
    K = pinhole(40.0, 16.0, 16.0)[None]
    gauss = single([0.05, -0.05, z], 0.2, 0.99, [0.2, 0.4, 0.6])
    bg = torch.tensor([[0.5, 0.5, 0.5]], dtype=torch.float64) if with_background else None
    render = lambda mode: rasterization(*gauss, IDENTITY, K, 32, 32, backgrounds=bg, render_mode=mode, backend="torch")  # noqa: E731
    rgb, alpha, _ = render("RGB")
    d, _, _ = render("D")
    ed, _, _ = render("ED")
    rgbd, _, _ = render("RGB+D")
    rgbed, _, _ = render("RGB+ED")
    assert d.shape == ed.shape == (1, 32, 32, 1) and rgbd.shape == (1, 32, 32, 4)
    torch.testing.assert_close(d, alpha * z)  # accumulated z, background 0
    assert d.max().item() == pytest.approx(0.99 * z)  # the z of a (nearly) opaque Gaussian
    hit = alpha > 0
    torch.testing.assert_close(ed[hit], torch.full_like(ed[hit], z))
    assert (ed[~hit] == 0).all()
    torch.testing.assert_close(rgbd, torch.cat([rgb, d], -1))
    torch.testing.assert_close(rgbed, torch.cat([rgb, ed], -1))


def test_culled_gaussians_contribute_nothing():
    K = pinhole(40.0, 16.0, 16.0)[None]
    visible = single([0.0, 0.0, 3.0], 0.2, 0.8, [1.0, 0.5, 0.0])
    culled = [
        single([0.0, 0.0, -2.0], 0.2, 0.8, [0.0, 1.0, 1.0]),  # behind the camera
        single([30.0, 0.0, 3.0], 0.2, 0.8, [0.0, 1.0, 1.0]),  # outside the image
        single([0.1, 0.0, 2.0], 0.2, 0.0, [0.0, 1.0, 1.0]),  # zero opacity
        single([0.1, 0.0, 50.0], 0.2, 0.8, [0.0, 1.0, 1.0]),  # beyond the far plane
    ]
    params = [torch.cat(p).requires_grad_() for p in zip(visible, *culled)]
    img, alpha, info = rasterization(*params, IDENTITY, K, 32, 32, far_plane=20.0, backend="torch")
    ref_img, ref_alpha, _ = rasterization(*visible, IDENTITY, K, 32, 32, backend="torch")
    assert (info["radii"][0, 0] > 0).all() and (info["radii"][0, 1:] == 0).all()
    torch.testing.assert_close(img, ref_img)
    torch.testing.assert_close(alpha, ref_alpha)
    img.sum().backward()
    for p in params:
        assert (p.grad[1:] == 0).all()


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize(
    "render_mode, rasterize_mode, sh_degree",
    [("RGB", "classic", None), ("RGB+ED", "antialiased", None), ("RGB", "classic", 3)],
)
def test_gradients_match_finite_differences(render_mode, rasterize_mode, sh_degree):
    means, quats, scales, opacities, colors = random_scene(3, seed=4, spread=0.25)
    opacities = opacities * 0.6  # far from alpha clamping and early termination
    if sh_degree is not None:
        colors = torch.randn(3, 16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * 0.3
    viewmats = torch.stack([random_viewmat(torch.Generator().manual_seed(s)) for s in (6, 7)])
    Ks = torch.stack([pinhole(24.0, 7.0, 6.0), pinhole(20.0, 6.5, 5.5)])
    bg = torch.tensor([[0.2, 0.3, 0.1], [0.0, 0.5, 1.0]], dtype=torch.float64)

    def render(*params):
        img, alpha, _ = rasterization(*params, viewmats, Ks, 14, 12, backgrounds=bg, tile_size=8, sh_degree=sh_degree,
                                      render_mode=render_mode, rasterize_mode=rasterize_mode, backend="torch")  # fmt: skip
        return img, alpha

    params = [x.clone().requires_grad_() for x in (means, quats, scales, opacities, colors)]
    assert render(*params)[1].amax() > 0.2  # the Gaussians are in view
    assert_grads_match_finite_differences(render, params)


def assert_grads_match_finite_differences(fn, params, eps=1e-6):
    """Autograd gradient of a fixed random projection of fn's outputs vs central differences, element by element."""
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(o.shape, generator=g, dtype=o.dtype) for o in fn(*params)]
    loss = lambda *p: sum((w * o).sum() for w, o in zip(weights, fn(*p)))  # noqa: E731
    analytic = torch.autograd.grad(loss(*params), params)
    with torch.no_grad():
        for k, (p, grad) in enumerate(zip(params, analytic)):
            numeric = torch.zeros_like(p).flatten()
            for i in range(p.numel()):
                shifted = [[x.clone() for x in params] for _ in range(2)]
                shifted[0][k].view(-1)[i] += eps
                shifted[1][k].view(-1)[i] -= eps
                numeric[i] = (loss(*shifted[0]) - loss(*shifted[1])) / (2 * eps)
            torch.testing.assert_close(grad, numeric.view_as(p), rtol=1e-5, atol=1e-7, msg=f"input {k}")


# ---------------------------------------------------------------- info, cameras, backends


def test_info_matches_gsplat_layout():
    from gsplat.cuda._torch_impl import _isect_offset_encode, _isect_tiles

    means, quats, scales, opacities, colors = [x.float().requires_grad_() for x in random_scene(40, seed=2)]
    viewmats = torch.stack([random_viewmat(torch.Generator().manual_seed(s), torch.float32) for s in (3, 4)])
    Ks = torch.stack([pinhole(40.0, 24.0, 20.0, torch.float32)] * 2)
    img, alpha, info = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, 48, 40, absgrad=True,
                                     backend="torch")  # fmt: skip
    C, N = 2, 40
    assert img.shape == (C, 40, 48, 3) and alpha.shape == (C, 40, 48, 1)
    assert info["radii"].shape == (C, N, 2) and info["radii"].dtype == torch.int32
    for key, shape in [("means2d", (C, N, 2)), ("depths", (C, N)), ("conics", (C, N, 3)), ("opacities", (C, N))]:
        assert info[key].shape == shape, key
    assert (info["width"], info["height"], info["n_cameras"], info["n_batches"]) == (48, 40, C, 1)
    assert (info["tile_width"], info["tile_height"], info["tile_size"]) == (3, 3, 16)
    assert info["gaussian_ids"] is None and info["camera_ids"] is None and info["batch_ids"] is None
    # Tile binning is gsplat's, entry for entry.
    ref_tiles, ref_ids, ref_flat = _isect_tiles(info["means2d"].detach(), info["radii"], info["depths"].detach(), 16, 3, 3)
    torch.testing.assert_close(info["tiles_per_gauss"], ref_tiles)
    assert torch.equal(info["isect_ids"], ref_ids) and torch.equal(info["flatten_ids"], ref_flat)
    assert torch.equal(info["isect_offsets"], _isect_offset_encode(ref_ids, C, 3, 3).reshape(C, 3, 3))
    assert info["isect_ids"].numel() > 0
    # means2d is in the graph; absgrad = Σ_pixels |∂L/∂means2d| ≥ |∂L/∂means2d|.
    info["means2d"].retain_grad()
    (img * torch.randn_like(img)).sum().backward()
    grad, absgrad = info["means2d"].grad, info["means2d"].absgrad
    assert grad.shape == absgrad.shape == (C, N, 2) and grad.abs().sum() > 0
    assert (absgrad >= grad.abs() - 1e-5).all() and (absgrad.sum() > grad.abs().sum())
    assert (absgrad[info["radii"].amax(-1) == 0] == 0).all()


def test_isect_tiles_edge_cases_match_gsplat():
    from gsplat.cuda._torch_impl import _isect_tiles

    means2d = torch.tensor([[[-3.0, 5.0], [17.0, 15.9], [40.0, 40.0], [16.0, 16.0], [5.0, 5.0]]])
    radii = torch.tensor([[[4, 2], [1, 1], [30, 30], [0, 3], [70, 1]]], dtype=torch.int32)
    depths = torch.tensor([[2.0, 1.0, 3.0, 1.0, 2.0]])  # equal depths keep the input order
    ours = isect_tiles(means2d, radii, depths, 16, 3, 2)
    for a, b in zip(ours, _isect_tiles(means2d, radii, depths, 16, 3, 2)):
        assert torch.equal(a, b)
    offsets = isect_offset_encode(ours[1], 1, 3, 2)
    assert offsets.shape == (1, 2, 3) and offsets[0, 0, 0] == 0 and (offsets.flatten().diff() >= 0).all()


def test_several_cameras_equal_per_camera_calls():
    means, quats, scales, opacities, _ = random_scene(60, seed=8)
    colors = torch.rand(3, 60, 4, dtype=torch.float64)  # per-view, 4 channels
    viewmats = torch.stack([random_viewmat(torch.Generator().manual_seed(s)) for s in range(3)])
    Ks = torch.stack([pinhole(30.0 + 5 * c, 15.0, 12.0) for c in range(3)])
    bg = torch.rand(3, 4, dtype=torch.float64)
    params = [x.clone().requires_grad_() for x in (means, quats, scales, opacities)]
    img, alpha, info = rasterization(*params, colors, viewmats, Ks, 30, 24, backgrounds=bg, render_mode="RGB+ED",
                                     backend="torch")  # fmt: skip
    img.sum().backward()
    grads = [p.grad for p in params]
    per_camera_grads = [torch.zeros_like(p) for p in params]
    for c in range(3):
        params_c = [x.detach().clone().requires_grad_() for x in params]
        img_c, alpha_c, info_c = rasterization(*params_c, colors[c : c + 1], viewmats[c : c + 1], Ks[c : c + 1], 30, 24,
                                               backgrounds=bg[c : c + 1], render_mode="RGB+ED", backend="torch")  # fmt: skip
        torch.testing.assert_close(img[c : c + 1], img_c)
        torch.testing.assert_close(alpha[c : c + 1], alpha_c)
        assert torch.equal(info["radii"][c : c + 1], info_c["radii"])
        img_c.sum().backward()
        for acc, p in zip(per_camera_grads, params_c):
            acc += p.grad
    for a, b in zip(grads, per_camera_grads):
        torch.testing.assert_close(a, b)


def test_degenerate_covariances_stay_finite():
    means = torch.tensor([[0.0, 0.0, 3.0], [0.2, 0.1, 2.0], [0.0, 0.0, 0.0], [0.1, 0.0, 1e-9], [-0.3, 0.2, 4.0]])
    quats = torch.tensor([[1.0, 0, 0, 0], [0.3, 0.2, 0.1, 0.5], [0, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]])
    for scale in (0.0, 1e3, 1e6):
        scales = torch.full((5, 3), scale)
        scales[4] = torch.tensor([scale, 0.0, 1.0])  # flat
        for mode in ("classic", "antialiased"):
            params = [x.clone().requires_grad_() for x in (means, quats, scales, torch.full((5,), 0.5), torch.rand(5, 3))]
            img, alpha, info = rasterization(*params, IDENTITY.float(), pinhole(30.0, 16.0, 16.0, torch.float32)[None],
                                             32, 32, render_mode="RGB+ED", rasterize_mode=mode, backend="torch")  # fmt: skip
            (img.sum() + alpha.sum()).backward()
            for t in [img, alpha, info["means2d"], info["conics"], info["depths"]] + [p.grad for p in params]:
                assert torch.isfinite(t).all(), (scale, mode)
            assert (info["radii"][0, 2:4] == 0).all()  # at / just in front of the camera centre


def test_nothing_visible_still_backpropagates():
    params = [x.requires_grad_() for x in single([0.0, 0.0, -3.0], 0.1, 0.5, [1.0, 1.0, 1.0])]
    img, alpha, info = rasterization(*params, IDENTITY, pinhole(30.0, 8.0, 8.0)[None], 16, 16, backend="torch")
    info["means2d"].retain_grad()
    (img.sum() + alpha.sum()).backward()
    assert (img == 0).all() and (info["means2d"].grad == 0).all() and (params[0].grad == 0).all()


def test_unsupported_arguments():
    gauss = single([0.0, 0.0, 3.0], 0.1, 0.5, [1.0, 1.0, 1.0])
    K = pinhole(30.0, 8.0, 8.0)[None]
    with pytest.raises(NotImplementedError, match="camera_model"):
        rasterization(*gauss, IDENTITY, K, 16, 16, backend="torch", camera_model="fisheye")
    with pytest.raises(TypeError, match="not_an_argument"):
        rasterization(*gauss, IDENTITY, K, 16, 16, backend="torch", not_an_argument=1)
    reference, _, _ = rasterization(*gauss, IDENTITY, K, 16, 16, backend="torch")
    same, _, _ = rasterization(*gauss, IDENTITY, K, 16, 16, backend="torch", camera_model="pinhole", channel_chunk=8,
                               packed=True)  # fmt: skip
    torch.testing.assert_close(same, reference)


def test_cpu_backend_falls_back_to_torch_with_one_warning(monkeypatch):
    unavailable = types.ModuleType("renderers.splatting._cpu")
    unavailable.available = lambda: False
    unavailable.build_error = lambda: "no C++ compiler found"
    monkeypatch.setitem(sys.modules, "renderers.splatting._cpu", unavailable)
    monkeypatch.setattr(splatting, "_cpu", unavailable, raising=False)
    rendering._cpu_kernel.cache_clear()
    try:
        gauss = [x.float() for x in single([0.0, 0.0, 3.0], 0.2, 0.5, [1.0, 0.5, 0.0])]
        args = (IDENTITY.float(), pinhole(30.0, 8.0, 8.0, torch.float32)[None], 16, 16)
        with pytest.warns(UserWarning, match="torch rasterizer") as record:
            img, _, info = rasterization(*gauss, *args, backend="cpu")
            rasterization(*gauss, *args, backend="cpu")
        assert len(record) == 1
        assert info["isect_ids"] is not None  # rendered by the torch backend
        torch.testing.assert_close(img, rasterization(*gauss, *args, backend="torch")[0])
    finally:
        rendering._cpu_kernel.cache_clear()


def test_auto_backend_uses_torch_for_float64_on_cpu():
    _, _, info = rasterization(*single([0.0, 0.0, 3.0], 0.1, 0.5, [1.0, 1.0, 1.0]), IDENTITY,
                               pinhole(30.0, 8.0, 8.0)[None], 16, 16)  # fmt: skip
    assert info["isect_ids"] is not None


# ---------------------------------------------------------------- gsplat's densification strategy


@pytest.mark.parametrize("absgrad", [False, True])
def test_default_strategy_densifies_with_this_rasterizer(absgrad):
    from gsplat.strategy import DefaultStrategy

    means, quats, scales, opacities, colors = [x.float() for x in random_scene(80, seed=9, spread=0.6)]
    params = torch.nn.ParameterDict(
        {
            "means": means,
            "scales": torch.log(scales * 0.5),
            "quats": quats,
            "opacities": torch.logit(opacities),
            "sh0": ((colors - 0.5) / 0.28209479177387814)[:, None, :],
            "shN": torch.zeros(80, 15, 3),
        }
    )
    optimizers = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
    strategy = DefaultStrategy(refine_start_iter=1, refine_every=2, grow_grad2d=1e-6, grow_scale3d=0.05,
                               reset_every=1000, absgrad=absgrad)  # fmt: skip
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    viewmats = torch.stack([random_viewmat(torch.Generator().manual_seed(s), torch.float32) for s in (10, 11)])
    Ks = torch.stack([pinhole(32.0, 16.0, 16.0, torch.float32)] * 2)
    target = torch.rand(2, 32, 32, 3)
    counts = [len(params["means"])]
    for step in range(5):
        img, _, info = rasterization(
            params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
            torch.cat([params["sh0"], params["shN"]], 1), viewmats, Ks, 32, 32, sh_degree=3, absgrad=absgrad,
            backend="torch",
        )  # fmt: skip
        strategy.step_pre_backward(params, optimizers, state, step, info)
        (img - target).abs().mean().backward()
        strategy.step_post_backward(params, optimizers, state, step, info, packed=False)
        for opt in optimizers.values():
            opt.step()
            opt.zero_grad(set_to_none=True)
        counts.append(len(params["means"]))
        assert all(torch.isfinite(p).all() for p in params.values())
    assert counts[-1] != counts[0], counts
