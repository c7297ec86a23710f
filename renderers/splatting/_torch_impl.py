"""Pure-torch Gaussian splatting: projection, SH colours, tile binning and a reference rasterizer.

Everything here is plain autograd code that runs on any device. The per-Gaussian stages
(`project_gaussians`, `spherical_harmonics`, `isect_tiles`) are shared by the cpu and torch
backends; `rasterize_to_pixels_torch` is the reference the compiled CPU kernel is tested against.
Conventions follow gsplat 1.5.3's CUDA kernels (pinhole camera, classic/antialiased), so CPU
output can be compared with gsplat on a GPU machine:

* radii are per axis, `[C, N, 2]` int32: `ceil(extend * sqrt(Σ2d_xx))`, `ceil(extend * sqrt(Σ2d_yy))`
  of the blurred 2D covariance, with the opacity-aware `extend = min(3.33, sqrt(2 ln(255 o)))`;
* a Gaussian is culled (radii 0) when z < near or z > far, det ≤ 0, o < 1/255, both radii
  ≤ radius_clip, or its box misses the image;
* pixel centres are at (x + 0.5, y + 0.5); σ = ½(a dx² + c dy²) + b dx dy with conic (a, b, c)
  and d = mean − pixel; α = min(0.999, o e^{-σ}); a Gaussian is skipped when σ < 0 or
  α < 1/255; compositing stops *before* the Gaussian whose next_T = T (1 − α) ≤ 1e-4;
* a pixel only sees Gaussians binned to its 16×16 tile (box from means2d ± radii, rounded out
  to tiles), sorted by depth within a tile (stable for equal depths).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

ALPHA_THRESHOLD = 1.0 / 255.0
MIN_TRANSMITTANCE = 1e-4
MAX_ALPHA = 0.999
PAIRS_PER_CHUNK = 1 << 19  # (tile, Gaussian, pixel) triples evaluated per rasterizer step


def quat_scale_to_covar(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """[N, 3, 3] covariances R S Sᵀ Rᵀ from quaternions [N, 4] (wxyz, any norm) and scales [N, 3]."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    R = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(-1, 3, 3)
    M = R * scales[:, None, :]  # [N, 3, 3]
    return M @ M.transpose(-1, -2)


def project_gaussians(
    means: torch.Tensor,  # [N, 3]
    quats: torch.Tensor,  # [N, 4]
    scales: torch.Tensor,  # [N, 3]
    viewmats: torch.Tensor,  # [C, 4, 4] world → camera (OpenCV)
    Ks: torch.Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    opacities: torch.Tensor | None = None,  # [N], enables gsplat's opacity-aware radius and culling
    calc_compensations: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """EWA projection as gsplat's fused pinhole projection.

    Returns radii [C, N, 2] int32 (0 = culled), means2d [C, N, 2], depths [C, N] (camera z),
    conics [C, N, 3] (upper triangle of the inverse blurred 2D covariance) and compensations
    [C, N] (√(det Σ2d / det(Σ2d + eps2d I)), or None). Entries of culled Gaussians are finite
    but meaningless, as in gsplat.
    """
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]  # [C, 3, 3], [C, 3]
    means_c = torch.einsum("cij,nj->cni", R, means) + t[:, None, :]  # [C, N, 3]
    covars_c = torch.einsum("cij,njk,clk->cnil", R, quat_scale_to_covar(quats, scales), R)  # [C, N, 3, 3]
    x, y, depths = means_c.unbind(-1)  # [C, N]
    in_range = (depths >= near_plane) & (depths <= far_plane)
    z = torch.where(in_range, depths, torch.ones_like(depths))  # keeps culled entries finite

    fx, fy, cx, cy = (Ks[:, i, j, None] for i, j in ((0, 0), (1, 1), (0, 2), (1, 2)))  # [C, 1]
    # Clamp the Jacobian's x/z, y/z to 1.3× the field of view (the mean itself is not clamped).
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    tx = z * torch.clamp(x / z, -lim_x_neg, lim_x_pos)
    ty = z * torch.clamp(y / z, -lim_y_neg, lim_y_pos)
    zero = torch.zeros_like(z)
    J = torch.stack([fx / z, zero, -fx * tx / z**2, zero, fy / z, -fy * ty / z**2], -1)
    J = J.reshape(*z.shape, 2, 3)  # [C, N, 2, 3]
    cov2d = J @ covars_c @ J.transpose(-1, -2)  # [C, N, 2, 2]
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], -1)  # [C, N, 2]

    det_orig = cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]
    a, b, c = cov2d[..., 0, 0] + eps2d, cov2d[..., 1, 0], cov2d[..., 1, 1] + eps2d  # blurred
    det = a * c - cov2d[..., 0, 1] * b
    valid = in_range & (det > 0)
    det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([c / det, -b / det, a / det], -1)  # [C, N, 3]
    # Clamped away from 0 so that sqrt's gradient stays finite (gsplat's backward adds 1e-6).
    compensations = (det_orig / det).clamp(min=1e-12).sqrt() if calc_compensations else None

    with torch.no_grad():  # radii and culling are not differentiable
        extend = torch.full_like(det, 3.33)
        if opacities is not None:  # opacity-aware box: exactly where alpha can reach 1/255
            opacity = opacities[None, :] * (compensations if calc_compensations else 1.0)  # [C, N]
            valid = valid & (opacity >= ALPHA_THRESHOLD)
            extend = extend.minimum(torch.sqrt(2.0 * torch.log((opacity / ALPHA_THRESHOLD).clamp(min=1.0))))
        radius = torch.stack([torch.ceil(extend * a.sqrt()), torch.ceil(extend * c.sqrt())], -1)  # [C, N, 2]
        lo, hi = means2d - radius, means2d + radius
        on_screen = (hi[..., 0] > 0) & (lo[..., 0] < width) & (hi[..., 1] > 0) & (lo[..., 1] < height)
        visible = valid & (radius > radius_clip).any(-1) & on_screen
        radii = torch.where(visible[..., None], radius.clamp(max=2**30), 0).int()
    return radii, means2d, depths, conics, compensations


