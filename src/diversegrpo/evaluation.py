"""Scoring sets of images per prompt: the evaluate stage and the training curves share this."""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from . import metrics
from .creative import cosine_distances
from .worlds import Labels, World

Reward = Callable[[torch.Tensor, list[str]], torch.Tensor]

# Resamples of the evaluation's standard errors: the error of a standard error from B resamples is
# about 1 / sqrt(2 B), 5% here, and the 200 cost well under a second per run.
BOOTSTRAP_RESAMPLES = 200


def per_prompt(
    images: torch.Tensor,
    prompts: list[str],
    embeddings: torch.Tensor,
    rewards: dict[str, torch.Tensor],
    labels: Labels | None,
    with_ssim: bool = True,
) -> pd.DataFrame:
    """One row per distinct prompt: diversity, SSIM diversity, mean of each reward, and given a world's
    `labels` of the images, the ground-truth valid share, mode coverage and mode entropy."""
    rows = []
    for prompt, members in _members(prompts).items():
        idx = torch.from_numpy(members)
        row = {"prompt": prompt, "n_images": len(members), "diversity": metrics.mean_pairwise_distance(embeddings[idx])}
        if with_ssim:
            row["ssim_diversity"] = metrics.ssim_diversity(images[idx])
        rows.append(row | _image_means(members, rewards, labels))
    return pd.DataFrame(rows)


def _members(prompts: list[str]) -> dict[str, np.ndarray]:
    """Each distinct prompt, in first-seen order -> the indices of its images."""
    prompts_arr = np.asarray(prompts)
    return {p: np.nonzero(prompts_arr == p)[0] for p in dict.fromkeys(prompts)}


def _image_means(
    members: np.ndarray, rewards: dict[str, torch.Tensor], labels: Labels | None
) -> dict[str, float]:
    """Of one prompt's images (indices; a bootstrap resample repeats some): the mean of each reward
    and, given a world's labels, the ground truth."""
    idx = torch.from_numpy(members)
    row = {f"reward_{name}": float(values[idx].mean()) for name, values in rewards.items()}
    if labels is not None:
        row.update(_ground_truth(labels, members))
    return row


def _ground_truth(labels: Labels, members: np.ndarray) -> dict[str, float]:
    """One prompt's images: valid share, off-mode share (in none of the world's modes: the toy's images
    with no object found or no clean tint), mode coverage and mode entropy."""
    return {"valid_share": float(labels.valid[members].mean()),
            "off_mode_share": float((labels.mode[members] < 0).mean()),
            **metrics.mode_statistics(labels.mode[members], labels.valid[members], labels.num_modes)}


def bootstrap_standard_errors(
    prompts: list[str],
    embeddings: torch.Tensor,
    rewards: dict[str, torch.Tensor],
    labels: Labels | None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict[str, float]:
    """Standard error of each prompt-averaged metric of `per_prompt` (SSIM diversity aside: too slow to
    repeat), from resampling every prompt's images with replacement: how far a table entry would move
    under other sampling seeds. Diversity averages only pairs of two different images: a repeated image
    is no pair of distinct samples, and counting it as distance 0 would inflate the spread."""
    rng = np.random.default_rng(seed)
    groups = list(_members(prompts).values())
    distances = [cosine_distances(embeddings[torch.from_numpy(g)]).numpy() for g in groups]  # (n, n) each
    draws: dict[str, list[float]] = {}
    for _ in range(resamples):
        rows = []
        for members, d in zip(groups, distances):
            n = len(members)
            pick = rng.integers(n, size=n)  # (n,) positions inside the prompt
            distinct = pick[:, None] != pick[None, :]  # (n, n) pairs of two different images
            # a resample of one repeated image has no pair: it has no diversity (NaN, skipped below)
            diversity = d[np.ix_(pick, pick)][distinct].mean() if distinct.any() else np.nan
            rows.append({"diversity": diversity} | _image_means(members[pick], rewards, labels))
        for name, mean in pd.DataFrame(rows).mean(skipna=True).items():
            draws.setdefault(name, []).append(float(mean))
    return {name: float(np.nanstd(v, ddof=1)) for name, v in draws.items()}


def ground_truth_means(labels: Labels, prompts: list[str]) -> dict[str, float]:
    """The valid share, off-mode share, mode coverage and mode entropy of each prompt's images, averaged over
    prompts (as the evaluate stage's overall values)."""
    return pd.DataFrame([_ground_truth(labels, members) for members in _members(prompts).values()]).mean().to_dict()


def world_statistics(world: World, images: torch.Tensor, prompts: list[str],
                     rewards: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """The world's ground-truth valid share, mode coverage and mode entropy, averaged over prompts; and over the
    whole batch, each mode's share of the images a mode was found in (`mode_share_<mode>`) and the mean of each
    (B,) reward of `rewards` over that mode's images (`mode_<name>_<mode>`, NaN without one): the replicator
    dynamics' w_k and r_k (dynamics.py)."""
    labels = world.label(images, prompts)
    out = ground_truth_means(labels, prompts)
    found = labels.mode >= 0
    for k, mode in enumerate(world.modes):
        members = labels.mode == k
        out[f"mode_share_{mode}"] = float(members.sum() / max(found.sum(), 1))
        for name, values in (rewards or {}).items():
            out[f"mode_{name}_{mode}"] = float(values[torch.from_numpy(members)].mean()) if members.any() else math.nan
    return out


def score_rewards(images: torch.Tensor, prompts: list[str], rewards: dict[str, Reward]) -> dict[str, torch.Tensor]:
    out = {}
    for name, fn in rewards.items():
        values = fn(images, prompts).float().cpu()
        check_finite(f"reward {name!r}", values, prompts)
        out[name] = values
    return out


def check_finite(
    what: str, values: torch.Tensor | float, prompts: list[str], samples: Sequence[int] | None = None
) -> None:
    """Stop before a NaN or inf goes any further: a FloatingPointError naming the samples to blame.

    `values` holds one number per sample, sample `samples[i]` of the batch whose prompts are `prompts`
    (default: every sample, in order), or one number for all of `samples` (a loss, a gradient norm), which
    blames them all."""
    finite = torch.isfinite(torch.as_tensor(values).detach().cpu())
    if bool(finite.all()):
        return
    samples = range(len(prompts)) if samples is None else samples
    bad = [i for i, ok in zip(samples, finite.expand(len(samples)).tolist()) if not ok]
    detail = ", ".join(f"#{i} {prompts[i]!r}" for i in bad[:8]) + (", ..." if len(bad) > 8 else "")
    raise FloatingPointError(f"non-finite {what} for {len(bad)} sample(s): {detail}")
