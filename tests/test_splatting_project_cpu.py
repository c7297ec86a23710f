"""Compiled CPU projection and SH (`_cpu.project_gaussians`, `_cpu.spherical_harmonics`) vs the
autograd reference in `_torch_impl`: outputs, radii/culling and gradients of every differentiable
input, on random scenes with edge cases (behind the camera, off-screen, at the Jacobian clamp,
zero/huge scales, unnormalised quaternions, zero opacity)."""
import pytest
import torch

from renderers.splatting import _cpu, _torch_impl, rasterization

pytestmark = pytest.mark.skipif(not _cpu.available(), reason=str(_cpu.build_error()))

W, H = 64, 48


def cameras(C, g):
    """C cameras near the origin looking roughly along +z, with different intrinsics."""
    viewmats, Ks = [], []
    for _ in range(C):
        angle = 0.2 * torch.randn(3, generator=g)
        R = torch.linalg.matrix_exp(torch.tensor([[0, -angle[2], angle[1]], [angle[2], 0, -angle[0]], [-angle[1], angle[0], 0]]))
        V = torch.eye(4)
        V[:3, :3], V[:3, 3] = R, 0.3 * torch.randn(3, generator=g)
        f = 40 + 30 * torch.rand(1, generator=g).item()
        viewmats.append(V)
        Ks.append(torch.tensor([[f, 0, W / 2 + 3], [0, 1.1 * f, H / 2 - 2], [0, 0, 1]]))
    return torch.stack(viewmats), torch.stack(Ks)


def scene(N, C, seed):
    """Random Gaussians plus edge cases in the first 16 slots."""
    g = torch.Generator().manual_seed(seed)
    depth = 1 + 6 * torch.rand(N, generator=g)
    xy = (torch.rand(N, 2, generator=g) * 2 - 1) * depth[:, None] * 0.9  # some beyond the image
    means = torch.cat([xy, depth[:, None]], -1)
    quats = torch.randn(N, 4, generator=g) * torch.exp(torch.randn(N, 1, generator=g))  # unnormalised
    scales = torch.exp(torch.randn(N, 3, generator=g) - 3.0)
    opacities = torch.rand(N, generator=g)
    means[0, 2] = -2.0  # behind the camera
    means[1, 2] = 0.005  # in front of the near plane
    means[2] = torch.tensor([50.0, 0.0, 2.0])  # far off-screen
    means[3] = torch.tensor([3.0, -2.0, 2.0])  # beyond the Jacobian clamp, large enough to reach the image
    scales[3] = 0.8
    means[4] = torch.tensor([1.2, 0.9, 1.0])  # near the clamp limits
    scales[5] = 0.0  # point
    scales[6] = torch.tensor([0.0, 0.0, 0.2])  # needle
    scales[7] = 30.0  # huge
    quats[8] = torch.tensor([1e-3, 0, 0, 0])  # tiny quaternion
    opacities[9] = 0.0
    opacities[10] = 1 / 255  # at the alpha threshold
    scales[11] = torch.tensor([2.0, 1e-4, 1e-4])  # very anisotropic
    viewmats, Ks = cameras(C, g)
    return means, quats, scales, opacities, viewmats, Ks


def assert_close(actual, expected, rtol=2e-3, atol=0.0, name=""):
    """Elementwise |a - e| <= atol + rtol (|e| + 1e-3 max|e|): relative, with a floor for tiny entries."""
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    scale = expected.abs().max().clamp(min=1e-12)
    bad = (actual - expected).abs() > atol + rtol * (expected.abs() + 1e-3 * scale)
    assert not bad.any(), f"{name}: {bad.sum()} of {bad.numel()} differ, e.g. {actual[bad][:4]} vs {expected[bad][:4]}"


def run(fn, inputs, kwargs, cotangents):
    leaves = [x.clone().requires_grad_() for x in inputs[:3]]
    radii, means2d, depths, conics, comps = fn(*leaves, *inputs[3:], W, H, **kwargs)
    outputs = [means2d, depths, conics] + ([comps] if comps is not None else [])
    loss = sum((o * v).sum() for o, v in zip(outputs, cotangents))
    grads = torch.autograd.grad(loss, leaves)
    return radii, [o.detach() for o in outputs], grads