# Real SH basis in the form of Sloan, "Efficient Spherical Harmonic Evaluation" (as gsplat).
SH_C0 = 0.2820947917738781
SH_C1 = 0.48860251190292


def spherical_harmonics(
    degree: int,
    dirs: torch.Tensor,  # [..., 3], any norm
    coeffs: torch.Tensor,  # [..., K, 3], K ≥ (degree + 1)²
) -> torch.Tensor:
    """[..., 3] SH colour (without gsplat's +0.5 offset) of degree 0–3 along `dirs`."""
    assert 0 <= degree <= 3, f"sh_degree must be 0..3, got {degree}"
    x, y, z = F.normalize(dirs, dim=-1).unbind(-1)
    bases = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        bases += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        z2, c1, s1 = z * z, x * x - y * y, 2 * x * y
        bases += [
            0.5462742152960395 * s1,
            -1.092548430592079 * z * y,
            0.9461746957575601 * z2 - 0.3153915652525201,
            -1.092548430592079 * z * x,
            0.5462742152960395 * c1,
        ]
    if degree >= 3:
        c2, s2 = x * c1 - y * s1, x * s1 + y * c1
        tmp = -2.285228997322329 * z2 + 0.4570457994644658
        bases += [
            -0.5900435899266435 * s2,
            1.445305721320277 * z * s1,
            tmp * y,
            z * (1.865881662950577 * z2 - 1.119528997770346),
            tmp * x,
            1.445305721320277 * z * c1,
            -0.5900435899266435 * c2,
        ]
    bases = torch.stack(bases, -1)  # [..., (degree + 1)²]
    return (bases[..., None] * coeffs[..., : bases.shape[-1], :]).sum(-2)


