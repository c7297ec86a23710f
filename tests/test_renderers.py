"""Cameras, rays, NDC, samplers and volume rendering against plain formulas."""
import math

import pytest
import torch

from renderers.cameras import Rays, image_rays, look_at, make_rays, orbit_path, pixel_rays, project, to_ndc
from renderers.samplers import LogSampler, PDFSampler, RaySamples, StratifiedSampler, log_offsets
from renderers.volume import composite, render_weights, render_weights_from_alpha, render_weights_reference


def random_camera(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    eye = torch.randn(3, generator=g, dtype=torch.float64) * 3
    c2w = look_at(eye, torch.zeros(3, dtype=torch.float64), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    K = torch.tensor([[60.0, 0, 41.0], [0, 55.0, 29.5], [0, 0, 1]], dtype=torch.float64)
    return K, c2w


@pytest.mark.parametrize("seed", range(3))
def test_rays_reproject_to_their_pixel_centres(seed):
    K, c2w = random_camera(seed)
    u = torch.tensor([0, 5, 80, 17])
    v = torch.tensor([0, 40, 58, 3])
    origins, directions = pixel_rays(K, c2w, u, v)
    t = torch.tensor([0.5, 1.0, 2.5, 7.0], dtype=torch.float64)
    uv, z = project(origins + t[:, None] * directions, K, c2w)
    torch.testing.assert_close(uv, torch.stack([u + 0.5, v + 0.5], -1).double())
    torch.testing.assert_close(z, t)  # t is the z-depth


def test_look_at_is_a_proper_opencv_pose():
    K, c2w = random_camera(0)
    R = c2w[:3, :3]
    torch.testing.assert_close(R.T @ R, torch.eye(3, dtype=torch.float64))
    assert torch.det(R) == pytest.approx(1.0)
    # The target (origin) projects to the principal point, in front of the camera.
    uv, z = project(torch.zeros(1, 3, dtype=torch.float64), K, c2w)
    torch.testing.assert_close(uv[0], K[:2, 2])
    assert z.item() > 0
    # World up (+z) points up in the image: negative v direction.
    uv_up, _ = project(torch.tensor([[0.0, 0.0, 0.3]], dtype=torch.float64), K, c2w)
    assert uv_up[0, 1] < K[1, 2]


def test_image_rays_are_row_major():
    K, c2w = random_camera(1)
    rays = image_rays(K, c2w, width=7, height=5, near=0.1, far=10.0)
    assert len(rays) == 35
    _, expected = pixel_rays(K, c2w, torch.tensor([3]), torch.tensor([2]))
    torch.testing.assert_close(rays.directions[2 * 7 + 3], expected[0])
    torch.testing.assert_close(rays.viewdirs.norm(dim=-1), torch.ones(35, dtype=torch.float64))


def test_ndc_maps_rays_to_straight_lines_of_the_ndc_warp():
    W, H, f = 64, 48, 50.0
    K = torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]], dtype=torch.float64)
    # A forward-facing camera in the LLFF world: OpenCV axes with world y up, looking down −z.
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3] = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    c2w[:3, 3] = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    origins, directions = pixel_rays(K, c2w, torch.tensor([3, 40, 60]), torch.tensor([2, 30, 47]))
    o_ndc, d_ndc = to_ndc(origins, directions, K, W, H)

    def warp(p):  # the NDC projection of world points (NeRF appendix C)
        return torch.stack([-f / (W / 2) * p[:, 0] / p[:, 2], -f / (H / 2) * p[:, 1] / p[:, 2], 1 + 2 / p[:, 2]], -1)

    for depth in (1.5, 4.0, 30.0):
        t_world = (depth + origins[:, 2]) / -directions[:, 2]  # reaches world z = −depth
        p = warp(origins + t_world[:, None] * directions)
        t_ndc = (p[:, 2] - o_ndc[:, 2]) / d_ndc[:, 2]
        torch.testing.assert_close(o_ndc + t_ndc[:, None] * d_ndc, p)
        assert ((t_ndc > 0) & (t_ndc < 1)).all()
    torch.testing.assert_close(o_ndc[:, 2], torch.full((3,), -1.0, dtype=torch.float64))  # starts at the near plane
    torch.testing.assert_close(o_ndc[:, 2] + d_ndc[:, 2], torch.ones(3, dtype=torch.float64))  # t = 1 is infinity


