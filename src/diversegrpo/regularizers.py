"""Keeping the policy near the reference: Flow-GRPO's KL and DiverseGRPO's structure-aware SA-Reg.

Both compare the step means of the LoRA model (`mean`) and of the frozen reference (`ref_mean`, the same
transformer with the adapter disabled) for one denoising step; both return (B,) per-sample penalties.
"""

from __future__ import annotations

from typing import Literal

import torch

RegularizerName = Literal["none", "kl", "sa_reg"]


def _mean_sq_dist(mean: torch.Tensor, ref_mean: torch.Tensor) -> torch.Tensor:
    """(B,) ||mean - ref_mean||^2 averaged over the non-batch dims."""
    return ((mean - ref_mean) ** 2).mean(dim=tuple(range(1, mean.ndim)))


def kl(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B,) exact KL of two Gaussians with equal std: ||mu - mu_ref||^2 / (2 std^2), std = std_t sqrt(-dt).

    This is the paper's Eq. 6. Flow-GRPO's code divides by 2 std_t^2 only (no dt): a constant factor
    per step, which rescales beta_kl step by step.
    """
    return _mean_sq_dist(mean, ref_mean) / (2 * std.reshape(-1).expand(mean.shape[0]) ** 2)


def sa_reg(mean: torch.Tensor, ref_mean: torch.Tensor, step_index: int, num_constrained_steps: int) -> torch.Tensor:
    """(B,) structure-aware Wasserstein penalty: ||mu - mu_ref||^2 on the first K steps, exactly 0 after.

    W2 between Gaussians of equal covariance is the distance of their means; dropping the step variance
    from the denominator keeps the early, high-noise steps (which decide the composition) constrained.
    """
    if step_index >= num_constrained_steps:
        return torch.zeros(mean.shape[0], device=mean.device, dtype=mean.dtype)
    return _mean_sq_dist(mean, ref_mean)


def needs_reference(name: RegularizerName, step_index: int, num_constrained_steps: int) -> bool:
    """Whether step `step_index` needs the reference forward pass (skipped where the penalty is 0)."""
    return name == "kl" or (name == "sa_reg" and step_index < num_constrained_steps)


def penalty(
    name: RegularizerName,
    mean: torch.Tensor,
    ref_mean: torch.Tensor | None,
    std: torch.Tensor,
    step_index: int,
    num_constrained_steps: int,
) -> torch.Tensor:
    """(B,) the unweighted penalty of regulariser `name` at one step."""
    if not needs_reference(name, step_index, num_constrained_steps):
        return torch.zeros(mean.shape[0], device=mean.device, dtype=mean.dtype)
    assert ref_mean is not None, f"regulariser {name!r} needs the reference mean at step {step_index}"
    if name == "kl":
        return kl(mean, ref_mean, std)
    return sa_reg(mean, ref_mean, step_index, num_constrained_steps)
