"""Scoring sets of images per prompt: the evaluate stage and the training curves share this."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch

from . import metrics, world

Reward = Callable[[torch.Tensor, list[str]], torch.Tensor]


def per_prompt(
    images: torch.Tensor,
    prompts: list[str],
    embeddings: torch.Tensor,
    rewards: dict[str, torch.Tensor],
    toy_world: bool,
    with_ssim: bool = True,
) -> pd.DataFrame:
    """One row per distinct prompt: diversity, SSIM diversity, mean of each reward, and in the toy
    world the ground-truth valid share, mode coverage and mode entropy."""
    prompts_arr = np.asarray(prompts)
    labels = world.label(images, prompts) if toy_world else None
    rows = []
    for prompt in dict.fromkeys(prompts):
        members = np.nonzero(prompts_arr == prompt)[0]
        idx = torch.from_numpy(members)
        row = {"prompt": prompt, "n_images": len(members), "diversity": metrics.mean_pairwise_distance(embeddings[idx])}
        if with_ssim:
            row["ssim_diversity"] = metrics.ssim_diversity(images[idx])
        row.update({f"reward_{name}": float(values[idx].mean()) for name, values in rewards.items()})
        if labels is not None:
            row.update(_ground_truth(labels, members))
        rows.append(row)
    return pd.DataFrame(rows)


def _ground_truth(labels: world.Labels, members: np.ndarray) -> dict[str, float]:
    """Toy world, one prompt's images: valid share, mode coverage and mode entropy."""
    return {"valid_share": float(labels.valid[members].mean()),
            **metrics.mode_statistics(labels.mode[members], labels.valid[members], len(world.MODES))}


def world_statistics(images: torch.Tensor, prompts: list[str]) -> dict[str, float]:
    """Toy world: ground-truth valid share, mode coverage and mode entropy, averaged over prompts."""
    labels = world.label(images, prompts)
    prompts_arr = np.asarray(prompts)
    rows = [_ground_truth(labels, prompts_arr == prompt) for prompt in dict.fromkeys(prompts)]
    return pd.DataFrame(rows).mean().to_dict()


def score_rewards(images: torch.Tensor, prompts: list[str], rewards: dict[str, Reward]) -> dict[str, torch.Tensor]:
    out = {}
    for name, fn in rewards.items():
        values = fn(images, prompts).float().cpu()
        if not torch.isfinite(values).all():
            bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
            raise FloatingPointError(f"reward {name!r} is not finite for images {bad[:8]} ({[prompts[i] for i in bad[:3]]})")
        out[name] = values
    return out
