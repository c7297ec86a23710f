"""Compiled CPU backend: Gaussian splatting kernels (C++/OpenMP) with hand-written backwards.

`rasterize_to_pixels` matches gsplat 1.5.3's `rasterize_to_pixels` (classic 3DGS, not packed), but
takes depths and radii instead of precomputed tile intersections: binning happens in the kernel.
`project_gaussians` and `spherical_harmonics` compute exactly what their `_torch_impl` namesakes do,
fused per Gaussian; their gradients flow to means, quats, scales and SH coefficients/directions,
never to viewmats or Ks, and culled (camera, Gaussian) pairs (radii 0) get none, as in gsplat.
The two extensions (`csrc/rasterize.cpp`, `csrc/project.cpp`) are JIT-built on first use and
cached (`renderers.cpp`). If either cannot be built, `available()` is False and `build_error()`
says why in one line.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from renderers.cpp import BuildError, build

_CSRC = Path(__file__).parent / "csrc"
_error: Optional[str] = None


@functools.cache
def _extensions():
    """The loaded (rasterizer, projection) extension modules, or None (and `_error` set) if either
    cannot be built."""
    global _error
    try:
        return build("recon_splat_cpu", _CSRC / "rasterize.cpp"), build("recon_splat_project_cpu", _CSRC / "project.cpp")
    except BuildError as e:
        _error = f"cannot build the C++ CPU splatting kernels ({e})"
        return None


def _extension():
    """The rasterizer module; raises if the kernels are unavailable."""
    if _extensions() is None:
        raise RuntimeError(_error)
    return _extensions()[0]


def _projection():
    """The projection and SH module; raises if the kernels are unavailable."""
    if _extensions() is None:
        raise RuntimeError(_error)
    return _extensions()[1]


def available() -> bool:
    """Whether the compiled kernel is usable; builds it on the first call and never raises."""
    return _extensions() is not None


def build_error() -> Optional[str]:
    """One line saying why `available()` is False, else None."""
    available()
    return _error


def rasterize_to_pixels(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    colors: Tensor,  # [C, N, D]
    opacities: Tensor,  # [C, N]
    depths: Tensor,  # [C, N]
    radii: Tensor,  # [C, N] or [C, N, 2] int
    backgrounds: Optional[Tensor],  # [C, D]
    width: int,
    height: int,
    tile_size: int = 16,
    absgrad: bool = False,
) -> Tuple[Tensor, Tensor]:
    """Renders colors [C, H, W, D] and alphas [C, H, W, 1], differentiable w.r.t. means2d, conics,
    colors, opacities and backgrounds. With absgrad, backward adds the per-pixel sum of
    |dL/dmeans2d| to `means2d.absgrad` [C, N, 2] (created if missing)."""
    _extension()  # raises if unavailable
    C, N = means2d.shape[:2]
    D = colors.shape[-1]
    assert means2d.shape == (C, N, 2), means2d.shape
    assert conics.shape == (C, N, 3), conics.shape
    assert colors.shape == (C, N, D), colors.shape
    assert opacities.shape == (C, N), opacities.shape
    assert depths.shape == (C, N), depths.shape
    assert radii.shape in ((C, N), (C, N, 2)), radii.shape
    assert backgrounds is None or backgrounds.shape == (C, D), backgrounds.shape
    assert width > 0 and height > 0 and tile_size > 0, (width, height, tile_size)
    for name, x in (("means2d", means2d), ("conics", conics), ("colors", colors), ("opacities", opacities)):
        assert x.dtype == torch.float32 and x.device.type == "cpu", f"{name}: expected float32 on CPU, got {x.dtype} on {x.device}"
    if radii.dim() == 2:  # one radius for both axes
        radii = radii[..., None].expand(C, N, 2)
    radii = radii.to(torch.int32).contiguous()
    return _RasterizeToPixels.apply(
        means2d, conics, colors, opacities, backgrounds, depths.detach().float().contiguous(), radii,
        int(width), int(height), int(tile_size), absgrad,
    )


class _RasterizeToPixels(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, backgrounds, depths, radii, width, height, tile_size, absgrad):
        inputs = [x.contiguous() for x in (means2d, conics, colors, opacities)]
        bg = None if backgrounds is None else backgrounds.float().contiguous()
        render_colors, render_alphas, *saved = _extension().forward(*inputs, depths, radii, bg, width, height, tile_size)
        ctx.save_for_backward(means2d, *inputs[1:], bg, *saved)
        ctx.config = (width, height, tile_size, absgrad)
        return render_colors, render_alphas

    @staticmethod
    def backward(ctx, v_render_colors, v_render_alphas):  # [C, H, W, D], [C, H, W, 1]
        means2d, conics, colors, opacities, bg, T_final, last_ids, tile_offsets, isect_ids, isect_slots, gauss_offsets, splats = (
            ctx.saved_tensors
        )
        width, height, tile_size, absgrad = ctx.config
        v_means2d, v_conics, v_colors, v_opacities, v_abs = _extension().backward(
            means2d.contiguous(), conics, colors, opacities, bg, width, height, tile_size,
            T_final, last_ids, tile_offsets, isect_ids, isect_slots, gauss_offsets, splats,
            v_render_colors.float(), v_render_alphas.float(), absgrad,  # any strides
        )
        if absgrad:
            means2d.absgrad = v_abs if getattr(means2d, "absgrad", None) is None else means2d.absgrad + v_abs
        v_backgrounds = None
        if ctx.needs_input_grad[4]:  # colour += T_final * background
            v_backgrounds = (v_render_colors * T_final[..., None]).sum(dim=(1, 2))
        return v_means2d, v_conics, v_colors, v_opacities, v_backgrounds, None, None, None, None, None, None


def project_gaussians(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4] wxyz, any norm
    scales: Tensor,  # [N, 3]
    viewmats: Tensor,  # [C, 4, 4] world → camera (OpenCV)
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    opacities: Optional[Tensor] = None,  # [N], enables gsplat's opacity-aware radius and culling
    calc_compensations: bool = False,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Optional[Tensor]]:
    """`_torch_impl.project_gaussians`, fused: radii [C, N, 2] int32, means2d [C, N, 2], depths
    [C, N], conics [C, N, 3], compensations [C, N] or None. Differentiable w.r.t. means, quats and
    scales only (viewmats and Ks get no gradient; opacities only cull); pairs with radii 0 get none."""
    N, C = means.shape[0], viewmats.shape[0]
    assert means.shape == (N, 3), means.shape
    assert quats.shape == (N, 4), quats.shape
    assert scales.shape == (N, 3), scales.shape
    assert viewmats.shape == (C, 4, 4), viewmats.shape
    assert Ks.shape == (C, 3, 3), Ks.shape
    assert opacities is None or opacities.shape == (N,), opacities.shape
    for name, x in (("means", means), ("quats", quats), ("scales", scales), ("viewmats", viewmats), ("Ks", Ks)):
        assert x.dtype == torch.float32 and x.device.type == "cpu", f"{name}: expected float32 on CPU, got {x.dtype} on {x.device}"
    if opacities is not None:
        opacities = opacities.detach().float().contiguous()
    config = (int(width), int(height), float(eps2d), float(near_plane), float(far_plane), float(radius_clip), bool(calc_compensations))
    radii, means2d, depths, conics, compensations = _ProjectGaussians.apply(
        means.contiguous(), quats.contiguous(), scales.contiguous(),
        viewmats.detach().contiguous(), Ks.detach().contiguous(), opacities, config,
    )  # fmt: skip
    return radii, means2d, depths, conics, compensations if calc_compensations else None


class _ProjectGaussians(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, viewmats, Ks, opacities, config):
        radii, *outputs = _projection().project_forward(means, quats, scales, viewmats, Ks, opacities, *config)
        ctx.mark_non_differentiable(radii)
        ctx.save_for_backward(means, quats, scales, viewmats, Ks, radii)
        ctx.config = config
        return radii, *outputs

    @staticmethod
    @once_differentiable
    def backward(ctx, _v_radii, v_means2d, v_depths, v_conics, v_compensations):
        means, quats, scales, viewmats, Ks, radii = ctx.saved_tensors
        v_means, v_quats, v_scales = _projection().project_backward(
            means, quats, scales, viewmats, Ks, radii, *ctx.config,
            *(v.float().contiguous() for v in (v_means2d, v_depths, v_conics, v_compensations)),
        )  # fmt: skip
        return v_means, v_quats, v_scales, None, None, None, None


def spherical_harmonics(
    degree: int,
    dirs: Tensor,  # [..., 3], any norm
    coeffs: Tensor | Sequence[Tensor],  # [..., K, 3], or blocks [..., K_b, 3] along K
) -> Tensor:
    """`_torch_impl.spherical_harmonics`, fused: [..., 3] SH colour (without gsplat's +0.5 offset)
    of degree 0–3 along `dirs`, differentiable w.r.t. dirs and coeffs. Coefficients given as blocks
    (e.g. 3DGS's sh0 and shN) are read in place, without concatenating them."""
    assert 0 <= degree <= 3, f"sh_degree must be 0..3, got {degree}"
    blocks = (coeffs,) if torch.is_tensor(coeffs) else tuple(coeffs)
    batch, K = dirs.shape[:-1], sum(b.shape[-2] for b in blocks)
    for b in blocks:
        assert dirs.shape[-1] == 3 and b.shape == (*batch, b.shape[-2], 3), (dirs.shape, b.shape)
    assert K >= (degree + 1) ** 2, f"sh_degree={degree} needs K >= {(degree + 1) ** 2}, got {K}"
    for name, x in (("dirs", dirs), *(("coeffs", b) for b in blocks)):
        assert x.dtype == torch.float32 and x.device.type == "cpu", f"{name}: expected float32 on CPU, got {x.dtype} on {x.device}"
    M = batch.numel()
    flat = (b.reshape(M, b.shape[-2], 3).contiguous() for b in blocks)  # explicit M: a block may be empty
    colors = _SphericalHarmonics.apply(int(degree), dirs.reshape(-1, 3).contiguous(), *flat)
    return colors.reshape(*batch, 3)


class _SphericalHarmonics(torch.autograd.Function):
    @staticmethod
    def forward(ctx, degree, dirs, *blocks):  # [M, 3], [M, K_b, 3] each
        ctx.degree = degree
        ctx.save_for_backward(dirs, *blocks)
        return _projection().sh_forward(degree, dirs, list(blocks))

    @staticmethod
    @once_differentiable
    def backward(ctx, v_colors):  # [M, 3]
        dirs, *blocks = ctx.saved_tensors
        v_dirs, *v_blocks = _projection().sh_backward(ctx.degree, dirs, blocks, v_colors.float().contiguous())
        return None, v_dirs, *v_blocks
