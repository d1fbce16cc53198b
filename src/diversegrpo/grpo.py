"""GRPO's group-relative advantages and clipped policy loss (Flow-GRPO, Eqs. 1-3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def _dense(group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) dense group index and (G,) group sizes."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    return inverse, torch.bincount(inverse).double()  # on group_ids' device, like the rewards


def _group_means(values: torch.Tensor, inverse: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(B,) the mean of each sample's group, for (B,) float64 values."""
    sums = torch.zeros(counts.shape[0], dtype=torch.float64, device=values.device).index_add_(0, inverse, values)
    return (sums / counts)[inverse]


def _centred_and_scale(
    rewards: torch.Tensor, group_ids: torch.Tensor, global_std: bool, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) R - mean of R's group, and (B,) std + eps over the group or the whole batch; float64."""
    rewards = rewards.double()
    inverse, counts = _dense(group_ids)
    centred = rewards - _group_means(rewards, inverse, counts)
    if global_std:
        return centred, (rewards.std(unbiased=False) + eps).expand_as(rewards)
    return centred, _group_means(centred**2, inverse, counts).sqrt() + eps


def advantage_scale(
    rewards: torch.Tensor, group_ids: torch.Tensor, global_std: bool = False, eps: float = 1e-4
) -> torch.Tensor:
    """(B,) float64: what `group_advantages` divides each centred reward by, std + eps, the std taken over the
    sample's group or over the whole batch. The creative mix expresses the bonus in this unit."""
    return _centred_and_scale(rewards, group_ids, global_std, eps)[1]


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
    centred, scale = _centred_and_scale(rewards, group_ids, global_std, eps)
    advantages = centred / scale
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