def test_orbit_path_circles_the_look_at_centre():
    eyes = [torch.tensor([4 * math.cos(a), 4 * math.sin(a), 2.0]) for a in torch.arange(12) * (2 * math.pi / 12)]
    c2w = torch.stack([look_at(e, torch.zeros(3), torch.tensor([0.0, 0.0, 1.0])) for e in eyes])
    path = orbit_path(c2w, 16)
    assert path.shape == (16, 4, 4)
    torch.testing.assert_close(path[:, 2, 3], torch.full((16,), 2.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(path[:, :2, 3].norm(dim=-1), torch.full((16,), 4.0), atol=1e-4, rtol=0)


def some_rays(n: int, near: float = 2.0, far: float = 6.0) -> Rays:
    origins = torch.zeros(n, 3)
    directions = torch.nn.functional.normalize(torch.randn(n, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    return make_rays(origins, directions, near, far)


@pytest.mark.parametrize("spacing", ["linear", "disparity"])
@pytest.mark.parametrize("perturb", [False, True])
def test_stratified_edges_are_sorted_and_span_near_far(spacing, perturb):
    rays = some_rays(50)
    samples = StratifiedSampler(16, spacing)(rays, perturb=perturb, generator=torch.Generator().manual_seed(1))
    assert samples.edges.shape == (50, 17)
    assert (samples.ends >= samples.starts).all()
    assert (samples.edges >= 2.0 - 1e-6).all() and (samples.edges <= 6.0 + 1e-6).all()
    if not perturb:
        torch.testing.assert_close(samples.edges[:, 0], rays.near)
        torch.testing.assert_close(samples.edges[:, -1], rays.far)
        inverse = 1 / samples.edges if spacing == "disparity" else samples.edges
        steps = inverse.diff(dim=-1)
        torch.testing.assert_close(steps, steps[:, :1].expand_as(steps))


def test_perturbed_edges_stay_within_their_cells():
    rays = some_rays(200)
    edges = StratifiedSampler(8)(rays, perturb=True, generator=torch.Generator().manual_seed(2)).edges
    grid = torch.linspace(2.0, 6.0, 9)
    cell = (grid[1] - grid[0]) / 2
    assert ((edges - grid).abs() <= cell + 1e-6).all()
    assert (edges - grid).abs().max() > 0.1  # it did move


def test_pdf_sampler_concentrates_where_the_weight_is():
    rays = some_rays(20)
    coarse = StratifiedSampler(10)(rays, perturb=False)
    weights = torch.zeros(20, 10)
    weights[:, 6] = 1.0  # all mass in interval [4.4, 4.8]
    fine = PDFSampler(32, include_input=False, histogram_padding=0.0)(rays, perturb=True, samples=coarse, weights=weights, generator=torch.Generator().manual_seed(3))
    assert fine.edges.shape == (20, 33)
    assert (fine.edges.diff(dim=-1) >= 0).all()
    assert ((fine.edges >= 4.4 - 1e-5) & (fine.edges <= 4.8 + 1e-5)).all()
    merged = PDFSampler(32)(rays, perturb=False, samples=coarse, weights=weights)
    assert merged.edges.shape == (20, 11 + 33)
    assert (merged.edges.diff(dim=-1) >= 0).all()


def test_volume_rendering_identities():
    g = torch.Generator().manual_seed(4)
    edges = torch.sort(torch.rand(64, 33, generator=g) * 4 + 2, dim=-1).values
    samples = RaySamples(edges)
    sigmas = torch.rand(64, 32, generator=g) * 5
    weights = render_weights(samples.starts, samples.ends, sigmas)
    assert (weights >= 0).all() and (weights.sum(-1) <= 1 + 1e-6).all()
    # An opaque sample takes all the weight; nothing behind it is seen.
    sigmas_opaque = torch.zeros(64, 32)
    sigmas_opaque[:, 10] = 1e6
    weights = render_weights(samples.starts, samples.ends, sigmas_opaque)
    torch.testing.assert_close(weights[:, 10], torch.ones(64))
    torch.testing.assert_close(weights.sum(-1), torch.ones(64))
    # The depth of that single surface is recovered, and the colour is the surface's.
    rgbs = torch.zeros(64, 32, 3)
    rgbs[:, 10] = torch.tensor([0.2, 0.4, 0.6])
    out = composite(weights, rgbs, samples.mids, background=torch.ones(3))
    torch.testing.assert_close(out["depth"][:, 0], samples.mids[:, 10])
    torch.testing.assert_close(out["rgb"], torch.tensor([0.2, 0.4, 0.6]).expand(64, 3))
    # Empty space shows the background.
    empty = composite(torch.zeros(64, 32), rgbs, samples.mids, background=torch.tensor([1.0, 0.0, 0.5]))
    torch.testing.assert_close(empty["rgb"], torch.tensor([1.0, 0.0, 0.5]).expand(64, 3))


def test_nerfacc_weights_match_the_reference_values_and_gradients():
    g = torch.Generator().manual_seed(5)
    edges = torch.sort(torch.rand(16, 25, generator=g, dtype=torch.float64) * 4 + 2, dim=-1).values
    sigmas = (torch.rand(16, 24, generator=g, dtype=torch.float64) * 3).requires_grad_()
    cotangent = torch.randn(16, 24, generator=g, dtype=torch.float64)
    ours = render_weights(edges[:, :-1], edges[:, 1:], sigmas)
    reference = render_weights_reference(edges[:, :-1], edges[:, 1:], sigmas)
    torch.testing.assert_close(ours, reference)
    (grad_ours,) = torch.autograd.grad(ours, sigmas, cotangent)
    (grad_ref,) = torch.autograd.grad(reference, sigmas, cotangent)
    torch.testing.assert_close(grad_ours, grad_ref)


def test_occupancy_grid_marks_where_density_is():
    from renderers.samplers import OccupancyGrid

    grid = OccupancyGrid(torch.tensor([[-1.0] * 3, [1.0] * 3]), resolution=16, step_size=0.1, decay=0.5)
    assert grid.query(torch.tensor([[0.9, -0.9, 0.0]])).all()  # starts all occupied

    def ball(points):  # density 10 inside radius 0.5, nothing elsewhere
        return 10.0 * (points.norm(dim=-1) < 0.5)

    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        grid.update(ball, all_cells=True, generator=g)
    assert grid.query(torch.tensor([[0.0, 0.0, 0.0], [0.2, -0.2, 0.1]])).all()
    assert not grid.query(torch.tensor([[0.9, -0.9, 0.0], [0.0, 0.0, 0.8], [2.0, 0.0, 0.0]])).any()
    # Occupied fraction ≈ the ball's volume fraction (cells straddling the surface count too).
    ball_fraction = (4 / 3 * math.pi * 0.5**3) / 8
    assert ball_fraction < grid.occupied.float().mean() < 2.5 * ball_fraction
    # Once the density is gone, the remembered values decay geometrically.
    peak = grid.values.max()
    for _ in range(4):
        grid.update(lambda p: torch.zeros(len(p)), all_cells=False, generator=g)
    torch.testing.assert_close(grid.values.max(), peak * 0.5**4)


def test_visible_samples_stop_behind_an_opaque_surface():
    from renderers.volume import visible_samples

    edges = torch.linspace(0, 1, 11).expand(2, -1)
    sigmas = torch.zeros(2, 10)
    sigmas[0, 4] = 1e4  # opaque at the fifth interval of the first ray
    visible = visible_samples(edges[:, :-1], edges[:, 1:], sigmas)
    assert visible[0, :5].all() and not visible[0, 5:].any()
    assert visible[1].all()


def test_weights_from_alpha_match_the_closed_form():
    alphas = torch.tensor([[0.5, 0.5, 0.5, 1.0], [0.0, 0.2, 0.9, 0.3], [1.0, 0.7, 0.1, 0.4]])
    expected = torch.tensor([
        [0.5, 0.25, 0.125, 0.125],  # w_i = α_i Π_{j<i}(1 − α_j): exclusive transmittance
        [0.0, 0.2, 0.8 * 0.9, 0.8 * 0.1 * 0.3],
        [1.0, 0.0, 0.0, 0.0],
    ])
    torch.testing.assert_close(render_weights_from_alpha(alphas), expected)


def test_log_offsets_of_gpf():
    offsets = log_offsets(33, 1.2)
    assert len(offsets) == 33 and offsets[16] == 0 and torch.equal(offsets, -offsets.flip(0))
    assert offsets[17] == 1 and abs(float(offsets[-1]) - 15.407) < 1e-3  # ±1 … ±15.41
    gaps = offsets.diff()
    assert abs(float(gaps[17]) - 0.2) < 1e-5 and abs(float(gaps[-1]) - 2.568) < 1e-3 and float(gaps[16]) == 1.0  # the gap of 1 at the centre
    even = log_offsets(16, 1.16)
    assert len(even) == 16 and (even != 0).all() and float(even[8]) == 1.0


def test_log_sampler_places_samples_around_the_z_depth_prior():
    K = torch.tensor([[20.0, 0, 16], [0, 20.0, 16], [0, 0, 1]])
    u, v = torch.tensor([0, 16, 31]), torch.tensor([0, 16, 5])
    origins, directions = pixel_rays(K, torch.eye(4), u, v)
    rays = make_rays(origins, directions, 2.0, 10.0)
    prior = torch.tensor([5.0, 12.0, 1.0])  # the last two outside [near, far]: clamped
    sampler = LogSampler(num_samples=33, base=1.2, scale=0.01)
    samples = sampler(rays, perturb=False, depth=prior)
    assert samples.edges.shape == (3, 33) and (samples.edges.diff(dim=1) > 0).all()
    centre = samples.edges[:, 16]
    torch.testing.assert_close(centre, torch.tensor([5.0, 10.0, 2.0]))
    points = origins + directions * centre[:, None]
    torch.testing.assert_close(points[:, 2], centre)  # z-depth: the corner pixel's centre sample lies on the prior's plane
    g = torch.Generator().manual_seed(0)
    jittered = sampler(rays, perturb=True, depth=prior, generator=g)
    assert ((jittered.edges[:, 16] - centre).abs() <= 0.05 + 1e-6).all() and not torch.equal(jittered.edges, samples.edges)


def test_surface_spacing_spans_the_same_prior_evenly():
    origins, directions = pixel_rays(torch.tensor([[10.0, 0, 5], [0, 10.0, 5], [0, 0, 1]]), torch.eye(4), torch.tensor([2]), torch.tensor([3]))
    rays = make_rays(origins, directions, 1.0, 9.0)
    edges = LogSampler(num_samples=11, spacing="linear", half_width=25.0, scale=0.01)(rays, perturb=False, depth=torch.tensor([4.0])).edges
    torch.testing.assert_close(edges[0], torch.linspace(3.75, 4.25, 11))
