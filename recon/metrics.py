"""Image quality metrics on HWC images in [0, 1]: PSNR, SSIM, and LPIPS when weights exist locally."""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["psnr", "ssim", "lpips", "lpips_unavailable_reason", "LPIPS_WEIGHTS_ENV"]

LPIPS_WEIGHTS_ENV = "RECON_LPIPS_WEIGHTS"


def _check_images(pred: torch.Tensor, target: torch.Tensor) -> None:
    assert pred.shape == target.shape, f"shape mismatch {tuple(pred.shape)} vs {tuple(target.shape)}"
    assert pred.dim() >= 3 and pred.shape[-1] == 3, f"expected [..., H, W, 3], got {tuple(pred.shape)}"


def _to_nchw(img: torch.Tensor) -> torch.Tensor:
    return img.reshape(-1, *img.shape[-3:]).permute(0, 3, 1, 2)  # [B, 3, H, W]


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB, -10 log10(MSE) with peak 1: [..., H, W, 3] -> [...].

    Identical images give +inf (no cap), so a mean over images is inf as well; filter if needed.
    """
    _check_images(pred, target)
    mse = (pred - target).square().mean(dim=(-3, -2, -1))  # [...]
    return -10.0 * torch.log10(mse)


def ssim(pred: torch.Tensor, target: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Per-image SSIM, Gaussian window 11 / sigma 1.5, data range 1: [..., H, W, 3] -> [...].

    Same definition as torchmetrics' (reflect padding, mean over the full map; tested against
    it), cheap enough to be a training loss. backend: "torch" (separable convolutions, any
    device), "cpu" (the fused C++ kernel in recon/csrc/ssim.cpp; float32 CPU images, gradient for
    `pred` only) or "auto" (cpu where it applies and builds, else torch).
    """
    _check_images(pred, target)
    assert backend in ("auto", "cpu", "torch"), f"backend must be auto|cpu|torch, got {backend!r}"
    fits_cpu = pred.device.type == "cpu" and pred.dtype == target.dtype == torch.float32 and not target.requires_grad
    if backend == "cpu" or (backend == "auto" and fits_cpu and _ssim_kernel() is not None):
        assert fits_cpu, "ssim backend 'cpu' needs float32 CPU images and no gradient for target"
        x, y = (_to_nchw(img).reshape(-1, *img.shape[-3:-1]).contiguous() for img in (pred, target))  # [B·3, H, W]
        per_plane = _SSIMCpu.apply(x, y)  # [B·3]
        return per_plane.view(-1, 3).mean(-1).reshape(pred.shape[:-3])
    return _ssim_torch(pred, target)


def _ssim_torch(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x, y = _to_nchw(pred), _to_nchw(target)  # [B, 3, H, W]
    b = x.shape[0]
    pad = _SSIM_WINDOW // 2
    stats = F.pad(torch.cat([x, y, x * x, y * y, x * y]), (pad, pad, pad, pad), mode="reflect")  # [5B, 3, H+10, W+10]
    window = _gaussian_window(x.dtype, x.device)
    blurred = F.conv2d(F.conv2d(stats, window.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3), window.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    mu_x, mu_y, xx, yy, xy = blurred.split(b)  # each [B, 3, H, W]
    var_x = (xx - mu_x**2).clamp_min(0)
    var_y = (yy - mu_y**2).clamp_min(0)
    cov = xy - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean(dim=(1, 2, 3)).reshape(pred.shape[:-3])


@functools.cache
def _ssim_kernel():
    """The compiled SSIM extension, or None (after one warning) if it cannot be built."""
    from renderers.cpp import BuildError, build

    try:
        return build("recon_ssim_cpu", Path(__file__).parent / "csrc" / "ssim.cpp")
    except BuildError as e:
        warnings.warn(f"cannot build the C++ SSIM kernel ({e}); using the torch implementation")
        return None


class _SSIMCpu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y):  # [P, H, W] planes -> [P] mean SSIM per plane
        per_plane, partials = _ssim_kernel().forward(x, y)
        ctx.save_for_backward(x, y, partials)
        return per_plane

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # [P]
        x, y, partials = ctx.saved_tensors
        return _ssim_kernel().backward(x, y, partials, grad.float().contiguous()), None


_SSIM_WINDOW, _SSIM_SIGMA = 11, 1.5


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[11] normalised 1D Gaussian, σ 1.5."""
    offsets = torch.arange(_SSIM_WINDOW, dtype=dtype, device=device) - _SSIM_WINDOW // 2
    window = torch.exp(-0.5 * (offsets / _SSIM_SIGMA) ** 2)
    return window / window.sum()


@functools.cache
def _load_lpips(path: str | None) -> tuple[torch.nn.Module | None, str | None]:
    """(model, None) or (None, reason). Cached per weights path."""
    if not path:
        return None, f"LPIPS n/a: ${LPIPS_WEIGHTS_ENV} is not set (weights cannot be downloaded here)"
    if not os.path.isfile(path):
        return None, f"LPIPS n/a: ${LPIPS_WEIGHTS_ENV}={path} is not a file"
    try:
        import lpips as lpips_pkg
    except ImportError:
        return None, "LPIPS n/a: the `lpips` package is not installed (pip install lpips)"
    # The file must be a full state_dict of lpips.LPIPS(net="alex") (backbone + linear heads), saved
    # on a machine with internet via torch.save(lpips.LPIPS(net="alex").state_dict(), path);
    # pnet_rand/pretrained=False keep the constructor from downloading anything.
    model = lpips_pkg.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval().requires_grad_(False), None


def lpips_unavailable_reason() -> str | None:
    """Why `lpips` returns None (None when it is available)."""
    return _load_lpips(os.environ.get(LPIPS_WEIGHTS_ENV))[1]


def lpips(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """Per-image LPIPS (AlexNet): [..., H, W, 3] -> [...], or None when unavailable (callers print "n/a").

    Available only if ${RECON_LPIPS_WEIGHTS} names a local weights file and `lpips` imports; see
    `lpips_unavailable_reason()`.
    """
    _check_images(pred, target)
    model, _ = _load_lpips(os.environ.get(LPIPS_WEIGHTS_ENV))
    if model is None:
        return None
    model = model.to(pred.device)
    with torch.no_grad():
        values = model(_to_nchw(pred).float(), _to_nchw(target).float(), normalize=True)  # [B, 1, 1, 1], [0,1] inputs
    return values.reshape(pred.shape[:-3])