def assert_accurate(actual, ref32, ref64, name):
    """float32 `actual` [N, D] within 4× the float32 reference's own error of the float64 reference,
    plus 1e-3 of the Gaussian's largest gradient component: projection gradients of flat Gaussians
    suffer from float32 cancellation, which leaves a small component only as exact as its row's
    magnitude allows (and how exact the reference happens to be varies with the CPU's kernels)."""
    assert torch.isfinite(actual).all(), f"{name}: non-finite values"
    floor = 1e-3 * ref64.abs().max()
    row = ref64.abs().amax(-1, keepdim=True)  # [N, 1]
    bad = (actual - ref64).abs() > 4 * (ref32 - ref64).abs() + 1e-3 * (row + floor)
    assert not bad.any(), f"{name}: {bad.sum()} of {bad.numel()} differ, e.g. {actual[bad][:4]} vs {ref64[bad][:4]}"


@pytest.mark.parametrize("antialiased", [False, True])
@pytest.mark.parametrize("with_opacities", [False, True])
@pytest.mark.parametrize("C", [1, 3])
def test_projection_matches_torch(antialiased, with_opacities, C):
    N = 400
    means, quats, scales, opacities, viewmats, Ks = scene(N, C, seed=C + 2 * antialiased)
    kwargs = dict(eps2d=0.3, near_plane=0.01, far_plane=100.0, radius_clip=0.5, calc_compensations=antialiased,
                  opacities=opacities if with_opacities else None)
    g = torch.Generator().manual_seed(7)
    cot = [torch.randn(C, N, 2, generator=g), torch.randn(C, N, generator=g), torch.randn(C, N, 3, generator=g)]
    cot += [torch.randn(C, N, generator=g)] if antialiased else []
    inputs = (means, quats, scales, viewmats, Ks)
    radii, out, grads_all = run(_cpu.project_gaussians, inputs, kwargs, cot)
    radii_ref, out_ref, _ = run(_torch_impl.project_gaussians, inputs, kwargs, cot)

    assert radii.dtype == torch.int32 and radii.shape == (C, N, 2)
    assert torch.equal(radii, radii_ref)
    visible = (radii > 0).any(-1)
    assert 0 < visible.sum() < C * N
    for name, o, r in zip(("means2d", "depths", "conics"), out, out_ref):
        assert_close(o, r, rtol=1e-4, name=name)
    if antialiased:  # sqrt(det Σ2d / det(Σ2d + eps2d I)): det Σ2d is rounding noise for (near-)flat Gaussians
        assert_close(out[3], out_ref[3], rtol=1e-4, atol=5e-3, name="compensations")
        cot[3] = cot[3] * (out_ref[3] > 0.05)

    # Culled pairs get no gradient; the references see their cotangents zeroed, as the rasterizer gives them.
    culled = ~visible.any(0)
    assert culled.any() and all((gr[culled] == 0).all() for gr in grads_all)
    cot = [v * visible.reshape(C, N, *([1] * (v.dim() - 2))) for v in cot]
    _, _, grads = run(_cpu.project_gaussians, inputs, kwargs, cot)
    _, _, grads32 = run(_torch_impl.project_gaussians, inputs, kwargs, cot)
    _, _, grads64 = run(_torch_impl.project_gaussians, [x.double() for x in inputs], kwargs, [v.double() for v in cot])
    for name, *gr in zip(("means", "quats", "scales"), grads, grads32, grads64):
        assert_accurate(*gr, name=name)


