"""The budget stage: how much of a model's diversity each denoising step decides (the paper: the first third of
the steps decides about two thirds). For each of the first analyses.budget_prompts held-out captions,
analyses.budget_branches samples of the rollout SDE share the first j of one trajectory's T + 1 noise draws and
draw the rest fresh (j = 0 .. T + 1, sampling.branched_samples). Per caption and j: their diversity D(j), the share
1 - D(j) / D(0) the first j draws decide (dynamics.diversity_budget), and in a world with ground truth the share of
branches that keep the mode of the fully shared trajectory."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
import torch

from .. import dynamics, metrics
from ..distributed import resolve_device
from ..io import read_parquet, write_parquet
from ..registry import build_backbone, build_features, build_world
from ..sampling import branched_samples


@dataclass
class BudgetSettings:
    """What a budget job reads of the config (the workflow's budget_params, one job's file under results/params/)."""

    backbone: dict  # backbones.<name>, with the pre-trained toy's path
    rollout: dict  # its rollout SDE, whose steps are measured (config.rollout_settings)
    micro_batch: int | None  # samples per forward (memory only; else a caption's (T + 2) x branches at once)
    analyses: dict  # budget_prompts, budget_branches
    features: dict
    world: str | None  # the world whose modes the kept-mode share follows (None: a prompt file)
    seed: int
    device: str
    torch_threads: int


def budget_stage(settings: BudgetSettings, lora_dir: str | None, eval_captions: str, out: str) -> None:
    """The budget table of the base model (`lora_dir` None) or of a run's adapter, written to `out`."""
    s = settings
    torch.set_num_threads(s.torch_threads)
    captions = read_parquet(eval_captions, "evaluation captions", "captions").prompt.tolist()
    backbone = build_backbone(s.backbone, resolve_device(s.device))
    if lora_dir is not None:
        backbone.load_trained_lora(s.backbone["lora"], lora_dir)
    embed, truth = build_features(s.features), build_world(s.world)
    rollout, branches = s.rollout, s.analyses["budget_branches"]
    rows = []
    for i, prompt in enumerate(captions[: s.analyses["budget_prompts"]]):
        generator = torch.Generator().manual_seed(s.seed * 1_000_003 + i)
        # (T + 2, branches, 3, H, W): level j shares the first j noise draws
        images = branched_samples(backbone, prompt, branches, rollout["train_steps"], rollout["guidance_scale"],
                                  rollout["noise_level"], generator, rollout["sde_type"], s.micro_batch).cpu()
        diversity = [metrics.mean_pairwise_distance(embed(level)) for level in images]
        keep = _kept_mode(truth, images, prompt) if truth else [math.nan] * len(images)
        for j, (d, b, k) in enumerate(zip(diversity, dynamics.diversity_budget(diversity), keep)):
            rows.append({"prompt": prompt, "j": j, "diversity": d, "budget": float(b), "keep_mode": k})
    write_parquet(pd.DataFrame(rows), out)


def _kept_mode(world, images: torch.Tensor, prompt: str) -> list[float]:
    """Per level j, the share of its branches whose mode is the fully shared trajectory's (NaN when that one
    shows no mode)."""
    levels, branches = images.shape[:2]
    modes = world.label(images.flatten(0, 1), [prompt] * (levels * branches)).mode.reshape(levels, branches)
    reference = modes[-1, 0]
    return [float((level == reference).mean()) if reference >= 0 else math.nan for level in modes]
