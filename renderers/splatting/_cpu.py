"""Compiled CPU backend: tile-based Gaussian rasterization (C++/OpenMP) with a hand-written backward.

`rasterize_to_pixels` matches gsplat 1.5.3's `rasterize_to_pixels` (classic 3DGS, not packed), but
takes depths and radii instead of precomputed tile intersections: binning happens in the kernel.
The extension is JIT-built on first use (`csrc/rasterize.cpp`, ~40 s) and cached by torch under
$TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions). If it cannot be built, `available()` is
False and `build_error()` says why in one line.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import Tensor

_SOURCE = Path(__file__).parent / "csrc" / "rasterize.cpp"
_error: Optional[str] = None


def _isa_flags() -> list:
    """-mavx2 -mfma where this CPU has them (8-lane kernels), else none (4 lanes)."""
    try:
        cpu_flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return ["-mavx2", "-mfma"] if {"avx2", "fma"} <= cpu_flags else []


@functools.cache
def _extension():
    """The loaded extension module, or None (and `_error` set) if it cannot be built."""
    global _error
    isa = _isa_flags()
    try:
        from torch.utils.cpp_extension import load

        return load(  # one cache entry per instruction set, so a shared cache never mixes them
            name="recon_splat_cpu" + ("_avx2" if isa else ""),
            sources=[str(_SOURCE)],
            extra_cflags=["-O3", "-ffp-contract=off", "-fopenmp", *isa],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as e:  # missing compiler/ninja, build or load failure
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = next((line for line in lines if "error" in line.lower()), lines[-1] if lines else type(e).__name__)
        _error = f"cannot build the C++ CPU rasterizer ({type(e).__name__}: {detail})"
        return None


def available() -> bool:
    """Whether the compiled kernel is usable; builds it on the first call and never raises."""
    return _extension() is not None


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
    ext = _extension()
    if ext is None:
        raise RuntimeError(_error)
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
        means2d, conics, colors, opacities, bg, T_final, last_ids, tile_offsets, isect_ids, isect_slots, gauss_offsets = (
            ctx.saved_tensors
        )
        width, height, tile_size, absgrad = ctx.config
        v_means2d, v_conics, v_colors, v_opacities, v_abs = _extension().backward(
            means2d.contiguous(), conics, colors, opacities, bg, width, height, tile_size,
            T_final, last_ids, tile_offsets, isect_ids, isect_slots, gauss_offsets,
            v_render_colors.float().contiguous(), v_render_alphas.float().contiguous(), absgrad,
        )
        if absgrad:
            means2d.absgrad = v_abs if getattr(means2d, "absgrad", None) is None else means2d.absgrad + v_abs
        v_backgrounds = None
        if ctx.needs_input_grad[4]:  # colour += T_final * background
            v_backgrounds = (v_render_colors * T_final[..., None]).sum(dim=(1, 2))
        return v_means2d, v_conics, v_colors, v_opacities, v_backgrounds, None, None, None, None, None, None