def test_projection_is_deterministic_across_threads():
    means, quats, scales, opacities, viewmats, Ks = scene(5000, 2, seed=1)
    g = torch.Generator().manual_seed(0)
    cot = [torch.randn(2, 5000, 2, generator=g), torch.randn(2, 5000, generator=g), torch.randn(2, 5000, 3, generator=g),
           torch.randn(2, 5000, generator=g)]
    threads = torch.get_num_threads()
    results = []
    for n in (1, 2):
        torch.set_num_threads(n)
        try:
            results.append(run(_cpu.project_gaussians, (means, quats, scales, viewmats, Ks),
                               dict(opacities=opacities, calc_compensations=True), cot))
        finally:
            torch.set_num_threads(threads)
    (r1, o1, g1), (r2, o2, g2) = results
    assert torch.equal(r1, r2) and all(torch.equal(a, b) for a, b in zip(o1 + list(g1), o2 + list(g2)))


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_sh_matches_torch(degree):
    g = torch.Generator().manual_seed(degree)
    C, N, K = 2, 300, 16
    dirs = torch.randn(C, N, 3, generator=g) * torch.exp(2 * torch.randn(C, N, 1, generator=g))  # any norm
    dirs[0, 0] = torch.tensor([0.0, 0.0, 1e-8])
    coeffs = torch.randn(C, N, K, 3, generator=g)
    v_colors = torch.randn(C, N, 3, generator=g)
    results = []
    for fn in (_cpu.spherical_harmonics, _torch_impl.spherical_harmonics):
        d, c = dirs.clone().requires_grad_(), coeffs.clone().requires_grad_()
        colors = fn(degree, d, c)
        v_dirs, v_coeffs = torch.autograd.grad((colors * v_colors).sum(), [d, c], allow_unused=True)
        results.append((colors.detach(), torch.zeros_like(d) if v_dirs is None else v_dirs, v_coeffs))
    for name, a, b in zip(("colors", "v_dirs", "v_coeffs"), *results):
        assert_close(a, b, rtol=1e-4, name=name)
    assert (results[0][2][..., (degree + 1) ** 2 :, :] == 0).all()


def test_sh_accepts_expanded_coefficients():
    g = torch.Generator().manual_seed(0)
    coeffs = torch.randn(50, 9, 3, generator=g, requires_grad=True)
    dirs = torch.randn(3, 50, 3, generator=g)
    grads = []
    for fn in (_cpu.spherical_harmonics, _torch_impl.spherical_harmonics):
        (fn(2, dirs, coeffs.expand(3, 50, 9, 3)) ** 2).sum().backward()
        grads.append(coeffs.grad)
        coeffs.grad = None
    assert_close(*grads, name="v_coeffs")


@pytest.mark.parametrize("degree", [1, 3])
def test_sh_blocks_match_concatenated_coefficients(degree):
    """Coefficients as blocks (3DGS's sh0, shN) give the values and gradients of their concatenation."""
    g = torch.Generator().manual_seed(degree)
    dirs = torch.randn(2, 40, 3, generator=g)
    sh0, shN = torch.randn(40, 1, 3, generator=g), torch.randn(40, 15, 3, generator=g)
    v_colors = torch.randn(2, 40, 3, generator=g)
    blocks = [sh0.clone().requires_grad_(), shN.clone().requires_grad_()]
    coeffs = torch.cat([sh0, shN], 1).requires_grad_()
    by_blocks = _cpu.spherical_harmonics(degree, dirs, [b.expand(2, *b.shape) for b in blocks])
    whole = _cpu.spherical_harmonics(degree, dirs, coeffs.expand(2, 40, 16, 3))
    assert_close(by_blocks, whole, rtol=0, atol=0, name="colors")
    (by_blocks * v_colors).sum().backward()
    (whole * v_colors).sum().backward()
    assert_close(torch.cat([b.grad for b in blocks], 1), coeffs.grad, rtol=0, atol=0, name="v_coeffs")
    assert (blocks[1].grad[:, (degree + 1) ** 2 - 1 :] == 0).all()