@torch.no_grad()
def isect_tiles(
    means2d: torch.Tensor,  # [C, N, 2]
    radii: torch.Tensor,  # [C, N, 2] int
    depths: torch.Tensor,  # [C, N]
    tile_size: int,
    tile_width: int,
    tile_height: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Vectorised gsplat `isect_tiles` (unpacked, sorted).

    Returns tiles_per_gauss [C, N] int32, isect_ids [M] int64 (camera | tile | float32 depth bits,
    sorted) and flatten_ids [M] int32 (index into C·N), one entry per (Gaussian, tile) overlap.
    """
    C, N = depths.shape
    tile_xy = means2d.float() / tile_size  # [C, N, 2]
    tile_r = radii.float() / tile_size
    limit = torch.tensor([tile_width, tile_height], device=means2d.device, dtype=torch.float32)
    tile_min = torch.floor(tile_xy - tile_r).clamp(min=0).minimum(limit).long()  # [C, N, 2]
    tile_max = torch.ceil(tile_xy + tile_r).clamp(min=0).minimum(limit).long()
    extent = tile_max - tile_min  # [C, N, 2]
    tiles_per_gauss = extent.prod(-1) * (radii > 0).all(-1)  # [C, N]

    counts = tiles_per_gauss.flatten()
    gauss = torch.repeat_interleave(torch.arange(C * N, device=counts.device), counts)  # [M]
    local = torch.arange(gauss.numel(), device=counts.device) - (counts.cumsum(0) - counts)[gauss]
    width = extent[..., 0].flatten()[gauss]
    tx = tile_min[..., 0].flatten()[gauss] + local % width
    ty = tile_min[..., 1].flatten()[gauss] + local // width
    tile_bits = (tile_width * tile_height).bit_length()
    depth_bits = depths.float().flatten()[gauss].view(torch.int32).long() & 0xFFFFFFFF
    isect_ids = ((gauss // N) << (32 + tile_bits)) | ((ty * tile_width + tx) << 32) | depth_bits
    isect_ids, order = torch.sort(isect_ids, stable=True)
    return tiles_per_gauss.int(), isect_ids, gauss[order].int()


@torch.no_grad()
def isect_offset_encode(isect_ids: torch.Tensor, n_cameras: int, tile_width: int, tile_height: int) -> torch.Tensor:
    """[C, tile_height, tile_width] int32: index of each tile's first entry in the sorted isect list."""
    n_tiles = tile_width * tile_height
    tile_bits = n_tiles.bit_length()
    key = isect_ids >> 32
    flat_tile = (key >> tile_bits) * n_tiles + (key & ((1 << tile_bits) - 1))
    counts = torch.bincount(flat_tile, minlength=n_cameras * n_tiles)
    return (counts.cumsum(0) - counts).int().reshape(n_cameras, tile_height, tile_width)


def rasterize_to_pixels_torch(
    means2d: torch.Tensor,  # [C, N, 2]
    conics: torch.Tensor,  # [C, N, 3]
    colors: torch.Tensor,  # [C, N, D]
    opacities: torch.Tensor,  # [C, N]
    backgrounds: torch.Tensor | None,  # [C, D]
    width: int,
    height: int,
    tile_size: int,
    isect_offsets: torch.Tensor,  # [C, tile_height, tile_width]
    flatten_ids: torch.Tensor,  # [M]
    absgrad: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference alpha compositing, differentiable by autograd: colours [C, H, W, D], alphas [C, H, W, 1].

    Each step takes the next chunk of every unfinished tile's depth-sorted list and composites it
    over that tile's pixels, carrying transmittance (and the early-stop flag) between chunks; steps
    are checkpointed, so memory stays O(pixels · steps + intersections). With `absgrad`, backward
    sets `means2d.absgrad` [C, N, 2] to Σ over pixels of |∂L/∂means2d| (as gsplat; it accumulates
    if the same graph is backpropagated twice).
    """
    C, N, D = colors.shape
    tile_height, tile_width = isect_offsets.shape[1:]
    n_tiles, tile_px = C * tile_height * tile_width, tile_size * tile_size
    device, dtype = means2d.device, means2d.dtype
    starts = isect_offsets.flatten().long()  # [n_tiles]
    ends = torch.cat([starts[1:], starts.new_tensor([flatten_ids.numel()])])
    # Pixel centres per tile, row-major inside the tile: [n_tiles, tile_px, 2].
    iy, ix = torch.meshgrid(torch.arange(tile_size, device=device), torch.arange(tile_size, device=device), indexing="ij")
    tile = torch.arange(n_tiles, device=device) % (tile_width * tile_height)
    corner = torch.stack([tile % tile_width, tile // tile_width], -1) * tile_size  # [n_tiles, 2]
    pixels = (corner[:, None, :] + torch.stack([ix, iy], -1).reshape(1, tile_px, 2)).to(dtype) + 0.5

    flat = (means2d.reshape(C * N, 2), conics.reshape(C * N, 3), colors.reshape(C * N, D), opacities.reshape(C * N))
    absgrad_sum = torch.zeros_like(flat[0]) if absgrad else None

    def record_absgrad(gauss: torch.Tensor):  # hook on the per-pixel means2d, [A, G, P, 2]
        def hook(grad: torch.Tensor) -> None:
            absgrad_sum.index_add_(0, gauss.flatten(), grad.abs().sum(2).reshape(-1, 2))
            means2d.absgrad = absgrad_sum.view(C, N, 2)

        return hook

    # Zero that depends on every input: the outputs stay in the graph (zero gradients) even when
    # nothing is drawn, as with gsplat's autograd.Function.
    color = means2d.new_zeros(n_tiles, tile_px, D) + sum(0.0 * x.sum() for x in flat)
    trans = means2d.new_ones(n_tiles, tile_px)
    done = torch.zeros(n_tiles, tile_px, dtype=torch.bool, device=device)
    cursor = starts.clone()
    while True:
        active = ((cursor < ends) & ~done.all(-1)).nonzero().squeeze(1)  # [A]
        if active.numel() == 0:
            break
        remaining = int((ends[active] - cursor[active]).max())
        chunk = min(remaining, max(1, PAIRS_PER_CHUNK // (active.numel() * tile_px)))
        slot = cursor[active, None] + torch.arange(chunk, device=device)  # [A, G]
        in_list = slot < ends[active, None]
        gauss = flatten_ids[slot.clamp(max=flatten_ids.numel() - 1)].long()  # [A, G]
        mean, conic, rgb, opacity = (x[gauss] for x in flat)
        opacity = torch.where(in_list, opacity, 0)  # padding never hits
        hook = record_absgrad(gauss) if absgrad and mean.requires_grad else None
        args = (pixels[active], mean, conic, rgb, opacity, trans[active], done[active], hook)
        step_color, step_trans, step_done = (
            checkpoint(_composite, *args, use_reentrant=False) if torch.is_grad_enabled() else _composite(*args)
        )
        color = color.index_add(0, active, step_color)
        trans = trans.index_copy(0, active, step_trans)
        done[active] = step_done
        cursor[active] += chunk

    if backgrounds is not None:
        color = color + trans[..., None] * backgrounds.repeat_interleave(tile_width * tile_height, 0)[:, None, :]
    color, alpha = (_untile(x, C, tile_height, tile_width, tile_size, height, width) for x in (color, 1.0 - trans))
    return color, alpha[..., None]


def _composite(
    pixels: torch.Tensor,  # [A, P, 2]
    means2d: torch.Tensor,  # [A, G, 2]
    conics: torch.Tensor,  # [A, G, 3]
    colors: torch.Tensor,  # [A, G, D]
    opacities: torch.Tensor,  # [A, G]
    trans: torch.Tensor,  # [A, P] transmittance in front of this chunk
    done: torch.Tensor,  # [A, P] bool: compositing already stopped
    hook,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Composite G depth-sorted Gaussians over P pixels of A tiles: colour [A, P, D], T and done [A, P]."""
    mean = means2d[:, :, None, :].expand(-1, -1, pixels.shape[1], -1)  # [A, G, P, 2]
    if hook is not None:
        mean.register_hook(hook)
    dx, dy = (mean - pixels[:, None, :, :]).unbind(-1)  # [A, G, P]
    a, b, c = (v[..., None] for v in conics.unbind(-1))  # [A, G, 1]
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = torch.clamp(opacities[..., None] * torch.exp(-sigma), max=MAX_ALPHA)
    alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_THRESHOLD), alpha, 0)
    # T before/after each Gaussian, multiplied in gsplat's sequential order: [A, G + 1, P].
    with torch.no_grad():
        seq = torch.cumprod(torch.cat([trans[:, None, :], 1.0 - alpha], 1), 1)
        keep = ~done[:, None, :] & (seq[:, 1:] > MIN_TRANSMITTANCE)  # exclusive stop rule
    alpha = torch.where(keep, alpha, 0)
    seq = torch.cumprod(torch.cat([trans[:, None, :], 1.0 - alpha], 1), 1)
    color = torch.einsum("agp,agd->apd", alpha * seq[:, :-1], colors)
    return color, seq[:, -1], done | ~keep[:, -1]


def _untile(x: torch.Tensor, C: int, tile_height: int, tile_width: int, tile_size: int, height: int, width: int):
    """[C·th·tw, ts², ...] per-tile pixels → [C, height, width, ...]."""
    rest = x.shape[2:]
    x = x.reshape(C, tile_height, tile_width, tile_size, tile_size, *rest).transpose(2, 3)
    return x.reshape(C, tile_height * tile_size, tile_width * tile_size, *rest)[:, :height, :width]
