"""`rasterization()`: gsplat 1.5.3's entry point, for unbatched pinhole cameras, on every device.

Backends (`backend=`):
  "gsplat"  CUDA: calls `gsplat.rasterization` with the same arguments (extra gsplat-only
            keyword arguments are passed through).
  "cpu"     the compiled C++ kernel in `_cpu` (falls back to "torch", with one warning, when it
            cannot be loaded or built).
  "torch"   the pure-torch reference in `_torch_impl`; any device, autograd only, slow.
  "auto"    gsplat on CUDA, cpu for float32 on CPU, torch otherwise (float64, MPS, ...).

The cpu and torch backends share the semantics of projection, SH colours and culling (`_torch_impl`,
plain autograd; the cpu backend runs `_cpu`'s fused C++ versions of them unless viewmats or Ks need
gradients) and the render-mode handling here (depth as an extra colour channel; "ED" divides it by
the alpha); they differ in the per-pixel compositing.

Interface of the compiled CPU kernel, `renderers/splatting/_cpu.py`:
    _cpu.available() -> bool          # False when the extension cannot be built or loaded
    _cpu.rasterize_to_pixels(
        means2d,      # [C, N, 2]
        conics,       # [C, N, 3]
        colors,       # [C, N, D]  (D includes the depth channel in depth modes)
        opacities,    # [C, N]     (already multiplied by compensations when antialiased)
        depths,       # [C, N]     sort key within a tile
        radii,        # [C, N, 2]  int32, per axis as gsplat 1.5.3; 0 = culled
        backgrounds,  # [C, D] or None
        width, height, tile_size,
        absgrad,      # bool
    ) -> (render_colors [C, H, W, D], render_alphas [C, H, W, 1])
It is differentiable w.r.t. means2d, conics, colors and opacities (its own autograd.Function),
sets `means2d.absgrad` [C, N, 2] in backward when `absgrad`, and follows the conventions listed
at the top of `_torch_impl` (tiles, thresholds, pixel centres, early stop) so that it matches
`rasterize_to_pixels_torch` and gsplat.
"""
from __future__ import annotations

import functools
import inspect
import math
import warnings

import torch

from ._torch_impl import isect_offset_encode, isect_tiles, project_gaussians, rasterize_to_pixels_torch, spherical_harmonics

RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
BACKENDS = ("auto", "gsplat", "cpu", "torch")
# gsplat arguments that only trade speed for memory: accepted with any value and ignored.
_PERFORMANCE_ONLY = ("channel_chunk", "segmented")


