"""Image quality metrics on HWC images in [0, 1]: PSNR, SSIM, and LPIPS when weights exist locally."""

from __future__ import annotations

import functools
import os

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

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


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM, Gaussian window 11 / sigma 1.5, data range 1 (torchmetrics): [..., H, W, 3] -> [...]."""
    _check_images(pred, target)
    values = structural_similarity_index_measure(
        _to_nchw(pred), _to_nchw(target), gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0, reduction="none"
    )  # [B]
    return values.reshape(pred.shape[:-3])


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