@pytest.mark.parametrize("backend", ["cpu", "torch"])
@pytest.mark.parametrize("sh_degree, rest", [(2, 8), (0, 0)])  # rest 0: an empty shN, as from a degree-0 .ply
def test_rasterization_takes_sh_blocks(backend, sh_degree, rest):
    N, C = 200, 2
    means, quats, scales, opacities, viewmats, Ks = scene(N, C, seed=3)
    g = torch.Generator().manual_seed(2)
    sh0, shN = torch.randn(N, 1, 3, generator=g), torch.randn(N, rest, 3, generator=g) * 0.3
    images, grads = [], []
    for colors in ((sh0, shN), torch.cat([sh0, shN], 1)):
        leaves = [c.clone().requires_grad_() for c in ((sh0, shN) if isinstance(colors, tuple) else (colors,))]
        img, _, _ = rasterization(means, quats, scales, opacities, tuple(leaves) if len(leaves) == 2 else leaves[0],
                                  viewmats, Ks, 48, 40, sh_degree=sh_degree, backend=backend)  # fmt: skip
        img.square().sum().backward()
        images.append(img.detach())
        grads.append(torch.cat([leaf.grad for leaf in leaves], 1))
    assert_close(*images, rtol=0, atol=0, name="image")
    assert_close(*grads, rtol=1e-6, atol=1e-7, name="v_sh")


@pytest.mark.parametrize("rasterize_mode", ["classic", "antialiased"])
def test_rasterization_with_fused_projection_matches_torch_projection(rasterize_mode, monkeypatch):
    """rasterization(backend="cpu") with the fused projection/SH vs with the `_torch_impl` ones."""
    N, C = 300, 2
    means, quats, scales, opacities, viewmats, Ks = scene(N, C, seed=5)
    scales[11] = scales[12]  # a needle-thin ellipse amplifies float32 rounding of its conic into the image
    colors = torch.randn(N, 16, 3, generator=torch.Generator().manual_seed(1)) * 0.3
    results = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(_cpu, "project_gaussians", _torch_impl.project_gaussians)
            monkeypatch.setattr(_cpu, "spherical_harmonics", _torch_impl.spherical_harmonics)
        leaves = [x.clone().requires_grad_() for x in (means, quats, scales, opacities, colors)]
        img, alpha, info = rasterization(*leaves, viewmats, Ks, W, H, sh_degree=3, render_mode="RGB+D",
                                         rasterize_mode=rasterize_mode, far_plane=100.0, backend="cpu")
        loss = (img * torch.linspace(-1, 1, img.shape[-1])).sum() + alpha.sum()
        results.append((img.detach(), alpha.detach(), info["radii"], *torch.autograd.grad(loss, leaves)))
    assert torch.equal(results[0][2], results[1][2])
    # The needle's pixels and gradients differ by up to ~3e-3 of their scale (how much depends on the
    # CPU's float kernels): images compare with that absolute slack, gradients relative to the
    # largest component of their Gaussian's row.
    for name, a, b in zip(("img", "alpha", "radii"), *[r[:3] for r in results]):
        assert_close(a.float(), b.float(), rtol=5e-3, atol=5e-3, name=name)
    for name, a, b in zip(("means", "quats", "scales", "opacities", "colors"), *[r[3:] for r in results]):
        row = b.reshape(N, -1).abs().amax(-1).reshape(N, *[1] * (b.dim() - 1))  # [N, 1...]
        assert_close(a, b, rtol=5e-3, atol=5e-3 * row, name=name)


def test_rasterization_cpu_differentiates_cameras_when_asked():
    """viewmats needing grad: the cpu backend falls back to the torch projection and SH."""
    means, quats, scales, opacities, viewmats, Ks = scene(200, 1, seed=3)
    viewmats = viewmats.clone().requires_grad_()
    colors = torch.rand(200, 3, generator=torch.Generator().manual_seed(0))
    grads = []
    for backend in ("cpu", "torch"):
        img, _, _ = rasterization(means, quats, scales, opacities, colors, viewmats, Ks, W, H, backend=backend)
        grads.append(torch.autograd.grad((img * torch.linspace(-1, 1, W)[:, None]).sum(), [viewmats])[0])
    assert grads[0][:, :3].abs().max() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-3, atol=1e-3 * float(grads[1].abs().max()))