def rasterization(
    means: torch.Tensor,  # [N, 3]
    quats: torch.Tensor,  # [N, 4] wxyz, any norm
    scales: torch.Tensor,  # [N, 3]
    opacities: torch.Tensor,  # [N]
    colors: torch.Tensor | tuple[torch.Tensor, ...],  # [(C,) N, D], SH coefficients [(C,) N, K, 3], or SH blocks along K
    viewmats: torch.Tensor,  # [C, 4, 4] world → camera (OpenCV)
    Ks: torch.Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    packed: bool = False,
    tile_size: int = 16,
    backgrounds: torch.Tensor | None = None,  # [C, D]
    render_mode: str = "RGB",
    absgrad: bool = False,
    rasterize_mode: str = "classic",
    backend: str = "auto",
    **unsupported,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Render N Gaussians into C images, as `gsplat.rasterization`.

    Returns render_colors [C, H, W, D'] (D' = D for "RGB", 1 for "D"/"ED", D + 1 with the depth
    last for "RGB+D"/"RGB+ED"), render_alphas [C, H, W, 1] and `info`, with gsplat's unpacked
    keys: radii [C, N, 2] int32, means2d [C, N, 2] (in the graph: `retain_grad()` works, and
    `.absgrad` is set by backward when `absgrad`), depths [C, N], conics [C, N, 3], opacities
    [C, N], tile_width, tile_height, tiles_per_gauss [C, N], isect_ids, flatten_ids,
    isect_offsets [C, th, tw], width, height, tile_size, n_batches (1), n_cameras, and
    batch_ids = camera_ids = gaussian_ids = None. On the cpu backend the kernel bins tiles
    itself, so tiles_per_gauss, isect_ids, flatten_ids and isect_offsets are None.

    SH coefficients may also be given as a tuple of blocks [(C,) N, K_b, 3] along K, e.g. 3DGS's
    (sh0, shN): the cpu backend reads them in place, the others concatenate them.

    `packed=True` is accepted but the cpu and torch backends compute the unpacked layout (use
    `packed=False` in gsplat's strategies with them). Other gsplat arguments with non-default
    values raise NotImplementedError except on the gsplat backend.
    """
    N, C = means.shape[0], viewmats.shape[0]
    assert means.dim() == 2 and means.shape[1] == 3, f"means must be [N, 3], got {tuple(means.shape)}"
    assert quats.shape == (N, 4), f"quats must be [N={N}, 4], got {tuple(quats.shape)}"
    assert scales.shape == (N, 3), f"scales must be [N={N}, 3], got {tuple(scales.shape)}"
    assert opacities.shape == (N,), f"opacities must be [N={N}], got {tuple(opacities.shape)}"
    assert viewmats.shape == (C, 4, 4), f"viewmats must be [C, 4, 4], got {tuple(viewmats.shape)}"
    assert Ks.shape == (C, 3, 3), f"Ks must be [C={C}, 3, 3], got {tuple(Ks.shape)}"
    sh_blocks = tuple(colors) if isinstance(colors, (tuple, list)) else None
    if sh_blocks is not None:
        assert sh_degree is not None and sh_blocks, "colors given as a tuple are SH coefficient blocks: give sh_degree"
        assert all(b.shape[:-2] == sh_blocks[0].shape[:-2] and b.shape[-1] == 3 for b in sh_blocks), (
            f"SH blocks must share [(C,) N] and end in 3, got {[tuple(b.shape) for b in sh_blocks]}"
        )
        colors_shape = (*sh_blocks[0].shape[:-2], sum(b.shape[-2] for b in sh_blocks), 3)
    else:
        colors_shape = tuple(colors.shape)
    if sh_degree is None:
        assert (len(colors_shape) == 2 and colors_shape[0] == N) or (len(colors_shape) == 3 and colors_shape[:2] == (C, N)), (
            f"colors must be [N={N}, D] or [C={C}, N, D], got {colors_shape}"
        )
    else:
        assert (len(colors_shape) == 3 and colors_shape[0] == N) or (len(colors_shape) == 4 and colors_shape[:2] == (C, N)), (
            f"SH colors must be [N={N}, K, 3] or [C={C}, N, K, 3], got {colors_shape}"
        )
        assert colors_shape[-1] == 3 and (sh_degree + 1) ** 2 <= colors_shape[-2], (
            f"sh_degree={sh_degree} needs colors [..., K >= {(sh_degree + 1) ** 2}, 3], got {colors_shape}"
        )
    channels = 3 if sh_degree is not None else colors_shape[-1]
    assert backgrounds is None or backgrounds.shape == (C, channels), (
        f"backgrounds must be [C={C}, D={channels}], got {tuple(backgrounds.shape)}"
    )
    assert render_mode in RENDER_MODES, f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}"
    assert rasterize_mode in ("classic", "antialiased"), f"rasterize_mode must be classic|antialiased, got {rasterize_mode!r}"
    assert backend in BACKENDS, f"backend must be one of {BACKENDS}, got {backend!r}"

    if backend == "auto":
        on_cpu = means.device.type == "cpu" and means.dtype == torch.float32  # the C++ kernel is float32-only
        backend = "gsplat" if means.is_cuda else "cpu" if on_cpu else "torch"
    if backend == "gsplat":
        import gsplat

        if sh_blocks is not None:
            colors = torch.cat(sh_blocks, -2)
        return gsplat.rasterization(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height,
            near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip, eps2d=eps2d,
            sh_degree=sh_degree, packed=packed, tile_size=tile_size, backgrounds=backgrounds,
            render_mode=render_mode, absgrad=absgrad, rasterize_mode=rasterize_mode, **unsupported,
        )  # fmt: skip
    _check_unsupported(unsupported)
    cpu = _cpu_kernel() if backend == "cpu" else None
    # The fused C++ projection and SH give viewmats and Ks no gradient.
    fused = cpu is not None and not (viewmats.requires_grad or Ks.requires_grad)
    project, sh = (cpu.project_gaussians, cpu.spherical_harmonics) if fused else (project_gaussians, spherical_harmonics)
    if sh_blocks is not None:  # the fused SH reads the blocks in place
        colors = sh_blocks if fused else torch.cat(sh_blocks, -2)

    radii, means2d, depths, conics, compensations = project(
        means, quats, scales, viewmats, Ks, width, height, eps2d, near_plane, far_plane, radius_clip,
        opacities=opacities, calc_compensations=rasterize_mode == "antialiased",
    )  # fmt: skip
    opacities = _for_cameras(opacities, C, (N,)) if compensations is None else opacities * compensations  # [C, N]
    colors = _view_colors(colors, sh_degree, means, viewmats, sh)  # [C, N, D]
    colors, backgrounds = _add_depth_channel(colors, backgrounds, depths, render_mode)

    tile_width, tile_height = math.ceil(width / tile_size), math.ceil(height / tile_size)
    if cpu is not None:
        tiles_per_gauss = isect_ids = flatten_ids = isect_offsets = None
        render_colors, render_alphas = cpu.rasterize_to_pixels(
            means2d, conics, colors, opacities, depths, radii, backgrounds, width, height, tile_size, absgrad
        )
    else:
        tiles_per_gauss, isect_ids, flatten_ids = isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height)
        isect_offsets = isect_offset_encode(isect_ids, C, tile_width, tile_height)
        render_colors, render_alphas = rasterize_to_pixels_torch(
            means2d, conics, colors, opacities, backgrounds, width, height, tile_size, isect_offsets, flatten_ids, absgrad
        )
    if render_mode in ("ED", "RGB+ED"):
        render_colors = torch.cat([render_colors[..., :-1], render_colors[..., -1:] / render_alphas.clamp(min=1e-10)], -1)

    info = {
        "batch_ids": None,
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": radii,
        "means2d": means2d,
        "depths": depths,
        "conics": conics,
        "opacities": opacities,
        "tile_width": tile_width,
        "tile_height": tile_height,
        "tiles_per_gauss": tiles_per_gauss,
        "isect_ids": isect_ids,
        "flatten_ids": flatten_ids,
        "isect_offsets": isect_offsets,
        "width": width,
        "height": height,
        "tile_size": tile_size,
        "n_batches": 1,
        "n_cameras": C,
    }
    return render_colors, render_alphas, info


def _view_colors(
    colors: torch.Tensor | tuple[torch.Tensor, ...],
    sh_degree: int | None,
    means: torch.Tensor,
    viewmats: torch.Tensor,
    sh=spherical_harmonics,
) -> torch.Tensor:
    """[C, N, D] per-view colours; SH as gsplat: direction mean − camera centre, colour clamp(SH + 0.5, 0).
    SH coefficients given as a tuple of blocks go to `sh` as blocks (only the cpu backend's takes them)."""
    C, N = viewmats.shape[0], means.shape[0]
    if sh_degree is None:
        return _for_cameras(colors, C, (N, colors.shape[-1]))
    campos = torch.inverse(viewmats)[:, :3, 3]  # [C, 3]
    dirs = means[None, :, :] - campos[:, None, :]  # [C, N, 3]
    blocks = colors if isinstance(colors, tuple) else (colors,)
    coeffs = tuple(_for_cameras(b, C, (N, *b.shape[-2:])) for b in blocks)  # [C, N, K_b, 3] each
    coeffs = coeffs[0] if len(coeffs) == 1 else coeffs
    return torch.clamp_min(sh(sh_degree, dirs, coeffs) + 0.5, 0.0)


def _for_cameras(x: torch.Tensor, C: int, shape: tuple[int, ...]) -> torch.Tensor:
    """x [*shape] or [C, *shape] as [C, *shape]: a plain view for one camera (its gradient needs no
    reduction, unlike expand's), else broadcast."""
    if x.dim() == len(shape):
        x = x[None]
    return x if x.shape[0] == C else x.expand(C, *shape)


def _add_depth_channel(
    colors: torch.Tensor,  # [C, N, D]
    backgrounds: torch.Tensor | None,  # [C, D]
    depths: torch.Tensor,  # [C, N]
    render_mode: str,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Colours and backgrounds to rasterize: depth replaces ("D", "ED") or follows the colour; its background is 0."""
    if render_mode == "RGB":
        return colors, backgrounds
    depth_bg = None if backgrounds is None else backgrounds.new_zeros(backgrounds.shape[0], 1)
    if render_mode in ("D", "ED"):
        return depths[..., None], depth_bg
    colors = torch.cat([colors, depths[..., None]], -1)
    return colors, None if backgrounds is None else torch.cat([backgrounds, depth_bg], -1)


def _check_unsupported(kwargs: dict) -> None:
    """Accept gsplat-only arguments at their gsplat defaults; anything else is an error."""
    defaults = _gsplat_defaults() if kwargs else {}
    for name, value in kwargs.items():
        if name not in defaults:
            raise TypeError(f"rasterization() got an unexpected keyword argument {name!r}")
        default = defaults[name]
        if name not in _PERFORMANCE_ONLY and not (value is default or (not torch.is_tensor(value) and value == default)):
            raise NotImplementedError(
                f"rasterization(): {name}={value!r} is only supported by backend='gsplat' (CUDA); "
                f"the cpu and torch backends need {name}={default!r}"
            )


@functools.cache
def _gsplat_defaults() -> dict:
    import gsplat

    parameters = inspect.signature(gsplat.rasterization).parameters.items()
    return {name: p.default for name, p in parameters if p.default is not inspect.Parameter.empty}


@functools.cache
def _cpu_kernel():
    """The compiled CPU rasterizer module, or None (warning once) when it cannot be used."""
    try:
        from . import _cpu
    except ImportError as error:
        reason = f"cannot import renderers.splatting._cpu: {error}"
    else:
        if _cpu.available():
            return _cpu
        reason = _cpu.build_error()
    warnings.warn(f"compiled CPU rasterizer unavailable ({reason}); using the slow torch rasterizer", stacklevel=3)
    return None
