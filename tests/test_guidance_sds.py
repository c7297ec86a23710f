"""The SDS algebra for any noise predictor: add_noise, v→ε, both CFG forms, SDS ≡ L2 to x̂₀
(gradients to 1e-5), the reparameterised loss, gradient hygiene and every timestep schedule's bounds."""
import pytest
import torch

from recon.guidance.schedules import MODES, TimestepSchedule
from recon.guidance.sds import (
    WEIGHTINGS, add_noise, classifier_free_guidance, l2_weight, predicted_x0, sds_loss, sds_weight, v_to_epsilon,
)


def alpha_bars(batch: int) -> torch.Tensor:
    """[B] ā of diffusers' scaled-linear schedule at spread-out timesteps."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)[torch.linspace(20, 980, batch).long()]


def test_add_noise_and_x0_invert_each_other_and_v_converts_to_epsilon():
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64), torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    ab = alpha_bars(4)
    x_t = add_noise(x, eps, ab)
    a, s = ab.sqrt().view(-1, 1, 1, 1), (1 - ab).sqrt().view(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, a * x + s * eps)
    torch.testing.assert_close(predicted_x0(x_t, eps, ab), x)  # the true noise denoises exactly
    v = a * eps - s * x  # diffusers' velocity target
    torch.testing.assert_close(v_to_epsilon(v, x_t, ab), eps)


def test_both_guidance_forms_and_their_scale_relation():
    g = torch.Generator().manual_seed(1)
    eps_u, eps_c = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    torch.testing.assert_close(classifier_free_guidance(eps_u, eps_c, 7.5), eps_u + 7.5 * (eps_c - eps_u))
    torch.testing.assert_close(classifier_free_guidance(eps_u, eps_c, 1.0), eps_c)
    torch.testing.assert_close(classifier_free_guidance(eps_u, eps_c, 6.5, "threestudio"), classifier_free_guidance(eps_u, eps_c, 7.5))
    with pytest.raises(ValueError, match="guidance form"):
        classifier_free_guidance(eps_u, eps_c, 1.0, "other")


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_sds_gradient_equals_the_weighted_l2_to_x0_gradient(weighting):
    g = torch.Generator().manual_seed(2)
    batch = 3
    x = torch.randn(batch, 4, 6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    eps, eps_hat = torch.randn(2, batch, 4, 6, 6, generator=g, dtype=torch.float64)
    ab = alpha_bars(batch)
    w = sds_weight(weighting, ab).view(-1, 1, 1, 1)
    sds_loss(x, w * (eps_hat - eps)).backward()
    sds_grad = x.grad.clone()
    torch.testing.assert_close(sds_grad, w * (eps_hat - eps) / batch)  # reparameterised: g / B

    x.grad = None
    x0 = predicted_x0(add_noise(x.detach(), eps, ab), eps_hat, ab)
    lam = l2_weight(weighting, ab).view(-1, 1, 1, 1)
    (0.5 * (lam * (x - x0) ** 2).sum() / batch).backward()
    torch.testing.assert_close(x.grad, sds_grad, rtol=1e-5, atol=1e-8)


def test_dreamfusion_l2_weight_is_a_times_s():
    ab = alpha_bars(5)
    torch.testing.assert_close(l2_weight("dreamfusion", ab), ab.sqrt() * (1 - ab).sqrt())
    torch.testing.assert_close(l2_weight("l2", ab), torch.ones_like(ab))


def test_non_finite_gradients_are_zeroed_and_the_rest_clamped():
    x = torch.zeros(2, 3, requires_grad=True)
    gradient = torch.tensor([[float("nan"), float("inf"), 5.0], [-5.0, 0.25, float("-inf")]])
    sds_loss(x, gradient, clip=1.0).backward()
    torch.testing.assert_close(x.grad, torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.25, 0.0]]) / 2)


@pytest.mark.parametrize("mode", MODES)
def test_every_schedule_stays_in_its_bounds_and_anneals_where_it_should(mode):
    schedule = TimestepSchedule(mode=mode, low=0.02, high=0.98, high_final=0.5)
    ranges = [schedule(step, 100) for step in range(0, 101, 5)]
    for t_min, t_max in ranges:
        assert 20 <= t_min <= t_max <= 980
    if mode == "uniform":
        assert set(ranges) == {(20, 980)}
    else:
        assert ranges[0][1] == 980 and ranges[-1][1] < 980 and all(a[1] >= b[1] for a, b in zip(ranges, ranges[1:]))
    if mode in ("deterministic_linear", "sqrt"):
        assert all(t_min == t_max for t_min, t_max in ranges)
    if mode in ("linear_max", "step"):
        assert ranges[-1] == (20, 500)


def test_schedule_errors_name_the_setting():
    with pytest.raises(ValueError, match="timestep schedule must be one of"):
        TimestepSchedule(mode="cosine")
    with pytest.raises(ValueError, match="low ≤ high"):
        TimestepSchedule(low=0.6, high_final=0.5)
