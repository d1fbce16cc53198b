"""Exact checks of the flow-matching SDE / ODE steps."""

import math

import pytest
import torch

from diversegrpo.sde import gaussian_log_prob, sde_step, sigma_schedule


def test_log_prob_matches_torch_normal():
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    sigma, sigma_next = torch.tensor([0.9, 0.7, 0.5, 0.3]), torch.tensor([0.8, 0.6, 0.4, 0.2])
    step = sde_step(x, v, sigma, sigma_next, noise_level=0.7, generator=g)
    expected = torch.distributions.Normal(step.mean, step.std.view(-1, 1, 1, 1)).log_prob(step.sample)
    torch.testing.assert_close(step.log_prob, expected.mean(dim=(1, 2, 3)))
    # std is std_t * sqrt(-dt), std_t = a sqrt(sigma / (1 - sigma))
    std_t = 0.7 * torch.sqrt(sigma / (1 - sigma))
    torch.testing.assert_close(step.std, std_t * torch.sqrt(sigma - sigma_next))


def test_rescoring_a_stored_sample_gives_the_same_log_prob():
    g = torch.Generator().manual_seed(1)
    x, v = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g)
    first = sde_step(x, v, 0.6, 0.5, noise_level=0.7, generator=g)
    again = sde_step(x, v, 0.6, 0.5, noise_level=0.7, prev_sample=first.sample)
    torch.testing.assert_close(again.log_prob, first.log_prob)
    assert torch.equal(again.sample, first.sample)


def test_sigma_one_uses_next_sigma_in_the_denominator():
    x, v = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    step = sde_step(x, v, 1.0, 0.9, noise_level=0.7, noise=torch.zeros_like(x))
    std_t = 0.7 * math.sqrt(1.0 / (1 - 0.9))
    assert torch.isfinite(step.mean).all()
    torch.testing.assert_close(step.std, torch.tensor([std_t * math.sqrt(0.1)]))


def test_noise_level_zero_matches_diffusers_euler_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 8, 8, generator=g)
    ours = x.clone()
    for i, t in enumerate(scheduler.timesteps):
        v = torch.sin(3 * x) + 0.1 * i  # any velocity field, evaluated at the scheduler's own state
        x = scheduler.step(v, t, x).prev_sample
        ours = sde_step(ours, torch.sin(3 * ours) + 0.1 * i, scheduler.sigmas[i], scheduler.sigmas[i + 1], 0.0).sample
    torch.testing.assert_close(ours, x, rtol=1e-5, atol=1e-5)


def test_sigma_schedule_ends_at_zero_and_matches_sd3_shift():
    sigmas = sigma_schedule(4, shift=3.0)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0 and torch.all(sigmas[1:] < sigmas[:-1])
    s = 0.5
    assert sigmas[2].item() == pytest.approx(3 * s / (1 + 2 * s))


def _exact_velocity(x, sigma, m, s):
    """E[noise - x0 | x_sigma] for x0 ~ N(m, s^2), noise ~ N(0, 1), x_sigma = (1 - sigma) x0 + sigma noise."""
    var = (1 - sigma) ** 2 * s**2 + sigma**2
    centred = x - (1 - sigma) * m
    x0_mean = m + (1 - sigma) * s**2 / var * centred
    noise_mean = sigma / var * centred
    return noise_mean - x0_mean


def test_sde_preserves_the_marginals_of_gaussian_data(sde_type="sde"):
    m, s, n = 1.5, 0.5, 20_000
    sigmas = torch.linspace(0.98, 0.0, 41, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    start = sigmas[0]
    x = (1 - start) * (m + s * torch.randn(n, 1, generator=g, dtype=torch.float64))
    x = x + start * torch.randn(n, 1, generator=g, dtype=torch.float64)
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        v = _exact_velocity(x, sigma, m, s)
        x = sde_step(x, v, sigma, sigma_next, noise_level=0.7, generator=g, sde_type=sde_type).sample.double()
    assert x.mean().item() == pytest.approx(m, rel=0.03)
    assert x.std().item() == pytest.approx(s, rel=0.03)


def test_a_wrong_drift_correction_would_fail_the_marginal_test():
    """The marginal test has teeth: plain Euler plus noise (no score correction) inflates the spread."""
    m, s, n = 1.5, 0.5, 20_000
    sigmas = torch.linspace(0.98, 0.0, 41, dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    x = (1 - sigmas[0]) * (m + s * torch.randn(n, 1, generator=g, dtype=torch.float64))
    x = x + sigmas[0] * torch.randn(n, 1, generator=g, dtype=torch.float64)
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        step = sde_step(x, _exact_velocity(x, sigma, m, s), sigma, sigma_next, noise_level=0.7, generator=g)
        naive_mean = x + _exact_velocity(x, sigma, m, s) * (sigma_next - sigma)
        x = naive_mean + step.std.view(-1, 1) * torch.randn(n, 1, generator=g, dtype=torch.float64)
    assert abs(x.std().item() / s - 1) > 0.1


def test_gaussian_log_prob_broadcasts_scalar_std():
    sample, mean = torch.zeros(3, 2), torch.ones(3, 2)
    expected = torch.distributions.Normal(1.0, 2.0).log_prob(torch.tensor(0.0))
    torch.testing.assert_close(gaussian_log_prob(sample, mean, torch.tensor(2.0)), expected.expand(3))


def test_cps_keeps_the_noise_coefficient_exactly_sigma_next():
    """CPS: x' = (1 - s') x0_hat + sqrt(s'^2 - std^2) eps_hat + std noise, so the noise coefficient is s'."""
    g = torch.Generator().manual_seed(4)
    x, v = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    sigma, sigma_next = 0.8, 0.6
    step = sde_step(x, v, sigma, sigma_next, noise_level=0.7, generator=g, sde_type="cps")
    x0_hat, eps_hat = x - sigma * v, x + (1 - sigma) * v
    std = sigma_next * math.sin(0.7 * math.pi / 2)
    torch.testing.assert_close(step.std, torch.full((3,), std))
    eps_coefficient = math.sqrt(sigma_next**2 - std**2)
    torch.testing.assert_close(step.mean, (1 - sigma_next) * x0_hat + eps_coefficient * eps_hat)
    assert eps_coefficient**2 + std**2 == pytest.approx(sigma_next**2)
