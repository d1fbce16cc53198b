"""GRPO's group-relative advantages and clipped policy loss (Flow-GRPO, Eqs. 1-3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def group_advantages(
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    global_std: bool = False,
    clip: float | None = 5.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """(B,) A_i = (R_i - mean of i's group) / (std + eps), std over i's group or the whole batch.

    rewards: (B,) float; group_ids: (B,) int, equal for the images of one prompt.
    """
    rewards = rewards.double()
    _, inverse = torch.unique(group_ids, return_inverse=True)  # (B,) dense group index
    n_groups = int(inverse.max()) + 1
    counts = torch.bincount(inverse, minlength=n_groups).double()  # (G,)
    group_mean = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, inverse, rewards) / counts
    centred = rewards - group_mean[inverse]  # (B,)
    if global_std:
        std = rewards.std(unbiased=False).expand_as(rewards)
    else:
        group_var = torch.zeros(n_groups, dtype=torch.float64).index_add_(0, inverse, centred**2) / counts
        std = group_var.sqrt()[inverse]
    advantages = centred / (std + eps)
    if clip is not None:
        advantages = advantages.clamp(-clip, clip)
    return advantages.float()


@dataclass
class PolicyLoss:
    loss: torch.Tensor  # () the clipped surrogate, to minimise
    clipfrac: torch.Tensor  # () share of samples whose ratio left [1 - eps, 1 + eps]
    approx_kl: torch.Tensor  # () 0.5 E[(logp_new - logp_old)^2], a cheap drift monitor


def clipped_loss(
    advantages: torch.Tensor, log_prob: torch.Tensor, old_log_prob: torch.Tensor, clip_range: float
) -> PolicyLoss:
    """PPO-style clipped loss: mean(max(-A r, -A clip(r, 1 - eps, 1 + eps))), r = exp(logp - logp_old).

    advantages, log_prob, old_log_prob: (B,).
    """
    ratio = torch.exp(log_prob - old_log_prob)  # (B,)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    with torch.no_grad():
        clipfrac = ((ratio - 1.0).abs() > clip_range).float().mean()
        approx_kl = 0.5 * ((log_prob - old_log_prob) ** 2).mean()
    return PolicyLoss(loss=torch.maximum(unclipped, clipped).mean(), clipfrac=clipfrac, approx_kl=approx_kl)
