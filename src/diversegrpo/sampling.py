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
    micro_batch: int | None = None,
) -> Rollout:
    """Draw `group_size` SDE trajectories for each prompt, keeping what the train pass will rescore.

    The transformer and the decoder see `micro_batch` samples at a time (memory only): each step's noise is
    drawn for the whole batch first, so the trajectories do not depend on it."""
    expanded = [p for p in prompts for _ in range(group_size)]
    group_ids = torch.arange(len(prompts)).repeat_interleave(group_size)
    cond = backbone.encode_prompts(prompts).repeat_interleave(group_size)
    sigmas = backbone.sigmas(num_steps)
    x = backbone.initial_noise(len(expanded), generator)
    chunks = _chunks(len(expanded), micro_batch)
    latents, log_probs = [x], []
    for i in range(num_steps):
        v = _velocity(backbone, x, sigmas[i], cond, guidance_scale, chunks)
        noise = torch.randn(x.shape, generator=generator).to(x.device, non_blocking=True)  # CPU stream: seeds portable
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
        images=decode(backbone, x, micro_batch),
    )


@torch.no_grad()
def branched_samples(
    backbone: Backbone,
    prompt: str,
    branches: int,
    num_steps: int,
    guidance_scale: float,
    noise_level: float,
    generator: torch.Generator,
    sde_type: SdeType = "sde",
    micro_batch: int | None = None,
) -> torch.Tensor:
    """(T + 2, branches, 3, H, W): for j = 0 .. T + 1, `branches` SDE samples of `prompt` that share the first j
    of one trajectory's T + 1 noise draws (draw 0 the initial noise, draw i step i's) and draw the others fresh:
    j = 0 shares nothing, j = T + 1 everything. How fast diversity falls with j is the budget of each step."""
    levels = num_steps + 2
    n = levels * branches
    shared = [backbone.initial_noise(1, generator)] + [
        torch.randn((1, *backbone.latent_shape), generator=generator) for _ in range(num_steps)
    ]
    level = torch.arange(levels).repeat_interleave(branches).view(n, *[1] * len(backbone.latent_shape))  # (n, 1, ..)
    x = torch.where(level.to(backbone.device) > 0, shared[0], backbone.initial_noise(n, generator))
    cond = backbone.encode_prompts([prompt]).repeat_interleave(n)
    sigmas = backbone.sigmas(num_steps)
    chunks = _chunks(n, micro_batch)
    for i in range(num_steps):
        v = _velocity(backbone, x, sigmas[i], cond, guidance_scale, chunks)
        fresh = torch.randn(x.shape, generator=generator)  # drawn on CPU, as the rollouts' noise
        noise = torch.where(level > i + 1, shared[i + 1], fresh).to(x.device)
        x = sde_step(x, v, sigmas[i], sigmas[i + 1], noise_level, noise=noise, sde_type=sde_type).sample
    images = decode(backbone, x, micro_batch)
    return images.view(levels, branches, *images.shape[1:])


def _velocity(backbone: Backbone, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning, guidance_scale: float,
              chunks: list[slice]) -> torch.Tensor:
    """The guided velocity of the (B, ...) latents, one transformer forward per chunk of samples."""
    return torch.cat([backbone.velocity(x[c], sigma, cond[c], guidance_scale) for c in chunks])


def _chunks(n: int, size: int | None) -> list[slice]:
    size = size or n
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def decode(backbone: Backbone, latents: torch.Tensor, micro_batch: int | None = None) -> torch.Tensor:
    """(B, 3, H, W) images, decoded `micro_batch` latents at a time (a VAE decode of a whole rollout at 512 px
    holds tens of GB of activations)."""
    return torch.cat([backbone.decode(latents[c]) for c in _chunks(latents.shape[0], micro_batch)])


@torch.no_grad()
def sample_images(
    backbone: Backbone, prompts: list[str], num_steps: int, guidance_scale: float, seed: int, batch_size: int = 64,
    decode_batch: int = 8, offset: int = 0,
) -> torch.Tensor:
    """(B, 3, H, W) ODE samples; image i's noise depends only on (seed, offset + i), so every run shares seeds
    (`offset`: where these images continue a longer list, e.g. a second caption split after the first).
    `batch_size` samples per transformer forward, `decode_batch` per VAE decode (memory only)."""
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        noise = torch.stack([
            backbone.initial_noise(1, torch.Generator().manual_seed(seed * 100_003 + offset + start + j))[0]
            for j in range(len(chunk))
        ])
        cond = backbone.encode_prompts(chunk)
        sigmas = backbone.sigmas(num_steps)
        x = noise
        for i in range(num_steps):
            x = sde_step(x, backbone.velocity(x, sigmas[i], cond, guidance_scale), sigmas[i], sigmas[i + 1], 0.0).sample
        out.append(decode(backbone, x, decode_batch).cpu())
    return torch.cat(out)
