"""Does what GRPO learns on its rollouts show in the evaluation images? Measured on a finished toy run.

GRPO trains on SDE rollouts (the backbone's train_steps, noise_level and sde_type); the sample stage draws the
evaluation images with the deterministic ODE (eval_steps). This draws both from the base model and from one
trained run or several, on the training captions with the same seeds, and prints, for each sampler, the reward
(mean and its standard error), the valid share and the mean reward of the valid images (`reward_valid`), the
run's gain over the base model in standard errors, the mode entropy (as the evaluate stage: per caption, then the
mean), and the off-mode share (images the labeller puts in no mode) split by what the reward makes of them:
`off_scored_good` (reward >= 0.9: a defect the reward does not see, such as a background between two tints) and
`off_scored_poor` (reward < 0.5, such as a veiled image). A gain or a collapse under the rollout SDE that the ODE
does not show is learnt for the sampler it was trained on.

    python benchmarks/sampler_transfer.py [--results results] [--reward contrast]
                                          [--method flow_grpo [diverse_grpo ...]] [--seed 0] [--images 16]
"""

from __future__ import annotations

import argparse
import json
import math

import pandas as pd
import torch

from diversegrpo import config as cfg
from diversegrpo.evaluation import ground_truth_means
from diversegrpo.registry import build_backbone, build_reward, build_world
from diversegrpo.sampling import sample_images, sample_rollout

GOOD, POOR = 0.9, 0.5  # reward thresholds of the off-mode split


def summarise(rewards: torch.Tensor, labels, prompts: list[str]) -> dict:
    """Mean reward, its standard error, the valid share, the valid images' mean reward (nan without any), the mode
    entropy and the off-mode shares of (B,) rewards and their labels (the world's `Labels`: `valid` and `mode`, -1
    for no mode) of the images of `prompts`, one prompt per image."""
    off, valid = torch.from_numpy(labels.mode < 0), torch.from_numpy(labels.valid)  # (B,), (B,)
    return {"reward": float(rewards.mean()), "se": float(rewards.std() / math.sqrt(len(rewards))),
            "valid": float(valid.float().mean()), "reward_valid": float(rewards[valid].mean()),
            "mode_entropy": ground_truth_means(labels, prompts)["mode_entropy"], "off_mode": float(off.float().mean()),
            "off_scored_good": float((off & (rewards >= GOOD)).float().mean()),
            "off_scored_poor": float((off & (rewards < POOR)).float().mean())}


def draw(backbone, prompts: list[str], images: int, rollout: dict, eval_steps: int, seed: int) -> dict:
    """{"ode": (B, 3, H, W), "sde": (B, 3, H, W)}: `images` of every prompt from each sampler, fixed seeds."""
    expanded = [p for p in prompts for _ in range(images)]
    ode = sample_images(backbone, expanded, eval_steps, rollout["guidance_scale"], seed=seed)
    sde = sample_rollout(backbone, prompts, images, rollout["train_steps"], rollout["guidance_scale"],
                         rollout["noise_level"], torch.Generator().manual_seed(seed), rollout["sde_type"]).images
    return {"ode": ode, "sde": sde}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results", help="a finished workflow's results directory")
    ap.add_argument("--reward", default="contrast")
    ap.add_argument("--method", nargs="+", default=["flow_grpo"], help="one trained method or several")
    ap.add_argument("--seed", type=int, default=0, help="the run's seed (runs.seeds)")
    ap.add_argument("--images", type=int, default=16, help="images per training caption and sampler")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    config = cfg.defaults()
    spec = {**config["backbones"]["toy"], "path": f"{args.results}/backbones/toy"}
    rollout, reward = cfg.rollout_settings(spec), build_reward(config["rewards"][args.reward])
    prompts = pd.read_parquet(f"{args.results}/captions/train.parquet").prompt.tolist()
    expanded = [p for p in prompts for _ in range(args.images)]
    rows = []
    for model in ("base", *args.method):
        backbone = build_backbone(spec)
        world = build_world(backbone.config.world)  # the one it learnt, not the default config's
        if model != "base":
            run = f"{args.results}/runs/toy/{args.reward}/{model}/seed{args.seed}"
            backbone.load_trained_lora(spec["lora"], f"{run}/lora")
        samples = draw(backbone, prompts, args.images, rollout, spec["eval_steps"], 1000 + args.seed)
        for sampler, images in samples.items():
            stats = summarise(reward(images, expanded), world.label(images, expanded), expanded)
            rows.append({"model": model, "sampler": sampler, **stats})
    for sampler in ("ode", "sde"):
        base, *runs = (r for r in rows if r["sampler"] == sampler)
        for run in runs:
            run["gain_in_se"] = (run["reward"] - base["reward"]) / math.hypot(run["se"], base["se"])
    for row in rows:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
    return rows


if __name__ == "__main__":
    main()
