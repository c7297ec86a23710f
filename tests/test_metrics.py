"""Tests for recon.metrics."""

import math

import pytest
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from recon.metrics import LPIPS_WEIGHTS_ENV, lpips, lpips_unavailable_reason, psnr, ssim


def images(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_psnr_identical_is_inf_and_known_mse():
    a = images(2, 3, 16, 16, 3) * 0.8
    assert psnr(a, a).shape == (2, 3) and torch.isinf(psnr(a, a)).all()
    torch.testing.assert_close(psnr(a + 0.1, a), torch.full((2, 3), 20.0))  # MSE 0.01
    b = a.clone()
    b[0, 0] += 0.01  # only image (0, 0) differs: MSE 1e-4 -> 40 dB
    p = psnr(b, a)
    assert math.isclose(p[0, 0].item(), 40.0, rel_tol=1e-4) and torch.isinf(p[1:]).all()


def test_ssim_identity_noise_and_torchmetrics():
    a = images(2, 3, 32, 32, 3)
    torch.testing.assert_close(ssim(a, a), torch.ones(2, 3))
    clean = images(32, 32, 3, seed=1)
    noisy = [ssim((clean + s * torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1), clean)
             for s in (0.02, 0.1, 0.3)]
    assert noisy[0].shape == () and noisy[0] > noisy[1] > noisy[2]
    b = (a + 0.1 * torch.randn(a.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    expected = structural_similarity_index_measure(
        b.reshape(6, 32, 32, 3).permute(0, 3, 1, 2), a.reshape(6, 32, 32, 3).permute(0, 3, 1, 2),
        data_range=1.0, reduction="none",
    )
    torch.testing.assert_close(ssim(b, a), expected.reshape(2, 3))


def test_lpips_unavailable_here(monkeypatch):
    monkeypatch.delenv(LPIPS_WEIGHTS_ENV, raising=False)
    a = images(16, 16, 3)
    assert lpips(a, a) is None
    assert LPIPS_WEIGHTS_ENV in lpips_unavailable_reason()
    monkeypatch.setenv(LPIPS_WEIGHTS_ENV, "/nonexistent/lpips_alex.pth")
    assert lpips(a, a) is None and "not a file" in lpips_unavailable_reason()


def test_shape_mismatch_rejected():
    with pytest.raises(AssertionError):
        psnr(images(8, 8, 3), images(8, 9, 3))


def test_ssim_gradient_matches_torchmetrics():
    """ssim() doubles as the 3DGS training loss: its gradient must be torchmetrics' too."""
    target = images(24, 20, 3, seed=4)
    pred = (target + 0.1 * torch.randn(target.shape, generator=torch.Generator().manual_seed(5))).clamp(0, 1).double().requires_grad_()
    (ours,) = torch.autograd.grad(ssim(pred, target.double()), pred)
    reference = structural_similarity_index_measure(pred.permute(2, 0, 1)[None], target.double().permute(2, 0, 1)[None], data_range=1.0)
    (expected,) = torch.autograd.grad(reference, pred)
    torch.testing.assert_close(ours, expected)


@pytest.mark.parametrize("shape", [(2, 37, 53, 3), (6, 7, 3), (64, 64, 3)])
def test_ssim_cpu_kernel_matches_torch(shape):
    """The fused C++ SSIM (values and gradient) against the separable-convolution reference."""
    target = images(*shape, seed=6)
    noisy = (target + 0.1 * torch.randn(shape, generator=torch.Generator().manual_seed(7))).clamp(0, 1)
    weights = torch.rand(shape[:-3], generator=torch.Generator().manual_seed(8))
    values, grads = {}, {}
    for backend in ("cpu", "torch"):
        pred = noisy.clone().requires_grad_()
        values[backend] = ssim(pred, target, backend=backend)
        (grads[backend],) = torch.autograd.grad((values[backend] * weights).sum(), pred)
    torch.testing.assert_close(values["cpu"], values["torch"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grads["cpu"], grads["torch"], atol=1e-7, rtol=1e-4)
    assert grads["cpu"].abs().max() > 0


def test_ssim_auto_backend_falls_back_to_torch_when_the_kernel_cannot_apply():
    target = images(16, 16, 3, seed=9)
    pred = (target * 0.9).requires_grad_()
    both = target.clone().requires_grad_()
    (g_target,) = torch.autograd.grad(ssim(pred, both), both)  # target gradient: torch path only
    assert g_target.abs().max() > 0
    with pytest.raises(AssertionError, match="float32 CPU"):
        ssim(pred.double(), target.double(), backend="cpu")
    torch.testing.assert_close(ssim(pred.double(), target.double()).float(), ssim(pred, target), atol=1e-6, rtol=0)
