"""Flow-matching samplers with log-probabilities (Flow-GRPO's SDE, a CPS step, the Euler ODE).

Convention (rectified flow, as diffusers' FlowMatchEulerDiscreteScheduler): x_sigma = (1 - sigma) x0 +
sigma * noise, velocity v = noise - x0, sigma runs from 1 (noise) to 0 (image), dt = sigma_next - sigma < 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

SdeType = Literal["sde", "cps"]


@dataclass
class StepResult:
    sample: torch.Tensor  # (B, ...) x at sigma_next
    mean: torch.Tensor  # (B, ...) mean of the Gaussian the sample is drawn from
    std: torch.Tensor  # (B,) std of that Gaussian: std_t * sqrt(-dt) (0 for the ODE step)
    log_prob: torch.Tensor  # (B,) mean over non-batch dims of log N(sample | mean, std^2)


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's time shift: sigma' = shift * sigma / (1 + (shift - 1) sigma)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sigma_schedule(num_steps: int, shift: float = 1.0, sigma_max: float = 1.0) -> torch.Tensor:
    """(num_steps + 1,) sigmas from sigma_max down to exactly 0."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1, got {num_steps}")
    sigmas = shift_sigmas(torch.linspace(sigma_max, 0.0, num_steps + 1, dtype=torch.float64), shift)
    sigmas[-1] = 0.0
    return sigmas.float()


def _per_sample(value: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) value as (B, 1, ..., 1), broadcastable against (B, ...) `like`."""
    value = torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(-1)
    return value.expand(like.shape[0]).reshape((-1,) + (1,) * (like.ndim - 1))


def gaussian_log_prob(sample: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B,) log N(sample | mean, std^2), averaged over the non-batch dims (Flow-GRPO's convention)."""
    std = _per_sample(std, sample)  # (B, 1, ...)
    log_prob = -((sample.detach() - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return log_prob.mean(dim=tuple(range(1, sample.ndim)))


def sde_step(
    x: torch.Tensor,
    velocity: torch.Tensor,
    sigma: torch.Tensor | float,
    sigma_next: torch.Tensor | float,
    noise_level: float,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    prev_sample: torch.Tensor | None = None,
    sde_type: SdeType = "sde",
) -> StepResult:
    """One step sigma -> sigma_next. noise_level 0 is the deterministic Euler (ODE) step.

    Pass `prev_sample` to score a stored sample under the current model (the GRPO train pass) instead
    of drawing a new one. Math in float32 whatever the model's dtype: log-probs are differences of
    large, nearly equal numbers.
    """
    x, velocity = x.float(), velocity.float()
    sigma, sigma_next = _per_sample(sigma, x), _per_sample(sigma_next, x)
    dt = sigma_next - sigma  # (B, 1, ...) negative
    if noise_level == 0:
        mean = x + velocity * dt
        sample = mean if prev_sample is None else prev_sample.float()
        zero = torch.zeros(x.shape[0], device=x.device)
        return StepResult(sample=sample, mean=mean, std=zero, log_prob=zero)
    if sde_type == "sde":
        mean, std = _flow_grpo_sde(x, velocity, sigma, sigma_next, dt, noise_level)
    elif sde_type == "cps":
        mean, std = _cps(x, velocity, sigma, sigma_next, noise_level)
    else:
        raise ValueError(f"sde_type must be 'sde' or 'cps', got {sde_type!r}")
    if prev_sample is None:
        if noise is None:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        prev_sample = mean + std * noise
    prev_sample = prev_sample.float()
    return StepResult(
        sample=prev_sample, mean=mean, std=std.reshape(-1), log_prob=gaussian_log_prob(prev_sample, mean, std)
    )


def _flow_grpo_sde(x, velocity, sigma, sigma_next, dt, noise_level):
    """Flow-GRPO's marginal-preserving SDE (their Eq. 5), discretised with Euler-Maruyama."""
    # At sigma == 1 the score term's 1 / (1 - sigma) is infinite; Flow-GRPO uses the next sigma there.
    denominator = 1 - torch.where(sigma == 1, sigma_next, sigma)
    std_t = noise_level * torch.sqrt(sigma / denominator)  # (B, 1, ...)
    mean = x * (1 + std_t**2 / (2 * sigma) * dt) + velocity * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
    return mean, std_t * torch.sqrt(-dt)


def _cps(x, velocity, sigma, sigma_next, noise_level):
    """Coefficient-preserving sampling (Flow-CPS): re-noise the predicted x0 with a partly fresh eps.

    Keeps x_next = (1 - s') x0 + s' eps with unit-variance eps exactly, at std s' sin(eta pi / 2).
    """
    x0 = x - sigma * velocity  # (B, ...) predicted image
    eps = x + (1 - sigma) * velocity  # (B, ...) predicted noise
    std = sigma_next * math.sin(noise_level * math.pi / 2)
    mean = (1 - sigma_next) * x0 + torch.sqrt((sigma_next**2 - std**2).clamp_min(0)) * eps
    # The last step (sigma_next == 0) is deterministic; a tiny floor keeps the log-prob finite.
    return mean, std.expand_as(sigma_next).clamp_min(1e-6)
