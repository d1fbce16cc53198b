"""Sampling images from a backbone: SDE rollouts for GRPO (with the trajectory and log-probs) and
deterministic ODE samples for evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .backbones.base import Backbone, Conditioning
from .sde import SdeType, sde_step


@dataclass
class Rollout:
    prompts: list[str]  # B prompts (each repeated group_size times)
    group_ids: torch.Tensor  # (B,) one id per prompt group
    cond: Conditioning  # (B, ...)
    sigmas: torch.Tensor  # (T + 1,)
    latents: torch.Tensor  # (T + 1, B, C, H, W) the trajectory x_0 .. x_T (x_0 pure noise)
    log_probs: torch.Tensor  # (T, B) log p of each step under the sampling policy
    images: torch.Tensor  # (B, 3, H', W') decoded final latents in [0, 1]


@torch.no_grad()
def sample_rollout(
    backbone: Backbone,
    prompts: list[str],
    group_size: int,
    num_steps: int,
    guidance_scale: float,
    noise_level: float,
    generator: torch.Generator,
    sde_type: SdeType = "sde",
) -> Rollout:
    """Draw `group_size` SDE trajectories for each prompt, keeping what the train pass will rescore."""
    expanded = [p for p in prompts for _ in range(group_size)]
    group_ids = torch.arange(len(prompts)).repeat_interleave(group_size)
    cond = backbone.encode_prompts(prompts).repeat_interleave(group_size)
    sigmas = backbone.sigmas(num_steps)
    x = backbone.initial_noise(len(expanded), generator)
    latents, log_probs = [x], []
    for i in range(num_steps):
        v = backbone.velocity(x, sigmas[i], cond, guidance_scale)
        noise = torch.randn(x.shape, generator=generator).to(x.device)
        step = sde_step(x, v, sigmas[i], sigmas[i + 1], noise_level, noise=noise, sde_type=sde_type)
        x = step.sample
        latents.append(x)
        log_probs.append(step.log_prob)
    return Rollout(
        prompts=expanded,
        group_ids=group_ids,
        cond=cond,
        sigmas=sigmas,
        latents=torch.stack(latents),
        log_probs=torch.stack(log_probs),
        images=backbone.decode(x),
    )


@torch.no_grad()
def sample_images(
    backbone: Backbone, prompts: list[str], num_steps: int, guidance_scale: float, seed: int, batch_size: int = 64
) -> torch.Tensor:
    """(B, 3, H, W) ODE samples; image i's noise depends only on (seed, i), so every run shares seeds."""
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        noise = torch.stack([
            backbone.initial_noise(1, torch.Generator().manual_seed(seed * 100_003 + start + j))[0] for j in range(len(chunk))
        ])
        cond = backbone.encode_prompts(chunk)
        sigmas = backbone.sigmas(num_steps)
        x = noise
        for i in range(num_steps):
            x = sde_step(x, backbone.velocity(x, sigmas[i], cond, guidance_scale), sigmas[i], sigmas[i + 1], 0.0).sample
        out.append(backbone.decode(x).cpu())
    return torch.cat(out)
